"""Incremental sync against real parts: segment files and run state in Azurite, contacts in the SendGrid simulator.

Every export goes through `ExportService.export` (lock, snapshot, checkpoint, report persisted in the runs
container) exactly as the functions run it; what the tests check is what reached the simulated account (the
PUT bodies it recorded, list membership, the request log) and the run state stored in Azurite:

- a refresh of an unchanged file sends nothing; a changed file sends only new and changed profiles;
- mirror mode takes the contacts that left the segment off the list (never out of the account), behind a
  safety valve; upsert mode never removes; a row rejected for another field is not a departure, and a
  removal that failed is tried again by the next refresh;
- a run killed (SIGKILL, in a subprocess) after its second batch resumes without sending any batch twice;
- contacts of errored/failed import jobs are not recorded as exported, so the next refresh sends them;
- a forced full re-sync, or a changed mapping or list, sends everything again;
- one destination's runs never interleave (blob lease: renewed while the run lives, expires when it dies;
  a run that lost its lease records no more state).
The CLI keeps no sync state: every CLI export is a full one (it has no --full flag to add).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy
import pytest
from azure.storage.blob import BlobLeaseClient, BlobServiceClient, ContainerClient

from sendgrid_simulator import Simulator
from shared.cli import main as cli_main
from shared.config.destinations import Destination, DestinationsDocument
from shared.config.secrets import ApiKeyProvider
from shared.config.settings import AppSettings
from shared.pipeline.engine import ExportOptions
from shared.pipeline.report import RunReport
from shared.sendgrid.client import RetryPolicy, SendGridClient
from shared.service.export_service import ExportService
from shared.staging.spool import email_key, fingerprint
from shared.state.lock import DestinationLock
from shared.state.snapshot import SNAPSHOT_FORMAT
from shared.state.snapshot_index import load_index
from shared.state.snapshot_merge import EntryBlock
from shared.state.sync_state import DestinationBusy, LockLost, SyncState
from tests.azurite import Azurite
from tests.sendgrid_fixture import SENDGRID_TEST_KEY, SENDGRID_TEST_LIST_ID, running_simulator

ROOT = Path(__file__).resolve().parents[1]
NAME = "sync"
OTHER_LIST_ID = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
PUT = "PUT /v3/marketing/contacts"
SEARCH = "POST /v3/marketing/contacts/search/emails"
REMOVE = "DELETE /v3/marketing/lists/{id}/contacts"
CONSENT = {"agreed_by": "ops@example.com", "agreed_at": "2026-11-01T09:00:00Z"}
FAST = ExportOptions(poll_interval=0.01, poll_timeout=30.0)
FAST_RETRY = RetryPolicy(max_attempts=3, backoff_base=0.01, backoff_max=0.05, rate_limit_budget=5.0)

Profile = tuple[str, str]  # (email, first name)


# -- the environment ----------------------------------------------------------------------------------------

def destination(**overrides: Any) -> Destination:
    data: dict[str, Any] = {
        "name": NAME, "list_id": SENDGRID_TEST_LIST_ID, "api_key_secret": "sendgrid-api-key",
        "segments": [f"{NAME}/"], "field_mapping": {"email": "Email", "first_name": "First"}, "consent": CONSENT,
    }
    data.update(overrides)
    return Destination.model_validate(data)


def profiles(count: int, *, prefix: str = "p", name: str = "A") -> list[Profile]:
    return [(f"{prefix}{i:03d}@example.com", f"{name}{i}") for i in range(count)]


def csv_bytes(rows: list[Profile], *, extra: dict[str, list[str]] | None = None) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = list(extra or {})
    writer.writerow(["Email", "First", *columns])
    for number, (email, first) in enumerate(rows):
        writer.writerow([email, first, *((extra or {})[c][number] for c in columns)])
    return out.getvalue().encode()


def stored_snapshot(container: ContainerClient, name: str) -> dict[str, int]:
    """email -> fingerprint of a stored snapshot: its text's emails (v4 lines; a v3 line ends with its email)
    with the fingerprints of its index when that is valid for the text (else 0: membership only)."""
    text = container.get_blob_client(f"state/{name}/snapshot.txt")
    if not text.exists():
        return {}
    header, *lines = text.download_blob().readall().decode().splitlines()
    v3 = json.loads(header).get("format", "").endswith("v3")
    emails = [line.split(" ", 2)[2] if v3 else line for line in lines]
    indexed = load_index(container, f"state/{name}/snapshot.idx", f"state/{name}/snapshot.txt")
    fps = list(indexed[2]) if indexed is not None else [int(line.split(" ", 2)[1]) if v3 else 0 for line in lines]
    return dict(zip(emails, fps, strict=True))


@dataclass
class Env:
    sim: Simulator
    blobs: BlobServiceClient
    segments: ContainerClient
    runs: ContainerClient

    def upload(self, rows: list[Profile], name: str | None = None, **kwargs: Any) -> str:
        # Names in upload order: files written within one second are told apart by name (the greatest wins).
        self.uploads = getattr(self, "uploads", 0) + 1
        blob = f"{NAME}/{name or f'{self.uploads:04d}-{uuid.uuid4().hex[:8]}'}.csv"
        self.segments.upload_blob(blob, csv_bytes(rows, **kwargs), overwrite=True)
        return blob

    def service(self, dest: Destination | None = None, **options: Any) -> ExportService:
        settings = AppSettings(segments_container=self.segments.container_name,
                               runs_container=self.runs.container_name, sendgrid_base_url=self.sim.base_url,
                               key_vault_url=None, azure_client_id=None)
        return ExportService(settings, DestinationsDocument(destinations=[dest or destination()]), self.blobs,
                             ApiKeyProvider(None, dev_fallback=SENDGRID_TEST_KEY),
                             options=ExportOptions(**{**FAST.__dict__, **options}),
                             client_factory=lambda key, reread: SendGridClient(
                                 key, base_url=self.sim.base_url, retry=FAST_RETRY, on_unauthorized=reread))

    def export(self, blob: str, dest: Destination | None = None, *, full: bool = False, lock_wait: float = 0.0,
               **options: Any) -> RunReport:
        dest = dest or destination()
        report = self.service(dest, **options).export(dest, blob, run_id=f"run-{uuid.uuid4().hex[:8]}", full=full,
                                                      lock_wait=lock_wait)
        assert self.sim.wait_for_jobs(10)  # list removals are jobs the run does not wait for
        return report

    def stored_report(self, report: RunReport) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.runs.download_blob(f"reports/{report.run_id}.json").readall())
        return data

    def state(self, leaf: str) -> bytes | None:
        blob = self.runs.get_blob_client(f"state/{NAME}/{leaf}")
        return blob.download_blob().readall() if blob.exists() else None

    def snapshot(self) -> dict[str, int]:
        """email -> fingerprint, as stored in Azurite (the header line is skipped)."""
        return stored_snapshot(self.runs, NAME)

    def checkpoint(self) -> dict[str, Any] | None:
        data = self.state("checkpoint.json")
        return json.loads(data) if data is not None else None

    def lease_state(self) -> str:
        return str(self.runs.get_blob_client(f"state/{NAME}/lock").get_blob_properties().lease.state)

    # -- what reached SendGrid --

    def sent(self, since: int = 0) -> list[str]:
        """Emails carried by every PUT since the `since`-th upsert batch, in sending order."""
        return [email for batch in self.sim.upsert_batches[since:] for email in batch.emails]

    def count(self, endpoint: str) -> int:
        return self.sim.request_counts.get(endpoint, 0)

    def members(self, list_id: str = SENDGRID_TEST_LIST_ID) -> dict[str, str | None]:
        return {email: c.get("first_name") for email, c in self.sim.list_contacts(list_id).items()}


@pytest.fixture
def env(azurite: Azurite, caplog: pytest.LogCaptureFixture) -> Iterator[Env]:
    caplog.set_level(logging.DEBUG)
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    tag = uuid.uuid4().hex[:12]
    segments = blobs.create_container(f"segments-{tag}")
    runs = blobs.get_container_client(f"runs-{tag}")
    for sim in running_simulator():
        sim.create_list("other", list_id=OTHER_LIST_ID)
        try:
            yield Env(sim, blobs, segments, runs)
        finally:
            segments.delete_container()
            if runs.exists():
                runs.delete_container()
    assert SENDGRID_TEST_KEY not in caplog.text


def assert_accounted(report: RunReport) -> None:
    assert report.balanced, report.summary()


# -- (a) a refresh of an unchanged segment sends nothing -----------------------------------------------------

def test_a_second_export_of_the_same_file_sends_no_contact(env: Env) -> None:
    rows = profiles(30)
    blob = env.upload(rows)
    first = env.export(blob)
    assert (first.status, first.exported, first.unchanged_skipped) == ("succeeded", 30, 0)
    assert sorted(env.sent()) == sorted(e for e, _ in rows)
    puts = env.count(PUT)

    snapshot_etag = env.runs.get_blob_client(f"state/{NAME}/snapshot.txt").get_blob_properties().etag
    second = env.export(blob)  # the timer's refresh: same file, same version
    assert second.status == "succeeded", second.error
    # nothing changed, so the snapshot is not written again
    assert env.runs.get_blob_client(f"state/{NAME}/snapshot.txt").get_blob_properties().etag == snapshot_etag
    assert (second.unchanged_skipped, second.exported, second.not_sent, second.requests_sent) == (30, 0, 0, 0)
    assert second.batches == []
    assert env.count(PUT) == puts and len(env.sim.upsert_batches) == 1  # not one PUT, let alone one with contacts
    assert_accounted(second)
    stored = env.stored_report(second)
    assert (stored["status"], stored["unchanged_skipped"], stored["exported"]) == ("succeeded", 30, 0)

    # the platform writes the same segment again as a new file: the blob trigger exports it, sending nothing
    [outcome] = env.service().handle_new_blob(env.upload(rows))
    assert outcome.report is not None and outcome.report.status == "succeeded"
    assert (outcome.report.unchanged_skipped, outcome.report.exported) == (30, 0)
    assert env.count(PUT) == puts
    assert env.members() == dict(rows)


# -- (b) only new and changed profiles are sent; mirror removes the ones that left ---------------------------

def changed_segment() -> tuple[list[Profile], list[Profile], set[str], set[str]]:
    """40 profiles, then 10 of them changed, 7 gone and 5 new: (before, after, sent on refresh, gone)."""
    before = profiles(40)
    kept = before[:33]
    after = [(email, f"Changed{i}") if i < 10 else (email, first) for i, (email, first) in enumerate(kept)]
    after += profiles(5, prefix="new")
    return before, after, {e for e, _ in after[:10]} | {e for e, _ in after[33:]}, {e for e, _ in before[33:]}


@pytest.mark.parametrize("mode", ["mirror", "upsert"])
def test_changed_new_and_missing_profiles(env: Env, mode: str) -> None:
    dest = destination(mode=mode)
    before, after, expected_sent, gone = changed_segment()
    env.export(env.upload(before), dest)
    already = len(env.sim.upsert_batches)

    report = env.export(env.upload(after), dest)
    assert report.status == "succeeded", report.error
    sent = env.sent(already)
    assert len(sent) == 15 and set(sent) == expected_sent  # exactly the 10 changed and the 5 new, once each
    assert (report.exported, report.unchanged_skipped) == (15, 23)
    assert_accounted(report)

    if mode == "mirror":
        assert report.removed_from_list == 7
        assert env.members() == dict(after)  # the list is the segment, with the changed names
        assert env.count(SEARCH) >= 1 and env.count(REMOVE) >= 1
        for email in gone:  # off the list, still in the account
            contact = env.sim.contact(email)
            assert contact is not None and SENDGRID_TEST_LIST_ID not in contact["list_ids"]
        assert set(env.snapshot()) == {e for e, _ in after}  # removed contacts are forgotten
    else:
        assert report.removed_from_list == 0
        assert env.members() == {**dict(before), **dict(after)}
        assert env.count(SEARCH) == 0 and env.count(REMOVE) == 0
        assert set(env.snapshot()) == {e for e, _ in before + after}
    assert not any(r.method == "DELETE" and r.path.startswith("/v3/marketing/contacts") for r in env.sim.request_log)

    # the same file again: nothing to send, nothing (more) to remove
    removals = env.count(REMOVE)
    again = env.export(env.upload(after), dest)
    assert (again.status, again.exported, again.unchanged_skipped, again.removed_from_list) == ("succeeded", 0, 38, 0)
    assert len(env.sim.upsert_batches) == already + 1 and env.count(REMOVE) == removals


def test_a_failed_removal_keeps_the_export_and_is_retried_by_the_next_refresh(env: Env) -> None:
    dest = destination(mode="mirror")
    rows = profiles(10)
    env.export(env.upload(rows), dest)
    changed = [(rows[0][0], "New"), *rows[1:9]]  # 1 changed, 1 left
    env.sim.inject("status", status=503, count=3, method="POST", path="/v3/marketing/contacts/search/emails")
    report = env.export(env.upload(changed), dest)
    assert (report.exported, report.unchanged_skipped, report.removed_from_list) == (1, 8, 0)
    assert any("left the segment failed" in note and "503" in note for note in report.notes), report.notes
    assert env.members() == {**dict(rows), **dict(changed)}
    assert rows[9][0] in env.snapshot() and env.checkpoint() is None  # the changed contact is recorded as sent
    retry = env.export(env.upload(changed), dest)
    assert (retry.exported, retry.removed_from_list) == (0, 1)
    assert env.members() == dict(changed)


def test_a_row_rejected_for_another_field_does_not_take_its_contact_off_a_mirrored_list(env: Env) -> None:
    """The profile is still in the segment, only this version of one field is invalid: it is not a departure."""
    dest = destination(mode="mirror")
    rows = profiles(10)
    env.export(env.upload(rows), dest)
    bad = [*rows[:9], (rows[9][0], "N" * 60)]  # first_name over SendGrid's 50 characters: the row is rejected
    report = env.export(env.upload(bad), dest)
    assert [(r.row, r.field) for r in report.rejected] == [(10, "first_name")]
    assert report.removed_from_list == 0 and env.count(REMOVE) == 0
    assert env.members() == dict(rows)
    assert report.status == "succeeded", report.error
    assert rows[9][0] in env.snapshot()  # still tracked: it is removed once it really leaves
    gone = env.export(env.upload(rows[:9]), dest)
    assert gone.removed_from_list == 1 and env.members() == dict(rows[:9])


def test_a_mirror_run_with_unreadable_rows_sends_changes_but_removes_nobody(env: Env) -> None:
    """A row the reader cannot parse has no email: it may hold a profile that seems to have left. Such a run
    sends its new and changed contacts, removes nobody (with a note), and the next clean run removes the
    profiles that really left."""
    dest = destination(mode="mirror")
    rows = profiles(10)
    env.export(env.upload(rows), dest)
    # p000 changed; p008's row is broken (three values under a two-column header); p009 left the segment
    lines = [f"{rows[0][0]},Changed", *(f"{e},{f}" for e, f in rows[1:8]), f"{rows[8][0]},{rows[8][1]},extra"]
    blob = f"{NAME}/broken.csv"
    env.segments.upload_blob(blob, ("Email,First\n" + "\n".join(lines) + "\n").encode())
    report = env.export(blob, dest)
    assert report.status == "succeeded", report.error
    assert [(r.row, r.field) for r in report.rejected] == [(9, "row")]
    assert (report.exported, report.unchanged_skipped, report.removed_from_list) == (1, 7, 0)
    assert env.count(REMOVE) == 0 and env.count(SEARCH) == 0
    assert env.members() == {**dict(rows), rows[0][0]: "Changed"}  # p008 and p009 are still on the list
    assert any("1 row(s) could not be read" in note and "2 contact(s) missing from this file were not removed"
               in note for note in report.notes), report.notes
    assert any("could not be read" in note for note in env.stored_report(report)["notes"])
    assert {rows[8][0], rows[9][0]} <= set(env.snapshot())  # still tracked for the next run
    assert_accounted(report)

    clean = env.export(env.upload([(rows[0][0], "Changed"), *rows[1:9]]), dest)  # p008 readable again
    assert (clean.status, clean.exported, clean.removed_from_list) == ("succeeded", 0, 1), clean.error
    assert env.members() == {**dict(rows[:9]), rows[0][0]: "Changed"}  # only p009, which really left


# -- (c) a run killed after its second batch resumes without sending a batch twice ---------------------------

CRASH_AFTER_SECOND_BATCH = """
import os, signal, sys
import shared.state.sync_state as sync_state
from shared.pipeline.engine import ExportOptions
from shared.service.export_service import ExportService

