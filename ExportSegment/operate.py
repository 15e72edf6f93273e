"""The operate API's read side: destinations, a destination's run history, a run's rejects file.

Thin like the export functions: check the request, call `shared.service.history`, answer JSON (errors in the
`{"error": ...}` shape of ExportSegment). Every route needs the function key; the rejects file holds
personal data (the rejected values) and is the only answer here that does.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import azure.functions as func
from azure.core.exceptions import AzureError

from ExportSegment import NO_STORE, _error, _service, _service_and_destination, _service_and_run_id
from shared.service import history

bp = func.Blueprint()
log = logging.getLogger("ExportSegment.operate")


@bp.function_name("ListDestinations")
@bp.route(route="destinations", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def list_destinations(req: func.HttpRequest) -> func.HttpResponse:
    service = _service()
    if isinstance(service, func.HttpResponse):
        return service
    try:
        return _json({"destinations": history.destinations(service)})
    except AzureError as exc:
        return _storage_error(exc)


@bp.function_name("ListDestinationRuns")
@bp.route(route="destinations/{destination}/runs", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def list_destination_runs(req: func.HttpRequest) -> func.HttpResponse:
    try:
        limit = history.parse_limit(req.params.get("limit"))
    except ValueError as exc:
        return _error(400, str(exc), parameter="limit")
    before = req.params.get("before") or None  # `before=` (empty) is the first page, as no `before` is
    found = _service_and_destination(req)
    if isinstance(found, func.HttpResponse):
        return found
    service, destination = found
    try:
        page = history.runs(service, destination, limit=limit, before=before)
    except history.BadToken as exc:
        return _error(400, f"before: {exc}; pass the `next` of the previous page unchanged", parameter="before")
    except AzureError as exc:
        return _storage_error(exc)
    return _json({"runs": page.runs, "next": page.next})


@bp.function_name("GetRunRejects")
@bp.route(route="runs/{run_id}/rejects", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def get_run_rejects(req: func.HttpRequest) -> func.HttpResponse:
    """The rejects CSV as stored. The worker sends one body (see history.MAX_REJECTS_BYTES), so the file is
    fetched chunk by chunk up to that size and refused with its size above it, never buffered unbounded."""
    found = _service_and_run_id(req)
    if isinstance(found, func.HttpResponse):
        return found
    service, run_id = found
    try:
        rejects = history.open_rejects(service, run_id)
        if rejects is None:
            return _no_rejects(service.runs.load_report(run_id))
        if rejects.size > history.MAX_REJECTS_BYTES:
            return _error(413, f"the rejects file is {rejects.size} bytes, more than this API sends "
                               f"({history.MAX_REJECTS_BYTES}); download it from the runs container",
                          blob=rejects.path, size=rejects.size)
        body = b"".join(rejects.chunks)
    except AzureError as exc:
        return _storage_error(exc)
    return func.HttpResponse(body, status_code=200, mimetype="text/csv", charset="utf-8", headers={
        **NO_STORE, "Content-Disposition": f'attachment; filename="{run_id}-rejects.csv"'})


def _no_rejects(report: dict[str, Any] | None) -> func.HttpResponse:
    if report is None:
        return _error(404, "no such run")
    if not report.get("rejected_count"):
        return _error(404, "this run rejected no row: it has no rejects file")
    return _error(404, "this run's rejects file is gone: expired after the retention period, or removed by an "
                       "erasure; its report still counts the rejected rows", rejected_count=report["rejected_count"])


def _json(payload: dict[str, Any]) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(payload), status_code=200, mimetype="application/json", headers=NO_STORE)


def _storage_error(exc: AzureError) -> func.HttpResponse:
    log.warning("the run history could not be read from storage (%s)", type(exc).__name__)
    return _error(503, f"the app could not read its runs container ({type(exc).__name__}); try again")
