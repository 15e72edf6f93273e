"""The service's side of privacy: erasure requests (HTTP, dropped files, the timer's sweep), the
do-not-export set handed to each export, forgetting a destination, lifting a suppression.

The work is in shared.privacy; this wires it to the app's storage, Key Vault and SendGrid clients.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import AzureError, ResourceNotFoundError

from shared.config.destinations import ERASURES_PREFIX, Destination
from shared.config.secrets import ApiKeyProvider
from shared.config.settings import AppSettings
from shared.config.storage import blob_service_from_settings
from shared.errors import ConfigurationError, ExportError
from shared.mapping.email_rules import normalise_email
from shared.pipeline.result import Suppression
from shared.privacy.donotexport import DoNotExport, DoNotExportStore
from shared.privacy.erasure import EraserParts, blank_report, run_erasure
from shared.privacy.forget import forget_destination as forget
from shared.privacy.requests import (
    ErasureRequest,
    ErasureStore,
    InvalidErasureRequest,
    file_erasure_id,
    new_erasure_id,
    parse_body,
    parse_csv,
)
from shared.service.common import config_digest
from shared.state.sync_state import DestinationBusy, SyncState

if TYPE_CHECKING:
    from shared.service.export_service import ExportService

__all__ = ["ERASURES_PREFIX", "InvalidErasureRequest", "erasure_report", "forget_destination",
           "handle_erasure_file", "lift_suppression", "load_suppression", "resume_erasures", "submit_erasure",
           "suppression_from_environment"]

log = logging.getLogger(__name__)

# Tests shorten these (a real deletion job takes seconds; a running export may hold its lock for minutes).
ERASURE_TIMINGS: dict[str, float] = {"lock_wait": 300.0, "verify_timeout": 120.0, "poll_interval": 1.0}


def _hmac_key(service: ExportService) -> bytes:
    return service.keys.get(service.settings.erasure_key_secret).encode()


def load_suppression(service: ExportService) -> DoNotExport:
    """The set an export checks; the key is read only when someone was erased (else no Key Vault call)."""
    return DoNotExportStore(service.runs.container).load(lambda: _hmac_key(service))


def unless_erased_since(service: ExportService, rejects: str | None, checked: Suppression | None,
                        notes: list[str]) -> str | None:
    """The stored rejects file of a run, deleted if someone was erased after the run read `checked` (a dry run:
    it holds no lock, so an erasure may scrub before the file is stored). The file is stored first and the set
    read after: an erasure that adds its digests later scrubs after the file exists, and finds it."""
    if rejects is None or not isinstance(checked, DoNotExport):
        return rejects
    if checked.holds_exactly(DoNotExportStore(service.runs.container).digests()):
        return rejects
    service.runs.container.delete_blob(rejects)
    notes.append("someone was erased while this dry run read the files: its rejects file was not kept")
    return None


def suppression_from_environment(keys: ApiKeyProvider) -> DoNotExport:
    """`cli export` (no service, no run state): the app's do-not-export set, when its storage is configured."""
    try:
        blobs = blob_service_from_settings()
    except ConfigurationError:
        log.warning("no storage configured (AzureWebJobsStorage): this export cannot check the do-not-export "
                    "set, so it may send people who were erased")
        return DoNotExport.empty()
    settings = AppSettings.from_environment()
    try:
        digests = DoNotExportStore(blobs.get_container_client(settings.runs_container)).digests()
    except AzureError as exc:
        raise ExportError(f"the do-not-export set could not be read from storage ({type(exc).__name__}): nothing "
                          "was sent, since the file may hold people who were erased") from None
    return DoNotExport(keys.get(settings.erasure_key_secret).encode(), digests) if digests else DoNotExport.empty()


