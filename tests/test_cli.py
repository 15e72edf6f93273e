"""`python -m shared.cli export` against the SendGrid simulator, configured the way an operator would.

The CLI reads its settings from the environment like the Function App (shared/config/settings.py): SENDGRID_BASE_URL
points it at the simulator, and with KEY_VAULT_URL unset the development-only LOCAL_DEV_SENDGRID_API_KEY is
the API key. Tests drive it in-process through `main(argv)` and once as a real subprocess.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient

from sendgrid_simulator import Simulator
from shared.cli import main
from tests.azurite import Azurite
from tests.sendgrid_fixture import SENDGRID_TEST_KEY, running_simulator

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "segments" / "vip-customers" / "vip_customers_1.csv"
CONFIG = ROOT / "samples" / "destinations.local.json"
LIST_ID = "5b0c3a1e-8d7f-4c2a-9e61-3f2d7a9b0c11"  # the sample destination's list
PUT = "PUT /v3/marketing/contacts"
SETTINGS = ("KEY_VAULT_URL", "AZURE_CLIENT_ID", "LOCAL_DEV_SENDGRID_API_KEY", "SENDGRID_BASE_URL",
            "DESTINATIONS_JSON", "AzureWebJobsStorage")


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """The team's simulator (validating against SendGrid's OpenAPI files when present) + the sample's list."""
    for simulator in running_simulator():
        simulator.create_list("vip", list_id=LIST_ID)
        simulator.create_field("loyalty_tier", "Text")
        simulator.create_field("last_purchase_date", "Date")
        yield simulator


