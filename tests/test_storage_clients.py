"""The app's storage clients read the environment's proxy and CA settings once, and still honour them.

Against real parts: Azurite, a recording proxy on loopback, and the Key Vault stand-in as an HTTPS server
signed by a CA of its own.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ServiceRequestError
from azure.storage.blob import ContainerClient

from shared.config.storage import blob_service_from_settings, transport_options
from tests.azurite import Azurite
from tests.keyvault_standin import KeyVaultStandIn

ROOT = Path(__file__).resolve().parents[1]
_PROXY_AND_CA = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "requests_ca_bundle", "curl_ca_bundle")


class RecordingProxy:
    """Answers every request 404 and keeps its request line: what reached the proxy, and for which URL."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    data = conn.recv(65536)
                    if not data:
                        break
                    head += data
                self.lines.append(head.split(b"\r\n", 1)[0].decode())
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    def close(self) -> None:
        self._server.close()


@pytest.fixture
def proxy() -> Iterator[RecordingProxy]:
    recorder = RecordingProxy()
    yield recorder
    recorder.close()


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, azurite: Azurite) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.lower() in _PROXY_AND_CA:
            monkeypatch.delenv(name)
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    return monkeypatch


def test_a_proxy_setting_carries_the_storage_requests(clean_environment: pytest.MonkeyPatch,
                                                      proxy: RecordingProxy, azurite: Azurite) -> None:
    clean_environment.setenv("HTTP_PROXY", proxy.url)
    container = blob_service_from_settings().get_container_client("proxied")
    assert container.exists() is False  # the proxy's 404
    assert len(proxy.lines) == 1
    method, target, _ = proxy.lines[0].split(" ")
    assert method == "GET" and target.startswith(f"http://127.0.0.1:{azurite.port}/devstoreaccount1/proxied")


def test_no_proxy_still_exempts_a_host(clean_environment: pytest.MonkeyPatch, proxy: RecordingProxy) -> None:
    clean_environment.setenv("http_proxy", proxy.url)
    clean_environment.setenv("no_proxy", "127.0.0.1")
    container = blob_service_from_settings().get_container_client("direct")
    container.create_container()
    assert container.exists() is True
    assert proxy.lines == []


def test_without_a_proxy_setting_the_environment_is_read_when_the_client_is_built(
        clean_environment: pytest.MonkeyPatch, proxy: RecordingProxy) -> None:
    container = blob_service_from_settings().get_container_client("built-before")
    clean_environment.setenv("HTTP_PROXY", proxy.url)  # after: this worker's clients do not see it
    container.create_container()
    assert container.exists() is True
    assert proxy.lines == []
    assert transport_options() == {}  # a client built now would go through it


@pytest.mark.parametrize("name", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_a_ca_bundle_setting_is_trusted_without_a_proxy(clean_environment: pytest.MonkeyPatch,
                                                        keyvault: KeyVaultStandIn, name: str) -> None:
    def container() -> ContainerClient:  # an HTTPS server whose certificate only the stand-in's CA signs
        return ContainerClient(keyvault.url, "c", retry_total=0, **transport_options())

    with pytest.raises(ServiceRequestError, match="CERTIFICATE_VERIFY_FAILED"):
        container().exists()
    clean_environment.setenv(name, keyvault.ca_path)
    assert transport_options()["use_env_settings"] is False
    with pytest.raises(HttpResponseError, match="api-version") as answered:  # past TLS: the server's own answer
        container().exists()
    assert answered.value.status_code == 400


def test_numpy_starts_no_blas_threads_beside_the_export() -> None:
    """The package sets OPENBLAS_NUM_THREADS before numpy's first import; an operator's own value stands."""
    count = "import shared, numpy, os; print(len(os.listdir('/proc/self/task')))"
    environment = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    run = subprocess.run([sys.executable, "-c", count], cwd=ROOT, env=environment, capture_output=True,
                         text=True, check=True)
    assert run.stdout.strip() == "1"
    if (os.cpu_count() or 1) > 1:  # what it would be without the setting: a thread per core
        run = subprocess.run([sys.executable, "-c", count], cwd=ROOT, env=dict(environment, OPENBLAS_NUM_THREADS="2"),
                             capture_output=True, text=True, check=True)
        assert run.stdout.strip() == "2"


def test_a_state_blob_that_fits_one_put_is_one_get_and_a_segment_file_streams_in_smaller_ones(
        clean_environment: pytest.MonkeyPatch, azurite: Azurite) -> None:
    """A 100,000-contact snapshot's index and text (2.4 and 2.9 MB) are read whole: one GET each on the wire.
    A segment file from its own account streams 2 MB a GET, as peak RSS needs."""
    from azure.core.pipeline.transport import RequestsTransport

    from shared.config.storage import segments_blob_service_from_settings
    from shared.state.snapshot import SINGLE_PUT

    clean_environment.setenv("SEGMENTS_STORAGE", azurite.connection_string)
    state = blob_service_from_settings().get_container_client("firstget")
    state.create_container()
    body = os.urandom(SINGLE_PUT - 4096)
    state.upload_blob("state/d/snapshot.txt", body)
    gets: list[str] = []
    send = RequestsTransport.send

    def counted(self: RequestsTransport, request: Any, **kwargs: Any) -> Any:
        if request.method == "GET":
            gets.append(request.headers.get("x-ms-range", ""))
        return send(self, request, **kwargs)

    clean_environment.setattr(RequestsTransport, "send", counted)
    assert state.download_blob("state/d/snapshot.txt", offset=0, length=len(body)).readall() == body
    assert len(gets) == 1
    gets.clear()
    segments = segments_blob_service_from_settings().get_container_client("firstget")
    assert b"".join(segments.download_blob("state/d/snapshot.txt").chunks()) == body
    assert len(gets) == 2 and gets[0] == f"bytes=0-{(2 << 20) - 1}"
