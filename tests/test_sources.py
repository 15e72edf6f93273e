"""Byte sources: local folders refuse escapes; blob sources stream in chunks from real storage (Azurite)."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient

from shared.errors import SegmentFileError
from shared.source.readers import open_segment
from shared.source.sources import BlobContainerSource, LocalDirSource, source_for
from tests.azurite import Azurite


def test_local_source_reads_and_describes(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.csv").write_bytes(b"x")
    source = LocalDirSource(tmp_path)
    with source.open("sub/a.csv") as fh:
        assert fh.read() == b"x"
    assert source.exists("sub/a.csv") and not source.exists("sub/b.csv")
    assert source.describe("sub/a.csv") == "sub/a.csv"
    with pytest.raises(SegmentFileError, match="file not found"):
        source.open("sub/b.csv")


@pytest.mark.parametrize("name", ["../x.csv", "/etc/passwd", "a/../../x.csv", "", "C:\\x.csv", "https://h/x.csv"])
def test_local_source_refuses_names_outside_the_root(tmp_path: Path, name: str) -> None:
    with pytest.raises(SegmentFileError, match="not a file name inside"):
        LocalDirSource(tmp_path).open(name)


def test_local_source_refuses_symlinks_out_of_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside.csv"
    outside.write_text("secret")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "link.csv")
    with pytest.raises(SegmentFileError, match="resolves outside"):
        LocalDirSource(root).open("link.csv")


def test_source_for_a_local_path(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("A\n1\n")
    source, name = source_for(str(tmp_path / "a.csv"))
    assert isinstance(source, LocalDirSource) and name == "a.csv"


def small_chunk_container(azurite: Azurite, name: str) -> ContainerClient:
    service = BlobServiceClient.from_connection_string(azurite.connection_string, max_single_get_size=256 << 10,
                                                       max_chunk_get_size=256 << 10)
    return service.get_container_client(name)


def test_blob_source_streams_a_20_mb_blob_in_chunks(azurite: Azurite, container: ContainerClient) -> None:
    line = b"c0000000,someone@example.com,Firstname,Lastname,City\n"
    payload = b"CustomerId,Email,FirstName,LastName,City\n" + line * ((20 << 20) // len(line))
    container.upload_blob("big/seg.csv", payload)
    source = BlobContainerSource(small_chunk_container(azurite, container.container_name))
    tracemalloc.start()
    try:
        total = 0
        with source.open("big/seg.csv") as fh:
            while block := fh.read(1 << 16):
                total += len(block)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == len(payload)
    assert peak < 4 << 20, peak  # a few chunks, never the 20 MB blob
    with open_segment(source, "big/seg.csv") as reader:
        assert reader.columns == ["CustomerId", "Email", "FirstName", "LastName", "City"]
        assert sum(1 for r in reader if r.error is None) == (20 << 20) // len(line)


def test_blob_changed_during_the_read_fails_clearly(azurite: Azurite, container: ContainerClient) -> None:
    container.upload_blob("seg.csv", b"A\n" + b"1\n" * (1 << 20))
    source = BlobContainerSource(small_chunk_container(azurite, container.container_name))
    with source.open("seg.csv") as fh:
        fh.read(1024)
        container.upload_blob("seg.csv", b"A\n2\n", overwrite=True)
        with pytest.raises(SegmentFileError, match="changed while it was being read"):
            while fh.read(1 << 16):
                pass


def test_blob_helpers(container: ContainerClient) -> None:
    container.upload_blob("dest/a.csv", b"A\n1\n")
    container.upload_blob("dest/b.csv", b"A\n1\n")
    container.upload_blob("other/c.csv", b"A\n1\n")
    source = BlobContainerSource(container)
    assert sorted(source.list("dest/")) == ["dest/a.csv", "dest/b.csv"]
    assert source.exists("dest/a.csv") and not source.exists("dest/zzz.csv")
    assert source.etag("dest/a.csv") == container.get_blob_client("dest/a.csv").get_blob_properties().etag
    assert source.describe("dest/a.csv") == f"{container.container_name}/dest/a.csv"
    with pytest.raises(SegmentFileError, match="file not found"):
        source.open("dest/zzz.csv")
    for bad in ("../other/c.csv", "/dest/a.csv", "dest/../other/c.csv", "https://evil/x"):
        with pytest.raises(SegmentFileError, match="not a file name inside the container"):
            source.open(bad)


def test_source_for_an_azurite_url(azurite: Azurite, container: ContainerClient,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    container.upload_blob("dest/a b.csv", b"Email\na@example.com\n")
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    url = f"http://127.0.0.1:{azurite.port}/devstoreaccount1/{container.container_name}/dest/a%20b.csv"
    source, name = source_for(url)
    assert isinstance(source, BlobContainerSource) and name == "dest/a b.csv"
    with open_segment(source, name) as reader:
        assert [r.fields for r in reader] == [{"Email": "a@example.com"}]
    assert "AccountKey" not in source.describe(name) and "sig=" not in source.describe(name)


def test_source_for_a_public_blob_url_parses_account_container_and_name() -> None:
    source, name = source_for("https://acct.blob.core.windows.net/segments/ci/x.csv?sv=2024&sig=secret",
                              credential=None)
    assert isinstance(source, BlobContainerSource)
    assert name == "ci/x.csv"
    assert source.container_url == "https://acct.blob.core.windows.net/segments"
    assert "secret" not in source.describe(name)


def test_head_reads_only_the_start_of_a_blob_and_handles_an_empty_one(container: ContainerClient) -> None:
    source = BlobContainerSource(container)
    container.upload_blob("big.gz", b"\x1f\x8b" + b"x" * 300_000, overwrite=True)
    container.upload_blob("empty.gz", b"", overwrite=True)
    assert source.head("big.gz", 1000) == b"\x1f\x8b" + b"x" * 998
    assert source.head("empty.gz", 1000) == b""
    with pytest.raises(SegmentFileError, match="file not found"):
        source.head("missing.gz", 10)
