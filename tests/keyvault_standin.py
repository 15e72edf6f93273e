"""A local Azure Key Vault stand-in: real HTTPS, real challenge flow, real SecretClient on the other end.

Why not mock SecretClient: the parts that break in production are the wire-level ones (the 401 challenge,
the bearer token, 403/404 error bodies, retries on 503, dropped connections). This server speaks the same
protocol as Key Vault for `GET /secrets/{name}/{version?}`:

- no bearer token   -> 401 + `WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/<tenant>",
                       resource="https://vault.azure.net"` (the SDK then asks the credential for a token)
- wrong token       -> 403 with Key Vault's ForbiddenByRbac error JSON
- unknown secret    -> 404 with Key Vault's SecretNotFound error JSON
- unavailable       -> 503 ServiceUnavailable, or the connection is closed without an answer

Test-only client settings (`client_kwargs`), never used in production:
- `connection_verify=<ca pem>`: trust the trustme CA that signed this server's certificate;
- `verify_challenge_resource=False`: the SDK refuses to send a token for `https://vault.azure.net` to a host
  that is not `*.vault.azure.net`; 127.0.0.1 is not, so the check is disabled here (and only here);
- `retry_total=1`, short timeouts: fault tests finish in well under a second.

Use the `keyvault` fixture (import it into a test module, or list this module in `pytest_plugins`).
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import trustme
from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions

TENANT_ID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
KEY_VAULT_RESOURCE = "https://vault.azure.net"
VALID_TOKEN = "standin-access-token"

_CA: trustme.CA | None = None
_CA_LOCK = threading.Lock()


def _ca() -> trustme.CA:
    """One CA per test session: generating keys is the slow part."""
    global _CA
    with _CA_LOCK:
        if _CA is None:
            _CA = trustme.CA()
        return _CA


class StaticTokenCredential:
    """Stands in for DefaultAzureCredential/ManagedIdentityCredential (Entra ID is not reachable here).

    Issues a fixed token and records what the SDK asked for (scopes, tenant), which shows that the
    challenge flow ran: the scope and tenant come only from the vault's 401 challenge.
    """

    def __init__(self, token: str = VALID_TOKEN) -> None:
        self.token = token
        self.calls: list[tuple[tuple[str, ...], str | None]] = []

    def get_token(self, *scopes: str, claims: str | None = None, tenant_id: str | None = None,
                  enable_cae: bool = False, **kwargs: Any) -> AccessToken:
        self.calls.append((scopes, tenant_id))
        return AccessToken(self.token, int(time.time()) + 3600)

    def get_token_info(self, *scopes: str, options: TokenRequestOptions | None = None) -> AccessTokenInfo:
        self.calls.append((scopes, (options or {}).get("tenant_id")))
        return AccessTokenInfo(self.token, int(time.time()) + 3600)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    authorization: str | None
    status: int  # 0 when the connection was closed without an answer


@dataclass
class _Secret:
    versions: list[tuple[str, str, int]] = field(default_factory=list)  # (version, value, created)


class KeyVaultStandIn:
    """The running server and its state. Thread-safe: the SDK may use several connections."""

    def __init__(self, ca_dir: Path, *, expected_token: str = VALID_TOKEN) -> None:
        ca = _ca()
        self.ca_path = str(ca_dir / "keyvault-standin-ca.pem")
        ca.cert_pem.write_to_path(self.ca_path)
        self.expected_token = expected_token
        self.tenant_id = TENANT_ID
        self.credential = StaticTokenCredential(expected_token)
        self._lock = threading.Lock()
        self._secrets: dict[str, _Secret] = {}
        self._requests: list[RecordedRequest] = []
        self._unavailable: Literal["503", "close"] | None = None
        self._latency = 0.0

        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        # Handshake in the handler thread, not in the accept loop.
        self._server.socket = server_ctx.wrap_socket(self._server.socket, server_side=True,
                                                     do_handshake_on_connect=False)
        self.port = int(self._server.server_address[1])
        self.url = f"https://127.0.0.1:{self.port}/"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="keyvault-standin", daemon=True)
        self._thread.start()

    @property
    def client_kwargs(self) -> dict[str, Any]:
        """SecretClient keyword arguments for this server (test-only, see module docstring)."""
        return {
            "connection_verify": self.ca_path,
            "verify_challenge_resource": False,
            "retry_total": 1,
            "retry_backoff_factor": 0.01,
            "connection_timeout": 5,
            "read_timeout": 5,
        }

    # -- state -----------------------------------------------------------------------------------------

    def set_secret(self, name: str, value: str) -> str:
        """Create the secret or add a new version (rotation); returns the new version id."""
        version = uuid.uuid4().hex
        with self._lock:
            self._secrets.setdefault(name, _Secret()).versions.append((version, value, int(time.time())))
        return version

    def delete_secret(self, name: str) -> None:
        with self._lock:
            self._secrets.pop(name, None)

    def set_unavailable(self, unavailable: bool, mode: Literal["503", "close"] = "503") -> None:
        """Answer every request with 503, or close each connection without answering (mode="close")."""
        with self._lock:
            self._unavailable = mode if unavailable else None

    def set_latency(self, seconds: float) -> None:
        """Delay every answer, to make concurrent callers overlap deterministically."""
        with self._lock:
            self._latency = seconds

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def secret_reads(self) -> list[RecordedRequest]:
        """Requests that carried a token (i.e. not the SDK's challenge probes)."""
        return [r for r in self.requests if r.authorization is not None]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- protocol --------------------------------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _handle(self, method: str, raw_path: str, authorization: str | None
                ) -> tuple[int, dict[str, str], dict[str, Any]] | None:
        """Returns (status, headers, body), or None to drop the connection."""
        with self._lock:
            unavailable, latency = self._unavailable, self._latency
        if latency:
            time.sleep(latency)
        if unavailable == "close":
            return None
        if unavailable == "503":
            return 503, {}, _error("ServiceUnavailable", "The service is temporarily unavailable.")

        split = urlsplit(raw_path)
        query = parse_qs(split.query)
        if not query.get("api-version"):
            return 400, {}, _error("MissingApiVersionParameter",
                                   "The api-version query parameter (?api-version=) is required for all requests.")
        if not authorization or not authorization.startswith("Bearer "):
            challenge = (f'Bearer authorization="https://login.microsoftonline.com/{self.tenant_id}", '
                         f'resource="{KEY_VAULT_RESOURCE}"')
            return 401, {"WWW-Authenticate": challenge}, _error(
                "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.")
        if authorization.removeprefix("Bearer ") != self.expected_token:
            return 403, {}, {"error": {
                "code": "Forbidden",
                "message": "Caller is not authorized to perform action on resource.\r\n"
                           "If role assignments, deny assignments or role definitions were changed recently, "
                           "please observe propagation time.\r\n"
                           "Action: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'\r\n"
                           "Assignment: (not found)\r\nDecisionReason: 'DeniedWithNoValidRBAC'\r\n",
                "innererror": {"code": "ForbiddenByRbac"},
            }}

        parts = [unquote(p) for p in split.path.split("/") if p]
        if method != "GET" or len(parts) not in (2, 3) or parts[0] != "secrets":
            return 400, {}, _error("BadParameter", "The stand-in implements only GET /secrets/{name}/{version}.")
        name = parts[1]
        wanted = parts[2] if len(parts) == 3 else ""
        with self._lock:
            secret = self._secrets.get(name)
            found = None
            if secret is not None:
                found = (secret.versions[-1] if not wanted
                         else next((v for v in secret.versions if v[0] == wanted), None))
        if found is None:
            label = f"{name}/{wanted}" if wanted else name
            return 404, {}, _error(
                "SecretNotFound",
                f"A secret with (name/id) {label} was not found in this key vault. If you recently deleted this "
                "secret you may be able to recover it using the correct recovery command. For help resolving "
                "this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182")
        version, value, created = found
        return 200, {}, {
            "value": value,
            "id": f"https://127.0.0.1:{self.port}/secrets/{name}/{version}",
            "attributes": {"enabled": True, "created": created, "updated": created,
                           "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90},
            "tags": {},
        }


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _make_handler(vault: KeyVaultStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like the real service

        def do_GET(self) -> None:
            self._serve("GET")

        def do_PUT(self) -> None:
            self._serve("PUT")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            authorization = self.headers.get("Authorization")
            answer = vault._handle(method, self.path, authorization)
            split = urlsplit(self.path)
            vault._record(RecordedRequest(method, split.path, parse_qs(split.query), authorization,
                                          answer[0] if answer else 0))
            if answer is None:
                self.close_connection = True
                return
            status, headers, body = answer
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("x-ms-keyvault-service-version", "1.9.0.0")
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean; requests are recorded in vault.requests

    return Handler


def _forget_challenge(url: str) -> None:
    """The SDK caches challenges per host:port for the whole process; start each stand-in from scratch."""
    try:
        from azure.keyvault.secrets._shared import http_challenge_cache
    except ImportError:  # private module moved: tests still pass, the first request just skips the probe
        return
    http_challenge_cache.remove_challenge_for_url(url)


def running_keyvault(tmp_path: Path) -> Iterator[KeyVaultStandIn]:
    """A fresh Key Vault stand-in (new port, no secrets, available); the body of conftest's `keyvault`."""
    vault = KeyVaultStandIn(tmp_path)
    _forget_challenge(vault.url)
    try:
        yield vault
    finally:
        vault.stop()
        _forget_challenge(vault.url)
