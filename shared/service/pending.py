"""The timer's side: settle import jobs earlier runs left pending, and queue one run per destination.

Settling keeps earlier reports truthful (their contacts were not recorded as exported, so the refresh that
follows sends them again anyway); it never holds up the refresh itself.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from shared.errors import ExportError
from shared.pipeline.report import settle_stored_batch
from shared.sendgrid.client import ImportJob, SendGridClient
from shared.sendgrid.errors import NotFound, SendGridError
from shared.service.common import new_run_id
from shared.service.telemetry import emit_run

if TYPE_CHECKING:
    from shared.service.export_service import ExportService

log = logging.getLogger("shared.service.export_service")

PENDING_BUDGET_SECONDS = 120.0  # the timer settles earlier runs' jobs for at most this long, then queues


def finish_pending_runs(service: ExportService, budget: float = PENDING_BUDGET_SECONDS) -> list[dict[str, Any]]:
    """Timer: poll the import jobs that were still pending when their run ended, and update the reports.

    Their contacts were not recorded as exported, so the refresh that follows sends them again anyway;
    this keeps the earlier reports truthful. No run is started after `budget` seconds: the timer's
    queue messages go out only when it returns, so settling must never hold up the refresh itself (the
    rest waits for the next timer run).
    """
    updated: list[dict[str, Any]] = []
    deadline = time.monotonic() + budget
    for run_id in service.runs.pending_runs():
        if time.monotonic() >= deadline:
            log.warning("pending import jobs of more runs are left for the next scheduled refresh")
            break
        try:
            settled = settle_pending(service, run_id)
        except Exception:  # one unreadable report must not stop the refresh of every destination
            log.exception("run %s: could not settle its pending import jobs, trying again next time", run_id)
            continue
        if settled is not None:
            updated.append(settled)
    return updated


def job_or_expired(client: SendGridClient, job_id: str) -> ImportJob:
    """A job SendGrid no longer knows (404: its status is kept for a while only) is final as 'expired':
    its contacts were never recorded as exported, so later refreshes have sent them again."""
    try:
        return client.get_import(job_id)
    except NotFound:
        return ImportJob(id=job_id, status="expired")


def settle_pending(service: ExportService, run_id: str) -> dict[str, Any] | None:
    """The run's report updated with the jobs that have finished since (None: nothing to update)."""
    report = service.runs.load_report(run_id)
    destination = service.destinations.get(str((report or {}).get("destination")))
    if report is None or destination is None:
        service.runs.clear_pending(run_id)
        return None
    open_jobs = [b["job_id"] for b in report.get("batches", [])
                 if b.get("status") in ("pending", "accepted") and b.get("job_id")]
    try:
        with service.client_for(destination) as client:
            final = {job_id: job for job_id in open_jobs if (job := job_or_expired(client, job_id)).is_final}
    except (ExportError, SendGridError) as exc:
        # One destination's bad key or SendGrid outage must not stop the refresh of every destination.
        log.warning("run %s: could not check its pending import jobs, trying again next time: %s",
                    run_id, exc)
        return None

    def settle(data: dict[str, Any], final: dict[str, ImportJob] = final) -> bool:
        for batch in data.get("batches", []):
            job = final.get(batch.get("job_id") or "")
            if job is not None and batch.get("status") in ("pending", "accepted"):
                settle_stored_batch(data, batch, job.status, created=job.created_count, updated=job.updated_count,
                                    errored=job.errored_count)
        return True

    settled = service.runs.update_report(run_id, settle)
    if settled is not None and settled["pending"] <= 0:
        service.runs.clear_pending(run_id)
        emit_run(settled)  # the run's final word: a `partial` that settled to `succeeded` must not look stale
    return settled


def queue_refresh(service: ExportService) -> list[dict[str, Any]]:
    """Timer: one queued export per destination, from its latest segment file.

    Each destination then runs in its own queue-triggered invocation (its own function timeout, retries
    and poison queue) instead of all of them one after another inside the timer's single invocation.
    """
    messages: list[dict[str, Any]] = []
    for destination in service.destinations.destinations:
        try:
            if service.latest_segment(destination) is None:
                log.warning("destination %s: no segment file under %s", destination.name, destination.segments)
                continue
            run_id = new_run_id(destination.name)
            service.mark_queued(destination, None, run_id, dry_run=False, trigger="schedule")
        except Exception:  # one destination's trouble must not stop the refresh of the others
            log.exception("destination %s: could not queue its scheduled refresh", destination.name)
            continue
        # No file named: a message the queue delivers late must not export the files of now over newer ones.
        messages.append({"run_id": run_id, "destination": destination.name, "blob": None, "full": False})
    return messages
