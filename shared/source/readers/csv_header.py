"""A CSV file's layout (delimiter, quoting, header mode) and the checks its header row must pass."""

from __future__ import annotations

import csv
import threading
from dataclasses import dataclass
from typing import Literal

from shared.errors import SegmentFileError
from shared.source.readers.base import SURROGATES
from shared.source.readers.options import ALLOWED_DELIMITERS, ReaderOptions

HeaderMode = Literal["first-row", "none", "auto"]

_LIMIT_LOCK = threading.Lock()


def csv_limit_at_least(wanted: int) -> bool:
    """Raise the csv module's (process-wide) field limit to `wanted`; True if it now equals it exactly.

    The limit is only ever raised, so concurrent readers never lower it under each other; a reader whose
    limit is below the process-wide one checks value lengths itself.
    """
    with _LIMIT_LOCK:
        current = csv.field_size_limit()
        if wanted > current:
            csv.field_size_limit(wanted)
            return True
        return wanted == current


@dataclass(frozen=True)
class CsvLayout:
    """How one CSV file is laid out, resolved from options, file name or model.json."""

    delimiter: str = ","
    quotechar: str = '"'
    escapechar: str | None = None
    quote_none: bool = False  # CDM QuoteStyle.None: quote characters are plain text
    header: HeaderMode = "first-row"
    columns: tuple[str, ...] | None = None  # known column names (CDM attributes)
    encoding: str | None = None
    delimiter_was_chosen: bool = True  # False: the default, so a single-column header earns a hint

    @classmethod
    def for_file(cls, name: str, options: ReaderOptions) -> CsvLayout:
        base = name.lower().removesuffix(".gz")
        delimiter = options.delimiter or ("\t" if base.endswith(".tsv") else ",")
        return cls(delimiter=delimiter, quotechar=options.quotechar or '"', escapechar=options.escapechar,
                   header="none" if options.has_header is False else "first-row",
                   delimiter_was_chosen=options.delimiter is not None or base.endswith(".tsv"))



def first_row_problem(exc: csv.Error, limit: int) -> str:
    """The reason a file's header row cannot be parsed."""
    text = str(exc)
    if text.startswith("unexpected end of data"):
        return "unterminated quoted value: the quote opened in the first row is never closed"
    if text.startswith("field larger than field limit"):
        return f"the first row has a value longer than {limit} characters (max_field_chars)"
    return f"the first row has malformed quoting ({text})"


def check_header(header: list[str], where: str, options: ReaderOptions, layout: CsvLayout, encoding_label: str) -> None:
    """The header row must be names: no NULs or undecodable bytes, no duplicates, not one column holding
    another delimiter."""
    if len(header) > options.max_columns:
        raise SegmentFileError(where, f"the header has {len(header)} columns, more than max_columns "
                                      f"{options.max_columns}")
    joined = "".join(header)
    if "\x00" in joined:
        raise SegmentFileError(where, "the header row contains NUL bytes: a binary file, or UTF-16 declared "
                                      "with the wrong encoding")
    if SURROGATES.search(joined):
        raise SegmentFileError(where, f"the header row is not valid {encoding_label}: set "
                                      "file_format.encoding to the file's encoding (e.g. 'cp1252')")
    seen: dict[str, int] = {}
    for position, column in enumerate(header, start=1):
        if column in seen:
            # Positions, not the name: without its header row, a file's first row is a profile.
            raise SegmentFileError(where, f"duplicate column name in the header: columns {seen[column]} and "
                                          f"{position} have the same name (is the header row missing?)")
        seen[column] = position
    if len(header) == 1 and not layout.delimiter_was_chosen:
        for other in ALLOWED_DELIMITERS:
            if other != layout.delimiter and other in header[0]:
                shown = "tab" if other == "\t" else repr(other)
                raise SegmentFileError(where, f"the header is a single column containing {shown}: the file "
                                              f"seems to use {shown} as delimiter; set file_format.delimiter")

def check_known(header: list[str], where: str, layout: CsvLayout) -> None:
    """A CDM partition with its own header row: it must name the model.json attributes."""
    known = layout.columns
    if known is None or tuple(header) == known:
        return
    if sorted(header) != sorted(known):
        # Only model.json's names are shown: a header row that is really data holds a profile.
        extra = [position for position, c in enumerate(header, start=1) if c not in known]
        missing = [c for c in known if c not in header][:5]
        raise SegmentFileError(where, "the header row does not match the model.json attributes "
                                                  f"(missing: {missing}; {len(extra)} column(s) not in "
                                                  f"model.json, at position(s) {extra[:5]})")
