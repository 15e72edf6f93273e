"""Where a segment file's bytes come from: a local folder or a blob container, always streamed.

Readers only ever see a `ByteSource` and a name, so the same code reads a file on a laptop (CLI) and a blob
in the Function App. Memory must grow with one download chunk, never with the file: nothing here reads a
whole file.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Protocol
from urllib.parse import unquote, urlsplit

from azure.core.exceptions import AzureError, HttpResponseError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import ContainerClient

from shared.config.settings import setting
from shared.config.storage import transport_options
from shared.config.time_budgets import DOWNLOAD_CALL_OPTIONS
from shared.errors import SegmentFileError


class ByteSource(Protocol):
    """A place holding named files (a folder, a container); names use '/' and are relative to it."""

    def open(self, name: str) -> BinaryIO:
        """A readable, streaming binary file object; the caller closes it. Missing → SegmentFileError."""
        ...

    def exists(self, name: str) -> bool: ...

    def head(self, name: str, size: int) -> bytes:
        """The file's first `size` bytes (fewer when it is shorter), read without downloading the rest."""
        ...

    def describe(self, name: str) -> str:
        """How to name the file in errors and reports (never a key or SAS token)."""
        ...


def _checked_relative(name: str, where: str) -> PurePosixPath:
    """Refuse names that could reach outside the folder/container: absolute, '..', URLs, backslashes."""
    if not name or name.startswith(("/", "\\")) or "://" in name or "\\" in name or "\x00" in name:
        raise SegmentFileError(name or "(empty name)", f"not a file name inside {where}")
    if any(part in ("..", ".") for part in name.split("/")):
        raise SegmentFileError(name, f"not a file name inside {where}")
    return PurePosixPath(name)


class LocalDirSource:
    """Files under a root folder (CLI, tests, benchmarks); names may not escape the root, even by symlink."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def _path(self, name: str) -> Path:
        relative = _checked_relative(name, "the folder")
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise SegmentFileError(name, "not a file name inside the folder (it resolves outside it)")
        return path

    def open(self, name: str) -> BinaryIO:
        path = self._path(name)
        try:
            return path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise SegmentFileError(self.describe(name), "file not found") from None

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def head(self, name: str, size: int) -> bytes:
        with self.open(name) as stream:
            return stream.read(size)

    def describe(self, name: str) -> str:
        return name


class _ChunkStream(io.RawIOBase):
    """Adapts the SDK's chunk iterator to a file object, holding at most one chunk."""

    def __init__(self, chunks: Iterator[bytes], description: str) -> None:
        super().__init__()
        self._chunks = chunks
        self._description = description
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                return 0
            except ResourceModifiedError:
                raise SegmentFileError(self._description, "the file changed while it was being read; its new "
                                                          "version is exported by its own trigger") from None
            except AzureError as exc:  # storage unreachable or failing mid-download
                raise SegmentFileError(self._description, _storage_failed(exc)) from None
            self._pending = memoryview(chunk)
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size

    def close(self) -> None:
        self._pending = memoryview(b"")
        self._chunks = iter(())
        super().close()


def _storage_failed(exc: AzureError) -> str:
    return (f"storage failed while the file was being read ({type(exc).__name__}); nothing was sent, "
            "run the export again")


