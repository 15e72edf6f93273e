"""The snapshot's keys and fingerprints as binary arrays (`state/<destination>/snapshot.idx`), beside its text.

What a run loads of a snapshot is its keys and fingerprints; taking them from the text means downloading every
line (~60 MB at a million contacts) and parsing two integers out of each (~0.5 s). The index holds the same two
arrays as 8-byte integers, and each entry's line hash (shared.state.line_hashes), which the text has no place
for (24 bytes an entry; a v1 index, without line hashes, still loads). It is tied to the one version of the
text it was written with by that blob's ETag. A v4 text (emails alone) written without one (a v1 upgrade, an
index upload that failed) or changed since has no valid index: its keys are its emails' again, but its
fingerprints are gone, so the snapshot is membership only (every contact is sent once more). The index can
only be missing, never wrong. The text itself is downloaded only when its emails are needed (mirror's
leavers) or it is merged into the next one.

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

INDEX_FORMAT = "segment-to-sendgrid snapshot index v2"  # v2: keys, fingerprints, line hashes
INDEX_V1 = "segment-to-sendgrid snapshot index v1"  # keys and fingerprints
_BLOCK = 2 << 20  # bytes an upload block or a ranged read after the first
_SINGLE_PUT = 4 << 20  # an index up to this size is one PUT, not blocks and a block list (~2 ms a request)
_FIRST_READ = 2 << 20  # bytes of the first ranged read (4 MB kept ~10 MB more memory at a million entries)
_HEAD_ROOM = 64 << 10  # room for the index's JSON line, when its size is reckoned from the text's entry count
_LITTLE = sys.byteorder == "little"  # stored little-endian, whatever the machine
_PENDING = 1 << 16  # entries gathered before a write (1.5 MB)


class IndexWriter:
    """The new snapshot's keys, fingerprints and line hashes in its order, in local files until uploaded."""

    def __init__(self) -> None:
        self._files: list[IO[bytes]] = [tempfile.TemporaryFile() for _ in range(3)]  # noqa: SIM115 - close()
        self._pending: tuple[array[int], array[int], array[int]] = (array("q"), array("q"), array("q"))
        self._written = 0

    @property
    def count(self) -> int:
        return self._written + len(self._pending[0])

    def add(self, key: int, fp: int, line_hash: int = 0) -> None:
        keys, fps, lines = self._pending
        keys.append(key)
        fps.append(fp)
        lines.append(line_hash)
        if len(keys) >= _PENDING:
            self.flush()

    def add_run(self, keys: array[int], fps: array[int], lines: array[int]) -> None:
        """A run of entries; a merge adds thousands of short ones (the lines between changes): gathered, then
        written a block at a time."""
        pending = self._pending
        for part, values in zip(pending, (keys, fps, lines), strict=True):
            part.extend(values)
        if len(pending[0]) >= _PENDING:
            self.flush()

    def add_arrays(self, keys: Any, fps: Any, lines: Any) -> None:
        """A merged bucket's entries, as numpy arrays: written as they are, after what was gathered before."""
        self.flush()
        assert len(keys) == len(fps) == len(lines)
        import numpy  # noqa: PLC0415 - given numpy arrays, so imported already

        for part, file in zip((keys, fps, lines), self._files, strict=True):
            file.write(numpy.ascontiguousarray(part, dtype="<i8").data)  # written from the array: no copy
        self._written += len(keys)

    def flush(self) -> None:
        if self._pending[0]:
            self._write(self._pending)
            self._pending = (array("q"), array("q"), array("q"))

    def _write(self, parts: tuple[array[int], array[int], array[int]]) -> None:
        assert len(parts[0]) == len(parts[1]) == len(parts[2])
        for part, file in zip(parts, self._files, strict=True):
            stored = part
            if not _LITTLE:
                stored = array("q", part)
                stored.byteswap()
            stored.tofile(file)
        self._written += len(parts[0])

    def store(self, container: ContainerClient, path: str, header: dict[str, Any], text_etag: str) -> None:
        """Upload as `path`: a JSON line (the text's header and ETag), then the keys, then the fingerprints.

        Best effort, after the text is stored, tried twice: an index that fails to upload is only missing (the
        old one no longer matches the text's ETag), so the next run takes the text as membership only and sends
        every contact once more. No lease check is needed: a run that took the lock over has written, or will
        write, its own text, which this index does not match.
        """
        for attempt in (1, 2):
            try:
                self._store(container, path, header, text_etag)
                return
            except AzureError as exc:
                if attempt == 2:
                    log.warning("snapshot index %s not stored (%s): the next run sends every contact once more",
                                path, type(exc).__name__)

    def _store(self, container: ContainerClient, path: str, header: dict[str, Any], text_etag: str) -> None:
        self.flush()
        head = json.dumps({"format": INDEX_FORMAT, "text_etag": text_etag, "count": self.count,
                           "header": header}).encode() + b"\n"
        blob = container.get_blob_client(path)
        if 24 * self.count + len(head) <= _SINGLE_PUT:
            for file in self._files:
                file.seek(0)
            blob.upload_blob(b"".join([head, *(file.read() for file in self._files)]), overwrite=True)
            return
        blocks: list[BlobBlock] = []

        def stage(chunk: bytes) -> None:
            block_id = f"{len(blocks):08d}"
            blob.stage_block(block_id, chunk)
            blocks.append(BlobBlock(block_id))

        stage(head)
        for part in self._files:
            part.seek(0)
            while chunk := part.read(_BLOCK):
                stage(chunk)
        blob.commit_block_list(blocks)

    def close(self) -> None:
        for file in self._files:
            file.close()


