"""Run state in real Blob Storage (Azurite): receipts, reports, destination lock, snapshot, checkpoint."""

import json
import uuid
from array import array
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy
import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient

from shared.staging.spool import email_key, fingerprint
from shared.state.run_store import RunStore
from shared.state.snapshot_merge import EntryBlock
from shared.state.sync_state import DestinationBusy, SyncState


def test_a_blob_version_is_claimed_once_even_by_concurrent_callers(container: ContainerClient) -> None:
    store = RunStore(container)
    with ThreadPoolExecutor(max_workers=8) as pool:
        claims = list(pool.map(lambda i: store.claim("vip/a.csv", '"0x8D1"', f"run-{i}"), range(8)))
    winners = [c for c in claims if c is not None]
    assert len(winners) == 1
    store.complete(winners[0], "done", {"status": "succeeded"})
    assert store.claim("vip/a.csv", '"0x8D1"', "run-late") is None
    # a new version of the same blob is new work
    assert store.claim("vip/a.csv", '"0x8D2"', "run-new") is not None


def test_a_failed_claim_can_be_retried_by_the_next_trigger(container: ContainerClient) -> None:
    store = RunStore(container)
    first = store.claim("vip/b.csv", "etag", "run-1")
    assert first is not None
    store.complete(first, "failed", {"status": "failed"})
    second = store.claim("vip/b.csv", "etag", "run-2")
    assert second is not None and second.run_id == "run-2"


def test_the_first_claim_and_report_create_a_missing_container(blob_service: BlobServiceClient) -> None:
    for write in ("claim", "report"):
        container = blob_service.get_container_client(f"t{uuid.uuid4().hex[:20]}")
        assert not container.exists()
        store = RunStore(container)
        try:
            if write == "claim":
                claim = store.claim("vip/a.csv", '"0x8D1"', "run-1")
                assert claim is not None and store.claim("vip/a.csv", '"0x8D1"', "run-2") is None
            else:
                store.save_report("run-x", {"status": "succeeded"})
                assert store.load_report("run-x") == {"status": "succeeded"}
            assert container.exists()
        finally:
            container.delete_container()


def test_a_completed_receipt_is_the_claim_with_its_outcome_and_never_overwrites_a_newer_one(
        container: ContainerClient) -> None:
    store = RunStore(container)
    claim = store.claim("vip/c.csv", "etag", "run-1")
    assert claim is not None
    store.complete(claim, "done", {"status": "succeeded"})
    receipt = json.loads(container.download_blob(claim.path).readall())
    assert {k: receipt[k] for k in ("blob", "etag", "run_id", "state", "summary")} == {
        "blob": "vip/c.csv", "etag": "etag", "run_id": "run-1", "state": "done", "summary": {"status": "succeeded"}}
    assert receipt["at"] == claim.body["at"] and "finished" in receipt
    again = store.claim("vip/d.csv", "etag", "run-2")
    assert again is not None
    container.upload_blob(again.path, b'{"state": "failed", "run_id": "someone else"}', overwrite=True)
    store.complete(again, "done", {"status": "succeeded"})  # its claim is no longer the receipt: left alone
    assert json.loads(container.download_blob(again.path).readall()) == {"state": "failed", "run_id": "someone else"}


def test_reports_and_rejects_round_trip(container: ContainerClient) -> None:
    store = RunStore(container)
    store.save_report("run-x", {"status": "succeeded", "rows_read": 3})
    assert store.load_report("run-x") == {"status": "succeeded", "rows_read": 3}
    assert store.load_report("run-missing") is None
    path = store.save_rejects("run-x", [("f.csv", 2, "email", "email is empty", "")])
    assert path == "rejects/run-x.csv"
    text = container.download_blob(path).readall().decode()
    assert text.splitlines() == ["source,row,field,reason,value", "f.csv,2,email,email is empty,"]
    assert store.save_rejects("run-y", []) is None


def test_two_runs_of_one_destination_never_overlap(container: ContainerClient) -> None:
    first = SyncState(container, "vip", config_digest="c")
    second = SyncState(container, "vip", config_digest="c")
    first.acquire()
    try:
        with pytest.raises(DestinationBusy):
            second.acquire()
    finally:
        first.release()
    second.acquire()  # free again once released
    second.release()


def _arrays(emails: list[str], bodies: list[bytes]) -> tuple["array[int]", "array[int]"]:
    return array("q", map(email_key, emails)), array("q", map(fingerprint, bodies))


