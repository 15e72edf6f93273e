"""The snapshot's line hashes: for each entry, a digest of the very line of the segment file it was made from.

A daily refresh's file is mostly the lines of the last one, byte for byte. Digesting a whole line is one C
call; splitting it into values, picking the email, lower-casing it and digesting values and email (what a
fingerprint look-up needs) is seven. So the index beside the snapshot keeps each entry's line hash
(shared.state.keys.line_seed: under the fingerprints' seed and the file's header, so another mapping, reader
option or column order matches no line), and a line whose hash is an entry's is that entry, unchanged
(shared.pipeline.known_lines). 0 means "no line known" (a row the csv parser read, or an older index).

Held by entry as loaded (an `array`, no numpy needed). For a refresh's look-up they are written by entry to a
local file, then their high bits, with each entry's number in the low bits, sorted in place (one sort gives
order and permutation alike), beside each entry's low 32 bits (4 bytes an entry, to check a hit) and a table
of bucket starts. Once the files are read, the look-up's arrays go (`release`: ~13 MB at a million, before the
sending and the merge, the run's peak), and the next index reads the hashes by entry from the file. Rows whose
line changed but not their contact (an unmapped column) get their new hash, so the next refresh recognises
them by their line as well.
"""

from __future__ import annotations

import os
import tempfile
from array import array
from typing import IO, Any


