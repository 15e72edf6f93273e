"""Everything a trigger needs, wired once per process: destinations, Key Vault, storage, SendGrid.

The trigger functions and the CLI call these methods with plain values (blob names, destination names,
run IDs); nothing here knows about `azure.functions`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.exceptions import AzureError
from azure.storage.blob import BlobServiceClient, ContainerClient

from shared.config.destinations import Destination, DestinationsDocument, load_destinations
from shared.config.secrets import ApiKeyProvider
from shared.config.settings import AppSettings, setting
from shared.config.storage import blob_service_from_settings, segments_blob_service_from_settings
from shared.config.time_budgets import ANSWER_STORAGE_OPTIONS, answer_retry
from shared.errors import ConfigurationError, ExportError
from shared.pipeline.engine import ExportOptions, ExportResult, describe_sources, export_segments
from shared.pipeline.report import RunReport
from shared.sendgrid.client import ImportJob, SendGridClient
from shared.sendgrid.errors import NotFound, SendGridError
from shared.source.segment_files import DATA_SUFFIXES, SegmentCatalog, SegmentFile, is_model_json, is_segment_entry
from shared.source.sources import BlobContainerSource
from shared.state.run_store import RunStore
from shared.state.sync_state import DestinationBusy, LockLost, SyncState

__all__ = ["DATA_SUFFIXES", "EXPORT_QUEUE", "ExportService", "get_service", "is_segment_entry", "new_run_id"]

TRIGGER_LOCK_WAIT = 300.0

log = logging.getLogger(__name__)

# A run on the lock's lease renews it every 20 s; a run waiting for the lock (up to 5 min) sees it held.
KILLED_AFTER = timedelta(minutes=6)
PENDING_BUDGET_SECONDS = 120.0  # the timer settles earlier runs' jobs for at most this long, then queues

EXPORT_QUEUE = "export-requests"  # on-demand and scheduled exports, run by the queue-triggered function


def config_digest(destination: Destination) -> str:
    """What decides the bytes sent for a profile (how the file is read, how it is mapped): a change makes the
    next export a full one, and never resumes a checkpoint of the old reading."""
    relevant = destination.model_dump(include={"list_id", "field_mapping", "length_policy", "empty_values",
                                               "file_format"},
                                      mode="json")
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def new_run_id(destination: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{destination}-{stamp}-{uuid.uuid4().hex[:8]}"


class SupersededFile(Exception):
    """A trigger's file is no longer its segment's current one (events arrive out of order, runs wait)."""


class RequestRejected(Exception):
    """An on-demand request that cannot be taken: its HTTP status, message and details for the caller."""

    def __init__(self, status: int, message: str, **details: object) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


_BAD_BLOB = re.compile(r"(^/)|(\\)|(^|/)\.\.?(/|$)|://|^[a-z]+:|[\x00-\x1f]")


class RunRefused(ExportError):
    """The run would leave the list wrong, so nothing is sent (its report says `refused`, and why)."""


@dataclass
class TriggerOutcome:
    """What happened to a blob-triggered file: exported (report), skipped (reason)."""

    blob_name: str
    report: RunReport | None = None
    skipped: str | None = None


class ExportService:
    def __init__(
        self,
        settings: AppSettings,
        destinations: DestinationsDocument,
        blob_service: BlobServiceClient,
        keys: ApiKeyProvider,
        *,
        options: ExportOptions | None = None,
        client_factory: Callable[[str, Callable[[], str | None]], SendGridClient] | None = None,
        trigger_lock_wait: float = TRIGGER_LOCK_WAIT,
        segments_service: BlobServiceClient | None = None,
    ) -> None:
        """`segments_service`: the account holding the segments container, when it is not the app's own."""
        # How long a triggered run waits for a running export of the same destination (then: refused).
        self.trigger_lock_wait = trigger_lock_wait
        self.settings = settings
        self.destinations = destinations
        self.blob_service = blob_service
        self.keys = keys
        self.options = options or ExportOptions()
        self._client_factory = client_factory
        self.segments_service = segments_service or blob_service
        self.segments: ContainerClient = self.segments_service.get_container_client(settings.segments_container)
        self.runs = RunStore(blob_service.get_container_client(settings.runs_container))
        self.catalog = SegmentCatalog(self.segments, destinations)
        self._answering: ExportService | None = None

    def answering(self) -> ExportService:
        """This service with storage clients for the HTTP path (ANSWER_STORAGE_OPTIONS: seconds, not minutes),
        so an outage gets an answer well inside the host's 230 s instead of one cut off; built once."""
        if self._answering is None:
            answering = copy.copy(self)
            blobs = _with_budget(self.blob_service)
            segments = blobs if self.segments_service is self.blob_service else _with_budget(self.segments_service)
            answering.blob_service, answering.segments_service = blobs, segments
            answering.segments = segments.get_container_client(self.settings.segments_container)
            answering.runs = RunStore(blobs.get_container_client(self.settings.runs_container))
            answering.catalog = SegmentCatalog(answering.segments, self.destinations)
            answering._answering = answering
            self._answering = answering
        return self._answering

    @classmethod
    def from_environment(cls, *, keys: ApiKeyProvider | None = None, options: ExportOptions | None = None,
                         client_factory: Callable[[str, Callable[[], str | None]], SendGridClient] | None = None,
                         ) -> ExportService:
        """Build from the app settings. `keys`/`options`/`client_factory` are seams for tests and the local
        runner (e.g. a provider trusting a Key Vault stand-in's CA); the Function App passes none."""
        text = setting("DESTINATIONS_JSON")
        if not text:
            raise ConfigurationError("is not set: the app has no destinations", field="DESTINATIONS_JSON")
        return cls(AppSettings.from_environment(), load_destinations(text), blob_service_from_settings(),
                   keys if keys is not None else ApiKeyProvider.from_settings(), options=options,
                   client_factory=client_factory, segments_service=segments_blob_service_from_settings())

    # -- SendGrid -------------------------------------------------------------------------------------

    def client_for(self, destination: Destination) -> SendGridClient:
        secret = destination.api_key_secret

        def reread() -> str | None:
            return self.keys.refresh(secret)

        if self._client_factory is not None:
            return self._client_factory(self.keys.get(secret), reread)
        return SendGridClient(self.keys.get(secret), base_url=self.settings.sendgrid_base_url,
                              on_unauthorized=reread)

    # -- finding files --------------------------------------------------------------------------------

    def current_files(self, destination: Destination) -> list[SegmentFile]:
        """The file each of the destination's segments is read from now (see shared.source.segment_files)."""
        return self.catalog.current_files(destination)

    def latest_segment(self, destination: Destination) -> str | None:
        """The newest of the destination's current segment files (None: no segment has one yet)."""
        dated = [(f.last_modified, f.name) for f in self.current_files(destination)
                 if f.name is not None and f.last_modified is not None]
        return max(dated)[1] if dated else None

    def is_cdm_partition(self, destination: Destination, blob_name: str) -> bool:
        return self.catalog.is_cdm_partition(destination, blob_name)

    def check_named_blob(self, destination: Destination, blob_name: object) -> str:
        """A blob an on-demand request names for the destination, or RequestRejected saying what is wrong."""
        if not isinstance(blob_name, str) or not blob_name or _BAD_BLOB.search(blob_name):
            raise RequestRejected(400, "blob must be a path inside the segments container (no '..', URLs or other "
                                       "containers)")
        if not is_segment_entry(blob_name):
            raise RequestRejected(400, "blob is not a segment file (a marker, manifest or unknown file type)")
        if destination not in self.destinations.served_by(blob_name):
            # Also under a nested prefix of another destination: the trigger gives such a file to that one.
            raise RequestRejected(400, "blob is not this destination's segment file (not under its segment "
                                       "prefixes, or under a longer prefix of another destination)",
                                  prefixes=destination.segments)
        if not is_model_json(blob_name) and self.is_cdm_partition(destination, blob_name):
            raise RequestRejected(400, "blob is a CDM partition: export its model.json instead")
        if not self.segments.get_blob_client(blob_name).exists():
            raise RequestRejected(404, "no such blob in the segments container")
        try:
            self._files_of_run(destination, blob_name)
        except RunRefused as exc:
            raise RequestRejected(409, str(exc)) from None
        return blob_name

    # -- running exports ------------------------------------------------------------------------------

    def handle_new_blob(self, blob_name: str, etag: str | None = None) -> list[TriggerOutcome]:
        """Blob trigger: match the file to its destination(s), export it once per blob version each.

        A data file has one destination (longest prefix); a CDM model.json may serve several (one per
        table of a Customer Insights export, see DestinationsDocument.for_model_json).
        """
        if not is_segment_entry(blob_name):
            return [TriggerOutcome(blob_name, skipped="not a segment file (marker, manifest or unknown type)")]
        is_model = is_model_json(blob_name)
        targets = self.destinations.served_by(blob_name)
        if not targets:
            return [TriggerOutcome(blob_name, skipped="no destination is configured for this path")]
        if not is_model and self.is_cdm_partition(targets[0], blob_name):
            return [TriggerOutcome(blob_name, skipped="CDM partition: exported when its model.json lands")]
        if etag is None:
            etag = str(self.segments.get_blob_client(blob_name).get_blob_properties().etag)
        # One receipt per destination when a model.json serves several, so each is exported exactly once.
        outcomes: list[TriggerOutcome] = []
        crash: Exception | None = None
        for destination in targets:
            try:
                outcomes.append(self._export_once(destination, blob_name, etag,
                                                  scope=destination.name if len(targets) > 1 else ""))
            except Exception as exc:  # the other destinations still export; the host's retry redoes this one
                log.error("destination %s: export of %s crashed (%s)", destination.name, blob_name,
                          type(exc).__name__)
                crash = crash or exc
        if crash is not None:
            raise crash
        return outcomes

    def _export_once(self, destination: Destination, blob_name: str, etag: str, *, scope: str) -> TriggerOutcome:
        run_id = new_run_id(destination.name)
        state = SyncState(self.runs.container, destination.name, config_digest="")  # only to look at its lock
        claim = self.runs.claim(blob_name, etag, run_id, scope, run_is_alive=state.held_by_a_run)
        if claim is None:
            return TriggerOutcome(blob_name, skipped="this version of the file was already exported")
        try:
            report = self.export(destination, None, run_id=run_id, lock_wait=self.trigger_lock_wait,
                                 triggered_by=blob_name)
        except SupersededFile as exc:
            log.info("destination %s: %s skipped: %s", destination.name, blob_name, exc)
            self.runs.complete(claim, "done", {"run_id": run_id, "status": "superseded"})
            return TriggerOutcome(blob_name, skipped=f"{exc}; an older file would undo it")
        except BaseException:
            # Storage down, a crash, the host stopping us: the receipt must not say "running" for the host's
            # retries of this blob version to find (they would skip it as done).
            with contextlib.suppress(Exception):
                self.runs.complete(claim, "failed", {"run_id": run_id, "status": "crashed"})
            raise
        self.runs.complete(claim, "failed" if report.status in ("failed", "refused") else "done",
                           {"run_id": run_id, "status": report.status})
        return TriggerOutcome(blob_name, report=report)

    def export(self, destination: Destination, blob_name: str | None = None, *, run_id: str, dry_run: bool = False,
               full: bool = False, lock_wait: float = 0.0, triggered_by: str | None = None) -> RunReport:
        """Run the destination once and persist its report (and rejected rows) in the runs container."""
        return self.export_with_preview(destination, blob_name, run_id=run_id, dry_run=dry_run, full=full,
                                        lock_wait=lock_wait, triggered_by=triggered_by).report

    def export_with_preview(self, destination: Destination, blob_name: str | None = None, *, run_id: str,
                            dry_run: bool = False, full: bool = False, lock_wait: float = 0.0,
                            triggered_by: str | None = None) -> ExportResult:
        """One run of the destination: the union of its segments' current files, resolved under its lock.

        `blob_name` replaces its segment's current file for this run only (HTTP `blob`, CLI `--blob`); in
        mirror mode a file older than that segment's current one is refused. `triggered_by` (the blob trigger):
        SupersededFile, before anything is read or sent, when that file is no longer its segment's current one.
        """
        source = BlobContainerSource(self.segments)
        if not destination.has_consent and not dry_run:
            report = self._blank_report(destination, run_id, blob_name or "(current segment files)")
            report.finish("refused", "no recorded consent for this destination: record who agreed to the "
                                     "data-privacy terms in its 'consent' before exporting")
            self._persist(ExportResult(report))
            return ExportResult(report)
        options = ExportOptions(**{**self.options.__dict__, "dry_run": dry_run})
        client: SendGridClient | None = None
        sync: SyncState | None = None
        files: list[SegmentFile] = []
        try:
            if not dry_run:
                sync = SyncState(self.runs.container, destination.name, config_digest=config_digest(destination),
                                 list_id=destination.list_id_str)
                sync.acquire(wait=lock_wait)
            files = self._files_of_run(destination, blob_name, prefer=triggered_by)  # under the lock
            if triggered_by is not None and triggered_by not in {f.name for f in files}:
                newer = [f.name for f in files if f.segment == destination.segment_for(triggered_by)]
                raise SupersededFile(f"{destination.name} already has a newer file for this segment "
                                     f"({', '.join(str(n) for n in newer) or 'another file'})")
            if sync is not None:
                sync.load(source_id="\n".join(f.identity for f in files), full=full)
            if not dry_run or destination.field_mapping.custom_fields:
                client = self.client_for(destination)
            result = export_segments(destination, source, files, client, run_id=run_id, options=options, sync=sync)
            if sync is not None and result.report.status in ("succeeded", "partial"):
                with contextlib.suppress(AzureError, LockLost):  # informational: what the list now reflects
                    sync.record_sources(files)
        except DestinationBusy as exc:
            report = self._blank_report(destination, run_id, blob_name or "(current segment files)")
            report.finish("refused", f"{exc}; this file was not exported (a new trigger of it, or the next "
                                     "scheduled refresh of the latest file, will export it)")
            result = ExportResult(report)
        except RunRefused as exc:
            report = self._blank_report(destination, run_id, describe_sources(source, files) if files else "")
            report.finish("refused", str(exc))
            result = ExportResult(report)
        except ExportError as exc:
            report = self._blank_report(destination, run_id, describe_sources(source, files) if files
                                        else blob_name or "(current segment files)", dry_run=dry_run)
            report.finish("failed", str(exc))
            result = ExportResult(report)
        finally:
            if client is not None:
                client.close()
            if sync is not None:
                sync.release()
        if dry_run and not destination.has_consent:
            result.report.notes.append("this destination has no recorded consent: a real run would be refused "
                                       "until its 'consent' says who agreed to the data-privacy terms")
        log.info("%s", result.report.summary())  # before persisting: the counts reach the log even if storage fails
        self._persist(result)
        return result

    def _files_of_run(self, destination: Destination, blob_name: str | None, *,
                      prefer: str | None = None) -> list[SegmentFile]:
        """Every segment's current file, with `blob_name` (when given) in place of its segment's."""
        files = self.catalog.current_files(destination, prefer=prefer)
        if blob_name is None:
            return files
        named = {f.segment: f for f in self.catalog.files_for(destination, blob_name)}
        if destination.mode == "mirror":
            for current in files:
                chosen = named.get(current.segment)
                if chosen is None or current.name in (None, chosen.name) or current.last_modified is None \
                        or chosen.last_modified is None or chosen.last_modified >= current.last_modified:
                    continue
                raise RunRefused(f"{blob_name} is older than the current file of segment {current.segment} "
                                 f"({current.name}): a mirror run of it would take off the list the people who "
                                 "joined since and put back those who left. Export the current files (omit the "
                                 "blob), or re-upload the older file to make it current; nothing was sent")
        return [named.get(f.segment, f) for f in files]

    @staticmethod
    def _blank_report(destination: Destination, run_id: str, source: str, *, dry_run: bool = False,
                      status: str = "running") -> RunReport:
        return RunReport(run_id=run_id, destination=destination.name, list_id=destination.list_id_str,
                         source=source, mode=destination.mode, dry_run=dry_run, status=status)

    def _persist(self, result: ExportResult) -> None:
        """Store the report and the rejects file (uploaded from local disk), then delete the local file."""
        report = result.report
        try:
            if report.pending:
                self.runs.mark_pending(report.run_id)
            rejects = self.runs.upload_rejects(report.run_id, result.rejects)
            data = report.to_dict()
            data["rejects_blob"] = rejects
            self.runs.save_report(report.run_id, data)
        finally:
            result.close()

    def report(self, run_id: str, *, last_attempt: int | None = None) -> dict[str, Any] | None:
        """A run's report. A queued run still `running` on its `last_attempt` whose destination no run holds
        any more (its lease expired) was killed (function timeout, out of memory): nothing will retry it,
        so it is failed now, with what to do, instead of saying `running` for ever."""
        data = self.runs.load_report(run_id)
        if not data or data.get("status") != "running" or last_attempt is None or \
                int(data.get("attempt") or 0) < last_attempt:
            return data
        try:
            since = datetime.fromisoformat(str(data.get("running_since")))
        except ValueError:
            return data
        state = SyncState(self.runs.container, str(data.get("destination")), config_digest="")
        if datetime.now(UTC) - since < KILLED_AFTER or state.held_by_a_run():
            return data
        self.runs.fail_queued(run_id, "the last attempt stopped without finishing (the function timeout, or the "
                                      "worker ran out of memory) and nothing retries it: start the export again")
        return self.runs.load_report(run_id)

    def mark_queued(self, destination: Destination, blob_name: str | None, run_id: str, dry_run: bool) -> None:
        """`blob_name` None: the run reads the segments' current files when it starts, not those of now."""
        report = self._blank_report(destination, run_id, blob_name or "(current segment files when the run starts)",
                                    dry_run=dry_run, status="queued")
        self.runs.save_report(run_id, report.to_dict())

    def fail_queued(self, run_id: str, error: str) -> None:
        self.runs.fail_queued(run_id, error)

    def finish_pending_runs(self, budget: float = PENDING_BUDGET_SECONDS) -> list[dict[str, Any]]:
        """Timer: poll the import jobs that were still pending when their run ended, and update the reports.

        Their contacts were not recorded as exported, so the refresh that follows sends them again anyway;
        this keeps the earlier reports truthful. No run is started after `budget` seconds: the timer's
        queue messages go out only when it returns, so settling must never hold up the refresh itself (the
        rest waits for the next timer run).
        """
        updated: list[dict[str, Any]] = []
        deadline = time.monotonic() + budget
        for run_id in self.runs.pending_runs():
            if time.monotonic() >= deadline:
                log.warning("pending import jobs of more runs are left for the next scheduled refresh")
                break
            try:
                settled = self._settle_pending(run_id)
            except Exception:  # one unreadable report must not stop the refresh of every destination
                log.exception("run %s: could not settle its pending import jobs, trying again next time", run_id)
                continue
            if settled is not None:
                updated.append(settled)
        return updated

    @staticmethod
    def _job(client: SendGridClient, job_id: str) -> ImportJob:
        """A job SendGrid no longer knows (404: its status is kept for a while only) is final as 'expired':
        its contacts were never recorded as exported, so later refreshes have sent them again."""
        try:
            return client.get_import(job_id)
        except NotFound:
            return ImportJob(id=job_id, status="expired")

    def _settle_pending(self, run_id: str) -> dict[str, Any] | None:
        """The run's report updated with the jobs that have finished since (None: nothing to update)."""
        report = self.runs.load_report(run_id)
        destination = self.destinations.get(str((report or {}).get("destination")))
        if report is None or destination is None:
            self.runs.clear_pending(run_id)
            return None
        open_jobs = [b["job_id"] for b in report.get("batches", [])
                     if b.get("status") in ("pending", "accepted") and b.get("job_id")]
        try:
            with self.client_for(destination) as client:
                final = {job_id: job for job_id in open_jobs if (job := self._job(client, job_id)).is_final}
        except (ExportError, SendGridError) as exc:
            # One destination's bad key or SendGrid outage must not stop the refresh of every destination.
            log.warning("run %s: could not check its pending import jobs, trying again next time: %s",
                        run_id, exc)
            return None

        def settle(data: dict[str, Any], final: dict[str, ImportJob] = final) -> bool:
            for batch in data.get("batches", []):
                job = final.get(batch.get("job_id") or "")
                if job is None or batch.get("status") not in ("pending", "accepted"):
                    continue
                batch.update(status=job.status, created_count=job.created_count,
                             updated_count=job.updated_count, errored_count=job.errored_count)
                outcome = "exported" if job.status == "completed" else "in_failed_jobs"
                parts = data.get("segments") or []
                for part, contacts in zip(parts, batch.get("by_segment") or [], strict=False):
                    part["pending"] -= contacts
                    part[outcome] += contacts
                data["pending"] -= batch["contacts"]
                data[outcome] += batch["contacts"]
            if data["pending"] <= 0:
                # Only the jobs settle here: a run that stopped ("failed", rows not sent) stays failed.
                if data.get("status") == "partial":
                    data["status"] = "partial" if data["in_failed_jobs"] or data.get("not_sent") else "succeeded"
                data.setdefault("notes", []).append("pending import jobs finished after the run ended")
            return True

        settled = self.runs.update_report(run_id, settle)
        if settled is not None and settled["pending"] <= 0:
            self.runs.clear_pending(run_id)
        return settled

    def queue_refresh(self) -> list[dict[str, Any]]:
        """Timer: one queued export per destination, from its latest segment file.

        Each destination then runs in its own queue-triggered invocation (its own function timeout, retries
        and poison queue) instead of all of them one after another inside the timer's single invocation.
        """
        messages: list[dict[str, Any]] = []
        for destination in self.destinations.destinations:
            try:
                if self.latest_segment(destination) is None:
                    log.warning("destination %s: no segment file under %s", destination.name, destination.segments)
                    continue
                run_id = new_run_id(destination.name)
                self.mark_queued(destination, None, run_id, dry_run=False)
            except Exception:  # one destination's trouble must not stop the refresh of the others
                log.exception("destination %s: could not queue its scheduled refresh", destination.name)
                continue
            # No file named: a message the queue delivers late must not export the files of now over newer ones.
            messages.append({"run_id": run_id, "destination": destination.name, "blob": None, "full": False})
        return messages


def _with_budget(client: BlobServiceClient) -> BlobServiceClient:
    """The same account and credential, with the HTTP path's retries and timeouts."""
    return BlobServiceClient(client.url, credential=client.credential, max_single_get_size=4 * 1024 * 1024,
                             retry_policy=answer_retry(), **ANSWER_STORAGE_OPTIONS)


_lock = threading.Lock()
_service: ExportService | None = None


def get_service() -> ExportService:
    """The process-wide service, built on first use (never at import: a failing import loads 0 functions)."""
    global _service  # noqa: PLW0603 - one lazily built service per worker process
    with _lock:
        if _service is None:
            _service = ExportService.from_environment()
        return _service


def reset_service(service: ExportService | None = None) -> None:
    """Tests and the local runner swap in a service wired to Azurite, the simulator and a vault stand-in."""
    global _service  # noqa: PLW0603
    with _lock:
        _service = service


def run_store_from_environment() -> RunStore:
    """The runs container from the storage settings alone: a queued run's failure can still be recorded
    when the destinations document (and so the whole service) cannot be loaded."""
    settings = AppSettings.from_environment()
    return RunStore(blob_service_from_settings().get_container_client(settings.runs_container))
