"""The spool's last-row-wins de-duplication, on both of its paths (one sort, and bucketed for big runs)."""

from __future__ import annotations

import json

import pytest

from shared.staging import email_file
from shared.staging import spool as spool_module
from shared.staging.spool import Spool


def _fill(spool: Spool, emails: list[str]) -> None:
    for row, email in enumerate(emails, start=1):
        spool.add("segment.csv", row, email, json.dumps({"email": email}, separators=(",", ":")).encode())


@pytest.mark.parametrize("count", [1_000, 30_000, 150_000])  # a set, one sort, sixteenths sorted
def test_only_the_last_row_of_each_email_survives(count: int) -> None:
    emails = [f"person.{i}@example.com" for i in range(count)]
    # repeats spread over the file: the 5th..15th are seen again at the end, and one is seen three times
    emails += [*emails[5:15], emails[7]]
    spool = Spool()
    try:
        _fill(spool, emails)
        superseded = spool.superseded()
    finally:
        spool.close()
    assert superseded == set(range(5, 15)) | {count + 2}  # earlier rows lose; the last occurrence wins
    assert len(emails) - len(superseded) == count


def test_the_bucketed_path_is_the_one_used_above_the_small_spool_size() -> None:
    from shared.staging import repeated_keys

    assert 1_000 + 11 <= repeated_keys._TINY < 30_000 < repeated_keys._SMALL < 150_000  # each path tested


def test_a_key_collision_never_merges_two_people(monkeypatch: pytest.MonkeyPatch) -> None:
    # every email gets the same 64-bit key: only the real emails may decide what is a duplicate
    monkeypatch.setattr(spool_module, "_xxh3", lambda data: 12345)
    spool = Spool()
    try:
        _fill(spool, ["a@example.com", "b@example.com", "a@example.com"])
        assert spool.superseded() == {0}
    finally:
        spool.close()



