"""The unit that flows from a reader into the mapper: one input row with where it came from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Record:
    """One profile row as read from a segment file.

    `row` is the 1-based data-row number inside `source` (a header row is not counted), so an
    operator can find the row in the file the report names. `error` is set instead of failing the
    whole file when only this row is unusable (wrong column count, undecodable bytes): the row is
    then rejected with that reason and the export goes on.
    """

    source: str
    row: int
    fields: dict[str, str]
    error: str | None = None
