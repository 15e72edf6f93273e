"""Fault suite: every failure the exporter meets in production, provoked in real parts.

SendGrid faults come from the simulator's fault switches (429 storms with X-RateLimit-Reset, 5xx bursts,
slow answers past the client's timeout, connections dropped before and after the body, import jobs that end
`errored` or `failed`); Key Vault is the HTTPS stand-in switched unavailable; Blob Storage is a private
Azurite stopped in the middle of a run. Nothing is mocked.

Every scenario checks the same invariants, then `test_summary` prints one line per fault:
- every row read is accounted for: exported, rejected (with field and reason), merged, in a failed import
  job or reported as not sent (`report.balanced`), and what the report calls exported is on the list;
- no contact reaches SendGrid twice within a run unless the run report says it may have
  (`possible_duplicate_sends`): the only way is a PUT whose answer was lost (connection dropped after the
  body, or a read timeout while SendGrid still processed it). SendGrid has no idempotency key and no list of
  import jobs, so the client cannot tell "lost before" from "lost after"; it resends (upserts are keyed by
  email, so the list ends the same) and the report counts it;
- a clear final status (`succeeded`, `partial`, `failed`) and, when not `succeeded`, an error that says why.
"""

from __future__ import annotations

import contextlib
import io
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient, LinearRetry

from sendgrid_simulator import Simulator
from shared.config.destinations import Destination, DestinationsDocument
from shared.config.secrets import ApiKeyProvider
from shared.config.settings import AppSettings
from shared.errors import SegmentFileError
from shared.pipeline.engine import ExportOptions, export_segment
from shared.pipeline.report import BatchResult, RunReport
from shared.sendgrid.client import RetryPolicy, SendGridClient
from shared.service.export_service import ExportService
from shared.source.sources import BlobContainerSource, LocalDirSource
from shared.state.sync_state import SyncState
from tests.azurite import Azurite, start_azurite
from tests.keyvault_standin import KeyVaultStandIn, _forget_challenge
from tests.sendgrid_fixture import SENDGRID_TEST_KEY, SENDGRID_TEST_LIST_ID, running_simulator

CONTACTS = "/v3/marketing/contacts"
IMPORTS = "/v3/marketing/contacts/imports/"
SECRET = "sendgrid-api-key"
BATCH = 25
SEGMENT = "faults/segment.csv"

# -- the segment file: 120 rows, 3 invalid addresses, 1 repeated address (last row wins) ------------------

ROW_COUNT = 120
INVALID_AT = frozenset({30, 60, 90})  # 1-based data rows holding an invalid address


def segment_rows() -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for number in range(1, ROW_COUNT):
        email = f"not-an-address-{number}" if number in INVALID_AT else f"user{number:03d}@example.com"
        rows.append((email, f"First{number}"))
    rows.append(("user001@example.com", "LastRowWins"))  # row 120 repeats row 1
    return rows


def segment_bytes() -> bytes:
    lines = ["Email,FirstName", *(f"{email},{first}" for email, first in segment_rows())]
    return ("\r\n".join(lines) + "\r\n").encode()


EXPECTED: dict[str, str] = {}
for _email, _first in segment_rows():
    if "@" in _email:
        EXPECTED[_email] = _first  # last row wins