def _entries(keys: "array[int]", fps: "array[int]", emails: list[str],
             confirmed: Iterable[int]) -> list[EntryBlock]:
    """The confirmed contacts as the settle stage hands them over: blocks of arrays (two, to cross one)."""
    chosen = list(confirmed)
    halves = [chosen[: len(chosen) // 2], chosen[len(chosen) // 2:]]
    return [(numpy.array([keys[i] for i in half], dtype=numpy.int64), numpy.array([fps[i] for i in half],
             dtype=numpy.int64), numpy.zeros(len(half), dtype=numpy.int64), [emails[i].encode() for i in half])
            for half in halves if half]


def test_snapshot_keeps_unconfirmed_previous_entries_and_sorts_by_key(container: ContainerClient) -> None:
    emails = [f"user{i}@example.com" for i in range(2000)]
    bodies = [f'{{"email":"{e}"}}'.encode() for e in emails]
    keys, fps = _arrays(emails, bodies)
    state = SyncState(container, "vip", config_digest="c1")
    state.load(source_id="a", full=False)
    assert state.snapshot is None
    count = state.write_snapshot(_entries(keys, fps, emails, range(0, 2000, 2)), dropped=set())  # odd: unconfirmed
    assert count == 1000

    again = SyncState(container, "vip", config_digest="c1")
    again.load(source_id="b", full=False)
    snapshot = again.snapshot
    assert snapshot is not None and len(snapshot) == 1000
    assert list(snapshot.keys) == sorted(snapshot.keys)
    assert snapshot.fingerprint(keys[0]) == fps[0]
    assert snapshot.fingerprint(keys[1]) is None  # its job never completed: not recorded as exported

    # next run: everything confirmed, but with new content for user0 -> new fingerprint replaces old
    bodies2 = [b'{"email":"user0@example.com","first_name":"A"}', *bodies[1:]]
    keys2, fps2 = _arrays(emails, bodies2)
    again.write_snapshot(_entries(keys2, fps2, emails, range(2000)), dropped=set())
    third = SyncState(container, "vip", config_digest="c1")
    third.load(source_id="c", full=False)
    assert third.snapshot is not None and len(third.snapshot) == 2000
    assert third.snapshot.fingerprint(keys2[0]) == fps2[0] != fps[0]

    # a different mapping/list invalidates the snapshot (full sync); full=True keeps it as membership only
    other = SyncState(container, "vip", config_digest="c2")
    other.load(source_id="c", full=False)
    assert other.snapshot is None
    third.load(source_id="c", full=True)
    assert third.snapshot is not None and len(third.snapshot) == 2000
    assert third.snapshot.fingerprint(keys2[0]) is None


def test_absent_contacts_are_dropped_only_when_asked_and_emails_read_back(container: ContainerClient) -> None:
    emails = ["a@example.com", "b@example.com", "c@example.com"]
    keys, fps = _arrays(emails, [e.encode() for e in emails])
    state = SyncState(container, "d", config_digest="c")
    state.load(source_id="1", full=False)
    state.write_snapshot(_entries(keys, fps, emails, range(3)), dropped=set())
    state.load(source_id="2", full=False)
    assert state.snapshot is not None
    by_position = {p: state.snapshot.keys[p] for p in range(3)}
    position_of_b = next(p for p, k in by_position.items() if k == keys[1])
    assert state.snapshot_emails({position_of_b}) == {position_of_b: "b@example.com"}
    # next run: only a and c remain in the segment; b is dropped (mirror removal succeeded)
    state.write_snapshot(_entries(keys, fps, emails, [0, 2]), dropped={position_of_b})
    state.load(source_id="3", full=False)
    assert state.snapshot is not None
    assert sorted(state.snapshot.keys) == sorted([keys[0], keys[2]])


def test_checkpoint_resumes_only_the_same_plan(container: ContainerClient) -> None:
    state = SyncState(container, "vip", config_digest="c")
    state.load(source_id="file\netag1", full=False)
    state.batch_accepted(1, "job-1")
    state.batch_accepted(2, "job-2")
    same = SyncState(container, "vip", config_digest="c")
    same.load(source_id="file\netag1", full=False)
    assert same.resume == {1: "job-1", 2: "job-2"}
    changed = SyncState(container, "vip", config_digest="c")
    changed.load(source_id="file\netag2", full=False)
    assert changed.resume == {}
    same.clear_checkpoint()
    after = SyncState(container, "vip", config_digest="c")
    after.load(source_id="file\netag1", full=False)
    assert after.resume == {}


def test_report_updates_never_overwrite_a_newer_report(container: ContainerClient) -> None:
    store = RunStore(container)
    store.save_report("run-1", {"status": "queued", "notes": []})
    calls = 0

    def fail_if_queued(report: dict[str, object]) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:  # the run finishes between our read and our write
            store.save_report("run-1", {"status": "succeeded", "notes": []})
        if report["status"] != "queued":
            return False
        report["status"] = "failed"
        return True

    assert store.update_report("run-1", fail_if_queued) is None
    assert calls == 2  # the conditional write failed (412), the change was re-applied to the new version
    assert store.load_report("run-1") == {"status": "succeeded", "notes": []}
    assert store.update_report("missing", fail_if_queued) is None
