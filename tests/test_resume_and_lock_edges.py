"""Edges of resume and of the destination lock, against Azurite and the SendGrid simulator.

- A batch SendGrid accepted after setting contacts aside (a 400 naming them) is resumed without them: they
  are rejected again, never credited to the batch's job nor written into the snapshot.
- A run whose lock another run took after its last accepted batch removes nobody from a mirrored list,
  saves no snapshot and says so (status `failed`), instead of blaming storage and reporting `succeeded`.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import BlobLeaseClient, ContainerClient

import shared.mapping.contact_mapping
from sendgrid_simulator import Simulator
from shared.config.destinations import Destination
from shared.mapping.email_rules import normalise_email
from shared.pipeline.engine import ExportOptions, ExportResult, export_segment
from shared.pipeline.report import BatchResult, RunReport
from shared.sendgrid.client import RetryPolicy, SendGridClient
from shared.source.sources import LocalDirSource
from shared.state.sync_state import SyncState
from tests.sendgrid_fixture import SENDGRID_TEST_KEY, SENDGRID_TEST_LIST_ID, running_simulator
from tests.test_engine_e2e import destination, write_csv
from tests.test_sync import stored_snapshot

NAME = "edges"
PUT = "PUT /v3/marketing/contacts"
SEARCH = "POST /v3/marketing/contacts/search/emails"
REMOVE = "DELETE /v3/marketing/lists/{id}/contacts"
OPTIONS = ExportOptions(poll_interval=0.01, poll_timeout=30.0)
RETRY = RetryPolicy(max_attempts=2, backoff_base=0.01, backoff_max=0.05)


@dataclass
class Edges:
    sim: Simulator
    container: ContainerClient
    folder: Path
    leases_run_out: Callable[[], None]

    def state(self, **kwargs: Any) -> SyncState:
        return SyncState(self.container, NAME, config_digest="cfg", list_id=SENDGRID_TEST_LIST_ID, **kwargs)

    def run(self, dest: Destination, name: str, *, on_batch: Callable[[BatchResult], None] | None = None,
            client_hook: Callable[[SendGridClient], None] | None = None, options: ExportOptions = OPTIONS,
            lease_seconds: int | None = None) -> ExportResult:
        """One run as ExportService does it: lock, load (plan = file name), export, release."""
        sync = self.state(lease_seconds=lease_seconds)
        sync.acquire()
        sync.load(source_id=name, full=False)
        try:
            with SendGridClient(SENDGRID_TEST_KEY, base_url=self.sim.base_url, retry=RETRY) as client:
                if client_hook is not None:
                    client_hook(client)
                return export_segment(dest, LocalDirSource(self.folder), name, client,
                                      run_id=uuid.uuid4().hex[:12], options=options, on_batch_accepted=on_batch,
                                      sync=sync)
        finally:
            sync.release()
            assert self.sim.wait_for_jobs(10)

    def blob(self, leaf: str) -> bytes | None:
        client = self.container.get_blob_client(f"state/{NAME}/{leaf}")
        return client.download_blob().readall() if client.exists() else None

    def snapshot_emails(self) -> set[str]:
        return set(stored_snapshot(self.container, NAME))

    def count(self, endpoint: str) -> int:
        return self.sim.request_counts.get(endpoint, 0)

    def steal_lock(self) -> SyncState:
        """Another run takes the destination: this run's lease runs out and is broken, as on expiry."""
        self.leases_run_out()
        BlobLeaseClient(self.container.get_blob_client(f"state/{NAME}/lock")).break_lease(lease_break_period=0)
        other = self.state()
        other.acquire()
        return other


@pytest.fixture
def edges(container: ContainerClient, tmp_path: Path, leases_run_out: Callable[[], None]) -> Iterator[Edges]:
    for sim in running_simulator():
        yield Edges(sim, container, tmp_path, leases_run_out)


def rejected(report: RunReport) -> list[tuple[int, str, str]]:
    return [(r.row, r.field, r.reason) for r in report.rejected]


# -- a resumed batch whose contacts SendGrid set aside -------------------------------------------------------

