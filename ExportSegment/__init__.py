"""Exports started by a new segment file (blob trigger) or on demand (HTTP), and the queued worker.

The functions are thin: parse the trigger, call `shared.service.export_service`, log a one-line summary. Long
work never runs inside the HTTP request (answers are cut at 230 s): the HTTP function queues the run and
answers 202; `run_queued_export` does the work with the normal function timeout.
"""

from __future__ import annotations

import json
import logging
import re
from urllib.parse import urlsplit

import azure.functions as func
import azurefunctions.extensions.bindings.blob as blob_binding

from shared.errors import ConfigurationError, ExportError
from shared.service.erasure_service import ERASURES_PREFIX, handle_erasure_file
from shared.service.export_service import (
    EXPORT_QUEUE,
    ExportService,
    RequestRejected,
    get_service,
    new_run_id,
    run_store_from_environment,
)
from shared.service.history import Destination
from shared.service.queued import fail_run

bp = func.Blueprint()
log = logging.getLogger("ExportSegment")

# host.json extensions.queues.maxDequeueCount: after this many failed attempts the host moves the message to
# `export-requests-poison`, so the last attempt must leave a final status behind (not `queued` for ever).
MAX_DEQUEUE_COUNT = 5
RUN_ID = re.compile(r"[A-Za-z0-9-]{1,120}")  # new_run_id: <destination>-<YYYYMMDDTHHMMSSmmmZ>-<hex>
# For answers holding personal data (a preview's contacts, the rejects CSV): not kept by a browser or a proxy.
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


# The segments live in the account the platforms write to (SEGMENTS_STORAGE), not the app's own.
@bp.function_name("ExportOnNewSegmentFile")
@bp.blob_trigger(arg_name="client", path="%SEGMENTS_CONTAINER%/{name}", connection="SEGMENTS_STORAGE",
                 source=func.BlobSource.EVENT_GRID)
def export_on_new_segment_file(client: blob_binding.BlobClient) -> None:
    """Streams the blob through the SDK client (func.InputStream would hold the whole file in memory)."""
    service = get_service()
    if client.container_name != service.settings.segments_container:
        log.warning("blob trigger fired for another container; ignored")
        return
    if client.blob_name.startswith(ERASURES_PREFIX):  # an erasure request, never a segment
        erasure = handle_erasure_file(service, client.blob_name)
        log.info("erasure %s: %s", erasure and erasure["erasure_id"], erasure and erasure["status"])
        return
    for outcome in service.handle_new_blob(client.blob_name):
        if outcome.report is None:
            log.info("segment file skipped: %s", outcome.skipped)
        else:
            log.info("%s", outcome.report.summary())


