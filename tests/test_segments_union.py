"""A destination's list is the union of its segments' current files, whatever way a run starts, whatever
order events come in, whatever file lands: against Azurite, the SendGrid simulator and the registered
functions (issue "The list is always what the segments say").

Each mirror case ends with the list compared to the union of the current files, person by person.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from azure.storage.blob import BlobLeaseClient

from sendgrid_simulator import Simulator
from shared.cli import main as cli_main
from shared.config.destinations import load_destinations
from shared.errors import ConfigurationError
from shared.sendgrid.client import SendGridClient
from shared.service.export_service import ExportService, reset_service
from shared.state.sync_state import LeaseTooShort, SyncState
from tests.azurite import Azurite
from tests.test_functions import (
    API_KEY,
    FAST,
    HEADER,
    VIP_LIST,
    Env,
    csv_bytes,
    destination,
    emails,
    env,
    fire_blob_trigger,
    fire_timer,
    http,
    person,
    registered,
    run_queue_message,
    sim,
)

__all__ = ["env", "sim"]  # the harness's fixtures, found by pytest in this module

SEGMENTS = ["union/gold/", "union/silver/"]


def union_destination(mode: str = "mirror", **extra: Any) -> dict[str, Any]:
    doc = destination("union", VIP_LIST, SEGMENTS[0], mode=mode, **extra)
    doc["segments"] = list(SEGMENTS)
    return doc


def setup(env: Env, mode: str = "mirror", **extra: Any) -> ExportService:
    env.set_destinations([union_destination(mode, **extra)])
    return env.install()


_seen_reports: dict[int, set[str]] = {}


def mark(env: Env) -> None:
    """Remember the reports stored so far: last_report() returns the one stored after this."""
    _seen_reports[id(env)] = set(env.report_names())


def trigger(env: Env, name: str, rows: list[list[str]], **kwargs: Any) -> None:
    mark(env)
    fire_blob_trigger(env.segments.container_name, env.upload(name, csv_bytes(rows, **kwargs)))


def members(env: Env) -> set[str]:
    return set(env.sim.list_contacts(VIP_LIST))


def last_report(env: Env) -> dict[str, Any]:
    """The one report stored since mark() (runs start within one second: their times cannot order them)."""
    seen = _seen_reports.setdefault(id(env), set())
    new = [name for name in env.report_names() if name not in seen]
    assert len(new) == 1, new
    data: dict[str, Any] = json.loads(env.runs.download_blob(new[0]).readall())
    return data


def assert_parts_balance(report: dict[str, Any]) -> None:
    assert report["balanced"], report
    assert all(part["balanced"] for part in report["segments"]), report["segments"]
    for count in ("rows_read", "exported", "unchanged_skipped", "rejected_count", "duplicates_merged"):
        assert sum(part[count] for part in report["segments"]) == report[count], count


GOLD = [person(n, "gold") for n in range(1, 6)]
SILVER = [person(n, "silver") for n in range(1, 5)]


# -- several segments, one list ------------------------------------------------------------------------------

def test_two_plain_prefixes_in_mirror_mode_keep_both_segments_people_across_new_files_of_either(env: Env) -> None:
    setup(env)
    trigger(env, "union/gold/2026-11-01.csv", GOLD)
    assert members(env) == emails(GOLD)  # silver has no file yet: gold is exported...
    first = last_report(env)
    assert [p["segment"] for p in first["segments"]] == SEGMENTS
    assert first["segments"][1]["source"] is None and "no file" in first["segments"][1]["note"]

    trigger(env, "union/silver/2026-11-01.csv", SILVER)
    assert members(env) == emails(GOLD + SILVER)  # ...and a new silver file re-reads gold's current file
    report = last_report(env)
    assert (report["status"], report["rows_read"], report["unchanged_skipped"], report["exported"]) == \
        ("succeeded", 9, 5, 4)
    assert [(p["rows_read"], p["exported"], p["unchanged_skipped"]) for p in report["segments"]] == \
        [(5, 0, 5), (4, 4, 0)]
    assert_parts_balance(report)

    time.sleep(1.1)  # Last-Modified counts whole seconds
    new_gold = [*GOLD[1:], person(9, "gold")]  # one left gold, one joined
    trigger(env, "union/gold/2026-11-02.csv", new_gold)
    assert members(env) == emails(new_gold + SILVER)  # silver's people stay; only gold's leaver goes
    report = last_report(env)
    assert report["removed_from_list"] == 1 and report["status"] == "succeeded"
    assert_parts_balance(report)

    time.sleep(1.1)
    new_silver = SILVER[:2]
    trigger(env, "union/silver/2026-11-02.csv", new_silver)
    assert members(env) == emails(new_gold + new_silver)


def test_a_person_in_two_segments_is_one_contact_and_the_later_segment_decides_the_fields(env: Env) -> None:
    setup(env, mode="upsert")
    shared_gold = ["CI-1", "Both@Example.com", "FromGold", "Gold", "France"]
    shared_silver = ["CI-1", " both@example.com ", "FromSilver", "Silver", "Spain"]
    env.upload("union/gold/a.csv", csv_bytes([*GOLD[:2], shared_gold]))
    trigger(env, "union/silver/a.csv", [shared_silver, *SILVER[:1]])
    report = last_report(env)
    assert (report["rows_read"], report["exported"], report["duplicates_merged"]) == (5, 4, 1)
    assert [p["duplicates_merged"] for p in report["segments"]] == [1, 0]  # gold's row merged into silver's
    assert_parts_balance(report)
    env.sim.wait_for_jobs()
    sent = env.sim.contact("both@example.com")
    assert sent is not None and (sent["first_name"], sent["country"]) == ("FromSilver", "Spain")  # later wins


def test_a_two_table_model_json_with_a_destination_for_both_tables_ends_with_the_union(env: Env) -> None:
    export = "CustomerInsights_77/sendgrid/"
    doc = destination("ci-both", VIP_LIST, f"{export}Gold/", mode="mirror")
    doc["segments"] = [f"{export}Gold/", f"{export}Silver/"]
    env.set_destinations([doc])
    env.install()
    parts = {table: f"{export}{table}/2026/11/01/0600/{table}_1.csv" for table in ("Gold", "Silver")}
    env.upload(parts["Gold"], csv_bytes(GOLD, header=False))
    env.upload(parts["Silver"], csv_bytes(SILVER, header=False))
    attributes = [{"name": a, "dataType": "string"} for a in HEADER]
    entities = [{"$type": "LocalEntity", "name": table, "attributes": attributes,
                 "partitions": [{"name": f"{table}_1", "location": f"{env.segments.url}/{path}"}]}
                for table, path in parts.items()]
    document = {"name": "e", "version": "1.0", "entities": entities}
    model = env.upload(f"{export}model.json", json.dumps(document).encode())
    fire_blob_trigger(env.segments.container_name, model)
    assert members(env) == emails(GOLD + SILVER)
    [report] = env.reports()  # one run per model.json, not one per table
    assert [(p["entity"], p["rows_read"], p["exported"]) for p in report["segments"]] == [("Gold", 5, 5),
                                                                                         ("Silver", 4, 4)]
    assert_parts_balance(report)
    fire_blob_trigger(env.segments.container_name, model)  # the same version again: nothing
    assert len(env.reports()) == 1


def test_a_segment_without_a_file_upsert_exports_the_others_and_mirror_removes_nobody(env: Env) -> None:
    setup(env)
    env.upload("union/gold/a.csv", csv_bytes(GOLD))
    trigger(env, "union/silver/a.csv", SILVER)
    assert members(env) == emails(GOLD + SILVER)
    env.segments.delete_blob("union/silver/a.csv")  # the silver export is gone (retention, a cleanup)
    time.sleep(1.1)
    trigger(env, "union/gold/b.csv", GOLD[:3])
    report = last_report(env)
    assert members(env) == emails(GOLD + SILVER)  # nobody removed: silver's people are unknown, not gone
    assert report["removed_from_list"] == 0 and report["removals_withheld"] == 6
    assert any("union/silver/ have no file yet" in note for note in report["notes"])

    setup(env, mode="upsert")
    trigger(env, "union/gold/c.csv", [person(50, "gold")])
    report = last_report(env)
    assert report["status"] == "succeeded" and report["segments"][1]["note"].startswith("no file yet")


def test_every_way_in_runs_the_same_union(env: Env) -> None:
    setup(env)
    env.upload("union/gold/a.csv", csv_bytes(GOLD))
    env.upload("union/silver/a.csv", csv_bytes(SILVER))
    fire_timer()  # the timer
    assert members(env) == emails(GOLD + SILVER)
    mark(env)
    started = http("POST", "destinations/union/exports", {"full": True})  # HTTP without a blob
    assert started.status == 202 and started.queued is not None
    run_queue_message(started.queued)
    report = last_report(env)
    assert (report["exported"], report["rows_read"]) == (9, 9)
    # HTTP naming a blob replaces that one segment's file for this run only (a newer file: allowed in mirror)
    time.sleep(1.1)
    env.upload("union/gold/b.csv", csv_bytes(GOLD[:2]))
    preview = http("POST", "destinations/union/exports", {"dry_run": True, "blob": "union/gold/b.csv"})
    assert preview.status == 200
    assert [p["rows_read"] for p in preview.json()["segments"]] == [2, 4]
    assert members(env) == emails(GOLD + SILVER)


# -- mirror never puts a leaver back or removes a member wrongly ---------------------------------------------

class _TakeoverAfterFirstBatch(SendGridClient):
    """A run that pauses once its first batch was accepted and checkpointed, just before it sends the second,
    while (as if its lease ran out) a newer run takes over the destination and exports a newer file."""

    takeovers: list[Any] = []  # noqa: RUF012 - one takeover, run once, by the paused run's client
    sent = 0

    def upsert_contacts(self, body: bytes) -> str:
        type(self).sent += 1
        if self.sent == 2:
            while self.takeovers:
                self.takeovers.pop()()
        return super().upsert_contacts(body)


def renamed(rows: list[list[str]], first_name: str) -> list[list[str]]:
    return [[r[0], r[1], f"{first_name}{i}", *r[3:]] for i, r in enumerate(rows)]


def test_a_run_paused_past_its_lease_sends_nothing_after_another_run_took_over(
        env: Env, sim: Simulator, leases_run_out: Callable[[], None]) -> None:
    env.set_destinations([destination("vip-customers", VIP_LIST, "vip/", mode="mirror")])
    people = [person(n) for n in range(1, 7)]
    small = FAST.__class__(**{**FAST.__dict__, "max_contacts_per_request": 2})
    paused = ExportService.from_environment(options=small, client_factory=lambda key, reread: _TakeoverAfterFirstBatch(
        key, base_url=sim.base_url, on_unauthorized=reread))
    newer = ExportService.from_environment(options=FAST)
    vip = newer.destinations.get("vip-customers")
    assert vip is not None
    env.upload("vip/2026-11-01.csv", csv_bytes(renamed(people, "Old")))
    assert newer.export(vip, run_id="first").status == "succeeded"
    time.sleep(1.1)
    env.upload("vip/2026-11-02.csv", csv_bytes(renamed(people, "Mid")))  # 6 changed: 3 batches of 2
    latest = [*renamed(people[2:], "New"), person(9)]

    def takeover() -> None:
        lock = env.runs.get_blob_client("state/vip-customers/lock")
        leases_run_out()
        BlobLeaseClient(lock).break_lease(lease_break_period=0)  # what expiry looks like to the next run
        time.sleep(1.1)
        env.upload("vip/2026-11-03.csv", csv_bytes(latest))
        assert newer.export(vip, run_id="newer-run").status == "succeeded"

    _TakeoverAfterFirstBatch.sent = 0
    _TakeoverAfterFirstBatch.takeovers.append(takeover)
    paused_report = paused.export(vip, "vip/2026-11-02.csv", run_id="paused-run")
    assert paused_report.status == "failed" and "batch 2 and later were not sent" in (paused_report.error or "")
    assert paused_report.balanced and paused_report.exported == 2 and paused_report.not_sent == 4
    # The list is exactly the newest file, with its names: nothing of the paused run came after the takeover.
    assert members(env) == emails(latest)
    env.sim.wait_for_jobs()
    for row in latest:
        contact = env.sim.contact(row[1])
        assert contact is not None and contact["first_name"] == row[2]
    again = newer.export(vip, run_id="refresh")
    assert (again.status, again.exported, again.unchanged_skipped) == ("succeeded", 0, 5)


def test_a_request_that_could_outlive_the_lease_is_not_sent(env: Env) -> None:
    state = SyncState(env.runs, "lease-seam", config_digest="", lease_seconds=15)
    state.acquire()
    try:
        state.guard_change(5.0)  # fits a fresh 15 s lease
        with pytest.raises(LeaseTooShort):
            state.guard_change(14.0)  # 14 s + margin could end after the lease: refused
    finally:
        state.release()


def test_a_stale_queued_export_never_undoes_a_newer_file(env: Env) -> None:
    env.set_destinations([destination("vip-customers", VIP_LIST, "vip/", mode="mirror")])
    env.install()
    old = [person(n, "old") for n in range(1, 5)]
    new = [*old[1:], person(8, "new")]
    trigger(env, "vip/2026-11-01.csv", old)
    started = http("POST", "destinations/vip-customers/exports")  # queued while 11-01 is the latest
    assert started.queued is not None
    time.sleep(1.1)
    trigger(env, "vip/2026-11-02.csv", new)  # exported before the queue delivers the message
    run_queue_message(started.queued)
    assert members(env) == emails(new)  # the queued run read the current file, not the one of its queueing
    assert env.report(started.json()["run_id"])["source"].endswith("vip/2026-11-02.csv")
    # a message naming the older file (an earlier version of the app wrote those) is refused in mirror mode
    run_queue_message(json.dumps({"run_id": "vip-customers-stale", "destination": "vip-customers",
                                  "blob": "vip/2026-11-01.csv", "full": False}))
    stale = env.report("vip-customers-stale")
    assert stale["status"] == "refused" and "older than the current file" in stale["error"]
    assert members(env) == emails(new)
    refused = http("POST", "destinations/vip-customers/exports", {"blob": "vip/2026-11-01.csv"})
    assert refused.status == 409 and "older than the current file" in refused.json()["error"]


def _mirror_with(env: Env, rows: list[list[str]]) -> set[str]:
    env.set_destinations([destination("vip-customers", VIP_LIST, "vip/", mode="mirror")])
    env.install()
    trigger(env, "vip/2026-11-01.csv", rows)
    assert members(env) == emails(rows)
    time.sleep(1.1)
    return emails(rows)


def test_an_empty_json_lines_file_fails_like_an_empty_csv_and_removes_nobody(env: Env) -> None:
    people = _mirror_with(env, [person(n) for n in range(1, 9)])
    env.upload("vip/2026-11-02.jsonl", b"\n\n  \n\n")
    mark(env)
    fire_blob_trigger(env.segments.container_name, "vip/2026-11-02.jsonl")
    report = last_report(env)
    assert report["status"] == "failed" and "file is empty" in report["error"]
    assert members(env) == people


def test_json_lines_rows_without_the_mapped_email_key_are_a_configuration_error(env: Env) -> None:
    people = _mirror_with(env, [person(n) for n in range(1, 9)])
    lines = [{"Email": f"x{n}@example.com", "FirstName": "X"} for n in range(5)]  # PrimaryEmail is mapped
    env.upload("vip/2026-11-02.jsonl", "\n".join(json.dumps(line) for line in lines).encode())
    mark(env)
    fire_blob_trigger(env.segments.container_name, "vip/2026-11-02.jsonl")
    report = last_report(env)
    assert report["status"] == "failed" and "PrimaryEmail" in report["error"] and "appear in no row" in report["error"]
    assert "x0@example.com" not in report["error"]
    assert members(env) == people


def test_rows_rejected_on_their_email_are_people_of_unknown_identity(env: Env) -> None:
    people = _mirror_with(env, [person(n) for n in range(1, 9)])
    bad = [[r[0], f"mailto:{r[1]}", *r[2:]] for r in (person(n) for n in range(1, 9))]
    trigger(env, "vip/2026-11-02.csv", bad)  # every email invalid
    report = last_report(env)
    assert report["removed_from_list"] == 0 and report["removals_withheld"] == 8
    assert any("rejected on their email" in note for note in report["notes"])
    assert members(env) == people


def test_a_handful_of_bad_addresses_in_a_large_segment_does_not_block_removals(env: Env) -> None:
    everyone = [person(n) for n in range(1, 401)]
    _mirror_with(env, everyone)
    kept = everyone[:-5]  # five left
    bad = [["CI-X", "not-an-address", "A", "B", "France"]]  # 1 of 396 rows: under 1%
    trigger(env, "vip/2026-11-02.csv", kept + bad)
    report = last_report(env)
    assert report["removed_from_list"] == 5 and report["removals_withheld"] == 0
    assert members(env) == emails(kept)


def test_a_header_only_file_removes_nobody_unless_empty_segments_are_allowed(env: Env) -> None:
    people = _mirror_with(env, [person(n) for n in range(1, 6)])  # <= min_removals_checked
    trigger(env, "vip/2026-11-02.csv", [])
    report = last_report(env)
    assert report["status"] == "succeeded" and report["removals_withheld"] == 5
    assert any("allow_empty_segments" in note for note in report["notes"])
    assert members(env) == people
    env.set_destinations([destination("vip-customers", VIP_LIST, "vip/", mode="mirror", allow_empty_segments=True)])
    env.install()
    time.sleep(1.1)
    trigger(env, "vip/2026-11-03.csv", [])
    assert last_report(env)["removed_from_list"] == 5
    assert members(env) == set()


# -- clear errors instead of crashes -------------------------------------------------------------------------

def test_a_file_that_cannot_be_decoded_is_a_failed_run_and_writes_no_state(env: Env) -> None:
    env.set_destinations([destination("vip-customers", VIP_LIST, "vip/", file_format={"encoding": "utf-16"})])
    env.install()
    trigger(env, "vip/segment.csv", [person(1)])  # UTF-8 bytes, no byte-order mark
    report = last_report(env)
    assert report["status"] == "failed" and report["balanced"]
    assert "vip/segment.csv" in report["error"] and "utf-16" in report["error"] and "row 1" in report["error"]
    assert not env.runs.get_blob_client("state/vip-customers/source.json").exists()
    assert env.puts() == 0


@pytest.mark.parametrize(("consent", "message"), [
    ({"agreed_by": " ", "agreed_at": "2026-11-01T09:00:00Z"}, "agreed_by"),
    ({"agreed_by": "ops@example.com", "agreed_at": "not a date"}, "ISO-8601"),
    ({"agreed_by": "ops@example.com", "agreed_at": "2026-11-01T09:00:00"}, "UTC"),
    ({"agreed_by": "ops@example.com", "agreed_at": "2999-01-01T00:00:00Z"}, "future"),
])
def test_consent_must_name_someone_and_a_real_past_moment(consent: dict[str, str], message: str) -> None:
    doc = destination("vip", VIP_LIST, "vip/")
    doc["consent"] = consent
    with pytest.raises(ConfigurationError, match=message):
        load_destinations(json.dumps({"destinations": [doc]}))


def test_a_bad_destinations_document_gets_a_json_answer_from_every_http_function(env: Env) -> None:
    env.monkeypatch.setenv("DESTINATIONS_JSON", json.dumps({"destinations": [{"name": "x", "list_id": "nope"}]}))
    reset_service(None)
    for method, path in (("POST", "destinations/x/exports"), ("GET", "runs/x-1")):
        answer = http(method, path)
        assert answer.status == 500
        body = answer.json()
        assert "configuration is invalid" in body["error"] and "destinations.0.list_id" in body["error"]
        assert body["setting"] == "DESTINATIONS_JSON" and API_KEY not in json.dumps(body)


def test_the_scheduled_refresh_has_the_platforms_retry() -> None:
    """What the worker indexes as the function's retryOptions (a failed timer run is otherwise lost)."""
    policy = registered("ScheduledRefresh").get_setting("retry_policy")
    assert policy is not None
    assert policy.get_dict_repr() == {"setting_name": "retry_policy", "strategy": "exponential_backoff",
                                      "max_retry_count": "3", "minimum_interval": "00:01:00",
                                      "maximum_interval": "00:10:00"}


