"""Plain lines mapped to contacts a chunk (~3,000 lines) at a time, for an export that maps every row.

Why: a first export (and any run without a snapshot) maps every row, and mapping one row in Python (its csv
parse, its email's checks, its JSON) was most of such a run's CPU, ~3 us a row. But a chunk of plain lines
(shared.source.readers.raw_lines: each line one whole record) whose every line has the header's width,
decodes as UTF-8, holds nothing JSON must escape, and whose every email passes normalise_email's fast rules
as it stands, becomes exactly the bytes ContactMapper.map_values writes, row for row, by C-level calls over
the whole chunk: one split of its text into values, one regex over its emails, one join of its JSON.

Any chunk with one line that is not so (a rejected row, an email for email-validator, a value too long to
send, quotes) goes row by row as before: every rule and every reason stays in contact_mapping, and this is a
shortcut for the rows those rules pass as they are (tests/test_line_mapping.py holds the two to the same
bytes on the same lines). Each contact gets its line hash too (shared.state.line_hashes), so the first
refresh after a first export already knows its unchanged rows by their lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import repeat
from typing import Any

from shared.mapping.contact_mapping import ContactMapper
from shared.mapping.email_rules import FAST_PATTERN, MAX_EMAIL_LENGTH, MAX_LOCAL_PART_LENGTH, SPECIAL_TLDS
from shared.source.readers.base import SegmentReader
from shared.source.readers.raw_lines import RawChunk
from shared.state.keys import line_seed, xxh3

# Every email of a chunk (lower-cased, one a line) in normalise_email's fast form: one C call for them all.
_EMAILS = re.compile(rf"(?:{FAST_PATTERN}\n)*{FAST_PATTERN}")
_DASHES_IN_DOMAIN = re.compile(r"@[^@\n]*--")
_SPECIAL_ENDINGS = tuple(f".{tld}" for tld in sorted(SPECIAL_TLDS))
_NEWLINE, _SPACE, _NON_ASCII = 10, 32, 128
_PARTS = 16  # a declined chunk is tried again in this many pieces
_TRIES_BEFORE_JUDGING = 64  # pieces tried before a file where most are declined stops being tried
_SEP = "\x1f"  # shared.state.keys.source_fingerprint's separator; plain lines hold none

Layout = list[str | list[str]]  # per row: constants and columns, in the order they are written


@dataclass(slots=True)
class MappedLines:
    """A chunk's contacts as Spool.add_block takes them."""

    keys: bytes  # email_key of each (native int64)
    pairs: bytes  # (source fingerprint, line hash) of each, int64 pairs; zeros in a run without state
    bodies: bytes  # the contacts' JSON, one a line, joined by b"\n" (no final one)
    starts: Any  # numpy int64: where each contact starts in `bodies`