sync_state.LEASE_SECONDS = 15  # the shortest lease Blob Storage grants: the test waits for it to expire
record = sync_state.SyncState.batch_accepted

def record_then_die(self, number, job_id):
    record(self, number, job_id)
    if number == 2:  # the checkpoint of batch 2 is written: the process dies here, no cleanup at all
        os.kill(os.getpid(), signal.SIGKILL)

sync_state.SyncState.batch_accepted = record_then_die
service = ExportService.from_environment(options=ExportOptions(max_contacts_per_request=4, poll_interval=0.01))
destination = service.destinations.get(sys.argv[1])
service.export(destination, sys.argv[2], run_id="killed-run")
sys.exit(3)  # not reached
"""


def test_a_run_killed_after_its_second_batch_resumes_without_sending_any_batch_twice(
        env: Env, azurite: Azurite) -> None:
    dest = destination(mode="mirror")
    before, after, expected_sent, gone = changed_segment()
    env.export(env.upload(before), dest)
    already = len(env.sim.upsert_batches)
    blob = env.upload(after)

    settings = {"AzureWebJobsStorage": azurite.connection_string, "SEGMENTS_CONTAINER": env.segments.container_name,
                "RUNS_CONTAINER": env.runs.container_name, "SENDGRID_BASE_URL": env.sim.base_url,
                "LOCAL_DEV_SENDGRID_API_KEY": SENDGRID_TEST_KEY,
                "DESTINATIONS_JSON": json.dumps({"destinations": [dest.model_dump(mode="json")]})}
    environment = {k: v for k, v in os.environ.items() if k not in ("KEY_VAULT_URL", "AZURE_CLIENT_ID")}
    killed = subprocess.run([sys.executable, "-c", CRASH_AFTER_SECOND_BATCH, NAME, blob], cwd=ROOT,
                            env={**environment, **settings}, capture_output=True, timeout=60, check=False)
    died_at = time.monotonic()
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert SENDGRID_TEST_KEY.encode() not in killed.stdout + killed.stderr

    # what the dead run left: batches 1-2 (of 4 contacts) accepted and checkpointed, nothing removed yet
    first_two = env.sent(already)
    assert len(first_two) == 8 and len(env.sim.upsert_batches) == already + 2
    checkpoint = env.checkpoint()
    assert checkpoint is not None and sorted(checkpoint["accepted"]) == ["1", "2"]
    assert env.count(REMOVE) == 0 and set(env.members()) >= gone
    # its lease outlives it: a re-run now is refused, and touches nothing
    assert env.lease_state() == "leased"
    busy = env.export(blob, dest, max_contacts_per_request=4)
    assert busy.status == "refused" and busy.error is not None and "in progress" in busy.error
    assert len(env.sim.upsert_batches) == already + 2 and env.checkpoint() == checkpoint

    # ... until it expires (nobody renews it), then the re-run resumes after batch 2
    while env.lease_state() == "leased":
        assert time.monotonic() - died_at < 30, "the dead run's lease did not expire"
        time.sleep(0.5)
    resumed = env.export(blob, dest, max_contacts_per_request=4)
    assert resumed.status == "succeeded", resumed.error
    assert [(b.number, b.resumed) for b in resumed.batches] == [(1, True), (2, True), (3, False), (4, False)]
    sent = env.sent(already)
    assert sorted(sent) == sorted(expected_sent)  # every changed/new contact exactly once across both runs
    assert len(env.sim.upsert_batches) == already + 4
    assert (resumed.exported, resumed.unchanged_skipped, resumed.removed_from_list) == (15, 23, 7)
    assert env.members() == dict(after)  # exactly the segment
    assert env.checkpoint() is None and set(env.snapshot()) == {e for e, _ in after}
    assert env.lease_state() == "available"


# -- (d) the safety valve ------------------------------------------------------------------------------------

def test_the_safety_valve_refuses_a_run_that_would_remove_90_percent(env: Env) -> None:
    dest = destination(mode="mirror")
    rows = profiles(20)
    env.export(env.upload(rows), dest)
    snapshot = env.state("snapshot.txt")
    requests = len(env.sim.request_log)

    truncated = [rows[0], (rows[1][0], "Changed")]  # an incomplete file: 18 of 20 contacts "left"
    report = env.export(env.upload(truncated), dest)
    assert report.status == "refused"
    assert report.error is not None
    for words in ("safety valve", "remove 18 of 20", "90%", "max_removal_fraction 20%", "Nothing was sent"):
        assert words in report.error
    assert len(env.sim.request_log) == requests  # no PUT (not even the changed contact), no search, no DELETE
    assert env.members() == dict(rows)
    assert env.state("snapshot.txt") == snapshot and env.checkpoint() is None
    stored = env.stored_report(report)
    assert stored["status"] == "refused" and "safety valve" in stored["error"] and stored["removed_from_list"] == 0
    assert_accounted(report)

    # the complete file next time: nothing changed, nothing removed
    fine = env.export(env.upload(rows), dest)
    assert (fine.status, fine.exported, fine.unchanged_skipped, fine.removed_from_list) == ("succeeded", 0, 20, 0)


def test_the_safety_valve_lets_a_few_removals_through_on_a_small_list(env: Env) -> None:
    """Removing 1 of 4 is 25%, over max_removal_fraction 20%: without min_removals_checked a small list could
    never lose anyone. Up to min_removals_checked (10) removals pass; 18 of 20 is still refused."""
    strict = destination(mode="mirror", min_removals_checked=0)
    rows = profiles(4)
    env.export(env.upload(rows), strict)
    refused = env.export(env.upload(rows[:3]), strict)  # the fraction alone decides: 1 of 4 is refused
    assert refused.status == "refused" and refused.error is not None and "remove 1 of 4 contacts (25%)" in refused.error
    assert env.members() == dict(rows)

    dest = destination(mode="mirror")  # min_removals_checked=10 by default
    assert dest.min_removals_checked == 10
    allowed = env.export(env.upload(rows[:3]), dest)
    assert (allowed.status, allowed.removed_from_list, allowed.unchanged_skipped) == ("succeeded", 1, 3), allowed.error
    assert env.members() == dict(rows[:3]) and set(env.snapshot()) == {e for e, _ in rows[:3]}

    many = profiles(20)  # p000..p002 are the three above, unchanged
    env.export(env.upload(many), dest)
    requests = len(env.sim.request_log)
    still = env.export(env.upload(many[:2]), dest)  # 18 of 20: over both the count and the fraction
    assert still.status == "refused" and still.error is not None and "remove 18 of 20 contacts (90%)" in still.error
    assert "min_removals_checked 10" in still.error
    assert len(env.sim.request_log) == requests and env.members() == dict(many)


# -- (e) contacts of errored or failed import jobs are sent again -------------------------------------------

def test_contacts_of_errored_and_failed_import_jobs_are_not_recorded_and_are_sent_again(env: Env) -> None:
    rows = profiles(30)
    blob = env.upload(rows)
    env.sim.inject("job_errored", errored=2)  # batch 1's job: 8 applied, 2 errored
    env.sim.inject("job_failed")  # batch 2's job: nothing applied
    report = env.export(blob, max_contacts_per_request=10)
    assert report.status == "partial"
    assert report.error is not None and "sent again" in report.error
    assert [b.status for b in report.batches] == ["errored", "failed", "completed"]
    assert (report.exported, report.in_failed_jobs) == (10, 20)
    assert_accounted(report)
    failed = {e for e, _ in rows[:20]}
    stored = env.stored_report(report)
    assert stored["failed_job_rows"] == [{"source": blob, "first_row": 1, "last_row": 20}]  # one range, not 20 rows
    assert set(env.snapshot()) == {e for e, _ in rows[20:]}  # only the completed job's contacts

    refresh = env.export(blob, max_contacts_per_request=10)
    assert refresh.status == "succeeded", refresh.error
    assert set(env.sent(3)) == failed and len(env.sent(3)) == 20
    assert (refresh.exported, refresh.unchanged_skipped, refresh.failed_job_rows) == (20, 10, [])
    assert env.members() == dict(rows)
    assert set(env.snapshot()) == {e for e, _ in rows}


def test_a_changed_contact_whose_job_failed_is_sent_again(env: Env) -> None:
    rows = profiles(10)
    env.export(env.upload(rows))
    changed = [(rows[0][0], "New"), *rows[1:]]
    blob = env.upload(changed)
    env.sim.inject("job_failed")
    failed = env.export(blob)
    assert (failed.status, failed.in_failed_jobs) == ("partial", 1)
    assert env.members()[rows[0][0]] == rows[0][1]
    refresh = env.export(blob)
    assert (refresh.status, refresh.exported, refresh.unchanged_skipped) == ("succeeded", 1, 9)
    assert env.sent(2) == [rows[0][0]] and env.members() == dict(changed)


# -- (f) a forced full re-sync --------------------------------------------------------------------------------

def test_a_full_resync_sends_every_profile_again(env: Env) -> None:
    rows = profiles(25)
    blob = env.upload(rows)
    env.export(blob)
    full = env.export(blob, full=True)
    assert (full.status, full.exported, full.unchanged_skipped) == ("succeeded", 25, 0)
    assert sorted(env.sent(1)) == sorted(e for e, _ in rows)
    assert env.export(blob).exported == 0  # and the next refresh is incremental again
    assert len(env.sim.upsert_batches) == 2


def test_a_full_resync_in_mirror_mode_still_removes_the_profiles_that_left(env: Env) -> None:
    dest = destination(mode="mirror")
    rows = profiles(25)
    env.export(env.upload(rows), dest)
    report = env.export(env.upload(rows[:22]), dest, full=True)
    assert (report.status, report.exported, report.unchanged_skipped) == ("succeeded", 22, 0)
    assert report.removed_from_list == 3 and env.members() == dict(rows[:22])
    assert set(env.snapshot()) == {e for e, _ in rows[:22]}
    # full or not, the safety valve still guards the list
    refused = env.export(env.upload(rows[:2]), dest, full=True)
    assert refused.status == "refused" and env.members() == dict(rows[:22])


def test_the_cli_keeps_no_sync_state_so_every_cli_export_is_a_full_one(
        env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    rows = profiles(12)
    env.export(env.upload(rows))  # the service's snapshot now holds all 12
    path = tmp_path / "segment.csv"
    path.write_bytes(csv_bytes(rows))
    config = tmp_path / "destinations.json"
    config.write_text(json.dumps({"destinations": [destination().model_dump(mode="json")]}), encoding="utf-8")
    for name in ("KEY_VAULT_URL", "AZURE_CLIENT_ID", "DESTINATIONS_JSON"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SENDGRID_BASE_URL", env.sim.base_url)
    monkeypatch.setenv("LOCAL_DEV_SENDGRID_API_KEY", SENDGRID_TEST_KEY)
    snapshot = env.state("snapshot.txt")
    assert cli_main(["export", str(path), "--config", str(config), "--destination", NAME]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["status"], out["exported"], out["unchanged_skipped"]) == ("succeeded", 12, 0)
    assert sorted(env.sent(1)) == sorted(e for e, _ in rows)
    assert env.state("snapshot.txt") == snapshot  # and it leaves the service's state alone


def test_cli_sync_runs_a_destination_like_the_functions_incremental_and_full(
        env: Env, azurite: Azurite, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    rows = profiles(12)
    env.upload(rows)
    for name in ("KEY_VAULT_URL", "AZURE_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    monkeypatch.setenv("SEGMENTS_CONTAINER", env.segments.container_name)
    monkeypatch.setenv("RUNS_CONTAINER", env.runs.container_name)
    monkeypatch.setenv("DESTINATIONS_JSON", json.dumps({"destinations": [destination().model_dump(mode="json")]}))
    monkeypatch.setenv("SENDGRID_BASE_URL", env.sim.base_url)
    monkeypatch.setenv("LOCAL_DEV_SENDGRID_API_KEY", SENDGRID_TEST_KEY)

    def sync(*extra: str) -> dict[str, Any]:
        assert cli_main(["sync", NAME, *extra]) == 0
        out: dict[str, Any] = json.loads(capsys.readouterr().out)
        return out

    first = sync()
    assert (first["exported"], first["unchanged_skipped"]) == (12, 0)
    again = sync()  # the same run state as the functions: nothing changed, nothing sent
    assert (again["exported"], again["unchanged_skipped"], len(env.sim.upsert_batches)) == (0, 12, 1)
    full = sync("--full")
    assert (full["exported"], full["unchanged_skipped"]) == (12, 0)
    assert sorted(env.sent(1)) == sorted(e for e, _ in rows)
    assert cli_main(["sync", "nope"]) == 2 and "unknown destination" in capsys.readouterr().out
    monkeypatch.setenv("SEGMENTS_CONTAINER", f"missing-{uuid.uuid4().hex[:8]}")  # e.g. a typo in the setting
    assert cli_main(["sync", NAME]) == 2 and "no segment file" in capsys.readouterr().out


# -- (g) one run per destination at a time --------------------------------------------------------------------

def test_a_second_run_of_a_destination_is_refused_while_the_first_holds_the_lock(env: Env) -> None:
    first_rows, second_rows = profiles(20), profiles(5, prefix="q")
    first_blob, second_blob = env.upload(first_rows), env.upload(second_rows)
    env.sim.latency = 0.15  # the first run takes ~1 s: 4 PUTs and their polls
    reports: list[RunReport] = []
    runner = threading.Thread(target=lambda: reports.append(env.export(first_blob, max_contacts_per_request=5)))
    runner.start()
    deadline = time.monotonic() + 10
    while not (env.runs.exists() and env.runs.get_blob_client(f"state/{NAME}/lock").exists()
               and env.lease_state() == "leased"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    second = env.export(second_blob)
    runner.join(30)
    assert second.status == "refused"
    assert second.error is not None and second.error.startswith(f"another run of destination {NAME} is in progress")
    assert env.stored_report(second)["status"] == "refused"
    assert reports and reports[0].status == "succeeded" and reports[0].exported == 20
    assert set(env.sent()) == {e for e, _ in first_rows}  # nothing of the refused run reached SendGrid
    assert env.lease_state() == "available"  # released at the end of the run
    env.sim.latency = 0.0
    later = env.export(second_blob)
    assert later.status == "succeeded" and later.exported == 5


def test_a_triggered_run_waits_for_the_running_export_of_its_destination(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shared.state.lock.LOCK_POLL_SECONDS", 0.2)
    first_rows, second_rows = profiles(20), profiles(5, prefix="w")
    first_blob, second_blob = env.upload(first_rows), env.upload(second_rows)
    env.sim.latency = 0.15
    reports: list[RunReport] = []
    runner = threading.Thread(target=lambda: reports.append(env.export(first_blob, max_contacts_per_request=5)))
    runner.start()
    deadline = time.monotonic() + 10
    while not (env.runs.exists() and env.runs.get_blob_client(f"state/{NAME}/lock").exists()
               and env.lease_state() == "leased"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    second = env.export(second_blob, lock_wait=30)
    runner.join(30)
    env.sim.latency = 0.0
    assert reports and reports[0].status == "succeeded"
    assert second.status == "succeeded" and second.exported == 5  # ran after the first, not beside it
    assert set(env.sent()) == {e for e, _ in first_rows + second_rows}


def test_the_lease_is_renewed_while_a_run_lives(container: ContainerClient) -> None:
    holder = SyncState(container, NAME, config_digest="c", lease_seconds=15)
    holder.acquire()
    try:
        time.sleep(17)  # past the 15 s lease: only renewal keeps it
        with pytest.raises(DestinationBusy):
            SyncState(container, NAME, config_digest="c").acquire()
    finally:
        holder.release()
    after = SyncState(container, NAME, config_digest="c")
    after.acquire()
    after.release()


def test_a_lease_is_renewed_once_it_ages_not_before_each_write_and_its_blob_made_once(
        blob_service: BlobServiceClient, leases_run_out: Callable[[], None], monkeypatch: pytest.MonkeyPatch) -> None:
    renewals: list[str] = []
    renew = BlobLeaseClient.renew

    def counted(self: BlobLeaseClient, **kwargs: Any) -> None:
        renewals.append(self.id)
        renew(self, **kwargs)

    monkeypatch.setattr(BlobLeaseClient, "renew", counted)
    created: list[str] = []
    create = DestinationLock._create_lock_blob

    def counted_create(self: DestinationLock) -> None:
        created.append(self.destination)
        create(self)

    monkeypatch.setattr(DestinationLock, "_create_lock_blob", counted_create)
    container = blob_service.get_container_client(f"fresh-{uuid.uuid4().hex[:8]}")  # no container yet
    holder = SyncState(container, NAME, config_digest="c")
    holder.acquire()  # the lease found no blob: container and lock blob made, then the lease taken
    try:
        assert created == [NAME]
        assert container.get_blob_client(f"state/{NAME}/lock").get_blob_properties().lease.state == "leased"
        holder.load(source_id="f", full=False)
        for batch in range(1, 4):
            holder.batch_accepted(batch, f"job-{batch}")  # a checkpoint write each, moments after the lease
        assert renewals == []
        leases_run_out()  # a lease's worth of time later (Azurite's lease is still live: renewing works)
        holder.batch_accepted(4, "job-4")
        holder.batch_accepted(5, "job-5")
        assert len(renewals) == 1
        checkpoint = json.loads(container.download_blob(f"state/{NAME}/checkpoint.json").readall())
        assert checkpoint["accepted"] == {str(b): f"job-{b}" for b in range(1, 6)}
    finally:
        holder.release()
    again = SyncState(container, NAME, config_digest="c")
    again.acquire()  # the blob is there now: nothing is created again
    again.release()
    assert created == [NAME]
    container.delete_container()


def test_a_run_that_lost_its_lock_records_no_more_state(container: ContainerClient,
                                                        leases_run_out: Callable[[], None]) -> None:
    holder = SyncState(container, NAME, config_digest="c", lease_seconds=15)
    holder.acquire()
    holder.load(source_id="f", full=False)
    holder.batch_accepted(1, "job-1")
    # its lease ends without it noticing (in real life: renewals failed for longer than the lease) and
    # another run takes the lock
    leases_run_out()
    BlobLeaseClient(container.get_blob_client(f"state/{NAME}/lock")).break_lease(lease_break_period=0)
    other = SyncState(container, NAME, config_digest="c")
    other.acquire()
    try:
        with pytest.raises(LockLost):
            holder.batch_accepted(2, "job-2")
        checkpoint = json.loads(container.download_blob(f"state/{NAME}/checkpoint.json").readall())
        assert checkpoint["accepted"] == {"1": "job-1"}
        with pytest.raises(LockLost):
            holder.write_snapshot(*_one_contact(), dropped=set())
        assert not container.get_blob_client(f"state/{NAME}/snapshot.txt").exists()
        holder.release()  # does not release the other run's lease
        with pytest.raises(DestinationBusy):
            SyncState(container, NAME, config_digest="c").acquire()
    finally:
        other.release()


def _one_contact() -> tuple[list[EntryBlock]]:
    def one(value: int) -> numpy.ndarray[Any, Any]:
        return numpy.array([value], dtype=numpy.int64)

    return ([(one(email_key("a@example.com")), one(fingerprint(b"{}")), one(0), [b"a@example.com"])],)


# -- (h) what invalidates the snapshot -------------------------------------------------------------------------

def test_a_changed_field_mapping_sends_everything_again_and_mirror_still_removes(env: Env) -> None:
    rows = profiles(20)
    last_names = [f"L{i}" for i in range(20)]
    dest = destination(mode="mirror")
    env.export(env.upload(rows, extra={"Last": last_names}), dest)

    # settings that do not change what is sent keep the snapshot
    cosmetic = destination(mode="mirror", display_name="VIPs", max_profiles=500, max_removal_fraction=0.3)
    same = env.export(env.upload(rows, extra={"Last": last_names}), cosmetic)
    assert (same.exported, same.unchanged_skipped) == (0, 20)

    remapped = destination(mode="mirror", field_mapping={"email": "Email", "first_name": "First",
                                                        "last_name": "Last"})
    report = env.export(env.upload(rows[:18], extra={"Last": last_names[:18]}), remapped)
    assert report.status == "succeeded", report.error
    assert (report.exported, report.unchanged_skipped, report.removed_from_list) == (18, 0, 2)
    assert sorted(env.sent(1)) == sorted(e for e, _ in rows[:18])
    listed = env.sim.list_contacts(SENDGRID_TEST_LIST_ID)
    assert {e: c.get("last_name") for e, c in listed.items()} == {e: f"L{i}" for i, (e, _) in enumerate(rows[:18])}
    again = env.export(env.upload(rows[:18], extra={"Last": last_names[:18]}), remapped)
    assert (again.exported, again.unchanged_skipped) == (0, 18)


def test_contacts_a_full_resync_could_not_import_are_sent_again_next_refresh(env: Env) -> None:
    """A full re-sync is asked for when SendGrid's copy may differ from ours: a contact whose job failed in it
    must not count as unchanged next time, although its body is the one recorded before."""
    rows = profiles(6)
    blob = env.upload(rows)
    env.export(blob)
    env.sim.inject("job_failed")
    full = env.export(blob, full=True, max_contacts_per_request=3)
    assert (full.status, full.in_failed_jobs, full.exported) == ("partial", 3, 3)
    refresh = env.export(blob)
    assert (refresh.exported, refresh.unchanged_skipped) == (3, 3)
    assert sorted(env.sent(3)) == sorted(e for e, _ in rows[:3])


def test_a_changed_list_sends_everything_to_the_new_list_and_removes_nothing(env: Env) -> None:
    rows = profiles(10)
    env.export(env.upload(rows), destination(mode="mirror"))
    moved = destination(mode="mirror", list_id=OTHER_LIST_ID)
    report = env.export(env.upload(rows[:3]), moved)  # the old list's snapshot says nothing about the new list
    assert (report.status, report.exported, report.unchanged_skipped, report.removed_from_list) == (
        "succeeded", 3, 0, 0)
    assert env.members(OTHER_LIST_ID) == dict(rows[:3])
    assert env.members() == dict(rows) and env.count(SEARCH) == 0
    assert set(env.snapshot()) == {e for e, _ in rows[:3]}


def test_timer_settles_pending_jobs_of_a_failed_run_without_calling_it_succeeded(env: Env) -> None:
    """A run that stopped (later batches not sent) while an earlier job was still pending: when the timer
    finds that job completed, the run's contacts in it count as exported, but the run stays failed."""
    blob = env.upload(profiles(8))
    env.sim.job_delay = 1.0  # batch 1's import job outlives the run's poll timeout
    service = env.service(max_contacts_per_request=4, poll_timeout=0.05)
    make_client = service.client_for

    def client_for(dest: Destination) -> SendGridClient:
        client = make_client(dest)
        upsert = client.upsert_contacts

        def first_then_outage(body: bytes) -> Any:
            answer = upsert(body)
            env.sim.inject("status", method="PUT", status=500, count=100)  # batch 2 never gets through
            return answer

        client.upsert_contacts = first_then_outage  # type: ignore[method-assign]
        return client

    service.client_for = client_for  # type: ignore[method-assign]
    report = service.export(destination(), blob, run_id="r-fp")
    assert (report.status, report.pending, report.not_sent) == ("failed", 4, 4)
    env.sim.faults.clear()
    assert env.sim.wait_for_jobs(10)
    settled = env.service().finish_pending_runs()
    assert [r["run_id"] for r in settled] == ["r-fp"]
    stored = env.service().report("r-fp")
    assert stored is not None
    assert (stored["status"], stored["exported"], stored["pending"], stored["not_sent"]) == ("failed", 4, 0, 4)
    assert stored["balanced"]


