"""A loaded snapshot's entries: keys, fingerprints and line hashes by entry (in key order), and this run's marks.

The look-up by key is a bucket index over the sorted keys (a few comparisons), since the row-by-row path asks
once per row; the marks say which entries a segment of this run holds (pipeline.read marks them, plan removes
the others in mirror mode).
"""

from __future__ import annotations

import bisect
from array import array
from typing import Any

from shared.state.line_hashes import LineHashes

_INDEX_BITS_MAX = 16  # bucket index: up to 65,536 buckets, about 16 keys each
_NUMPY_FROM = 50_000  # keys from which the bucket starts are found by numpy


class Snapshot:
    def __init__(self, header: dict[str, Any], keys: array[int], fingerprints: array[int], *,
                 trusted: bool = True, etag: str | None = None, lines: LineHashes | None = None) -> None:
        self.header = header
        self.keys = keys
        self.fingerprints = fingerprints
        # Each entry's line hash, from the index (shared.state.line_hashes): all 0 when it had none.
        self.lines = lines if lines is not None else LineHashes(None, len(keys))
        # False: membership only (full re-sync, mapping changed, older format): no contact counts as unchanged.
        self.trusted = trusted
        self.etag = etag  # the stored version these arrays were read from (the merge reads its lines again)
        # 1 per entry whose person a segment of this run holds (pipeline.read marks them; plan removes the rest)
        self.seen = bytearray(len(keys))
        bits = max(0, min(_INDEX_BITS_MAX, len(keys).bit_length() - 4))
        self._shift = 64 - bits
        self._index = _bucket_starts(keys, bits, self._shift) if bits else None

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def digest(self) -> str:
        return str(self.header.get("digest", ""))

    def position(self, key: int) -> int:
        """The entry of this email key, or -1."""
        keys, index = self.keys, self._index
        if index is None:
            at = bisect.bisect_left(keys, key)
            end = len(keys)
        else:
            bucket = (key + (1 << 63)) >> self._shift
            at = bisect.bisect_left(keys, key, index[bucket], index[bucket + 1])
            end = index[bucket + 1]
        return at if at < end and keys[at] == key else -1

    def fingerprint(self, key: int) -> int | None:
        if not self.trusted:
            return None
        position = self.position(key)
        return self.fingerprints[position] if position >= 0 else None

    def mark(self, key: int) -> None:
        """This email key is in a segment this run (a row rejected for another field counts)."""
        position = self.position(key)
        if position >= 0:
            self.seen[position] = 1

    def unseen(self) -> set[int]:
        """Positions of the entries no segment of this run holds (after every row was read and marked)."""
        gone: set[int] = set()
        seen, at = self.seen, self.seen.find(0)
        while at >= 0:
            gone.add(at)
            at = seen.find(0, at + 1)
        return gone


def _bucket_starts(keys: array[int], bits: int, shift: int) -> array[int]:
    """Where each bucket of keys starts. A big snapshot's 65,536 bisects cost ~25 ms; numpy's one sorted
    search ~1 ms (a snapshot that big is a refresh's, which imports numpy for its lines anyway)."""
    lows = [(bucket << shift) - (1 << 63) for bucket in range((1 << bits) + 1)]
    if len(keys) < _NUMPY_FROM:
        return array("L", (bisect.bisect_left(keys, low) for low in lows))
    import numpy  # noqa: PLC0415

    starts = numpy.searchsorted(numpy.frombuffer(keys, dtype=numpy.int64), numpy.array(lows[:-1], dtype=numpy.int64))
    return array("L", [*starts.tolist(), len(keys)])  # the last bucket ends past every key (2**63 is no int64)