@bp.function_name("StartExport")
@bp.route(route="destinations/{destination}/exports", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
@bp.queue_output(arg_name="queued", queue_name=EXPORT_QUEUE, connection="AzureWebJobsStorage")
def start_export(req: func.HttpRequest, queued: func.Out[str]) -> func.HttpResponse:
    found = _service_and_destination(req)
    if isinstance(found, func.HttpResponse):
        return found
    service, destination = found
    try:
        body = req.get_json() if req.get_body() else {}
    except ValueError:
        return _error(400, "the request body is not valid JSON")
    if not isinstance(body, dict):
        return _error(400, "the request body must be a JSON object")
    unknown = sorted(set(body) - {"blob", "dry_run", "full"})
    if unknown:
        return _error(400, f"unknown field(s): {', '.join(unknown)}")
    dry_run, full = body.get("dry_run", False), body.get("full", False)
    if not isinstance(dry_run, bool) or not isinstance(full, bool):
        return _error(400, "dry_run and full must be true or false")
    blob_name: str | None = None
    try:
        if body.get("blob") is not None:
            blob_name = service.check_named_blob(destination, body["blob"])
        elif service.latest_segment(destination) is None:
            return _error(404, "no segment file found for this destination")
    except RequestRejected as exc:
        return _error(exc.status, exc.message, **exc.details)
    run_id = new_run_id(destination.name)
    if dry_run:
        result = service.export_with_preview(destination, blob_name, run_id=run_id, dry_run=True, trigger="http")
        payload = result.report.to_dict()
        payload["preview"] = [json.loads(contact) for contact in result.preview]
        status = 200 if result.report.status == "dry_run" else 422
        return func.HttpResponse(json.dumps(payload), status_code=status, mimetype="application/json",
                                 headers=NO_STORE)
    # Without a blob the message names none: the run reads the segments' current files when it starts, so a
    # message the queue delivers late never exports older files over newer ones.
    service.mark_queued(destination, blob_name, run_id, dry_run=False, trigger="http", full=full)
    queued.set(json.dumps({"run_id": run_id, "destination": destination.name, "blob": blob_name, "full": full}))
    status_url = _status_url(req, f"runs/{run_id}")
    return func.HttpResponse(json.dumps({"run_id": run_id, "status": "queued", "status_url": status_url}),
                             status_code=202, mimetype="application/json", headers={"Location": status_url})


@bp.function_name("GetExportRun")
@bp.route(route="runs/{run_id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def get_export_run(req: func.HttpRequest) -> func.HttpResponse:
    found = _service_and_run_id(req)
    if isinstance(found, func.HttpResponse):
        return found
    service, run_id = found
    report = service.report(run_id, last_attempt=MAX_DEQUEUE_COUNT)
    if report is None:
        return _error(404, "no such run")
    return func.HttpResponse(json.dumps(report), status_code=200, mimetype="application/json")


def _service() -> ExportService | func.HttpResponse:
    """The service, or the JSON answer saying why the app cannot serve (never a bare 500 from the host)."""
    try:
        return get_service().answering()
    except ConfigurationError as exc:  # names the setting and the field, never a value
        return _error(500, f"the app's configuration is invalid: {exc}; fix the app settings", setting=exc.field)
    except Exception as exc:  # storage or Key Vault unreachable while building the clients: worth a retry
        log.exception("the app could not start serving the request")
        return _error(503, f"the app could not reach its storage or Key Vault ({type(exc).__name__}); try again")


def _service_and_destination(req: func.HttpRequest) -> tuple[ExportService, Destination] | func.HttpResponse:
    """The service and the destination the route names, or the JSON answer why not (404 lists the known)."""
    service = _service()
    if isinstance(service, func.HttpResponse):
        return service
    destination = service.destinations.get(req.route_params.get("destination", ""))
    if destination is None:
        return _error(404, "unknown destination", known=[d.name for d in service.destinations.destinations])
    return service, destination


def _service_and_run_id(req: func.HttpRequest) -> tuple[ExportService, str] | func.HttpResponse:
    """The service and the run ID the route names, or the JSON answer why not (400 before any storage call)."""
    run_id = req.route_params.get("run_id", "")
    if not RUN_ID.fullmatch(run_id):
        return _error(400, "malformed run ID")
    service = _service()
    return service if isinstance(service, func.HttpResponse) else (service, run_id)


@bp.function_name("RunQueuedExport")
@bp.queue_trigger(arg_name="message", queue_name=EXPORT_QUEUE, connection="AzureWebJobsStorage")
def run_queued_export(message: func.QueueMessage) -> None:
    try:
        request = json.loads(message.get_body())
        run_id, destination_name, blob_name = request["run_id"], request["destination"], request["blob"]
        if not all(isinstance(value, str) for value in (run_id, destination_name)) or \
                not isinstance(blob_name, str | None):
            raise TypeError("run_id and destination must be strings, blob a string or null")
    except (ValueError, KeyError, TypeError):
        log.error("a queued export message is malformed and was dropped (it is not one this app writes)")
        return
    attempt = message.dequeue_count or 1
    try:
        service = get_service()
    except ExportError as exc:  # e.g. a bad DESTINATIONS_JSON after a deployment: retrying will not help
        _record_failure(run_id, f"the app could not start the export: {exc}; fix the app settings and start "
                                "the export again")
        return
    except Exception as exc:  # storage or credentials: the host retries; the last attempt says why it gave up
        if attempt >= MAX_DEQUEUE_COUNT:
            _record_failure(run_id, f"the app could not start the export {attempt} times ({type(exc).__name__}); "
                                    "start the export again")
        raise
    destination = service.destinations.get(destination_name)
    if destination is None:
        log.error("queued run %s names a destination that no longer exists", run_id)
        service.fail_queued(run_id, f"destination {destination_name!r} is no longer configured; nothing was sent")
        return
    queued_report = service.runs.mark_running(run_id, attempt) or {}
    try:
        report = service.export(destination, blob_name, run_id=run_id, full=bool(request.get("full", False)),
                                lock_wait=service.trigger_lock_wait,
                                trigger=str(queued_report.get("triggered_by") or "queue"))
    except ExportError as exc:
        log.error("queued run %s failed: %s", run_id, exc)
        return
    except Exception as exc:
        # Storage down, a crash in the engine, ...: the host retries the message. On the last attempt the
        # status URL must stop saying `queued` (the message goes to the poison queue and nothing retries it).
        if attempt >= MAX_DEQUEUE_COUNT:
            _record_failure(run_id, f"the export failed {attempt} times ({type(exc).__name__}); the request was "
                                    f"moved to the {EXPORT_QUEUE}-poison queue: start the export again")
        raise
    log.info("%s", report.summary())


def _record_failure(run_id: str, error: str) -> None:
    """Say on the run's status URL why it will not run; built from the storage settings alone."""
    try:
        fail_run(run_store_from_environment(), run_id, error)  # and its telemetry record
    except Exception:  # storage may be what failed: the original error is the one to report
        log.exception("queued run %s: could not record its failure", run_id)


def _status_url(req: func.HttpRequest, route: str) -> str:
    """`route` under the request's scheme, host and any path before `/api/` (routes are case-insensitive),
    never its query string: that may hold the function key (`?code=`)."""
    url = urlsplit(req.url)
    path = url.path
    cut = path.lower().find("/api/")
    prefix = path[:cut] if cut >= 0 else ""
    return f"{url.scheme}://{url.netloc}{prefix}/api/{route}"


def _error(status: int, message: str, **extra: object) -> func.HttpResponse:
    return func.HttpResponse(json.dumps({"error": message, **extra}), status_code=status,
                             mimetype="application/json")
