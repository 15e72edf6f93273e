"""What SendGrid's refusals mean to the caller, parsed once; never the API key, never a quoted value.

    SendGridError                 SendGrid refused or did not answer; `status`, `hint`, `errors`
    ├── terminal: fix the configuration, then run again
    │   ├── AuthenticationError   401: the key is wrong, expired or revoked (re-read from Key Vault once first)
    │   ├── PermissionDenied      403: the key lacks the Marketing scopes
    │   └── NotFound              404: an unknown list, job or contact
    ├── skippable: drop what it names, send the rest
    │   └── InvalidRequest        400/413/414/422: `positions()` says which contacts or addresses
    └── transient: run again later (the next refresh does)
        ├── RateLimitExhausted    429s past the client's wait budget
        └── TransientFailure      5xx, timeouts, dropped connections past the retry budget

The pipeline turns these into run reports; shared.errors holds the app's own errors (configuration, files).
"""

from __future__ import annotations

import re
from typing import Any

import httpx

_EMAILISH = re.compile(r"\S*@\S*")  # the whole token: an address may hold quotes (o'brien@...)
_QUOTED_ID = re.compile(r"[0-9a-fA-F-]{36}|[a-z]\d+_[A-Z]")  # a list UUID, a custom field ID (e1_T)
# Greedy and across lines: a quoted name may hold quotes (O'Neil) or a line break; hiding more is fine.
_QUOTED = re.compile(r"'.*'|\".*\"|[‘“].*[’”]", re.DOTALL)


class SendGridError(Exception):
    """SendGrid refused a request; `status` and `hint` say what to fix. Never includes the API key."""

    def __init__(self, message: str, *, status: int | None = None, hint: str = "",
                 errors: list[dict[str, str]] | None = None) -> None:
        self.status = status
        self.hint = hint
        self.errors = errors or []
        text = message if not hint else f"{message} ({hint})"
        super().__init__(text)

    def positions(self, name: str, count: int, *, in_messages: bool = False) -> dict[int, tuple[str, str]]:
        """position -> (the field after `name[N].`, SendGrid's message, redacted) for each item of a request of
        `count` items that SendGrid's errors name, e.g. `contacts[3].identifier` or `emails[7]` (the one
        parser of these positions; `in_messages`: also where a message, not only a field, names one)."""
        pattern = re.compile(rf"{name}\[(\d+)\]\.?([\w.]*)")
        named: dict[int, tuple[str, str]] = {}
        for error in self.errors:
            where = error.get("field") or ""
            if in_messages:
                where = f"{where} {error.get('message', '')}"
            for match in pattern.finditer(where):
                position = int(match.group(1))
                if position < count:  # the last error naming an item wins
                    named[position] = (match.group(2), redact(error.get("message") or "refused"))
        return named


class AuthenticationError(SendGridError):
    """401: the API key is wrong, expired or revoked (re-read it from Key Vault once, then give up)."""


class PermissionDenied(SendGridError):
    """403: the API key lacks the Marketing scopes this app needs."""


class NotFound(SendGridError):
    """404: an unknown list ID, import job or contact."""


class InvalidRequest(SendGridError):
    """400: SendGrid rejected the body; `errors` holds its field/message pairs."""


class RateLimitExhausted(SendGridError):
    """429s went on past the client's wait budget."""


class TransientFailure(SendGridError):
    """5xx, timeouts or dropped connections went on past the retry budget; the batch was not accepted."""


def redact(message: str) -> str:
    """SendGrid's messages quote the offending value (an address, a name): keep them out of errors, logs and
    reports."""
    return _QUOTED.sub(_unless_an_id, _EMAILISH.sub("<email>", message))


def _unless_an_id(match: re.Match[str]) -> str:
    """A quoted list or field ID says what to fix and is nobody's personal data."""
    return match.group(0) if _QUOTED_ID.fullmatch(match.group(0)[1:-1]) else "<value>"


def template(path: str) -> str:
    """/v3/marketing/lists/<uuid>/contacts -> /v3/marketing/lists/{id}/contacts, for stats and messages."""
    parts = path.split("/")
    known = {"v3", "marketing", "contacts", "imports", "lists", "count", "search", "emails",
             "field_definitions", "scopes"}
    return "/".join(p if p in known or not p else "{id}" for p in parts)


def error_for(response: httpx.Response, endpoint: str) -> SendGridError:
    """The exception for a refusal, from SendGrid's `errors` array (addresses redacted)."""
    status = response.status_code
    try:
        errors = [
            {"field": str(e.get("field")), "message": str(e.get("message", ""))}
            for e in (response.json().get("errors") or [])
        ]
    except (ValueError, AttributeError):
        errors = []
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


def answer(response: httpx.Response) -> dict[str, Any]:
    """A success answer's JSON object; SendGridError (never a bare ValueError) when it is not one."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        endpoint = f"{response.request.method} {template(response.request.url.path)}"
        raise SendGridError(f"{endpoint}: HTTP {response.status_code} with an answer that is not a JSON object",
                            status=response.status_code,
                            hint="a proxy in front of SendGrid, or a wrong SENDGRID_BASE_URL?")
    return data
