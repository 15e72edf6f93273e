"""Rejected rows at scale, and the mapped column a header-less file never has.

- A segment whose every row is bad costs disk, not memory: each reject is written to a local temporary file
  that is the rejects CSV, uploaded to the runs container in blocks; the report counts every reject exactly
  but lists only the first MAX_REPORTED_DETAILS. Peak RSS is measured in a child process running the real
  service (Azurite, the SendGrid simulator) on a 200,000-row file and on a 1,000-row file of the same shape.
- Truncated fields and the rows of failed import jobs are counted exactly and listed up to the same limit
  (failed-job rows as ranges of consecutive rows).
- JSON Lines has no header: a mapped column that no row has stops the run before anything is sent, naming
  the column and the columns seen (never a value).
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient

from sendgrid_simulator import Simulator
from shared.cli import main as cli_main
from shared.config.destinations import Destination, DestinationsDocument
from shared.config.secrets import ApiKeyProvider
from shared.config.settings import AppSettings
from shared.errors import ConfigurationError
from shared.pipeline.engine import ExportOptions, export_segment
from shared.pipeline.report import MAX_REPORTED_DETAILS
from shared.sendgrid.client import RetryPolicy, SendGridClient
from shared.service.export_service import ExportService
from shared.source.sources import LocalDirSource
from shared.state.rejects import REJECTS_HEADER
from tests.azurite import Azurite
from tests.sendgrid_fixture import SENDGRID_TEST_KEY, SENDGRID_TEST_LIST_ID, running_simulator

ROOT = Path(__file__).resolve().parents[1]
PUT = "PUT /v3/marketing/contacts"
CONSENT = {"agreed_by": "ops@example.com", "agreed_at": "2026-11-01T09:00:00Z"}
FAST_RETRY = RetryPolicy(max_attempts=3, backoff_base=0.01, backoff_max=0.05, rate_limit_budget=5.0)
BIG = 200_000
SMALL = 1_000
RSS_GROWTH_LIMIT_MB = 60


def destination(**overrides: Any) -> Destination:
    data: dict[str, Any] = {
        "name": "scale", "list_id": SENDGRID_TEST_LIST_ID, "api_key_secret": "sendgrid-api-key",
        "segments": ["scale/"], "field_mapping": {"email": "Email", "first_name": "First"}, "consent": CONSENT,
    }
    data.update(overrides)
    return Destination.model_validate(data)


def bad_email(n: int) -> str:
    """Every address is invalid: most lack the @-sign, every 10th is empty, every 1000th looks like a formula."""
    if n % 1000 == 7:
        return f"=HYPERLINK(\"http://evil.example/{n}\")"
    return "" if n % 10 == 3 else f"user{n}"


def all_bad_csv(rows: int) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["Email", "First"])
    writer.writerows([bad_email(n), f"Name{n}"] for n in range(1, rows + 1))
    return out.getvalue().encode()


@dataclass
class Env:
    azurite: Azurite
    sim: Simulator
    blobs: BlobServiceClient
    segments: ContainerClient
    runs: ContainerClient

    def settings(self) -> AppSettings:
        return AppSettings(segments_container=self.segments.container_name, runs_container=self.runs.container_name,
                           sendgrid_base_url=self.sim.base_url, key_vault_url=None, azure_client_id=None)

    def service(self, dest: Destination) -> ExportService:
        return ExportService(self.settings(), DestinationsDocument(destinations=[dest]), self.blobs,
                             ApiKeyProvider(None, dev_fallback=SENDGRID_TEST_KEY),
                             options=ExportOptions(poll_interval=0.01, poll_timeout=30.0),
                             client_factory=lambda key, reread: SendGridClient(
                                 key, base_url=self.sim.base_url, retry=FAST_RETRY, on_unauthorized=reread))

    def stored(self, name: str) -> bytes:
        return self.runs.download_blob(name).readall()


@pytest.fixture
def env(azurite: Azurite) -> Iterator[Env]:
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    tag = uuid.uuid4().hex[:12]
    segments = blobs.create_container(f"segments-{tag}")
    runs = blobs.get_container_client(f"runs-{tag}")
    for sim in running_simulator():
        try:
            yield Env(azurite, sim, blobs, segments, runs)
        finally:
            segments.delete_container()
            if runs.exists():
                runs.delete_container()


# -- 1. every row rejected: exact counts, a small report, every reject in the rejects file, flat memory ----------

CHILD = """
import json, os, re, resource, sys
from shared.config.destinations import Destination, DestinationsDocument
from shared.pipeline.engine import ExportOptions
from shared.service.export_service import ExportService
from shared.config.secrets import ApiKeyProvider
from shared.config.settings import AppSettings
from shared.config.storage import blob_service_from_settings

