"""Retries and SendGrid's rate window as a transport layer, under the client's endpoint methods.

Why hand-rolled retries: SendGrid's 429 carries the moment to retry (`X-RateLimit-Reset`, Unix time),
which generic retry transports ignore, and a PUT of 30,000 contacts must never be retried after SendGrid
answered that it accepted it (202). The rules here:
- 429: wait until `X-RateLimit-Reset` (bounded by a total wait budget), then try again.
- 5xx, timeouts, refused or dropped connections: bounded exponential backoff with full jitter.
- A PUT whose answer was lost after it was sent (dropped connection, read timeout) may have been accepted:
  SendGrid offers no idempotency key and no list of import jobs to check, so it is sent again (upserts are
  keyed by email: the list ends the same) and counted in `stats.unconfirmed_resends`, which the run report
  shows per batch (`resent`) and in total (`possible_duplicate_sends`).
- Anything else is returned: the client turns 4xx into the specific exceptions of `errors`.

Per request, the client may set extensions: `sendgrid.idempotent` (False for the PUT) and
`sendgrid.before_attempt` (called before every attempt of a request that changes SendGrid: the run's lease).
"""

from __future__ import annotations

import logging
import math
import random
import ssl
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable

import httpx

from shared.sendgrid.errors import RateLimitExhausted, SendGridError, TransientFailure, template
from shared.sendgrid.models import ClientStats, RetryPolicy

log = logging.getLogger(__name__)

IDEMPOTENT = "sendgrid.idempotent"
BEFORE_ATTEMPT = "sendgrid.before_attempt"
# Failures that prove SendGrid never received the whole request (no connection, or the body was not written).
_NOT_DELIVERED = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.WriteError,
                  httpx.WriteTimeout)


class RetryTransport(httpx.BaseTransport):
    def __init__(self, inner: httpx.BaseTransport, policy: RetryPolicy, stats: ClientStats, *,
                 sleep: Callable[[float], None], clock: Callable[[], float]) -> None:
        self._inner = inner
        self._retry = policy
        self._stats = stats
        self._sleep = sleep
        self._clock = clock
        self._rate_limit_spent = 0.0
        self._not_before = 0.0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        endpoint = f"{request.method} {template(request.url.path)}"
        before_attempt: Callable[[], None] | None = request.extensions.get(BEFORE_ATTEMPT)
        attempt = 0
        while True:
            self._wait_for_window()
            attempt += 1
            if before_attempt is not None:
                before_attempt()  # raises when this run may not change SendGrid any more: nothing is sent
            self._stats.requests += 1
            self._stats.by_endpoint[endpoint] = self._stats.by_endpoint.get(endpoint, 0) + 1
            try:
                response = self._inner.handle_request(request)
                response.read()  # inside the retries: an answer lost while it is read is retried like one never sent
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                self._after_no_answer(exc, request, endpoint, attempt)
                continue
            self._note_rate_headers(response)
            status = response.status_code
            if status == 429:
                response.close()
                self._wait_rate_limit(response, endpoint)
                attempt -= 1  # a 429 is not a failed attempt; the wait budget bounds it
                continue
            if status >= 500:
                response.close()
                if attempt >= self._retry.max_attempts:
                    raise TransientFailure(f"{endpoint}: HTTP {status} after {attempt} attempts", status=status,
                                           hint="SendGrid kept failing; try again later")
                self._backoff(attempt, endpoint, f"HTTP {status}")
                continue
            return response

    def _after_no_answer(self, exc: Exception, request: httpx.Request, endpoint: str, attempt: int) -> None:
        """Back off before the next attempt, or raise what the caller can do about it."""
        refused = _certificate_refused(exc)
        if refused is not None:  # not transient: retrying cannot make the certificate trusted
            raise SendGridError(
                f"{endpoint}: the TLS certificate of {request.url.host} was refused ({refused}); "
                "this request was not sent",
                hint="a TLS-inspecting proxy (add its CA with SSL_CERT_FILE) or a wrong SENDGRID_BASE_URL?",
            ) from None
        # A PUT whose body may have reached SendGrid is still retried: upserts are idempotent in effect, and
        # not retrying would lose the batch. Counted so the report can say so.
        if attempt >= self._retry.max_attempts:
            outcome = "the batch was not confirmed and is reported as not sent" if request.method == "PUT" \
                else "try again later"
            raise TransientFailure(f"{endpoint}: {type(exc).__name__} after {attempt} attempts",
                                   hint=f"SendGrid did not answer; {outcome}") from None
        if not request.extensions.get(IDEMPOTENT, True) and not isinstance(exc, _NOT_DELIVERED):
            self._stats.unconfirmed_resends += 1
        self._backoff(attempt, endpoint, type(exc).__name__)

    def close(self) -> None:
        self._inner.close()

    def _backoff(self, attempt: int, endpoint: str, why: str) -> None:
        self._stats.retries += 1
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
        self._stats.rate_limited += 1
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
        self._stats.rate_limit_wait_seconds += wait
        log.info("SendGrid rate limit (%s): waiting %.2fs", what, wait)
        self._sleep(wait)


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


def _float(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None  # "nan" would poison the waits


def environment_proxy(base_url: str) -> str | None:
    """HTTPS_PROXY / HTTP_PROXY (and NO_PROXY) as httpx would honour them for its own transport: a client given
    a transport of its own ignores them, and an app whose traffic must leave through a proxy needs them."""
    parts = urllib.parse.urlsplit(base_url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme.lower())


def tls_context() -> ssl.SSLContext:
    """httpx's default TLS context (CA bundle, SSL_CERT_FILE/SSL_CERT_DIR honoured), built once per thread:
    loading the CA bundle takes ~20 ms of CPU, which every run of a warm worker would pay again. Not one per
    process: httpcore sets ALPN on the context for each new connection, and OpenSSL does not promise that a
    context may change while another thread opens a connection with it."""
    context: ssl.SSLContext | None = getattr(_per_thread, "tls_context", None)
    if context is None:
        context = _per_thread.tls_context = httpx.create_ssl_context()
    return context


_per_thread = threading.local()
