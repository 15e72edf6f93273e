"""What every reader offers the engine, and the cheap way to build a million Records."""

from __future__ import annotations

import itertools
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import fields
from types import MappingProxyType, TracebackType
from typing import Any

from shared.source.readers.raw_lines import RawChunk
from shared.source.records import Record

# One row as the engine maps it: (source, row, the values of the columns asked for, in their order, None where
# the row lacks one, empty when the row is unusable; the reason it is unusable, or None).
ProjectedRow = tuple[str, int, Sequence[str | None], str | None]
KEYS_SEEN_KEPT = 50  # key names a header-less reader notes, for an error naming a mapped column no row has

# Lone surrogates are what the decoder's error handler ('segment-escape') makes of undecodable bytes.
SURROGATES = re.compile("[\ud800-\udfff]")


def _record_factory() -> Callable[[str, int, dict[str, str], str | None], Record]:
    """Record's frozen-dataclass __init__ costs ~0.9 s per million rows; setting its slots directly costs a
    third of that and builds the very same (equal, frozen) object. Falls back to the constructor if Record's
    fields ever change."""
    if [f.name for f in fields(Record)] != ["source", "row", "fields", "error"] or not hasattr(Record, "__slots__"):
        return Record
    new = object.__new__
    slots: dict[str, Any] = dict(vars(Record))
    set_source = slots["source"].__set__
    set_row = slots["row"].__set__
    set_fields = slots["fields"].__set__
    set_error = slots["error"].__set__

    def make(source: str, row: int, values: dict[str, str], error: str | None) -> Record:
        record = new(Record)
        set_source(record, source)
        set_row(record, row)
        set_fields(record, values)
        set_error(record, error)
        return record

    return make


make_record = _record_factory()


class SegmentReader(ABC):
    """An open segment file: `columns` is known right after opening (None for JSON Lines); iterating yields
    one Record per data row, in file order; `close()` releases the streams (also on `with` exit)."""

    columns: list[str] | None = None
    keys_seen: Mapping[str, None] = MappingProxyType({})  # set by project() on readers without columns

    @abstractmethod
    def __iter__(self) -> Iterator[Record]: ...

    def project(self, columns: Sequence[str]) -> Iterator[ProjectedRow]:
        """The rows with only these columns' values, in this order: what the engine maps.

        Readers that know their columns (CSV, CDM) pick the values by position, with no dict per row. This
        default takes them from the Records (JSON Lines rows name their own keys) and notes the first key
        names met in `keys_seen`, for an error about a mapped column that no row has.
        """
        wanted = tuple(columns)
        seen: dict[str, None] = {}
        self.keys_seen = seen
        for record in self:
            if record.error is not None:
                yield record.source, record.row, (), record.error
                continue
            fields = record.fields
            if len(seen) < KEYS_SEEN_KEPT:
                seen.update(dict.fromkeys(itertools.islice(fields, KEYS_SEEN_KEPT)))
            yield record.source, record.row, tuple(map(fields.get, wanted)), None

    @property
    def raw_lines(self) -> bool:
        """True when `project_lines` may yield RawChunks (runs of lines that are each one whole record)."""
        return False

    @property
    def raw_trusted_below(self) -> int:
        """Plain lines shorter than this cannot hold a value the parser would reject (0: no line)."""
        return 0

    @property
    def max_value_chars(self) -> int:
        """The longest value this reader accepts (max_field_chars; 0: not known)."""
        return 0

    @property
    def line_delimiter(self) -> bytes:
        return b","

    def project_lines(self, columns: Sequence[str]) -> Iterator[ProjectedRow | RawChunk]:
        """As `project`; a reader that can recognise whole-record lines (CSV) yields runs of them unparsed."""
        yield from self.project(columns)

    def parse_lines(self, chunk: RawChunk, indices: Sequence[int]) -> Iterator[ProjectedRow | None]:
        """The rows of these lines of a RawChunk this reader yielded (None for a blank line)."""
        raise NotImplementedError("this reader yields no RawChunks")

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> SegmentReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
