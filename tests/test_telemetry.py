"""The one telemetry record per finished run (shared.service.telemetry), captured by a real OpenTelemetry log
pipeline (the distro's own LoggingHandler, an in-memory exporter) from real runs through the functions harness,
and turned into the Application Insights envelope by the real Azure Monitor exporter: the dimension names the
alert queries use are the customDimensions a `traces` row gets.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

from shared.pipeline.engine import ExportOptions
from shared.service import telemetry
from tests.test_functions import (
    DESTINATIONS,
    FAST,
    Env,
    csv_bytes,
    emails,
    env,
    fire_blob_trigger,
    fire_timer,
    http,
    person,
    run_queue_message,
    sim,
)

__all__ = ["env", "sim"]  # fixtures, re-exported so pytest finds them in this module

ROOT = Path(__file__).resolve().parent.parent
# Any well-formed connection string: the envelope conversion below sends nothing.
CONNECTION_STRING = "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=http://127.0.0.1:9/"


@contextmanager
def captured_run_records() -> Iterator[InMemoryLogRecordExporter]:
    """RUN_LOGGER wired to an OpenTelemetry LoggerProvider as configure_azure_monitor wires it (its
    LoggingHandler on that logger), exporting to memory instead of Application Insights."""
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    handler = LoggingHandler(logger_provider=provider)
    logger = logging.getLogger(telemetry.RUN_LOGGER)
    logger.addHandler(handler)
    try:
        yield exporter
    finally:
        logger.removeHandler(handler)
        provider.shutdown()


def run_records(exporter: InMemoryLogRecordExporter) -> list[dict[str, Any]]:
    """The body and attributes of every run record exported so far."""
    out = []
    for data in exporter.get_finished_logs():
        record = data.log_record
        out.append({"body": record.body, **dict(record.attributes or {})})
    return out


def custom_dimensions(exporter: InMemoryLogRecordExporter) -> list[tuple[str, str, dict[str, str]]]:
    """(envelope name, message, properties) the Azure Monitor exporter makes of each record: properties are
    what Application Insights stores as the `traces` row's customDimensions."""
    from azure.monitor.opentelemetry.exporter import AzureMonitorLogExporter

    azure = AzureMonitorLogExporter(connection_string=CONNECTION_STRING, disable_offline_storage=True)
    out = []
    for data in exporter.get_finished_logs():
        envelope = azure._log_to_envelope(data)  # the exporter's own mapping, as sent on export
        base = envelope.data.base_data
        out.append((str(envelope.name), str(base.message), dict(base.properties or {})))
    return out


def test_a_blob_triggered_run_emits_one_record_with_its_dimensions_and_no_personal_data(env: Env) -> None:
    good = [person(n) for n in range(1, 6)]
    bad = [["CI-90001", "not-an-address", "Bad", "Row", "France"]]
    blob = env.upload("vip/2026/11/segment.csv", csv_bytes([*good, *bad]))

    with captured_run_records() as exporter:
        fire_blob_trigger(env.segments.container_name, blob)
    (report,) = env.reports()

    (record,) = run_records(exporter)
    assert record["body"] == telemetry.RUN_MESSAGE
    assert {k: record[k] for k in ("destination", "run_id", "status", "triggered_by", "dry_run")} == {
        "destination": "vip-customers", "run_id": report["run_id"], "status": "succeeded",
        "triggered_by": report["triggered_by"], "dry_run": False}
    assert record["triggered_by"] == "blob"
    assert isinstance(record["duration_ms"], int) and record["duration_ms"] >= 0
    counts = {k: v for k, v in report.items() if isinstance(v, int) and not isinstance(v, bool)}
    assert {"rows_read", "exported", "rejected_count", "requests_sent"} <= set(counts)
    assert {k: record[k] for k in counts} == counts  # every top-level integer count, with the report's value
    assert (record["rows_read"], record["exported"], record["rejected_count"]) == (6, 5, 1)
    assert set(telemetry.RUN_DIMENSIONS) | set(telemetry.RUN_COUNTS) <= set(record)

    text = json.dumps(record, default=str).lower()
    for address in emails(good) | {"not-an-address"}:
        assert address not in text
    assert "segment.csv" not in text  # not the source either: file names are the customer's to choose

    ((name, message, properties),) = custom_dimensions(exporter)
    assert (name, message) == ("Microsoft.ApplicationInsights.Message", telemetry.RUN_MESSAGE)  # -> `traces`
    assert properties["destination"] == "vip-customers" and properties["status"] == "succeeded"
    assert properties["rows_read"] == "6" and properties["dry_run"] == "False"  # values arrive as strings
    assert set(telemetry.RUN_DIMENSIONS) <= set(properties)


def test_a_queued_run_that_fails_emits_one_failed_record(env: Env) -> None:
    env.install()
    env.upload("vip/segment.csv", csv_bytes([person(1)]))
    started = http("POST", "destinations/vip-customers/exports", {})
    assert started.status == 202 and started.queued is not None
    env.set_destinations(DESTINATIONS[1:])  # vip-customers removed before the queued run starts
    env.install()

    with captured_run_records() as exporter:
        run_queue_message(started.queued)

    (record,) = run_records(exporter)
    assert (record["run_id"], record["status"], record["destination"]) == (
        started.json()["run_id"], "failed", "vip-customers")
    assert record["triggered_by"] == "http" and record["exported"] == 0


