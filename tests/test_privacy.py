"""No API key and no personal data in anything an operator or a log pipeline sees.

Every function (blob trigger, HTTP start/status, queue worker, timer) and the CLI run with a recognisable API
key and recognisable profiles (emails, names), on success and error paths (invalid emails, a file whose
header row is missing, SendGrid refusing the key, a rotated key re-read from Key Vault). Everything they
produce is then searched for those values: every log record of every logger at DEBUG (azure, httpx and
the SendGrid client included) with its traceback, captured stdout/stderr, exceptions, the CLI's stdout and
stderr (also at DEBUG), HTTP bodies, queue messages, and every blob the app writes to the runs container.

Documented exceptions, checked to hold the values so the search is shown to work: the rejected-rows CSV
(`rejects/<run_id>.csv`, the one place rejected values are kept), the dry-run preview (the mapped contacts
are what a dry run is asked for) and the sync snapshot (`state/`, the emails mirror mode removes).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.config.secrets import ApiKeyProvider
from shared.pipeline.engine import ExportOptions
from tests.keyvault_standin import KeyVaultStandIn
from tests.test_functions import (
    DESTINATIONS,
    HEADER,
    SECRET_NAME,
    VIP_LIST,
    Env,
    env,
    fire_blob_trigger,
    fire_timer,
    http,
    run_queue_message,
    sim,
)

__all__ = ["env", "sim"]  # fixtures, re-exported so pytest finds them in this module

ROOT = Path(__file__).resolve().parent.parent
CANARY_KEY = "SG.canary-key-XYZ.q7Vw2mPz9LrT4kXb"
ROTATED_CANARY_KEY = "SG.canary-key-ROTATED.Hn3dYc8sQe1uWa6f"

# Recognisable people: every value is unique enough that a hit can only be a leak.
PEOPLE = [
    ("CI-70001", "zebulon.quixotewright@canary-mail.example", "Zebulon", "Quixotewright"),
    ("CI-70002", "philippa.marchbanks-oyelaran@canary-mail.example", "Philippa", "Marchbanks-Oyelaran"),
    ("CI-70003", "ignatius.vandersloot@canary-mail.example", "Ignatius", "Vandersloot"),
]
# Rows our validation rejects; the values may appear only in the rejects CSV.
INVALID = [
    ("CI-70011", "octavia.wrenfeather.canary-mail.example", "Octavia", "Wrenfeather"),   # no @
    ("CI-70012", "barnaby fitzwilliam@canary-mail.example", "Barnaby", "Fitzwilliamson"),  # space
    ("CI-70013", "cressida..lowenthal@canary-mail.example", "Cressida", "Lowenthal"),    # two dots
    ("CI-70014", "evander.pemberton@canary_mail.example", "Evander", "Pemberton"),       # underscore in domain
]
PERSONAL = [value for row in PEOPLE + INVALID for value in row[1:]] + ["octavia.wrenfeather", "cressida..lowenthal"]
SECRETS = [CANARY_KEY, ROTATED_CANARY_KEY, CANARY_KEY.split(".", 2)[2], ROTATED_CANARY_KEY.split(".", 2)[2]]


def segment(people: list[tuple[str, str, str, str]], *, header: bool = True) -> bytes:
    lines = [",".join(HEADER)] if header else []
    lines += [f"{cid},{email},{first},{last},Ruritania" for cid, email, first, last in people]
    return ("\n".join(lines) + "\n").encode()


class Evidence:
    """Everything the runs produced that an operator, a log pipeline or an HTTP client could see."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def add(self, where: str, text: str | bytes) -> None:
        self.texts.append((where, text.decode("utf-8", "replace") if isinstance(text, bytes) else text))

    def call(self, where: str, fn: Callable[[], Any]) -> Any:
        """Run one invocation; an exception is evidence too (the host logs it with its traceback)."""
        try:
            return fn()
        except Exception as exc:
            self.add(f"{where}: exception", "".join(traceback.format_exception(exc)))
            return None

    def assert_clean(self) -> None:
        assert self.texts, "nothing was captured"
        leaks = [(where, needle) for where, text in self.texts for needle in SECRETS + PERSONAL
                 if needle.lower() in text.lower()]
        assert leaks == [], "\n".join(f"{needle!r} leaked into {where}" for where, needle in leaks[:20])


