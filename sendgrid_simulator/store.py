"""The simulated account: contacts, lists, custom fields and import jobs, and SendGrid's rules over them.

Contacts are kept as the dicts parsed from the request bodies (no copies: the benchmark stores a million),
keyed by lower-cased email; a contact sent without an email is keyed `"<identifier>:<value>"`. List
membership is a set of keys per list. Contact IDs are minted on first sight (search, inspection), since that
is the only way a client can learn one. Request checks run in the handler thread without the lock; changes
to the account happen under `lock`.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sendgrid_simulator.emails import is_valid_email, valid_lowered
from sendgrid_simulator.limits import (
    FIELD_MAX_LENGTHS,
    IDENTIFIERS,
    MAX_ALTERNATE_EMAILS,
    MAX_CONTACTS_PER_REQUEST,
    MAX_CUSTOM_TEXT_LENGTH,
    MAX_FIELD_NAME_LENGTH,
    MAX_LIST_NAME_LENGTH,
)

FIELD_TYPES = {"Text": "T", "Number": "N", "Date": "D"}
RESERVED_FIELDS: list[dict[str, Any]] = [
    {"id": f"_rf{i}_{kind[0]}", "name": name, "field_type": kind, **({"read_only": True} if i >= 15 else {})}
    for i, (name, kind) in enumerate([
        ("first_name", "Text"), ("last_name", "Text"), ("email", "Text"), ("alternate_emails", "Text"),
        ("address_line_1", "Text"), ("address_line_2", "Text"), ("city", "Text"),
        ("state_province_region", "Text"), ("postal_code", "Text"), ("country", "Text"),
        ("phone_number", "Text"), ("whatsapp", "Text"), ("line", "Text"), ("facebook", "Text"),
        ("unique_name", "Text"), ("email_domains", "Text"), ("last_clicked", "Date"), ("last_opened", "Date"),
        ("last_emailed", "Date"), ("singlesend_id", "Text"), ("automation_id", "Text"), ("created_at", "Date"),
        ("updated_at", "Date"), ("contact_id", "Text"),
    ])
]
_RESERVED_NAMES = frozenset(f["name"] for f in RESERVED_FIELDS)
_NOT_SETTABLE = frozenset({"id", "list_ids", "segment_ids", "created_at", "updated_at", "_metadata"})
_OTHER_IDENTIFIERS = tuple(name for name in IDENTIFIERS if name != "email")
_LENGTHS = {name: limit for name, limit in FIELD_MAX_LENGTHS.items() if name != "email"}
_DATE = re.compile(r"\d{2}/\d{2}/\d{4}|\d{4}-\d{2}-\d{2}(?:[T ][0-9:.]+(?:Z|[+-]\d{2}:?\d{2})?)?")


class ApiError(Exception):
    """An answer in SendGrid's error shape: {"errors": [{"field": ..., "message": ...}]}."""

    def __init__(self, status: int, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.errors = errors

    @classmethod
    def one(cls, status: int, field_name: str | None, message: str) -> ApiError:
        return cls(status, [{"field": field_name, "message": message}])


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class ContactList:
    id: str
    name: str
    members: set[str] = field(default_factory=set)
    created_at: str = field(default_factory=now_iso)


@dataclass(frozen=True)
class FieldDefinition:
    id: str
    name: str
    field_type: str


class UpsertBatch(NamedTuple):
    """One accepted PUT: the job and the (lower-cased) emails it carried, in order."""

    job_id: str
    emails: list[str]


@dataclass
class Job:
    id: str
    job_type: str  # "upsert" | "delete"
    requested_count: int
    started_at: str
    due: float  # time.monotonic() at which the worker may process it
    status: str = "pending"
    created_count: int = 0
    updated_count: int = 0
    deleted_count: int = 0
    errored_count: int = 0
    finished_at: str | None = None
    errors: list[tuple[int, str, str]] = field(default_factory=list)  # (index, key, message)
    payload: Any = None  # dropped once processed
    fault: str | None = None  # "job_errored" | "job_failed"
    fault_errored: int = 0

    def as_json(self, base_url: str) -> dict[str, Any]:
        results: dict[str, Any] = {
            "requested_count": self.requested_count, "created_count": self.created_count,
            "updated_count": self.updated_count, "deleted_count": self.deleted_count,
            "errored_count": self.errored_count,
        }
        if self.errors:
            results["errors_url"] = f"{base_url}/__sim/imports/{self.id}/errors.csv"
        body: dict[str, Any] = {"id": self.id, "status": self.status, "job_type": self.job_type,
                                "results": results, "started_at": self.started_at}
        if self.finished_at:
            body["finished_at"] = self.finished_at
        return body


class Store:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.contacts: dict[str, dict[str, Any]] = {}
        self.alternates: dict[str, str] = {}  # alternate email -> contact key
        self.lists: dict[str, ContactList] = {}
        self.fields: dict[str, FieldDefinition] = {}  # by id
        self.jobs: dict[str, Job] = {}
        self.upsert_batches: list[UpsertBatch] = []
        self._ids: dict[str, str] = {}  # contact key -> contact id
        self._keys_by_id: dict[str, str] = {}
        self._field_counter = 0
        # Contacts billed this month: each contact created counts, and deleting one does not give it back.
        self.billable_count = 0

    def reset(self, *, everything: bool = False) -> None:
        with self.lock:
            self.contacts.clear()
            self.alternates.clear()
            self.jobs.clear()
            self.upsert_batches.clear()
            self._ids.clear()
            self._keys_by_id.clear()
            self.billable_count = 0
            for contact_list in self.lists.values():
                contact_list.members.clear()
            if everything:
                self.lists.clear()
                self.fields.clear()
                self._field_counter = 0

    # -- lists and fields --------------------------------------------------------------------------

    def create_list(self, name: str, list_id: str | None = None) -> ContactList:
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_LIST_NAME_LENGTH:
            raise ApiError.one(400, "name", f"name is required and must be 1 to {MAX_LIST_NAME_LENGTH} characters")
        with self.lock:
            if any(existing.name == name for existing in self.lists.values()):
                raise ApiError.one(400, "name", "a list with this name already exists")
            list_id = str(uuid.UUID(list_id)) if list_id else str(uuid.uuid4())
            if list_id in self.lists:
                raise ApiError.one(400, "id", "a list with this ID already exists")
            created = self.lists[list_id] = ContactList(list_id, name)
            return created

    def create_field(self, name: str, field_type: str) -> FieldDefinition:
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_FIELD_NAME_LENGTH:
            raise ApiError.one(400, "name", f"name is required and must be 1 to {MAX_FIELD_NAME_LENGTH} characters")
        if field_type not in FIELD_TYPES:
            raise ApiError.one(400, "field_type", "field_type must be one of Text, Number, Date")
        if name in _RESERVED_NAMES:
            raise ApiError.one(400, "name", "this name is a reserved field")
        with self.lock:
            if any(existing.name == name for existing in self.fields.values()):
                raise ApiError.one(400, "name", "a custom field with this name already exists")
            self._field_counter += 1
            definition = FieldDefinition(f"e{self._field_counter}_{FIELD_TYPES[field_type]}", name, field_type)
            self.fields[definition.id] = definition
            return definition

    # -- contacts ----------------------------------------------------------------------------------

    def contact_id(self, key: str) -> str:
        with self.lock:
            contact_id = self._ids.get(key)
            if contact_id is None:
                contact_id = self._ids[key] = str(uuid.uuid4())
                self._keys_by_id[contact_id] = key
            return contact_id

    def render(self, key: str, base_url: str) -> dict[str, Any]:
        """The contact as SendGrid answers it: with id, list_ids, and custom fields keyed by name."""
        with self.lock:
            stored = self.contacts[key]
            out = {name: value for name, value in stored.items() if name != "custom_fields"}
            contact_id = self.contact_id(key)
            out["id"] = contact_id
            out["list_ids"] = [lst.id for lst in self.lists.values() if key in lst.members]
            out["segment_ids"] = []
            out["custom_fields"] = {
                (self.fields[fid].name if fid in self.fields else fid): value
                for fid, value in (stored.get("custom_fields") or {}).items()
            }
            out["_metadata"] = {"self": f"{base_url}/v3/marketing/contacts/{contact_id}"}
            return out

    def find(self, email: str) -> str | None:
        key = email.lower()
        with self.lock:
            if key in self.contacts:
                return key
            return self.alternates.get(key)

    def check_upsert(self, body: Any) -> tuple[list[dict[str, Any]], list[str]]:
        """SendGrid's synchronous checks: any failure refuses the whole request (400, or 404 for lists)."""
        if not isinstance(body, dict):
            raise ApiError.one(400, None, "request body must be a JSON object")
        contacts = body.get("contacts")
        if not isinstance(contacts, list) or not contacts:
            raise ApiError.one(400, "contacts", "contacts is required and must be a non-empty array")
        if len(contacts) > MAX_CONTACTS_PER_REQUEST:
            raise ApiError.one(400, "contacts",
                               f"at most {MAX_CONTACTS_PER_REQUEST} contacts per request, got {len(contacts)}")
        list_ids = body.get("list_ids") or []
        if not isinstance(list_ids, list) or not all(isinstance(x, str) for x in list_ids):
            raise ApiError.one(400, "list_ids", "list_ids must be an array of list ID strings")
        unknown = [{"field": f"list_ids[{i}]", "message": f"list '{x}' does not exist"}
                   for i, x in enumerate(list_ids) if x not in self.lists]
        if unknown:
            raise ApiError(404, unknown)
        errors: list[dict[str, Any]] = []
        limit_of = _LENGTHS.get  # this loop runs a million times in the benchmark: locals, no calls it can skip
        for i, contact in enumerate(contacts):
            if type(contact) is not dict:
                errors.append({"field": f"contacts[{i}]", "message": "contact must be an object"})
                continue
            email = contact.get("email")
            if email is not None and email != "":
                lowered = valid_lowered(email)
                if lowered is not None:
                    contact["email"] = lowered
                else:
                    errors.append({"field": f"contacts[{i}].identifier", "message": f"email '{email}' is not valid"})
            elif not any(contact.get(name) for name in _OTHER_IDENTIFIERS):
                errors.append({"field": f"contacts[{i}].identifier", "message":
                               "at least one identifier (email, phone_number_id, external_id, anonymous_id) "
                               "is required"})
            for name, value in contact.items():
                limit = limit_of(name)
                if limit is not None:
                    if type(value) is not str:
                        errors.append({"field": f"contacts[{i}].{name}", "message": f"{name} must be a string"})
                    elif len(value) > limit:
                        errors.append({"field": f"contacts[{i}].{name}",
                                       "message": f"{name} must be at most {limit} characters"})
                elif name == "custom_fields":
                    self._check_custom_fields(i, value, errors)
                elif name == "alternate_emails":
                    _check_alternates(i, value, contact, errors)
        if errors:
            raise ApiError(400, errors)
        return contacts, list_ids

    def _check_custom_fields(self, i: int, values: Any, errors: list[dict[str, Any]]) -> None:
        if type(values) is not dict:
            errors.append({"field": f"contacts[{i}].custom_fields", "message": "custom_fields must be an object"})
            return
        for field_id, value in values.items():
            definition = self.fields.get(field_id)
            where = f"contacts[{i}].custom_fields.{field_id}"
            if definition is None:
                errors.append({"field": where, "message": f"custom field ID '{field_id}' does not exist "
                               "(custom_fields are keyed by ID, see GET /v3/marketing/field_definitions)"})
            elif value == "":
                continue  # an explicit empty value clears the field
            elif definition.field_type == "Number":
                if not _is_number(value):
                    errors.append({"field": where, "message": f"custom field '{definition.name}' expects a number"})
            elif type(value) is not str:
                errors.append({"field": where, "message": f"custom field '{definition.name}' expects a string"})
            elif definition.field_type == "Date":
                if not _DATE.fullmatch(value):
                    errors.append({"field": where, "message": f"custom field '{definition.name}' expects a date "
                                   "(MM/DD/YYYY or ISO 8601)"})
            elif len(value) > MAX_CUSTOM_TEXT_LENGTH:
                errors.append({"field": where, "message": f"custom field '{definition.name}' must be at most "
                               f"{MAX_CUSTOM_TEXT_LENGTH} characters"})

    def check_list_removal(self, list_id: str, contact_ids: Iterable[str]) -> tuple[ContactList, list[str]]:
        with self.lock:
            contact_list = self.lists.get(list_id)
            if contact_list is None:
                raise ApiError.one(404, "id", "list not found")
            keys = []
            unknown = []
            for contact_id in contact_ids:
                key = self._keys_by_id.get(contact_id)
                if key is None or key not in self.contacts:
                    unknown.append(contact_id)
                else:
                    keys.append(key)
            if unknown:
                raise ApiError(404, [{"field": "contact_ids", "message": f"contact ID '{x}' not found"}
                                     for x in unknown])
            return contact_list, keys

    # -- applying jobs (worker thread) -------------------------------------------------------------

    def keys_of(self, contact_ids: Iterable[str]) -> list[str]:
        """The contact keys of these IDs that still exist (a contact deleted already is left out)."""
        with self.lock:
            keys = (self._keys_by_id.get(contact_id) for contact_id in contact_ids)
            return [key for key in keys if key is not None and key in self.contacts]

    def apply(self, job: Job) -> None:
        if job.job_type == "delete_contacts":
            self._apply_contact_deletion(job)
        elif job.job_type == "delete":
            self._apply_removal(job)
        else:
            self._apply_upsert(job)
        job.payload = None
        job.finished_at = now_iso()

    def _apply_upsert(self, job: Job) -> None:
        contacts, list_ids = job.payload
        if job.fault == "job_failed":
            job.errored_count = len(contacts)
            job.errors = [(i, _key(c), "import failed (injected fault)") for i, c in enumerate(contacts)]
            job.status = "failed"
            return
        skip = min(job.fault_errored, len(contacts)) if job.fault == "job_errored" else 0
        stamp = now_iso()
        with self.lock:
            memberships = [self.lists[x].members for x in dict.fromkeys(list_ids) if x in self.lists]
            store = self.contacts
            errors = job.errors
            created = updated = 0
            for i, contact in enumerate(contacts):
                key = _key(contact)
                if i < skip:
                    errors.append((i, key, "contact could not be imported (injected fault)"))
                    continue
                if not _NOT_SETTABLE.isdisjoint(contact):
                    for name in _NOT_SETTABLE:
                        contact.pop(name, None)
                existing = store.get(key)
                if existing is None:
                    contact["created_at"] = contact["updated_at"] = stamp
                    store[key] = contact
                    created += 1
                    self.billable_count += 1
                else:
                    missing = [name for name in _OTHER_IDENTIFIERS if name in existing and name not in contact]
                    if missing:
                        errors.append((i, key, f"all existing identifiers must be present ({', '.join(missing)})"))
                        continue
                    custom = contact.pop("custom_fields", None)
                    existing.update(contact)
                    if custom:
                        existing.setdefault("custom_fields", {}).update(custom)
                    existing["updated_at"] = stamp
                    updated += 1
                alternates = store[key].get("alternate_emails")
                if alternates:
                    for alternate in alternates:
                        self.alternates[alternate] = key
                for members in memberships:
                    members.add(key)
        job.created_count, job.updated_count, job.errored_count = created, updated, len(errors)
        job.status = "completed" if not errors else ("failed" if not created + updated else "errored")

    def _apply_contact_deletion(self, job: Job) -> None:
        keys = job.payload
        with self.lock:
            doomed = list(self.contacts) if keys is None else [key for key in keys if key in self.contacts]
            for key in doomed:
                contact = self.contacts.pop(key)
                for alternate in contact.get("alternate_emails") or []:
                    self.alternates.pop(alternate, None)
                for contact_list in self.lists.values():
                    contact_list.members.discard(key)
            job.deleted_count = len(doomed)
        job.status = "completed"

    def _apply_removal(self, job: Job) -> None:
        contact_list, keys = job.payload
        with self.lock:
            before = len(contact_list.members)
            contact_list.members.difference_update(keys)
            job.deleted_count = before - len(contact_list.members)
        job.status = "completed"


def _key(contact: dict[str, Any]) -> str:
    email = contact.get("email")
    if email:
        return str(email)
    for name in _OTHER_IDENTIFIERS:
        if contact.get(name):
            return f"{name}:{contact[name]}"
    return ""


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return False
        return True
    return False


def _check_alternates(i: int, value: Any, contact: dict[str, Any], errors: list[dict[str, Any]]) -> None:
    where = f"contacts[{i}].alternate_emails"
    if type(value) is not list:
        errors.append({"field": where, "message": "alternate_emails must be an array"})
        return
    if len(value) > MAX_ALTERNATE_EMAILS:
        errors.append({"field": where, "message": f"at most {MAX_ALTERNATE_EMAILS} alternate emails"})
        return
    valid = True
    for j, alternate in enumerate(value):
        if not is_valid_email(alternate):
            valid = False
            errors.append({"field": f"{where}[{j}]", "message": f"email '{alternate}' is not valid"})
    if valid:
        contact["alternate_emails"] = [alternate.lower() for alternate in value]