class LineHashes:
    """One hash per snapshot entry (signed 64-bit, as the index stores them); 0 for none."""

    def __init__(self, by_entry: array[int] | None, count: int = 0) -> None:
        """`by_entry` as loaded; None for `count` entries without line hashes (kept as a sparse local file
        of zeros, not 8 MB of memory a million entries, as is a loaded array holding nothing but 0)."""
        self._values = by_entry if by_entry is not None else array("q")
        self._known = by_entry is not None and any(by_entry)  # (stops at the first hash: no 1M-entry count)
        self._sorted = False  # sorted in place for look-ups (the hashes by entry are in _saved)
        self._saved: IO[bytes] | None = None  # the hashes by entry, written before sorting
        self._released = False  # the hashes by entry are read from _saved (and updates written to it)
        self._unwritten: list[tuple[Any, Any]] = []  # updates not yet in _saved
        self._pending = 0
        if by_entry is None or not self.known():
            self._saved = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
            self._saved.truncate(8 * (count if by_entry is None else len(by_entry)))
            self._values, self._sorted, self._released = array("q"), True, True
        self._low32: Any = None  # each entry's hash's low 32 bits, to check a hit
        self._bits: Any = None  # the sorted values' low bits that hold an entry's number, and their mask
        self._mask: Any = None
        self._starts: Any = None  # where each bucket of equal top bits starts among the sorted values
        self._shift: Any = None
        self.changed = False  # some entry has a new line hash: the index is worth storing again

    def known(self) -> bool:
        """Whether any entry has a line hash (none: an index without them, or rows the parser read)."""
        return self._known

    def find(self, hashes: Any) -> tuple[Any, Any]:
        """(which of these hashes are an entry's, the entry of each found) for a numpy int64 array of them.

        A sorted search over a million hashes misses the cache at every step; the hashes are uniform, so a
        table of where each run of equal top bits starts (1 MB at a million) leaves a few entries to search,
        in one cache line: ~0.1 s less a million lines. The sorted values are the hashes' high bits with the
        entry's number in their low bits (see _lookup): a hit there is checked against the entry's low 32 bits.
        """
        import numpy  # noqa: PLC0415 - only a refresh that looks lines up pays for numpy

        values, low32, starts, shift = self._lookup()
        bits, last = self._bits, len(values) - 1
        wanted = hashes.view(numpy.uint64)
        high_bits = wanted >> bits
        target = high_bits << bits  # the least sorted value with these high bits
        bucket = (wanted >> shift).astype(numpy.int64)
        low, high = starts[bucket].astype(numpy.int64), starts[bucket + 1].astype(numpy.int64)
        while True:  # a binary search in each needle's bucket, all needles at once
            going = low < high
            if not going.any():
                break
            middle = (low + high) >> 1
            less = going & (values[numpy.minimum(middle, last)] < target)
            low = numpy.where(less, middle + 1, low)
            high = numpy.where(going & ~less, middle, high)
        at = numpy.minimum(low, last)
        landed = values[at]
        entries = (landed & self._mask).astype(numpy.int64)
        same_high = (landed >> bits) == high_bits
        candidate = same_high & (hashes != 0)
        found = candidate & (low32[entries] == wanted.astype(numpy.uint32))
        # Entries whose hashes share their high bits sort together (by entry): the one wanted may come later.
        rest = numpy.flatnonzero(candidate & ~found)
        while len(rest):
            at[rest] += 1
            rest = rest[at[rest] <= last]
            rest = rest[(values[at[rest]] >> bits) == high_bits[rest]]
            entries[rest] = (values[at[rest]] & self._mask).astype(numpy.int64)
            hit = low32[entries[rest]] == wanted[rest].astype(numpy.uint32)
            found[rest[hit]] = True
            rest = rest[~hit]
        return found, entries[found]

    def _lookup(self) -> tuple[Any, Any, Any, Any]:
        """The look-up, made once: each hash's high bits with its entry's number in the low bits, sorted in
        place (one sort, no argsort: ~0.12 s less a million entries), the low 32 bits of each entry's hash to
        check a hit, and the bucket table. As much memory as sorted hashes and a permutation."""
        import numpy  # noqa: PLC0415

        assert not self._released, "the look-up is over once released"
        values = numpy.frombuffer(self._values, dtype=numpy.uint64)
        if not self._sorted:
            self._saved = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
            self._values.tofile(self._saved)
            self._saved.flush()
            count = len(values)
            entry_bits = max(1, (count - 1).bit_length())
            assert entry_bits <= 32, "the low 32 bits check a hit: at most 4 billion entries"
            self._bits, self._mask = numpy.uint64(entry_bits), numpy.uint64((1 << entry_bits) - 1)
            self._low32 = values.astype(numpy.uint32)  # (the low 32 bits)
            values >>= self._bits
            values <<= self._bits
            for start in range(0, count, _WINDOW):  # the entries' numbers, a window at a time (no 8 MB range)
                values[start:start + _WINDOW] |= numpy.arange(start, min(count, start + _WINDOW), dtype=numpy.uint64)
            values.sort()
            bits = min(_TABLE_BITS_MAX, max(1, count.bit_length() - 2))  # ~4 entries a bucket
            self._shift = numpy.uint64(64 - bits)
            # Each bucket's start is where its least value would sort: no shifted copy of all the values to
            # search (8 MB a million entries, at the read's peak), and 4 bytes a bucket.
            starts = numpy.empty((1 << bits) + 1, dtype=numpy.uint32 if count < 1 << 32 else numpy.int64)
            starts[:-1] = numpy.searchsorted(values, numpy.arange(1 << bits, dtype=numpy.uint64) << self._shift)
            starts[-1] = count
            self._starts = starts
            self._sorted = True
        return values, self._low32, self._starts, self._shift

    def release(self) -> None:
        """The reads are over: the look-up's arrays go; the updates found meanwhile go to the saved file."""
        if not self._sorted or self._released:
            return
        self._released = True
        self._low32 = self._starts = None
        self._values = array("q")
        self._flush()

    def close(self) -> None:
        if self._saved is not None:
            self._saved.close()
            self._saved = None

    def update(self, entries: Any, hashes: Any) -> None:
        """New line hashes of these entries (sequences or numpy arrays), as the next index should hold them."""
        import numpy  # noqa: PLC0415

        entries, hashes = numpy.array(entries, dtype=numpy.int64), numpy.array(hashes, dtype=numpy.int64)
        if not len(entries):
            return
        self.changed = True
        self._known = self._known or bool(hashes.any())
        if self._sorted:  # into the file by entry, a batch at a time: each write maps it and touches its pages
            self._unwritten.append((entries, hashes))
            self._pending += len(entries)
            if self._pending >= _UNWRITTEN_MAX:
                self._flush()
        else:
            numpy.frombuffer(self._values, dtype=numpy.int64)[entries] = hashes

    def _flush(self) -> None:
        for entries, hashes in self._unwritten:
            self._write(entries, hashes)
        self._unwritten.clear()
        self._pending = 0

    def _write(self, entries: Any, hashes: Any) -> None:
        """Into the saved file, a window of it at a time (read, patched, written back): a mapping of the whole
        file would bring all of its pages into this process at once (8 MB a million, at the run's peak)."""
        import numpy  # noqa: PLC0415

        assert self._saved is not None
        order = numpy.argsort(entries, kind="stable")
        entries, hashes = entries[order], hashes[order]
        fd, start = self._saved.fileno(), 0
        while start < len(entries):
            window = int(entries[start]) // _WINDOW * _WINDOW
            end = int(numpy.searchsorted(entries, window + _WINDOW))
            data = bytearray(_pread(self._saved, 8 * _WINDOW, 8 * window))
            numpy.frombuffer(data, dtype=numpy.int64)[entries[start:end] - window] = hashes[start:end]
            if hasattr(os, "pwrite"):
                os.pwrite(fd, data, 8 * window)
            else:  # (Windows)
                self._saved.seek(8 * window)
                self._saved.write(data)
                self._saved.flush()
            start = end

    def run(self, position: int, count: int) -> array[int]:
        """The hashes of entries position..position+count-1, in entry order."""
        if not self._sorted:
            return self._values[position:position + count]
        self.release()
        self._flush()
        assert self._saved is not None
        data = _pread(self._saved, 8 * count, 8 * position)
        values = array("q")
        values.frombytes(data)
        return values


_WINDOW = 1 << 17  # entries of the saved file patched at a time (1 MB)
_UNWRITTEN_MAX = 1 << 16  # updates gathered before they are written to the file (1 MB)
_TABLE_BITS_MAX = 22  # the bucket table: 4 bytes a bucket (16 MB at most, from 16 million entries on)


def _pread(file: IO[bytes], size: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        data = b""
        while len(data) < size:
            more = os.pread(file.fileno(), size - len(data), offset + len(data))
            if not more:
                break
            data += more
        return data
    file.seek(offset)  # no os.pread (Windows)
    return file.read(size)
