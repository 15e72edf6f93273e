"""Shared fixtures: real Azurite for Blob Storage, the HTTPS Key Vault stand-in, the SendGrid simulator."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient

from sendgrid_simulator import Simulator
from tests.azurite import Azurite, start_azurite
from tests.keyvault_standin import KeyVaultStandIn, running_keyvault
from tests.sendgrid_fixture import running_simulator


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    server = start_azurite()
    yield server
    server.stop()


@pytest.fixture
def blob_service(azurite: Azurite) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(azurite.connection_string)


@pytest.fixture
def container(blob_service: BlobServiceClient) -> Iterator[ContainerClient]:
    """A fresh, uniquely named container per test."""
    client = blob_service.create_container(f"t{uuid.uuid4().hex[:20]}")
    yield client
    client.delete_container()


@pytest.fixture
def keyvault(tmp_path: Path) -> Iterator[KeyVaultStandIn]:
    """A fresh Key Vault stand-in per test (new port, no secrets, available)."""
    yield from running_keyvault(tmp_path)


@pytest.fixture
def sendgrid_sim() -> Iterator[Simulator]:
    """A started simulator that fails the test on any request not conforming to SendGrid's OpenAPI files."""
    yield from running_simulator()


@pytest.fixture
def leases_run_out(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Call it to let every lease held run out, as if the run holding it had been paused past it: the locks'
    clock jumps a lease ahead. A lock renewed moments ago is not renewed again (shared.state.lock), so a
    lease broken by hand a moment ago would go unnoticed; expiry is what the tests mean."""
    from shared.state import lock

    def run_out() -> None:
        clock = lock._clock
        monkeypatch.setattr(lock, "_clock", lambda: clock() + lock.LEASE_SECONDS + 1)

    return run_out
