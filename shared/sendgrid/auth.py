"""The API key as an httpx auth flow: sent as a bearer token, re-read once when SendGrid answers 401.

A rotated key reaches Key Vault before every worker has it: one re-read (and one resend with the fresh key)
turns that into a single 401 instead of a failed run; a second 401 with the same key is final.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator

import httpx

log = logging.getLogger(__name__)


class ApiKeyAuth(httpx.Auth):
    def __init__(self, api_key: str, reread: Callable[[], str | None] | None = None) -> None:
        self._api_key = api_key
        self._reread = reread

    def __repr__(self) -> str:  # never show the key
        return "ApiKeyAuth(<key>)"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        _bearer(request, self._api_key)
        response = yield request
        if response.status_code != 401 or self._reread is None:
            return
        fresh = self._reread()
        if fresh and fresh != self._api_key:
            log.info("SendGrid answered 401; retrying once with the key re-read from Key Vault")
            self._api_key = fresh
            _bearer(request, fresh)
            yield request


def _bearer(request: httpx.Request, key: str) -> None:
    """Set the header; a key that is not ASCII raises UnicodeEncodeError (which quotes no key) before any
    request is sent, as httpx's own header encoding would for a header given to the request directly."""
    key.encode("ascii")
    request.headers["Authorization"] = f"Bearer {key}"
