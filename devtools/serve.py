"""A development server for this app's own HTTP functions on localhost (not a replacement for `func start`).

It serves what `function_app.app` registers, as the Functions host would for these functions: every HTTP
route under /api with its methods and auth level (FUNCTION and ADMIN routes need the key printed at start, in
the `x-functions-key` header or `?code=`; a missing or wrong key gets 401 with an empty body; no route gets
404), the request handed over as a `func.HttpRequest` (route parameters, query, headers, body) and the
answer encoded by azure.functions' own HTTP converter. Messages a function puts in a queue output binding go,
after the response, to the queue-triggered function of that queue (in this process, one at a time; a failed
attempt is retried with the next dequeue count up to host.json's maxDequeueCount). Timers and Event Grid
blob events are not served; nothing else of the host is (no extensions, no scaling, no other languages).

`scripts/serve.sh` starts Azurite and the SendGrid simulator, uploads the sample segment, runs it once
through the blob trigger (so there is a run to look at) and serves the console at a printed URL.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import queue
import secrets
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import azure.functions as func
from azure.functions.http import HttpResponseConverter

from devtools.functions_host import (
    ROUTE_PREFIX,
    deliver_queue_message,
    find_route,
    http_routes,
    invoke_http,
    queued_messages,
)

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("devserver")


def max_dequeue_count() -> int:
    """host.json extensions.queues.maxDequeueCount (the host's default, 5, when not set)."""
    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    return int(host.get("extensions", {}).get("queues", {}).get("maxDequeueCount", 5))


class DevServer:
    """The HTTP listener and the in-process queue worker; `start()` returns once both are serving."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, key: str | None = None,
                 retry_delay: float = 1.0) -> None:
        self.key = key or secrets.token_urlsafe(32)
        self.retry_delay = retry_delay
        self.max_dequeue = max_dequeue_count()
        self._messages: queue.Queue[tuple[str, str, int] | None] = queue.Queue()
        self._idle = threading.Condition()
        self._unfinished = 0
        self.httpd = ThreadingHTTPServer((host, port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.dev = self  # type: ignore[attr-defined]
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def console_url(self) -> str:
        return f"{self.url}/{ROUTE_PREFIX}/console"

    def start(self) -> None:
        for target, name in ((self.httpd.serve_forever, "devserver-http"), (self._work, "devserver-queue")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._messages.put(None)
        for thread in self._threads:
            thread.join(timeout=30)

    def key_accepted(self, headers: dict[str, str], query: dict[str, str]) -> bool:
        given = headers.get("x-functions-key") or query.get("code") or ""
        return hmac.compare_digest(given.encode(), self.key.encode())

    # -- the queue worker ---------------------------------------------------------------------------------

    def enqueue(self, queue_name: str, body: str, dequeue_count: int = 1) -> None:
        self.reserve(1)
        self.deliver_later(queue_name, body, dequeue_count)

    def reserve(self, count: int) -> None:
        """Count messages about to be queued (before the response leaves, so `wait_until_idle` after the
        answer never sees an empty queue that is about to be filled)."""
        with self._idle:
            self._unfinished += count

    def deliver_later(self, queue_name: str, body: str, dequeue_count: int = 1) -> None:
        """Queue a message already counted by `reserve`."""
        self._messages.put((queue_name, body, dequeue_count))

    def wait_until_idle(self, timeout: float = 60.0) -> bool:
        """True once every queued message (and its retries) has been handled."""
        with self._idle:
            return self._idle.wait_for(lambda: self._unfinished == 0, timeout=timeout)

    def _work(self) -> None:
        while (item := self._messages.get()) is not None:
            queue_name, body, count = item
            try:
                deliver_queue_message(queue_name, body, dequeue_count=count)
                log.info("queue %s: message handled (attempt %d)", queue_name, count)
            except Exception as exc:
                if count < self.max_dequeue:
                    log.warning("queue %s: attempt %d failed (%s); retrying", queue_name, count, type(exc).__name__)
                    time.sleep(self.retry_delay)
                    self.enqueue(queue_name, body, count + 1)
                else:
                    log.error("queue %s: attempt %d failed (%s); the host would move the message to %s-poison",
                              queue_name, count, type(exc).__name__, queue_name, exc_info=True)
            finally:
                with self._idle:
                    self._unfinished -= 1
                    self._idle.notify_all()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "segment-sendgrid-devserver"

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: the base class logs the request line, whose query may hold the key (`?code=`)."""

    def _handle(self) -> None:
        dev: DevServer = self.server.dev  # type: ignore[attr-defined]
        # Read first, whatever the answer: an unread body would be taken for the next request on this connection.
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        split = urlsplit(self.path)
        path = unquote(split.path)
        if path in ("", "/"):
            self._send(302, {"Location": f"/{ROUTE_PREFIX}/console"}, b"")
            return
        prefix = f"/{ROUTE_PREFIX}/"
        found = find_route(self.command, path[len(prefix):]) if path.lower().startswith(prefix) else None
        if found is None:
            self._send(404, {}, b"", log_as="no function")
            return
        route, params = found
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        headers = {name.lower(): value for name, value in self.headers.items()}
        if route.auth_level != "ANONYMOUS" and not dev.key_accepted(headers, query):
            self._send(401, {}, b"", log_as=route.name)
            return
        request = func.HttpRequest(self.command, f"http://{self.headers.get('Host', 'localhost')}{self.path}",
                                   headers=headers, params=query, route_params=params, body=body)
        try:
            response, outputs = invoke_http(route, request)
            encoded = HttpResponseConverter.encode(response, expected_type=None).value
        except Exception:
            log.exception("%s raised; the host answers 500", route.name)
            self._send(500, {}, b"", log_as=route.name)
            return
        # The host sends output bindings once the function returned; they run after the answer is out.
        messages = [(queue_name, message) for queue_name, out in outputs.items() for message in queued_messages(out)]
        dev.reserve(len(messages))
        try:
            self._send(int(encoded["status_code"].value),
                       {name: datum.value for name, datum in encoded["headers"].items()},
                       encoded["body"].value or b"", log_as=route.name)
        finally:  # a client gone before the answer does not stop the host sending them
            for queue_name, message in messages:
                dev.deliver_later(queue_name, message)

    def _send(self, status: int, headers: dict[str, str], body: bytes, *, log_as: str = "") -> None:
        # The path only: the query string may hold the function key. Logged before the answer leaves.
        log.info("%s %s -> %d %s", self.command, urlsplit(self.path).path, status, log_as)
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def describe(server: DevServer) -> str:
    lines = ["Development server for this app's HTTP functions (not `func start`; see devtools/serve.py)",
             f"  console:      {server.console_url}",
             f"  function key: {server.key}",
             "                (the console asks for it once; API calls send it as the x-functions-key header)",
             "  routes:"]
    for route in sorted(http_routes(), key=lambda r: r.template):
        methods = ",".join(route.methods or ("*",))
        lines.append(f"    {methods:<5} /{ROUTE_PREFIX}/{route.template}  ({route.name}, {route.auth_level.lower()})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    # Azurite and the simulator only when run as a program (the tests import DevServer alone).
    from devtools.local_env import add_sample_options, start_with_sample  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=7071, help="port (default 7071, as `func start`)")
    parser.add_argument("--key", help="function key to accept (default: a new random one, printed)")
    add_sample_options(parser)
    args = parser.parse_args(argv)
    services = start_with_sample(args)
    try:
        try:
            server = DevServer(host=args.host, port=args.port, key=args.key)
        except OSError as exc:
            print(f"cannot listen on {args.host}:{args.port} ({exc.strerror}): choose another port with --port",
                  file=sys.stderr)
            return 2
        server.start()
        print(describe(server), flush=True)
        stopping = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())  # `kill`: stop as Ctrl-C does
        try:
            stopping.wait()
        except KeyboardInterrupt:
            pass
        finally:
            print("stopping: the server, then Azurite and the simulator", file=sys.stderr)
            server.stop()
    finally:
        services.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