connection, segments, runs, base_url, key, blob, run_id, config = sys.argv[1:9]
dest = Destination.model_validate_json(config)
settings = AppSettings(segments_container=segments, runs_container=runs, sendgrid_base_url=base_url,
                       key_vault_url=None, azure_client_id=None)
os.environ["AzureWebJobsStorage"] = connection  # the storage client as the Function App builds it
service = ExportService(settings, DestinationsDocument(destinations=[dest]), blob_service_from_settings(),
                        ApiKeyProvider(None, dev_fallback=key), options=ExportOptions(poll_interval=0.01,
                                                                                      poll_timeout=30.0))
try:  # the peak since here, not the start-up's (imports alone may peak above a run that stays flat)
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    since_start = False
except OSError:
    since_start = True
report = service.export(dest, blob, run_id=run_id)
if since_start:
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
else:
    peak_kb = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
print(json.dumps({"status": report.status, "rejected": report.rejected_count, "peak_kb": peak_kb,
                  "since_start": since_start}))
"""


def run_child(env: Env, blob: str, run_id: str) -> dict[str, Any]:
    """The real service (read from Azurite, send to the simulator, persist to Azurite) in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, env.azurite.connection_string, env.segments.container_name,
         env.runs.container_name, env.sim.base_url, SENDGRID_TEST_KEY, blob, run_id,
         destination().model_dump_json()],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_a_file_of_200000_bad_rows_is_counted_exactly_in_a_small_report_with_memory_flat(env: Env) -> None:
    env.segments.upload_blob("scale/small.csv", all_bad_csv(SMALL))
    env.segments.upload_blob("scale/big.csv", all_bad_csv(BIG))
    small = run_child(env, "scale/small.csv", "run-small")
    big = run_child(env, "scale/big.csv", "run-big")
    assert (small["status"], small["rejected"]) == ("succeeded", SMALL)
    assert (big["status"], big["rejected"]) == ("succeeded", BIG)

    # memory: 200 times the rejects, the same peak (the old lists and in-memory CSV took ~380 MB here)
    growth_mb = (big["peak_kb"] - small["peak_kb"]) / 1024
    assert growth_mb < RSS_GROWTH_LIMIT_MB, f"peak RSS grew by {growth_mb:.0f} MB for {BIG - SMALL} more rejects"

    # nothing was sent
    assert env.sim.request_counts.get(PUT, 0) == 0 and env.sim.upsert_batches == []

    # the report: exact counts, the first 1000 rejects, small
    raw = env.stored("reports/run-big.json")
    assert len(raw) < 1_000_000, f"report is {len(raw)} bytes"
    report = json.loads(raw)
    assert (report["status"], report["rows_read"], report["rejected_count"], report["exported"]) == (
        "succeeded", BIG, BIG, 0)
    assert report["balanced"] is True
    assert report["rejected_by_field"] == {"email": BIG}
    empties = sum(1 for n in range(1, BIG + 1) if bad_email(n) == "")
    assert report["rejected_by_reason"] == {"email": {
        "email is empty": empties,
        "email is not valid: An email address must have an @-sign.": BIG - empties}}
    assert len(report["rejected"]) == MAX_REPORTED_DETAILS
    assert [r["row"] for r in report["rejected"]] == list(range(1, MAX_REPORTED_DETAILS + 1))
    assert report["rejected_details_omitted"] == BIG - MAX_REPORTED_DETAILS
    assert any(f"first {MAX_REPORTED_DETAILS} of {BIG}" in note and "rejects_blob" in note
               for note in report["notes"]), report["notes"]
    assert report["rejects_blob"] == "rejects/run-big.csv"
    assert "user1234" not in raw.decode() and "HYPERLINK" not in raw.decode()  # reasons, never values

    # the rejects file: every rejected row with its value, formula-looking cells neutralised
    text = env.stored(report["rejects_blob"]).decode()
    assert len(text) > 4 * 1024 * 1024  # large enough to be uploaded in several blocks
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert tuple(rows[0]) == REJECTS_HEADER
    assert len(rows) - 1 == BIG
    assert [int(r[1]) for r in rows[1:]] == list(range(1, BIG + 1))
    assert {r[0] for r in rows[1:]} == {"scale/big.csv"} and {r[2] for r in rows[1:]} == {"email"}
    for n in (1, 3, 7, 1007, 123_456, BIG):
        value = bad_email(n)
        assert rows[n][4] == ("'" + value if value.startswith("=") else value), n
    assert not any(cell.startswith(("=", "+", "-", "@")) for r in rows[1:] for cell in r)

    small_rows = list(csv.reader(io.StringIO(env.stored("rejects/run-small.csv").decode(), newline="")))
    assert len(small_rows) - 1 == SMALL  # the single-PUT path of the upload holds every row too


