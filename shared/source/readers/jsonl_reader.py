"""JSON Lines (one object per line, as Segment and Adobe write it), flattened to the same string fields as CSV.

Flattening: top-level scalars keep their key; a nested object contributes its members one level deep as
`parent.child`; anything deeper, and lists of objects, become compact JSON text. Lists of scalars become
"a, b, c" (how the mapper reads alternate emails). Numbers keep their exact JSON spelling, booleans become
"true"/"false", null becomes "". When a dotted key collides with a literal key, the later one wins.

Row numbers are line numbers (1-based; blank lines are skipped but counted).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from shared.errors import SegmentFileError
from shared.source.readers.base import SURROGATES, SegmentReader, make_record
from shared.source.readers.decoding import EmptyFileError, TextStream, open_text
from shared.source.readers.options import ReaderOptions
from shared.source.records import Record
from shared.source.sources import ByteSource


class _Number(str):
    """A JSON number kept in its exact spelling (no float rounding, no '1e+20' surprises)."""

    __slots__ = ()


_decoder = json.JSONDecoder(parse_float=_Number, parse_int=_Number, parse_constant=_Number)


def _dump(value: Any) -> str:
    """Compact JSON text for nested values, with numbers written back as numbers."""
    if isinstance(value, _Number):
        return str.__str__(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{_dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dump(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return str.__str__(value)
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, list) and all(isinstance(v, str) or v is None or isinstance(v, bool) for v in value):
        return ", ".join(_text(v) for v in value if v is not None)
    return _dump(value)


def flatten(obj: dict[str, Any]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for key, value in obj.items():
        if type(value) is str:
            fields[key] = value
        elif isinstance(value, dict):
            for inner, inner_value in value.items():
                fields[f"{key}.{inner}"] = _text(inner_value)
        else:
            fields[key] = _text(value)
    return fields


class JsonLinesReader(SegmentReader):
    columns = None

    def __init__(self, source: ByteSource, name: str, options: ReaderOptions) -> None:
        self._description = source.describe(name)
        self._name = name
        self._options = options
        self._stream: TextStream = open_text(source, name, options)

    def _parse(self, line: str) -> dict[str, str] | str:
        """The row's fields, or the reason it is rejected."""
        try:
            obj = _decoder.decode(line)
        except json.JSONDecodeError as exc:
            return f"not valid JSON ({exc.msg} at column {exc.colno})"
        except RecursionError:
            return "not valid JSON (nested too deeply)"
        if not isinstance(obj, dict):
            return f"line is a JSON {type(obj).__name__ if obj is not None else 'null'}, not a JSON object"
        fields = flatten(obj)
        if len(fields) > self._options.max_columns:
            return f"object has {len(fields)} fields, more than max_columns {self._options.max_columns}"
        limit = self._options.max_field_chars
        if fields and max(map(len, fields.values())) > limit:
            column = next(k for k, v in fields.items() if len(v) > limit)
            return f"value of {column!r} is longer than {limit} characters (max_field_chars)"
        if "\\u" in line:  # escapes can spell a NUL or a lone surrogate the byte checks never saw
            for key, value in fields.items():
                if "\x00" in value or SURROGATES.search(value):
                    return f"value of {key!r} holds a NUL or an unpaired surrogate escape"
        return fields

    def __iter__(self) -> Iterator[Record]:
        guard = self._stream.guard
        row = 0
        first = True
        seen_any = False
        try:
            for line in self._stream.text:
                row += 1
                if not line.strip():
                    continue
                seen_any = True
                if guard.suspect:
                    if "\x00" in line:
                        yield make_record(self._name, row, {}, "NUL byte in the line")
                        continue
                    if SURROGATES.search(line):
                        yield make_record(self._name, row, {}, f"invalid {self._stream.encoding_label}")
                        continue
                parsed = self._parse(line)
                if first and isinstance(parsed, str) and line.lstrip().startswith("["):
                    raise SegmentFileError(self._description, "this is a JSON array, not JSON Lines (one "
                                                              "object per line)", row=row)
                first = False
                if isinstance(parsed, str):
                    yield make_record(self._name, row, {}, parsed)
                else:
                    yield make_record(self._name, row, parsed, None)
        except SegmentFileError as exc:
            raise SegmentFileError(exc.source, exc.reason, row=exc.row or row + 1) from None
        if not seen_any:  # as the CSV reader says of an empty file: not a segment of nobody
            raise EmptyFileError(self._description, "file is empty (only blank lines, no JSON object)")

    def close(self) -> None:
        self._stream.close()
