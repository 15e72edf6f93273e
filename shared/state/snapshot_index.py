"""The snapshot's keys and fingerprints as binary arrays (`state/<destination>/snapshot.idx`), beside its text.

What a run loads of a snapshot is its keys and fingerprints; taking them from the text means downloading every
line (~60 MB at a million contacts) and parsing two integers out of each (~0.5 s). The index holds the same two
arrays as 8-byte integers (16 bytes an entry), tied to the one version of the text it was written with by that
blob's ETag. A text written without one (an older version of this app, an erasure's rewrite, a v1 upgrade) or
changed since has no valid index, and is parsed as before: the index can only be missing, never wrong. The text
itself is then downloaded only when its emails are needed (mirror's leavers) or it is merged into the next one.

Written and read a block at a time, through local files: the arrays of a million entries are never held twice.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from array import array
from typing import IO, Any

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import BlobBlock, ContainerClient

log = logging.getLogger(__name__)

INDEX_FORMAT = "segment-to-sendgrid snapshot index v1"
_BLOCK = 2 << 20  # bytes an upload block or a ranged read
_LITTLE = sys.byteorder == "little"  # stored little-endian, whatever the machine


class IndexWriter:
    """The new snapshot's keys and fingerprints in its order, in two local files until uploaded."""

    def __init__(self) -> None:
        self._keys: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self._fps: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self._pending_keys = array("q")
        self._pending_fps = array("q")
        self._written = 0

    @property
    def count(self) -> int:
        return self._written + len(self._pending_keys)

    def add(self, key: int, fp: int) -> None:
        self._pending_keys.append(key)
        self._pending_fps.append(fp)
        if len(self._pending_keys) >= 4096:
            self.flush()

    def add_run(self, keys: array[int], fps: array[int]) -> None:
        self.flush()
        self._write(keys, fps)

    def flush(self) -> None:
        if self._pending_keys:
            self._write(self._pending_keys, self._pending_fps)
            self._pending_keys, self._pending_fps = array("q"), array("q")

    def _write(self, keys: array[int], fps: array[int]) -> None:
        if not _LITTLE:
            keys, fps = array("q", keys), array("q", fps)
            keys.byteswap()
            fps.byteswap()
        keys.tofile(self._keys)
        fps.tofile(self._fps)
        self._written += len(keys)

    def store(self, container: ContainerClient, path: str, header: dict[str, Any], text_etag: str) -> None:
        """Upload as `path`: a JSON line (the text's header and ETag), then the keys, then the fingerprints.

        Best effort, after the text is stored: an index that fails to upload is only missing (the old one no
        longer matches the text's ETag), so the next run parses the text. No lease check is needed either: a
        run that took the lock over has written, or will write, its own text, which this index does not match.
        """
        try:
            self._store(container, path, header, text_etag)
        except AzureError as exc:
            log.warning("snapshot index %s not stored (%s): the next run reads the snapshot's text", path,
                        type(exc).__name__)

    def _store(self, container: ContainerClient, path: str, header: dict[str, Any], text_etag: str) -> None:
        self.flush()
        head = json.dumps({"format": INDEX_FORMAT, "text_etag": text_etag, "count": self.count,
                           "header": header}).encode() + b"\n"
        blob = container.get_blob_client(path)
        if 16 * self.count + len(head) <= _BLOCK:
            self._keys.seek(0)
            self._fps.seek(0)
            blob.upload_blob(head + self._keys.read() + self._fps.read(), overwrite=True)
            return
        blocks: list[BlobBlock] = []

        def stage(chunk: bytes) -> None:
            block_id = f"{len(blocks):08d}"
            blob.stage_block(block_id, chunk)
            blocks.append(BlobBlock(block_id))

        stage(head)
        for part in (self._keys, self._fps):
            part.seek(0)
            while chunk := part.read(_BLOCK):
                stage(chunk)
        blob.commit_block_list(blocks)

    def close(self) -> None:
        self._keys.close()
        self._fps.close()


def load_index(container: ContainerClient, path: str, text_path: str) -> tuple[
        dict[str, Any], array[int], array[int], str] | None:
    """(the text's header, keys, fingerprints, the text's ETag) when a valid index of the stored text exists."""
    try:
        text_etag = str(container.get_blob_client(text_path).get_blob_properties().etag)
        stream = container.download_blob(path, offset=0, length=_BLOCK)
    except ResourceNotFoundError:
        return None
    first = stream.readall()
    end = first.find(b"\n")
    try:
        head = json.loads(first[:end])
        count, header = int(head["count"]), dict(head["header"])
    except (ValueError, TypeError, KeyError):
        return None  # not an index this code wrote: the text is parsed instead
    if head.get("format") != INDEX_FORMAT or head.get("text_etag") != text_etag:
        return None  # written with another version of the text: stale (the text is parsed instead)
    etag = stream.properties.etag
    data = bytearray(first[end + 1:])
    size = stream.properties.size or 0
    content_range = stream.properties.content_range or ""
    total = int(content_range.rsplit("/", 1)[1]) if "/" in content_range else size
    keys, fps = array("q"), array("q")
    offset = len(first)
    try:
        while True:
            whole = len(data) - len(data) % 8
            _take(memoryview(data)[:whole], keys, fps, count)
            del data[:whole]
            if offset >= total:
                break
            chunk = container.download_blob(path, offset=offset, length=_BLOCK, etag=etag,
                                            match_condition=MatchConditions.IfNotModified).readall()
            if not chunk:
                break
            data += chunk
            offset += len(chunk)
    except (ResourceModifiedError, ResourceNotFoundError):
        return None  # rewritten meanwhile: the text is parsed instead
    if len(keys) != count or len(fps) != count:
        return None
    if not _LITTLE:
        keys.byteswap()
        fps.byteswap()
    return header, keys, fps, text_etag


def _take(data: memoryview, keys: array[int], fps: array[int], count: int) -> None:
    """Whole 8-byte values into the keys until there are `count`, then into the fingerprints."""
    room = max(0, count - len(keys)) * 8
    keys.frombytes(data[:room])
    fps.frombytes(data[room:])
