"""From a source's bytes to a text stream: refuse what is not text, gunzip within limits, pick the encoding.

Every byte the readers see passes through `_Guard`, which is where the safety limits live (decompressed size,
line length) and where a cheap per-chunk test flags that some row *may* hold a NUL or undecodable bytes. The
readers check rows only once that flag is up, so clean files pay nothing per row.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import io
import zlib
from typing import Any, BinaryIO

from shared.errors import SegmentFileError
from shared.source.readers.options import ReaderOptions
from shared.source.readers.text_encoding import ESCAPE
from shared.source.sources import ByteSource

GZIP_MAGIC = b"\x1f\x8b"
_HEAD = 16
_SNIFF_BYTES = 1 << 16  # compressed bytes read to tell a .gz's format: its start decompresses to plenty
_SNIFF_TEXT = 1024  # decompressed bytes looked at (blank lines or a BOM may come before the first value)
_READ_SIZE = 1 << 16

# Leading bytes of things that are clearly not a text segment file, with a hint for the operator.
_FOREIGN: tuple[tuple[bytes, str], ...] = (
    (b"-----BEGIN PGP", "an encrypted (OpenPGP) file: decrypt it before it is dropped into storage"),
    (b"Salted__", "an encrypted (OpenSSL) file: decrypt it before it is dropped into storage"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image, not a segment file"),
    (b"\xff\xd8\xff", "a JPEG image, not a segment file"),
    (b"GIF8", "a GIF image, not a segment file"),
    (b"%PDF-", "a PDF document, not a segment file"),
    (b"PK\x03\x04", "a ZIP archive (an Excel workbook?), not a segment file: export CSV instead"),
    (b"\xd0\xcf\x11\xe0", "a legacy Office document, not a segment file: export CSV instead"),
    (b"PAR1", "a Parquet file, which this app does not read: export CSV or JSON Lines instead"),
    (b"Obj\x01", "an Avro file, which this app does not read: export CSV or JSON Lines instead"),
    (b"\xfd7zXZ\x00", "xz-compressed data: only gzip is supported"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data: only gzip is supported"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive: only gzip is supported"),
)
_PGP_OLD_FORMAT = frozenset(range(0x84, 0x88)) | frozenset(range(0x8C, 0x90)) | frozenset(range(0xA0, 0xA8))
_PGP_NEW_FORMAT = frozenset((0xC1, 0xC3, 0xC8, 0xC9, 0xD2, 0xD4))

_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


class EmptyFileError(SegmentFileError):
    """The file has no content at all (a CDM partition may legitimately be empty; a segment file may not)."""


def refuse_foreign(description: str, head: bytes) -> None:
    """SegmentFileError when the leading bytes say encrypted, binary or another compression."""
    for magic, what in _FOREIGN:
        if head.startswith(magic):
            raise SegmentFileError(description, f"this is {what}")
    if head[:3] == b"BZh" and head[3:4].isdigit():
        raise SegmentFileError(description, "this is bzip2-compressed data: only gzip is supported")
    if head and (head[0] in _PGP_OLD_FORMAT
                 or (head[0] in _PGP_NEW_FORMAT and not 0x80 <= (head[1:2] or b"\0")[0] <= 0xBF)):
        # Never valid UTF-8 as a first character, and the first byte of an OpenPGP encrypted message.
        raise SegmentFileError(description, "this looks like an encrypted (OpenPGP) or binary file, not text: "
                                            "decrypt it before it is dropped into storage")


def _utf16_order(head: bytes) -> str | None:
    """UTF-16 without a byte-order mark: every other byte of ASCII text is NUL."""
    if len(head) >= 4 and head[1] == head[3] == 0 and head[0] and head[2]:
        return "utf-16-le"
    if len(head) >= 4 and head[0] == head[2] == 0 and head[1] and head[3]:
        return "utf-16-be"
    return None


def _choose_encoding(head: bytes, wanted: str | None, description: str) -> str:
    for bom, codec in _BOMS:
        if head.startswith(bom):
            return codec
    if wanted is None:
        return _utf16_order(head) or "utf-8"
    try:
        name = codecs.lookup(wanted).name
    except LookupError:
        raise SegmentFileError(description, f"unknown encoding {wanted!r} (file_format.encoding)") from None
    if name == "utf-8":
        return "utf-8-sig"  # tolerate a BOM the configuration did not mention
    if name in ("utf-16", "utf-32"):  # Python's codecs refuse these without a byte-order mark
        order = _utf16_order(head) if name == "utf-16" else None
        if order is None:
            raise SegmentFileError(description, f"file_format.encoding is {wanted!r} but the file starts with no "
                                                "byte-order mark, so its byte order is unknown: set "
                                                f"{name}-le or {name}-be", row=1)
        return order
    return wanted


def _ascii_compatible(encoding: str) -> bool:
    sample = "\x00azAZ09,;\"\r\n"
    try:
        return sample.encode(encoding) == sample.encode("ascii")
    except UnicodeError:
        return False


class _Guard(io.RawIOBase):
    """Counts and inspects the (decompressed) bytes on their way to the text decoder."""

    def __init__(self, inner: BinaryIO, description: str, encoding: str, options: ReaderOptions,
                 *, compressed: bool) -> None:
        super().__init__()
        self._inner = inner
        self._read = getattr(inner, "read1", inner.read)
        self._description = description
        self._limit = options.max_decompressed_bytes if compressed else None
        self._max_line = options.max_line_bytes
        self._ascii_fast = _ascii_compatible(encoding)
        self._encoding = encoding
        self._validator: Any = codecs.getincrementaldecoder(encoding)("strict")
        self.total = 0
        self._since_newline = 0
        self.suspect = False  # a NUL or undecodable byte has been seen: readers check rows from now on

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._read_inner(len(buffer))
        size = len(data)
        buffer[:size] = data
        self.total += size
        if self._limit is not None and self.total > self._limit:
            raise SegmentFileError(self._description,
                                   f"decompresses to more than {self._limit} bytes (max_decompressed_bytes): "
                                   "a gzip bomb, or a file too big to export in one run")
        newline = max(data.rfind(b"\n"), data.rfind(b"\r"))
        self._since_newline = size - newline - 1 if newline >= 0 else self._since_newline + size
        if self._since_newline > self._max_line:
            raise SegmentFileError(self._description,
                                   f"a line is longer than {self._max_line} bytes without a line break "
                                   "(max_line_bytes): not a segment file, or a wrong line separator")
        if not self.suspect:
            self._inspect(data)
        return size

    def _read_inner(self, size: int) -> bytes:
        try:
            return bytes(self._read(size))
        except EOFError:
            raise SegmentFileError(self._description, "truncated gzip data: the file ends before the "
                                                      "compressed stream does (an interrupted upload?)") from None
        except (gzip.BadGzipFile, zlib.error) as exc:
            raise SegmentFileError(self._description, f"corrupt gzip data ({exc})") from None

    def _inspect(self, data: bytes) -> None:
        # An all-ASCII read skips the decoder, unless it holds the start of a sequence from the read before
        # (then this read, or the end of the file, decides whether that sequence was complete).
        if self._ascii_fast and data and data.isascii() and not self._validator.getstate()[0]:
            self.suspect = b"\x00" in data
            return
        try:
            text = self._validator.decode(data, final=not data)
        except UnicodeDecodeError:
            self.suspect = True
        except UnicodeError as exc:  # not a byte the decoder can set aside: the whole stream is unreadable
            raise SegmentFileError(self._description, f"cannot be decoded as {self._encoding}: {exc}") from None
        else:
            self.suspect = "\x00" in text

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            super().close()


class TextStream:
    """The decoded text of one file (newlines untranslated, as `csv` needs) and its guard."""

    def __init__(self, text: io.TextIOWrapper, guard: _Guard, encoding: str, raw: BinaryIO) -> None:
        self.text = text
        self.guard = guard
        self.encoding = encoding
        self._raw = raw

    @property
    def encoding_label(self) -> str:
        name = codecs.lookup(self.encoding).name
        return "UTF-8" if name in ("utf-8", "utf-8-sig") else name.upper()

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing after a read error must not mask that error
            self.text.close()
        self._raw.close()  # GzipFile leaves the file object it was given open


def _peek(stream: BinaryIO, description: str) -> tuple[BinaryIO, bytes]:
    """The first bytes without consuming them (wrapping streams that cannot peek)."""
    peekable: Any = stream if hasattr(stream, "peek") else io.BufferedReader(_Plain(stream))
    try:
        head = bytes(peekable.peek(_HEAD)[:_HEAD])
    except EOFError:
        raise SegmentFileError(description, "truncated gzip data: the file ends before the compressed stream "
                                            "does (an interrupted upload?)") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise SegmentFileError(description, f"corrupt gzip data ({exc})") from None
    return peekable, head


class _Plain(io.RawIOBase):
    def __init__(self, inner: BinaryIO) -> None:
        super().__init__()
        self._inner = inner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._inner.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._inner.close()
        super().close()


def content_head(source: ByteSource, name: str) -> bytes:
    """The first bytes of the file's content (gunzipped when it is gzip data), for telling formats apart;
    one ranged read of the file's start, not a download of the whole file."""
    head = source.head(name, _SNIFF_BYTES)
    if not head.startswith(GZIP_MAGIC):
        return head[:_SNIFF_TEXT]
    text = b""
    try:  # a gzip stream's start decompresses on its own, member after member (a first one may be empty)
        while head.startswith(GZIP_MAGIC) and len(text) < _SNIFF_TEXT:
            member = zlib.decompressobj(wbits=31)
            text += member.decompress(head, _SNIFF_TEXT - len(text))
            if not member.eof:
                break
            head = member.unused_data
    except zlib.error:
        return b""  # corrupt: the reader says so in its own words
    return text


def open_text(source: ByteSource, name: str, options: ReaderOptions, *, encoding: str | None = None) -> TextStream:
    """Open `name` as text. A '.gz' name must hold gzip data; gzip data under another name is gunzipped too
    (SFTP exports compress without renaming). `encoding` (from model.json) overrides the options'."""
    description = source.describe(name)
    raw = source.open(name)
    try:
        stream, head = _peek(raw, description)
        compressed = head.startswith(GZIP_MAGIC)
        if name.lower().endswith(".gz") and not compressed:
            refuse_foreign(description, head)
            raise SegmentFileError(description, "named .gz but does not hold gzip data")
        if compressed:
            stream = gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[assignment]
            stream, head = _peek(stream, description)
        if not head:
            raise EmptyFileError(description, "file is empty")
        refuse_foreign(description, head)
        chosen = _choose_encoding(head, encoding or options.encoding, description)
        guard = _Guard(stream, description, chosen, options, compressed=compressed)
        buffered = io.BufferedReader(guard, buffer_size=_READ_SIZE)
        text = io.TextIOWrapper(buffered, encoding=chosen, errors=ESCAPE, newline="")
    except BaseException:
        raw.close()
        raise
    return TextStream(text, guard, chosen, raw)
