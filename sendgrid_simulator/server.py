"""HTTP/1.1 on the standard library: keep-alive, exact Content-Length, one write per answer.

Order of checks for a `/v3` request, each able to answer early: URL length (414) -> injected fault ->
latency -> rate limit (429; every answer carries the X-RateLimit-* headers) -> API key (401/403) ->
body size (413) -> OpenAPI validation (400, when on) -> the endpoint. An early answer still reads the body
off the socket, so the connection stays usable for the client's pool.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from sendgrid_simulator.api import Request
from sendgrid_simulator.limits import MAX_BODY_BYTES, MAX_URL_CHARS
from sendgrid_simulator.ratelimit import Verdict, format_reset
from sendgrid_simulator.routes import route
from sendgrid_simulator.store import ApiError

if TYPE_CHECKING:
    from sendgrid_simulator.simulator import RequestRecord, Simulator

MAX_DRAIN_BYTES = 64 * 1024 * 1024  # past this an oversized body is not read: the connection is closed instead
_FAULT_MESSAGES = {500: "internal server error", 502: "bad gateway", 503: "service unavailable",
                   504: "gateway timeout"}


class SimulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    sim: Simulator

    def __init__(self, address: tuple[str, int], sim: Simulator) -> None:
        self.sim = sim
        self.open_sockets: set[socket.socket] = set()
        super().__init__(address, Handler)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "SendGridSimulator/1.0"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = 300  # idle keep-alive connections are closed after this
    server: SimulatorServer

    def setup(self) -> None:
        super().setup()
        self.server.open_sockets.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.open_sockets.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the request log lives in Simulator.request_log."""

    def do_GET(self) -> None:
        self._handle()

    do_PUT = do_POST = do_DELETE = do_PATCH = do_GET

    # -- plumbing ----------------------------------------------------------------------------------

    def _content_length(self) -> int:
        try:
            return max(int(self.headers.get("Content-Length") or 0), 0)
        except ValueError:
            return 0

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked()
        length = self._content_length()
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _drain(self) -> None:
        length = self._content_length()
        if length > MAX_DRAIN_BYTES:
            self.close_connection = True
            return
        self._read_body()

    def _drop(self) -> None:
        """Close without an answer (what a client sees when a proxy or SendGrid's edge gives up)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _send(self, status: int, payload: Any, headers: list[tuple[str, str]] | None = None,
              content_type: str = "application/json") -> None:
        if isinstance(payload, bytes):
            data = payload
        elif payload is None:
            data = b""
        else:
            data = json.dumps(payload, separators=(",", ":")).encode()
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}", f"Content-Length: {len(data)}",
                 f"Server: {self.server_version}"]
        lines.extend(f"{name}: {value}" for name, value in headers or ())
        if self.close_connection:
            lines.append("Connection: close")
        if self._record is not None:  # before the write: a client may look at the log as soon as it has the answer
            self._record.status = status
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data)

    # -- the request -------------------------------------------------------------------------------

    def _handle(self) -> None:
        sim = self.server.sim
        started = time.perf_counter()
        target = self.path
        split = urlsplit(target)
        path = split.path
        self._record: RequestRecord | None = None
        if path.startswith("/__sim/"):
            body = self._read_body()
            status, payload, content_type = sim.admin(self.command, path, parse_qs(split.query), body)
            self._send(status, payload, content_type=content_type)
            return
        method = self.command
        matched = route(method, path)
        endpoint = matched.endpoint if matched else f"{method} (unknown)"
        record = self._record = sim.record_request(method, target, endpoint)
        try:
            self._answer(sim, method, target, path, split.query, matched, endpoint)
        finally:
            record.seconds = time.perf_counter() - started

    def _answer(self, sim: Simulator, method: str, target: str, path: str, query_string: str,
                matched: Any, endpoint: str) -> int | None:
        if len(sim.base_url) + len(target) > MAX_URL_CHARS:
            self._drain()
            self._send(414, {"errors": [{"field": None, "message": "request URI too long"}]})
            return 414
        fault = sim.faults.take(method, path)
        if fault is not None and fault.kind == "drop_before_body":
            self._drop()
            return None
        if sim.latency > 0:
            time.sleep(sim.latency)
        if fault is not None and fault.kind == "slow":
            time.sleep(fault.seconds)
        if fault is not None and fault.kind == "status":
            self._drain()
            message = _FAULT_MESSAGES.get(fault.status, "injected failure")
            self._send(fault.status, {"errors": [{"field": None, "message": message}]})
            return fault.status
        if fault is not None and fault.kind == "rate_limit":
            self._drain()
            limit = sim.limiter.check(endpoint).limit
            reset = round(time.time() + fault.seconds, 3)
            self._send(429, _TOO_MANY, [("X-RateLimit-Limit", str(limit)), ("X-RateLimit-Remaining", "0"),
                                        ("X-RateLimit-Reset", format_reset(reset))])
            return 429
        verdict: Verdict = sim.limiter.check(endpoint)
        rate_headers = verdict.headers()
        if not verdict.allowed:
            self._drain()
            self._send(429, _TOO_MANY, rate_headers)
            return 429
        key, error = sim.authorize(self.headers.get("Authorization"), matched.scope if matched else None)
        if error is not None:
            self._drain()
            self._send(error.status, {"errors": error.errors}, rate_headers)
            return error.status
        if self._content_length() > MAX_BODY_BYTES:
            self._drain()
            self._send(413, {"errors": [{"field": None, "message":
                                         f"request body is larger than {MAX_BODY_BYTES} bytes"}]}, rate_headers)
            return 413
        body = self._read_body()
        if matched is None or matched.action == "method_not_allowed":
            status = 404 if matched is None else 405
            message = "resource not found" if matched is None else "method not allowed"
            self._send(status, {"errors": [{"field": None, "message": message}]}, rate_headers)
            return status
        query = parse_qs(query_string, keep_blank_values=True)
        violation = sim.validate(method, path, query, self.headers, body)
        if violation is not None:
            self._send(400, {"errors": [{"field": None, "message": f"OpenAPI: {m}"} for m in violation.messages]},
                       rate_headers)
            return 400
        try:
            status, payload = getattr(sim.api, matched.action)(Request(matched.params, query, body, key))
        except ApiError as exc:
            status, payload = exc.status, {"errors": exc.errors}
        if fault is not None and fault.kind == "drop_after_body":
            self._drop()
            return None
        self._send(status, payload, rate_headers)
        return int(status)


_TOO_MANY = {"errors": [{"field": None, "message": "too many requests"}]}
