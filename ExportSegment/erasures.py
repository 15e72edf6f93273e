"""Erasure requests over HTTP: `POST /api/erasures` and `GET /api/erasures/{erasure_id}`.

Thin like the export functions: parse the request, call `shared.service.erasure_service`, answer JSON. The
request is stored first and then run at once; an erasure that cannot finish now (SendGrid still deleting, a
destination busy, a fault) answers 202 with its status URL and is resumed by the scheduled run. Answers hold
counts only, never an address.
"""

from __future__ import annotations

import json
import logging
import re

import azure.functions as func
from azure.core.exceptions import AzureError

from ExportSegment import _error, _service, _status_url
from shared.service.erasure_service import InvalidErasureRequest, erasure_report, submit_erasure
from shared.service.export_service import get_service

bp = func.Blueprint()
log = logging.getLogger("ExportSegment.erasures")

ERASURE_ID = re.compile(r"erasure-[A-Za-z0-9-]{1,100}")


@bp.function_name("StartErasure")
@bp.route(route="erasures", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def start_erasure(req: func.HttpRequest) -> func.HttpResponse:
    served = _service()
    if isinstance(served, func.HttpResponse):
        return served
    try:
        body = req.get_json()
    except ValueError:
        return _error(400, "the request body is not valid JSON")
    try:
        report = submit_erasure(get_service(), body)
    except InvalidErasureRequest as exc:
        return _error(400, str(exc))
    except AzureError as exc:
        return _error(503, f"the app could not reach its storage ({type(exc).__name__}); try again")
    status_url = _status_url(req, f"erasures/{report['erasure_id']}")
    log.info("erasure %s: %s", report["erasure_id"], report["status"])
    return func.HttpResponse(json.dumps({**report, "status_url": status_url}),
                             status_code=200 if report["status"] == "completed" else 202,
                             mimetype="application/json", headers={"Location": status_url})


@bp.function_name("GetErasure")
@bp.route(route="erasures/{erasure_id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def get_erasure(req: func.HttpRequest) -> func.HttpResponse:
    erasure_id = req.route_params.get("erasure_id", "")
    if not ERASURE_ID.fullmatch(erasure_id):
        return _error(400, "malformed erasure ID")
    service = _service()
    if isinstance(service, func.HttpResponse):
        return service
    try:
        report = erasure_report(service, erasure_id)
    except AzureError as exc:
        return _error(503, f"the app could not reach its storage ({type(exc).__name__}); try again")
    if report is None:
        return _error(404, "no such erasure")
    return func.HttpResponse(json.dumps(report), status_code=200, mimetype="application/json")
