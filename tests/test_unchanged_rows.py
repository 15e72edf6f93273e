"""Rows known unchanged are never mapped: their source fingerprint (mapped values under the destination's rules)
is the snapshot's. Everything that decides the contact is in the fingerprint, so a change of any of it sends
again; the skipped rows are still counted `unchanged`, every report balances, and mirror still removes exactly
the people who left.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.mapping import contact_mapping
from shared.mapping.contact_mapping import ContactMapper
from shared.pipeline.read import reader_options
from shared.sendgrid.models import CustomField
from shared.state import snapshot as snapshot_module
from shared.state import snapshot_index, snapshot_lines
from shared.state.keys import email_key, fingerprint_seed, source_fingerprint
from shared.state.snapshot import V2_FORMAT
from tests.test_sync import NAME, PUT, Env, destination, env, profiles

__all__ = ["env"]  # test_sync's fixture: Azurite, the simulator, a service per run


def _sent_emails(env: Env, since: int) -> list[str]:
    return sorted(env.sent(since))


def test_an_unchanged_refresh_maps_no_row_sends_nothing_and_still_counts_every_row(env: Env,
                                                                                  monkeypatch: Any) -> None:
    rows = profiles(40)
    first = env.export(env.upload(rows))
    assert (first.exported, first.unchanged_skipped) == (40, 0) and first.balanced
    mapped: list[int] = []
    original = ContactMapper.map_values

    def counting(self: ContactMapper, values: Any) -> Any:
        mapped.append(1)
        return original(self, values)

    monkeypatch.setattr(ContactMapper, "map_values", counting)
    puts = env.count(PUT)
    again = env.export(env.upload(rows))
    assert (again.status, again.exported, again.unchanged_skipped, again.rows_read) == ("succeeded", 0, 40, 40)
    assert again.balanced and all(part.balanced for part in again.segments)
    assert again.segments[0].unchanged_skipped == 40
    assert mapped == [] and env.count(PUT) == puts  # no row mapped, no request carrying contacts


def test_only_the_changed_and_new_rows_are_mapped_and_sent(env: Env) -> None:
    rows = profiles(30)
    env.export(env.upload(rows), destination(mode="mirror"))
    changed = [(email, "Changed") if i in (3, 7) else (email, first) for i, (email, first) in enumerate(rows)]
    changed = changed[:-2] + profiles(3, prefix="new")  # two gone, three new
    since = len(env.sim.upsert_batches)
    report = env.export(env.upload(changed), destination(mode="mirror"))
    assert report.status == "succeeded" and report.balanced, report.summary()
    assert (report.exported, report.unchanged_skipped, report.removed_from_list) == (5, 26, 2)
    assert _sent_emails(env, since) == sorted([rows[3][0], rows[7][0], *(e for e, _ in profiles(3, prefix="new"))])
    assert env.members() == dict(changed)
    # and the next run knows the new state: nothing changed since
    again = env.export(env.upload(changed), destination(mode="mirror"))
    assert (again.exported, again.unchanged_skipped, again.removed_from_list) == (0, 31, 0)


@pytest.mark.parametrize("change", [
    {"field_mapping": {"email": "Email", "first_name": "First", "last_name": "First"}},  # mapping
    {"length_policy": "truncate"},  # a policy
    {"empty_values": "clear"},  # a policy
    {"file_format": {"quotechar": "'"}},  # reader options (the file reads the same)
], ids=["mapping", "length_policy", "empty_values", "reader_options"])
def test_a_change_of_what_decides_the_contact_sends_every_row_again(env: Env, change: dict[str, Any]) -> None:
    rows = profiles(12)
    env.export(env.upload(rows), destination(mode="mirror"))
    since = len(env.sim.upsert_batches)
    report = env.export(env.upload(rows), destination(mode="mirror", **change))
    assert (report.status, report.exported, report.unchanged_skipped) == ("succeeded", 12, 0), report.error
    assert report.balanced and report.removed_from_list == 0
    assert _sent_emails(env, since) == sorted(e for e, _ in rows)
    settled = env.export(env.upload(rows), destination(mode="mirror", **change))
    assert (settled.exported, settled.unchanged_skipped) == (0, 12)


def test_a_new_version_of_the_rules_sends_every_row_again(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    # config_digest reads the version once, at import: here only the fingerprints' seed sees the change.
    rows = profiles(10)
    env.export(env.upload(rows), destination(mode="mirror"))
    monkeypatch.setattr(contact_mapping, "RULES_VERSION", contact_mapping.RULES_VERSION + 1)
    report = env.export(env.upload(rows), destination(mode="mirror"))
    assert (report.exported, report.unchanged_skipped, report.removed_from_list) == (10, 0, 0) and report.balanced
    again = env.export(env.upload(rows), destination(mode="mirror"))
    assert (again.exported, again.unchanged_skipped) == (0, 10)


def test_the_seed_covers_mapping_policies_reader_options_rules_and_custom_field_types() -> None:
    base: dict[str, Any] = {"field_mapping": {"email": "Email", "first_name": "First",
                                              "custom_fields": {"tier": "Tier"}}}
    text = {"tier": CustomField(id="e1_T", field_type="Text")}

    def seed(custom: dict[str, CustomField] = text, **overrides: Any) -> int:
        dest = destination(**{**base, **overrides})
        return fingerprint_seed(ContactMapper(dest, custom).rules(), repr(reader_options(dest)))

    seeds = {seed(), seed(length_policy="truncate"), seed(empty_values="clear"),
             seed(file_format={"delimiter": ";"}), seed(file_format={"encoding": "latin-1"}),
             seed(field_mapping={"email": "Email", "first_name": "Other", "custom_fields": {"tier": "Tier"}}),
             seed(field_mapping={"email": "Email", "last_name": "First", "custom_fields": {"tier": "Tier"}}),
             seed({"tier": CustomField(id="e1_N", field_type="Number")}),
             seed({"tier": CustomField(id="e2_T", field_type="Text")})}
    assert len(seeds) == 9 and seed() == seed()


def test_source_fingerprints_tell_apart_rows_a_plain_join_would_not() -> None:
    seed = 42
    rows = [("a@x.com", "b\x1fc", "d"), ("a@x.com", "b", "c\x1fd"), ("a@x.com", None, ""), ("a@x.com", "", None),
            ("a@x.com", "", ""), ("a@x.com", "None", "")]
    assert len({source_fingerprint(row, seed) for row in rows}) == len(rows)
    assert source_fingerprint(rows[4], seed) != source_fingerprint(rows[4], seed + 1)


def test_a_snapshot_of_the_previous_format_sends_once_more_and_mirror_stays_exact(env: Env) -> None:
    # v2 held fingerprints of the contact JSON, which no source fingerprint equals: membership only.
    rows = profiles(20)
    env.export(env.upload(rows), destination(mode="mirror"))
    path = f"state/{NAME}/snapshot.txt"
    header, *lines = env.runs.download_blob(path).readall().decode().splitlines()
    old = json.loads(header)
    old["format"] = V2_FORMAT  # v2 lines: `<key> <fingerprint> <email>`
    v2 = [f"{email_key(email)} 7 {email}" for email in lines]
    env.runs.upload_blob(path, "\n".join([json.dumps(old), *v2, ""]).encode(), overwrite=True)
    report = env.export(env.upload(rows[:17]), destination(mode="mirror"))
    assert (report.status, report.exported, report.unchanged_skipped) == ("succeeded", 17, 0), report.error
    assert report.removed_from_list == 3 and env.members() == dict(rows[:17]) and report.balanced
    again = env.export(env.upload(rows[:17]), destination(mode="mirror"))
    assert (again.exported, again.unchanged_skipped, again.removed_from_list) == (0, 17, 0)


def test_a_duplicate_whose_last_row_is_unchanged_wins_over_an_earlier_changed_one(env: Env) -> None:
    rows = profiles(5)
    env.export(env.upload(rows))
    # the same person twice: an earlier row with new values, then the row as exported last time
    twice = [(rows[0][0], "Earlier"), *rows]
    since = len(env.sim.upsert_batches)
    report = env.export(env.upload(twice))
    assert (report.exported, report.unchanged_skipped, report.duplicates_merged) == (0, 5, 1) and report.balanced
    assert env.sent(since) == [] and env.members()[rows[0][0]] == rows[0][1]


def test_a_row_rejected_for_another_field_keeps_its_person_on_a_mirror_list(env: Env) -> None:
    rows = profiles(6)
    env.export(env.upload(rows), destination(mode="mirror"))
    bad = [(e, "x" * 60) if i == 2 else (e, f) for i, (e, f) in enumerate(rows)]  # first_name past 50: rejected
    report = env.export(env.upload(bad), destination(mode="mirror"))
    assert (report.unchanged_skipped, report.rejected_count, report.removed_from_list) == (5, 1, 0)
    assert report.balanced and rows[2][0] in env.members()


def test_a_snapshot_bigger_than_its_blocks_is_stored_read_and_merged_block_by_block(env: Env,
                                                                                  monkeypatch: Any) -> None:
    monkeypatch.setattr(snapshot_module, "UPLOAD_BLOCK", 512)  # a few contacts a block
    monkeypatch.setattr(snapshot_module, "SINGLE_PUT", 512)  # (not one PUT)
    monkeypatch.setattr(snapshot_index, "_BLOCK", 256)  # the index too
    monkeypatch.setattr(snapshot_index, "_SINGLE_PUT", 256)
    monkeypatch.setattr(snapshot_index, "_FIRST_READ", 1024)  # and read back in ranges (the first holds its header)
    monkeypatch.setattr(snapshot_lines, "BLOCK_BYTES", 100)  # and lines parsed and copied two or three at a time
    rows = profiles(60)
    env.export(env.upload(rows), destination(mode="mirror"))
    report = env.export(env.upload(rows[:50] + profiles(4, prefix="new")), destination(mode="mirror"))
    assert (report.exported, report.unchanged_skipped, report.removed_from_list) == (4, 50, 10) and report.balanced
    again = env.export(env.upload(rows[:50] + profiles(4, prefix="new")), destination(mode="mirror"))
    assert (again.exported, again.unchanged_skipped, again.removed_from_list) == (0, 54, 0)


def test_a_snapshot_read_in_small_ranges_is_read_whole(env: Env, monkeypatch: Any) -> None:
    monkeypatch.setattr(snapshot_module, "READ_BLOCK", 64)  # a line or two a read
    rows = profiles(30)
    env.export(env.upload(rows), destination(mode="mirror"))
    report = env.export(env.upload(rows[:25]), destination(mode="mirror"))
    assert (report.unchanged_skipped, report.removed_from_list) == (25, 5) and report.balanced
    again = env.export(env.upload(rows[:25]), destination(mode="mirror"))
    assert (again.exported, again.unchanged_skipped, again.removed_from_list) == (0, 25, 0)


def test_line_blocks_give_every_line_whatever_the_chunks_and_block_size(monkeypatch: Any) -> None:
    import random

    chooser = random.Random(7)
    for _ in range(300):
        lines = [b"header"] + [bytes(chooser.choice(b"ab 1") for _ in range(chooser.randint(1, 30)))
                               for _ in range(chooser.randint(0, 50))]
        blob = b"\n".join(lines) + b"\n"
        cuts = sorted(chooser.sample(range(1, len(blob)), min(len(blob) - 1, chooser.randint(0, 8))))
        chunks = [blob[a:b] for a, b in zip([0, *cuts], [*cuts, len(blob)], strict=True)]
        monkeypatch.setattr(snapshot_lines, "BLOCK_BYTES", chooser.randint(1, 40))
        blocks = list(snapshot_lines.line_blocks(iter(chunks)))
        assert [blocks[0], *(line for block in blocks[1:] for line in block.split(b"\n"))] == lines


def _as_v3(env: Env) -> None:
    """The stored v4 snapshot written back as v3 (`<key> <fingerprint> <email>` lines) with its index, as the
    version before stored it."""
    import numpy

    from shared.state.snapshot_index import IndexWriter, load_index

    path, index_path = f"state/{NAME}/snapshot.txt", f"state/{NAME}/snapshot.idx"
    indexed = load_index(env.runs, index_path, path)
    assert indexed is not None
    header_line, *emails = env.runs.download_blob(path).readall().decode().splitlines()
    header = dict(json.loads(header_line), format="segment-to-sendgrid snapshot v3")
    lines = [f"{key} {fp} {email}" for key, fp, email in zip(indexed[1], indexed[2], emails, strict=True)]
    etag = env.runs.get_blob_client(path).upload_blob("\n".join([json.dumps(header), *lines, ""]).encode(),
                                                       overwrite=True)["etag"]
    index = IndexWriter()
    try:
        index.add_arrays(*(numpy.frombuffer(part, dtype=numpy.int64) for part in indexed[1:3]),
                         numpy.frombuffer(indexed[4], dtype=numpy.int64))
        index.store(env.runs, index_path, header, str(etag))
    finally:
        index.close()


def test_a_v3_snapshot_stays_trusted_and_is_rewritten_as_emails_by_its_next_merge(env: Env) -> None:
    rows = profiles(30)
    env.export(env.upload(rows), destination(mode="mirror"))
    _as_v3(env)
    unchanged = env.export(env.upload(rows), destination(mode="mirror"))  # its index: trusted, nothing sent
    assert (unchanged.exported, unchanged.unchanged_skipped) == (0, 30)
    changed = [(email, "Changed") if i == 4 else (email, name) for i, (email, name) in enumerate(rows[:28])]
    report = env.export(env.upload(changed), destination(mode="mirror"))
    assert (report.exported, report.unchanged_skipped, report.removed_from_list) == (1, 27, 2) and report.balanced
    header, *lines = env.runs.download_blob(f"state/{NAME}/snapshot.txt").readall().decode().splitlines()
    assert json.loads(header)["format"] == snapshot_module.SNAPSHOT_FORMAT
    assert sorted(lines) == sorted(email for email, _ in changed)  # v4: the emails alone
    again = env.export(env.upload(changed), destination(mode="mirror"))
    assert (again.exported, again.unchanged_skipped, again.removed_from_list) == (0, 28, 0)


def test_an_erasure_scrubs_a_v3_or_v4_snapshot_and_keeps_its_index(env: Env) -> None:
    from shared.privacy.scrub import scrub_snapshot

    rows = profiles(12)
    for v3 in (False, True):
        env.export(env.upload(rows), destination(mode="mirror"))
        if v3:
            _as_v3(env)
        erased = rows.pop(3)[0]
        assert scrub_snapshot(env.runs, NAME, {erased}, lambda: None) == 1
        text = env.runs.download_blob(f"state/{NAME}/snapshot.txt").readall().decode()
        assert erased not in text and json.loads(text.splitlines()[0])["count"] == len(rows)
        after = env.export(env.upload(rows), destination(mode="mirror"))  # its index was written again
        assert (after.exported, after.unchanged_skipped, after.removed_from_list) == (0, len(rows), 0)


def test_an_erasure_never_overwrites_a_snapshot_written_while_it_scrubbed(env: Env, monkeypatch: Any) -> None:
    from shared.privacy import scrub

    rows = profiles(8)
    env.export(env.upload(rows), destination(mode="mirror"))
    path = f"state/{NAME}/snapshot.txt"
    download, raced = scrub._download, []

    def racing(container: Any, name: str, into: Any) -> str | None:
        etag = download(container, name, into)
        if name == path and not raced:  # an export stores its snapshot between the scrub's read and write
            raced.append(name)
            text = env.runs.download_blob(path).readall()
            env.runs.upload_blob(path, text + b"late@example.com\n", overwrite=True)
        return etag

    monkeypatch.setattr(scrub, "_download", racing)
    assert scrub.scrub_snapshot(env.runs, NAME, {rows[2][0]}, lambda: None) == 1
    text = env.runs.download_blob(path).readall().decode()
    assert raced and "late@example.com" in text and rows[2][0] not in text  # scrubbed again, not lost


def test_a_small_snapshot_is_read_in_one_get_each_its_entry_count_stored_with_its_text(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from azure.storage.blob import ContainerClient

    rows = profiles(60)
    env.export(env.upload(rows), destination(mode="mirror"))
    text = env.runs.get_blob_client(f"state/{NAME}/snapshot.txt").get_blob_properties()
    assert text.metadata == {"entries": "60"}
    # ranges far smaller than these blobs: without the count and the size, each would take many GETs
    monkeypatch.setattr(snapshot_index, "_FIRST_READ", 64)
    monkeypatch.setattr(snapshot_index, "_BLOCK", 64)
    monkeypatch.setattr(snapshot_module, "READ_BLOCK", 64)
    reads: list[str] = []
    download = ContainerClient.download_blob

    def counted(self: ContainerClient, blob: str, *args: Any, **kwargs: Any) -> Any:
        reads.append(blob)
        return download(self, blob, *args, **kwargs)

    monkeypatch.setattr(ContainerClient, "download_blob", counted)
    changed = [(email, "Changed") if i == 3 else (email, name) for i, (email, name) in enumerate(rows[:55])]
    report = env.export(env.upload(changed), destination(mode="mirror"))
    assert (report.exported, report.unchanged_skipped, report.removed_from_list) == (1, 54, 5) and report.balanced
    assert reads.count(f"state/{NAME}/snapshot.idx") == 1 and reads.count(f"state/{NAME}/snapshot.txt") == 1
    after = env.runs.get_blob_client(f"state/{NAME}/snapshot.txt").get_blob_properties()
    assert after.metadata == {"entries": "55"}
    again = env.export(env.upload(changed), destination(mode="mirror"))  # the index just written: all known
    assert (again.exported, again.unchanged_skipped) == (0, 55)
