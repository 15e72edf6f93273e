"""Which email keys of a spool occur more than once: the candidates for "last row wins".

Most files repeat nobody, so the answer is usually "none", and it must come cheaply at a million keys.
"""

from __future__ import annotations

import itertools
from array import array

_SMALL = 100_000  # up to here one sort of the keys costs less than bucketing them
_TINY = 2_000  # up to here a set needs no numpy (a run of a few rows); past it numpy's sort beats the set


def repeated_keys(keys: array[int]) -> set[int]:
    """Keys that occur more than once.

    Sorting is the cheap way to find them, but sorted() of a million keys is a transient list of a
    million int objects (~40 MB), and a sorted copy 8 MB at the run's peak. So the keys are split by their
    top 4 bits and each sixteenth sorted apart (numpy: ~0.05 s at a million, a Python loop ~0.25 s).
    """
    if len(keys) <= _TINY:
        return _repeated(keys)
    import numpy  # noqa: PLC0415 - a spool of more than a few rows (a run with a snapshot has it already)

    if len(keys) <= _SMALL:  # one sort: ~4 ms at 100,000 keys, where a set of them took ~8 ms
        ordered = numpy.sort(numpy.frombuffer(keys, dtype=numpy.int64))
        return set(ordered[1:][ordered[1:] == ordered[:-1]].tolist())

    values = numpy.frombuffer(keys, dtype=numpy.int64)
    top = numpy.empty(len(values), dtype=numpy.uint8)
    for start in range(0, len(values), _SMALL):
        top[start:start + _SMALL] = values[start:start + _SMALL].view(numpy.uint64) >> numpy.uint64(60)
    repeated: set[int] = set()
    for bucket in range(16):
        part = numpy.sort(values[top == bucket])
        repeated.update(part[1:][part[1:] == part[:-1]].tolist())
    return repeated


def _repeated(keys: array[int]) -> set[int]:
    """Keys that occur more than once; a set answers "none" (the usual case) in a quarter of a sort's time."""
    if len(set(keys)) == len(keys):
        return set()
    ordered = sorted(keys)
    return {a for a, b in itertools.pairwise(ordered) if a == b}
