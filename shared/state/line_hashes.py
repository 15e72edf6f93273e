"""The snapshot's line hashes: for each entry, a digest of the very line of the segment file it was made from.

A daily refresh's file is mostly the lines of the last one, byte for byte. Digesting a whole line is one C
call; splitting it into values, picking the email, lower-casing it and digesting values and email (what a
fingerprint look-up needs) is seven. So the index beside the snapshot keeps each entry's line hash
(shared.state.keys.line_seed: under the fingerprints' seed and the file's header, so another mapping, reader
option or column order matches no line), and a line whose hash is an entry's is that entry, unchanged
(shared.pipeline.known_lines). 0 means "no line known" (a row the csv parser read, or an older index).

Held by entry as loaded (an `array`, no numpy needed). For a refresh's look-up they are sorted in place once,
with the permutation to their entries (4 bytes an entry, not a second copy); the next index wants them by
entry again, which the inverse permutation (taking the permutation's place) gives a block at a time. Rows
whose line changed but not their contact (an unmapped column) get their new hash, so the next refresh
recognises them by their line as well.
"""

from __future__ import annotations

from array import array
from typing import Any


class LineHashes:
    """One hash per snapshot entry (signed 64-bit, as the index stores them); 0 for none."""

    def __init__(self, by_entry: array[int]) -> None:
        self._values = by_entry
        self._sorted = False  # sorted in place for look-ups (then read by entry through the inverse)
        self._perm: Any = None  # sorted position -> entry, while look-ups go on
        self._starts: Any = None  # where each bucket of equal top bits starts among the sorted hashes
        self._shift: Any = None
        self._inverse: Any = None  # entry -> sorted position, once the next index is written
        self._values_np: Any = None
        self._block = array("q")  # the hashes of entries _block_start.. in entry order, gathered
        self._block_start = 0
        self._updates: list[tuple[Any, Any]] = []  # (entries, new hashes) found while sorted
        self.changed = False  # some entry has a new line hash: the index is worth storing again

    def __len__(self) -> int:
        return len(self._values)

    def known(self) -> bool:
        """Whether any entry has a line hash (none: an index without them, or rows the parser read)."""
        return self._values.count(0) < len(self._values)

    def find(self, hashes: Any) -> tuple[Any, Any]:
        """(which of these hashes are an entry's, the entry of each found) for a numpy int64 array of them.

        A sorted search over a million hashes misses the cache at every step; the hashes are uniform, so a
        table of where each run of equal top bits starts (1 MB at a million) leaves a few entries to search,
        in one cache line: ~0.1 s less a million lines.
        """
        import numpy  # noqa: PLC0415 - only a refresh that looks lines up pays for numpy

        values, perm, starts, shift = self._lookup()
        last = len(values) - 1
        low = starts[_top(hashes, shift)].astype(numpy.int64)
        high = starts[_top(hashes, shift) + 1].astype(numpy.int64)
        while True:  # a binary search in each needle's bucket, all needles at once
            going = low < high
            if not going.any():
                break
            middle = (low + high) >> 1
            less = going & (values[numpy.minimum(middle, last)] < hashes)
            low = numpy.where(less, middle + 1, low)
            high = numpy.where(going & ~less, middle, high)
        at = numpy.minimum(low, last)
        found = (values[at] == hashes) & (hashes != 0)
        return found, perm[at[found]].astype(numpy.int64)

    def _lookup(self) -> tuple[Any, Any, Any, Any]:
        """The hashes sorted in place with the entry of each, and the bucket table: made once."""
        import numpy  # noqa: PLC0415

        assert self._inverse is None, "look-ups are over once the next index is being written"
        values = numpy.frombuffer(self._values, dtype=numpy.int64)
        if not self._sorted:
            order = numpy.argsort(values, kind="stable")
            self._perm = order.astype(numpy.uint32 if len(values) < 1 << 32 else numpy.int64)
            values[:] = values[order]  # one gather, not a second sort
            del order
            bits = min(_TABLE_BITS_MAX, max(1, len(values).bit_length() - 2))  # ~4 entries a bucket
            self._shift = numpy.uint64(64 - bits)
            self._starts = numpy.searchsorted(_top(values, self._shift), numpy.arange((1 << bits) + 1))
            self._sorted = True
        return values, self._perm, self._starts, self._shift

    def update(self, entries: Any, hashes: Any) -> None:
        """New line hashes of these entries (sequences or numpy arrays), as the next index should hold them."""
        import numpy  # noqa: PLC0415

        entries, hashes = numpy.array(entries, dtype=numpy.int64), numpy.array(hashes, dtype=numpy.int64)
        if not len(entries):
            return
        self.changed = True
        if self._inverse is not None:
            self._values_np[self._inverse[entries]] = hashes
        elif self._sorted:  # applied once the look-ups are over
            self._updates.append((entries, hashes))
        else:
            numpy.frombuffer(self._values, dtype=numpy.int64)[entries] = hashes

    def run(self, position: int, count: int) -> array[int]:
        """The hashes of entries position..position+count-1, in entry order (asked in ascending runs)."""
        if not self._sorted:
            return self._values[position:position + count]
        if self._inverse is None:
            self._invert()
        end = position + count
        if not self._block_start <= position <= end <= self._block_start + len(self._block):
            self._block_start = position  # the next _BLOCK entries, gathered at once: runs are short
            self._block = array("q")
            gathered = self._values_np[self._inverse[position:max(end, position + _BLOCK)]]
            self._block.frombytes(memoryview(gathered).cast("B"))
        return self._block[position - self._block_start:end - self._block_start]

    def _invert(self) -> None:
        """entry -> sorted position, in the permutation's place (no second array of the hashes: 8 MB at a
        million, at the run's peak), with the updates found while sorted applied."""
        import numpy  # noqa: PLC0415

        perm, self._perm = self._perm, None
        inverse = numpy.empty_like(perm)
        for start in range(0, len(perm), _BLOCK):
            part = perm[start:start + _BLOCK]
            inverse[part] = numpy.arange(start, start + len(part), dtype=perm.dtype)
        del perm
        self._inverse = inverse
        self._values_np = numpy.frombuffer(self._values, dtype=numpy.int64)
        for entries, hashes in self._updates:
            self._values_np[inverse[entries]] = hashes
        self._updates.clear()


_BLOCK = 1 << 16  # entries gathered or inverted at a time
_TABLE_BITS_MAX = 22  # the bucket table: 4 bytes a bucket (16 MB at most, from 16 million entries on)


def _top(hashes: Any, shift: Any) -> Any:
    """The top bits of signed hashes, in their order (the sign bit flipped), as bucket numbers."""
    import numpy  # noqa: PLC0415

    return ((hashes.view(numpy.uint64) ^ numpy.uint64(1 << 63)) >> shift).astype(numpy.int64)
