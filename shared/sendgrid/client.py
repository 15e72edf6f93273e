"""A SendGrid Marketing Contacts client on httpx: one object owns its connection pool, retries and auth.

The endpoint methods are thin: the API key is an auth flow (`auth.ApiKeyAuth`: re-read once on a 401),
retries and the rate window are a transport layer (`transport.RetryTransport`), and refusals become the
exceptions of `errors`, drawn there as a tree by what the caller can do.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import httpx

from shared.sendgrid.auth import ApiKeyAuth
from shared.sendgrid.errors import InvalidRequest, NotFound, SendGridError, answer, error_for, template
from shared.sendgrid.id_urls import ids_target, url_chunks
from shared.sendgrid.models import ClientStats, ContactCount, CustomField, ImportJob, RetryPolicy
from shared.sendgrid.transport import BEFORE_ATTEMPT, IDEMPOTENT, RetryTransport, environment_proxy, tls_context

__all__ = ["ClientStats", "ContactCount", "CustomField", "ImportJob", "RetryPolicy", "SendGridClient"]

SEARCH_EMAILS_MAX = 100
SEARCH_EMAIL_MAX_LENGTH = 100  # maxLength of an `emails` item of POST /v3/marketing/contacts/search/emails
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


def _worst_case(timeout: httpx.Timeout) -> float:
    """The longest one attempt may take: each phase's limit in turn (httpx's limits are per phase)."""
    return sum(t for t in (timeout.connect, timeout.write, timeout.read, timeout.pool) if t is not None)


def _within(timeout: httpx.Timeout, budget: float) -> httpx.Timeout:
    """`timeout` with every phase cut to its share of `budget` (connect 10%, write 40%, read 40%, pool 10%)."""
    def cut(value: float | None, share: float) -> float:
        return min(value, budget * share) if value is not None else budget * share
    return httpx.Timeout(connect=cut(timeout.connect, 0.1), write=cut(timeout.write, 0.4),
                         read=cut(timeout.read, 0.4), pool=cut(timeout.pool, 0.1))


class SendGridClient:
    """Typed calls for the endpoints the exporter uses; construct once per run (or process) and close."""

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = "https://api.sendgrid.com",
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        on_unauthorized: Callable[[], str | None] | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self._change_guard: Callable[[float], None] | None = None
        self._change_timeout = self._timeout
        self.stats = ClientStats()
        inner = transport or httpx.HTTPTransport(
            verify=tls_context(), limits=httpx.Limits(max_connections=8, max_keepalive_connections=8),
            proxy=environment_proxy(base_url))
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=self._timeout,
            transport=RetryTransport(inner, retry or RetryPolicy(), self.stats, sleep=sleep, clock=clock),
            auth=ApiKeyAuth(api_key, on_unauthorized),
            headers={"User-Agent": "segment-to-sendgrid/0.1", "Accept": "application/json"},
        )

    def __repr__(self) -> str:  # never show the key
        return f"SendGridClient(base_url={str(self._http.base_url)!r})"

    def __enter__(self) -> SendGridClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    @contextlib.contextmanager
    def guarded(self, guard: Callable[[float], None], budget: float) -> Iterator[None]:
        """Call `guard(worst case in seconds)` before every attempt of a request that changes SendGrid (PUT
        contacts, DELETE list membership, and their resends after a 401), and give each such attempt at most
        `budget` seconds in all.

        A destination's run passes its lease check here (SyncState.guard_change): no change may reach SendGrid
        from a run whose lease could have run out, or could run out while the request is on its way.
        """
        self._change_guard = guard
        self._change_timeout = _within(self._timeout, budget)
        try:
            yield
        finally:
            self._change_guard = None
            self._change_timeout = self._timeout

    # -- endpoints ---------------------------------------------------------------------------------

    def upsert_contacts(self, body: bytes) -> str:
        """PUT a prepared body (see shared.staging.batching); returns the import job ID."""
        response = self._request("PUT", "/v3/marketing/contacts", content=body, idempotent=False, changes=True)
        job_id = answer(response).get("job_id")
        if not isinstance(job_id, str) or not job_id:
            raise SendGridError("PUT /v3/marketing/contacts: accepted without a job_id, so its outcome cannot be "
                                "followed", status=response.status_code,
                                hint="a proxy in front of SendGrid, or a wrong SENDGRID_BASE_URL?")
        # httpx's Response and its (already read) stream refer to each other, so the response and, through
        # its request, this body of up to 6 MB would live until a full cyclic collection: a 1M-contact run
        # would hold several. Replacing the spent stream breaks the cycle; the body is freed right here.
        response.stream = httpx.ByteStream(b"")
        return job_id

    def get_import(self, job_id: str) -> ImportJob:
        data = answer(self._request("GET", f"/v3/marketing/contacts/imports/{job_id}"))
        results = data.get("results") or {}
        return ImportJob(
            id=str(data.get("id", job_id)),
            status=str(data.get("status", "pending")),
            requested_count=int(results.get("requested_count") or 0),
            created_count=int(results.get("created_count") or 0),
            updated_count=int(results.get("updated_count") or 0),
            deleted_count=int(results.get("deleted_count") or 0),
            errored_count=int(results.get("errored_count") or 0),
            errors_url=results.get("errors_url"),
        )

    def wait_for_imports(
        self, job_ids: Sequence[str], *, poll_interval: float = 1.0, max_interval: float = 15.0,
        timeout: float = 1800.0,
    ) -> dict[str, ImportJob]:
        """Poll every job until it is final or the timeout passes (then its last status is returned)."""
        results: dict[str, ImportJob] = {}
        pending = list(job_ids)
        interval = poll_interval
        deadline = self._clock() + timeout
        while pending:
            still: list[str] = []
            for job_id in pending:
                job = self.get_import(job_id)
                results[job_id] = job
                if not job.is_final:
                    still.append(job_id)
            pending = still
            if not pending or self._clock() >= deadline:
                break
            self._sleep(interval)
            interval = min(interval * 2, max_interval)
        return results

    def field_definitions(self) -> dict[str, CustomField]:
        data = answer(self._request("GET", "/v3/marketing/field_definitions"))
        return {
            str(f["name"]): CustomField(str(f["id"]), f.get("field_type", "Text"))
            for f in data.get("custom_fields") or []
        }

    def get_list(self, list_id: str) -> dict[str, Any]:
        return answer(self._request("GET", f"/v3/marketing/lists/{list_id}"))

    def list_contact_count(self, list_id: str) -> int:
        data = answer(self._request("GET", f"/v3/marketing/lists/{list_id}/contacts/count"))
        return int(data.get("contact_count") or 0)

    def contact_count(self) -> ContactCount:
        data = answer(self._request("GET", "/v3/marketing/contacts/count"))
        return ContactCount(int(data.get("contact_count") or 0), int(data.get("billable_count") or 0))

    def delete_contacts(self, contact_ids: Iterable[str]) -> list[str]:
        """Delete contacts from the account (every list, for good); chunked by URL length. Returns job IDs.

        SendGrid deletes asynchronously: a contact may still be found for a while after its job was accepted,
        so whoever must know it is gone searches for it again (shared.privacy.erasure does).
        """
        jobs: list[str] = []
        path = "/v3/marketing/contacts"
        for chunk in url_chunks(path, list(dict.fromkeys(contact_ids)), parameter="ids"):
            response = self._request("DELETE", path, ids=("ids", chunk), idempotent=True, changes=True)
            jobs.append(str(answer(response).get("job_id", "")))
        return jobs

    def search_emails(self, emails: Sequence[str], refused: list[str] | None = None) -> dict[str, str]:
        """email -> contact ID for those that exist as a contact's own email (SendGrid answers 404 when none
        does; an address found only as another contact's alternate email is left out).

        The search takes addresses of at most 100 characters (upserts take 254) and refuses a whole call for
        an address it calls invalid: such addresses go to `refused` (neither found nor known to be absent)
        and the rest are searched. A 400 that names no address fails the search, as any other error.
        """
        found: dict[str, str] = {}
        left_out = refused if refused is not None else []
        searchable: list[str] = []
        for email in emails:
            (searchable if len(email) <= SEARCH_EMAIL_MAX_LENGTH else left_out).append(email)
        for start in range(0, len(searchable), SEARCH_EMAILS_MAX):
            found.update(self._search_chunk(list(searchable[start:start + SEARCH_EMAILS_MAX]), left_out))
        return found

    def _search_chunk(self, chunk: list[str], refused: list[str]) -> dict[str, str]:
        for _ in range(2):  # the second try is without the addresses the first 400 named
            try:
                data = answer(self._request("POST", "/v3/marketing/contacts/search/emails",
                                             json_body={"emails": chunk}))
            except NotFound:
                return {}
            except InvalidRequest as exc:
                named = exc.positions("emails", len(chunk), in_messages=True)
                if not named:
                    raise
                refused.extend(chunk[i] for i in sorted(named))
                chunk = [email for i, email in enumerate(chunk) if i not in named]
                if not chunk:
                    return {}
                continue
            found: dict[str, str] = {}
            answered = {str(email).lower(): entry or {} for email, entry in (data.get("result") or {}).items()}
            for email in chunk:
                entry = answered.get(email.lower(), {})
                contact = entry.get("contact") if isinstance(entry, dict) else None
                if isinstance(contact, dict) and contact.get("id"):
                    # The search also matches alternate_emails: a contact found under another primary email
                    # is someone else (who may still be in the segment), not this address's own contact.
                    if str(contact.get("email", "")).lower() == email.lower():
                        found[email.lower()] = str(contact["id"])
                elif not (isinstance(entry, dict) and "not found" in str(entry.get("error", "")).lower()):
                    refused.append(email)  # no answer, or another error: not known to be absent
            return found
        raise InvalidRequest("POST /v3/marketing/contacts/search/emails: SendGrid kept refusing addresses",
                             status=400)

    def remove_from_list(self, list_id: str, contact_ids: Iterable[str], removed: list[str] | None = None,
                         unknown: list[str] | None = None) -> list[str]:
        """Remove list membership (contacts stay in the account); chunked by URL length. Returns job IDs.

        `removed` collects the IDs whose removal SendGrid accepted, also when a later chunk fails. SendGrid
        answers 404 for a whole chunk when one contact ID is unknown (deleted from the account meanwhile, so
        on no list): once the list is known to exist, the IDs the answer names go to `unknown` and the rest
        are sent again. A 404 that names none of them fails the removal, as any other error.
        """
        done = removed if removed is not None else []
        gone = unknown if unknown is not None else []
        path = f"/v3/marketing/lists/{list_id}/contacts"
        jobs: list[str] = []
        list_checked = False
        # Two leavers may share a contact (an alternate email): each ID goes once.
        for chunk in url_chunks(path, list(dict.fromkeys(contact_ids))):
            ids = chunk
            for _ in range(2):  # the second try is without the IDs the first 404 named
                try:
                    response = self._request("DELETE", path, ids=("contact_ids", ids), idempotent=True,
                                             changes=True)
                except NotFound as exc:
                    if not list_checked:
                        self.get_list(list_id)  # NotFound again: the list itself is gone, the caller must hear
                        list_checked = True
                    named = {i for i, contact_id in enumerate(ids)
                             if any(contact_id in error.get("message", "") for error in exc.errors)}
                    if not named or (len(named) == len(ids) > 1):  # naming every ID says nothing about any one
                        raise
                    gone.extend(ids[i] for i in sorted(named))
                    ids = [contact_id for i, contact_id in enumerate(ids) if i not in named]
                    if not ids:
                        break
                    continue
                done.extend(ids)
                jobs.append(str(answer(response).get("job_id", "")))
                break
            else:
                raise NotFound(f"DELETE {template(path)}: SendGrid kept answering 404 for contact IDs", status=404)
        return jobs

    def _request(
        self, method: str, path: str, *, content: bytes | None = None, json_body: Any = None,
        params: dict[str, str] | None = None, ids: tuple[str, list[str]] | None = None, idempotent: bool = True,
        changes: bool = False,
    ) -> httpx.Response:
        """One call: the transport retries it, the auth flow re-reads the key; a refusal raises. `ids`: a query
        parameter naming contact IDs (shared.sendgrid.id_urls)."""
        extensions: dict[str, Any] = {IDEMPOTENT: idempotent}
        timeout = self._timeout
        guard = self._change_guard
        if changes and guard is not None:
            timeout = self._change_timeout
            worst = _worst_case(timeout)
            extensions[BEFORE_ATTEMPT] = lambda: guard(worst)
        headers = {"Content-Type": "application/json"} if content is not None or json_body is not None else None
        url = path
        if ids is not None:
            url, params = ids_target(str(self._http.base_url), path, *ids)
        try:
            response = self._http.request(method, url, content=content, json=json_body, params=params,
                                          headers=headers, timeout=timeout, extensions=extensions)
        except (httpx.HTTPError, UnicodeEncodeError) as exc:  # a malformed key: both quote the header
            raise SendGridError(f"{method} {template(path)}: the request could not be made ({type(exc).__name__})",
                                hint="check the SendGrid base URL and the API key's format") from None
        if response.status_code < 300:
            return response
        raise error_for(response, f"{method} {template(path)}")
