"""One structured telemetry record per finished run, for Application Insights queries and alerts.

`emit_run(report)` logs ONE record through the dedicated logger RUN_LOGGER with the run's dimensions as
log-record attributes: destination, run_id, status, triggered_by, dry_run, every top-level integer count of the
report, and duration_ms. Only those: never the source (a blob name), the error text or any row, so no personal
data can reach telemetry. Alert rules (infra/app/alerts.bicep) query these names; tests/test_infra_alerts.py holds
the two together through RUN_DIMENSIONS and RUN_MESSAGE.

`configure_azure_monitor_export()` (called by function_app.py) sends that one logger to Application Insights
through Microsoft's OpenTelemetry distro when APPLICATIONINSIGHTS_CONNECTION_STRING is set. Why only that logger,
and not the host's `telemetryMode: OpenTelemetry` or the worker's PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY:
see README "Telemetry and alerts". The other logs keep going through the Functions host as before.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

RUN_LOGGER = "segment_export.runs"  # a name of its own: the only logger the distro exports (logger_name)
RUN_MESSAGE = "export_run"  # the record's message: `traces | where message == "export_run"`
# String and boolean dimensions, always present; the counts follow (every int at the report's top level).
RUN_DIMENSIONS = ("destination", "run_id", "status", "triggered_by", "dry_run", "duration_ms")
# Counts every finished report has (RunReport's integer fields); a report may add more, and they are sent too.
RUN_COUNTS = ("rows_read", "contacts_valid", "duplicates_merged", "unchanged_skipped", "exported", "in_failed_jobs",
              "not_sent", "pending", "removed_from_list", "removals_withheld", "requests_sent", "rejected_count",
              "truncated_count")
# What a run can end as (RunReport.status); queued and running are not final and are never emitted.
FINAL_STATUSES = ("succeeded", "partial", "failed", "refused", "dry_run")
# Attributes a LogRecord has already: `extra` must not name them (logging raises KeyError).
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
# Instrumentations the distro would switch on (dependency telemetry for every SendGrid and storage call): off.
_INSTRUMENTATIONS = ("azure_sdk", "django", "fastapi", "flask", "httpx", "httpx2", "psycopg2", "requests", "urllib",
                     "urllib3")

log = logging.getLogger(RUN_LOGGER)
log.setLevel(logging.INFO)  # one line per run, kept whatever the root level (the CLI, the worker)
_flush: Callable[[], Any] | None = None


def run_dimensions(report: Mapping[str, Any]) -> dict[str, Any]:
    """The record's attributes for one report (stored `to_dict()` form): names from RUN_DIMENSIONS + counts."""
    dims: dict[str, Any] = {
        "destination": str(report.get("destination") or ""),
        "run_id": str(report.get("run_id") or ""),
        "status": str(report.get("status") or ""),
        "triggered_by": str(report.get("triggered_by") or "unknown"),
        "dry_run": bool(report.get("dry_run")),
        "duration_ms": _duration_ms(report),
    }
    for key, value in report.items():
        if isinstance(value, int) and not isinstance(value, bool) and key not in dims and key not in _RESERVED:
            dims[key] = value
    return dims


def emit_run(report: Mapping[str, Any]) -> None:
    """Log the one record of a finished run. Never raises: telemetry must not fail an export."""
    try:
        if str(report.get("status")) not in FINAL_STATUSES:
            return
        log.info(RUN_MESSAGE, extra=run_dimensions(report))
        if _flush is not None:
            _flush()  # Flex scales to zero: do not leave the record in the batch queue of a stopping instance
    except Exception:  # the run's own outcome is what matters
        logging.getLogger(__name__).warning("could not emit the telemetry record of a run", exc_info=True)


def _duration_ms(report: Mapping[str, Any]) -> int:
    """From the start of the work (a queued run's `running_since`, else `started_at`) to `finished_at`."""
    try:
        start = datetime.fromisoformat(str(report.get("running_since") or report.get("started_at")))
        end = datetime.fromisoformat(str(report.get("finished_at")))
    except ValueError:
        return 0
    return max(0, int((end - start).total_seconds() * 1000))


def configure_azure_monitor_export(environ: Mapping[str, str] = os.environ) -> bool:
    """Export RUN_LOGGER's records to Application Insights (True), or do nothing (False) when there is no
    connection string (local runs, tests) or the worker's own distro set-up is on (it exports every logger).

    Entra ID: the exporter reads APPLICATIONINSIGHTS_AUTHENTICATION_STRING (ClientId=...;Authorization=AAD,
    set by infra/app/api.bicep), as the host does. Tracing, metrics, live metrics and every instrumentation
    are off: one log record per run is the whole point. The logger stops propagating, so the host does not
    send the same line a second time without its dimensions.
    """
    global _flush  # noqa: PLW0603 - set once per worker process, at import of function_app
    if not environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING"):
        return False
    if environ.get("PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY", "").lower() == "true":
        return False
    # The worker's choice too: the Functions detector reads the app's environment; the default VM one would
    # call the instance metadata endpoint, which a Flex instance is not.
    os.environ.setdefault("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", "azure_functions")
    # The distro takes tracing and metrics on or off from these alone (its disable_* arguments are overwritten).
    os.environ.setdefault("OTEL_TRACES_EXPORTER", "none")
    os.environ.setdefault("OTEL_METRICS_EXPORTER", "none")
    try:
        # Slow imports, only where the app sends telemetry (never the CLI or the tests).
        from azure.monitor.opentelemetry import configure_azure_monitor  # noqa: PLC0415
        from opentelemetry._logs import get_logger_provider  # noqa: PLC0415

        configure_azure_monitor(connection_string=environ["APPLICATIONINSIGHTS_CONNECTION_STRING"],
                                logger_name=RUN_LOGGER, enable_live_metrics=False, enable_performance_counters=False,
                                instrumentation_options={name: {"enabled": False} for name in _INSTRUMENTATIONS})
    except Exception:  # a telemetry problem must never keep the functions from loading
        logging.getLogger(__name__).warning("Application Insights export of run records is off", exc_info=True)
        return False
    provider = get_logger_provider()
    force_flush = getattr(provider, "force_flush", None)
    _flush = (lambda: force_flush(5000)) if callable(force_flush) else None
    log.propagate = False
    return True