@pytest.fixture
def env(sim: Simulator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The settings a developer exports before running the CLI locally."""
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SENDGRID_BASE_URL", sim.base_url)
    monkeypatch.setenv("LOCAL_DEV_SENDGRID_API_KEY", SENDGRID_TEST_KEY)
    caplog.set_level(logging.DEBUG)
    yield
    assert SENDGRID_TEST_KEY not in caplog.text


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], str]:
    code = main(["export", *args])
    out, err = capsys.readouterr()
    assert SENDGRID_TEST_KEY not in out and SENDGRID_TEST_KEY not in err
    return code, json.loads(out), err


def sample_args(*extra: str) -> list[str]:
    return [str(SAMPLE), "--config", str(CONFIG), "--destination", "vip-customers", *extra]


@pytest.mark.usefixtures("env")
def test_export_sends_to_sendgrid_and_prints_and_writes_the_report(sim: Simulator, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    report_file = tmp_path / "report.json"
    code, printed, _ = run(capsys, *sample_args("--report", str(report_file)))
    assert code == 0
    assert json.loads(report_file.read_text(encoding="utf-8")) == printed
    assert printed["status"] == "succeeded" and printed["balanced"] is True
    assert (printed["rows_read"], printed["exported"], printed["rejected_count"], printed["duplicates_merged"]) == (
        60, 56, 3, 1)
    assert [(r["row"], r["field"]) for r in printed["rejected"]] == [(11, "email"), (21, "email"),
                                                                     (41, "first_name")]
    assert printed["run_id"].startswith("cli-") and printed["list_id"] == LIST_ID
    assert "preview" not in printed
    members = sim.list_contacts(LIST_ID)
    assert len(members) == 56
    assert members["ada.matsumoto.5@example.com"]["custom_fields"] == {
        "loyalty_tier": "Gold", "last_purchase_date": "04/21/2026"}
    assert sim.request_counts[PUT] == 1


@pytest.mark.usefixtures("env")
def test_dry_run_prints_mapped_contacts_and_rejects_and_sends_nothing(sim: Simulator,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, printed, _ = run(capsys, *sample_args("--dry-run", "--preview", "5"))
    assert code == 0
    assert printed["status"] == "dry_run" and printed["dry_run"] is True and printed["balanced"] is True
    assert (printed["rows_read"], printed["rejected_count"], printed["not_sent"]) == (60, 3, 56)
    assert [(r["row"], r["field"], r["reason"]) for r in printed["rejected"]][1] == (21, "email", "email is empty")
    tier, date = sim.fields()["loyalty_tier"], sim.fields()["last_purchase_date"]
    assert len(printed["preview"]) == 5
    assert printed["preview"][4] == {  # row 5: email trimmed and lower-cased, custom fields by ID, as sent
        "email": "ada.matsumoto.5@example.com", "city": "Tokyo", "country": "Japan", "first_name": "Ada",
        "last_name": "Matsumoto", "postal_code": "100-0001",
        "custom_fields": {tier: "Gold", date: "04/21/2026"}}
    assert sim.request_counts.get(PUT, 0) == 0
    assert list(sim.request_counts) == ["GET /v3/marketing/field_definitions"]  # to resolve the custom fields
    assert sim.list_contacts(LIST_ID) == {}


def test_python_m_shared_cli_export_in_a_subprocess(sim: Simulator, tmp_path: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    environment.update(SENDGRID_BASE_URL=sim.base_url, LOCAL_DEV_SENDGRID_API_KEY=SENDGRID_TEST_KEY)
    report_file = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "shared.cli", "export", *sample_args("--report", str(report_file))],
                          cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed == json.loads(report_file.read_text(encoding="utf-8"))
    assert (printed["status"], printed["exported"]) == ("succeeded", 56)
    assert "DEVELOPMENT ONLY" in done.stderr  # the dev key is announced loudly ...
    assert SENDGRID_TEST_KEY not in done.stderr + done.stdout  # ... but never shown
    assert len(sim.list_contacts(LIST_ID)) == 56


@pytest.mark.usefixtures("env")
def test_a_wrong_key_fails_with_what_to_fix_and_writes_the_failure(sim: Simulator, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LOCAL_DEV_SENDGRID_API_KEY", "SG.not-the-right-key")
    report_file = tmp_path / "report.json"
    code, printed, err = run(capsys, *sample_args("--report", str(report_file)))
    assert code == 2
    assert printed["status"] == "failed"
    assert "401" in printed["error"] and "store a valid key" in printed["error"]
    assert json.loads(report_file.read_text(encoding="utf-8")) == printed
    assert "SG.not-the-right-key" not in json.dumps(printed) + err
    assert sim.request_counts.get(PUT, 0) == 0


@pytest.mark.usefixtures("env")
def test_a_partial_export_exits_1(sim: Simulator, capsys: pytest.CaptureFixture[str]) -> None:
    sim.inject("job_failed")
    code, printed, _ = run(capsys, *sample_args())
    assert code == 1
    assert printed["status"] == "partial" and printed["in_failed_jobs"] == 56 and printed["balanced"] is True


@pytest.mark.usefixtures("env")
def test_without_consent_nothing_is_read_or_sent(sim: Simulator, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    document = json.loads(CONFIG.read_text(encoding="utf-8"))
    del document["destinations"][0]["consent"]
    config = tmp_path / "destinations.json"
    config.write_text(json.dumps(document), encoding="utf-8")
    code, printed, _ = run(capsys, str(SAMPLE), "--config", str(config), "--destination", "vip-customers")
    assert (code, printed["status"]) == (2, "refused")  # the same status the functions and `sync` give
    assert "no recorded consent" in printed["error"] and "record who agreed" in printed["error"]
    assert sim.request_log == []


@pytest.mark.usefixtures("env")
def test_unknown_destination_lists_the_configured_ones(sim: Simulator, capsys: pytest.CaptureFixture[str]) -> None:
    code, printed, _ = run(capsys, str(SAMPLE), "--config", str(CONFIG), "--destination", "vip")
    assert code == 2
    assert "unknown destination 'vip'" in printed["error"] and "vip-customers" in printed["error"]
    assert sim.request_log == []


@pytest.mark.usefixtures("env")
def test_no_api_key_setting_says_which_setting_to_set(sim: Simulator, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("LOCAL_DEV_SENDGRID_API_KEY")
    code, printed, _ = run(capsys, *sample_args())
    assert code == 2
    assert "KEY_VAULT_URL is not set" in printed["error"] and "sendgrid-api-key" in printed["error"]
    assert sim.request_log == []


@pytest.mark.usefixtures("env")
def test_destinations_from_the_app_setting_and_segment_from_a_blob_url(
        sim: Simulator, azurite: Azurite, container: ContainerClient, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DESTINATIONS_JSON", CONFIG.read_text(encoding="utf-8"))
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    blob_name = "vip-customers/2026/vip_customers_1.csv"
    container.upload_blob(blob_name, SAMPLE.read_bytes())
    url = f"{container.url}/{blob_name}"
    assert url.startswith("http://127.0.0.1:")
    code, printed, _ = run(capsys, url, "--destination", "vip-customers")
    assert code == 0, printed
    assert printed["source"] == f"{container.container_name}/{blob_name}"
    assert (printed["exported"], printed["rejected_count"], printed["duplicates_merged"]) == (56, 3, 1)
    assert len(sim.list_contacts(LIST_ID)) == 56
