"""A SendGrid Marketing Contacts client on httpx: one object owns the connection pool, retries and auth.

Why hand-rolled retries: SendGrid's 429 carries the moment to retry (`X-RateLimit-Reset`, Unix time),
which generic retry transports ignore, and a PUT of 30,000 contacts must never be retried after SendGrid
answered that it accepted it (202). The rules here:
- 429: wait until `X-RateLimit-Reset` (bounded by a total wait budget), then try again.
- 5xx, timeouts, refused or dropped connections: bounded exponential backoff with full jitter.
- A PUT whose answer was lost after it was sent (dropped connection, read timeout) may have been accepted:
  SendGrid offers no idempotency key and no list of import jobs to check, so it is sent again (upserts are
  keyed by email: the list ends the same) and counted in `stats.unconfirmed_resends`, which the run report
  shows per batch (`resent`) and in total (`possible_duplicate_sends`).
- 400/401/403/404: no retry; a specific exception that says what to fix. The key never appears in one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from shared.errors import (
    AuthenticationError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RateLimitExhausted,
    SendGridError,
    TransientFailure,
)
from shared.mapping.contact_mapping import CustomField

log = logging.getLogger(__name__)

FINAL_IMPORT_STATUSES = frozenset({"completed", "errored", "failed", "expired"})  # expired: ours, for a 404
SEARCH_EMAILS_MAX = 100
SEARCH_EMAIL_MAX_LENGTH = 100  # maxLength of an `emails` item of POST /v3/marketing/contacts/search/emails
MAX_DELETE_URL_CHARS = 7_500  # SendGrid has answered 414 past about 8,000
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
_EMAILISH = re.compile(r"\S*@\S*")  # the whole token: an address may hold quotes (o'brien@...)
_QUOTED_ID = re.compile(r"[0-9a-fA-F-]{36}|[a-z]\d+_[A-Z]")  # a list UUID, a custom field ID (e1_T)
# Greedy and across lines: a quoted name may hold quotes (O'Neil) or a line break; hiding more is fine.
_QUOTED = re.compile(r"'.*'|\".*\"|[‘“].*[’”]", re.DOTALL)
# Failures that prove SendGrid never received the whole request (no connection, or the body was not written).
_NOT_DELIVERED = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.WriteError,
                  httpx.WriteTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6  # per request, for 5xx / timeouts / dropped connections
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    rate_limit_budget: float = 600.0  # total seconds a client may spend waiting on 429s
    min_rate_limit_wait: float = 0.05


@dataclass(frozen=True)
class ImportJob:
    id: str
    status: str
    requested_count: int = 0
    created_count: int = 0
    updated_count: int = 0
    deleted_count: int = 0
    errored_count: int = 0
    errors_url: str | None = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_IMPORT_STATUSES


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    rate_limit_wait_seconds: float = 0.0
    by_endpoint: dict[str, int] = field(default_factory=dict)
    # Non-idempotent requests (PUT upserts) sent again after an attempt that may have reached SendGrid (the
    # connection failed after the request was written: dropped, read timeout). SendGrid has no idempotency key
    # and no list of import jobs to check, so such an attempt may have been accepted: a possible duplicate send.
    unconfirmed_resends: int = 0


def _worst_case(timeout: httpx.Timeout) -> float:
    """The longest one attempt may take: each phase's limit in turn (httpx's limits are per phase)."""
    return sum(t for t in (timeout.connect, timeout.write, timeout.read, timeout.pool) if t is not None)


def _within(timeout: httpx.Timeout, budget: float) -> httpx.Timeout:
    """`timeout` with every phase cut to its share of `budget` (connect 10%, write 40%, read 40%, pool 10%)."""
    def cut(value: float | None, share: float) -> float:
        return min(value, budget * share) if value is not None else budget * share
    return httpx.Timeout(connect=cut(timeout.connect, 0.1), write=cut(timeout.write, 0.4),
                         read=cut(timeout.read, 0.4), pool=cut(timeout.pool, 0.1))


def _certificate_refused(exc: BaseException) -> str | None:
    """OpenSSL's reason, when the connection failed because the server's certificate was not trusted."""
    cause: BaseException | None = exc
    for _ in range(8):  # httpx -> httpcore -> ssl; bounded, in case of a cycle
        if cause is None:
            return None
        if isinstance(cause, ssl.SSLCertVerificationError):
            return str(cause.verify_message or "certificate verify failed")
        cause = cause.__cause__ or cause.__context__
    return None


def _tls_context() -> ssl.SSLContext:
    """httpx's default TLS context (CA bundle, SSL_CERT_FILE/SSL_CERT_DIR honoured), built once per thread:
    loading the CA bundle takes ~20 ms of CPU, which every run of a warm worker would pay again. Not one per
    process: httpcore sets ALPN on the context for each new connection, and OpenSSL does not promise that a
    context may change while another thread opens a connection with it."""
    context: ssl.SSLContext | None = getattr(_per_thread, "tls_context", None)
    if context is None:
        context = _per_thread.tls_context = httpx.create_ssl_context()
    return context


_per_thread = threading.local()


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
        self._api_key = api_key
        self._retry = retry or RetryPolicy()
        self._on_unauthorized = on_unauthorized
        self._sleep = sleep
        self._clock = clock
        self._rate_limit_spent = 0.0
        self._not_before = 0.0
        self._timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self._change_guard: Callable[[float], None] | None = None
        self._change_timeout = self._timeout
        self.stats = ClientStats()
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=timeout,
            transport=transport,
            verify=_tls_context(),
            headers={"User-Agent": "segment-to-sendgrid/0.1", "Accept": "application/json"},
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=8),
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
        contacts, DELETE list membership), and give each such attempt at most `budget` seconds in all.

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
        job_id = _answer(response).get("job_id")
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
        data = _answer(self._request("GET", f"/v3/marketing/contacts/imports/{job_id}"))
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
        data = _answer(self._request("GET", "/v3/marketing/field_definitions"))
        return {
            str(f["name"]): CustomField(str(f["id"]), f.get("field_type", "Text"))
            for f in data.get("custom_fields") or []
        }

    def get_list(self, list_id: str) -> dict[str, Any]:
        return _answer(self._request("GET", f"/v3/marketing/lists/{list_id}"))

    def list_contact_count(self, list_id: str) -> int:
        data = _answer(self._request("GET", f"/v3/marketing/lists/{list_id}/contacts/count"))
        return int(data.get("contact_count") or 0)

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
                data = _answer(self._request("POST", "/v3/marketing/contacts/search/emails",
                                             json_body={"emails": chunk}))
            except NotFound:
                return {}
            except InvalidRequest as exc:
                named = _named_positions(exc, "emails", len(chunk))
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
        for chunk in _url_chunks(path, list(dict.fromkeys(contact_ids))):
            ids = chunk
            for _ in range(2):  # the second try is without the IDs the first 404 named
                try:
                    response = self._request("DELETE", path, params={"contact_ids": ",".join(ids)},
                                             idempotent=True, changes=True)
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
                jobs.append(str(_answer(response).get("job_id", "")))
                break
            else:
                raise NotFound(f"DELETE {_template(path)}: SendGrid kept answering 404 for contact IDs", status=404)
        return jobs

    # -- transport ---------------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, *, content: bytes | None = None, json_body: Any = None,
        params: dict[str, str] | None = None, idempotent: bool = True, changes: bool = False,
    ) -> httpx.Response:
        body = content if content is not None else (
            json.dumps(json_body, separators=(",", ":")).encode() if json_body is not None else None)
        endpoint = f"{method} {_template(path)}"
        attempt = 0
        reauthenticated = False
        while True:
            self._wait_for_window()
            attempt += 1
            self.stats.requests += 1
            self.stats.by_endpoint[endpoint] = self.stats.by_endpoint.get(endpoint, 0) + 1
            headers = {"Authorization": f"Bearer {self._api_key}"}
            if body is not None:
                headers["Content-Type"] = "application/json"
            timeout = self._timeout
            if changes and self._change_guard is not None:
                timeout = self._change_timeout
                self._change_guard(_worst_case(timeout))  # raises (LockLost) when this run may not change SendGrid
            try:
                response = self._http.request(method, path, content=body, params=params, headers=headers,
                                              timeout=timeout)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                refused = _certificate_refused(exc)
                if refused is not None:  # not transient: retrying cannot make the certificate trusted
                    raise SendGridError(
                        f"{endpoint}: the TLS certificate of {self._http.base_url.host} was refused ({refused}); "
                        "this request was not sent",
                        hint="a TLS-inspecting proxy (add its CA with SSL_CERT_FILE) or a wrong SENDGRID_BASE_URL?",
                    ) from None
                # A PUT whose body may have reached SendGrid is still retried: upserts are idempotent in
                # effect, and not retrying would lose the batch. Counted so the report can say so.
                if attempt >= self._retry.max_attempts:
                    outcome = "the batch was not confirmed and is reported as not sent" if method == "PUT" \
                        else "try again later"
                    raise TransientFailure(f"{endpoint}: {type(exc).__name__} after {attempt} attempts",
                                           hint=f"SendGrid did not answer; {outcome}") from None
                if not idempotent and not isinstance(exc, _NOT_DELIVERED):
                    self.stats.unconfirmed_resends += 1
                self._backoff(attempt, endpoint, type(exc).__name__)
                continue
            except (httpx.HTTPError, UnicodeEncodeError) as exc:  # a malformed key: both quote the header
                raise SendGridError(f"{endpoint}: the request could not be made ({type(exc).__name__})",
                                    hint="check the SendGrid base URL and the API key's format") from None
            self._note_rate_headers(response)
            status = response.status_code
            if status < 300:
                return response
            if status == 429:
                self._wait_rate_limit(response, endpoint)
                attempt -= 1  # a 429 is not a failed attempt; the wait budget bounds it
                continue
            if status >= 500:
                if attempt >= self._retry.max_attempts:
                    raise TransientFailure(f"{endpoint}: HTTP {status} after {attempt} attempts", status=status,
                                           hint="SendGrid kept failing; try again later")
                self._backoff(attempt, endpoint, f"HTTP {status}")
                continue
            if status == 401 and self._on_unauthorized is not None and not reauthenticated:
                reauthenticated = True
                fresh = self._on_unauthorized()
                if fresh and fresh != self._api_key:
                    log.info("SendGrid answered 401; retrying once with the key re-read from Key Vault")
                    self._api_key = fresh
                    continue
            raise _error_for(response, endpoint)

    def _backoff(self, attempt: int, endpoint: str, why: str) -> None:
        self.stats.retries += 1
        ceiling = min(self._retry.backoff_max, self._retry.backoff_base * 2 ** (attempt - 1))
        delay = random.uniform(0, ceiling)  # noqa: S311 - jitter, not cryptography
        log.warning("%s failed (%s); retry %d in %.2fs", endpoint, why, attempt, delay)
        self._sleep(delay)

    def _note_rate_headers(self, response: httpx.Response) -> None:
        remaining = response.headers.get("X-RateLimit-Remaining")
        reset = _float(response.headers.get("X-RateLimit-Reset"))
        if remaining is not None and remaining.strip() == "0" and reset is not None:
            self._not_before = max(self._not_before, reset)

    def _wait_for_window(self) -> None:
        """Proactively wait when the last answer said the window is used up, instead of drawing a 429."""
        if self._not_before:
            wait = self._not_before - self._clock()
            self._not_before = 0.0
            if wait > 0:
                self._spend_rate_limit_wait(min(wait, self._retry.backoff_max), "window used up")

    def _wait_rate_limit(self, response: httpx.Response, endpoint: str) -> None:
        self.stats.rate_limited += 1
        reset = _float(response.headers.get("X-RateLimit-Reset"))
        wait = (reset - self._clock()) if reset is not None else 1.0
        self._not_before = 0.0
        self._spend_rate_limit_wait(max(wait, self._retry.min_rate_limit_wait), endpoint)

    def _spend_rate_limit_wait(self, wait: float, what: str) -> None:
        if self._rate_limit_spent + wait > self._retry.rate_limit_budget:
            raise RateLimitExhausted(
                f"{what}: rate limited for more than {self._retry.rate_limit_budget:.0f}s in total",
                status=429, hint="SendGrid kept answering 429; run again later or lower concurrency")
        self._rate_limit_spent += wait
        self.stats.rate_limit_wait_seconds += wait
        log.info("SendGrid rate limit (%s): waiting %.2fs", what, wait)
        self._sleep(wait)


def _float(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None  # "nan" would poison the waits


def _template(path: str) -> str:
    """/v3/marketing/lists/<uuid>/contacts -> /v3/marketing/lists/{id}/contacts, for stats and messages."""
    parts = path.split("/")
    known = {"v3", "marketing", "contacts", "imports", "lists", "count", "search", "emails",
             "field_definitions", "scopes"}
    return "/".join(p if p in known or not p else "{id}" for p in parts)


def _url_chunks(path: str, ids: list[str]) -> Iterator[list[str]]:
    """IDs in groups whose `?contact_ids=a,b,...` stays under SendGrid's URL limit (',' is sent as %2C)."""
    base = len(path) + len("?contact_ids=")
    chunk: list[str] = []
    length = base
    for contact_id in ids:
        if chunk and length + len(contact_id) + 3 > MAX_DELETE_URL_CHARS:
            yield chunk
            chunk, length = [], base
        chunk.append(contact_id)
        length += len(contact_id) + 3
    if chunk:
        yield chunk