@pytest.mark.parametrize("pread", [True, False], ids=["pread", "seek"])
def test_contacts_read_back_whole_while_writes_are_buffered(pread: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # more contacts than one buffered write, read back between adds and from several sources
    if not pread:
        monkeypatch.setattr(email_file, "_pread", None)  # as on Windows
    spool = Spool()
    try:
        emails = [f"p{i}@example.com" for i in range(2_500)]
        for row, email in enumerate(emails[:1_500], start=1):
            spool.add("a.csv" if row < 700 else "b.csv", row, email, f'{{"email":"{email}"}}'.encode())
        assert spool.email_at(1_499) == emails[1_499] and spool.email_at(3) == emails[3]
        assert [body for _, body in spool.contacts()][-1] == f'{{"email":"{emails[1_499]}"}}'.encode()
        for row, email in enumerate(emails[1_500:], start=1_501):
            spool.add("a.csv", row, email, f'{{"email":"{email}"}}'.encode())
        assert [json.loads(body)["email"] for _, body in spool.contacts()] == emails
        contacts = spool.contacts()
        assert [next(contacts)[0] for _ in range(3)] == [0, 1, 2]
        assert spool.email_at(2_000) == emails[2_000]  # mid-iteration: the iteration goes on where it was
        assert next(contacts)[1] == f'{{"email":"{emails[3]}"}}'.encode()
        assert [spool.email_at(i) for i in (0, 1_024, 2_499)] == [emails[0], emails[1_024], emails[2_499]]
        assert [spool.where(i) for i in (0, 699, 1_000, 2_000)] == [("a.csv", 1), ("b.csv", 700), ("b.csv", 1_001),
                                                                   ("a.csv", 2_001)]
        assert spool.superseded() == set()
    finally:
        spool.close()


def test_rows_known_by_their_line_are_merged_by_the_snapshots_email() -> None:
    from array import array

    from shared.staging.spool import email_key

    emails = [f"p{i}@example.com" for i in range(10)]
    keys = array("q", map(email_key, emails))
    spool = Spool()
    try:
        spool.add_known_lines("a.csv", 1, keys[:6].tobytes(), 6)  # rows 1-6: lines the snapshot holds
        spool.add("a.csv", 7, emails[7], f'{{"email":"{emails[7]}"}}'.encode())
        spool.add_unchanged_run("a.csv", 8, keys[1:3].tobytes(), [emails[1].encode(), emails[2].encode()])
        spool.add_known_lines("a.csv", 10, keys[4:5].tobytes(), 1)  # p4 again, by its line
        spool.add("a.csv", 11, emails[5], f'{{"email":"{emails[5]}"}}'.encode())
        asked: list[set[int]] = []

        def snapshot_emails(wanted: set[int]) -> dict[int, str]:
            asked.append(wanted)
            return {key: emails[keys.index(key)] for key in wanted}

        spool.entry_emails = snapshot_emails
        # the row read last wins: p1, p2 (unchanged again), p4 (its line again), p5 (mapped)
        assert spool.superseded() == {1, 2, 4, 5}
        assert len(asked) == 1 and asked[0] == {keys[1], keys[2], keys[4], keys[5]}
        assert spool.email_at(6) == emails[7] and spool.email_at(8) == emails[2] and spool.where(9) == ("a.csv", 10)
    finally:
        spool.close()


@pytest.mark.parametrize("size", [1, 77, 1 << 21])
def test_email_blocks_give_what_emails_gives_whatever_the_block_size(size: int) -> None:
    # mapped contacts between unchanged runs and rows known by their line, one with a non-ASCII address
    spool = Spool()
    try:
        mapped = []
        for row in range(1, 3_000):
            email = f"p{row}@exämple.com" if row == 5 else f"p{row}@example.com"
            if row % 10 == 3:
                spool.add_unchanged("a.csv", row, email.encode(), spool_module.email_key(email))
            elif row % 10 == 4:
                spool.add_known_lines("a.csv", row, spool_module.array("q", [row]).tobytes(), 1)
            else:
                spool.add("a.csv", row, email, json.dumps({"email": email, "first_name": "X"}, ensure_ascii=False,
                                                          separators=(",", ":")).encode(), row * 3, line_hash=row * 7)
                mapped.append((len(spool) - 1, row * 3, row * 7, email.encode()))
        assert list(spool.emails()) == mapped
        blocks = list(spool.email_blocks(size))
        assert len(blocks) > 1 or size > 1000
        got = [(int(i), int(fp), int(lh), email) for indices, fps, hashes, emails in blocks
               for i, fp, lh, email in zip(indices, fps, hashes, emails, strict=True)]
        assert got == mapped
    finally:
        spool.close()


@pytest.mark.parametrize("unchanged_first", [False, True])
def test_a_block_of_mapped_contacts_reads_back_as_the_same_contacts_added_one_by_one(unchanged_first: bool) -> None:
    import numpy

    def body(email: str) -> bytes:
        return json.dumps({"email": email}, ensure_ascii=False, separators=(",", ":")).encode()

    one, block = Spool(), Spool()
    try:
        for spool in (one, block):
            if unchanged_first:
                spool.add_unchanged("a.csv", 1, b"u@example.com", spool_module.email_key("u@example.com"))
            spool.add("a.csv", 2, "p2@example.com", body("p2@example.com"), 5, line_hash=6)
        emails = [f"p{row}@ex\u00e4mple.com" if row == 4 else f"p{row}@example.com" for row in range(3, 40)]
        for row, email in enumerate(emails, start=3):
            one.add("b.csv", row, email, body(email), row, line_hash=-row)
        bodies = [body(email) for email in emails]
        starts = numpy.cumsum([0] + [len(b) + 1 for b in bodies[:-1]]).astype(numpy.int64)
        pairs = numpy.array([(row, -row) for row in range(3, 40)], dtype=numpy.int64).tobytes()
        keys = spool_module.array("q", map(spool_module.email_key, emails)).tobytes()
        block.add_block("b.csv", 3, keys, pairs, b"\n".join(bodies), starts)
        for spool in (one, block):
            spool.add("b.csv", 41, "p41@example.com", body("p41@example.com"), 1, line_hash=2)  # after a gap
        assert list(block.contacts()) == list(one.contacts()) and list(block.emails()) == list(one.emails())
        assert block.keys == one.keys and block.unchanged == one.unchanged
        assert [block.where(i) for i in range(len(one))] == [one.where(i) for i in range(len(one))]
        assert block.emails_at(list(range(len(one)))) == one.emails_at(list(range(len(one))))
    finally:
        one.close()
        block.close()
