"""The snapshot merge (shared.state.snapshot_merge) against a plain model of it: the old entries less the dropped,
with the new ones, by key, in the text and the index alike, whatever the blocks' size and the keys' spread."""

from __future__ import annotations

import random
import tempfile
from array import array

import numpy
import pytest

from shared.state import snapshot_merge
from shared.state.line_hashes import LineHashes
from shared.state.snapshot_entries import Snapshot
from shared.state.snapshot_index import IndexWriter
from shared.state.snapshot_lines import DigestWriter
from shared.state.snapshot_merge import SortedLines, _groups, _OldText, merge


def _key(rng: random.Random, spread: str) -> int:
    if spread == "one bucket":  # every key in the same top-bits bucket
        return (rng.getrandbits(50) << 4) - (1 << 60)
    return rng.getrandbits(64) - (1 << 63)


def _case(rng: random.Random, old_count: int, drop_share: float, new_count: int, spread: str,
          hashed: bool) -> tuple[list[tuple[int, int, int, bytes]], list[int], list[tuple[int, int, int, bytes]]]:
    keys = sorted({_key(rng, spread) for _ in range(old_count)})
    old = [(key, rng.getrandbits(63), rng.getrandbits(63) if hashed else 0, b"old.%d@example.com" % i)
           for i, key in enumerate(keys)]
    drops = sorted(rng.sample(range(len(old)), int(len(old) * drop_share)))
    dropped = {old[at][0] for at in drops}
    kept = {key for key, *_ in old} - dropped
    fresh: list[tuple[int, int, int, bytes]] = []
    while len(fresh) < new_count:
        # a changed entry (its old one dropped) or a new key; never a kept key (the caller drops replaced ones)
        key = rng.choice(sorted(dropped)) if dropped and rng.random() < 0.5 else _key(rng, spread)
        if key in kept or key in {entry[0] for entry in fresh}:
            continue
        fresh.append((key, rng.getrandbits(63), rng.getrandbits(63), b"new.%d@example.com" % len(fresh)))
    return old, drops, fresh


def _run(old: list[tuple[int, int, int, bytes]], drops: list[int], fresh: list[tuple[int, int, int, bytes]],
         carried: int | None, fields: bool = False) -> tuple[bytes, list[tuple[int, int, int]], int]:
    # the stored text: v4 (emails) or v3 (`<key> <fingerprint> <email>`, rewritten as emails by the merge)
    text = b"".join(b"%d %d %s\n" % (key, fp, email) if fields else email + b"\n" for key, fp, _, email in old)
    snapshot = Snapshot({}, array("q", [e[0] for e in old]), array("q", [e[1] for e in old]),
                        lines=LineHashes(array("q", [e[2] for e in old]), len(old))) if old else None
    stored = b'{"format": "a header longer than a chunk, ' + b"x" * 900 + b'"}\n' + text
    chunks = iter([stored[i:i + 777] for i in range(0, len(stored), 777)])  # cut anywhere, mid-line too
    with SortedLines() as new, tempfile.TemporaryFile() as out:
        backwards = fresh[::-1]  # any order, in blocks of any size
        for start in range(0, len(backwards), 1000):
            part = backwards[start:start + 1000]
            new.add_block(numpy.array([e[0] for e in part], dtype=numpy.int64),
                          numpy.array([e[1] for e in part], dtype=numpy.int64),
                          numpy.array([e[2] for e in part], dtype=numpy.int64), [e[3] for e in part])
        writer, index = DigestWriter(out), IndexWriter()
        try:
            merge(new, snapshot, chunks, drops, carried, writer, index, fields)
            writer.flush()
            index.flush()
            out.seek(0)
            files = index._files
            parts = []
            for file in files:
                file.seek(0)
                part = array("q")
                part.frombytes(file.read())
                parts.append(part)
            entries = list(zip(*parts, strict=True))
            count = index.count
        finally:
            index.close()
        return out.read(), entries, count