def test_mirror_removes_leavers_although_one_cannot_be_searched_and_one_was_deleted(env: Env) -> None:
    """SendGrid's search takes addresses up to 100 characters (upserts take 254), and its list removal
    answers 404 for a whole call when one contact was deleted meanwhile: neither may stop the others."""
    long_one = f"{'x' * 60}@{'d' * 50}.example.com"  # 123 characters, a valid address
    dest = destination(mode="mirror")
    rows = [*profiles(12), (long_one, "Long")]
    assert env.export(env.upload(rows), dest).exported == 13
    assert env.sim.delete_contact(rows[1][0])  # deleted in SendGrid by hand
    report = env.export(env.upload(rows[3:12]), dest)  # p000, p001, p002 and the long one leave
    assert report.status == "succeeded", report.error
    assert report.removed_from_list == 2  # p000 and p002; p001 is gone from the account already
    assert not {rows[0][0], rows[2][0]} & set(env.members())
    assert any("could not be looked up" in note for note in report.notes)
    assert long_one in env.members() and long_one in env.snapshot()  # pending, not forgotten
    assert {rows[0][0], rows[1][0], rows[2][0]}.isdisjoint(env.snapshot())
    assert env.sim.take_violations() == []


def test_a_snapshot_of_the_first_format_is_upgraded_and_mirror_still_removes_who_left(env: Env) -> None:
    """Snapshots written before keys became xxh3 hold blake2b keys: rewritten in place on first load, their
    membership kept (leavers are removed) while every contact is sent once more (its fingerprint is unknown)."""
    import hashlib

    dest = destination(mode="mirror")
    rows = profiles(25)
    env.export(env.upload(rows), dest)
    header, *lines = (env.state("snapshot.txt") or b"").decode().splitlines()
    old = json.loads(header)

    def blake(email: str) -> int:
        return int.from_bytes(hashlib.blake2b(email.encode(), digest_size=8).digest(), "little", signed=True)

    emails = list(lines)  # v4: a line is its entry's email
    v1 = [f"{blake(e)} 7 {e}" for e in emails]
    v1.sort(key=lambda line: int(line.split(" ")[0]))
    old["format"] = "segment-to-sendgrid snapshot v1"
    env.runs.upload_blob(f"state/{NAME}/snapshot.txt", "\n".join([json.dumps(old), *v1, ""]).encode(),
                         overwrite=True)

    sent_before = len(env.sim.upsert_batches)
    report = env.export(env.upload(rows[:22]), dest)
    assert (report.status, report.exported, report.unchanged_skipped) == ("succeeded", 22, 0), report.error
    assert sorted(env.sent(sent_before)) == sorted(e for e, _ in rows[:22])
    assert report.removed_from_list == 3 and env.members() == dict(rows[:22])
    header, *lines = (env.state("snapshot.txt") or b"").decode().splitlines()
    assert json.loads(header)["format"] == SNAPSHOT_FORMAT
    keys = [email_key(line) for line in lines]
    assert keys == sorted(keys) == sorted(email_key(e) for e, _ in rows[:22])
    again = env.export(env.upload(rows[:22]), dest)
    assert (again.exported, again.unchanged_skipped) == (0, 22)


