"""A refresh recognises the lines it exported before by their hash (shared.state.line_hashes).

Against Azurite and the simulator: a line seen before costs one digest and is neither split nor parsed; what
changed is still found and sent; the hashes never outlive what decided the contact (mapping, a full re-sync,
the header), an unmapped column changing gives the entries their new lines, and a duplicate of a recognised
line is merged with the real email from the snapshot.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.pipeline.known_lines import LineMatcher
from tests.test_known_lines import _counting, _people, _upload
from tests.test_sync import NAME, PUT, Env, destination, env

__all__ = ["env"]


def _compared(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Lines compared by their values (split, email digested) in each chunk: those not known by their hash."""
    sizes: list[int] = []
    match = LineMatcher._match

    def counted(self: LineMatcher, lines: list[bytes], below: int) -> Any:
        sizes.append(len(lines))
        return match(self, lines, below)

    monkeypatch.setattr(LineMatcher, "_match", counted)
    return sizes


def test_a_refresh_knows_its_exported_lines_and_splits_only_what_changed(env: Env,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = destination(mode="mirror")
    first = env.export(_upload(env, _people(60)), mirror)
    assert (first.status, first.exported) == ("succeeded", 60), first.error
    compared = _compared(monkeypatch)  # the first export mapped its lines a chunk at a time, with their hashes
    counts = _counting(monkeypatch)
    known = env.export(_upload(env, _people(60)), mirror)
    assert (known.unchanged_skipped, known.exported, known.rows_read) == (60, 0, 60) and known.balanced
    assert compared == [] and counts == {"parsed": 0, "mapped": 0}
    lines = _people(60)
    lines[7] = b"p007@example.com,Changed,gold"
    del lines[20]
    lines.append(b"new@example.com,New,gold")
    since = len(env.sim.upsert_batches)
    changed = env.export(_upload(env, lines), mirror)
    assert (changed.exported, changed.unchanged_skipped, changed.removed_from_list) == (2, 58, 1)
    assert changed.balanced and sorted(env.sent(since)) == ["new@example.com", "p007@example.com"]
    assert sum(compared) == 2 and counts["mapped"] == 2  # only the changed and the new line were split
    assert env.members()["p007@example.com"] == "Changed" and "p020@example.com" not in env.members()
    compared.clear()
    again = env.export(_upload(env, lines), mirror)  # the sent lines' hashes were stored with their entries
    assert (again.unchanged_skipped, again.exported) == (60, 0) and compared == []


def test_an_unmapped_column_changing_gives_the_entries_their_new_lines(env: Env,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = destination(mode="mirror")
    env.export(_upload(env, _people(30)), mirror)
    env.export(_upload(env, _people(30)), mirror)
    text = env.runs.get_blob_client(f"state/{NAME}/snapshot.txt").get_blob_properties().etag
    compared = _compared(monkeypatch)
    puts = env.count(PUT)
    silver = env.export(_upload(env, _people(30, tier="silver")), mirror)  # Tier is not mapped
    assert (silver.unchanged_skipped, silver.exported) == (30, 0) and env.count(PUT) == puts
    assert sum(compared) == 30
    # the text (the contacts) stays as it was; its index was stored again, with the new lines' hashes
    assert env.runs.get_blob_client(f"state/{NAME}/snapshot.txt").get_blob_properties().etag == text
    compared.clear()
    again = env.export(_upload(env, _people(30, tier="silver")), mirror)
    assert (again.unchanged_skipped, again.exported) == (30, 0) and compared == []


def test_line_hashes_never_outlive_the_mapping_a_full_resync_or_the_header(env: Env,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = destination(mode="mirror")
    env.export(_upload(env, _people(20)), mirror)
    env.export(_upload(env, _people(20)), mirror)  # every entry has its line hash now
    full = env.export(_upload(env, _people(20)), mirror, full=True)
    assert (full.exported, full.unchanged_skipped) == (20, 0)
    compared = _compared(monkeypatch)
    after = env.export(_upload(env, _people(20)), mirror)  # found by their values, as after a first export
    assert (after.exported, after.unchanged_skipped) == (0, 20) and sum(compared) == 20
    compared.clear()
    learnt = env.export(_upload(env, _people(20)), mirror)
    assert (learnt.exported, learnt.unchanged_skipped) == (0, 20) and compared == []
    # another mapping (Tier now a field): every contact is different, however same its line
    remapped = destination(mode="mirror", field_mapping={"email": "Email", "first_name": "First",
                                                         "last_name": "Tier"})
    moved = env.export(_upload(env, _people(20)), remapped)
    assert (moved.exported, moved.unchanged_skipped) == (20, 0)
    assert env.members()["p004@example.com"] == "P4" and env.sim.list_contacts(
        destination().list_id_str)["p004@example.com"].get("last_name") == "gold"
    # the same values under another column order: other lines, the same contacts (found by their values)
    compared.clear()
    swapped = [b"%s,%s,%s" % (tier, email, first) for email, first, tier in (line.split(b",") for line in _people(20))]
    reordered = env.export(_upload(env, swapped, header=b"Tier,Email,First"), remapped)
    assert (reordered.exported, reordered.unchanged_skipped) == (0, 20) and sum(compared) == 20


@pytest.mark.parametrize("known_last", [False, True], ids=["changed-last", "known-last"])
def test_a_duplicate_of_a_known_line_is_merged_by_its_real_email(env: Env, known_last: bool) -> None:
    mirror = destination(mode="mirror")
    env.export(_upload(env, _people(10)), mirror)
    env.export(_upload(env, _people(10)), mirror)
    changed = b"p003@example.com,Changed,gold"
    lines = [*_people(10), changed] if not known_last else [changed, *_people(10)]
    report = env.export(_upload(env, lines), mirror)
    assert report.duplicates_merged == 1 and report.balanced
    assert report.exported == (0 if known_last else 1)  # the row read last wins
    assert env.members()["p003@example.com"] == ("P3" if known_last else "Changed")


def test_an_index_without_line_hashes_still_loads_and_learns_them(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.state.snapshot_index import INDEX_V1

    mirror = destination(mode="mirror")
    env.export(_upload(env, _people(25)), mirror)
    env.export(_upload(env, _people(25)), mirror)
    path = f"state/{NAME}/snapshot.idx"
    data = env.runs.download_blob(path).readall()
    end = data.index(b"\n")
    head = json.loads(data[:end])
    assert head["count"] == 25 and len(data) == end + 1 + 24 * 25  # keys, fingerprints, line hashes
    head["format"] = INDEX_V1  # as an older version wrote it: keys and fingerprints only
    env.runs.upload_blob(path, json.dumps(head).encode() + b"\n" + data[end + 1:end + 1 + 16 * 25], overwrite=True)
    compared = _compared(monkeypatch)
    old = env.export(_upload(env, _people(25)), mirror)
    assert (old.unchanged_skipped, old.exported) == (25, 0) and sum(compared) == 25
    compared.clear()
    new = env.export(_upload(env, _people(25)), mirror)
    assert (new.unchanged_skipped, new.exported) == (25, 0) and compared == []


def test_line_hashes_read_by_entry_after_sorting_with_the_updates_found_meanwhile() -> None:
    import random
    from array import array

    from shared.state.line_hashes import LineHashes

    block = 1 << 16
    values = [random.getrandbits(64) - (1 << 63) for _ in range(3 * block + 5)]
    import numpy

    hashes = LineHashes(array("q", values))
    wanted = numpy.array([values[9], 0, values[-1], 12345, values[0]], dtype=numpy.int64)
    found, entries = hashes.find(wanted)  # sorts them in place, with a bucket table over them
    assert found.tolist() == [True, False, True, values.count(12345) > 0, True]
    assert entries.tolist() == [9, len(values) - 1, 0]
    everyone, entries = hashes.find(numpy.array(values, dtype=numpy.int64))
    assert everyone.all() and entries.tolist() == list(range(len(values)))
    hashes.update([3], [11])  # found while sorted
    hashes.release()  # the reads are over: the look-up's arrays go
    hashes.update([len(values) - 1], [12])  # found after
    expected = [*values[:3], 11, *values[4:-1], 12]
    runs = [(0, 2), (2, 40), (42, block), (block + 42, 2 * block - 37)]
    got = [value for start, count in runs for value in hashes.run(start, count)]
    assert got == expected and hashes.changed
    many = random.sample(range(len(values)), 5000)  # across every window of the file, in no order
    hashes.update(many, [i * 7 + 1 for i in many])
    for i in many:
        expected[i] = i * 7 + 1
    assert list(hashes.run(0, len(values))) == expected
    hashes.close()


@pytest.mark.parametrize("ties", [False, True])  # True: they differ only in the bits the entry's number takes
@pytest.mark.parametrize("count", [1, 2, 7, 8, 9, 1000])
def test_hashes_alike_but_for_their_low_bits_are_each_found_as_their_own_entry(count: int, ties: bool) -> None:
    """The look-up sorts the hashes' high bits with the entry's number in the low bits: hashes that differ only
    where the number goes sort together, and each is told apart by its own low 32 bits."""
    import random
    from array import array

    import numpy

    from shared.state.line_hashes import LineHashes

    rng = random.Random(count)
    base = (rng.getrandbits(64) >> 32 << 32) - (1 << 63)  # the same high 32 bits for all
    lows = rng.sample(range(1 << max(1, (count - 1).bit_length())) if ties else range(1, 1 << 32), count)
    values = [base | low for low in lows]
    values[0] = 0 if count > 3 else values[0]  # an entry with no line hash among them
    hashes = LineHashes(array("q", values))
    found, entries = hashes.find(numpy.array(values[::-1], dtype=numpy.int64))
    assert found.tolist() == [v != 0 for v in values[::-1]]
    assert entries.tolist() == [i for i in range(count - 1, -1, -1) if values[i] != 0]
    strangers = [base | low for low in rng.sample(range(1, 1 << 32), 50)]
    strangers += [values[-1] ^ (1 << 40), values[-1] ^ 1, values[-1] ^ (1 << 31), 0]  # a high bit, low bits; none
    strangers = [stranger for stranger in strangers if stranger not in values or stranger == 0]
    found, entries = hashes.find(numpy.array(strangers, dtype=numpy.int64))
    assert not found.any() and not len(entries)
    hashes.close()


def test_a_person_in_two_files_keeps_one_line_and_the_index_stays_put(env: Env) -> None:
    import uuid

    dest = destination(mode="mirror", segments=[f"{NAME}/a/", f"{NAME}/b/"])
    env.segments.upload_blob(f"{NAME}/a/1.csv", b"\n".join([b"Email,First,Tier", *_people(20)]) + b"\n")
    other_order = [b"%s,%s,%s" % (tier, email, first) for email, first, tier in (p.split(b",") for p in _people(20))]
    env.segments.upload_blob(f"{NAME}/b/1.csv", b"\n".join([b"Tier,Email,First", *other_order]) + b"\n")
    index = env.runs.get_blob_client(f"state/{NAME}/snapshot.idx")
    etags = []
    for _ in range(4):
        report = env.service(dest).export(dest, None, run_id=f"run-{uuid.uuid4().hex[:8]}")
        assert env.sim.wait_for_jobs(10) and report.balanced and report.duplicates_merged == 20
        etags.append(index.get_blob_properties().etag)
    # the first refresh learns one line per person; after it neither file's line takes the entry from the other
    assert len(set(etags[1:])) == 1 and etags[0] != etags[1]


def test_a_refresh_knows_its_lines_after_another_reader_raised_the_csv_modules_limit(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The csv module's field limit is process-wide and only ever raised: a worker that once read a file with
    a bigger max_field_chars must still recognise the lines of a destination with the default (it did not:
    every later refresh in that worker parsed every row)."""
    import csv

    from shared.source.readers.csv_header import csv_limit_at_least

    mirror = destination(mode="mirror")
    assert env.export(_upload(env, _people(30)), mirror).exported == 30
    before = csv.field_size_limit()
    try:
        csv_limit_at_least(before * 4)  # as a reader of another destination with a bigger limit does
        compared = _compared(monkeypatch)
        counts = _counting(monkeypatch)
        again = env.export(_upload(env, _people(30)), mirror)
        assert (again.unchanged_skipped, again.exported) == (30, 0) and again.balanced
        assert compared == [] and counts == {"parsed": 0, "mapped": 0}
    finally:
        csv.field_size_limit(before)


def test_hashes_at_the_ends_of_the_bucket_table_are_found() -> None:
    """The least and greatest hashes (as unsigned: 0x0...1 and 0xF...F) fall in the table's first and last
    buckets, whose starts are searched for, not computed: each is found, and so are its neighbours."""
    import random
    from array import array

    import numpy

    from shared.state.line_hashes import LineHashes

    rng = random.Random(7)
    extremes = [1, (1 << 63) - 1, -(1 << 63), -1, -2]  # 0x0..01, 0x7F..F, 0x80..0, 0xFF..F, 0xFF..E as unsigned
    values = [rng.getrandbits(64) - (1 << 63) for _ in range(5000)] + extremes
    hashes = LineHashes(array("q", values))
    found, entries = hashes.find(numpy.array([*extremes, 2, -3], dtype=numpy.int64))
    assert found.tolist() == [True] * 5 + [2 in values, -3 in values]
    assert entries.tolist()[:5] == list(range(5000, 5005))
    hashes.close()