class BlobContainerSource:
    """Blobs in one container. Downloads in chunks (the first GET is at most the client's
    `max_single_get_size`, then `max_chunk_get_size` each) pinned to the ETag of the first response, so a
    blob overwritten mid-read fails clearly instead of mixing two versions."""

    def __init__(self, container: ContainerClient, *, buffer_size: int = 1 << 16) -> None:
        self.container = container
        self.buffer_size = buffer_size

    @property
    def container_url(self) -> str:
        """The container's URL without any SAS query string."""
        parts = urlsplit(self.container.url)
        return f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")

    def _blob(self, name: str) -> Any:
        _checked_relative(name, "the container")
        return self.container.get_blob_client(name)

    def open(self, name: str) -> BinaryIO:
        blob = self._blob(name)
        try:
            downloader = blob.download_blob(max_concurrency=1, **DOWNLOAD_CALL_OPTIONS)
        except ResourceNotFoundError:
            raise SegmentFileError(self.describe(name), "file not found") from None
        except AzureError as exc:
            raise SegmentFileError(self.describe(name), _storage_failed(exc)) from None
        raw = _ChunkStream(downloader.chunks(), self.describe(name))
        return io.BufferedReader(raw, buffer_size=self.buffer_size)

    def exists(self, name: str) -> bool:
        return bool(self._blob(name).exists())

    def head(self, name: str, size: int) -> bytes:
        try:
            return bytes(self._blob(name).download_blob(offset=0, length=size).readall())
        except ResourceNotFoundError:
            raise SegmentFileError(self.describe(name), "file not found") from None
        except HttpResponseError as exc:
            if exc.status_code == 416:  # an empty blob has no byte 0
                return b""
            raise SegmentFileError(self.describe(name), _storage_failed(exc)) from None
        except AzureError as exc:
            raise SegmentFileError(self.describe(name), _storage_failed(exc)) from None

    def etag(self, name: str) -> str:
        try:
            return str(self._blob(name).get_blob_properties().etag)
        except ResourceNotFoundError:
            raise SegmentFileError(self.describe(name), "file not found") from None

    def list(self, prefix: str = "") -> Iterator[str]:
        """Blob names under `prefix`, streamed page by page."""
        for blob in self.container.list_blobs(name_starts_with=prefix or None):
            yield str(blob.name)

    def describe(self, name: str) -> str:
        return f"{self.container.container_name or ''}/{name}"

    def name_for_url(self, url: str) -> str | None:
        """The blob name a URL points at inside this container, or None when it points elsewhere.

        Accepts the ADLS Gen2 (`.dfs.`) spelling of the account host, which CDM writers use, and ignores
        the query string (`?snapshot=...`).
        """
        target = _normal_url(url)
        own = f"{_normal_url(self.container_url)}/"
        if target is None or not target.startswith(own):
            return None
        name = target[len(own):]
        try:
            _checked_relative(name, "the container")
        except SegmentFileError:
            return None
        return name


def _normal_url(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    host = parts.netloc.lower().removesuffix(":443").replace(".dfs.core.windows.net", ".blob.core.windows.net")
    return f"{host}{unquote(parts.path)}"


def _is_ip_or_local(host: str) -> bool:
    host = host.split(":", 1)[0]
    return host in ("localhost", "azurite") or host.replace(".", "").isdigit()


def source_for(path_or_url: str, credential: Any = None) -> tuple[ByteSource, str]:
    """A source and name for the CLI: a local path, or a blob URL.

    Blob URLs: `https://<account>.blob.core.windows.net/<container>/<blob>` or the emulator's
    `http://127.0.0.1:<port>/<account>/<container>/<blob>`. Credentials, first match: `credential`; a SAS in
    the URL's query; the SEGMENTS_STORAGE or AzureWebJobsStorage connection string when it names the same endpoint;
    DefaultAzureCredential.
    """
    if not path_or_url.lower().startswith(("http://", "https://")):
        path = Path(path_or_url).expanduser().resolve()
        return LocalDirSource(path.parent), path.name
    parts = urlsplit(path_or_url)
    segments = [unquote(s) for s in parts.path.split("/") if s]
    account_depth = 1 if _is_ip_or_local(parts.netloc) else 0
    if len(segments) < account_depth + 2:
        raise SegmentFileError(f"{parts.scheme}://{parts.netloc}{parts.path}",
                               "a blob URL needs a container and a blob name")
    account_url = f"{parts.scheme}://{parts.netloc}" + "".join(f"/{s}" for s in segments[:account_depth])
    container_name = segments[account_depth]
    blob_name = "/".join(segments[account_depth + 1:])
    container = _container_client(account_url, container_name, parts.query, credential)
    return BlobContainerSource(container), blob_name


def _container_client(account_url: str, container_name: str, sas: str, credential: Any) -> ContainerClient:
    if credential is not None:
        return ContainerClient(account_url, container_name, credential=credential, **transport_options())
    if sas:
        return ContainerClient(account_url, container_name, credential=sas, **transport_options())
    for name in ("SEGMENTS_STORAGE", "AzureWebJobsStorage"):  # the segments account, then the app's own
        connection = setting(name)
        if connection and "=" in connection:
            from_settings = ContainerClient.from_connection_string(connection, container_name, **transport_options())
            if _normal_url(from_settings.url) == _normal_url(f"{account_url}/{container_name}"):
                return from_settings
    from azure.identity import DefaultAzureCredential  # noqa: PLC0415  (slow import, CLI-only path)

    return ContainerClient(account_url, container_name, credential=DefaultAzureCredential(), **transport_options())