def lenient(raw: str) -> tuple[str | None, str | None]:
    """Let an address our rules refuse reach SendGrid, whose 400 then names it."""
    email, problem = normalise_email(raw)
    return (raw.strip().lower(), None) if email is None and "@" in raw else (email, problem)


def test_a_resumed_batch_rejects_again_the_contacts_sendgrid_set_aside(
        edges: Edges, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared.mapping.contact_mapping, "normalise_email", lenient)
    write_csv(edges.folder / "f.csv", ["Email", "First"],
              [["ok1@example.com", "A"], ["bad@@example.com", "B"], ["ok2@example.com", "C"],
               ["ok3@example.com", "D"]])
    dest = destination(name=NAME)
    options = ExportOptions(**{**OPTIONS.__dict__, "max_contacts_per_request": 3})

    def outage_after_batch_1(outcome: BatchResult) -> None:
        edges.sim.inject("status", method="PUT", status=500, count=100)

    # Run 1: batch 1 (ok1, bad, ok2) gets a 400 naming bad@@, is resent without it and accepted; batch 2
    # never gets through.
    first = edges.run(dest, "f.csv", on_batch=outage_after_batch_1, options=options).report
    assert (first.status, first.exported, first.not_sent, first.rejected_count) == ("failed", 2, 1, 1)
    assert first.balanced, first.summary()
    [refused] = rejected(first)
    assert refused[:2] == (2, "email") and refused[2].startswith("SendGrid: ")
    checkpoint = json.loads(edges.blob("checkpoint.json") or b"{}")
    assert list(checkpoint["accepted"]) == ["1"]
    edges.sim.faults.clear()

    # Run 2 resumes: batch 1 is rebuilt from the spool with bad@@ in it again; it must be rejected, not
    # credited to batch 1's job (which never had it).
    puts = edges.count(PUT)
    second = edges.run(dest, "f.csv", options=options).report
    assert second.status == "succeeded", second.error
    assert edges.count(PUT) == puts + 1  # only batch 2
    assert [(b.number, b.resumed, b.contacts, b.set_aside, b.status) for b in second.batches] == [
        (1, True, 2, 1, "completed"), (2, False, 1, 0, "completed")]
    assert (second.exported, second.rejected_count, second.not_sent, second.pending) == (3, 1, 0, 0)
    assert rejected(second) == [refused]
    assert second.balanced, second.summary()
    assert edges.snapshot_emails() == {"ok1@example.com", "ok2@example.com", "ok3@example.com"}
    assert set(edges.sim.list_contacts(SENDGRID_TEST_LIST_ID)) == edges.snapshot_emails()
    assert edges.blob("checkpoint.json") is None

    # The next refresh does not skip bad@@ as unchanged: it is sent, refused and rejected again.
    third = edges.run(dest, "f.csv", options=options).report
    assert (third.status, third.unchanged_skipped, third.exported, third.rejected_count) == ("succeeded", 3, 0, 1)
    assert rejected(third) == [refused]
    assert third.balanced, third.summary()


def test_a_checkpoint_keeps_set_aside_contacts_and_an_old_one_without_them_still_loads(edges: Edges) -> None:
    state = edges.state()
    state.load(source_id="f.csv", full=False)
    state.set_aside(1, [(1, "email", "SendGrid: email <value> is not valid")])
    state.batch_accepted(1, "job-1")
    state.batch_accepted(2, "job-2")
    again = edges.state()
    again.load(source_id="f.csv", full=False)
    assert again.resume == {1: "job-1", 2: "job-2"}
    assert again.resume_set_aside == {1: [(1, "email", "SendGrid: email <value> is not valid")]}

    # A checkpoint written before set-aside contacts were recorded.
    old = json.dumps({"run_key": again.run_key, "accepted": {"1": "job-1"}}).encode()
    edges.container.upload_blob(f"state/{NAME}/checkpoint.json", old, overwrite=True)
    legacy = edges.state()
    legacy.load(source_id="f.csv", full=False)
    assert (legacy.resume, legacy.resume_set_aside) == ({1: "job-1"}, {})
    legacy.clear_checkpoint()
    assert (legacy.resume, legacy.resume_set_aside) == ({}, {})


# -- a run that lost its lock after its last accepted batch --------------------------------------------------

