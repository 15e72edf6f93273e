"""The snapshot's line hashes: for each entry, a digest of the very line of the segment file it was made from.

A daily refresh's file is mostly the lines of the last one, byte for byte. Digesting a whole line is one C
call; splitting it into values, picking the email, lower-casing it and digesting values and email (what a
fingerprint look-up needs) is seven. So the index beside the snapshot keeps each entry's line hash
(shared.state.keys.line_seed: under the fingerprints' seed and the file's header, so another mapping, reader
option or column order matches no line), and a line whose hash is an entry's is that entry, unchanged
(shared.pipeline.known_lines). 0 means "no line known" (a row the csv parser read, or an older index).

Held by entry as loaded (an `array`, no numpy needed). For a refresh's look-up they are sorted in place once,
with the permutation to their entries (4 bytes an entry, not a second copy); the next index wants them by
entry again, and they are put back in place when it is written. Rows whose line changed but not their contact
(an unmapped column) get their new hash, so the next refresh recognises them by their line as well.
"""

from __future__ import annotations

from array import array
from typing import Any


class LineHashes:
    """One hash per snapshot entry (signed 64-bit, as the index stores them); 0 for none."""

    def __init__(self, by_entry: array[int]) -> None:
        self._values = by_entry
        self._sorted = False  # sorted in place for look-ups (put back in entry order for the next index)
        self._perm: Any = None  # sorted position -> entry, while sorted
        self._updates: list[tuple[Any, Any]] = []  # (entries, new hashes) found while sorted
        self.changed = False  # some entry has a new line hash: the index is worth storing again

    def __len__(self) -> int:
        return len(self._values)

    def known(self) -> bool:
        """Whether any entry has a line hash (none: an index without them, or rows the parser read)."""
        return self._values.count(0) < len(self._values)

    def sorted_lookup(self) -> tuple[Any, Any]:
        """(sorted hashes, entry of each) as numpy arrays: the hashes are sorted where they are, once."""
        import numpy  # noqa: PLC0415 - only a refresh that looks lines up pays for numpy

        values = numpy.frombuffer(self._values, dtype=numpy.int64)
        if not self._sorted:
            order = numpy.argsort(values, kind="stable")
            self._perm = order.astype(numpy.uint32 if len(values) < 1 << 32 else numpy.int64)
            del order
            values.sort()
            self._sorted = True
        return values, self._perm

    def update(self, entries: Any, hashes: Any) -> None:
        """New line hashes of these entries (sequences or numpy arrays), as the next index should hold them."""
        import numpy  # noqa: PLC0415

        entries, hashes = numpy.array(entries, dtype=numpy.int64), numpy.array(hashes, dtype=numpy.int64)
        if not len(entries):
            return
        self.changed = True
        if self._sorted:  # applied once the look-ups are over
            self._updates.append((entries, hashes))
        else:
            numpy.frombuffer(self._values, dtype=numpy.int64)[entries] = hashes

    def run(self, position: int, count: int) -> array[int]:
        """The hashes of entries position..position+count-1, in entry order."""
        if self._sorted:
            self._unsort()
        return self._values[position:position + count]

    def _unsort(self) -> None:
        """Back in entry order, in place (one transient copy), with the updates found while sorted."""
        import numpy  # noqa: PLC0415

        values = numpy.frombuffer(self._values, dtype=numpy.int64)
        ordered = values.copy()
        values[self._perm] = ordered
        del ordered
        self._perm, self._sorted = None, False
        for entries, hashes in self._updates:
            values[entries] = hashes
        self._updates.clear()