def test_truncations_are_counted_exactly_and_listed_up_to_the_limit(tmp_path: Path) -> None:
    rows = MAX_REPORTED_DETAILS + 500
    (tmp_path / "long.csv").write_text(
        "Email,First\n" + "".join(f"p{n}@example.com,{'N' * 60}\n" for n in range(rows)), encoding="utf-8")
    result = export_segment(destination(length_policy="truncate"), LocalDirSource(tmp_path), "long.csv", None,
                            run_id="run-long", options=ExportOptions(dry_run=True))
    result.close()
    report = result.report
    assert (report.contacts_valid, report.rejected_count, report.truncated_count) == (rows, 0, rows)
    assert report.truncated_by_field == {"first_name": rows}
    assert [t.row for t in report.truncated] == list(range(1, MAX_REPORTED_DETAILS + 1))
    data = report.to_dict()
    assert data["truncated_details_omitted"] == 500
    assert any(f"first {MAX_REPORTED_DETAILS} of {rows} truncated" in note for note in data["notes"])


def test_rows_of_a_failed_import_job_are_listed_as_ranges_up_to_the_limit(env: Env) -> None:
    """Every other row is rejected, so each failed contact is its own range: 1,000 ranges are listed and the
    report says how many more rows were in the failed job."""
    contacts = MAX_REPORTED_DETAILS + 250
    lines = ["Email,First"]
    for n in range(contacts):
        lines += [f"p{n}@example.com,A{n}", f"broken{n},B{n}"]
    env.segments.upload_blob("scale/alternate.csv", ("\n".join(lines) + "\n").encode())
    env.sim.inject("job_failed")
    dest = destination()
    report = env.service(dest).export(dest, "scale/alternate.csv", run_id="run-failed")
    assert (report.status, report.in_failed_jobs, report.rejected_count) == ("partial", contacts, contacts)
    assert report.balanced
    assert len(report.failed_job_rows) == MAX_REPORTED_DETAILS
    assert all(r.first_row == r.last_row == 2 * i + 1 for i, r in enumerate(report.failed_job_rows))
    assert report.failed_job_rows_omitted == 250
    stored = json.loads(env.stored("reports/run-failed.json"))
    assert stored["failed_job_rows"][0] == {"source": "scale/alternate.csv", "first_row": 1, "last_row": 1}
    assert stored["failed_job_rows_omitted"] == 250
    assert any("250 more rows were in failed import jobs" in note for note in stored["notes"])


# -- 2. JSON Lines: a mapped column that no row has ------------------------------------------------------------

