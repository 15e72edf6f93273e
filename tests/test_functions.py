"""The registered Azure Functions, invoked as the host would, against Azurite, the SendGrid simulator and the
Key Vault stand-in.

Each function is taken from `function_app.app.get_functions()` and called with the objects the Python worker
builds: the blob trigger gets an SDK `BlobClient` made by the blob extension's own converter from the
`model_binding_data` the host sends; HTTP functions get `func.HttpRequest` with route parameters parsed from
the registered route; the queue worker gets a `func.QueueMessage` decoded by azure.functions' converter from
the message the HTTP function put in its output binding; the timer gets a `TimerRequest` from its converter.
The invoking is devtools/functions_host.py, which the local development server (devtools/serve.py) uses too.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import threading
import time
import typing
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func
import pytest
from azure.functions.meta import Datum
from azure.functions.timer import TimerRequestConverter
from azure.storage.blob import BlobServiceClient, ContainerClient

import ExportSegment as export_segment_module
from devtools.functions_host import (
    CapturedOut,
    bindings,
    deliver_queue_message,
    find_route,
    fire_blob_trigger,
    invoke_http,
    queue_function,
    registered,
    registered_functions,
)
from sendgrid_simulator import Simulator
from shared.config.secrets import ApiKeyProvider
from shared.errors import ConfigurationError
from shared.pipeline.engine import ExportOptions
from shared.service.export_service import EXPORT_QUEUE, ExportService, get_service, reset_service
from tests.azurite import Azurite
from tests.keyvault_standin import KeyVaultStandIn
from tests.sendgrid_fixture import running_simulator

ROOT_DIR = Path(__file__).resolve().parent.parent
API_KEY = "SG.functions-test-key.0123456789abcdef"
VIP_LIST = "5b0c3a1e-8d7f-4c2a-9e61-3f2d7a9b0c11"
NEWS_LIST = "8e2f4a6b-1c3d-4e5f-a7b8-c9d0e1f2a3b4"
NOCONSENT_LIST = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
CDM_LIST = "1a2b3c4d-5e6f-4a8b-9c0d-e1f2a3b4c5d6"
SECRET_NAME = "sendgrid-api-key"
HOST = "http://localhost:7071"
CONSENT = {"agreed_by": "marketing-ops@example.com", "agreed_at": "2026-11-01T09:00:00Z"}
MAPPING = {"email": "PrimaryEmail", "first_name": "FirstName", "last_name": "LastName", "country": "Country"}
HEADER = ["CustomerId", "PrimaryEmail", "FirstName", "LastName", "Country"]
CDM_PREFIX = "CustomerInsights_1234/sendgrid/"
PUT_CONTACTS = "PUT /v3/marketing/contacts"
FAST = ExportOptions(poll_interval=0.02, poll_timeout=30.0)


def destination(name: str, list_id: str, prefix: str, *, consent: bool = True, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": name, "list_id": list_id, "api_key_secret": SECRET_NAME, "segments": [prefix],
                           "field_mapping": MAPPING, **extra}
    if consent:
        doc["consent"] = CONSENT
    return doc


DESTINATIONS = [
    destination("vip-customers", VIP_LIST, "vip/"),
    destination("newsletter", NEWS_LIST, "news/"),
    destination("no-consent", NOCONSENT_LIST, "noconsent/", consent=False),
    destination("cdm-vip", CDM_LIST, CDM_PREFIX),
]


# -- segment files ----------------------------------------------------------------------------------------

def person(n: int, tag: str = "p") -> list[str]:
    return [f"CI-{n:05d}", f"{tag}.person{n}@example.com", f"First{n}", f"Last{n}", "France"]


def csv_bytes(rows: list[list[str]], *, header: bool = True) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(HEADER)
    writer.writerows(rows)
    return out.getvalue().encode()


def emails(rows: list[list[str]]) -> set[str]:
    return {row[1].lower() for row in rows}


# -- the environment: settings, containers, simulator -----------------------------------------------------

@dataclass
class Env:
    sim: Simulator
    blobs: BlobServiceClient
    segments: ContainerClient
    runs: ContainerClient
    monkeypatch: pytest.MonkeyPatch
    providers: list[ApiKeyProvider] = field(default_factory=list)

    def upload(self, name: str, data: bytes) -> str:
        self.segments.upload_blob(name, data, overwrite=True)
        return name

    def install(self, *, keys: ApiKeyProvider | None = None, options: ExportOptions = FAST) -> ExportService:
        """The process-wide service, built from the settings like the app's, with fast polling."""
        if keys is not None:
            self.providers.append(keys)
        service = ExportService.from_environment(keys=keys, options=options)
        reset_service(service)
        return service

    def set_destinations(self, destinations: list[dict[str, Any]]) -> None:
        self.monkeypatch.setenv("DESTINATIONS_JSON", json.dumps({"destinations": destinations}))
        reset_service(None)

    def report_names(self) -> list[str]:
        if not self.runs.exists():
            return []
        return sorted(b.name for b in self.runs.list_blobs(name_starts_with="reports/"))

    def reports(self) -> list[dict[str, Any]]:
        return [json.loads(self.runs.download_blob(n).readall()) for n in self.report_names()]

    def report(self, run_id: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.runs.download_blob(f"reports/{run_id}.json").readall())
        return data

    def puts(self) -> int:
        return self.sim.request_counts.get(PUT_CONTACTS, 0)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """The team's simulator fixture (OpenAPI-validated when the specs exist), with our key and lists."""
    for simulator in running_simulator():
        simulator.set_api_keys({API_KEY: None})
        for name, list_id in (("vip", VIP_LIST), ("news", NEWS_LIST), ("noconsent", NOCONSENT_LIST),
                              ("cdm", CDM_LIST)):
            simulator.create_list(name, list_id=list_id)
        yield simulator


