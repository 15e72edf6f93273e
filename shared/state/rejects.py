"""The rejects file: every rejected row of a run with its value, written to local disk as it happens.

A segment whose every row is bad must cost disk, not memory: each reject goes straight into a temporary
file that already is the rejects CSV (`source,row,field,reason,value`, cells a spreadsheet would run as a
formula prefixed with `'`), and the run store uploads it from that file in blocks. The run report keeps only
counts and the first rejects (shared/pipeline/report.py). This file is the one place rejected values are kept.
"""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

REJECTS_HEADER = ("source", "row", "field", "reason", "value")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what Excel/Sheets/LibreOffice evaluate (OWASP CSV injection)


def inert(cell: object) -> object:
    """A rejects-file cell an operator's spreadsheet would run as a formula gets a leading quote (shown as text)."""
    if isinstance(cell, str) and cell.startswith(_FORMULA_START):
        return "'" + cell
    return cell


class _Utf8Sink:
    """What csv.writer writes to: one encoded row at a time into the binary temporary file."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file

    def write(self, text: str) -> int:
        # backslashreplace: a value no reader should yield (a lone surrogate) must not crash the run's bookkeeping
        return self._file.write(text.encode("utf-8", "backslashreplace"))


class RejectsFile:
    """The rejects CSV of one run on local disk; the temporary file is created by the first reject and
    deleted by close() (it never has a name in the file system)."""

    def __init__(self, directory: str | None = None) -> None:
        self._directory = directory
        self._file: BinaryIO | None = None
        self._writerow: Callable[[Iterable[Any]], Any] | None = None
        self.count = 0
        self.closed = False
        self._at_end = True  # False after reading back: the next write seeks to the end first

    def write(self, source: str, row: int, field: str, reason: str, value: str) -> None:
        if self._writerow is None:
            if self.closed:
                raise ValueError("the rejects file is closed")
            self._file = tempfile.TemporaryFile(dir=self._directory)  # noqa: SIM115 - closed in close()
            self._writerow = csv.writer(_Utf8Sink(self._file)).writerow
            self._writerow(REJECTS_HEADER)
        elif not self._at_end:
            assert self._file is not None
            self._file.seek(0, 2)
            self._at_end = True
        self._writerow((inert(source), row, inert(field), inert(reason), inert(value)))
        self.count += 1

    def size(self) -> int:
        """Bytes of CSV written so far (0 when nothing was rejected)."""
        if self._file is None:
            return 0
        self._file.flush()
        self._at_end = False
        return self._file.seek(0, 2)

    def chunks(self, size: int = 4 * 1024 * 1024) -> Iterator[bytes]:
        """The CSV from its first byte, `size` bytes at a time (nothing when no row was rejected)."""
        if self._file is None:
            return
        self._file.flush()
        self._at_end = False
        self._file.seek(0)
        while chunk := self._file.read(size):
            yield chunk

    def rows(self) -> Iterator[list[str]]:
        """The data rows parsed back, as stored (formula-looking cells keep their quote); for tools and tests."""
        if self._file is None:
            return
        self._file.flush()
        self._at_end = False
        self._file.seek(0)
        text = io.TextIOWrapper(self._file, encoding="utf-8", newline="")
        try:
            reader = csv.reader(text)
            next(reader)  # the header
            yield from reader
        finally:
            text.detach()  # leaves the file open

    def close(self) -> None:
        self.closed = True
        self._writerow = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> RejectsFile:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