def load_index(container: ContainerClient, path: str, text_path: str) -> tuple[
        dict[str, Any], array[int], array[int], str, array[int], int] | None:
    """(the text's header, keys, fingerprints, the text's ETag, line hashes, the text's size) when a valid index
    of the stored text exists (a v1 index has no line hashes: an empty array).

    A text stored with its entry count (metadata `entries`) says how big its index is: one that fits one PUT
    is read in one GET; otherwise, and for older texts, the first read is _FIRST_READ bytes."""
    try:
        text = container.get_blob_client(text_path).get_blob_properties()
        text_etag, entries = str(text.etag), (text.metadata or {}).get("entries", "")
        reckoned = 24 * int(entries) + _HEAD_ROOM if entries.isdigit() else _SINGLE_PUT + 1
        stream = container.download_blob(path, offset=0, length=reckoned if reckoned <= _SINGLE_PUT else _FIRST_READ)
    except ResourceNotFoundError:
        return None
    first = stream.readall()
    end = first.find(b"\n")
    try:
        head = json.loads(first[:end])
        count, header = int(head["count"]), dict(head["header"])
    except (ValueError, TypeError, KeyError):
        return None  # not an index this code wrote: the text is parsed instead
    if head.get("format") not in (INDEX_FORMAT, INDEX_V1) or head.get("text_etag") != text_etag:
        return None  # written with another version of the text: stale (the text is parsed instead)
    etag = stream.properties.etag
    data = bytearray(first[end + 1:])
    size = stream.properties.size or 0
    content_range = stream.properties.content_range or ""
    total = int(content_range.rsplit("/", 1)[1]) if "/" in content_range else size
    parts = (array("q"), array("q"), array("q"))
    offset = len(first)
    try:
        while True:
            whole = len(data) - len(data) % 8
            _take(memoryview(data)[:whole], parts, count)
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
    keys, fps, lines = parts
    if not len(keys) == len(fps) == count or len(lines) not in (count, 0 if head["format"] == INDEX_V1 else count):
        return None
    if not _LITTLE:
        for part in parts:
            part.byteswap()
    return header, keys, fps, text_etag, lines, int(text.size or 0)


def _take(data: memoryview, parts: tuple[array[int], ...], count: int) -> None:
    """Whole 8-byte values into each part in turn, `count` a part (the last takes the rest)."""
    for part in parts[:-1]:
        room = max(0, count - len(part)) * 8
        part.frombytes(data[:room])
        data = data[room:]
    parts[-1].frombytes(data)
