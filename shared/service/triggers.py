"""The blob trigger's side: match a new file to its destination(s) and start one run each, once per version.

Delivery is at least once: receipts keyed on blob name + ETag (per destination when a model.json serves
several) make a duplicate event a no-op, and a receipt left `running` by a killed worker is taken over.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from shared.config.destinations import Destination
from shared.service.common import SupersededFile, TriggerOutcome, new_run_id
from shared.source.segment_files import is_model_json, is_segment_entry
from shared.state.sync_state import SyncState

if TYPE_CHECKING:
    from shared.service.export_service import ExportService

log = logging.getLogger("shared.service.export_service")


def handle_new_blob(service: ExportService, blob_name: str, etag: str | None = None) -> list[TriggerOutcome]:
    """Blob trigger: match the file to its destination(s), export it once per blob version each.

    A data file has one destination (longest prefix); a CDM model.json may serve several (one per
    table of a Customer Insights export, see DestinationsDocument.for_model_json).
    """
    if not is_segment_entry(blob_name):
        return [TriggerOutcome(blob_name, skipped="not a segment file (marker, manifest or unknown type)")]
    is_model = is_model_json(blob_name)
    targets = service.destinations.served_by(blob_name)
    if not targets:
        return [TriggerOutcome(blob_name, skipped="no destination is configured for this path")]
    if not is_model and service.is_cdm_partition(targets[0], blob_name):
        return [TriggerOutcome(blob_name, skipped="CDM partition: exported when its model.json lands")]
    if etag is None:
        etag = str(service.segments.get_blob_client(blob_name).get_blob_properties().etag)
    # One receipt per destination when a model.json serves several, so each is exported exactly once.
    outcomes: list[TriggerOutcome] = []
    crash: Exception | None = None
    for destination in targets:
        try:
            outcomes.append(_export_once(service, destination, blob_name, etag,
                                              scope=destination.name if len(targets) > 1 else ""))
        except Exception as exc:  # the other destinations still export; the host's retry redoes this one
            log.error("destination %s: export of %s crashed (%s)", destination.name, blob_name,
                      type(exc).__name__)
            crash = crash or exc
    if crash is not None:
        raise crash
    return outcomes


def _export_once(service: ExportService, destination: Destination, blob_name: str, etag: str, *,
                 scope: str) -> TriggerOutcome:
    run_id = new_run_id(destination.name)
    state = SyncState(service.runs.container, destination.name, config_digest="")  # only to look at its lock
    claim = service.runs.claim(blob_name, etag, run_id, scope, run_is_alive=state.held_by_a_run)
    if claim is None:
        return TriggerOutcome(blob_name, skipped="this version of the file was already exported")
    try:
        report = service.export(destination, None, run_id=run_id, lock_wait=service.trigger_lock_wait,
                             triggered_by=blob_name)
    except SupersededFile as exc:
        log.info("destination %s: %s skipped: %s", destination.name, blob_name, exc)
        service.runs.complete(claim, "done", {"run_id": run_id, "status": "superseded"})
        return TriggerOutcome(blob_name, skipped=f"{exc}; an older file would undo it")
    except BaseException:
        # Storage down, a crash, the host stopping us: the receipt must not say "running" for the host's
        # retries of this blob version to find (they would skip it as done).
        with contextlib.suppress(Exception):
            service.runs.complete(claim, "failed", {"run_id": run_id, "status": "crashed"})
        raise
    service.runs.complete(claim, "failed" if report.status in ("failed", "refused") else "done",
                       {"run_id": run_id, "status": report.status})
    return TriggerOutcome(blob_name, report=report)