def _named_positions(exc: SendGridError, name: str, count: int) -> set[int]:
    """Positions SendGrid's errors name, e.g. `emails[3]`, within a request of `count` items."""
    pattern = re.compile(rf"{name}\[(\d+)\]")
    positions = {int(m.group(1)) for error in exc.errors for m in pattern.finditer(
        f"{error.get('field', '')} {error.get('message', '')}")}
    return {position for position in positions if position < count}


def redact(message: str) -> str:
    """SendGrid's messages quote the offending value (an address, a name): keep them out of errors, logs and
    reports."""
    return _QUOTED.sub(_unless_an_id, _EMAILISH.sub("<email>", message))


def _unless_an_id(match: re.Match[str]) -> str:
    """A quoted list or field ID says what to fix and is nobody's personal data."""
    return match.group(0) if _QUOTED_ID.fullmatch(match.group(0)[1:-1]) else "<value>"


def _answer(response: httpx.Response) -> dict[str, Any]:
    """A success answer's JSON object; SendGridError (never a bare ValueError) when it is not one."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        endpoint = f"{response.request.method} {_template(response.request.url.path)}"
        raise SendGridError(f"{endpoint}: HTTP {response.status_code} with an answer that is not a JSON object",
                            status=response.status_code,
                            hint="a proxy in front of SendGrid, or a wrong SENDGRID_BASE_URL?")
    return data


def _error_for(response: httpx.Response, endpoint: str) -> SendGridError:
    status = response.status_code
    try:
        errors = [
            {"field": str(e.get("field")), "message": str(e.get("message", ""))}
            for e in (response.json().get("errors") or [])
        ]
    except (ValueError, AttributeError):
        errors = []
    # SendGrid quotes offending addresses in its messages: keep them out of exceptions (they reach logs).
    summary = redact("; ".join(e["message"] for e in errors[:3])) or response.reason_phrase
    if status == 401:
        return AuthenticationError(f"{endpoint}: SendGrid refused the API key (401)", status=status,
                                   hint="the key in Key Vault is wrong, expired or revoked: store a valid key",
                                   errors=errors)
    if status == 403:
        return PermissionDenied(f"{endpoint}: the API key may not do this (403)", status=status,
                                hint="give the key Marketing full access (scopes marketing.read/write)",
                                errors=errors)
    if status == 404:
        names_a_list = "/lists/" in endpoint or any(e["field"].startswith("list_ids") for e in errors)
        hint = ("check the destination's list_id: no such list in this SendGrid account"
                if names_a_list else "SendGrid does not know this resource")
        return NotFound(f"{endpoint}: not found (404): {summary}", status=status, hint=hint, errors=errors)
    if status in (400, 413, 414, 422):
        return InvalidRequest(f"{endpoint}: SendGrid rejected the request ({status}): {summary}", status=status,
                              hint="see errors for the field to fix", errors=errors)
    return SendGridError(f"{endpoint}: unexpected HTTP {status}", status=status, errors=errors)
