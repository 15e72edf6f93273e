"""The snapshot's stored lines, streamed: blocks of whole lines, their parsing, and the merge's copying.

A million-line snapshot is never held whole: the SDK's chunks are cut at line ends, parsed a block at a
time, and a merge copies the runs of lines between its changes as bytes.
"""

from __future__ import annotations

import hashlib
import io
from array import array
from collections.abc import Iterator
from typing import IO, Any

from azure.core.exceptions import ResourceModifiedError


def line_blocks(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The blob as blocks of whole lines (no trailing newline): the header line first, alone."""
    rest = b""
    header = True
    for chunk in chunks:
        data = rest + chunk if rest else chunk
        if header:
            end = data.find(b"\n")
            if end < 0:
                rest = data
                continue
            yield data[:end]
            header, data = False, data[end + 1:]
        cut = data.rfind(b"\n")
        if cut < 0:
            rest = data
            continue
        if cut:
            yield data[:cut]
        rest = data[cut + 1:]
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
    """Lines to the new snapshot's file, with its digest and count."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self.digest = hashlib.sha256()
        self.count = 0

    def write(self, data: bytes, lines: int = 1) -> None:
        self._out.write(data)
        self.digest.update(data)
        self.count += lines


class OldLines:
    """The previous snapshot's lines in order, copied in runs; with `carried_fp`, rewritten under it."""

    def __init__(self, blocks: Iterator[bytes], carried_fp: int | None) -> None:
        self._blocks = blocks
        self._lines: list[bytes] = []
        self._at = 0
        self._carried = None if carried_fp is None else f" {carried_fp} ".encode()

    def _fill(self) -> bool:
        while self._at >= len(self._lines):
            block = next(self._blocks, None)
            if block is None:
                return False
            self._lines, self._at = block.split(b"\n"), 0
        return True

    def copy(self, count: int | None, writer: DigestWriter) -> None:
        """The next `count` lines (None: all that are left) to the writer."""
        while (count is None or count > 0) and self._fill():
            take = len(self._lines) - self._at if count is None else min(count, len(self._lines) - self._at)
            run = self._lines[self._at:self._at + take]
            if self._carried is not None:
                run = [b"%s%s%s" % (line.split(b" ", 2)[0], self._carried, line.split(b" ", 2)[2]) for line in run]
            writer.write(b"\n".join(run) + b"\n", take)
            self._at += take
            if count is not None:
                count -= take
        if count:
            raise ResourceModifiedError("the stored snapshot has fewer lines than it had when loaded")

    def skip(self) -> None:
        if not self._fill():
            raise ResourceModifiedError("the stored snapshot has fewer lines than it had when loaded")
        self._at += 1


class Concat(io.RawIOBase):
    """Header bytes followed by a file, as one upload stream."""

    def __init__(self, head: bytes, tail: Any) -> None:
        self._head = head
        self._tail = tail

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        if self._head:
            size = min(len(target), len(self._head))
            target[:size] = self._head[:size]
            self._head = self._head[size:]
            return size
        data = self._tail.read(len(target))
        target[: len(data)] = data
        return len(data)
