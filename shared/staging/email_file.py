"""Emails one a line on a local temporary file, each read back by its offset: the spool's unchanged rows.

Their contacts are never built, but the duplicates check must still compare real emails when two keys meet.
"""

from __future__ import annotations

import io
import itertools
import os
import tempfile
from array import array
from typing import BinaryIO

_WRITE_EVERY = 1024  # emails per write
_pread = getattr(os, "pread", None)
_PLUS_ONE = (1).__add__


class EmailFile:
    """Emails one a line on local disk, each read back by its offset (the unchanged rows' emails)."""

    def __init__(self, directory: str | None) -> None:
        self._directory = directory
        self._file: BinaryIO | None = None  # made at the first email: most runs of a new segment need none
        self._unwritten: list[bytes] = []
        self._end = 0

    def add(self, email: bytes) -> int:
        offset = self._end
        self._end += len(email) + 1
        self._unwritten.append(email)
        if len(self._unwritten) >= _WRITE_EVERY:
            self._write()
        return offset

    def add_many(self, emails: list[bytes]) -> array[int]:
        """The offsets of these emails, written in order (summed in C: a run of unchanged rows)."""
        offsets = array("Q", itertools.accumulate(map(_PLUS_ONE, map(len, emails)), initial=self._end))
        self._end = offsets.pop()
        self._unwritten.extend(emails)
        if len(self._unwritten) >= _WRITE_EVERY:
            self._write()
        return offsets

    def _write(self) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile(dir=self._directory)  # noqa: SIM115 - closed in close()
        if self._unwritten:
            self._file.seek(0, io.SEEK_END)
            self._file.write(b"\n".join(self._unwritten) + b"\n")
            self._unwritten.clear()
        self._file.flush()

    def at(self, offset: int) -> bytes:
        self._write()
        assert self._file is not None
        return read_line(self._file, offset)[:-1]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def read_line(file: BinaryIO, offset: int) -> bytes:
    """The line at `offset` (with its newline), leaving the file's position (maybe mid-iteration) alone.
    An email fits in the first read (254 characters); a longer contact line takes more."""
    size = 512
    while True:
        if _pread is not None:
            data = _pread(file.fileno(), size, offset)
        else:  # no os.pread (Windows): seek, read, and go back
            position = file.tell()
            file.seek(offset)
            data = file.read(size)
            file.seek(position)
        end = data.find(b"\n")
        if end >= 0 or len(data) < size:
            return bytes(data[:end + 1] if end >= 0 else data)
        size *= 4
