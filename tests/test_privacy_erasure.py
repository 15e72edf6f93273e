"""Erasure requests (issue 14) end to end: by HTTP and by a dropped file, against Azurite and the simulator.

An erasure deletes the person's contact in SendGrid, removes the address from every snapshot and every
stored rejects file (checked by reading every blob of the runs container), keeps only an HMAC digest in the
do-not-export set, and every later export skips the person and counts the row `suppressed`. A run stopped
by a fault, or still waiting for SendGrid's deletion job, says so and never counts the contact deleted;
run again, it ends complete.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from shared.cli import main as cli_main
from shared.privacy.donotexport import SET_PATH
from shared.service import erasure_service
from shared.service.erasure_service import lift_suppression
from shared.service.export_service import ExportService
from shared.state.run_store import RunStore
from tests.test_functions import (
    NEWS_LIST,
    VIP_LIST,
    Env,
    csv_bytes,
    env,
    fire_blob_trigger,
    fire_timer,
    http,
    person,
    sim,
)

__all__ = ["env", "sim"]

ERASED = "Erased.Person@Example.com"
ERASED_KEY = ERASED.lower()


@pytest.fixture(autouse=True)
def _quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(erasure_service.ERASURE_TIMINGS, "lock_wait", 5.0)
    monkeypatch.setitem(erasure_service.ERASURE_TIMINGS, "verify_timeout", 5.0)
    monkeypatch.setitem(erasure_service.ERASURE_TIMINGS, "poll_interval", 0.05)


def erased_row(tag: str = "x") -> list[str]:
    return [f"CI-9{tag}", ERASED, "Erased", "Person", "France"]


def export_everyone(env: Env) -> ExportService:
    """vip and newsletter both hold the person; a vip row with the address inside a bad email value goes
    to the rejects file (the one place rejected values are kept)."""
    service = env.install()
    bad = ["CI-8", f"Erased Person <{ERASED}>", "Bad", "Row", "France"]
    fire_blob_trigger(env.segments.container_name,
                      env.upload("vip/segment-1.csv", csv_bytes([person(1, "vip"), person(2, "vip"), erased_row(),
                                                                  bad])))
    fire_blob_trigger(env.segments.container_name,
                      env.upload("news/segment-1.csv", csv_bytes([person(1, "news"), erased_row()])))
    assert ERASED_KEY in env.sim.list_contacts(VIP_LIST) and ERASED_KEY in env.sim.list_contacts(NEWS_LIST)
    scanned = runs_blobs(env)
    assert any(ERASED_KEY in blob for blob in scanned.values())  # the scan below can see it
    assert {name.split("/")[0] for name in scanned} >= {"state", "rejects", "reports", "receipts", "index"}
    return service


def runs_blobs(env: Env) -> dict[str, str]:
    """Every blob of the runs container with its metadata (the run index's summaries), lower-cased."""
    return {b.name: (env.runs.download_blob(b.name).readall().decode("utf-8", "replace")
                     + json.dumps(b.metadata or {})).lower()
            for b in env.runs.list_blobs(include=["metadata"])}


def assert_forgotten(env: Env) -> None:
    holding = sorted(name for name, text in runs_blobs(env).items() if ERASED_KEY in text)
    assert holding == []
    assert env.sim.contact(ERASED) is None
    assert env.runs.get_blob_client(SET_PATH).exists()  # digests only: the scan above read it too


def test_an_erasure_by_http_deletes_the_contact_cleans_every_blob_and_later_exports_suppress(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    export_everyone(env)
    with caplog.at_level(logging.DEBUG):
        answer = http("POST", "erasures", {"emails": [ERASED, "nobody@example.com"], "reference": "DSR-1"})
    assert caplog.records and ERASED_KEY not in caplog.text.lower()  # every logger, at DEBUG
    assert answer.status == 200, answer.json()
    report = answer.json()
    assert report["status"] == "completed"
    assert (report["requested"], report["found"], report["deleted"], report["not_found"], report["errors"],
            report["still_present"]) == (2, 1, 1, 1, 0, 0)
    assert report["snapshot_entries_removed"] == 2 and report["rejects_rows_removed"] == 1
    assert "@" not in json.dumps(report)
    assert_forgotten(env)
    assert {person(1, "vip")[1], person(2, "vip")[1]} <= set(env.sim.list_contacts(VIP_LIST))
    status = http("GET", f"erasures/{report['erasure_id']}")
    assert status.status == 200 and status.json()["status"] == "completed"
    assert "@" not in json.dumps(status.json())

    # The CDP's next file still holds the person: everyone else is sent, the person counted suppressed.
    before = len(env.sim.upsert_batches)
    fire_blob_trigger(env.segments.container_name, env.upload(
        "vip/segment-2.csv", csv_bytes([person(1, "vip"), person(2, "vip"), person(3, "vip"), erased_row("y")])))
    run = newest_report(env, "vip-customers")
    assert run["status"] == "succeeded" and run["balanced"]
    assert (run["rows_read"], run["suppressed"], run["exported"], run["unchanged_skipped"]) == (4, 1, 1, 2)
    assert run["segments"][0]["suppressed"] == 1 and run["segments"][0]["balanced"]
    sent = [email for batch in env.sim.upsert_batches[before:] for email in batch.emails]
    assert sent == [person(3, "vip")[1]] and env.sim.contact(ERASED) is None
    assert_forgotten(env)


def newest_report(env: Env, destination: str) -> dict[str, Any]:
    reports = [r for r in env.reports() if r.get("destination") == destination]
    return max(reports, key=lambda r: str(r["run_id"]))  # run IDs carry milliseconds: started_at only seconds


def test_an_erasure_by_file_is_picked_up_by_the_trigger_and_the_file_deleted(env: Env) -> None:
    export_everyone(env)
    name = env.upload("erasures/request-7.csv", f"email\n{ERASED.upper()}\n".encode())
    fire_blob_trigger(env.segments.container_name, name)
    assert not env.segments.get_blob_client(name).exists()
    stored = [json.loads(env.runs.download_blob(b.name).readall())
              for b in env.runs.list_blobs(name_starts_with="erasures/reports/")]
    assert len(stored) == 1 and stored[0]["status"] == "completed" and stored[0]["deleted"] == 1
    assert stored[0]["via"] == "file" and not list(env.runs.list_blobs(name_starts_with="erasures/requests/"))
    assert_forgotten(env)
    fire_blob_trigger(env.segments.container_name, name)  # a redelivered event: the file is gone, nothing to do


def test_a_failed_erasure_says_so_keeps_the_request_and_the_timer_finishes_it(env: Env) -> None:
    export_everyone(env)
    env.sim.inject("status", status=403, method="DELETE", path="/v3/marketing/contacts")
    answer = http("POST", "erasures", {"emails": [ERASED], "reference": "DSR-2"})
    assert answer.status == 202
    report = answer.json()
    assert report["status"] == "failed" and report["deleted"] == 0 and "PermissionDenied" in report["error"]
    assert env.sim.contact(ERASED) is not None  # not deleted, and not reported so
    assert len(list(env.runs.list_blobs(name_starts_with="erasures/requests/"))) == 1
    env.sim.faults.clear()
    fire_timer(run_queued=False)
    done = http("GET", f"erasures/{report['erasure_id']}").json()
    assert done["status"] == "completed" and done["deleted"] == 1 and done["attempts"] == 2
    assert_forgotten(env)


def test_a_deletion_sendgrid_has_not_finished_is_never_reported_deleted(env: Env,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    service = export_everyone(env)
    monkeypatch.setitem(erasure_service.ERASURE_TIMINGS, "verify_timeout", 0.2)
    env.sim.job_delay = 2.0  # SendGrid's deletion job outlasts the wait
    report = http("POST", "erasures", {"emails": [ERASED]}).json()
    assert report["status"] == "incomplete" and report["found"] == 1
    assert report["deleted"] == 0 and report["still_present"] == 1
    assert env.sim.wait_for_jobs(10)
    env.sim.job_delay = 0.01
    again = erasure_service.resume_erasures(service)  # what the timer and `cli erase --resume` do
    # SendGrid no longer finds the contact: the first attempt's find now counts as deleted.
    assert [(r["status"], r["found"], r["deleted"], r["not_found"], r["still_present"]) for r in again] == [
        ("completed", 1, 1, 0, 0)]
    assert (again[0]["snapshot_entries_removed"], again[0]["rejects_rows_removed"]) == (2, 1)  # both attempts'
    assert_forgotten(env)


@pytest.mark.parametrize(("body", "fragment"), [
    ({"emails": []}, "non-empty list"),
    ({"emails": ["a@example.com"] * 10_001}, "at most 10000"),
    ({"emails": ["not-an-address"]}, "emails[0]"),
    ({"emails": ["a@example.com"], "reference": "from bob@example.com"}, "reference"),
    ({"emails": ["a@example.com"], "extra": 1}, "unknown field"),
])
def test_erasure_requests_are_validated(env: Env, body: dict[str, Any], fragment: str) -> None:
    env.install()
    answer = http("POST", "erasures", body)
    assert answer.status == 400 and fragment in answer.json()["error"]
    assert "example.com" not in answer.json()["error"]  # never an address
    assert not env.runs.exists() or not list(env.runs.list_blobs(name_starts_with="erasures/"))


def test_a_lifted_suppression_lets_the_person_be_exported_again(env: Env) -> None:
    export_everyone(env)
    assert http("POST", "erasures", {"emails": [ERASED]}).json()["status"] == "completed"
    service = env.install()
    assert lift_suppression(service, [ERASED]) == 1
    fire_blob_trigger(env.segments.container_name, env.upload(
        "vip/segment-3.csv", csv_bytes([person(1, "vip"), erased_row("z")])))
    run = newest_report(env, "vip-customers")
    assert run["suppressed"] == 0 and env.sim.contact(ERASED) is not None


def test_cli_export_of_a_local_file_skips_erased_people_too(env: Env, tmp_path: Path) -> None:
    export_everyone(env)
    assert http("POST", "erasures", {"emails": [ERASED]}).json()["status"] == "completed"
    local = tmp_path / "segment.csv"
    local.write_bytes(csv_bytes([person(5, "vip"), erased_row("c")]))
    report_file = tmp_path / "report.json"
    assert cli_main(["export", str(local), "--destination", "vip-customers", "--report", str(report_file)]) == 0
    report = json.loads(report_file.read_text())
    assert (report["suppressed"], report["exported"], report["balanced"]) == (1, 1, True)
    assert env.sim.contact(ERASED) is None


def test_a_dropped_file_that_is_no_list_of_addresses_is_refused_and_its_report_names_no_address(env: Env) -> None:
    env.install()
    name = env.upload("erasures/from-bob@example.com.csv", b"email\nnot an address\n")
    fire_blob_trigger(env.segments.container_name, name)
    (report,) = [json.loads(env.runs.download_blob(b.name).readall())
                 for b in env.runs.list_blobs(name_starts_with="erasures/reports/")]
    assert report["status"] == "refused" and "not an email address" in report["error"]
    assert "example.com" not in json.dumps(report)
    assert env.segments.get_blob_client(name).exists()  # left for the operator to fix; nothing was stored
    assert not list(env.runs.list_blobs(name_starts_with="erasures/requests/"))


def test_an_erasure_stopped_after_the_delete_was_accepted_counts_it_deleted_when_run_again(env: Env) -> None:
    service = export_everyone(env)
    env.sim.job_delay = 0.5
    # The delete is accepted; the search that checks it is refused: the run stops before it can count.
    first_search = len([r for r in env.sim.request_log if r.endpoint.endswith("search/emails")])
    calls: list[int] = []

    def refuse_the_check(*_: object) -> None:
        calls.append(1)
        env.sim.inject("status", status=403, method="POST", path="/v3/marketing/contacts/search/emails")

    env.sim.store.keys_of = _after(env.sim.store.keys_of, refuse_the_check)  # type: ignore[method-assign]
    report = http("POST", "erasures", {"emails": [ERASED]}).json()
    assert calls and report["status"] == "failed" and report["deleted"] == 0
    assert len([r for r in env.sim.request_log if r.endpoint.endswith("search/emails")]) > first_search
    assert env.sim.wait_for_jobs(10)
    env.sim.faults.clear()
    (again,) = erasure_service.resume_erasures(service)
    assert (again["status"], again["found"], again["deleted"], again["not_found"]) == ("completed", 1, 1, 0)
    assert_forgotten(env)


def _after(function: Any, then: Any) -> Any:
    """`function`, then `then` (the simulator's DELETE handler calls store.keys_of once per accepted delete)."""
    def wrapped(*args: Any) -> Any:
        result = function(*args)
        then()
        return result
    return wrapped


def test_an_address_sendgrid_will_not_search_is_counted_an_error_never_deleted_and_still_suppressed(
        env: Env) -> None:
    export_everyone(env)
    long = "l" * 64 + "@" + "d" * 40 + ".example.com"  # valid, but the search takes at most 100 characters
    report = http("POST", "erasures", {"emails": [ERASED, long], "reference": "DSR-3"}).json()
    assert (report["status"], report["found"], report["deleted"], report["not_found"], report["errors"]) == (
        "completed", 1, 1, 0, 1)
    assert any("would not search" in note for note in report["notes"]) and "@" not in json.dumps(report)
    fire_blob_trigger(env.segments.container_name, env.upload(
        "vip/segment-4.csv", csv_bytes([person(1, "vip"), ["CI-77", long, "Long", "Address", "France"]])))
    run = newest_report(env, "vip-customers")
    assert (run["suppressed"], run["balanced"]) == (1, True) and env.sim.contact(long) is None


def test_cli_erase_and_resume_say_by_their_exit_code_whether_the_erasure_is_complete(
        env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    export_everyone(env)
    env.sim.inject("status", status=403, count=2, method="DELETE", path="/v3/marketing/contacts")
    assert cli_main(["erase", ERASED, "--reference", "DSR-4"]) == 1
    first = json.loads(capsys.readouterr().out)
    assert first["status"] == "failed" and first["reference"] == "DSR-4"
    assert cli_main(["erase", "--resume"]) == 1  # the second refusal
    assert json.loads(capsys.readouterr().out)["status"] == "incomplete"
    assert cli_main(["erase", "--resume"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert [(e["erasure_id"], e["status"], e["attempts"]) for e in resumed["erasures"]] == [
        (first["erasure_id"], "completed", 3)]
    assert_forgotten(env)


def test_an_erasure_waits_for_the_rejects_file_of_an_export_that_read_the_person_before_it(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The export read the person before the erasure began (its rejects file holds them): the erasure cannot
    take the destination's lock until that file is stored, so its scrub (now, or when resumed) finds it."""
    service = export_everyone(env)
    monkeypatch.setitem(erasure_service.ERASURE_TIMINGS, "lock_wait", 0.5)
    upload = RunStore.upload_rejects
    meanwhile: list[dict[str, Any]] = []

    def erase_first(self: RunStore, run_id: str, rejects: Any) -> str | None:
        if not meanwhile:  # the export's run is over; its rejects file is not stored yet
            meanwhile.append(erasure_service.submit_erasure(service, {"emails": [ERASED]}, answering=False))
        return upload(self, run_id, rejects)

    monkeypatch.setattr(RunStore, "upload_rejects", erase_first)
    bad = ["CI-8", f"Erased Person <{ERASED}>", "Bad", "Row", "France"]
    fire_blob_trigger(env.segments.container_name, env.upload("vip/segment-5.csv", csv_bytes([person(1, "vip"), bad])))
    monkeypatch.setattr(RunStore, "upload_rejects", upload)
    assert meanwhile and meanwhile[0]["status"] == "failed"  # the lock was still held
    assert "DestinationBusy" in meanwhile[0]["error"]
    (again,) = erasure_service.resume_erasures(service)
    assert again["status"] == "completed"
    assert_forgotten(env)


def test_a_dry_run_that_read_the_person_before_an_erasure_does_not_keep_them_in_its_rejects_file(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dry run takes no lock, so an erasure can scrub before the dry run stores its rejects file: the dry run
    reads the do-not-export set again after storing the file, and drops the file when someone was erased."""
    service = export_everyone(env)
    upload = RunStore.upload_rejects
    meanwhile: list[dict[str, Any]] = []

    def erase_first(self: RunStore, run_id: str, rejects: Any) -> str | None:
        if not meanwhile:  # the dry run has read the person; its rejects file is not stored yet
            meanwhile.append(erasure_service.submit_erasure(service, {"emails": [ERASED]}, answering=False))
        return upload(self, run_id, rejects)

    monkeypatch.setattr(RunStore, "upload_rejects", erase_first)
    bad = ["CI-8", f"Erased Person <{ERASED}>", "Bad", "Row", "France"]
    env.upload("vip/segment-6.csv", csv_bytes([person(1, "vip"), bad]))
    answer = http("POST", "destinations/vip-customers/exports", {"dry_run": True})
    monkeypatch.setattr(RunStore, "upload_rejects", upload)
    assert meanwhile and meanwhile[0]["status"] == "completed"  # nothing locked: it scrubbed before the file
    assert answer.status == 200
    report = answer.json()
    stored = env.report(report["run_id"])
    assert report["rejected_count"] == 1 and stored["rejects_blob"] is None
    assert any("erased" in note for note in stored["notes"])
    assert_forgotten(env)
