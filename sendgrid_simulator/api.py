"""The SendGrid endpoints: each takes the parsed request and returns (status, JSON-able body) or raises ApiError."""

from __future__ import annotations

import base64
import json
import uuid
from typing import TYPE_CHECKING, Any

from sendgrid_simulator.emails import is_valid_email
from sendgrid_simulator.limits import (
    LIST_PAGE_SIZE_DEFAULT,
    LIST_PAGE_SIZE_MAX,
    MAX_SEARCH_EMAIL_LENGTH,
    MAX_SEARCH_EMAILS,
)
from sendgrid_simulator.store import RESERVED_FIELDS, ApiError, ContactList

if TYPE_CHECKING:
    from sendgrid_simulator.simulator import Simulator

Answer = tuple[int, Any]


class Request:
    __slots__ = ("body", "key", "params", "query")

    def __init__(self, params: dict[str, str], query: dict[str, list[str]], body: bytes, key: str) -> None:
        self.params = params
        self.query = query
        self.body = body
        self.key = key

    def json(self) -> Any:
        if not self.body:
            raise ApiError.one(400, None, "request body is required")
        try:
            return json.loads(self.body)
        except ValueError:
            raise ApiError.one(400, None, "request body is not valid JSON") from None

    def one(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None


class Api:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.store = sim.store

    def upsert_contacts(self, request: Request) -> Answer:
        contacts, list_ids = self.store.check_upsert(request.json())
        job = self.sim.submit_upsert(contacts, list_ids)
        return 202, {"job_id": job.id}

    def delete_contacts(self, request: Request) -> Answer:
        """DELETE /v3/marketing/contacts: `ids` or `delete_all_contacts=true` (not both), processed as a job.
        IDs of contacts already gone are accepted and ignored (deleting twice is how a retry looks)."""
        raw, everything = request.one("ids"), request.one("delete_all_contacts")
        if (raw is None) == (everything is None):
            raise ApiError.one(400, None, "set either ids or delete_all_contacts")
        if everything is not None and everything != "true":
            raise ApiError.one(400, "delete_all_contacts", "delete_all_contacts must be \"true\"")
        ids = [x for x in (raw or "").split(",") if x]
        if raw is not None and not ids:
            raise ApiError.one(400, "ids", "ids must name at least one contact ID")
        keys = self.store.keys_of(ids) if raw is not None else None
        job = self.sim.submit_contact_deletion(keys)
        return 202, {"job_id": job.id}

    def contact_count(self, request: Request) -> Answer:
        with self.store.lock:
            return 200, {"contact_count": len(self.store.contacts), "billable_count": self.store.billable_count}

    def get_import(self, request: Request) -> Answer:
        job = self.store.jobs.get(request.params["id"])
        if job is None:
            raise ApiError.one(404, None, "import job not found")
        return 200, job.as_json(self.sim.base_url)

    def search_emails(self, request: Request) -> Answer:
        body = request.json()
        emails = body.get("emails") if isinstance(body, dict) else None
        if not isinstance(emails, list) or not emails:
            raise ApiError.one(400, "emails", "emails is required and must be a non-empty array")
        if len(emails) > MAX_SEARCH_EMAILS:
            raise ApiError.one(400, "emails", f"at most {MAX_SEARCH_EMAILS} emails per request")
        invalid = [{"field": f"emails[{i}]", "message": f"email '{e}' is not valid"}
                   for i, e in enumerate(emails)
                   if e != "" and (not isinstance(e, str) or len(e) > MAX_SEARCH_EMAIL_LENGTH or not is_valid_email(e))]
        if invalid:
            raise ApiError(400, invalid)
        result: dict[str, Any] = {}
        found = 0
        for email in emails:
            if email == "":
                continue  # SendGrid leaves empty strings out of the search
            key = self.store.find(email)
            if key is None:
                result[email.lower()] = {"error": "contact not found"}
            else:
                result[email.lower()] = {"contact": self.store.render(key, self.sim.base_url)}
                found += 1
        if not found:
            raise ApiError.one(404, None, "no contacts found")
        return 200, {"result": result}

    def _list_json(self, contact_list: ContactList) -> dict[str, Any]:
        return {"id": contact_list.id, "name": contact_list.name, "contact_count": len(contact_list.members),
                "_metadata": {"self": f"{self.sim.base_url}/v3/marketing/lists/{contact_list.id}"}}

    def get_lists(self, request: Request) -> Answer:
        raw_size = request.one("page_size")
        try:
            size = int(float(raw_size)) if raw_size is not None else LIST_PAGE_SIZE_DEFAULT
        except ValueError:
            size = -1
        if not 1 <= size <= LIST_PAGE_SIZE_MAX:
            raise ApiError.one(400, "page_size", f"page_size must be between 1 and {LIST_PAGE_SIZE_MAX}")
        token = request.one("page_token")
        start = _decode_token(token) if token else 0
        with self.store.lock:
            lists = list(self.store.lists.values())
        page = lists[start:start + size]
        base = f"{self.sim.base_url}/v3/marketing/lists?page_size={size}"
        metadata: dict[str, Any] = {"self": f"{base}&page_token={token or ''}", "count": len(lists)}
        if start + size < len(lists):
            metadata["next"] = f"{base}&page_token={_encode_token(start + size)}"
        if start > 0:
            metadata["prev"] = f"{base}&page_token={_encode_token(max(start - size, 0))}"
        return 200, {"result": [self._list_json(x) for x in page], "_metadata": metadata}

    def create_list(self, request: Request) -> Answer:
        body = request.json()
        name = body.get("name") if isinstance(body, dict) else None
        return 201, self._list_json(self.store.create_list(name))  # type: ignore[arg-type]

    def _find_list(self, list_id: str) -> ContactList:
        contact_list = self.store.lists.get(list_id)
        if contact_list is None:
            raise ApiError.one(404, "id", "list not found")
        return contact_list

    def get_list(self, request: Request) -> Answer:
        return 200, self._list_json(self._find_list(request.params["id"]))

    def list_count(self, request: Request) -> Answer:
        count = len(self._find_list(request.params["id"]).members)
        return 200, {"contact_count": count, "billable_count": count}

    def remove_from_list(self, request: Request) -> Answer:
        raw = request.one("contact_ids")
        ids = [x for x in (raw or "").split(",") if x]
        self._find_list(request.params["id"])
        if not ids:
            raise ApiError.one(400, "contact_ids", "contact_ids is required")
        contact_list, keys = self.store.check_list_removal(request.params["id"], ids)
        job = self.sim.submit_removal(contact_list, keys)
        return 202, {"job_id": job.id}

    def get_fields(self, request: Request) -> Answer:
        with self.store.lock:
            custom = [{"id": f.id, "name": f.name, "field_type": f.field_type} for f in self.store.fields.values()]
        return 200, {"custom_fields": custom, "reserved_fields": RESERVED_FIELDS,
                     "_metadata": {"self": f"{self.sim.base_url}/v3/marketing/field_definitions"}}

    def create_field(self, request: Request) -> Answer:
        body = request.json()
        if not isinstance(body, dict):
            raise ApiError.one(400, None, "request body must be a JSON object")
        definition = self.store.create_field(body.get("name"), body.get("field_type"))  # type: ignore[arg-type]
        return 200, {"id": definition.id, "name": definition.name, "field_type": definition.field_type,
                     "_metadata": {"self": f"{self.sim.base_url}/v3/marketing/field_definitions/{definition.id}"}}

    def get_scopes(self, request: Request) -> Answer:
        return 200, {"scopes": sorted(self.sim.scopes_of(request.key) or ())}


def _encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode().rstrip("=")


def _decode_token(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        if not text.startswith("offset:"):
            raise ValueError(text)
        return max(int(text[7:]), 0)
    except ValueError:
        raise ApiError.one(400, "page_token", "page_token is not valid") from None


def new_job_id() -> str:
    return str(uuid.uuid4())
