"""CSV / TSV reading on the stdlib's C parser, with a per-row fast path that only zips cells into a dict.

Row numbers: data records, 1-based, the header not counted. A quoted value spanning several lines is still
one row, so row N is the Nth record a spreadsheet would show under the header. Blank lines are skipped but
counted, for the same reason (a spreadsheet shows them as empty rows).

Values are never interpreted: no trimming, no type conversion, and formula-looking text (`=cmd|...`) stays
plain text. The parser runs in strict mode: a row with broken quoting is rejected (and reading resumes on the
next line) instead of being silently re-shaped.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any, TypeVar, cast

from shared.errors import SegmentFileError
from shared.source.readers.base import SURROGATES, ProjectedRow, SegmentReader, make_record
from shared.source.readers.csv_header import (
    CsvLayout,
    check_header,
    check_known,
    csv_limit_at_least,
    first_row_problem,
)
from shared.source.readers.decoding import EmptyFileError, TextStream, open_text
from shared.source.readers.options import ReaderOptions
from shared.source.readers.raw_lines import LineFeed, RawChunk, line_safe, mostly_plain
from shared.source.readers.text_encoding import ESCAPE
from shared.source.records import Record
from shared.source.sources import ByteSource

_Row = TypeVar("_Row")


class CsvSegmentReader(SegmentReader):
    """One CSV file. `record_source` names the file in Records (CDM passes the partition's blob name)."""

    def __init__(self, source: ByteSource, name: str, options: ReaderOptions, layout: CsvLayout,
                 *, record_source: str | None = None, raw_lines: bool = False) -> None:
        self._description = source.describe(name)
        self._name = record_source or name
        self._options = options
        self._layout = layout
        self._limit = options.max_field_chars
        self._limit_exact = csv_limit_at_least(self._limit)
        self._stream: TextStream = open_text(source, name, options, encoding=layout.encoding)
        self._pending: list[Record] = []
        self._row = 0
        self._blank_before = 0
        # A first-row header, standard quoting and UTF-8: the file's lines can be recognised as bytes
        # (raw_lines), so a refresh need not parse the rows it exported before.
        binary = cast(io.BufferedReader, self._stream.text.buffer)
        self._feed = LineFeed(binary, self._stream.encoding, layout.quotechar) if (
            raw_lines and layout.header == "first-row" and layout.columns is None and layout.escapechar is None
            and not layout.quote_none and line_safe(self._stream.encoding)
            and mostly_plain(binary.peek(1 << 16), layout.quotechar)) else None
        try:
            self._reader = csv.reader(
                self._feed if self._feed is not None else self._stream.text, **self._dialect())
            self._header = self._start()
        except BaseException:
            self._stream.close()
            raise
        if self._feed is not None:
            self._feed.csv_only = False
        self.columns = list(self._header)
        known = "model.json lists" if layout.columns is not None and layout.header != "first-row" else "header has"
        self._mismatch = f"row has %d values, {known} {len(self._header)}"
        if layout.header == "none" and layout.columns is None:
            self._mismatch = f"row has %d values, the first row has {len(self._header)}"

    def _dialect(self) -> dict[str, Any]:
        layout = self._layout
        return {"delimiter": layout.delimiter, "quotechar": layout.quotechar, "escapechar": layout.escapechar,
                "doublequote": not layout.quote_none, "strict": True,
                "quoting": csv.QUOTE_NONE if layout.quote_none else csv.QUOTE_MINIMAL}

    @property
    def raw_lines(self) -> bool:
        return self._feed is not None

    @property
    def raw_trusted_below(self) -> int:
        """Plain lines shorter than this hold no value the parser would reject (0: none, as a NUL or an
        undecodable byte has been read). Whatever the csv module's process-wide limit (another reader may have
        raised it: then this one checks lengths itself), no value of such a line is past this reader's."""
        return 0 if self._stream.guard.suspect else self._limit + 1

    @property
    def max_value_chars(self) -> int:
        return self._limit

    @property
    def line_delimiter(self) -> bytes:
        return self._layout.delimiter.encode("utf-8")  # raw lines are UTF-8 only (raw_lines.line_safe)

    # -- header ---------------------------------------------------------------------------------------

    def _first_record(self) -> list[str] | None:
        """The first non-blank record (blank lines before it are counted as rows when there is no header).

        Without a header row the first record is data: a malformed one is rejected like any row (held in
        `_pending`) and the next one is taken, instead of refusing the whole file.
        """
        before = 0
        while True:
            start_line = self._reader.line_num
            try:
                for cells in self._reader:
                    if cells:
                        self._blank_before = before
                        return cells
                    before += 1
                    start_line = self._reader.line_num
            except csv.Error as exc:
                if self._layout.header == "first-row":
                    problem = first_row_problem(exc, self._limit)
                    raise SegmentFileError(self._description, problem, row=before + 1) from None
                before += 1
                reason = self._row_problem(exc, before, start_line, self._reader.line_num)
                self._pending.append(make_record(self._name, before, {}, reason))
                continue
            except SegmentFileError as exc:
                raise SegmentFileError(exc.source, exc.reason) from None
            self._blank_before = before
            return None

    def _start(self) -> tuple[str, ...]:
        layout = self._layout
        first = self._first_record()
        if layout.header == "first-row":
            if first is None:
                raise EmptyFileError(self._description, "file is empty (only blank lines, no header row)")
            check_header(first, self._description, self._options, layout, self._stream.encoding_label)
            check_known(first, self._description, layout)
            return tuple(first)
        if first is None:
            return layout.columns or ()
        self._row = self._blank_before
        if layout.columns is not None:
            if layout.header == "auto" and tuple(first) == layout.columns and not self._pending:
                self._row = 0
                return layout.columns
            self._hold(first, layout.columns)
            return layout.columns
        if len(first) > self._options.max_columns:
            raise SegmentFileError(self._description, f"the first row has {len(first)} values, more than "
                                                      f"max_columns {self._options.max_columns}")
        names = tuple(str(i) for i in range(1, len(first) + 1))
        self._hold(first, names)
        return names

    def _hold(self, cells: list[str], names: tuple[str, ...]) -> None:
        """Keep the first data row read while opening, to yield it first."""
        self._row += 1
        if len(cells) != len(names):
            noun = "model.json lists" if self._layout.columns is not None else "the first row has"
            self._pending.append(make_record(self._name, self._row, {},
                                             f"row has {len(cells)} values, {noun} {len(names)}"))
            return
        problem = self._problem(cells, names)
        values = {} if problem else dict(zip(names, cells, strict=True))
        self._pending.append(make_record(self._name, self._row, values, problem))

    # -- rows -----------------------------------------------------------------------------------------

    def _problem(self, cells: list[str], names: tuple[str, ...]) -> str | None:
        """Why a row with the right width is still unusable (slow path: only when the guard or limit says so)."""
        joined = "".join(cells)
        if self._stream.guard.suspect:
            if "\x00" in joined:
                column = next(n for n, c in zip(names, cells, strict=True) if "\x00" in c)
                return f"NUL byte in column {column!r}"
            if SURROGATES.search(joined):
                column = next(n for n, c in zip(names, cells, strict=True) if SURROGATES.search(c))
                return f"invalid {self._stream.encoding_label} in column {column!r}"
        if len(joined) > self._limit:
            for column, cell in zip(names, cells, strict=True):
                if len(cell) > self._limit:
                    return f"value in column {column!r} is longer than {self._limit} characters (max_field_chars)"
        return None

    def __iter__(self) -> Iterator[Record]:
        yield from self._take_pending()
        header, name, make = self._header, self._name, make_record
        yield from self._scan(
            lambda row, cells: make(name, row, dict(zip(header, cells)), None),  # noqa: B905  (same length)
            lambda row, reason: make(name, row, {}, reason))

    def project(self, columns: Sequence[str]) -> Iterator[ProjectedRow]:
        wanted = tuple(columns)
        for record in self._take_pending():
            values = tuple(map(record.fields.get, wanted)) if record.error is None else ()
            yield record.source, record.row, values, record.error
        pick = self._picker(wanted)
        name = self._name
        yield from self._scan(lambda row, cells: (name, row, pick(cells), None),
                              lambda row, reason: (name, row, (), reason))

    def _picker(self, wanted: Sequence[str]) -> Callable[[list[str]], Sequence[str | None]]:
        index = {column: position for position, column in enumerate(self._header)}
        positions = [index.get(column) for column in wanted]
        if len(positions) > 1 and None not in positions:
            return itemgetter(*positions)  # one C call gives the tuple of values
        return lambda cells: tuple(None if p is None else cells[p] for p in positions)

    def project_lines(self, columns: Sequence[str]) -> Iterator[ProjectedRow | RawChunk]:
        """As `project`, but runs of lines that are whole records come as RawChunks, unparsed (`parse_lines`
        parses those the engine does not recognise); lines in or near quoted values are parsed as always."""
        feed = self._feed
        if feed is None:
            yield from self.project(columns)
            return
        wanted = tuple(columns)
        self._line_pick = pick = self._picker(wanted)
        name = self._name
        build: Callable[[int, list[str]], ProjectedRow] = lambda row, cells: (name, row, pick(cells), None)  # noqa: E731
        fail: Callable[[int, str], ProjectedRow] = lambda row, reason: (name, row, (), reason)  # noqa: E731
        while True:
            try:
                lines = feed.take_plain()
                if not lines and feed.at_end():
                    return
            except SegmentFileError as exc:  # a failed read (truncated gzip, a limit) after the rows before it
                raise SegmentFileError(exc.source, exc.reason, row=exc.row or self._row + 1) from None
            if lines:
                yield RawChunk(name, self._row + 1, lines, feed.crlf)
                self._row += len(lines)
                continue
            yield from self._scan(build, fail, pause=feed.plain_ahead)

    def parse_lines(self, chunk: RawChunk, indices: Sequence[int]) -> Iterator[ProjectedRow | None]:
        """The rows of these lines of a chunk from `project_lines`, in order (None for a blank line)."""
        assert self._feed is not None
        lines, decoding = chunk.lines, self._feed.decoding
        reader = csv.reader([lines[i].decode(decoding, ESCAPE) for i in indices], **self._dialect())
        width, header, pick, guard = len(self._header), self._header, self._line_pick, self._stream.guard
        name, first = chunk.source, chunk.first_row
        for i in indices:
            row = first + i
            try:
                cells = next(reader)
            except csv.Error as exc:
                yield name, row, (), self._row_problem(exc, row, 0, 1)
                continue
            if len(cells) == width:
                problem = self._problem(cells, header) if guard.suspect or not self._limit_exact else None
                yield (name, row, (), problem) if problem is not None else (name, row, pick(cells), None)
            elif cells:
                yield name, row, (), self._mismatch % len(cells)
            else:
                yield None

    def _take_pending(self) -> list[Record]:
        """The first data row(s), read while opening a file without a header row."""
        pending, self._pending = self._pending, []
        return pending

    def _scan(self, build: Callable[[int, list[str]], _Row], fail: Callable[[int, str], _Row],
              pause: Callable[[], bool] | None = None) -> Iterator[_Row]:
        """The rows after the header, as `build(row, cells)`, or `fail(row, reason)` for an unusable one;
        up to the end, or (`pause`) up to a record after which `pause()` is true."""
        width = len(self._header)
        reader = self._reader
        guard = self._stream.guard
        mismatch = self._mismatch
        if not self._limit_exact:
            guard.suspect = True  # the csv module's limit is looser than ours: check lengths on every row
        row = self._row
        start_line = reader.line_num
        while True:
            try:
                for cells in reader:
                    row += 1
                    if len(cells) == width:
                        if guard.suspect:
                            problem = self._problem(cells, self._header)
                            if problem is not None:
                                yield fail(row, problem)
                                start_line = reader.line_num
                                continue
                        yield build(row, cells)
                    elif cells:
                        yield fail(row, mismatch % len(cells))
                    start_line = reader.line_num
                    if pause is not None and pause():
                        break
                self._row = row
                return
            except csv.Error as exc:
                row += 1
                reason = self._row_problem(exc, row, start_line, reader.line_num)
                start_line = reader.line_num
                yield fail(row, reason)
            except SegmentFileError as exc:
                raise SegmentFileError(exc.source, exc.reason, row=exc.row or row + 1) from None

    def _row_problem(self, exc: csv.Error, row: int, start_line: int, line: int) -> str:
        """The reason to reject the row the parser stopped on; raises when the rest of the file is unusable."""
        text = str(exc)
        skipped = self._feed.plain_taken if self._feed is not None else 0  # lines csv never saw
        start_line, line = start_line + skipped, line + skipped
        if text.startswith("unexpected end of data"):
            raise SegmentFileError(self._description, f"unterminated quoted value: the quote opened in this row "
                                                      f"(line {start_line + 1}) is never closed", row=row)
        if text.startswith("field larger than field limit"):
            if line - start_line > 1:
                raise SegmentFileError(
                    self._description, f"a quoted value starting in this row (line {start_line + 1}) runs over "
                                       f"{line - start_line} lines and past {self._limit} characters "
                                       "(max_field_chars): an unterminated quote?", row=row)
            return f"a value is longer than {self._limit} characters (max_field_chars)"
        return f"malformed quoting ({text})"

    def close(self) -> None:
        self._stream.close()