def test_mirror_never_removes_a_member_that_carries_a_leavers_address_as_an_alternate(env: Env) -> None:
    # SendGrid's search by email also matches alternate_emails: l@ left the segment (and was deleted in
    # SendGrid meanwhile) while a@, still in it, now carries l@ as an alternate. a@ must stay on the list.
    dest = destination(mode="mirror", field_mapping={"email": "Email", "first_name": "First",
                                                     "alternate_emails": "Alt"})
    rows = [("a@example.com", "A"), ("l@example.com", "L"), *profiles(5)]
    assert env.export(env.upload(rows, extra={"Alt": [""] * len(rows)}), dest).exported == 7
    assert env.sim.delete_contact("l@example.com")
    stay = [("a@example.com", "A"), *profiles(5)]
    report = env.export(env.upload(stay, extra={"Alt": ["l@example.com"] + [""] * 5}), dest)
    assert report.status == "succeeded", report.error
    assert report.removed_from_list == 0
    assert set(env.members()) == {e for e, _ in stay}
    assert "l@example.com" not in env.snapshot()  # not found as anyone's own email: gone


def test_a_changed_file_format_sends_everything_again_and_never_resumes_the_old_reading(env: Env) -> None:
    # Read as latin-1 by mistake, the UTF-8 name 'Zoë' became 'ZoÃ«'; once the encoding is fixed the same
    # file is read differently, so nothing the first reading sent may count as unchanged.
    rows = [(f"z{i}@example.com", "Zoë") for i in range(4)]
    blob = env.upload(rows)
    wrong = destination(file_format={"encoding": "latin-1"})
    assert env.export(blob, wrong).exported == 4
    assert set(env.members().values()) == {"ZoÃ«"}
    fixed = destination(file_format={"encoding": "utf-8"})
    report = env.export(blob, fixed)
    assert (report.exported, report.unchanged_skipped) == (4, 0), report.summary()
    assert not any(b.resumed for b in report.batches)
    assert set(env.members().values()) == {"Zoë"}