def test_storage_and_key_vault_clients_have_bounded_timeouts_and_retries(azurite: Azurite,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.config.secrets import ApiKeyProvider
    from shared.config.storage import blob_service_from_settings
    from shared.config.time_budgets import LEASE_CALL_ATTEMPTS, LEASE_CALL_OPTIONS
    from shared.state.sync_state import LEASE_SECONDS

    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    client = blob_service_from_settings()
    retry = client._config.retry_policy  # the SDK's own policy object
    assert (retry.total_retries, retry.initial_backoff) == (2, 1)
    assert client._config.transport.connection_config.read_timeout == 20  # type: ignore[union-attr]
    # a lease call never retries inside the SDK and two of them fit well inside a third of a lease
    assert LEASE_CALL_OPTIONS["retry_total"] == 0
    one_call = LEASE_CALL_OPTIONS["connection_timeout"] + LEASE_CALL_OPTIONS["read_timeout"]
    assert LEASE_CALL_ATTEMPTS * one_call < LEASE_SECONDS / 3
    provider = ApiKeyProvider("https://vault.example/", credential=object())  # type: ignore[arg-type]
    secrets = provider._secret_client()
    assert secrets._client._config.retry_policy.total_retries == 3
    provider.close()


def test_the_http_dry_run_needs_no_lock_and_reads_every_segment(env: Env) -> None:
    setup(env)
    env.upload("union/gold/a.csv", csv_bytes(GOLD))
    env.upload("union/silver/a.csv", csv_bytes(SILVER))
    answer = http("POST", "destinations/union/exports", {"dry_run": True})
    assert answer.status == 200
    assert [p["rows_read"] for p in answer.json()["segments"]] == [5, 4]
    assert env.puts() == 0


# -- segments in the platform's account, run state in the app's ------------------------------------------------

def test_segments_and_run_state_in_two_accounts_every_way_in(env: Env, azurite: Azurite) -> None:
    """SEGMENTS_STORAGE names the account the platform writes to; the run state stays in AzureWebJobsStorage."""
    from azure.storage.blob import BlobServiceClient

    platform = BlobServiceClient.from_connection_string(azurite.segments_connection_string)
    segments = platform.create_container(env.segments.container_name)  # same name, other account
    try:
        env.monkeypatch.setenv("SEGMENTS_STORAGE", azurite.segments_connection_string)
        env.segments = segments
        service = setup(env)
        assert service.segments.account_name == "segmentsaccount"
        env.upload("union/gold/a.csv", csv_bytes(GOLD))
        trigger(env, "union/silver/a.csv", SILVER)  # the blob trigger, through its SEGMENTS_STORAGE connection
        assert members(env) == emails(GOLD + SILVER)
        time.sleep(1.1)
        trigger(env, "union/gold/b.csv", GOLD[:4])
        assert members(env) == emails(GOLD[:4] + SILVER)
        fire_timer()
        started = http("POST", "destinations/union/exports", {"blob": "union/gold/b.csv"})
        assert started.status == 202 and started.queued is not None
        run_queue_message(started.queued)
        assert [r["status"] for r in env.reports()] == ["succeeded"] * 4
        reset_service(None)
        assert cli_main(["sync", "union", "--full"]) == 0  # the CLI reads the segments from their account too
        assert [r["status"] for r in env.reports()] == ["succeeded"] * 5
        blob_url = f"{segments.url}/union/gold/b.csv"  # `cli export` of a blob URL: SEGMENTS_STORAGE's key
        assert cli_main(["export", blob_url, "--destination", "union", "--dry-run"]) == 0
        assert {b.name.split("/")[0] for b in segments.list_blobs()} == {"union"}  # no run state with the segments
        assert not platform.get_container_client(env.runs.container_name).exists()
    finally:
        segments.delete_container()


def test_the_http_path_answers_within_its_own_storage_budget(env: Env) -> None:
    """The HTTP functions' storage clients retry once and wait seconds, not the SDK's minutes."""
    service = env.install()
    answering = service.answering()
    assert answering is service.answering() and answering.destinations is service.destinations
    policy = answering.blob_service._config.retry_policy
    assert (policy.total_retries, policy.initial_backoff) == (1, 1)
    assert answering.blob_service._config.transport.connection_config.read_timeout == 10  # type: ignore[union-attr]
    assert service.blob_service._config.transport.connection_config.read_timeout == 20  # type: ignore[union-attr]
    env.upload("vip/segment.csv", csv_bytes([person(1)]))
    started = http("POST", "destinations/vip-customers/exports")  # served by the answering clients
    assert started.status == 202 and started.queued is not None
    run_queue_message(started.queued)
    assert http("GET", f"runs/{started.json()['run_id']}").json()["status"] == "succeeded"


def test_pending_jobs_settled_by_the_timer_keep_every_segment_part_balanced(env: Env) -> None:
    setup(env, mode="upsert")
    env.sim.job_delay = 1.0  # the import job outlives the run's poll timeout: its contacts end the run pending
    env.install(options=FAST.__class__(**{**FAST.__dict__, "poll_timeout": 0.05}))
    env.upload("union/gold/a.csv", csv_bytes(GOLD))
    trigger(env, "union/silver/a.csv", SILVER)
    report = last_report(env)
    assert (report["status"], report["pending"]) == ("partial", 9)
    assert [p["pending"] for p in report["segments"]] == [5, 4]
    assert env.sim.wait_for_jobs(10)
    env.sim.job_delay = 0.02
    fire_timer(run_queued=False)  # settles the pending jobs first
    stored = env.report(report["run_id"])
    assert (stored["status"], stored["pending"], stored["exported"]) == ("succeeded", 0, 9)
    assert [(p["pending"], p["exported"]) for p in stored["segments"]] == [(0, 5), (0, 4)]
    assert_parts_balance({**stored, "balanced": True})


def test_a_broken_export_of_one_segment_is_not_hidden_by_the_others(env: Env) -> None:
    """Doubts are judged per segment: a header-only or all-invalid silver file keeps silver's people."""
    setup(env)
    env.upload("union/gold/a.csv", csv_bytes([person(n, "gold") for n in range(1, 301)]))
    trigger(env, "union/silver/a.csv", SILVER)
    everyone = members(env)
    time.sleep(1.1)
    trigger(env, "union/silver/b.csv", [])  # header only, next to 300 valid gold rows
    report = last_report(env)
    assert report["removals_withheld"] == 4 and any("segment union/silver/ holds no valid contact" in n
                                                    for n in report["notes"])
    time.sleep(1.1)
    trigger(env, "union/silver/c.csv", [[r[0], f"mailto:{r[1]}", *r[2:]] for r in SILVER])  # 4 of 304 rows
    report = last_report(env)
    assert report["removals_withheld"] == 4 and any("of segment union/silver/ were rejected on their email" in n
                                                    for n in report["notes"])
    assert members(env) == everyone


def test_files_written_in_the_same_second_are_ordered_by_name_for_every_run(env: Env) -> None:
    env.set_destinations([destination("vip-customers", VIP_LIST, "vip/", mode="mirror")])
    service = env.install()
    older, newer = [person(n) for n in range(1, 4)], [person(n) for n in range(2, 6)]
    env.upload("vip/2026-11-01.csv", csv_bytes(older))
    env.upload("vip/2026-11-02.csv", csv_bytes(newer))
    vip = service.destinations.get("vip-customers")
    assert vip is not None
    assert [f.name for f in service.current_files(vip)] == ["vip/2026-11-02.csv"]
    fire_blob_trigger(env.segments.container_name, "vip/2026-11-02.csv")
    fire_blob_trigger(env.segments.container_name, "vip/2026-11-01.csv")  # a late event: skipped
    fire_timer()
    assert members(env) == emails(newer)