class LineMapper:
    """Maps the plain lines of one CSV file, a chunk at a time, to what ContactMapper would make of each."""

    def __init__(self, mapper: ContactMapper, reader: SegmentReader, seed: int | None) -> None:
        fields = mapper.plain_fields()
        header = list(reader.columns or [])
        delimiter = reader.line_delimiter
        assert fields is not None and reader.raw_lines and len(delimiter) == 1
        import numpy  # noqa: PLC0415 - the snapshot's write imports it anyway; a run without a CSV file need not

        self._np: Any = numpy
        self._flip = numpy.uint64(1 << 63)
        self._reader = reader
        self._width = len(header)
        self._byte = delimiter[0]
        self._delimiter = delimiter.decode("ascii")
        at = {column: position for position, column in enumerate(header)}  # as the csv reader picks (last wins)
        self._columns = [at[column] for column in mapper.columns]  # the file's column of each mapper position
        self._fields = [(self._columns[position], limit, key) for _, position, limit, key in fields]
        self._clear = mapper.clears_empty
        self._seed = seed
        self._line_seed = line_seed(seed, header, delimiter) if seed is not None else 0
        self._tries = self._declined = 0  # pieces tried, and declined, in this file
        # JSON escapes these (encode_basestring: controls, backslash, and the double quote, which a plain line
        # may hold when the file's quotechar is another), and a value cannot hold the delimiter: a line with any
        # of them is not written here.
        self._controls = bytes(b for b in range(32) if b not in (_NEWLINE, self._byte)) + b'\\"'

    @staticmethod
    def possible(mapper: ContactMapper, erasures: bool, preview: bool) -> bool:
        """Whether a run could map lines here: plain fields only, no erased person to check each row against,
        no preview to fill."""
        return mapper.plain_fields() is not None and not erasures and not preview

    @classmethod
    def for_reader(cls, mapper: ContactMapper, reader: SegmentReader, seed: int | None) -> LineMapper | None:
        header = reader.columns or ()
        delimiter = reader.line_delimiter
        if not reader.raw_lines or not all(column in header for column in mapper.columns):
            return None
        if len(delimiter) != 1 or delimiter[0] >= _NON_ASCII or delimiter == b"\n":
            return None
        return cls(mapper, reader, seed)

    def pieces(self, chunk: RawChunk) -> Iterator[tuple[RawChunk, MappedLines | None]]:
        """The chunk's lines in order, as pieces mapped here or (None) to parse row by row; blank lines, which
        are no row, left out. A piece declined is tried again as sixteenths, so one odd row costs a sixteenth
        of a chunk, not all of it; a file where most pieces are declined stops being tried (each try costs
        about half of what parsing the lines does)."""
        lines, start = chunk.lines, 0
        blank = b"\r" if chunk.crlf else b""
        for end in [*(i for i, line in enumerate(lines) if not line or line == blank), len(lines)]:
            if end > start:
                yield from self._pieces(RawChunk(chunk.source, chunk.first_row + start, lines[start:end], chunk.crlf))
            start = end + 1

    def _pieces(self, chunk: RawChunk) -> Iterator[tuple[RawChunk, MappedLines | None]]:
        if self._tries >= _TRIES_BEFORE_JUDGING and self._declined * 2 > self._tries:
            yield chunk, None
            return
        block = self._tried(chunk)
        if block is not None or len(chunk.lines) < 2 * _PARTS:
            yield chunk, block
            return
        size = -(-len(chunk.lines) // _PARTS)
        for start in range(0, len(chunk.lines), size):
            part = RawChunk(chunk.source, chunk.first_row + start, chunk.lines[start:start + size], chunk.crlf)
            yield part, self._tried(part)

    def _tried(self, chunk: RawChunk) -> MappedLines | None:
        block = self.map(chunk)
        self._tries += 1
        self._declined += block is None
        return block

    def map(self, chunk: RawChunk) -> MappedLines | None:
        """The chunk's contacts, in line order; None when any line must go row by row."""
        np, lines, count = self._np, chunk.lines, len(chunk.lines)
        if chunk.crlf:
            lines = list(map(bytes.removesuffix, lines, repeat(b"\r")))
        # A line no longer than max_field_chars holds no longer value; a NUL or an undecodable byte is refused
        # below (the reader's guard, which sends every later row through its checks once it saw one, is not
        # needed for lines checked here).
        if not count or max(map(len, lines)) > self._reader.max_value_chars:
            return None
        raw = b"\n".join(lines)
        if len(raw.translate(None, self._controls)) != len(raw):
            return None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        cells = self._cells(raw, count)
        if cells is None:
            return None
        values = text.replace("\n", self._delimiter).split(self._delimiter)
        width = self._width
        emails = _emails(values[self._columns[0]::width])
        if emails is None:
            return None
        layout: Layout = ['{"email":"', emails, '"']
        for column, limit, key in self._fields:
            field = self._field(values[column::width], cells, column, limit)
            if field is None:
                return None
            strings, empty = field
            if empty and not self._clear:
                quoted = key + '"%s"'
                layout.append([quoted % value if value else "" for value in strings])
            else:
                layout += [key + '"', strings, '"']
        layout.append("}")
        bodies = _joined(layout, count).encode("utf-8")
        breaks = np.flatnonzero(np.frombuffer(bodies, dtype=np.uint8) == _NEWLINE)
        starts = np.zeros(count, dtype=np.int64)
        starts[1:] = breaks + 1
        keys = (np.fromiter(map(xxh3, map(str.encode, emails)), dtype=np.uint64, count=count) ^ self._flip)
        return MappedLines(keys.view(np.int64).tobytes(), self._pairs(lines, values), bodies, starts)

    def _cells(self, raw: bytes, count: int) -> tuple[Any, Any, Any] | None:
        """(the chunk's bytes, where each value starts, where it ends) as numpy arrays, value by value, when
        every line has the header's width (the parser rejects any other line); else None."""
        np, width = self._np, self._width
        data = np.frombuffer(raw, dtype=np.uint8)
        breaks = np.flatnonzero((data == self._byte) | (data == _NEWLINE))
        # n lines of w values: n*w - 1 breaks, every w-th of them a line's end (all n - 1 line ends, then)
        if len(breaks) != count * width - 1 or not (data[breaks[width - 1::width]] == _NEWLINE).all():
            return None
        starts = np.zeros(count * width, dtype=np.int64)
        starts[1:] = breaks + 1
        ends = np.full(count * width, len(raw), dtype=np.int64)
        ends[:-1] = breaks
        return data, starts, ends

    def _field(self, strings: list[str], cells: tuple[Any, Any, Any], column: int,
               limit: int | None) -> tuple[list[str], bool] | None:
        """A mapped column's values as map_values writes them (trimmed) and whether one is empty; None if a
        value is longer than SendGrid takes (rejected or truncated, row by row)."""
        data, starts, ends = cells
        begin, end = starts[column::self._width], ends[column::self._width]
        lengths = end - begin
        filled = lengths > 0
        first, last = data[begin[filled]], data[end[filled] - 1]
        # A value to trim starts or ends with a space (other ASCII whitespace is a control, not here) or with
        # a non-ASCII character (maybe a no-break space): only then is the column trimmed value by value.
        if ((first == _SPACE) | (first >= _NON_ASCII) | (last == _SPACE) | (last >= _NON_ASCII)).any():
            strings = list(map(str.strip, strings))
            empty = "" in strings
        else:
            empty = not filled.all()
        if limit is not None and strings and int(lengths.max()) > limit and max(map(len, strings)) > limit:
            return None
        return strings, empty

    def _pairs(self, lines: list[bytes], values: list[str]) -> bytes:
        """Each row's source fingerprint (of its mapped values as the file has them) and line hash."""
        np, count = self._np, len(lines)
        if self._seed is None:
            return bytes(16 * count)
        parts: Layout = []
        for column in self._columns:
            parts += [values[column::self._width], _SEP]
        joined = _joined(parts[:-1], count).encode("utf-8").split(b"\n")
        pairs = np.empty((count, 2), dtype=np.uint64)
        pairs[:, 0] = np.fromiter(map(xxh3, joined, repeat(self._seed)), dtype=np.uint64, count=count)
        pairs[:, 1] = np.fromiter(map(xxh3, lines, repeat(self._line_seed)), dtype=np.uint64, count=count)
        pairs ^= self._flip
        return bytes(pairs.tobytes())


def _emails(raw: list[str]) -> list[str] | None:
    """The emails as normalise_email gives them, when every one passes its fast rules as it stands."""
    joined = "\n".join(raw).lower()
    if not _EMAILS.fullmatch(joined) or ("--" in joined and _DASHES_IN_DOMAIN.search(joined)):
        return None  # '--' in a domain needs the library's IDNA checks
    if joined.endswith(_SPECIAL_ENDINGS) or any(f"{ending}\n" in joined for ending in _SPECIAL_ENDINGS):
        return None
    emails = joined.split("\n")
    if max(map(len, emails)) > MAX_EMAIL_LENGTH or max(map(str.find, emails, repeat("@"))) > MAX_LOCAL_PART_LENGTH:
        return None
    return emails


def _joined(layout: Layout, count: int) -> str:
    """`count` rows of the layout, joined by newlines: constants repeated, columns taken value by value."""
    items: Layout = []
    for item in layout:  # adjacent constants as one
        if isinstance(item, str) and items and isinstance(items[-1], str):
            items[-1] += item
        else:
            items.append(item)
    if not isinstance(items[-1], str):
        items.append("")
    size = len(items)
    parts: list[str] = [""] * (size * count)
    for at, item in enumerate(items):
        parts[at::size] = [item] * count if isinstance(item, str) else item
    last = items[-1]
    assert isinstance(last, str)
    parts[size - 1::size] = [last + "\n"] * count
    parts[-1] = last
    return "".join(parts)