@pytest.fixture
def env(azurite: Azurite, sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    tag = uuid.uuid4().hex[:12]
    segments = blobs.create_container(f"segments-{tag}")
    runs = blobs.get_container_client(f"runs-{tag}")
    for name in ("KEY_VAULT_URL", "AZURE_CLIENT_ID", "IDENTITY_ENDPOINT", "WEBSITE_INSTANCE_ID",
                 "AzureWebJobsStorage__blobServiceUri", "AzureWebJobsStorage__accountName"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    monkeypatch.setenv("SEGMENTS_STORAGE", azurite.connection_string)  # the blob trigger's connection
    monkeypatch.setenv("SEGMENTS_CONTAINER", segments.container_name)
    monkeypatch.setenv("RUNS_CONTAINER", runs.container_name)
    monkeypatch.setenv("SENDGRID_BASE_URL", sim.base_url)
    monkeypatch.setenv("LOCAL_DEV_SENDGRID_API_KEY", API_KEY)
    monkeypatch.setenv("REFRESH_SCHEDULE", "0 0 6 * * *")
    monkeypatch.setenv("DESTINATIONS_JSON", json.dumps({"destinations": DESTINATIONS}))
    reset_service(None)
    environment = Env(sim, blobs, segments, runs, monkeypatch)
    try:
        yield environment
    finally:
        reset_service(None)
        for provider in environment.providers:
            provider.close()
        segments.delete_container()
        if runs.exists():
            runs.delete_container()


# -- invoking the registered functions as the host does ---------------------------------------------------

@dataclass
class HttpResult:
    response: func.HttpResponse
    queued: CapturedOut | None

    @property
    def status(self) -> int:
        return int(self.response.status_code)

    def json(self) -> Any:
        assert self.response.mimetype == "application/json"
        return json.loads(self.response.get_body())


def http(method: str, path: str, body: bytes | dict[str, Any] | None = None, *,
         headers: dict[str, str] | None = None) -> HttpResult:
    """Route `METHOD /api/<path>[?query]` to the registered HTTP function whose route and methods match it
    (devtools.functions_host, which the local development server uses too)."""
    raw = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
    split = urlsplit(path)
    found = find_route(method, split.path)
    if found is None:
        raise AssertionError(f"no registered function serves {method} /api/{path}")
    route, params = found
    request = func.HttpRequest(method, f"{HOST}/api/{path}", body=raw, route_params=params,
                               params=dict(parse_qsl(split.query, keep_blank_values=True)),
                               headers={**({"Content-Type": "application/json"} if raw else {}), **(headers or {})})
    response, outputs = invoke_http(route, request)
    return HttpResult(response, next(iter(outputs.values()), None))


def run_queue_message(out: CapturedOut | str, *, dequeue_count: int = 1) -> None:
    """Send what StartExport put in its output binding to RunQueuedExport, through both converters."""
    deliver_queue_message(EXPORT_QUEUE, out if isinstance(out, str) else out.get(), dequeue_count=dequeue_count)
    assert queue_function(EXPORT_QUEUE) is registered("RunQueuedExport")


def fire_timer(past_due: bool = False, *, run_queued: bool = True) -> list[str]:
    """The timer, then (like the host) each export it queued, through RunQueuedExport."""
    timer = TimerRequestConverter.decode(Datum(json.dumps({"IsPastDue": past_due}), "json"), trigger_metadata={})
    queued = CapturedOut()
    registered("ScheduledRefresh").get_user_function()(timer, queued)
    messages: list[str] = queued.get()
    assert isinstance(messages, list)
    if run_queued:
        for message in messages:
            run_queue_message(message)
    return messages


# -- registration -----------------------------------------------------------------------------------------

def test_the_timer_queues_one_export_per_destination_and_each_runs_on_its_own(env: Env) -> None:
    env.set_destinations(DESTINATIONS[:2])
    env.install()
    env.upload("vip/segment.csv", csv_bytes([person(1, "vip")]))
    env.upload("news/segment.csv", csv_bytes([person(1, "news")]))
    messages = [json.loads(m) for m in fire_timer(run_queued=False)]
    # No file named: each run reads its segments' current files when it starts (a late message is never stale).
    assert sorted((m["destination"], m["blob"]) for m in messages) == [("newsletter", None), ("vip-customers", None)]
    assert env.puts() == 0  # nothing ran inside the timer's invocation
    assert {env.report(m["run_id"])["status"] for m in messages} == {"queued"}  # status URLs work at once
    for message in messages:
        run_queue_message(json.dumps(message))
    assert {env.report(m["run_id"])["status"] for m in messages} == {"succeeded"}
    assert set(env.sim.list_contacts(VIP_LIST)) == {person(1, "vip")[1]}


def test_every_function_is_registered_with_its_trigger() -> None:
    kinds = {f.get_function_name(): [b["type"] for b in json.loads(f.get_function_json())["bindings"]
                                     if b["direction"] == "IN"] for f in registered_functions()}
    assert kinds == {"ExportOnNewSegmentFile": ["blobTrigger"], "StartExport": ["httpTrigger"],
                     "GetExportRun": ["httpTrigger"], "RunQueuedExport": ["queueTrigger"],
                     "ScheduledRefresh": ["timerTrigger"], "Console": ["httpTrigger"],
                     "ListDestinations": ["httpTrigger"], "ListDestinationRuns": ["httpTrigger"],
                     "GetRunRejects": ["httpTrigger"], "StartErasure": ["httpTrigger"],
                     "GetErasure": ["httpTrigger"]}
    blob = next(b for b in bindings("ExportOnNewSegmentFile") if b["type"] == "blobTrigger")
    assert blob["source"] == "EventGrid" and blob["path"] == "%SEGMENTS_CONTAINER%/{name}"
    timer = next(b for b in bindings("ScheduledRefresh") if b["type"] == "timerTrigger")
    assert timer["schedule"] == "%REFRESH_SCHEDULE%" and timer["runOnStartup"] is False
    queue_out = next(b for b in bindings("StartExport") if b["type"] == "queue")
    queue_in = next(b for b in bindings("RunQueuedExport") if b["type"] == "queueTrigger")
    assert queue_out["queueName"] == queue_in["queueName"]


def test_every_output_binding_type_is_one_the_worker_accepts() -> None:
    """The worker refuses to index a function whose Out[...] type its binding converter does not accept
    (e.g. the built-in `list[str]`); calling the functions directly, as the other tests do, never checks."""
    checked = []
    for function in registered_functions():
        user_function = function.get_user_function()
        hints = typing.get_type_hints(user_function)
        types = {b["name"]: b["type"] for b in json.loads(function.get_function_json())["bindings"]}
        for name, hint in hints.items():
            if typing.get_origin(hint) is func.Out:
                converter = func.meta.get_binding_registry().get(types[name])
                assert converter is not None and converter.check_output_type_annotation(typing.get_args(hint)[0]), \
                    f"{function.get_function_name()}: {name}: {hint}"
                checked.append(function.get_function_name())
    assert sorted(checked) == ["ScheduledRefresh", "StartExport"]


@pytest.mark.parametrize("name", ["StartExport", "GetExportRun"])
def test_http_functions_require_a_function_key(name: str) -> None:
    trigger = next(b for b in bindings(name) if b["type"] == "httpTrigger")
    assert trigger["authLevel"] == "FUNCTION"


# -- blob trigger -----------------------------------------------------------------------------------------

def test_blob_trigger_exports_the_csv_and_stores_report_and_rejects(env: Env) -> None:
    good = [person(n) for n in range(1, 6)]
    bad = [["CI-90001", "not-an-address", "Bad", "Row", "France"], ["CI-90002", "", "Empty", "Email", "Spain"]]
    duplicate = [good[0][0], good[0][1].upper(), "Renamed", good[0][3], good[0][4]]
    blob = env.upload("vip/2026/11/segment.csv", csv_bytes([*good, bad[0], duplicate, bad[1]]))

    fire_blob_trigger(env.segments.container_name, blob)  # the service is built lazily from the settings

    members = env.sim.list_contacts(VIP_LIST)
    assert set(members) == emails(good)
    assert members[good[0][1]]["first_name"] == "Renamed"  # last row wins
    assert env.sim.list_contacts(NEWS_LIST) == {}
    (report,) = env.reports()
    assert report["status"] == "succeeded" and report["balanced"] is True
    assert report["destination"] == "vip-customers" and report["list_id"] == VIP_LIST
    assert (report["rows_read"], report["exported"], report["rejected_count"], report["duplicates_merged"]) == \
        (8, 5, 2, 1)
    assert sorted(r["row"] for r in report["rejected"]) == [6, 8]
    assert report["rejects_blob"] == f"rejects/{report['run_id']}.csv"
    rejects = list(csv.DictReader(io.StringIO(env.runs.download_blob(report["rejects_blob"]).readall().decode())))
    assert [(r["row"], r["field"], r["value"]) for r in rejects] == [("6", "email", "not-an-address"),
                                                                   ("8", "email", "")]
    assert all(r["reason"] for r in rejects)


def test_a_second_trigger_of_the_same_blob_version_does_not_export_again(env: Env) -> None:
    env.install()
    rows = [person(n) for n in range(1, 4)]
    blob = env.upload("vip/segment.csv", csv_bytes(rows))
    fire_blob_trigger(env.segments.container_name, blob)
    assert env.puts() == 1
    reports = env.report_names()

    fire_blob_trigger(env.segments.container_name, blob)  # Event Grid delivers at least once

    assert env.puts() == 1
    assert env.report_names() == reports

    # A new version of the file (new ETag) is a new export: only the added profile is sent.
    env.upload(blob, csv_bytes([*rows, person(4)]))
    fire_blob_trigger(env.segments.container_name, blob)
    assert env.puts() == 2
    assert env.sim.upsert_batches[-1].emails == [person(4)[1]]
    assert set(env.sim.list_contacts(VIP_LIST)) == emails([*rows, person(4)])


def test_concurrent_duplicate_triggers_export_once(env: Env) -> None:
    env.install()
    blob = env.upload("vip/segment.csv", csv_bytes([person(n) for n in range(1, 4)]))
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def fire() -> None:
        try:
            start.wait()
            fire_blob_trigger(env.segments.container_name, blob)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fire) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert env.puts() == 1
    assert len(env.report_names()) == 1


@pytest.mark.parametrize("blob_name", [
    "elsewhere/segment.csv",           # no destination has this prefix
    "vip/_SUCCESS",                    # marker file
    "vip/part-0001.csv.crc",           # checksum file
    "vip/manifest-2026.json",          # manifest
    "vip/readme.pdf",                  # not a segment format
])
def test_blobs_that_are_not_exports_are_skipped_without_error(env: Env, caplog: pytest.LogCaptureFixture,
                                                              blob_name: str) -> None:
    env.install()
    env.upload(blob_name, csv_bytes([person(1)]))
    caplog.set_level(logging.INFO, logger="ExportSegment")

    fire_blob_trigger(env.segments.container_name, blob_name)

    assert env.sim.request_log == []
    assert env.report_names() == []
    assert any(r.name == "ExportSegment" and "skipped" in r.getMessage() for r in caplog.records)


def test_a_blob_in_another_container_is_ignored(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    env.install()
    other = env.blobs.create_container(f"other-{uuid.uuid4().hex[:12]}")
    try:
        other.upload_blob("vip/segment.csv", csv_bytes([person(1)]))
        caplog.set_level(logging.INFO, logger="ExportSegment")
        fire_blob_trigger(other.container_name, "vip/segment.csv")
    finally:
        other.delete_container()
    assert env.sim.request_log == []
    assert env.report_names() == []
    assert any("another container" in r.getMessage() for r in caplog.records)


def cdm_model(env: Env, partitions: list[str]) -> bytes:
    attributes = [{"name": a, "dataType": "string"} for a in HEADER]
    entity = {"$type": "LocalEntity", "name": "VipCustomers", "attributes": attributes,
              "partitions": [{"name": p.rsplit("/", 1)[1].removesuffix(".csv"),
                              "location": f"{env.segments.url}/{p}?snapshot=2026-11-01T06:00:00Z"}
                             for p in partitions]}
    return json.dumps({"name": "export", "version": "1.0", "entities": [entity]}).encode()


def test_cdm_folder_is_exported_when_model_json_lands_and_partitions_alone_are_skipped(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    env.install()
    caplog.set_level(logging.INFO, logger="ExportSegment")
    first = [person(n, "cdm") for n in range(1, 5)]
    part1 = f"{CDM_PREFIX}VipCustomers/2026/11/01/0600/VipCustomers_1.csv"
    part2 = f"{CDM_PREFIX}VipCustomers/2026/11/01/0600/VipCustomers_2.csv"
    model = f"{CDM_PREFIX}model.json"

    # Partitions land first (Customer Insights' write order is not documented): nothing is exported yet.
    env.upload(part1, csv_bytes(first[:2], header=False))
    fire_blob_trigger(env.segments.container_name, part1)
    env.upload(part2, csv_bytes(first[2:], header=False))
    fire_blob_trigger(env.segments.container_name, part2)
    assert env.sim.request_log == [] and env.report_names() == []

    env.upload(model, cdm_model(env, [part1, part2]))
    fire_blob_trigger(env.segments.container_name, model)
    assert set(env.sim.list_contacts(CDM_LIST)) == emails(first)
    (report,) = env.reports()
    assert (report["status"], report["rows_read"], report["exported"]) == ("succeeded", 4, 4)
    assert report["destination"] == "cdm-vip"

    # A later trigger of a partition that model.json lists is skipped too.
    fire_blob_trigger(env.segments.container_name, part1)
    assert len(env.report_names()) == 1

    # The next refresh writes a new timestamped folder before it updates model.json: the new partition,
    # not listed by the current model.json, is still not exported on its own.
    second = [*first, person(5, "cdm")]
    part_new = f"{CDM_PREFIX}VipCustomers/2026/11/02/0600/VipCustomers_1.csv"
    env.upload(part_new, csv_bytes(second, header=False))
    puts = env.puts()
    fire_blob_trigger(env.segments.container_name, part_new)
    assert env.puts() == puts and len(env.report_names()) == 1

    env.upload(model, cdm_model(env, [part_new]))
    fire_blob_trigger(env.segments.container_name, model)
    assert set(env.sim.list_contacts(CDM_LIST)) == emails(second)
    assert env.sim.upsert_batches[-1].emails == [person(5, "cdm")[1]]  # incremental: only the new profile
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 4 and all("CDM partition" in m for m in skipped)


def test_a_destination_without_consent_does_not_export_and_says_why(env: Env) -> None:
    env.install()
    blob = env.upload("noconsent/segment.csv", csv_bytes([person(1), person(2)]))

    fire_blob_trigger(env.segments.container_name, blob)

    assert env.puts() == 0
    assert env.sim.list_contacts(NOCONSENT_LIST) == {}
    (report,) = env.reports()
    assert report["status"] == "refused"
    assert "consent" in report["error"] and report["exported"] == 0

    # The HTTP route leads to the same refusal through the queue.
    started = http("POST", "destinations/no-consent/exports", {})
    assert started.status == 202 and started.queued is not None
    run_queue_message(started.queued)
    status = http("GET", f"runs/{started.json()['run_id']}").json()
    assert status["status"] == "refused" and "consent" in status["error"]
    assert env.puts() == 0

    # A preview still works (nothing is sent) but says the real run would be refused.
    preview = http("POST", "destinations/no-consent/exports", {"dry_run": True})
    assert preview.status == 200 and preview.json()["status"] == "dry_run"
    assert any("no recorded consent" in note for note in preview.json()["notes"])
    assert env.puts() == 0


def test_a_rotated_key_is_re_read_from_key_vault_once_after_a_401(env: Env, keyvault: KeyVaultStandIn,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    key_a, key_b = "SG.rotation-key-A.abcdefghijklmnop", "SG.rotation-key-B.qrstuvwxyz012345"
    env.monkeypatch.delenv("LOCAL_DEV_SENDGRID_API_KEY")
    env.monkeypatch.setenv("KEY_VAULT_URL", keyvault.url)
    keyvault.set_secret(SECRET_NAME, key_a)
    env.sim.set_api_keys({key_a: None})
    # The provider the service would build from KEY_VAULT_URL, with the stand-in's credential and CA.
    service = env.install(keys=ApiKeyProvider(keyvault.url, credential=keyvault.credential,
                                              client_kwargs=keyvault.client_kwargs))
    assert service.keys.vault_url == keyvault.url.strip()
    caplog.set_level(logging.DEBUG)

    first = [person(n) for n in range(1, 4)]
    fire_blob_trigger(env.segments.container_name, env.upload("vip/one.csv", csv_bytes(first)))
    assert len(keyvault.secret_reads()) == 1
    assert set(env.sim.list_contacts(VIP_LIST)) == emails(first)

    env.sim.set_api_keys({key_b: None})
    keyvault.set_secret(SECRET_NAME, key_b)
    second = [person(n) for n in range(4, 7)]
    time.sleep(1.1)  # a newer file (Last-Modified counts whole seconds)
    fire_blob_trigger(env.segments.container_name, env.upload("vip/two.csv", csv_bytes(second)))

    assert len(keyvault.secret_reads()) == 2  # exactly one re-read
    assert [r.status for r in env.sim.request_log].count(401) == 1
    assert set(env.sim.list_contacts(VIP_LIST)) == emails(first + second)
    assert [r["status"] for r in env.reports()] == ["succeeded", "succeeded"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "value changed" in logged
    assert key_a not in logged and key_b not in logged

    # Key revoked in SendGrid but not rotated in the vault: one re-read, then a clear failure (no loop).
    env.sim.set_api_keys({"SG.someone-elses-key": None})
    reads, unauthorized = len(keyvault.secret_reads()), [r.status for r in env.sim.request_log].count(401)
    time.sleep(1.1)
    fire_blob_trigger(env.segments.container_name, env.upload("vip/three.csv", csv_bytes([person(9)])))
    assert len(keyvault.secret_reads()) == reads + 1
    assert [r.status for r in env.sim.request_log].count(401) == unauthorized + 1  # not retried: same key
    failed = [r for r in env.reports() if r["status"] == "failed"]
    assert len(failed) == 1 and "401" in failed[0]["error"] and "Key Vault" in failed[0]["error"]


# -- HTTP + queue -----------------------------------------------------------------------------------------

def test_http_start_queues_the_run_and_the_status_url_returns_the_report(env: Env) -> None:
    rows = [person(n) for n in range(1, 5)]
    env.upload("vip/older.csv", csv_bytes(rows[:1]))
    time.sleep(1.1)  # Last-Modified counts whole seconds (within one, the greatest name is the newest)
    env.upload("vip/latest.csv", csv_bytes(rows))  # the newest file is exported when none is named

    started = http("POST", "destinations/vip-customers/exports")  # empty body: all defaults

    assert started.status == 202
    body = started.json()
    run_id = body["run_id"]
    assert body["status"] == "queued"
    assert body["status_url"] == f"{HOST}/api/runs/{run_id}"
    assert started.response.headers["Location"] == body["status_url"]
    assert started.queued is not None
    # No file named: the run reads the current files when it starts (vip/latest.csv, unless a newer one lands).
    assert json.loads(started.queued.get()) == {"run_id": run_id, "destination": "vip-customers",
                                                "blob": None, "full": False}
    assert env.puts() == 0  # nothing runs inside the request

    path = body["status_url"].removeprefix(f"{HOST}/api/")
    queued = http("GET", path)
    assert queued.status == 200 and queued.json()["status"] == "queued"

    run_queue_message(started.queued)

    done = http("GET", path)
    assert done.status == 200
    report = done.json()
    assert (report["run_id"], report["status"], report["exported"], report["balanced"]) == \
        (run_id, "succeeded", 4, True)
    assert set(env.sim.list_contacts(VIP_LIST)) == emails(rows)


def test_http_named_blob_and_the_full_option(env: Env) -> None:
    env.install()
    rows = [person(n) for n in range(1, 4)]
    env.upload("vip/a.csv", csv_bytes(rows))
    env.upload("vip/b.csv", csv_bytes([person(99)]))

    def export(body: dict[str, Any]) -> dict[str, Any]:
        started = http("POST", "destinations/vip-customers/exports", body)
        assert started.status == 202 and started.queued is not None
        run_queue_message(started.queued)
        result = http("GET", f"runs/{started.json()['run_id']}")
        assert result.status == 200
        data: dict[str, Any] = result.json()
        return data

    first = export({"blob": "vip/a.csv"})
    assert (first["status"], first["exported"], first["source"]) == \
        ("succeeded", 3, f"{env.segments.container_name}/vip/a.csv")
    assert env.puts() == 1

    again = export({"blob": "vip/a.csv"})  # incremental: nothing changed, nothing sent
    assert (again["status"], again["exported"], again["unchanged_skipped"]) == ("succeeded", 0, 3)
    assert env.puts() == 1

    full = export({"blob": "vip/a.csv", "full": True})  # full: every profile sent again
    assert (full["status"], full["exported"], full["unchanged_skipped"]) == ("succeeded", 3, 0)
    assert env.puts() == 2
    assert sorted(env.sim.upsert_batches[-1].emails) == sorted(emails(rows))
    assert person(99)[1] not in env.sim.list_contacts(VIP_LIST)


def test_a_queued_run_whose_destination_was_removed_reports_failed(env: Env) -> None:
    env.install()
    env.upload("vip/segment.csv", csv_bytes([person(1)]))
    started = http("POST", "destinations/vip-customers/exports", {})
    assert started.status == 202 and started.queued is not None
    env.set_destinations(DESTINATIONS[1:])  # the app restarts with vip-customers removed
    env.install()

    run_queue_message(started.queued)

    status = http("GET", f"runs/{started.json()['run_id']}").json()
    assert status["status"] == "failed" and "no longer configured" in status["error"]
    assert status["finished_at"] is not None
    assert env.puts() == 0


def test_a_queued_run_that_keeps_crashing_reports_failed_on_its_last_attempt(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    service = env.install()
    env.upload("vip/segment.csv", csv_bytes([person(1)]))
    started = http("POST", "destinations/vip-customers/exports", {})
    assert started.status == 202 and started.queued is not None
    run_id = started.json()["run_id"]

    def storage_down(*_: Any, **__: Any) -> Any:
        raise ConnectionResetError("storage went away")  # not an ExportError: the host retries the message

    monkeypatch.setattr(service, "export", storage_down)
    with pytest.raises(ConnectionResetError):
        run_queue_message(started.queued, dequeue_count=1)
    crashed = http("GET", f"runs/{run_id}").json()  # started, crashed, and the host retries the message
    assert (crashed["status"], crashed["attempt"], crashed["finished_at"]) == ("running", 1, None)

    with open(ROOT_DIR / "host.json", encoding="utf-8") as handle:
        last = json.load(handle)["extensions"]["queues"]["maxDequeueCount"]
    assert last == export_segment_module.MAX_DEQUEUE_COUNT
    with pytest.raises(ConnectionResetError):
        run_queue_message(started.queued, dequeue_count=last)  # the last attempt before the poison queue
    status = http("GET", f"runs/{run_id}").json()
    assert status["status"] == "failed" and status["finished_at"] is not None
    assert "poison" in status["error"] and "ConnectionResetError" in status["error"]
    assert env.puts() == 0


def test_a_queued_run_the_app_cannot_start_reports_why(env: Env) -> None:
    """A deployment with a broken DESTINATIONS_JSON: the worker cannot build the service, and the status URL
    must not say `queued` for ever; the error names the bad field (never a value)."""
    env.install()
    env.upload("vip/segment.csv", csv_bytes([person(1)]))
    started = http("POST", "destinations/vip-customers/exports", {})
    assert started.status == 202 and started.queued is not None
    run_id = started.json()["run_id"]
    env.set_destinations([{"name": "Bad Name"}])  # also drops the built service, as a restart would

    run_queue_message(started.queued)  # a configuration error: not retried, recorded at once

    reset_service(None)
    env.set_destinations(DESTINATIONS)
    status = http("GET", f"runs/{run_id}").json()
    assert status["status"] == "failed" and "could not start the export" in status["error"]
    assert "destinations.0.name" in status["error"]
    assert env.puts() == 0


def test_a_malformed_queue_message_is_dropped_with_a_log_line(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    env.install()
    run_queue_message("not json")
    run_queue_message(json.dumps({"blob": "vip/x.csv"}))
    run_queue_message(json.dumps({"run_id": "vip-customers-x", "destination": "vip-customers"}))  # no blob
    assert sum("malformed" in r.getMessage() for r in caplog.records) == 3
    assert env.puts() == 0


def test_http_dry_run_previews_without_sending(env: Env) -> None:
    env.install()
    rows = [person(n) for n in range(1, 4)]
    env.upload("vip/segment.csv", csv_bytes([*rows, ["CI-7", "broken@", "B", "R", "France"]]))

    result = http("POST", "destinations/vip-customers/exports", {"dry_run": True, "blob": "vip/segment.csv"})

    assert result.status == 200
    assert result.queued is not None and result.queued.value is None  # nothing queued
    payload = result.json()
    assert payload["status"] == "dry_run" and payload["dry_run"] is True
    assert [c["email"] for c in payload["preview"]] == [r[1] for r in rows]
    assert payload["preview"][0]["first_name"] == "First1"
    assert payload["not_sent"] == 3 and payload["rejected_count"] == 1 and payload["rejected"][0]["row"] == 4
    assert env.puts() == 0 and env.sim.list_contacts(VIP_LIST) == {}


def test_http_errors_are_json_with_the_right_status(env: Env) -> None:
    env.install()
    env.upload("vip/segment.csv", csv_bytes([person(1)]))

    cases: list[tuple[str, str, bytes | dict[str, Any] | None, int, str]] = [
        ("POST", "destinations/nope/exports", {}, 404, "unknown destination"),
        ("POST", "destinations/vip-customers/exports", b"{not json", 400, "not valid JSON"),
        ("POST", "destinations/vip-customers/exports", b"[1, 2]", 400, "JSON object"),
        ("POST", "destinations/vip-customers/exports", {"blobb": "vip/segment.csv"}, 400, "unknown field"),
        ("POST", "destinations/vip-customers/exports", {"dry_run": "yes"}, 400, "true or false"),
        ("POST", "destinations/vip-customers/exports", {"full": 1}, 400, "true or false"),
        ("POST", "destinations/vip-customers/exports", {"blob": "vip/missing.csv"}, 404, "no such blob"),
        ("POST", "destinations/newsletter/exports", {}, 404, "no segment file"),
        ("GET", "runs/vip-customers-20260101T000000Z-deadbeef", None, 404, "no such run"),
        ("GET", "runs/not_a_run", None, 400, "malformed"),
        ("GET", "runs/..", None, 400, "malformed"),
    ]
    for method, path, body, status, words in cases:
        result = http(method, path, body)
        assert (result.status, words) == (status, words) and words in result.json()["error"], (path, body)
        assert result.queued is None or result.queued.value is None
    assert http("POST", "destinations/nope/exports", {}).json()["known"] == [d["name"] for d in DESTINATIONS]
    assert env.report_names() == [] and env.sim.request_log == []


@pytest.mark.parametrize("blob", [
    "../x.csv",
    "vip/../x.csv",
    "vip/../../runs/reports/x.json",
    "./vip/segment.csv",
    "/vip/segment.csv",
    "vip\\..\\x.csv",
    "https://devstoreaccount1.blob.core.windows.net/other/vip/segment.csv",
    "http://127.0.0.1:10000/devstoreaccount1/segments/vip/segment.csv",
    "other-container/vip/segment.csv",
    "news/segment.csv",  # another destination's file
    "vip/x.csv\x00",
    "",
    "vip/_SUCCESS",  # inside the prefix, but a marker, not a segment file
])
def test_http_refuses_blob_paths_outside_the_destination(env: Env, blob: str) -> None:
    env.install()
    env.upload("vip/segment.csv", csv_bytes([person(1)]))
    env.upload("news/segment.csv", csv_bytes([person(2)]))
    env.upload("vip/_SUCCESS", b"")

    result = http("POST", "destinations/vip-customers/exports", {"blob": blob})

    assert result.status == 400
    assert "blob" in result.json()["error"]
    assert result.queued is not None and result.queued.value is None
    assert env.report_names() == [] and env.sim.request_log == []


def test_a_nested_prefix_keeps_its_files_from_the_outer_destination(env: Env) -> None:
    """`customers/gold/` belongs to `gold`, not to `all-customers` (`customers/`): the trigger, HTTP and the
    timer all agree, so the outer mirror destination never exports gold's file (and removes its own people)."""
    env.set_destinations([destination("all-customers", VIP_LIST, "customers/", mode="mirror"),
                          destination("gold", NEWS_LIST, "customers/gold/")])
    env.install()
    general = [person(n, "all") for n in range(1, 4)]
    gold = [person(n, "gold") for n in range(1, 3)]
    env.upload("customers/segment.csv", csv_bytes(general))
    fire_blob_trigger(env.segments.container_name, "customers/segment.csv")
    env.upload("customers/gold/segment.csv", csv_bytes(gold))  # now the newest file under customers/
    fire_blob_trigger(env.segments.container_name, "customers/gold/segment.csv")
    assert set(env.sim.list_contacts(VIP_LIST)) == emails(general)
    assert set(env.sim.list_contacts(NEWS_LIST)) == emails(gold)

    refused = http("POST", "destinations/all-customers/exports", {"blob": "customers/gold/segment.csv"})
    assert refused.status == 400 and "another destination" in refused.json()["error"]

    queued = [json.loads(m) for m in fire_timer()]
    assert sorted(m["destination"] for m in queued) == ["all-customers", "gold"]
    assert set(env.sim.list_contacts(VIP_LIST)) == emails(general)
    assert set(env.sim.list_contacts(NEWS_LIST)) == emails(gold)


def test_http_refuses_a_cdm_partition_alone(env: Env) -> None:
    env.install()
    part = f"{CDM_PREFIX}VipCustomers/2026/11/01/0600/VipCustomers_1.csv"
    env.upload(part, csv_bytes([person(1, "c")]))
    result = http("POST", "destinations/cdm-vip/exports", {"blob": part})
    assert result.status == 400 and "model.json" in result.json()["error"]
    assert env.report_names() == [] and env.sim.request_log == []


@pytest.mark.parametrize(("url", "status_url"), [
    ("https://app.azurewebsites.net/API/destinations/vip-customers/exports?code=SECRET-FUNCTION-KEY",
     "https://app.azurewebsites.net/api/runs/"),
    ("https://contoso.example/sendgrid/api/destinations/vip-customers/exports",
     "https://contoso.example/sendgrid/api/runs/"),  # behind a gateway that adds a path
])
def test_the_status_url_keeps_host_and_path_prefix_but_never_the_query(env: Env, url: str,
                                                                      status_url: str) -> None:
    env.install()
    env.upload("vip/segment.csv", csv_bytes([person(1)]))
    request = func.HttpRequest("POST", url, body=b"", route_params={"destination": "vip-customers"})
    response = registered("StartExport").get_user_function()(req=request, queued=CapturedOut())
    body = json.loads(response.get_body())
    assert body["status_url"] == status_url + body["run_id"]
    assert response.headers["Location"] == body["status_url"]
    assert "SECRET-FUNCTION-KEY" not in response.get_body().decode() + response.headers["Location"]


# -- timer ------------------------------------------------------------------------------------------------

def test_timer_finishes_pending_runs_and_refreshes_every_destination(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    env.set_destinations(DESTINATIONS[:2])
    service = env.install(options=ExportOptions(poll_interval=0.02, poll_timeout=0.1))
    vip = [person(n, "vip") for n in range(1, 4)]
    news = [person(n, "news") for n in range(1, 3)]
    env.sim.job_delay = 1.5  # the import job outlives the run's polling
    fire_blob_trigger(env.segments.container_name, env.upload("vip/segment.csv", csv_bytes(vip)))
    (earlier,) = env.reports()
    assert (earlier["status"], earlier["pending"], earlier["exported"]) == ("partial", 3, 0)
    assert [b.name for b in env.runs.list_blobs(name_starts_with="pending/")] == [f"pending/{earlier['run_id']}"]
    env.upload("news/segment.csv", csv_bytes(news))

    assert env.sim.wait_for_jobs(10)
    env.sim.job_delay = 0.0
    service.options = FAST
    caplog.set_level(logging.INFO)
    before = env.report_names()
    fire_timer(past_due=True)

    finished = env.report(earlier["run_id"])
    assert (finished["status"], finished["pending"], finished["exported"]) == ("succeeded", 0, 3)
    assert "pending import jobs finished after the run ended" in finished["notes"]
    assert list(env.runs.list_blobs(name_starts_with="pending/")) == []
    new = [env.report(n.removeprefix("reports/").removesuffix(".json"))
           for n in sorted(set(env.report_names()) - set(before))]
    assert sorted((r["destination"], r["status"]) for r in new) == [("newsletter", "succeeded"),
                                                                     ("vip-customers", "succeeded")]
    assert all(r["balanced"] for r in new)
    assert set(env.sim.list_contacts(VIP_LIST)) == emails(vip)
    assert set(env.sim.list_contacts(NEWS_LIST)) == emails(news)
    messages = [r.getMessage() for r in caplog.records if r.name == "OnSchedule"]
    assert "scheduled refresh is running late" in messages
    assert "scheduled refresh queued 2 of 2 destination(s)" in messages

    # Nothing changed since: the next refresh sends nothing.
    puts = env.puts()
    fire_timer()
    assert env.puts() == puts


def test_timer_refreshes_the_others_when_one_destination_key_is_revoked(
        env: Env, keyvault: KeyVaultStandIn, caplog: pytest.LogCaptureFixture) -> None:
    vip_key, news_key = "SG.vip-account-key.0123456789", "SG.news-account-key.abcdefghij"
    env.set_destinations([destination("vip-customers", VIP_LIST, "vip/", api_key_secret="vip-key"),
                          destination("newsletter", NEWS_LIST, "news/", api_key_secret="news-key")])
    env.monkeypatch.delenv("LOCAL_DEV_SENDGRID_API_KEY")
    env.monkeypatch.setenv("KEY_VAULT_URL", keyvault.url)
    keyvault.set_secret("vip-key", vip_key)
    keyvault.set_secret("news-key", news_key)
    env.sim.set_api_keys({vip_key: None, news_key: None})
    service = env.install(keys=ApiKeyProvider(keyvault.url, credential=keyvault.credential,
                                              client_kwargs=keyvault.client_kwargs),
                          options=ExportOptions(poll_interval=0.02, poll_timeout=0.1))
    env.sim.job_delay = 1.0
    fire_blob_trigger(env.segments.container_name, env.upload("vip/segment.csv", csv_bytes([person(1)])))
    (earlier,) = env.reports()
    assert earlier["status"] == "partial" and earlier["pending"] == 1
    news = [person(n, "news") for n in range(1, 3)]
    env.upload("news/segment.csv", csv_bytes(news))
    assert env.sim.wait_for_jobs(10)
    env.sim.job_delay = 0.0
    service.options = FAST
    env.sim.set_api_keys({news_key: None})  # the vip account's key is revoked in SendGrid, not rotated
    caplog.set_level(logging.INFO)

    fire_timer()  # must not raise: the other destination is still refreshed

    assert env.report(earlier["run_id"])["status"] == "partial"  # still unknown, checked again next time
    assert [b.name for b in env.runs.list_blobs(name_starts_with="pending/")] == [f"pending/{earlier['run_id']}"]
    latest = {r["destination"]: r for r in env.reports() if r["run_id"] != earlier["run_id"]}
    assert latest["newsletter"]["status"] == "succeeded"
    assert latest["vip-customers"]["status"] == "failed" and "401" in latest["vip-customers"]["error"]
    assert set(env.sim.list_contacts(NEWS_LIST)) == emails(news)
    assert any(earlier["run_id"] in r.getMessage() and "pending import jobs" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)


def test_timer_skips_a_destination_without_files_and_refreshes_the_others(env: Env) -> None:
    env.set_destinations(DESTINATIONS[:2])
    env.install()
    env.upload("news/segment.csv", csv_bytes([person(1, "news")]))

    fire_timer()

    assert [(r["destination"], r["status"]) for r in env.reports()] == [("newsletter", "succeeded")]
    assert set(env.sim.list_contacts(NEWS_LIST)) == {person(1, "news")[1]}


def test_the_lazily_built_service_reads_the_settings(env: Env) -> None:
    env.monkeypatch.setenv("SEGMENTS_CONTAINER", "somewhere-else")
    reset_service(None)
    assert get_service().settings.segments_container == "somewhere-else"
    env.monkeypatch.delenv("DESTINATIONS_JSON")
    reset_service(None)
    with pytest.raises(ConfigurationError, match="DESTINATIONS_JSON"):
        get_service()



def test_a_trigger_that_crashes_leaves_the_blob_version_for_the_hosts_retry(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.state.sync_state import SyncState

    env.install()
    blob = env.upload("vip/segment.csv", csv_bytes([person(n) for n in range(1, 4)]))
    real = SyncState.acquire
    calls = {"n": 0}

    def flaky(self: SyncState, wait: float = 0.0) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionResetError("storage hiccup")  # neither an ExportError nor an AzureError
        real(self, wait)

    monkeypatch.setattr(SyncState, "acquire", flaky)
    with pytest.raises(ConnectionResetError):
        fire_blob_trigger(env.segments.container_name, blob)  # the host retries a failed invocation
    assert env.puts() == 0
    fire_blob_trigger(env.segments.container_name, blob)
    assert env.puts() == 1  # the retry exported the file instead of skipping it as "already exported"


def test_one_customer_insights_export_feeds_one_list_per_table(env: Env) -> None:
    """Customer Insights writes one model.json per export and a folder per table under it: a destination
    configured with its table's folder (as the README shows) is served by that model.json, reads its table,
    and the timer finds the model.json above the table folder."""
    export = "CustomerInsights_5678/sendgrid/"
    env.set_destinations([*DESTINATIONS,
                          destination("ci-vip", VIP_LIST, f"{export}VipCustomers/"),
                          destination("ci-news", NEWS_LIST, f"{export}Newsletter/")])
    env.install()
    vip = [person(n, "civip") for n in range(1, 4)]
    news = [person(n, "cinews") for n in range(1, 3)]
    vip_part = f"{export}VipCustomers/2026/11/01/0600/VipCustomers_1.csv"
    news_part = f"{export}Newsletter/2026/11/01/0600/Newsletter_1.csv"
    env.upload(vip_part, csv_bytes(vip, header=False))
    env.upload(news_part, csv_bytes(news, header=False))
    attributes = [{"name": a, "dataType": "string"} for a in HEADER]
    entities = [{"$type": "LocalEntity", "name": table, "attributes": attributes,
                 "partitions": [{"name": f"{table}_1", "location": f"{env.segments.url}/{part}"}]}
                for table, part in (("VipCustomers", vip_part), ("Newsletter", news_part))]
    model = env.upload(f"{export}model.json",
                       json.dumps({"name": "export", "version": "1.0", "entities": entities}).encode())

    fire_blob_trigger(env.segments.container_name, vip_part)  # a partition alone: skipped
    assert env.puts() == 0
    fire_blob_trigger(env.segments.container_name, model)
    assert set(env.sim.list_contacts(VIP_LIST)) == emails(vip)
    assert set(env.sim.list_contacts(NEWS_LIST)) == emails(news)
    reports = {r["destination"]: r for r in env.reports()}
    assert {name: (r["status"], r["exported"]) for name, r in reports.items()} == {
        "ci-vip": ("succeeded", 3), "ci-news": ("succeeded", 2)}

    puts = env.puts()
    fire_blob_trigger(env.segments.container_name, model)  # a duplicate trigger: each destination once only
    assert env.puts() == puts and len(env.report_names()) == 2

    service = get_service()
    assert service.latest_segment(service.destinations.get("ci-vip")) == model  # type: ignore[arg-type]


def test_a_model_json_destination_that_crashes_does_not_hold_up_the_others(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    export = "CustomerInsights_5678/sendgrid/"
    env.set_destinations([destination("ci-vip", VIP_LIST, f"{export}VipCustomers/"),
                          destination("ci-news", NEWS_LIST, f"{export}Newsletter/")])
    env.install()
    news = [person(n, "n") for n in range(1, 3)]
    parts = {table: f"{export}{table}/2026/11/01/0600/{table}_1.csv" for table in ("VipCustomers", "Newsletter")}
    env.upload(parts["VipCustomers"], csv_bytes([person(1, "v")], header=False))
    env.upload(parts["Newsletter"], csv_bytes(news, header=False))
    attributes = [{"name": a, "dataType": "string"} for a in HEADER]
    entities = [{"$type": "LocalEntity", "name": table, "attributes": attributes,
                 "partitions": [{"name": f"{table}_1", "location": f"{env.segments.url}/{part}"}]}
                for table, part in parts.items()]
    model = env.upload(f"{export}model.json",
                       json.dumps({"name": "e", "version": "1.0", "entities": entities}).encode())
    real_export = ExportService.export

    def crash_for_vip(self: ExportService, destination: Any, *args: Any, **kwargs: Any) -> Any:
        if destination.name == "ci-vip":
            raise ValueError("a bug in one destination's run")  # not an ExportError
        return real_export(self, destination, *args, **kwargs)

    monkeypatch.setattr(ExportService, "export", crash_for_vip)
    with pytest.raises(ValueError):  # the host sees the failure and retries the blob
        fire_blob_trigger(env.segments.container_name, model)
    assert set(env.sim.list_contacts(NEWS_LIST)) == emails(news)  # exported although ci-vip came first
    monkeypatch.setattr(ExportService, "export", real_export)
    fire_blob_trigger(env.segments.container_name, model)  # the retry: ci-vip now, ci-news not again
    assert set(env.sim.list_contacts(VIP_LIST)) == {person(1, "v")[1]}
    assert sorted(r["destination"] for r in env.reports()) == ["ci-news", "ci-vip"]


def test_an_unreadable_pending_report_does_not_stop_the_scheduled_refresh(env: Env) -> None:
    env.set_destinations(DESTINATIONS[:2])
    env.install()
    env.upload("vip/segment.csv", csv_bytes([person(1, "vip")]))
    env.upload("news/segment.csv", csv_bytes([person(1, "news")]))
    env.runs.create_container()
    run_id = "vip-customers-20261101T060000Z-deadbeef"
    env.runs.upload_blob(f"pending/{run_id}", b"")
    env.runs.upload_blob(f"reports/{run_id}.json", b'{"run_id": "vip-cust')  # a torn write
    queued = [json.loads(m)["destination"] for m in fire_timer()]
    assert sorted(queued) == ["newsletter", "vip-customers"]
    assert env.puts() == 2


def test_the_claim_of_a_killed_trigger_run_is_taken_over_by_a_retry(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker killed mid-export (timeout, out of memory) leaves its receipt `running`; the host's retry
    must export the file once that run shows no sign of life, and skip it while the run is alive."""
    from shared.state import run_store
    from shared.state.sync_state import SyncState

    service = env.install()
    blob = env.upload("vip/segment.csv", csv_bytes([person(n) for n in range(1, 4)]))
    etag = str(env.segments.get_blob_client(blob).get_blob_properties().etag)
    assert service.runs.claim(blob, etag, "vip-customers-killed") is not None  # then the worker died
    monkeypatch.setattr(run_store, "RECEIPT_GRACE", timedelta(0))  # instead of waiting a minute

    alive = SyncState(service.runs.container, "vip-customers", config_digest="")
    alive.acquire()  # as the run would, while it lives
    try:
        fire_blob_trigger(env.segments.container_name, blob)
        assert env.puts() == 0  # a duplicate delivery during a live run: skipped
    finally:
        alive.release()
    fire_blob_trigger(env.segments.container_name, blob)  # no run holds the destination: the claim is dead
    assert env.puts() == 1
    assert set(env.sim.list_contacts(VIP_LIST)) == emails([person(n) for n in range(1, 4)])


def test_a_partition_not_in_the_customer_insights_layout_is_skipped_when_model_json_is_a_folder_up(
        env: Env) -> None:
    # The README's layout: the destination's prefix is the table's folder, model.json is one folder up. A
    # partition whose path is not Customer Insights' own layout (another tool, a renamed folder) must still be
    # read through model.json, never exported alone as if it were the whole segment.
    prefix = f"{CDM_PREFIX}VipCustomers/"
    env.set_destinations([destination("cdm-vip", CDM_LIST, prefix)])
    service = env.install()
    part = f"{prefix}snapshot/part-00001.csv"
    env.upload(part, csv_bytes([person(1, "c")]))
    env.upload(f"{CDM_PREFIX}model.json", b"{}")
    configured = service.destinations.get("cdm-vip")
    assert configured is not None and configured.segments == [prefix]
    assert service.is_cdm_partition(configured, part)
    [outcome] = service.handle_new_blob(part)
    assert outcome.report is None and "model.json" in (outcome.skipped or "")
    assert http("POST", "destinations/cdm-vip/exports", {"blob": part}).status == 400
    assert env.sim.request_log == []


def test_a_queued_run_killed_on_its_last_attempt_stops_saying_running(env: Env) -> None:
    # The function timeout or an out-of-memory kill gives the worker no chance to write a word, and after the
    # last attempt the host moves the message to the poison queue without calling us again.
    from shared.state.sync_state import SyncState

    service = env.install()
    env.upload("vip/segment.csv", csv_bytes([person(1)]))
    started = http("POST", "destinations/vip-customers/exports", {})
    run_id = started.json()["run_id"]
    last = export_segment_module.MAX_DEQUEUE_COUNT
    service.runs.mark_running(run_id, last)  # as RunQueuedExport does, just before the worker is killed
    assert http("GET", f"runs/{run_id}").json()["status"] == "running"  # too early to tell

    def long_ago(report: dict[str, Any]) -> bool:
        report["running_since"] = "2026-11-01T06:00:00Z"
        return True

    service.runs.update_report(run_id, long_ago)
    alive = SyncState(service.runs.container, "vip-customers", config_digest="")
    alive.acquire()  # a run that holds the destination's lock is alive: still running
    try:
        assert http("GET", f"runs/{run_id}").json()["status"] == "running"
    finally:
        alive.release()
    status = http("GET", f"runs/{run_id}").json()
    assert status["status"] == "failed" and "start the export again" in status["error"]
    assert status["finished_at"] is not None