JSONL_ROWS = [
    {"email": "ann@example.com", "first": "Ann", "city": "Oslo"},
    {"email": "bo@example.com", "first": "Bo", "address": {"city": "Turku"}, "cy@example.com": "x"},
    {"email": "not-an-address", "first": "Cy"},
]


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def test_a_mapped_column_no_json_lines_row_has_stops_the_run_naming_it(env: Env, tmp_path: Path) -> None:
    (tmp_path / "segment.jsonl").write_bytes(jsonl(JSONL_ROWS))
    misspelled = destination(field_mapping={"email": "email", "first_name": "first", "city": "citty",
                                            "last_name": "surname"})
    with pytest.raises(ConfigurationError) as caught:
        export_segment(misspelled, LocalDirSource(tmp_path), "segment.jsonl", None, run_id="run-jsonl",
                       options=ExportOptions(dry_run=True))
    message = str(caught.value)
    assert caught.value.field == "destinations[scale].field_mapping"
    assert "mapped column(s) citty, surname appear in no row of segment.jsonl" in message
    assert "columns seen: email, first, city, address.city" in message
    assert "1 that look like email addresses not shown" in message
    for value in ("ann@example.com", "cy@example.com", "Oslo", "Turku", "Ann", "not-an-address"):
        assert value not in message

    # through the service: the run fails with that error before anything is sent
    env.segments.upload_blob("scale/segment.jsonl", jsonl(JSONL_ROWS))
    report = env.service(misspelled).export(misspelled, "scale/segment.jsonl", run_id="run-jsonl")
    assert report.status == "failed" and report.error is not None and "citty, surname" in report.error
    assert env.sim.request_log == []
    stored = json.loads(env.stored("reports/run-jsonl.json"))
    assert stored["status"] == "failed" and "citty" in stored["error"] and "Oslo" not in json.dumps(stored)

    # the right spelling: a column only some rows have is fine (the others have no value for it)
    fixed = destination(field_mapping={"email": "email", "first_name": "first", "city": "city"})
    result = export_segment(fixed, LocalDirSource(tmp_path), "segment.jsonl", None, run_id="run-ok",
                            options=ExportOptions(dry_run=True))
    result.close()
    assert [json.loads(c) for c in result.preview] == [
        {"email": "ann@example.com", "first_name": "Ann", "city": "Oslo"},
        {"email": "bo@example.com", "first_name": "Bo"}]
    assert [(r.row, r.field) for r in result.report.rejected] == [(3, "email")]


def test_a_json_lines_file_without_readable_rows_is_not_a_mapping_error(tmp_path: Path) -> None:
    """Nothing was seen, so nothing can be said about the mapping: the rows are rejected one by one."""
    (tmp_path / "broken.jsonl").write_bytes(b"{not json\n[1, 2]\n\n")
    result = export_segment(destination(field_mapping={"email": "email", "city": "citty"}),
                            LocalDirSource(tmp_path), "broken.jsonl", None, run_id="run-broken",
                            options=ExportOptions(dry_run=True))
    result.close()
    assert (result.report.rows_read, result.report.rejected_count) == (2, 2)
    assert result.report.rejected_by_field == {"row": 2}


def test_the_cli_prints_the_capped_report_and_writes_every_reject_to_the_rejects_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = MAX_REPORTED_DETAILS + 1500
    (tmp_path / "segment.csv").write_bytes(all_bad_csv(rows))
    config = tmp_path / "destinations.json"
    config.write_text(json.dumps({"destinations": [destination().model_dump(mode="json")]}), encoding="utf-8")
    rejects = tmp_path / "rejects.csv"
    code = cli_main(["export", str(tmp_path / "segment.csv"), "--config", str(config), "--destination", "scale",
                     "--dry-run", "--rejects", str(rejects)])
    printed = json.loads(capsys.readouterr().out)
    assert code == 0 and printed["status"] == "dry_run"
    assert (printed["rejected_count"], len(printed["rejected"]), printed["rejected_details_omitted"]) == (
        rows, MAX_REPORTED_DETAILS, 1500)
    assert printed["rejects_file"] == str(rejects) and "user123" not in json.dumps(printed)
    with rejects.open(newline="", encoding="utf-8") as handle:
        stored = list(csv.reader(handle))
    assert tuple(stored[0]) == REJECTS_HEADER and len(stored) - 1 == rows
    assert [r[4] for r in stored[1:4]] == [bad_email(1), bad_email(2), bad_email(3)]
    assert stored[7][4] == "'" + bad_email(7)  # neutralised for spreadsheets here too
