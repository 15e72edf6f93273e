"""How to read a destination's files when they differ from the defaults, and the safety limits."""

from __future__ import annotations

from dataclasses import dataclass

from shared.errors import ConfigurationError
from shared.source.readers.text_encoding import encoding_problem

ALLOWED_DELIMITERS = (",", ";", "|", "\t", ":")
GIB = 1 << 30


@dataclass(frozen=True)
class ReaderOptions:
    """Reader settings; None means "decide from the file name / file content".

    - `delimiter`: None = ',' (or '\\t' for .tsv); one of `, ; | \\t :` (Adobe's choices).
    - `quotechar` (None = '"') and `escapechar` (None = none; Adobe writes backslash).
    - `encoding`: None = UTF-8; a UTF-8/UTF-16/UTF-32 byte-order mark always wins over this setting.
    - `has_header`: None = True for CSV; for CDM partitions model.json decides.
    - `entity`: which CDM entity of a model.json to read (None: the only LocalEntity).
    - limits: a file decompressing past `max_decompressed_bytes` is refused (gzip bombs); a row with a value
      longer than `max_field_chars` is rejected; a header wider than `max_columns` refuses the file; a line
      longer than `max_line_bytes` (no line break) refuses the file, since holding it would need unbounded memory.
    """

    delimiter: str | None = None
    quotechar: str | None = None
    escapechar: str | None = None
    encoding: str | None = None
    has_header: bool | None = None
    entity: str | None = None
    max_decompressed_bytes: int = 2 * GIB
    max_field_chars: int = 131_072
    max_columns: int = 2000
    max_line_bytes: int = 16 << 20

    def __post_init__(self) -> None:
        if self.delimiter is not None and self.delimiter not in ALLOWED_DELIMITERS:
            raise ConfigurationError("must be one of , ; | : or a tab", field="file_format.delimiter")
        for name in ("quotechar", "escapechar"):
            value = getattr(self, name)
            if value is not None and (len(value) != 1 or value in "\r\n" or value == (self.delimiter or ",")):
                raise ConfigurationError("must be one character, not a line break or the delimiter",
                                         field=f"file_format.{name}")
        if self.encoding is not None and (problem := encoding_problem(self.encoding)) is not None:
            raise ConfigurationError(problem, field="file_format.encoding")
        for name in ("max_decompressed_bytes", "max_field_chars", "max_columns", "max_line_bytes"):
            if getattr(self, name) < 1:
                raise ConfigurationError("must be positive", field=f"file_format.{name}")