VALID_UNIQUE = len(EXPECTED)  # 116
MERGED = ROW_COUNT - len(INVALID_AT) - VALID_UNIQUE  # 1
BATCHES = -(-VALID_UNIQUE // BATCH)  # 5


def make_destination(name: str = "faults", list_id: str = SENDGRID_TEST_LIST_ID) -> Destination:
    return Destination.model_validate({
        "name": name, "list_id": list_id, "api_key_secret": SECRET, "segments": ["faults/"],
        "field_mapping": {"email": "Email", "first_name": "FirstName"},
        "consent": {"agreed_by": "qa@contoso.com", "agreed_at": "2026-11-01T09:00:00Z"},
    })


OPTIONS = ExportOptions(max_contacts_per_request=BATCH, poll_interval=0.02, poll_timeout=10.0)


def fast_client(sim: Simulator, *, timeout: float = 2.0, max_attempts: int = 4, rate_limit_budget: float = 5.0,
                key: str = SENDGRID_TEST_KEY, on_unauthorized: Callable[[], str | None] | None = None
                ) -> SendGridClient:
    """Short backoff and budgets so a fault costs milliseconds, not the production minutes. The timeout stays
    at 2 s (a loaded test machine must not time out an ordinary request); the slow scenarios pass their own."""
    return SendGridClient(key, base_url=sim.base_url, timeout=httpx.Timeout(timeout, connect=timeout),
                          retry=RetryPolicy(max_attempts=max_attempts, backoff_base=0.01, backoff_max=0.05,
                                            rate_limit_budget=rate_limit_budget),
                          on_unauthorized=on_unauthorized)


# -- what a run did, as SendGrid saw it ----------------------------------------------------------------------

def settle(sim: Simulator, timeout: float = 10.0) -> None:
    """Wait for requests still being handled (a slow answer the client gave up on) and for every import job."""
    deadline = time.monotonic() + timeout
    while any(record.seconds == 0.0 for record in list(sim.request_log)):
        assert time.monotonic() < deadline, "the simulator is still handling requests"
        time.sleep(0.02)
    assert sim.wait_for_jobs(timeout)


def contacts_sent(sim: Simulator) -> list[str]:
    return [email for batch in sim.upsert_batches for email in batch.emails]


def duplicate_sends(sim: Simulator) -> int:
    """Contacts that reached SendGrid more than once (each extra copy counts)."""
    sent = contacts_sent(sim)
    return len(sent) - len(set(sent))


def puts(sim: Simulator) -> list[int | None]:
    return [r.status for r in sim.request_log if r.method == "PUT"]


@dataclass
class Row:
    fault: str
    rows: int  # rows in the file
    report: RunReport | None  # None: the run stopped before a report existed (raised an ExportError)
    status: str
    duplicates: int
    possible_duplicates: int
    error: str | None = None
    expect_duplicates: bool = False

    @property
    def read(self) -> int:
        return self.report.rows_read if self.report else 0

    @property
    def exported(self) -> int:
        return self.report.exported if self.report else 0

    @property
    def rejected(self) -> int:
        return self.report.rejected_count if self.report else 0

    @property
    def merged(self) -> int:
        return self.report.duplicates_merged if self.report else 0

    @property
    def failed_jobs(self) -> int:
        return self.report.in_failed_jobs if self.report else 0

    @property
    def pending(self) -> int:
        """Sent and accepted, but the import job's outcome is unknown (settled later by finish_pending_runs)."""
        return self.report.pending if self.report else 0

    @property
    def unsent(self) -> int:
        """Reported as not sent: the report's not_sent, plus every row of a run that stopped before reading it."""
        return (self.report.not_sent if self.report else 0) + (self.rows - self.read)

    def accounted(self) -> int:
        return self.exported + self.rejected + self.merged + self.failed_jobs + self.pending + self.unsent


def check_invariants(row: Row, sim: Simulator) -> None:
    """What every fault must leave behind; failures name the fault."""
    what = row.fault
    report = row.report
    assert row.status in ("succeeded", "partial", "failed"), what
    if row.status != "succeeded":
        assert row.error, f"{what}: a run that did not succeed must say why"
    if report is None or report.rows_read < row.rows:
        # Stopped before every row was read: only allowed when nothing at all went to SendGrid.
        assert row.status == "failed", what
        assert not sim.upsert_batches, f"{what}: contacts were sent by a run that never finished reading"
    if report is not None:
        assert report.balanced, f"{what}: report does not balance: {report.summary()}"
        assert (report.exported + report.rejected_count + report.duplicates_merged + report.in_failed_jobs
                + report.not_sent + report.pending + report.unchanged_skipped) == report.rows_read, what
        assert all(r.field and r.reason for r in report.rejected), f"{what}: a rejected row without a reason"
        if report.rows_read == row.rows:
            assert {(r.row, r.field) for r in report.rejected} == {(n, "email") for n in INVALID_AT}, what
        assert sum(len(r.rows) for r in report.failed_job_rows) == report.in_failed_jobs, what
        # What the report calls exported is on the list, with this file's values.
        members = sim.list_contacts(SENDGRID_TEST_LIST_ID)
        by_job = {batch.job_id: batch.emails for batch in sim.upsert_batches}
        completed = [b for b in report.batches if b.status == "completed"]
        exported = [email for b in completed for email in by_job[b.job_id or ""]]
        assert len(exported) == report.exported, f"{what}: exported count differs from the completed jobs"
        for email in exported:
            assert email in members, f"{what}: a contact reported exported is not on the list"
            assert members[email].get("first_name") == EXPECTED[email], what
        assert set(members) <= set(EXPECTED), f"{what}: the list holds a contact that is not in the file"
        if row.status == "succeeded":
            assert {e: c.get("first_name") for e, c in members.items()} == EXPECTED, what
    # No contact twice, unless the run itself reported that it may have sent it twice.
    assert row.duplicates <= row.possible_duplicates, (
        f"{what}: {row.duplicates} duplicate sends, the report admits {row.possible_duplicates}")
    if not row.expect_duplicates:
        assert row.duplicates == 0, f"{what}: unexpected duplicate sends"


def row_from(fault: str, sim: Simulator, report: RunReport, *, expect_duplicates: bool = False) -> Row:
    """Wait until SendGrid is done with the run, then check the invariants; the row is for the summary."""
    settle(sim)
    row = Row(fault, ROW_COUNT, report, report.status, duplicate_sends(sim), report.possible_duplicate_sends,
              report.error, expect_duplicates)
    check_invariants(row, sim)
    return row


@contextlib.contextmanager
def simulator() -> Iterator[Simulator]:
    """The `sendgrid_sim` fixture's body (one list, one key, OpenAPI validation), one per scenario."""
    running = running_simulator()
    sim = next(running)
    try:
        yield sim
    finally:
        with contextlib.suppress(StopIteration):
            next(running)


@dataclass
class Context:
    tmp_path: Path
    blob_service: BlobServiceClient

    def local_segment(self) -> LocalDirSource:
        folder = self.tmp_path / f"seg-{uuid.uuid4().hex[:6]}"
        (folder / "faults").mkdir(parents=True)
        (folder / SEGMENT).write_bytes(segment_bytes())
        return LocalDirSource(folder)


def run_engine(sim: Simulator, source: Any, client: SendGridClient, *,
               on_batch_accepted: Callable[[BatchResult], None] | None = None, sync: SyncState | None = None
               ) -> RunReport:
    try:
        return export_segment(make_destination(), source, SEGMENT, client, run_id=f"faults-{uuid.uuid4().hex[:8]}",
                              options=OPTIONS, on_batch_accepted=on_batch_accepted, sync=sync).report
    finally:
        client.close()


# -- SendGrid faults (engine + client against the simulator) -------------------------------------------------

def fault_429_storm(ctx: Context) -> Row:
    """429s from an injected storm and from the simulator's own per-endpoint window: the client waits until
    X-RateLimit-Reset each time, never gives up within its budget, and sends nothing twice."""
    with simulator() as sim:
        sim.set_rate_limit({"limit": 1000, "window": 0.25, "per_endpoint": {"PUT /v3/marketing/contacts": 2}})
        sim.inject("rate_limit", count=4, method="PUT", path=CONTACTS, seconds=0.15)
        sim.inject("rate_limit", count=2, method="GET", path=IMPORTS, seconds=0.1)
        client = fast_client(sim)
        started = time.monotonic()
        report = run_engine(sim, ctx.local_segment(), client)
        elapsed = time.monotonic() - started
        assert report.status == "succeeded", report.error
        assert client.stats.rate_limited >= 6
        # Each injected 429 pointed 0.1-0.15 s ahead: the client waited for it rather than hammering.
        assert client.stats.rate_limit_wait_seconds >= 4 * 0.1 + 2 * 0.05
        assert elapsed >= client.stats.rate_limit_wait_seconds * 0.9
        assert puts(sim).count(429) >= 4 and puts(sim).count(202) == BATCHES
        return row_from("429 storm (X-RateLimit-Reset)", sim, report)


def fault_429_past_budget(ctx: Context) -> Row:
    """A storm that outlasts the client's wait budget, starting after batch 2: the run stops with a clear
    `failed`, batches 1-2 are exported, the rest reported as not sent."""
    with simulator() as sim:
        def storm(outcome: BatchResult) -> None:
            if outcome.number == 2:
                sim.inject("rate_limit", count=100, method="PUT", path=CONTACTS, seconds=0.2)

        report = run_engine(sim, ctx.local_segment(), fast_client(sim, rate_limit_budget=0.5),
                            on_batch_accepted=storm)
        assert report.status == "failed"
        assert report.error and "rate limited" in report.error and "re-run" in report.error
        assert report.exported == 2 * BATCH
        assert report.not_sent == VALID_UNIQUE - 2 * BATCH
        sim.faults.clear()
        return row_from("429 past the wait budget", sim, report)


def fault_5xx_burst(ctx: Context) -> Row:
    """500, 502 and 503 on the same PUT, then 503s while polling the import jobs: retried with backoff."""
    with simulator() as sim:
        for status in (500, 502, 503):
            sim.inject("status", method="PUT", path=CONTACTS, status=status)
        sim.inject("status", count=2, method="GET", path=IMPORTS, status=503)
        client = fast_client(sim, max_attempts=4)
        report = run_engine(sim, ctx.local_segment(), client)
        assert report.status == "succeeded", report.error
        assert puts(sim)[:4] == [500, 502, 503, 202]
        assert client.stats.retries == 5
        return row_from("HTTP 500/502/503 burst", sim, report)


def fault_5xx_past_retries(ctx: Context) -> Row:
    """503s that outlast the retry budget on batch 3: `failed`, batches 1-2 exported, the rest not sent."""
    with simulator() as sim:
        def outage(outcome: BatchResult) -> None:
            if outcome.number == 2:
                sim.inject("status", count=4, method="PUT", path=CONTACTS, status=503)

        report = run_engine(sim, ctx.local_segment(), fast_client(sim, max_attempts=4), on_batch_accepted=outage)
        assert report.status == "failed"
        assert report.error and "HTTP 503 after 4 attempts" in report.error
        assert report.exported == 2 * BATCH and report.not_sent == VALID_UNIQUE - 2 * BATCH
        assert [b.status for b in report.batches] == ["completed", "completed", "not_sent", "not_sent", "not_sent"]
        return row_from("5xx past the retry budget", sim, report)


def fault_5xx_polls_past_retries(ctx: Context) -> Row:
    """Every import-job poll answers 503 past the retry budget, after all batches were accepted: the outcome
    of the jobs is unknown, so the run is `partial` with every sent contact `pending` (the timer's
    finish_pending_runs settles them later), not an exception that loses the report."""
    with simulator() as sim:
        sim.inject("status", count=1000, method="GET", path=IMPORTS, status=503)
        report = run_engine(sim, ctx.local_segment(), fast_client(sim, max_attempts=3))
        sim.faults.clear()
        assert report.status == "partial" and report.error
        assert report.pending == VALID_UNIQUE and report.exported == 0
        assert any("HTTP 503 after 3 attempts" in note for note in report.notes)
        assert [b.status for b in report.batches] == ["pending"] * BATCHES
        return row_from("5xx on import polls past retries", sim, report)


def fault_slow_put(ctx: Context) -> Row:
    """A PUT answered after the client's read timeout. SendGrid (the simulator) still processes it, so the
    resend is a duplicate send; the report must say so (batch.resent, possible_duplicate_sends)."""
    with simulator() as sim:
        sim.inject("slow", method="PUT", path=CONTACTS, seconds=1.5)
        report = run_engine(sim, ctx.local_segment(), fast_client(sim, timeout=0.5))
        assert report.status == "succeeded", report.error
        assert report.batches[0].resent == 1 and all(b.resent == 0 for b in report.batches[1:])
        assert any("sent again" in note for note in report.notes)
        row = row_from("slow PUT past the client timeout", sim, report, expect_duplicates=True)
        assert row.duplicates == BATCH == row.possible_duplicates  # the first batch, twice: counted, not hidden
        return row


def fault_slow_poll(ctx: Context) -> Row:
    """Import-job polls answered after the timeout: plain retries of a GET, nothing sent twice."""
    with simulator() as sim:
        sim.inject("slow", count=2, method="GET", path=IMPORTS, seconds=1.0)
        client = fast_client(sim, timeout=0.5)
        report = run_engine(sim, ctx.local_segment(), client)
        assert report.status == "succeeded", report.error
        assert client.stats.retries == 2
        return row_from("slow import poll past the timeout", sim, report)


def fault_drop_before_body(ctx: Context) -> Row:
    """Connections closed before SendGrid read the body: resent, and SendGrid saw each contact once."""
    with simulator() as sim:
        sim.inject("drop_before_body", count=2, method="PUT", path=CONTACTS)
        report = run_engine(sim, ctx.local_segment(), fast_client(sim))
        assert report.status == "succeeded", report.error
        assert puts(sim)[:3] == [None, None, 202]
        # The client cannot tell this from a drop after the body, so it reports the resends as possible.
        assert report.batches[0].resent == 2
        return row_from("connection dropped before the body", sim, report)


def fault_drop_after_body(ctx: Context) -> Row:
    """SendGrid accepted the batch and the answer was lost: the resend is a duplicate send of that batch,
    reported as such; the list is still exactly the file's contacts (upserts are keyed by email)."""
    with simulator() as sim:
        sim.inject("drop_after_body", method="PUT", path=CONTACTS)
        report = run_engine(sim, ctx.local_segment(), fast_client(sim))
        assert report.status == "succeeded", report.error
        assert puts(sim)[:2] == [None, 202]
        assert report.batches[0].resent == 1
        row = row_from("connection dropped after the body", sim, report, expect_duplicates=True)
        assert row.duplicates == BATCH == row.possible_duplicates
        return row


def fault_drop_poll(ctx: Context) -> Row:
    """Answers to import-job polls lost (before and after): GETs are retried, nothing is sent twice."""
    with simulator() as sim:
        sim.inject("drop_after_body", method="GET", path=IMPORTS)
        sim.inject("drop_before_body", method="GET", path=IMPORTS)
        report = run_engine(sim, ctx.local_segment(), fast_client(sim))
        assert report.status == "succeeded", report.error
        return row_from("connection dropped on import polls", sim, report)


def fault_job_errored(ctx: Context) -> Row:
    """Batch 2's import job ends `errored` (3 contacts not applied): the run is `partial`, the whole batch
    is listed in failed_job_rows (sent again by the next refresh), the other batches are exported."""
    with simulator() as sim:
        def errored(outcome: BatchResult) -> None:
            if outcome.number == 1:
                sim.inject("job_errored", errored=3)

        report = run_engine(sim, ctx.local_segment(), fast_client(sim), on_batch_accepted=errored)
        assert report.status == "partial" and report.error and "next refresh" in report.error
        assert report.in_failed_jobs == BATCH and report.exported == VALID_UNIQUE - BATCH
        assert [b.status for b in report.batches].count("errored") == 1 and report.batches[1].status == "errored"
        assert report.batches[1].errored_count == 3
        return row_from("import job errored", sim, report)


def fault_job_failed(ctx: Context) -> Row:
    """Batch 1's import job ends `failed` (nothing applied): `partial`, its rows listed; with sync state in
    Azurite, the next refresh of the same file sends exactly those contacts and the list is complete."""
    runs = ctx.blob_service.get_container_client(f"runs-{uuid.uuid4().hex[:12]}")

    def synced() -> SyncState:
        sync = SyncState(runs, "faults", config_digest="faults")
        sync.acquire()
        sync.load(source_id=SEGMENT, full=False)
        return sync

    with simulator() as sim:
        sim.inject("job_failed")
        source = ctx.local_segment()
        sync = synced()
        try:
            report = run_engine(sim, source, fast_client(sim), sync=sync)
        finally:
            sync.release()
        assert report.status == "partial"
        assert report.in_failed_jobs == BATCH and report.exported == VALID_UNIQUE - BATCH
        row = row_from("import job failed", sim, report)
        failed_emails = set(sim.upsert_batches[0].emails)
        assert not failed_emails & set(sim.list_contacts(SENDGRID_TEST_LIST_ID))
        # failed_job_rows name exactly the rows of that batch (data-row numbers), for the next refresh.
        assert {segment_rows()[n - 1][0] for r in report.failed_job_rows for n in r.rows} == failed_emails

        already = len(sim.upsert_batches)
        sync = synced()
        try:
            refresh = run_engine(sim, source, fast_client(sim), sync=sync)
        finally:
            sync.release()
            with contextlib.suppress(Exception):
                runs.delete_container()
        settle(sim)
        assert refresh.status == "succeeded", refresh.error
        assert (refresh.exported, refresh.unchanged_skipped) == (BATCH, VALID_UNIQUE - BATCH)
        assert [set(b.emails) for b in sim.upsert_batches[already:]] == [failed_emails]
        assert {e: c.get("first_name") for e, c in sim.list_contacts(SENDGRID_TEST_LIST_ID).items()} == EXPECTED
        return row


# -- Key Vault unavailable (through the export service, with Azurite for run state) --------------------------

@contextlib.contextmanager
def vault_standin(ctx: Context) -> Iterator[KeyVaultStandIn]:
    vault = KeyVaultStandIn(ctx.tmp_path)
    _forget_challenge(vault.url)
    try:
        yield vault
    finally:
        vault.stop()
        _forget_challenge(vault.url)


@contextlib.contextmanager
def export_service(ctx: Context, sim: Simulator, vault: KeyVaultStandIn) -> Iterator[ExportService]:
    suffix = uuid.uuid4().hex[:12]
    segments = ctx.blob_service.create_container(f"segments-{suffix}")
    segments.upload_blob(SEGMENT, segment_bytes())
    settings = AppSettings(segments_container=f"segments-{suffix}", runs_container=f"runs-{suffix}",
                           sendgrid_base_url=sim.base_url, key_vault_url=vault.url, azure_client_id=None)
    keys = ApiKeyProvider(vault.url, credential=vault.credential,  # type: ignore[arg-type]
                          client_kwargs=vault.client_kwargs)
    service = ExportService(settings, DestinationsDocument(destinations=[make_destination()]), ctx.blob_service,
                            keys, options=OPTIONS,
                            client_factory=lambda key, reread: fast_client(sim, key=key, on_unauthorized=reread))
    try:
        yield service
    finally:
        keys.close()
        for name in (f"segments-{suffix}", f"runs-{suffix}"):
            with contextlib.suppress(Exception):
                ctx.blob_service.delete_container(name)


def keyvault_unavailable(ctx: Context, mode: str) -> Row:
    """The vault answers 503 (or closes every connection): the run fails before reading or sending, with an
    error that names the secret and the vault, not the key; once the vault is back, a re-run exports all."""
    with simulator() as sim, vault_standin(ctx) as vault, export_service(ctx, sim, vault) as service:
        vault.set_secret(SECRET, SENDGRID_TEST_KEY)
        vault.set_unavailable(True, mode)  # type: ignore[arg-type]
        destination = service.destinations.destinations[0]
        report = service.export(destination, SEGMENT, run_id=f"kv-{mode}-{uuid.uuid4().hex[:6]}")
        assert report.status == "failed"
        assert report.error and f"cannot read secret '{SECRET}' from Key Vault {vault.url}" in report.error
        assert ("unavailable (HTTP 503)" if mode == "503" else "vault unreachable") in report.error
        assert sim.request_log == [], "nothing may reach SendGrid without a key"
        stored = service.report(report.run_id)
        assert stored is not None and stored["status"] == "failed" and stored["error"] == report.error
        assert SENDGRID_TEST_KEY not in str(stored)
        row = Row(f"Key Vault unavailable ({mode})", ROW_COUNT, report, report.status, duplicate_sends(sim), 0,
                  report.error)
        check_invariants(row, sim)

        vault.set_unavailable(False)
        again = service.export(destination, SEGMENT, run_id=f"kv-back-{uuid.uuid4().hex[:6]}")
        assert again.status == "succeeded", again.error
        assert again.exported == VALID_UNIQUE
        settle(sim)
        assert {e: c.get("first_name") for e, c in sim.list_contacts(SENDGRID_TEST_LIST_ID).items()} == EXPECTED
        assert duplicate_sends(sim) == 0
        return row


def fault_keyvault_503(ctx: Context) -> Row:
    return keyvault_unavailable(ctx, "503")


def fault_keyvault_closed(ctx: Context) -> Row:
    return keyvault_unavailable(ctx, "close")


# -- Azurite unavailable in the middle of a run (a private Azurite, stopped on cue) --------------------------

@contextlib.contextmanager
def private_azurite() -> Iterator[tuple[Azurite, ContainerClient, ContainerClient]]:
    """A second Azurite, with clients that give up fast (one retry, short timeouts) once it is stopped."""
    azurite = start_azurite()
    try:
        # Storage's own retry policy (ExponentialRetry) waits 15 s before its first retry: one quick retry here.
        # Download chunks of 1 KiB, so the 3.5 KB segment takes several GETs and can be cut off mid-file.
        service = BlobServiceClient.from_connection_string(
            azurite.connection_string, retry_policy=LinearRetry(backoff=0.05, random_jitter_range=0, retry_total=1),
            connection_timeout=2, read_timeout=2, max_single_get_size=1024, max_chunk_get_size=1024)
        segments = service.create_container("segments")
        segments.upload_blob(SEGMENT, segment_bytes())
        runs = service.get_container_client("export-runs")
        yield azurite, segments, runs
    finally:
        azurite.stop()


class _StopAfterFirstRead(io.RawIOBase):
    """Reads the first bytes of the blob, then stops Azurite: the rest of the download hits a dead server."""

    def __init__(self, inner: io.BufferedReader, azurite: Azurite) -> None:
        super().__init__()
        self._inner = inner
        self._azurite = azurite
        self._stopped = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._inner.read1(min(len(buffer), 64))
        if not self._stopped:
            self._stopped = True
            self._azurite.stop()
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._inner.close()
        super().close()


class _StoppingSource:
    """The real blob source; only its stream is wrapped so storage dies after the first bytes were read."""

    def __init__(self, inner: BlobContainerSource, azurite: Azurite) -> None:
        self._inner = inner
        self._azurite = azurite

    def open(self, name: str) -> io.BufferedReader:
        return io.BufferedReader(_StopAfterFirstRead(self._inner.open(name), self._azurite))  # type: ignore[arg-type]

    def exists(self, name: str) -> bool:
        return self._inner.exists(name)

    def head(self, name: str, size: int) -> bytes:
        return self._inner.head(name, size)

    def describe(self, name: str) -> str:
        return self._inner.describe(name)


def fault_azurite_down_while_reading(ctx: Context) -> Row:
    """Storage dies while the segment file streams in (it is larger than one download chunk): the run
    stops with a SegmentFileError that says so, before anything was sent."""
    with simulator() as sim, private_azurite() as (azurite, segments, runs):
        sync = SyncState(runs, "faults", config_digest="faults")
        sync.acquire()
        sync.load(source_id=SEGMENT, full=False)
        source = _StoppingSource(BlobContainerSource(segments), azurite)
        with pytest.raises(SegmentFileError) as raised:
            run_engine(sim, source, fast_client(sim), sync=sync)
        sync.release()  # storage is gone: releasing the lease must not raise over the real error
        message = str(raised.value)
        assert f"segments/{SEGMENT}" in message and "storage" in message and "nothing was sent" in message
        assert sim.request_log == []
        settle(sim)
        row = Row("Azurite down while reading", ROW_COUNT, None, "failed", duplicate_sends(sim), 0, message)
        check_invariants(row, sim)
        return row


def fault_azurite_down_while_sending(ctx: Context) -> Row:
    """Storage dies after batch 1 was accepted: batch 2 is accepted but its checkpoint cannot be written,
    so the run stops sending (its lease and state are gone) and ends `failed`; batches 1-2 are exported,
    the rest reported as not sent."""
    with simulator() as sim, private_azurite() as (azurite, segments, runs):
        sync = SyncState(runs, "faults", config_digest="faults")
        sync.acquire()
        sync.load(source_id=SEGMENT, full=False)

        def kill(outcome: BatchResult) -> None:
            if outcome.number == 1:
                azurite.stop()

        report = run_engine(sim, BlobContainerSource(segments), fast_client(sim), on_batch_accepted=kill, sync=sync)
        sync.release()
        assert report.status == "failed"
        assert report.error and "storage" in report.error and "re-run" in report.error
        assert report.exported == 2 * BATCH and report.not_sent == VALID_UNIQUE - 2 * BATCH
        assert puts(sim) == [202, 202]
        return row_from("Azurite down while sending", sim, report)


def fault_azurite_down_after_last_batch(ctx: Context) -> Row:
    """Storage dies after the last batch was accepted: every contact is exported (`succeeded`), and the
    report notes that the sync snapshot could not be saved (the next refresh sends everything again)."""
    with simulator() as sim, private_azurite() as (azurite, segments, runs):
        sync = SyncState(runs, "faults", config_digest="faults")
        sync.acquire()
        sync.load(source_id=SEGMENT, full=False)

        def kill(outcome: BatchResult) -> None:
            if outcome.number == BATCHES:
                azurite.stop()

        report = run_engine(sim, BlobContainerSource(segments), fast_client(sim), on_batch_accepted=kill, sync=sync)
        sync.release()
        assert report.status == "succeeded", report.error
        assert report.exported == VALID_UNIQUE
        assert any("snapshot" in note and "next refresh" in note for note in report.notes)
        return row_from("Azurite down after the last batch", sim, report)


SCENARIOS: dict[str, Callable[[Context], Row]] = {
    "429_storm": fault_429_storm,
    "429_past_budget": fault_429_past_budget,
    "5xx_burst": fault_5xx_burst,
    "5xx_past_retries": fault_5xx_past_retries,
    "5xx_polls_past_retries": fault_5xx_polls_past_retries,
    "slow_put": fault_slow_put,
    "slow_poll": fault_slow_poll,
    "drop_before_body": fault_drop_before_body,
    "drop_after_body": fault_drop_after_body,
    "drop_poll": fault_drop_poll,
    "job_errored": fault_job_errored,
    "job_failed": fault_job_failed,
    "keyvault_503": fault_keyvault_503,
    "keyvault_closed": fault_keyvault_closed,
    "azurite_down_reading": fault_azurite_down_while_reading,
    "azurite_down_sending": fault_azurite_down_while_sending,
    "azurite_down_after_last": fault_azurite_down_after_last_batch,
}
RESULTS: dict[str, Row] = {}


def run_scenario(name: str, tmp_path: Path, blob_service: BlobServiceClient) -> Row:
    ctx = Context(tmp_path / name, blob_service)
    ctx.tmp_path.mkdir(parents=True, exist_ok=True)
    row = SCENARIOS[name](ctx)
    RESULTS[name] = row
    return row


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_fault(name: str, tmp_path: Path, blob_service: BlobServiceClient) -> None:
    """Each scenario asserts its own expectations and the shared invariants (check_invariants)."""
    row = run_scenario(name, tmp_path, blob_service)
    assert row.accounted() == row.rows, row.fault


def test_summary(tmp_path: Path, blob_service: BlobServiceClient) -> None:
    """One line per fault; runs any scenario not run yet (e.g. under -k), then checks the totals again."""
    for name in SCENARIOS:
        if name not in RESULTS:
            run_scenario(name, tmp_path, blob_service)
    header = (f"{'fault':<36} {'rows':>5} {'exported':>8} {'rejected':>8} {'merged':>6} {'failed jobs':>11} "
              f"{'pending':>7} {'unsent':>6} {'duplicate sends':>16}  status")
    lines = [header, "-" * len(header)]
    for name in SCENARIOS:
        row = RESULTS[name]
        dup = f"{row.duplicates}" + (f" (reported {row.possible_duplicates})" if row.possible_duplicates else "")
        lines.append(f"{row.fault:<36} {row.rows:>5} {row.exported:>8} {row.rejected:>8} {row.merged:>6} "
                     f"{row.failed_jobs:>11} {row.pending:>7} {row.unsent:>6} {dup:>16}  {row.status}")
        assert row.accounted() == row.rows, row.fault
        assert row.duplicates <= row.possible_duplicates, row.fault
        if not row.expect_duplicates:
            assert row.duplicates == 0, row.fault
    print("\n" + "\n".join(lines))