@pytest.fixture
def evidence(caplog: pytest.LogCaptureFixture) -> Iterator[Evidence]:
    caplog.set_level(logging.DEBUG)
    # function_app quietens some SDK loggers; the scan wants everything they could say, so open them up
    for name in ("azure", "azure.core.pipeline.policies.http_logging_policy", "azure.identity", "httpx",
                 "httpcore", "urllib3", "shared", "ExportSegment", "OnSchedule"):
        caplog.set_level(logging.DEBUG, logger=name)
    collected = Evidence()
    yield collected


def gather_logs(evidence: Evidence, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    for record in caplog.records:
        evidence.add(f"log {record.name}", formatter.format(record))
    out, err = capsys.readouterr()
    evidence.add("stdout", out)
    evidence.add("stderr", err)
    names = {record.name.split(".")[0] for record in caplog.records}
    assert {"azure", "httpx", "shared"} <= names, f"expected DEBUG records from the SDKs too, got {names}"


def gather_runs_container(evidence: Evidence, env: Env) -> dict[str, str]:
    """Every blob the app wrote; those under rejects/ and state/ are returned (documented exceptions)."""
    kept: dict[str, str] = {}
    for blob in env.runs.list_blobs():
        text = env.runs.download_blob(blob.name).readall().decode("utf-8", "replace")
        if blob.name.startswith(("rejects/", "state/")) and not blob.name.endswith(("lock", "checkpoint.json")):
            kept[blob.name] = text
            assert not any(secret in text for secret in SECRETS), blob.name
        else:
            evidence.add(f"runs blob {blob.name}", text)
    return kept


def http_body(evidence: Evidence, where: str, result: Any) -> Any:
    body = result.response.get_body()
    evidence.add(f"{where}: HTTP {result.status} body", body)
    evidence.add(f"{where}: HTTP headers", json.dumps(dict(result.response.headers)))
    if result.queued is not None and result.queued.value is not None:
        evidence.add(f"{where}: queue message", result.queued.value)
    return json.loads(body) if body else None


def use_canary_key(env: Env) -> None:
    env.monkeypatch.setenv("LOCAL_DEV_SENDGRID_API_KEY", CANARY_KEY)
    env.sim.set_api_keys({CANARY_KEY: None})


# -- the functions ----------------------------------------------------------------------------------------

def test_functions_leak_neither_key_nor_personal_data(env: Env, evidence: Evidence, caplog: pytest.LogCaptureFixture,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    use_canary_key(env)
    container = env.segments.container_name
    env.install(options=ExportOptions(poll_interval=0.02, poll_timeout=0.1))

    # Blob trigger: valid, invalid and duplicate rows.
    duplicate = (PEOPLE[0][0], PEOPLE[0][1].upper(), PEOPLE[0][2], PEOPLE[0][3])
    env.upload("vip/segment.csv", segment([*PEOPLE, *INVALID, duplicate]))
    evidence.call("blob trigger", lambda: fire_blob_trigger(container, "vip/segment.csv"))
    evidence.call("duplicate blob trigger", lambda: fire_blob_trigger(container, "vip/segment.csv"))
    assert set(env.sim.list_contacts(VIP_LIST)) == {p[1] for p in PEOPLE}

    # A file without its header row: the first profile would be read as the column names.
    env.upload("vip/no-header.csv", segment(PEOPLE, header=False))
    evidence.call("blob trigger, no header", lambda: fire_blob_trigger(container, "vip/no-header.csv"))

    # Skipped blobs and a destination without consent.
    env.upload("elsewhere/segment.csv", segment(PEOPLE))
    evidence.call("blob trigger, unmatched", lambda: fire_blob_trigger(container, "elsewhere/segment.csv"))
    env.upload("noconsent/segment.csv", segment(PEOPLE))
    evidence.call("blob trigger, no consent", lambda: fire_blob_trigger(container, "noconsent/segment.csv"))

    # HTTP: start, queue, status; dry runs; every error answer.
    env.upload("news/segment.csv", segment([*PEOPLE, *INVALID]))
    started = http("POST", "destinations/newsletter/exports", {"blob": "news/segment.csv", "full": True})
    http_body(evidence, "StartExport", started)
    queued = started.queued
    assert queued is not None and queued.value is not None
    evidence.call("RunQueuedExport", lambda: run_queue_message(queued))
    status = http_body(evidence, "GetExportRun", http("GET", f"runs/{started.json()['run_id']}"))
    assert status["status"] == "succeeded" and status["rejected_count"] == len(INVALID)

    preview = http("POST", "destinations/vip-customers/exports", {"dry_run": True, "blob": "vip/segment.csv"})
    payload = json.loads(preview.response.get_body())
    assert {c["email"] for c in payload.pop("preview")} == {p[1] for p in PEOPLE}  # the preview is the point
    evidence.add("dry run without its preview", json.dumps(payload))
    http_body(evidence, "dry run, no header",
              http("POST", "destinations/vip-customers/exports", {"dry_run": True, "blob": "vip/no-header.csv"}))
    for body in (b"{oops", b"[]", {"blob": "../segment.csv"}, {"blob": PEOPLE[0][1]}, {"blob": "vip/none.csv"},
                 {"extra": True}, {"dry_run": PEOPLE[2][2]}):
        http_body(evidence, f"StartExport {body!r:.20}", http("POST", "destinations/vip-customers/exports", body))
    http_body(evidence, "StartExport unknown destination", http("POST", "destinations/nope/exports", {}))
    http_body(evidence, "GetExportRun unknown", http("GET", "runs/vip-customers-20260101T000000Z-00000000"))

    # A run left pending, finished by the timer.
    env.sim.job_delay = 1.0
    env.upload("vip/segment.csv", segment([*PEOPLE[:2], *INVALID]))
    evidence.call("blob trigger, pending", lambda: fire_blob_trigger(container, "vip/segment.csv"))
    assert env.sim.wait_for_jobs(10)
    env.sim.job_delay = 0.0
    evidence.call("timer", lambda: fire_timer(past_due=True))

    # SendGrid refuses the key: every function's error path.
    env.sim.set_api_keys({"SG.some-other-key": None})
    env.upload("vip/segment.csv", segment(PEOPLE))
    evidence.call("blob trigger, 401", lambda: fire_blob_trigger(container, "vip/segment.csv"))
    refused = http("POST", "destinations/newsletter/exports", {"full": True})
    http_body(evidence, "StartExport, 401", refused)
    refused_message = refused.queued
    assert refused_message is not None and refused_message.value is not None
    evidence.call("RunQueuedExport, 401", lambda: run_queue_message(refused_message))
    failed = http_body(evidence, "GetExportRun, 401", http("GET", f"runs/{refused.json()['run_id']}"))
    assert failed["status"] == "failed" and "401" in failed["error"]
    evidence.call("timer, 401", fire_timer)

    # The operate API's listings (the rejects download is the documented exception, as the rejects CSV).
    http_body(evidence, "ListDestinations", http("GET", "destinations"))
    for name in ("vip-customers", "newsletter", "no-consent"):
        page = http_body(evidence, f"ListDestinationRuns {name}", http("GET", f"destinations/{name}/runs?limit=100"))
        assert page["runs"], name

    gather_logs(evidence, caplog, capsys)
    kept = gather_runs_container(evidence, env)
    evidence.assert_clean()

    # The documented exceptions do hold the values, so the search above would have found them.
    rejects = "\n".join(text for name, text in kept.items() if name.startswith("rejects/"))
    assert all(row[1] in rejects for row in INVALID)
    assert any(PEOPLE[0][1] in text for name, text in kept.items() if name.startswith("state/"))
    assert any(r.status == 401 for r in env.sim.request_log)  # the key was really refused


def test_key_vault_rotation_leaks_no_key(env: Env, keyvault: KeyVaultStandIn, evidence: Evidence,
                                         caplog: pytest.LogCaptureFixture,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    env.monkeypatch.delenv("LOCAL_DEV_SENDGRID_API_KEY")
    env.monkeypatch.setenv("KEY_VAULT_URL", keyvault.url)
    keyvault.set_secret(SECRET_NAME, CANARY_KEY)
    env.sim.set_api_keys({CANARY_KEY: None})
    keys = ApiKeyProvider(keyvault.url, credential=keyvault.credential,
                          client_kwargs=keyvault.client_kwargs)
    service = env.install(keys=keys)
    container = env.segments.container_name

    env.upload("vip/one.csv", segment(PEOPLE[:1]))
    evidence.call("blob trigger, key A", lambda: fire_blob_trigger(container, "vip/one.csv"))
    env.sim.set_api_keys({ROTATED_CANARY_KEY: None})
    keyvault.set_secret(SECRET_NAME, ROTATED_CANARY_KEY)
    env.upload("vip/two.csv", segment(PEOPLE[1:]))
    evidence.call("blob trigger, rotated", lambda: fire_blob_trigger(container, "vip/two.csv"))
    assert set(env.sim.list_contacts(VIP_LIST)) == {p[1] for p in PEOPLE}
    assert len(keyvault.secret_reads()) == 2

    # Revoked without rotation, then the vault unreachable and the secret gone.
    env.sim.set_api_keys({"SG.some-other-key": None})
    env.upload("vip/three.csv", segment(PEOPLE))
    evidence.call("blob trigger, revoked", lambda: fire_blob_trigger(container, "vip/three.csv"))
    keyvault.set_unavailable(True)
    evidence.call("refresh, vault down", lambda: service.keys.refresh(SECRET_NAME))
    keyvault.set_unavailable(False)
    keyvault.delete_secret(SECRET_NAME)
    evidence.call("refresh, secret gone", lambda: service.keys.refresh(SECRET_NAME))
    env.upload("vip/four.csv", segment(PEOPLE))
    evidence.call("blob trigger, secret gone", lambda: fire_blob_trigger(container, "vip/four.csv"))
    evidence.add("provider repr", repr(service.keys))

    gather_logs(evidence, caplog, capsys)
    gather_runs_container(evidence, env)
    evidence.assert_clean()


# -- the CLI ----------------------------------------------------------------------------------------------

def run_cli(env: Env, args: list[str], *, debug: bool = False) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("KEY_VAULT_URL", "DESTINATIONS_JSON")}
    environment.update(LOCAL_DEV_SENDGRID_API_KEY=CANARY_KEY, SENDGRID_BASE_URL=env.sim.base_url,
                       PYTHONIOENCODING="utf-8")
    if debug:  # the CLI logs at INFO; this runs the same module with the root logger at DEBUG
        command = [sys.executable, "-c",
                   "import logging, runpy, sys; logging.basicConfig(level=logging.DEBUG); "
                   "sys.argv = ['shared.cli', *sys.argv[1:]]; runpy.run_module('shared.cli', run_name='__main__')",
                   *args]
    else:
        command = [sys.executable, "-m", "shared.cli", *args]
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60,
                          check=False)


def test_cli_leaks_neither_key_nor_personal_data(env: Env, tmp_path: Path, evidence: Evidence) -> None:
    env.sim.set_api_keys({CANARY_KEY: None})
    config = tmp_path / "destinations.json"
    config.write_text(json.dumps({"destinations": DESTINATIONS}), encoding="utf-8")
    good = tmp_path / "segment.csv"
    good.write_bytes(segment([*PEOPLE, *INVALID]))
    headerless = tmp_path / "no-header.csv"
    headerless.write_bytes(segment(PEOPLE, header=False))
    base = ["export", "--config", str(config), "--destination", "vip-customers"]

    def without_preview(report: dict[str, Any], dry_run: bool) -> dict[str, Any]:
        if dry_run:  # the preview is what a dry run is for; the rest of its report is checked
            assert {c["email"] for c in report.pop("preview")} == {p[1] for p in PEOPLE}
        assert "preview" not in report
        return report

    def cli(where: str, segment_file: Path, *extra: str, debug: bool = False, code: int) -> dict[str, Any]:
        report_file = tmp_path / f"report-{len(evidence.texts)}.json"
        done = run_cli(env, [base[0], str(segment_file), *base[1:], "--report", str(report_file), *extra],
                       debug=debug)
        assert done.returncode == code, done.stderr[-2000:]
        evidence.add(f"cli {where}: stderr", done.stderr)
        dry_run = "--dry-run" in extra
        out = without_preview(json.loads(done.stdout), dry_run)
        evidence.add(f"cli {where}: stdout", json.dumps(out))
        written = without_preview(json.loads(report_file.read_text(encoding="utf-8")), dry_run)
        evidence.add(f"cli {where}: --report file", json.dumps(written))
        return out

    ok = cli("export", good, code=0)
    assert (ok["status"], ok["exported"], ok["rejected_count"]) == ("succeeded", len(PEOPLE), len(INVALID))
    cli("export at DEBUG", good, debug=True, code=0)
    cli("dry run", good, "--dry-run", code=0)
    failed = cli("no header", headerless, code=2)
    assert failed["status"] == "failed" and "header" in failed["error"]

    env.sim.set_api_keys({"SG.some-other-key": None})
    refused = cli("401", good, code=1)
    assert refused["status"] == "failed" and "401" in refused["error"]
    cli("401 at DEBUG", good, debug=True, code=1)

    assert any("DEBUG" in text for where, text in evidence.texts if "DEBUG" in where)
    assert set(env.sim.list_contacts(VIP_LIST)) == {p[1] for p in PEOPLE}  # the CLI really exported
    evidence.assert_clean()