def _model(old: list[tuple[int, int, int, bytes]], drops: list[int], fresh: list[tuple[int, int, int, bytes]],
           carried: int | None) -> tuple[bytes, list[tuple[int, int, int]]]:
    dropped = set(drops)
    kept = [(key, carried if carried is not None else fp, 0 if carried is not None else line_hash, email)
            for at, (key, fp, line_hash, email) in enumerate(old) if at not in dropped]
    merged = sorted(kept + fresh)
    text = b"".join(email + b"\n" for _, _, _, email in merged)
    return text, [(key, fp, line_hash) for key, fp, line_hash, _ in merged]


@pytest.mark.parametrize("group", [1, 40, 8192])  # buckets merged one at a time, a few together, all at once
@pytest.mark.parametrize("spread", ["uniform", "one bucket"])
@pytest.mark.parametrize(("old_count", "drop_share", "new_count"), [
    (0, 0.0, 0), (0, 0.0, 1), (0, 0.0, 3000), (1, 0.0, 0), (1, 1.0, 0), (1, 1.0, 1), (2000, 0.0, 0),
    (2000, 0.01, 60), (2000, 0.5, 700), (2000, 1.0, 0), (2000, 0.0, 2000), (300, 0.3, 5000),
])
def test_merge_gives_the_models_text_and_index(spread: str, old_count: int, drop_share: float,
                                               new_count: int, group: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshot_merge, "_GROUP", group)
    rng = random.Random(f"{spread}{old_count}{drop_share}{new_count}")
    old, drops, fresh = _case(rng, old_count, drop_share, new_count, spread, hashed=True)
    for carried, fields in ((None, False), (0, False), (None, True), (0, True)):
        text, entries, count = _run(old, drops, fresh, carried, fields)
        want_text, want_entries = _model(old, drops, fresh, carried)
        assert text == want_text
        assert entries == want_entries
        assert count == len(want_entries) == text.count(b"\n")


def test_a_snapshot_shorter_than_its_keys_fails_the_merge() -> None:
    from azure.core.exceptions import ResourceModifiedError

    old = [(key, 1, 0, b"a%d@example.com" % key) for key in range(-5, 5)]
    snapshot = Snapshot({}, array("q", [e[0] for e in old]), array("q", [1] * len(old)))
    blocks = iter([b"{}\na-5@example.com"])  # nine lines missing: changed since it was loaded
    with SortedLines() as new, tempfile.TemporaryFile() as out, pytest.raises(ResourceModifiedError):
        index = IndexWriter()
        try:
            merge(new, snapshot, blocks, [], None, DigestWriter(out), index)
        finally:
            index.close()


def test_buckets_are_merged_in_runs_of_at_most_the_group_size_or_one_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshot_merge, "_GROUP", 10)
    assert _groups([3, 3, 3, 3, 20, 0, 0, 1], [0, 1, 0, 0, 0, 0, 0, 0]) == [(0, 3), (3, 4), (4, 5), (5, 8)]
    assert _groups([0] * 8, [0] * 8) == [(0, 8)]


def test_a_stored_text_short_by_its_last_lines_fails_even_in_one_take() -> None:
    from azure.core.exceptions import ResourceModifiedError

    stored = b"{}\na@example.com\nb@example.com"  # two lines, no newline after the last
    assert bytes(_OldText(iter([stored]), False).take(2)[0]) == b"a@example.com\nb@example.com\n"
    for wanted in (3, 10):
        with pytest.raises(ResourceModifiedError):  # before: padded with empty lines, stored as emails
            _OldText(iter([stored]), False).take(wanted)


@pytest.mark.parametrize("numpy_from", [10**9, 1])  # the bucket starts by bisect, and by numpy
def test_a_snapshot_finds_each_of_its_keys_and_no_other(numpy_from: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.state import snapshot_entries

    monkeypatch.setattr(snapshot_entries, "_NUMPY_FROM", numpy_from)
    rng = random.Random(numpy_from)
    keys = sorted({rng.getrandbits(64) - (1 << 63) for _ in range(3000)} | {-(1 << 63), (1 << 63) - 1})
    snapshot = Snapshot({}, array("q", keys), array("q", [0] * len(keys)))
    assert [snapshot.position(key) for key in keys] == list(range(len(keys)))
    strangers = {rng.getrandbits(64) - (1 << 63) for _ in range(3000)} - set(keys)
    assert all(snapshot.position(key) == -1 for key in strangers)
