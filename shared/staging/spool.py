"""The run's spool: every valid mapped contact, in file order, on local disk.

Why a spool: "last row wins" for duplicate emails and the profile cap both need to see the whole file
before the first request, and SendGrid bodies are built from the serialised contacts. Keeping them on
disk (not in memory) makes memory grow with one batch, not with the file; re-reading the spool costs a
fraction of re-parsing the source file.
"""

from __future__ import annotations

import io
import itertools
import os
import tempfile
from array import array
from collections.abc import Iterator
from typing import BinaryIO

from shared.state.keys import SIGNED, email_key, fingerprint, xxh3

_SMALL_SPOOL = 100_000  # up to here one sorted() of the keys costs less than bucketing them
_WRITE_EVERY = 1024  # contacts per write to the spool file
_pread = getattr(os, "pread", None)
_SIGNED = SIGNED
_xxh3 = xxh3  # email_key() and fingerprint() are inlined in Spool.add, which runs once per contact

__all__ = ["Spool", "email_key", "fingerprint"]


class Spool:
    def __init__(self, directory: str | None = None) -> None:
        self._file: BinaryIO = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 - closed in close()
        self.keys = array("q")  # email_key per contact
        self.fingerprints = array("q")
        self.sources = array("I")  # index into source_names (a CDM folder may have many partitions)
        self.rows = array("L")
        self._offsets = array("Q")  # where each contact's line starts in the spool file
        self._end = 0
        self._unwritten: list[bytes] = []  # contacts not yet in the file: one write per _WRITE_EVERY
        self.source_names: list[str] = []
        self._source_index: dict[str, int] = {}
        self._last_source: str | None = None  # rows come in runs of one source: skip the dict look-up
        self._last_index = 0

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, source: str, row: int, email: str, body: bytes) -> None:
        if source is not self._last_source:
            index = self._source_index.get(source)
            if index is None:
                index = self._source_index[source] = len(self.source_names)
                self.source_names.append(source)
            self._last_source, self._last_index = source, index
        # email_key() and fingerprint(), inlined: this runs once per contact
        self.keys.append(_xxh3(email.encode()) - _SIGNED)
        self.fingerprints.append(_xxh3(body) - _SIGNED)
        self.sources.append(self._last_index)
        self.rows.append(row)
        self._offsets.append(self._end)
        self._end += len(body) + 1
        unwritten = self._unwritten
        unwritten.append(body)
        if len(unwritten) >= _WRITE_EVERY:
            self._write()

    def _write(self) -> None:
        """Write the contacts added since the last write, and flush, so the file can be read back."""
        if self._unwritten:
            self._file.seek(0, io.SEEK_END)  # a read may have moved the position
            self._file.write(b"\n".join(self._unwritten) + b"\n")
            self._unwritten.clear()
        self._file.flush()

    def where(self, index: int) -> tuple[str, int]:
        return self.source_names[self.sources[index]], self.rows[index]

    def email_at(self, index: int) -> str:
        """Read one contact's email back from the spool: a read at its offset, which leaves the file's
        position (maybe mid-iteration of `contacts()`) alone."""
        if self._unwritten:
            self._write()
        start = self._offsets[index]
        end = self._offsets[index + 1] if index + 1 < len(self._offsets) else self._end
        if _pread is not None:
            line = _pread(self._file.fileno(), end - start, start)
        else:  # no os.pread (Windows): seek, read, and go back
            position = self._file.tell()
            self._file.seek(start)
            line = self._file.read(end - start)
            self._file.seek(position)
        return _email_of(line).decode()

    def contacts(self) -> Iterator[tuple[int, bytes]]:
        """(index, contact JSON) in file order."""
        self._write()
        self._file.seek(0)
        for index, line in enumerate(self._file):
            yield index, line[:-1]

    def superseded(self) -> set[int]:
        """Indices of contacts whose email appears again later in the file (last row wins).

        Keys are compared first (cheap, in arrays); only rows whose key repeats are read back to compare
        the real emails, so a 64-bit collision can never merge two different people.
        """
        repeated = self._repeated_keys()
        if not repeated:
            return set()
        last: dict[bytes, int] = {}
        candidates: list[tuple[int, bytes]] = []
        for index, body in self.contacts():
            if self.keys[index] in repeated:
                email = _email_of(body)
                candidates.append((index, email))
                last[email] = index
        return {index for index, email in candidates if last[email] != index}

    def _repeated_keys(self) -> set[int]:
        """Keys that occur more than once.

        Sorting is the cheap way to find them, but sorted() of a million keys is a transient list of a
        million int objects (~40 MB). Splitting the keys by their top byte first keeps that list at 1/256.
        """
        if len(self.keys) <= _SMALL_SPOOL:
            return _repeated(self.keys)
        buckets = [array("q") for _ in range(256)]
        appends = [bucket.append for bucket in buckets]
        for key in self.keys:
            appends[(key >> 56) & 0xFF](key)
        repeated: set[int] = set()
        for number, bucket in enumerate(buckets):
            buckets[number] = array("q")  # release as we go
            repeated.update(_repeated(bucket))
        return repeated

    def close(self) -> None:
        self._file.close()


def _repeated(keys: array[int]) -> set[int]:
    """Keys that occur more than once; a set answers "none" (the usual case) in a quarter of a sort's time."""
    if len(set(keys)) == len(keys):
        return set()
    ordered = sorted(keys)
    return {a for a, b in itertools.pairwise(ordered) if a == b}


def _email_of(body: bytes) -> bytes:
    # Contacts are serialised by ContactMapper with "email" first: {"email":"...",
    end = body.index(b'"', 10)
    return body[10:end]
