"""A CSV file's bytes as lines, for the refresh that must not parse rows it already exported.

Most rows of a daily refresh are the rows of the last one. The engine recognises such a row from its line's
bytes (shared.pipeline.known_lines), so the line is never decoded, parsed or mapped. A line can be split
without the parser when it is one whole record: it has no quote character, no carriage return but at its
end, and no \x1f (the fingerprints' separator). Such lines are handed out in runs (`RawChunk`); all others go
to the csv parser through this same feed, one decoded line at a time, exactly as the file's text would.
UTF-8 only: there a value's bytes are the bytes its fingerprint is taken of.

The feed hands the csv parser lines until the parser has finished a record and the next line is plain again;
a quoted value spanning lines is therefore always parsed by csv, whatever the chunks' edges.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass
from io import BufferedReader

from shared.errors import SegmentFileError
from shared.source.readers.text_encoding import ESCAPE

READ_BYTES = 1 << 18  # bytes read at a time: about 3,000 lines, ~1 MB of line objects at most
# Lines as a text stream with newline="" gives them to csv: ended by \r\n, \r or \n.
_TEXT_LINES = re.compile(r"[^\r\n]*(?:\r\n?|\n)|[^\r\n]+")
SEPARATOR = b"\x1f"  # shared.state.keys joins a row's values with it; a line holding it is parsed instead


def line_safe(encoding: str) -> bool:
    """True for UTF-8: its b"\\n" is always a line break, and a value's bytes are its fingerprint's input."""
    return codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")


def mostly_plain(head: bytes, quotechar: str) -> bool:
    """Whether the file's first lines are mostly plain: in a file that quotes every value, no line is, and
    handing each line to the parser through the feed would only cost more than the text stream."""
    return head.count(quotechar.encode("utf-8")) < head.count(b"\n") + 1


@dataclass(slots=True)
class RawChunk:
    """Consecutive lines of one file, each one whole record (or blank), as bytes without their b"\\n";
    `first_row` is the row number of `lines[0]`; `crlf`: lines may end in b"\\r" (the csv parser drops it)."""

    source: str
    first_row: int
    lines: list[bytes]
    crlf: bool = False


class LineFeed:
    """Byte lines of one file: runs of plain lines taken whole (`take_plain`), others iterated as decoded text
    (this object is the csv parser's input)."""

    def __init__(self, stream: BufferedReader, encoding: str, quotechar: str) -> None:
        self._stream = stream
        name = codecs.lookup(encoding).name
        self._bom = name == "utf-8-sig"  # stripped once, as the text decoder would
        self.decoding = "utf-8" if self._bom else encoding
        self._quote = quotechar.encode(self.decoding)
        self._lines: list[bytes] = []
        self._at = 0
        self._special: list[int] = []  # indices of lines that are not plain, ascending
        self._next_special = 0
        self._rest = b""  # the start of a line the last read cut, and the reads since that it runs over
        self._rest_parts: list[bytes] = []
        self._eof = False
        self._last_has_newline = True
        self.crlf = False  # the current chunk has b"\r" (only at line ends, in its plain lines)
        self._pieces: list[str] = []  # the rest of a line split at lone b"\\r"s, last first
        self._error: SegmentFileError | None = None  # a read failed: raised once the lines before it are used
        self.plain_taken = 0  # lines handed out raw, which the csv parser's line numbers do not count
        self.csv_only = True  # until the header is read, every line goes to the parser

    # -- the csv parser's side ------------------------------------------------------------------------

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        if self._pieces:
            return self._pieces.pop()
        if self._at >= len(self._lines) and not self._fill():
            raise StopIteration
        line = self._lines[self._at]
        self._at += 1
        text = line.decode(self.decoding, ESCAPE)
        if self._at < len(self._lines) or self._last_has_newline:
            text += "\n"
        if "\r" in text and "\r" in text.removesuffix("\n").removesuffix("\r"):  # a lone \r ends a line too
            self._pieces = _TEXT_LINES.findall(text)[::-1]
            return self._pieces.pop()
        return text

    # -- the raw side ---------------------------------------------------------------------------------

    def plain_ahead(self) -> bool:
        """The next line is plain (a whole record by itself); False at the end of the file."""
        if self.csv_only or self._pieces:
            return False
        if self._at >= len(self._lines) and not self._fill():
            return False
        special = self._special
        while self._next_special < len(special) and special[self._next_special] < self._at:
            self._next_special += 1
        return self._next_special >= len(special) or special[self._next_special] != self._at

    def take_plain(self) -> list[bytes]:
        """The run of plain lines from here to the next line that is not (or the chunk's end)."""
        if not self.plain_ahead():
            return []
        special = self._special
        end = special[self._next_special] if self._next_special < len(special) else len(self._lines)
        lines = self._lines[self._at:end]
        self._at = end
        self.plain_taken += len(lines)
        return lines

    def at_end(self) -> bool:
        return not self._pieces and self._at >= len(self._lines) and not self._fill()

    # -- reading --------------------------------------------------------------------------------------

    def _fill(self) -> bool:
        """The next chunk of whole lines; False at the end of the file."""
        while not self._eof:
            data = self._read()
            if not data:
                self._eof = True
                break
            if self._bom:
                self._bom = False
                if not self._rest and not self._rest_parts and data.startswith(codecs.BOM_UTF8):
                    data = data[len(codecs.BOM_UTF8):]
            cut = data.rfind(b"\n")
            if cut < 0:  # a line longer than a read: its parts are joined once it ends, not at every read
                self._rest_parts.append(data)
                continue
            chunk, self._rest = b"".join([self._rest, *self._rest_parts, data[:cut]]), data[cut + 1:]
            self._rest_parts.clear()
            self._set(chunk, has_newline=True)
            return True
        rest = b"".join([self._rest, *self._rest_parts])
        self._rest, self._rest_parts = b"", []
        if rest and self._error is None:  # after a failed read the line in progress is its row's error
            self._set(rest, has_newline=False)
            return True
        self._lines, self._at = [], 0
        if self._error is not None:
            raise self._error
        return False

    def _read(self) -> bytes:
        """Up to READ_BYTES, one buffer at a time: a failing read (truncated gzip, a limit) keeps what came
        before it, so those rows are still read before the error is raised."""
        parts: list[bytes] = []
        size = 0
        while size < READ_BYTES and self._error is None:
            try:
                data = self._stream.read1(READ_BYTES - size)
            except SegmentFileError as exc:
                self._error = exc
                break
            if not data:
                break
            parts.append(data)
            size += len(data)
        return b"".join(parts)

    def _set(self, chunk: bytes, *, has_newline: bool) -> None:
        """The chunk's lines, and which are not plain. The usual chunk (no quote character, no separator) is
        split in a few C scans; a CRLF one loses its carriage returns at once, as the parser drops them (a
        count of them and a strip of each line cost ~0.25 s a million lines)."""
        self._at, self._next_special = 0, 0
        self._last_has_newline = has_newline
        quote = self._quote
        self.crlf = b"\r" in chunk  # (a search, not a count: a one-byte count is ~10x slower than memchr)
        if quote not in chunk and SEPARATOR not in chunk:
            if not self.crlf:
                self._lines, self._special = chunk.split(b"\n"), []
                return
            if _no_lone_cr(chunk):
                self._lines, self._special, self.crlf = chunk.replace(b"\r", b"").split(b"\n"), [], False
                return
        self._lines = lines = chunk.split(b"\n")
        self._special = [i for i, line in enumerate(lines) if quote in line or SEPARATOR in line
                         or (b"\r" in line and line.find(b"\r") != len(line) - 1)]


def _no_lone_cr(chunk: bytes) -> bool:
    """Every b"\\r" of the chunk ends a line (is followed by b"\\n", or ends the chunk: its b"\\n" was cut).
    A lone one ends a record for the csv parser, so its line is no plain line."""
    import numpy  # noqa: PLC0415 - a run reading raw lines has it (known_lines, line_mapping)

    data = numpy.frombuffer(chunk, dtype=numpy.uint8)
    returns = numpy.flatnonzero(data[:-1] == 13)
    return bool((data[returns + 1] == 10).all())
