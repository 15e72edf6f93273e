"""The merge of a snapshot with a run's new lines, a key bucket at a time, in arrays.

The new lines are bucketed by the top 7 bits of their key on local disk (SortedLines); each bucket is the
range of the old snapshot's entries between two keys, so the new snapshot is written bucket by bucket: the
bucket's old entries less the dropped ones, with its new ones inserted where their keys fall. Consecutive
buckets are merged together up to _GROUP entries: a bucket's numpy calls cost the same for 80 entries as for
8,000, and 128 of them were ~20 ms of every small run. Positions,
insertions and runs are found in numpy, and a run of unchanged lines is one slice of the old text: per-line
Python work only for the lines that changed (a Python loop over every run cost ~0.7 s at a million contacts).
"""

from __future__ import annotations

import itertools
import tempfile
from array import array
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

from azure.core.exceptions import ResourceModifiedError

from shared.state.snapshot_lines import DigestWriter, entry_email

if TYPE_CHECKING:
    from shared.state.snapshot_entries import Snapshot
    from shared.state.snapshot_index import IndexWriter

# (keys, fingerprints, line hashes) as numpy int64 arrays, and the UTF-8 emails: a block of confirmed contacts
EntryBlock = tuple[Any, Any, Any, list[bytes]]

_BUCKETS = 128  # key buckets: a 128th of a million lines (~0.5 MB) in memory at a time
_SHIFT = 57
_FLUSH = 256  # lines a bucket gathers before they are written (all buckets' ~2 MB)
_GROUP = 8192  # entries (old and new) of the buckets merged at once, unless one bucket has more


class SortedLines:
    """New snapshot lines (emails), given in any order, read back a key bucket at a time, sorted by key: each
    bucket's lines in one local file, its (key, fingerprint, line hash) triples in another, so nothing is
    parsed back."""

    def __init__(self) -> None:
        # made when a bucket first outgrows _FLUSH lines (a daily refresh's few thousand need none)
        self._texts: list[IO[bytes] | None] = [None] * _BUCKETS
        self._entries: list[IO[bytes] | None] = [None] * _BUCKETS
        self._pending: list[list[bytes]] = [[] for _ in range(_BUCKETS)]  # emails, without their newline
        self._pending_entries = [array("q") for _ in range(_BUCKETS)]
        self.counts = [0] * _BUCKETS  # entries added to each bucket

    def add_block(self, keys: Any, fps: Any, hashes: Any, emails: list[bytes]) -> None:
        """Many entries at once (numpy arrays and their emails), bucketed in C-level maps."""
        import numpy  # noqa: PLC0415

        buckets = ((keys.view(numpy.uint64) ^ numpy.uint64(1 << 63)) >> numpy.uint64(_SHIFT)).astype(numpy.int64)
        order = numpy.argsort(buckets, kind="stable")
        triples = numpy.stack((keys, fps, hashes), axis=1)[order].astype("<i8")
        ordered = buckets[order]
        cuts = [0, *(numpy.flatnonzero(ordered[1:] != ordered[:-1]) + 1).tolist(), len(ordered)]
        positions = order.tolist()
        for start, end in itertools.pairwise(cuts):
            bucket = int(ordered[start])
            self.counts[bucket] += end - start
            self._pending_entries[bucket].frombytes(triples[start:end].tobytes())
            pending = self._pending[bucket]
            pending.extend(map(emails.__getitem__, positions[start:end]))
            if len(pending) >= _FLUSH:
                self._flush(bucket)

    def _flush(self, bucket: int) -> None:
        text, entries = self._texts[bucket], self._entries[bucket]
        if text is None or entries is None:
            text = self._texts[bucket] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__
            entries = self._entries[bucket] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__
        text.write(b"\n".join(self._pending[bucket]) + b"\n")
        self._pending[bucket].clear()
        entries.write(_little(self._pending_entries[bucket]))
        self._pending_entries[bucket] = array("q")

    def _bucket(self, bucket: int) -> tuple[bytes, bytes]:
        """A bucket's text and packed entries, as added; its files go."""
        text, entries = self._texts[bucket], self._entries[bucket]
        lines = self._pending[bucket]
        pending, pending_entries = b"\n".join(lines) + b"\n" if lines else b"", _little(self._pending_entries[bucket])
        self._pending[bucket], self._pending_entries[bucket] = [], array("q")
        if text is None or entries is None:
            return pending, pending_entries
        self._texts[bucket] = self._entries[bucket] = None
        with text, entries:
            text.seek(0)
            entries.seek(0)
            return text.read() + pending, entries.read() + pending_entries

    def sorted_range(self, low: int, high: int) -> tuple[Any, Any, Any, bytes, Any]:
        """Buckets low..high-1 together: their keys, fingerprints and line hashes (numpy) and their text, all
        in key order, with where each line starts (and, last, the text's end)."""
        import numpy  # noqa: PLC0415

        parts = [self._bucket(bucket) for bucket in range(low, high)]
        text, packed = b"".join(part[0] for part in parts), b"".join(part[1] for part in parts)
        del parts
        triples = numpy.frombuffer(packed, dtype="<i8").reshape(-1, 3)
        if not len(triples):
            empty = numpy.empty(0, dtype=numpy.int64)
            return empty, empty, empty, b"", numpy.zeros(1, dtype=numpy.int64)
        order = numpy.argsort(triples[:, 0], kind="stable")
        triples = triples[order]
        lines = text[:-1].split(b"\n")
        del text
        text = b"\n".join(map(lines.__getitem__, order.tolist())) + b"\n"  # C-level: no per-line Python
        del lines
        return (triples[:, 0].astype(numpy.int64), triples[:, 1].astype(numpy.int64),
                triples[:, 2].astype(numpy.int64), text, _line_starts(text))

    def __enter__(self) -> SortedLines:
        return self

    def __exit__(self, *_: object) -> None:
        for file in (*self._texts, *self._entries):
            if file is not None:
                file.close()


