"""Start a real Azurite blob service (npm `azurite`, pinned in package.json) for tests and the local run."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "devstoreaccount1"
# Azurite's published, well-known development key (not a secret).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
# A second account, as a platform's own segments account would be (a test key, not a secret).
SEGMENTS_ACCOUNT = "segmentsaccount"
SEGMENTS_ACCOUNT_KEY = "c2VnbWVudHMtYWNjb3VudC10ZXN0LWtleS1ub3QtYS1zZWNyZXQtMDEyMzQ1Njc4OQ=="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Azurite:
    process: subprocess.Popen[bytes]
    port: int
    workdir: str

    @property
    def connection_string(self) -> str:
        return self.connection_string_for(ACCOUNT, ACCOUNT_KEY)

    @property
    def segments_connection_string(self) -> str:
        """The second account this Azurite serves (AZURITE_ACCOUNTS)."""
        return self.connection_string_for(SEGMENTS_ACCOUNT, SEGMENTS_ACCOUNT_KEY)

    def connection_string_for(self, account: str, key: str) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/{account};"
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_azurite() -> Azurite:
    binary = ROOT / "node_modules" / ".bin" / "azurite-blob"
    if not binary.exists():
        raise RuntimeError("Azurite is not installed: run `npm ci` in the project root")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="azurite-")
    process = subprocess.Popen(
        [str(binary), "--silent", "--skipApiVersionCheck", "--loose", "--disableTelemetry",
         "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "AZURITE_ACCOUNTS": f"{ACCOUNT}:{ACCOUNT_KEY};{SEGMENTS_ACCOUNT}:{SEGMENTS_ACCOUNT_KEY}"},
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(f"Azurite exited at start: {err}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return Azurite(process, port, workdir)
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("Azurite did not start within 30 s")