def mirror_setup(edges: Edges) -> tuple[Destination, list[list[str]]]:
    """A mirrored list of 20 contacts; v2.csv drops two of them and adds one (one batch to send)."""
    dest = destination(name=NAME, mode="mirror")
    rows = [[f"p{i:02d}@example.com", f"A{i}"] for i in range(20)]
    write_csv(edges.folder / "v1.csv", ["Email", "First"], rows)
    write_csv(edges.folder / "v2.csv", ["Email", "First"], [*rows[:18], ["new@example.com", "N"]])
    assert edges.run(dest, "v1.csv").report.status == "succeeded"
    return dest, rows


@contextlib.contextmanager
def stolen_locks() -> Iterator[list[SyncState]]:
    """Locks a test takes from the run under test, released whatever happens."""
    taken: list[SyncState] = []
    try:
        yield taken
    finally:
        for other in taken:
            other.release()


def assert_taken_over(edges: Edges, report: RunReport, snapshot_before: bytes | None) -> None:
    assert report.status == "failed", report.summary()
    assert report.error is not None and "another run took over destination" in report.error
    assert "snapshot was not saved" in report.error
    assert not any("storage unavailable" in note for note in report.notes), report.notes
    assert report.balanced, report.summary()
    assert edges.blob("snapshot.txt") == snapshot_before


def test_a_mirror_run_that_lost_its_lock_removes_nobody(edges: Edges) -> None:
    dest, rows = mirror_setup(edges)
    snapshot = edges.blob("snapshot.txt")
    searches, removals = edges.count(SEARCH), edges.count(REMOVE)
    with stolen_locks() as taken:
        report = edges.run(dest, "v2.csv", on_batch=lambda outcome: taken.append(edges.steal_lock()),
                           lease_seconds=15).report
    assert (report.exported, report.unchanged_skipped, report.removed_from_list) == (1, 18, 0)
    assert (edges.count(SEARCH), edges.count(REMOVE)) == (searches, removals)
    assert set(edges.sim.list_contacts(SENDGRID_TEST_LIST_ID)) == {r[0] for r in rows} | {"new@example.com"}
    assert_taken_over(edges, report, snapshot)
    assert report.error is not None and "none of the 2 contact(s) that left the segment was removed" in report.error


def test_a_mirror_run_whose_lock_is_taken_during_the_lookup_removes_nobody(edges: Edges) -> None:
    dest, rows = mirror_setup(edges)
    snapshot = edges.blob("snapshot.txt")
    searches, removals = edges.count(SEARCH), edges.count(REMOVE)
    def steal_during_search(client: SendGridClient) -> None:
        search = client.search_emails

        def searched_then_stolen(emails: Sequence[str], refused: list[str] | None = None) -> dict[str, str]:
            found = search(emails, refused)
            taken.append(edges.steal_lock())
            return found

        client.search_emails = searched_then_stolen  # type: ignore[method-assign]

    with stolen_locks() as taken:
        report = edges.run(dest, "v2.csv", client_hook=steal_during_search, lease_seconds=15).report
    assert (edges.count(SEARCH), edges.count(REMOVE)) == (searches + 1, removals)
    assert set(edges.sim.list_contacts(SENDGRID_TEST_LIST_ID)) == {r[0] for r in rows} | {"new@example.com"}
    assert_taken_over(edges, report, snapshot)


def test_an_upsert_run_that_lost_its_lock_says_so_instead_of_blaming_storage(edges: Edges) -> None:
    dest = destination(name=NAME)
    write_csv(edges.folder / "u.csv", ["Email", "First"], [[f"u{i}@example.com", "U"] for i in range(5)])
    with stolen_locks() as taken:
        report = edges.run(dest, "u.csv", on_batch=lambda outcome: taken.append(edges.steal_lock()),
                           lease_seconds=15).report
    assert report.exported == 5
    assert_taken_over(edges, report, None)
    assert "removed" not in (report.error or "")
    # the checkpoint is the new owner's business now: this run neither cleared nor rewrote it
    assert json.loads(edges.blob("checkpoint.json") or b"{}")["accepted"] == {"1": report.batches[0].job_id}