def merge(new: SortedLines, old: Snapshot | None, old_chunks: Iterator[bytes], drops: list[int],
          carried_fp: int | None, writer: DigestWriter, index: IndexWriter, old_fields: bool = False) -> None:
    """The new snapshot into `writer` and `index`: `old`'s entries (their lines from `old_chunks`: the stored
    text, header line first, cut anywhere), less the sorted `drops`, with `new`'s; with `carried_fp` (an
    untrusted snapshot) the old entries take that fingerprint and lose their line hashes, so neither can match
    next time. `old_fields`: the stored text is v3 (`<key> <fingerprint> <email>` lines), rewritten as emails."""
    import numpy  # noqa: PLC0415

    count = len(old) if old is not None else 0
    old_keys = numpy.frombuffer(old.keys, dtype=numpy.int64) if old is not None and count else numpy.empty(0, "i8")
    old_fps = numpy.frombuffer(old.fingerprints, dtype=numpy.int64) if old is not None and count else old_keys
    lows = numpy.array([(bucket << _SHIFT) - (1 << 63) for bucket in range(_BUCKETS)], dtype=numpy.int64)
    bounds = [*numpy.searchsorted(old_keys, lows).tolist(), count]
    dropped = numpy.array(drops, dtype=numpy.int64)
    text = _OldText(old_chunks, old_fields)
    for lowest, past in _groups([bounds[b + 1] - bounds[b] for b in range(_BUCKETS)], new.counts):
        keys, fps, hashes, new_text, new_starts = new.sorted_range(lowest, past)
        first, end = bounds[lowest], bounds[past]
        low, high = numpy.searchsorted(dropped, [first, end]).tolist()
        kept = numpy.delete(numpy.arange(end - first), dropped[low:high] - first)  # relative to `first`
        old_text, old_starts = text.take(end - first)
        kept_keys = old_keys[first:end][kept]
        if carried_fp is None:
            kept_fps = old_fps[first:end][kept]
            assert old is not None or not len(kept)
            kept_hashes = numpy.frombuffer(old.lines.run(first, end - first), dtype=numpy.int64)[kept] if (
                old is not None and len(kept)) else numpy.empty(0, dtype=numpy.int64)
        else:
            kept_fps = numpy.full(len(kept), carried_fp, dtype=numpy.int64)
            kept_hashes = numpy.zeros(len(kept), dtype=numpy.int64)
        at = numpy.searchsorted(kept_keys, keys)
        index.add_arrays(numpy.insert(kept_keys, at, keys), numpy.insert(kept_fps, at, fps),
                         numpy.insert(kept_hashes, at, hashes))
        source = numpy.insert(kept, at, -1)  # each line of the bucket: its old line, or -1 for a new one
        if len(source):
            writer.write_block(_joined(source, old_text, old_starts, new_text, new_starts), len(source))


def _groups(old_sizes: list[int], new_sizes: list[int]) -> list[tuple[int, int]]:
    """Runs of consecutive buckets (low, high) of at most _GROUP entries, old and new, or one bucket."""
    groups: list[tuple[int, int]] = []
    low, size = 0, 0
    for bucket, (old, new) in enumerate(zip(old_sizes, new_sizes, strict=True)):
        if bucket > low and size + old + new > _GROUP:
            groups.append((low, bucket))
            low, size = bucket, 0
        size += old + new
    groups.append((low, len(old_sizes)))
    return groups