def _parts(service: ExportService, *, answering: bool = False) -> EraserParts:
    """`answering`: inside an HTTP request (cut at 230 s), wait less for locks and for SendGrid's deletion
    jobs; an erasure that cannot finish in time answers 202 and the scheduled run resumes it."""
    def state_for(destination: Destination) -> SyncState:
        return SyncState(service.runs.container, destination.name, config_digest=config_digest(destination),
                         list_id=destination.list_id_str)

    return EraserParts(ErasureStore(service.runs.container), service.runs, DoNotExportStore(service.runs.container),
                       lambda: _hmac_key(service), service.destinations.destinations, service.client_for, state_for,
                       lock_wait=ERASURE_TIMINGS["lock_wait"] / (10 if answering else 1),
                       verify_timeout=ERASURE_TIMINGS["verify_timeout"] / (2 if answering else 1),
                       poll_interval=ERASURE_TIMINGS["poll_interval"])


def submit_erasure(service: ExportService, body: Any, *, answering: bool = True) -> dict[str, Any]:
    """POST /api/erasures (`answering`: the shorter waits) or `cli erase`: store the request
    (InvalidErasureRequest when it is not one), then run it."""
    emails, reference = parse_body(body)
    request = ErasureRequest(new_erasure_id(), reference, emails, "http")
    store = ErasureStore(service.runs.container)
    store.save_request(request)
    store.save_report(blank_report(request))
    return run_erasure(_parts(service, answering=answering), request.id) or blank_report(request)


def handle_erasure_file(service: ExportService, blob_name: str) -> dict[str, Any] | None:
    """A CSV dropped under erasures/: stored as a request, deleted from the segments container, then run.
    None when the blob is gone already (a redelivered event of a file processed before)."""
    blob = service.segments.get_blob_client(blob_name)
    try:
        etag = str(blob.get_blob_properties().etag)
        data = blob.download_blob().readall()
    except ResourceNotFoundError:
        return None
    erasure_id = file_erasure_id(blob_name, etag)
    # The file's name is its reference, unless it holds an address (reports and logs never do).
    reference = blob_name if "@" not in blob_name else f"{ERASURES_PREFIX}(a name holding an address)"
    try:
        emails = parse_csv(data, reference)
    except InvalidErasureRequest as exc:
        log.error("erasure file %s refused: %s", reference, exc)
        report = blank_report(ErasureRequest(erasure_id, reference, [], "file"), status="refused")
        report["error"] = str(exc)
        ErasureStore(service.runs.container).save_report(report)
        return report
    request = ErasureRequest(erasure_id, reference, emails, "file")
    stored = ErasureStore(service.runs.container)
    if stored.save_request(request):
        stored.save_report(blank_report(request))
    with contextlib.suppress(ResourceNotFoundError):  # the request is stored: the file may go now
        blob.delete_blob()
    return run_erasure(_parts(service), erasure_id)


def erasure_report(service: ExportService, erasure_id: str) -> dict[str, Any] | None:
    return ErasureStore(service.runs.container).load_report(erasure_id)


def resume_erasures(service: ExportService) -> list[dict[str, Any]]:
    """Every stored request not yet complete (killed, failed, or waiting for SendGrid), run again."""
    reports = []
    for erasure_id in ErasureStore(service.runs.container).open_requests():
        report = run_erasure(_parts(service), erasure_id)
        if report is not None:
            reports.append(report)
    return reports


def lift_suppression(service: ExportService, emails: list[str]) -> int:
    """Take addresses out of the do-not-export set (people who opted in again); returns how many were in it."""
    normalised = [e for e in (normalise_email(raw)[0] for raw in emails) if e is not None]
    return DoNotExportStore(service.runs.container).remove(_hmac_key(service), normalised)


def forget_destination(service: ExportService, name: str, *, remove_from_list: bool) -> dict[str, Any]:
    """Its state removed; a destination no longer configured can be forgotten, but not taken off its list."""
    destination = service.destinations.get(name)
    if destination is None and remove_from_list:
        raise KeyError(name)
    state = SyncState(service.runs.container, name, config_digest="")
    client = service.client_for(destination) if remove_from_list and destination is not None else None
    try:
        return forget(service.runs, name, destination, state, client, lock_wait=ERASURE_TIMINGS["lock_wait"])
    except DestinationBusy as exc:
        raise ExportError(f"{exc}: nothing was deleted; try again once its run has finished") from None
    finally:
        if client is not None:
            client.close()
