"""Stage 1's shortcut for a refresh: rows of a CSV file the list already holds, recognised from their bytes.

A plain line (one whole record, shared.source.readers.raw_lines) splits at its delimiters into exactly the
values the csv parser would give, as UTF-8 bytes: joined and digested under the run's seed they are the row's
source fingerprint (shared.state.keys.source_fingerprint), the very one the snapshot holds. So where the
snapshot's entry for the line's email has that fingerprint, and the line has the header's width, the row is
unchanged: it is marked in the snapshot and spooled by its key and email, in runs, never decoded, parsed or
mapped; an unmapped column changing changes nothing, as on the row-by-row path.

The work is done a chunk (~10,000 lines) at a time, in C-level maps and numpy: a look-up per row in Python
would cost more than parsing the row. The other lines (changed, new, blank, malformed, or an email that needs
more than lower-casing) take the row-by-row path, with their fingerprint. numpy does the sorted search and the
gathers over the snapshot's arrays (views, no copies); it is imported only by a run with a snapshot to compare
with, as its ~10 MB count against peak RSS.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import repeat
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from shared.source.readers.base import ProjectedRow, SegmentReader
from shared.source.readers.raw_lines import SEPARATOR, RawChunk
from shared.staging.spool import Spool
from shared.state.keys import SIGNED, xxh3
from shared.state.snapshot import Snapshot

if TYPE_CHECKING:
    from shared.pipeline.report import RunReport


class LineMatcher:
    """Fingerprints (and, with a trusted snapshot, recognises) the plain lines of one file."""

    def __init__(self, reader: SegmentReader, seed: int, columns: Sequence[str], snapshot: Snapshot | None) -> None:
        header = reader.columns or []
        assert reader.raw_lines and all(column in header for column in columns)
        self.seed = seed
        self._reader = reader
        self._width = len(header)
        self._delimiter = reader.line_delimiter
        positions = [header.index(column) for column in columns]
        self._picked = itemgetter(*positions)
        self._several = len(positions) > 1
        self._email = itemgetter(positions[0])
        self._np: Any = None
        if snapshot is not None and snapshot.trusted and len(snapshot):
            import numpy  # noqa: PLC0415 - see the module docstring: only runs with a snapshot pay for it

            self._np = numpy
            self._flip = numpy.uint64(1 << 63)
            self._keys = numpy.frombuffer(snapshot.keys, dtype=numpy.int64)
            self._fps = numpy.frombuffer(snapshot.fingerprints, dtype=numpy.int64)
            self._seen = numpy.frombuffer(snapshot.seen, dtype=numpy.uint8)
            self._last = len(snapshot) - 1

    def rows(self, chunk: RawChunk, spool: Spool, report: RunReport) -> Iterator[tuple[ProjectedRow, int]]:
        """(row, its fingerprint) of each line not known unchanged, in order; the unchanged ones go into the
        spool in runs between them (so the spool keeps file order) and count as rows read."""
        lines = chunk.lines
        if chunk.crlf:
            lines = list(map(bytes.removesuffix, lines, repeat(b"\r")))
        count = len(lines)
        fields = list(map(bytes.split, lines, repeat(self._delimiter)))
        whole = all(map(self._width.__eq__, map(len, fields)))
        np = self._np
        if np is None:  # nothing to recognise: every line is parsed, with its fingerprint for the next run
            fps = self._fingerprints(fields, whole)
            for parsed, fp in zip(self._reader.parse_lines(chunk, range(count)), fps, strict=True):
                if parsed is not None:
                    yield parsed, fp
            return
        hit, keys, emails, fps = self._match(fields, whole)
        misses: list[int] = np.flatnonzero(~hit).tolist()
        start, first, source = 0, chunk.first_row, chunk.source
        for i, row in zip(misses, self._reader.parse_lines(chunk, misses), strict=True):
            if i > start:
                spool.add_unchanged_run(source, first + start, keys[start:i].tobytes(), emails[start:i])
                report.rows_read += i - start
            start = i + 1
            if row is not None:
                yield row, fps[i]
        if start < count:
            spool.add_unchanged_run(source, first + start, keys[start:].tobytes(), emails[start:])
            report.rows_read += count - start

    def _fingerprints(self, fields: list[list[bytes]], whole: bool) -> list[int]:
        """source_fingerprint of each line's values: joined with SEPARATOR (which a plain line holds none of)."""
        seed, picked = self.seed, self._picked
        if not whole:  # a line of another width is rejected by the parser: its fingerprint is never used
            return [xxh3(self._join(picked(f)), seed) - SIGNED if len(f) == self._width else 0 for f in fields]
        values = map(SEPARATOR.join, map(picked, fields)) if self._several else map(picked, fields)
        return [fp - SIGNED for fp in map(xxh3, values, repeat(seed))]

    def _join(self, values: Any) -> bytes:
        return SEPARATOR.join(values) if self._several else values

    def _match(self, fields: list[list[bytes]], whole: bool) -> tuple[Any, Any, list[bytes], list[int]]:
        """Which lines are unchanged (marked in the snapshot), with every line's key, email and fingerprint."""
        np = self._np
        count = len(fields)
        fps = self._fingerprints(fields, whole)
        width = self._width
        raw = map(self._email, fields) if whole else (self._email(f) if len(f) == width else b"" for f in fields)
        emails = list(map(bytes.lower, map(bytes.strip, raw)))
        keys = (np.fromiter(map(xxh3, emails), dtype=np.uint64, count=count) ^ self._flip).view(np.int64)
        at = np.searchsorted(self._keys, keys)
        np.minimum(at, self._last, out=at)
        hit = (self._keys[at] == keys) & (self._fps[at] == np.array(fps, dtype=np.int64))
        if not whole:
            hit &= np.fromiter(map(len, fields), dtype=np.int64, count=count) == width
        self._seen[at[hit]] = 1
        return hit, keys, emails, fps
