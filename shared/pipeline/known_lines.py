"""Stage 1's shortcut for a refresh: rows of a CSV file the list already holds, recognised from their bytes.

A plain line (one whole record, shared.source.readers.raw_lines) splits at its delimiters into exactly the
values the csv parser would give, as UTF-8 bytes: joined and digested under the run's seed they are the row's
source fingerprint (shared.state.keys.source_fingerprint), the very one the snapshot holds. So where the
snapshot's entry for the line's email has that fingerprint, and the line has the header's width, the row is
unchanged: it is marked in the snapshot and spooled by its key and email, in runs, never decoded, parsed or
mapped; an unmapped column changing changes nothing, as on the row-by-row path.

Cheaper still, a line whose hash (shared.state.line_hashes) is an entry's is that entry's very line: one
digest a line, no split, and the spool keeps only the entry. A line that changed only in an unmapped column
is found by its values as above, and its entry takes the new line hash.

The work is done a chunk (~3,000 lines) at a time, in C-level maps and numpy: a look-up per row in Python
would cost more than parsing the row. The other lines (changed, new, blank, malformed, or an email that needs
more than lower-casing) take the row-by-row path, with their fingerprint and line hash. numpy does the sorted
searches and the gathers over the snapshot's arrays (views, no copies); it is imported only by a run with a
snapshot to compare with, as its ~10 MB count against peak RSS.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from itertools import repeat
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from shared.source.readers.base import ProjectedRow, SegmentReader
from shared.source.readers.raw_lines import SEPARATOR, RawChunk
from shared.staging.spool import Spool
from shared.state.keys import line_seed, xxh3
from shared.state.snapshot_entries import Snapshot

if TYPE_CHECKING:
    from shared.pipeline.report import RunReport


class LineMatcher:
    """Recognises the plain lines of one file that a trusted snapshot holds as they are."""

    def __init__(self, reader: SegmentReader, seed: int, columns: Sequence[str], snapshot: Snapshot) -> None:
        header = reader.columns or []
        assert reader.raw_lines and all(column in header for column in columns)
        self.seed = seed
        self._reader = reader
        self._width = len(header)
        self._delimiter = reader.line_delimiter
        self._line_seed = line_seed(seed, header, self._delimiter)
        positions = [header.index(column) for column in columns]
        self._picked = itemgetter(*positions)
        self._several = len(positions) > 1
        self._email = itemgetter(positions[0])
        self._email_split = positions[0] + 1
        first, last = positions[0], positions[-1]
        side_by_side = self._several and positions == list(range(first, last + 1))
        self._span = (first, self._width - 1 - last) if side_by_side else None
        self._to_separator = bytes.maketrans(self._delimiter, SEPARATOR)
        assert snapshot.trusted and len(snapshot), "only lines a trusted snapshot holds are worth recognising"
        import numpy  # noqa: PLC0415 - see the module docstring: only runs with a snapshot pay for it

        self._np: Any = numpy
        self._flip = numpy.uint64(1 << 63)
        self._keys = numpy.frombuffer(snapshot.keys, dtype=numpy.int64)
        self._fps = numpy.frombuffer(snapshot.fingerprints, dtype=numpy.int64)
        self._seen = numpy.frombuffer(snapshot.seen, dtype=numpy.uint8)
        self._last = len(snapshot) - 1
        self._lines = snapshot.lines
        self._by_line = snapshot.lines.known()  # entries have line hashes to look lines up by

    def rows(self, chunk: RawChunk, spool: Spool, report: RunReport) -> Iterator[tuple[ProjectedRow, int, int]]:
        """(row, its fingerprint, its line hash) of each line not known unchanged, in order; the unchanged ones
        go into the spool in runs between them (so the spool keeps file order) and count as rows read."""
        np, lines = self._np, chunk.lines
        if chunk.crlf:
            lines = list(map(bytes.removesuffix, lines, repeat(b"\r")))
        count, below = len(lines), self._reader.raw_trusted_below
        hashes = (np.fromiter(map(xxh3, lines, repeat(self._line_seed)), dtype=np.uint64, count=count)
                  ^ self._flip).view(np.int64)
        kind = np.zeros(count, dtype=np.uint8)  # _MISS, _SAME_VALUES or _SAME_LINE
        keys = np.zeros(count, dtype=np.int64)
        if self._by_line and below:
            same_line, found = self._lines.find(hashes)
            self._seen[found] = 1
            keys[same_line] = self._keys[found]
            kind[same_line] = _SAME_LINE
        rest = np.flatnonzero(kind == _MISS)
        emails: list[bytes] = []
        fps = np.zeros(count, dtype=np.int64)
        if len(rest):
            subset = lines if len(rest) == count else [lines[i] for i in rest.tolist()]
            hit, keys[rest], emails, fps[rest], found = self._match(subset, below)
            kind[rest[hit]] = _SAME_VALUES
            learnt = hit & (found >= 0)
            self._lines.update(found[learnt], hashes[rest[learnt]])  # their lines changed: next time, these
        yield from self._spooled(chunk, kind, keys, fps, hashes, rest, emails, spool, report)

    def _spooled(self, chunk: RawChunk, kind: Any, keys: Any, fps: Any, hashes: Any, rest: Any,
                 emails: list[bytes], spool: Spool, report: RunReport) -> Iterator[tuple[ProjectedRow, int, int]]:
        """The chunk's lines into the spool in file order, a run of one kind at a time; the misses parsed."""
        np, count = self._np, len(kind)
        misses = np.flatnonzero(kind == _MISS).tolist()
        parsed = iter(zip(misses, self._reader.parse_lines(chunk, misses), strict=True))
        bounds = [0, *(np.flatnonzero(kind[1:] != kind[:-1]) + 1).tolist(), count]
        source, first = chunk.source, chunk.first_row
        fp_list: list[int] | None = None
        hash_list: list[int] = []
        for start, end in itertools.pairwise(bounds):
            what = kind[start]
            if what == _SAME_LINE:
                spool.add_known_lines(source, first + start, keys[start:end].tobytes(), end - start)
                report.rows_read += end - start
            elif what == _SAME_VALUES:
                at = int(np.searchsorted(rest, start))
                spool.add_unchanged_run(source, first + start, keys[start:end].tobytes(), emails[at:at + end - start])
                report.rows_read += end - start
            else:
                if fp_list is None:
                    fp_list, hash_list = fps.tolist(), hashes.tolist()
                for i, row in itertools.islice(parsed, end - start):
                    if row is not None:
                        yield row, fp_list[i], hash_list[i]

    def _match(self, lines: list[bytes], below: int) -> tuple[Any, Any, list[bytes], Any, Any]:
        """Which lines are unchanged (marked in the snapshot), with every line's key, email, fingerprint and the
        entry whose line hash it should become (where unchanged and no line before it held the entry; else -1).

        Only a line of the header's width, shorter than `below` (the reader's guard: no NUL or undecodable
        byte read, no value past max_field_chars) can be unchanged: the parser would reject any other, for a
        problem in any column, mapped or not.
        """
        np, delimiter, count = self._np, self._delimiter, len(lines)
        whole = self._whole(lines)
        eligible = whole
        if count and max(map(len, lines)) >= below:
            eligible = whole & (np.fromiter(map(len, lines), dtype=np.int64, count=count) < below)
        raw: Iterable[bytes]
        if whole.all():
            fps = self._fingerprints(lines)
            raw = map(self._email, map(bytes.split, lines, repeat(delimiter), repeat(self._email_split)))
        else:  # a line of another width is rejected by the parser: it is never unchanged
            kept = whole.tolist()
            fps = np.zeros(count, dtype=np.int64)
            fps[whole] = self._fingerprints([line for line, ok in zip(lines, kept, strict=True) if ok])
            raw = (self._email(line.split(delimiter, self._email_split)) if ok else b""
                   for line, ok in zip(lines, kept, strict=True))
        emails = list(map(bytes.lower, map(bytes.strip, raw)))
        keys = (np.fromiter(map(xxh3, emails), dtype=np.uint64, count=count) ^ self._flip).view(np.int64)
        at = np.searchsorted(self._keys, keys)
        np.minimum(at, self._last, out=at)
        hit = (self._keys[at] == keys) & (self._fps[at] == fps) & eligible
        # An entry another line of this run already holds (the person in two files, or twice in one, by other
        # bytes) keeps its line hash: taking this line's would make the two lines take turns, each run.
        fresh = hit & (self._seen[at] == 0)
        self._seen[at[hit]] = 1
        return hit, keys, emails, fps, np.where(fresh, at, -1)

    def _whole(self, lines: list[bytes]) -> Any:
        """Which lines have the header's width (any other is rejected by the parser)."""
        np = self._np
        counts = np.fromiter(map(bytes.count, lines, repeat(self._delimiter)), dtype=np.int64, count=len(lines))
        return counts == self._width - 1

    def _fingerprints(self, lines: list[bytes]) -> Any:
        """source_fingerprint of each line's values (lines of the header's width): joined with SEPARATOR,
        which a plain line holds none of. Mapped columns that sit side by side in the file, in the mapping's
        order, are one slice of the line with its delimiters made separators: no split into values."""
        np, delimiter = self._np, self._delimiter
        if self._span is not None:
            before, after = self._span
            values: Iterator[bytes] = iter(lines)
            if before:
                values = map(itemgetter(-1), map(bytes.split, values, repeat(delimiter), repeat(before)))
            if after:
                values = map(itemgetter(0), map(bytes.rsplit, values, repeat(delimiter), repeat(after)))
            values = map(bytes.translate, values, repeat(self._to_separator))
        else:
            fields = map(bytes.split, lines, repeat(delimiter))
            values = map(SEPARATOR.join, map(self._picked, fields)) if self._several else map(self._picked, fields)
        digests = np.fromiter(map(xxh3, values, repeat(self.seed)), dtype=np.uint64, count=len(lines))
        return (digests ^ self._flip).view(np.int64)


_MISS, _SAME_VALUES, _SAME_LINE = 0, 1, 2
