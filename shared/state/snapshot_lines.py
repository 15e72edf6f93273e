"""The snapshot's stored lines, streamed: blocks of whole lines, their parsing, and the merge's copying.

A million-line snapshot is never held whole: the SDK's chunks are cut at line ends, parsed a block at a
time, and a merge copies the runs of lines between its changes as bytes.
"""

from __future__ import annotations

import hashlib
import tempfile
from array import array
from collections.abc import Callable, Iterator
from typing import IO, Any

from azure.core.exceptions import ResourceModifiedError

_BLOCK_LINES = 2048  # lines a bucket of new lines gathers (SortedLines)
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
        self.digest = hashlib.sha256()
        self.count = 0
        self._pending: list[bytes | memoryview] = []
        self._size = 0

    def write(self, line: bytes) -> None:
        self.write_block(line, 1)

    def write_block(self, data: bytes | memoryview, lines: int) -> None:
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


class OldLines:
    """The previous snapshot's lines in order, copied in runs up to a position, the `drops` left out; with
    `carried_fp`, each rewritten under that fingerprint (an untrusted snapshot carried over).

    A run is copied as one slice of its block's bytes: the block's line starts are found once, in C (numpy),
    so no line becomes an object of its own (a million of them, and their joins, at a million contacts)."""

    def __init__(self, blocks: Iterator[bytes], carried_fp: int | None, drops: list[int],
                 on_copy: Callable[[int, int], None] | None = None) -> None:
        self._blocks = blocks
        self._on_copy = on_copy  # (position, count) of each run copied
        self._block = memoryview(b"")  # the current block, each of its lines ended by b"\n"
        self._starts: Any = [0]  # where each of its lines starts, and its end (numpy)
        self._at = 0
        self._cursor = 0  # the position of the next line
        self._drops = drops
        self._next_drop = 0
        self._carried = None if carried_fp is None else b" %d " % carried_fp

    def copy_to(self, position: int, writer: DigestWriter) -> None:
        """Every line before `position` not yet copied, but the dropped ones."""
        drops = self._drops
        while self._next_drop < len(drops) and drops[self._next_drop] < position:
            self._copy(drops[self._next_drop] - self._cursor, writer)
            self._copy(1, None)
            self._next_drop += 1
        self._copy(position - self._cursor, writer)

    def _fill(self) -> bool:
        while self._at >= len(self._starts) - 1:
            block = next(self._blocks, None)
            if block is None:
                return False
            self._block, self._starts, self._at = memoryview(block + b"\n"), line_starts(block), 0
        return True

    def _copy(self, count: int, writer: DigestWriter | None) -> None:
        if writer is not None and count > 0 and self._on_copy is not None:
            self._on_copy(self._cursor, count)
        self._cursor += count
        while count > 0:
            if not self._fill():
                raise ResourceModifiedError("the stored snapshot has fewer lines than it had when loaded")
            take = min(count, len(self._starts) - 1 - self._at)
            if writer is not None:
                run = self._block[self._starts[self._at]:self._starts[self._at + take]]
                if self._carried is None:
                    writer.write_block(run, take)
                else:
                    lines = bytes(run).split(b"\n")[:-1]
                    writer.write_block(b"".join(b"%s%s%s\n" % (parts[0], self._carried, parts[2])
                                                for parts in (line.split(b" ", 2) for line in lines)), take)
            self._at += take
            count -= take


def line_starts(block: bytes) -> Any:
    """Where each line of a block (lines joined by b"\n", none after the last) starts, and, last, the end of
    the block with a b"\n" after it: a numpy array of them."""
    import numpy  # noqa: PLC0415 - a merge or a leavers' look-up only

    ends = numpy.flatnonzero(numpy.frombuffer(block, dtype=numpy.uint8) == 10)
    return numpy.concatenate(([0], ends + 1, [len(block) + 1]))


class SortedLines:
    """New snapshot lines, given in any order, read back sorted by key: bucketed by the key's top bits on
    local disk, so only one bucket (a 64th: ~3 MB of a million new lines) is ever in memory."""

    _BUCKETS = 64
    _FLUSH = _BLOCK_LINES // 4  # lines a bucket holds before they are written: all buckets' stay ~3 MB

    def __init__(self) -> None:
        self._files = [tempfile.TemporaryFile() for _ in range(self._BUCKETS)]  # noqa: SIM115 - closed in __exit__
        self._keys = [array("q") for _ in range(self._BUCKETS)]
        self._line_hashes = [array("q") for _ in range(self._BUCKETS)]
        self._hashed = False  # some line has a hash: every bucket keeps one a line
        self._pending: list[list[bytes]] = [[] for _ in range(self._BUCKETS)]

    def add(self, key: int, line: bytes, line_hash: int = 0) -> None:
        bucket = (key + (1 << 63)) >> 58
        self._keys[bucket].append(key)
        if line_hash or self._hashed:  # none kept while all are 0 (a first export's rows): 8 MB at a million
            if not self._hashed:
                self._hashed = True
                for keys, hashes in zip(self._keys, self._line_hashes, strict=True):
                    hashes.frombytes(bytes(8 * (len(keys) - (keys is self._keys[bucket]))))
            self._line_hashes[bucket].append(line_hash)
        pending = self._pending[bucket]
        pending.append(line)
        if len(pending) >= self._FLUSH:
            self._files[bucket].write(b"".join(pending))
            pending.clear()

    def in_order(self) -> Iterator[tuple[int, int, int, bytes]]:
        """(key, fingerprint, line hash, line) of every line added, by key."""
        for keys, fps, hashes, lines in self._buckets():
            for index in sorted(range(len(keys)), key=keys.__getitem__):
                yield keys[index], fps[index], hashes[index], lines[index] + b"\n"

    def _buckets(self) -> Iterator[tuple[array[int], array[int], array[int], list[bytes]]]:
        """Each bucket's keys, fingerprints, line hashes and lines (without their newline), in the order added."""
        for bucket, file in enumerate(self._files):
            file.write(b"".join(self._pending[bucket]))
            self._pending[bucket].clear()
            file.seek(0)
            data = file.read()
            keys, hashes, fps = self._keys[bucket], self._line_hashes[bucket], array("q")
            self._keys[bucket], self._line_hashes[bucket] = array("q"), array("q")
            if not data:
                continue
            if not self._hashed:
                hashes = array("q", bytes(8 * len(keys)))
            parse_block(data[:-1], array("q"), fps)
            lines = data[:-1].split(b"\n")
            del data
            yield keys, fps, hashes, lines

    def write_sorted(self, writer: DigestWriter,
                     index: Callable[[array[int], array[int], array[int]], None]) -> None:
        """Every line added, by key, into `writer` a bucket at a time, and its keys, fingerprints and line hashes
        to `index`: the snapshot of a first export, with no stored lines to merge."""
        for keys, fps, hashes, lines in self._buckets():
            order = sorted(range(len(keys)), key=keys.__getitem__)
            index(array("q", map(keys.__getitem__, order)), array("q", map(fps.__getitem__, order)),
                  array("q", map(hashes.__getitem__, order)))
            writer.write_block(b"\n".join(map(lines.__getitem__, order)) + b"\n", len(order))

    def __enter__(self) -> SortedLines:
        return self

    def __exit__(self, *_: object) -> None:
        for file in self._files:
            file.close()


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
