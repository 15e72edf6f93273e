"""The snapshot's stored lines, streamed: blocks of whole lines, their parsing, and the new text's writer.

A million-line snapshot is never held whole: the SDK's chunks are cut at line ends and parsed a block at a
time; the merge (shared.state.snapshot_merge) copies the runs of lines between its changes as bytes.
"""

from __future__ import annotations

import tempfile
from array import array
from collections.abc import Iterator
from typing import IO, Any

from xxhash import xxh3_128

_FLUSH_BYTES = 1 << 20  # bytes gathered before a write of the new snapshot's file
BLOCK_BYTES = 1 << 20  # bytes of lines parsed or copied at a time


def line_blocks(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The blob as blocks of whole lines (no trailing newline) of about BLOCK_BYTES: the header line first,
    alone. Small blocks keep the lines split from one (a bytes object each) a few megabytes; a chunk is cut
    where it lies, only the line across two chunks is joined."""
    rest = b""
    header = True
    for chunk in chunks:
        start = 0
        if rest:
            end = chunk.find(b"\n")
            if end < 0:
                rest += chunk
                continue
            line, rest, start = rest + chunk[:end], b"", end + 1
            if header:
                header = False
                yield line
            elif line:
                yield line
        if header:
            end = chunk.find(b"\n")
            if end < 0:
                rest = chunk
                continue
            yield chunk[:end]
            header, start = False, end + 1
        while True:
            cut = chunk.rfind(b"\n", start, start + BLOCK_BYTES)
            if cut < 0:
                cut = chunk.find(b"\n", start + BLOCK_BYTES)  # a line longer than a block
                if cut < 0:
                    break
            if cut > start:
                yield chunk[start:cut]
            start = cut + 1
        rest = chunk[start:]
    if rest:
        yield rest


V4_FORMAT = "segment-to-sendgrid snapshot v4"  # shared.state.snapshot.SNAPSHOT_FORMAT


def has_fields(header: dict[str, Any]) -> bool:
    """Whether a stored text's lines are `<key> <fingerprint> <email>` (v1-v3), not the email alone (v4)."""
    return header.get("format") != V4_FORMAT


def entry_email(line: bytes, fields: bool) -> bytes:
    """A stored line's email: the line itself (v4), or its last field (v1-v3: `<key> <fingerprint> <email>`)."""
    return line.split(b" ", 2)[-1] if fields else line


def parse_block(block: bytes, keys: array[int], fingerprints: array[int]) -> None:
    """Keys and fingerprints of a block of lines: one split and two C-level conversions when every line has
    three fields (emails hold no whitespace), line by line otherwise."""
    tokens = block.split()
    if len(tokens) == 3 * (block.count(b"\n") + 1):
        keys.extend(map(int, tokens[0::3]))
        fingerprints.extend(map(int, tokens[1::3]))
        return
    for line in block.split(b"\n"):
        key, fp, _ = line.split(b" ", 2)
        keys.append(int(key))
        fingerprints.append(int(fp))


class DigestWriter:
    """Lines and runs of lines to the new snapshot's file, with its digest and count: gathered, and written
    (and digested) a megabyte at a time, as a merge hands over tens of thousands of short runs."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        # The text's identity in its header (a checkpoint's run key is bound to it), checked against nothing:
        # a 128-bit xxh3 is as good an identity as sha256, at a twentieth of its ~0.05 s a million contacts.
        self.digest = xxh3_128()
        self.count = 0
        self._pending: list[bytes | memoryview] = []
        self._size = 0

    def write(self, line: bytes) -> None:
        self.write_block(line, 1)

    def write_block(self, data: bytes | memoryview, lines: int) -> None:
        if len(data) >= _FLUSH_BYTES:  # a merged bucket: as it is, not copied into a join
            self.flush()
            self.count += lines
            self._out.write(data)
            self.digest.update(data)
            return
        self._pending.append(data)
        self._size += len(data)
        self.count += lines
        if self._size >= _FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._size = 0
            self._out.write(data)
            self.digest.update(data)


def line_starts(block: bytes) -> Any:
    """Where each line of a block (lines joined by b"\n", none after the last) starts, and, last, the end of
    the block with a b"\n" after it: a numpy array of them."""
    import numpy  # noqa: PLC0415 - a merge or a leavers' look-up only

    ends = numpy.flatnonzero(numpy.frombuffer(block, dtype=numpy.uint8) == 10)
    return numpy.concatenate(([0], ends + 1, [len(block) + 1]))


def copied(chunks: Iterator[bytes], local: IO[bytes]) -> Iterator[bytes]:
    """The chunks as they are, each written to `local` as it passes."""
    for chunk in chunks:
        local.write(chunk)
        yield chunk


def sorted_by_key(keys: array[int], indices: Iterator[int]) -> Iterator[int]:
    """Indices ordered by key, bucketed by the key's top byte so no million-entry list is ever built."""
    buckets: list[array[int]] = [array("L") for _ in range(256)]
    for index in indices:
        buckets[(keys[index] >> 56) & 0xFF].append(index)
    # Signed keys: buckets 128..255 hold the negative ones, which sort first.
    for bucket in (*buckets[128:], *buckets[:128]):
        yield from sorted(bucket, key=keys.__getitem__)


def local_copy(chunks: Iterator[bytes]) -> IO[bytes]:
    """The chunks in a local temporary file, complete (closed again when reading them fails part way)."""
    local = tempfile.TemporaryFile()  # noqa: SIM115 - the caller's, or closed below
    try:
        for chunk in chunks:
            local.write(chunk)
    except BaseException:
        local.close()
        raise
    return local