def _joined(source: Any, old_text: bytes | memoryview, old_starts: Any, new_text: bytes, new_starts: Any) -> bytes:
    """A bucket's lines as bytes: each run of consecutive old lines one slice, as each run of new ones."""
    import numpy  # noqa: PLC0415

    fresh = source < 0
    cut = numpy.ones(len(source), dtype=bool)
    cut[1:] = (fresh[1:] != fresh[:-1]) | (~fresh[1:] & (source[1:] != source[:-1] + 1))
    run_starts = numpy.flatnonzero(cut)
    run_ends = numpy.append(run_starts[1:], len(source))
    new_runs = fresh[run_starts]
    old_from = old_starts[numpy.where(new_runs, 0, source[run_starts])].tolist()
    old_to = old_starts[numpy.where(new_runs, 0, source[run_ends - 1] + 1)].tolist()
    before = numpy.cumsum(fresh) - fresh  # the new lines before each line
    new_from = new_starts[before[run_starts]].tolist()
    new_to = new_starts[before[run_ends - 1] + fresh[run_ends - 1]].tolist()
    view = memoryview(new_text)
    return b"".join([view[new_from[run]:new_to[run]] if is_new else old_text[old_from[run]:old_to[run]]
                     for run, is_new in enumerate(new_runs.tolist())])


class _OldText:
    """The old snapshot's lines in order, from the stored text's chunks as read (its header line skipped), taken
    a bucket's count at a time with where each starts: a chunk is joined to the rest of the last one, once."""

    def __init__(self, chunks: Iterator[bytes], fields: bool) -> None:
        self._chunks = chunks
        self._data = b""  # lines, each ended by b"\n", and the start of the next one (cut by a chunk)
        self._starts: Any = _zero()  # where each whole line starts, then the rest
        self._at = 0  # the first line not taken yet
        self._header = True  # the text's first line, not an entry's
        self._ended = False  # the chunks are over (the last line was given its newline)
        self._fields = fields  # v3 lines: `<key> <fingerprint> <email>`, given as the email alone

    def take(self, count: int) -> tuple[bytes | memoryview, Any]:
        """The next `count` lines (each with its b"\n") and their `count` + 1 starts (the last: their end)."""

        if not count:
            return b"", _zero()
        while len(self._starts) - 1 - self._at < count:
            self._more()
        first, end = int(self._starts[self._at]), int(self._starts[self._at + count])
        starts = self._starts[self._at:self._at + count + 1] - first
        self._at += count
        data: bytes | memoryview = memoryview(self._data)[first:end]
        if self._fields:  # a v3 text, once: its lines as v4 writes them
            data = b"\n".join([entry_email(line, True) for line in bytes(data[:-1]).split(b"\n")]) + b"\n"
            starts = _line_starts(data)
        return data, starts

    def _more(self) -> None:
        rest = memoryview(self._data)[self._starts[self._at]:]
        chunk = next(self._chunks, None)
        if chunk is None:
            if not rest.nbytes or self._ended:  # (ended: not one more empty line for each take past the end)
                raise ResourceModifiedError("the stored snapshot has fewer lines than it had when loaded")
            chunk, self._ended = b"\n", True  # the last line, without its newline
        self._data = b"".join([rest, chunk])
        del rest, chunk
        if self._header:
            end = self._data.find(b"\n")
            if end < 0:
                self._starts, self._at = _zero(), 0
                return
            self._data, self._header = self._data[end + 1:], False
        self._starts, self._at = _line_starts(self._data), 0


def _zero() -> Any:
    import numpy  # noqa: PLC0415

    return numpy.zeros(1, dtype=numpy.int64)


def _line_starts(text: bytes) -> Any:
    """Where each whole line of `text` (ended by b"\\n") starts, and, last, where the rest after them starts."""
    import numpy  # noqa: PLC0415

    ends = numpy.flatnonzero(numpy.frombuffer(text, dtype=numpy.uint8) == 10)
    return numpy.concatenate((numpy.zeros(1, dtype=ends.dtype), ends + 1))


def _little(values: array[int]) -> bytes:
    import sys  # noqa: PLC0415

    if sys.byteorder == "little":
        return values.tobytes()
    swapped = array("q", values)
    swapped.byteswap()
    return swapped.tobytes()