def test_a_partial_run_whose_jobs_settle_later_emits_its_final_status(env: Env) -> None:
    """The stale-destination alert looks for `succeeded` records: a run that ended `partial` only because its
    import jobs were still pending must say so again when the timer settles them, or the alert fires falsely."""
    service = env.install(options=ExportOptions(poll_interval=0.02, poll_timeout=0.1))
    env.sim.job_delay = 1.5  # the import job outlives the run's polling
    with captured_run_records() as exporter:
        fire_blob_trigger(env.segments.container_name, env.upload("vip/segment.csv", csv_bytes([person(1)])))
        (report,) = env.reports()
        assert env.sim.wait_for_jobs(10)
        env.sim.job_delay = 0.0
        service.options = FAST
        fire_timer(past_due=False)  # settles the pending run, then refreshes every destination
    statuses = [(r["run_id"], r["status"], r["pending"]) for r in run_records(exporter)
                if r["run_id"] == report["run_id"]]
    assert statuses == [(report["run_id"], "partial", 1), (report["run_id"], "succeeded", 0)]


def test_a_refused_run_and_a_dry_run_each_emit_their_status(env: Env) -> None:
    env.install()
    env.upload("noconsent/segment.csv", csv_bytes([person(1)]))
    env.upload("vip/segment.csv", csv_bytes([person(2)]))
    with captured_run_records() as exporter:
        fire_blob_trigger(env.segments.container_name, "noconsent/segment.csv")
        dry = http("POST", "destinations/vip-customers/exports", {"dry_run": True})
    assert dry.status == 200
    statuses = {(r["destination"], r["status"], r["dry_run"]) for r in run_records(exporter)}
    assert statuses == {("no-consent", "refused", False), ("vip-customers", "dry_run", True)}
    assert all(r["status"] in telemetry.FINAL_STATUSES for r in run_records(exporter))


def test_queued_and_running_reports_emit_nothing() -> None:
    with captured_run_records() as exporter:
        telemetry.emit_run({"run_id": "r1", "destination": "d", "status": "queued"})
        telemetry.emit_run({"run_id": "r1", "destination": "d", "status": "running"})
    assert run_records(exporter) == []


def test_a_report_key_that_logging_reserves_does_not_break_the_record() -> None:
    with captured_run_records() as exporter:
        telemetry.emit_run({"run_id": "r2", "destination": "d", "status": "failed", "lineno": 3, "rows_read": 1,
                            "started_at": "2026-12-01T10:00:00+00:00", "finished_at": "2026-12-01T10:00:02+00:00"})
    (record,) = run_records(exporter)
    assert record["rows_read"] == 1 and record["duration_ms"] == 2000


def test_no_connection_string_or_the_workers_own_setup_means_no_exporter() -> None:
    assert telemetry.configure_azure_monitor_export({}) is False
    assert telemetry.configure_azure_monitor_export({"APPLICATIONINSIGHTS_CONNECTION_STRING": CONNECTION_STRING,
                                                     "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "true"}) is False
    assert logging.getLogger(telemetry.RUN_LOGGER).propagate is True


def test_with_a_connection_string_only_the_run_logger_is_exported_and_nothing_is_instrumented() -> None:
    """In a child process (the distro sets process-wide providers): the function app's import configures the
    exporter on RUN_LOGGER alone, with no tracer and no instrumented HTTP library, and a run record reaches a
    loopback stand-in of the ingestion endpoint as a Message envelope with the dimensions as properties."""
    script = """
import gzip, http.server, json, os, threading
received = []
class Ingest(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        received.append(gzip.decompress(body) if self.headers.get("Content-Encoding") == "gzip" else body)
        answer = json.dumps({"itemsReceived": 1, "itemsAccepted": 1, "errors": []}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(answer))); self.end_headers()
        self.wfile.write(answer)
    def log_message(self, *args): pass
server = http.server.HTTPServer(("127.0.0.1", 0), Ingest)
threading.Thread(target=server.serve_forever, daemon=True).start()
os.environ["APPLICATIONINSIGHTS_CONNECTION_STRING"] = (
    "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=http://127.0.0.1:%d/"
    % server.server_address[1])
import logging, function_app
from opentelemetry import trace
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from shared.service import telemetry
run = logging.getLogger(telemetry.RUN_LOGGER)
assert any(isinstance(h, LoggingHandler) for h in run.handlers), run.handlers
assert not any(isinstance(h, LoggingHandler) for h in logging.getLogger().handlers)
assert run.propagate is False
assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"
import httpx
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
assert not HTTPXClientInstrumentor().is_instrumented_by_opentelemetry
from azure.core.settings import settings
assert settings.tracing_implementation() is None  # no span per storage or Key Vault call either
telemetry.emit_run({"run_id": "r9", "destination": "vip", "status": "partial", "dry_run": False, "exported": 4,
                    "started_at": "2026-12-01T10:00:00+00:00", "finished_at": "2026-12-01T10:00:01+00:00"})
items = [item for body in received for item in json.loads(body)]
(item,) = [i for i in items if i["name"] == "Microsoft.ApplicationInsights.Message"]
data = item["data"]["baseData"]
print(json.dumps({"message": data["message"], "properties": data["properties"]}))
"""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("APPLICATIONINSIGHTS_", "OTEL_"))}
    environ.update({# nothing leaves the machine: no SDK self-telemetry, no remote configuration, no IMDS
                    "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
                    "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
                    "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "otel"})
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=environ, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    sent = json.loads(done.stdout.strip().splitlines()[-1])
    assert sent["message"] == telemetry.RUN_MESSAGE
    assert {k: sent["properties"][k] for k in ("run_id", "destination", "status", "exported", "duration_ms")} == {
        "run_id": "r9", "destination": "vip", "status": "partial", "exported": "4", "duration_ms": "1000"}
