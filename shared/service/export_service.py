"""Everything a trigger needs, wired once per process: destinations, Key Vault, storage, SendGrid.

The trigger functions and the CLI call these methods with plain values (blob names, destination names,
run IDs); nothing here knows about `azure.functions`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
from collections.abc import Callable
from typing import Any

from azure.core.exceptions import AzureError
from azure.storage.blob import BlobServiceClient, ContainerClient

from shared.config.destinations import Destination, DestinationsDocument, load_destinations
from shared.config.secrets import ApiKeyProvider
from shared.config.settings import AppSettings, setting
from shared.config.storage import blob_service_from_settings, segments_blob_service_from_settings, transport_options
from shared.config.time_budgets import ANSWER_STORAGE_OPTIONS, answer_retry
from shared.errors import ConfigurationError, ExportError
from shared.pipeline.engine import ExportOptions, ExportResult, describe_sources, export_segments
from shared.pipeline.report import RunReport
from shared.pipeline.result import Suppression
from shared.sendgrid.client import SendGridClient
from shared.service import pending, queued, requests, telemetry, triggers
from shared.service.common import (
    EXPORT_QUEUE,
    RequestRejected,
    RunRefused,
    SupersededFile,
    TriggerOutcome,
    config_digest,
    new_run_id,
)
from shared.service.erasure_service import load_suppression, unless_erased_since
from shared.service.pending import PENDING_BUDGET_SECONDS
from shared.source.segment_files import DATA_SUFFIXES, SegmentCatalog, SegmentFile, is_segment_entry
from shared.source.sources import BlobContainerSource
from shared.state.run_store import RunStore
from shared.state.sync_state import DestinationBusy, LockLost, SyncState

__all__ = ["DATA_SUFFIXES", "EXPORT_QUEUE", "ExportService", "RequestRejected", "RunRefused", "SupersededFile",
           "TriggerOutcome", "config_digest", "get_service", "is_segment_entry", "new_run_id", "reset_service"]

TRIGGER_LOCK_WAIT = 300.0

log = logging.getLogger(__name__)




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
        return SendGridClient(self.keys.get(secret), base_url=self.settings.base_url_for(destination.region),
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
        """A blob an on-demand request names, or RequestRejected (see shared.service.requests)."""
        return requests.check_named_blob(self, destination, blob_name)

    # -- running exports ------------------------------------------------------------------------------

    def handle_new_blob(self, blob_name: str, etag: str | None = None) -> list[TriggerOutcome]:
        """Blob trigger: see shared.service.triggers."""
        return triggers.handle_new_blob(self, blob_name, etag)
    def export(self, destination: Destination, blob_name: str | None = None, *, run_id: str, dry_run: bool = False,
               full: bool = False, lock_wait: float = 0.0, triggered_by: str | None = None,
               trigger: str | None = None) -> RunReport:
        """Run the destination once and persist its report (and rejected rows) in the runs container."""
        return self.export_with_preview(destination, blob_name, run_id=run_id, dry_run=dry_run, full=full,
                                        lock_wait=lock_wait, triggered_by=triggered_by, trigger=trigger).report

    def export_with_preview(self, destination: Destination, blob_name: str | None = None, *, run_id: str,
                            dry_run: bool = False, full: bool = False, lock_wait: float = 0.0,
                            triggered_by: str | None = None, trigger: str | None = None) -> ExportResult:
        """One run of the destination: the union of its segments' current files, resolved under its lock.

        `blob_name` replaces its segment's current file for this run only (HTTP `blob`, CLI `--blob`); in
        mirror mode a file older than that segment's current one is refused. `triggered_by` (the blob trigger):
        SupersededFile, before anything is read or sent, when that file is no longer its segment's current one.
        `trigger` (http | schedule | cli; the blob trigger by default) goes into the report for the run history.
        """
        run = {"triggered_by": trigger or ("blob" if triggered_by is not None else None), "full": full}
        source = BlobContainerSource(self.segments)
        if not destination.has_consent and not dry_run:
            report = self._blank_report(destination, run_id, blob_name or "(current segment files)")
            report.finish("refused", "no recorded consent for this destination: record who agreed to the "
                                     "data-privacy terms in its 'consent' before exporting")
            self._persist(ExportResult(report), run)
            return ExportResult(report)
        options = ExportOptions(**{**self.options.__dict__, "dry_run": dry_run,
                                   "max_billable_contacts": self.destinations.billable_limit(destination)})
        client: SendGridClient | None = None
        sync: SyncState | None = None
        files: list[SegmentFile] = []
        with contextlib.ExitStack() as unlock:  # the lock is held until the report is stored
            try:
                if not dry_run:
                    sync = SyncState(self.runs.container, destination.name, config_digest=config_digest(destination),
                                     list_id=destination.list_id_str)
                    unlock.callback(sync.release)  # after _persist: an erasure waiting finds this run's rejects
                    sync.acquire(wait=lock_wait)
                files = self._files_of_run(destination, blob_name)  # under the lock: no run changes them now
                options.suppression = load_suppression(self)  # under the lock too: an erasure adds before it locks
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
            except (DestinationBusy, ExportError) as exc:
                where = describe_sources(source, files) if files else blob_name or "(current segment files)"
                result = ExportResult(self._stopped_report(destination, run_id, where, exc, dry_run=dry_run))
            finally:
                if client is not None:
                    client.close()
            if dry_run and not destination.has_consent:
                result.report.notes.append("this destination has no recorded consent: a real run would be refused "
                                           "until its 'consent' says who agreed to the data-privacy terms")
            log.info("%s", result.report.summary())  # before persisting: the counts reach the log even if storage fails
            self._persist(result, run, checked=options.suppression if dry_run else None)
        return result

    def _files_of_run(self, destination: Destination, blob_name: str | None) -> list[SegmentFile]:
        """Every segment's current file, with `blob_name` (when given) in place of its segment's."""
        files = self.current_files(destination)
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

    def _stopped_report(self, destination: Destination, run_id: str, where: str, exc: Exception, *,
                        dry_run: bool) -> RunReport:
        """The report of a run that stopped before it sent anything: refused (busy, would undo) or failed."""
        report = self._blank_report(destination, run_id, where, dry_run=dry_run and not isinstance(exc, RunRefused))
        if isinstance(exc, DestinationBusy):
            report.dry_run = False
            report.finish("refused", f"{exc}; this file was not exported (a new trigger of it, or the next "
                                     "scheduled refresh of the latest file, will export it)")
        elif isinstance(exc, RunRefused):
            report.finish("refused", str(exc))
        else:
            report.finish("failed", str(exc))
        return report

    @staticmethod
    def _blank_report(destination: Destination, run_id: str, source: str, *, dry_run: bool = False,
                      status: str = "running") -> RunReport:
        return RunReport(run_id=run_id, destination=destination.name, list_id=destination.list_id_str,
                         source=source, mode=destination.mode, dry_run=dry_run, status=status)

    def _persist(self, result: ExportResult, run: dict[str, Any] | None = None, *,
                 checked: Suppression | None = None) -> None:
        """Store the report and the rejects file (uploaded from local disk), then delete the local file."""
        report = result.report
        try:
            if report.pending:
                self.runs.mark_pending(report.run_id)
            rejects = unless_erased_since(self, self.runs.upload_rejects(report.run_id, result.rejects), checked,
                                          report.notes)
            data = report.to_dict()
            data["rejects_blob"] = rejects
            data.update(run or {})  # how the run was started: triggered_by, full (the run history lists them)
            telemetry.emit_run(data)  # before saving: the record reaches Application Insights if storage fails
            self.runs.save_report(report.run_id, data)
        finally:
            result.close()

    def report(self, run_id: str, *, last_attempt: int | None = None) -> dict[str, Any] | None:
        """A run's stored report (see shared.service.queued: a killed last attempt reads `failed`)."""
        return queued.report_of(self, run_id, last_attempt=last_attempt)

    def mark_queued(self, destination: Destination, blob_name: str | None, run_id: str, dry_run: bool, *,
                    trigger: str = "http", full: bool = False) -> None:
        """`blob_name` None: the run reads the segments' current files when it starts, not those of now."""
        report = self._blank_report(destination, run_id, blob_name or "(current segment files when the run starts)",
                                    dry_run=dry_run, status="queued")
        self.runs.save_report(run_id, {**report.to_dict(), "triggered_by": trigger, "full": full})

    def fail_queued(self, run_id: str, error: str) -> None:
        queued.fail_run(self.runs, run_id, error)

    def finish_pending_runs(self, budget: float = PENDING_BUDGET_SECONDS) -> list[dict[str, Any]]:
        """Timer: see shared.service.pending."""
        return pending.finish_pending_runs(self, budget)
    def queue_refresh(self) -> list[dict[str, Any]]:
        """Timer: see shared.service.pending."""
        return pending.queue_refresh(self)

def _with_budget(client: BlobServiceClient) -> BlobServiceClient:
    """The same account and credential, with the HTTP path's retries and timeouts."""
    return BlobServiceClient(client.url, credential=client.credential, max_single_get_size=4 * 1024 * 1024,
                             retry_policy=answer_retry(), **ANSWER_STORAGE_OPTIONS, **transport_options())


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