def test_a_late_trigger_of_an_older_file_is_skipped_instead_of_undoing_the_newer_one(env: Env) -> None:
    # Event Grid does not deliver in order: yesterday's file's event may come after today's was exported.
    dest = destination(mode="mirror")
    yesterday, today = profiles(20), profiles(23)
    older = env.upload(yesterday, name="2026-11-01")
    time.sleep(1.1)  # Last-Modified has whole seconds
    newer = env.upload(today, name="2026-11-02")
    service = env.service(dest)
    [first] = service.handle_new_blob(newer)
    assert first.report is not None and first.report.status == "succeeded"
    [late] = service.handle_new_blob(older)
    assert late.report is None and late.skipped is not None and newer in late.skipped
    assert env.members() == dict(today)  # the three newcomers are still on the list
    [again] = service.handle_new_blob(older)  # the host's retry of that event: skipped as done
    assert again.report is None
    # asked explicitly (HTTP, CLI), an older file is refused in mirror mode: it would undo the newer one
    refused = env.export(older, dest)
    assert refused.status == "refused" and "older than the current file" in (refused.error or "")
    assert env.members() == dict(today) and refused.balanced
    # in upsert mode it is the operator's call: its people are sent, nobody is removed
    upsert = destination(mode="upsert")
    assert env.export(older, upsert).status == "succeeded" and env.members() == dict(today)


def test_the_timer_settles_a_job_sendgrid_no_longer_knows_and_never_spends_past_its_budget(env: Env) -> None:
    service = env.service()
    run_id = "sync-20261101T060000Z-00000001"
    service.runs.save_report(run_id, {"run_id": run_id, "destination": NAME, "status": "partial", "pending": 2,
                                      "exported": 0, "in_failed_jobs": 0, "rows_read": 2, "rejected_count": 0,
                                      "batches": [{"number": 1, "job_id": "job-unknown-to-sendgrid",
                                                   "status": "pending", "contacts": 2}]})
    service.runs.mark_pending(run_id)
    assert service.finish_pending_runs(budget=0) == []  # no time left: left for the next timer run
    assert list(service.runs.pending_runs()) == [run_id]
    [settled] = service.finish_pending_runs()  # SendGrid answers 404 for the job: final, not pending for ever
    assert (settled["pending"], settled["in_failed_jobs"]) == (0, 2)
    assert settled["batches"][0]["status"] == "expired"
    assert list(service.runs.pending_runs()) == []
