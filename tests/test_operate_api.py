"""The operate API (destinations, run history, rejects download) through the registered HTTP functions,
against Azurite and the SendGrid simulator: what an operator or the console sees, and that listing a history
reads the run index only, never the reports."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest

from shared.service import export_service, history
from shared.state.run_index import entry_name, sort_key
from shared.state.run_store import RunStore
from tests.test_functions import (
    CONSENT,
    DESTINATIONS,
    NEWS_LIST,
    VIP_LIST,
    Env,
    bindings,
    csv_bytes,
    env,
    fire_blob_trigger,
    http,
    person,
    run_queue_message,
    sim,
)

__all__ = ["env", "sim"]  # fixtures, re-exported so pytest finds them in this module

GOOD = [person(n, "op") for n in range(1, 5)]
BAD = [["CI-90001", "not-an-address.op", "Bad", "Row", "France"], ["CI-90002", "", "Empty", "Email", "Spain"]]
PERSONAL = [row[1] for row in GOOD] + [BAD[0][1]] + [row[2] for row in GOOD] + [row[3] for row in GOOD]


def assert_no_personal_data(body: bytes) -> None:
    text = body.decode().lower()
    leaked = [value for value in PERSONAL if value.lower() in text]
    assert leaked == [], f"listing holds row values: {leaked}"


def runs_page(name: str, query: str = "") -> dict[str, Any]:
    result = http("GET", f"destinations/{name}/runs{query}")
    assert result.status == 200, result.response.get_body()
    assert_no_personal_data(result.response.get_body())
    page: dict[str, Any] = result.json()
    return page


def dry_run(blob: str = "vip/segment.csv") -> str:
    result = http("POST", "destinations/vip-customers/exports", {"dry_run": True, "blob": blob})
    assert result.status == 200
    assert result.response.headers.get("Cache-Control") == "no-store"  # it holds the mapped contacts
    run_id: str = result.json()["run_id"]
    return run_id


@pytest.mark.parametrize("name", ["ListDestinations", "ListDestinationRuns", "GetRunRejects"])
def test_the_operate_routes_require_a_function_key(name: str) -> None:
    trigger = next(b for b in bindings(name) if b["type"] == "httpTrigger")
    assert trigger["authLevel"] == "FUNCTION" and trigger["methods"] == ["GET"]


def test_destinations_list_settings_current_files_consent_and_last_run(env: Env) -> None:
    blob = env.upload("vip/segment.csv", csv_bytes([*GOOD, *BAD]))
    fire_blob_trigger(env.segments.container_name, blob)
    (report,) = env.reports()

    result = http("GET", "destinations")

    assert result.status == 200 and result.response.headers.get("Cache-Control") == "no-store"
    assert_no_personal_data(result.response.get_body())
    listed = {d["name"]: d for d in result.json()["destinations"]}
    assert list(listed) == [d["name"] for d in DESTINATIONS]
    vip = listed["vip-customers"]
    assert (vip["display_name"], vip["mode"], vip["list_id"]) == ("vip-customers", "upsert", VIP_LIST)
    (segment,) = vip["segments"]
    assert segment["name"] == "vip/" and segment["current_file"]["blob"] == "vip/segment.csv"
    modified = env.segments.get_blob_client(blob).get_blob_properties().last_modified
    assert segment["current_file"]["last_modified"] == modified.isoformat().replace("+00:00", "Z")
    assert vip["consent"] == {"by": CONSENT["agreed_by"], "at": CONSENT["agreed_at"]}
    last = vip["last_run"]
    assert (last["run_id"], last["destination"], last["status"], last["triggered_by"]) == \
        (report["run_id"], "vip-customers", "succeeded", "blob")
    assert (last["started"], last["finished"], last["dry_run"], last["full"]) == \
        (report["started_at"], report["finished_at"], False, False)
    integers = {k: v for k, v in report.items() if isinstance(v, int) and not isinstance(v, bool)}
    assert last["counts"] == integers and (last["counts"]["exported"], last["counts"]["rejected_count"]) == (4, 2)
    news = listed["newsletter"]
    assert news["list_id"] == NEWS_LIST and news["segments"] == [{"name": "news/", "current_file": None}]
    assert news["last_run"] is None
    assert listed["no-consent"]["consent"] is None


def test_run_history_is_newest_first_in_pages_without_gaps_or_duplicates(env: Env) -> None:
    env.install()
    env.upload("vip/segment.csv", csv_bytes(GOOD))
    made = [dry_run() for _ in range(25)]

    seen: list[str] = []
    sizes: list[int] = []
    query = "?limit=10"
    while True:
        page = runs_page("vip-customers", query)
        sizes.append(len(page["runs"]))
        seen += [run["run_id"] for run in page["runs"]]
        if page["next"] is None:
            break
        query = f"?limit=10&before={quote(page['next'])}"
    assert sizes == [10, 10, 5]
    assert seen == made[::-1]  # newest first, each once
    first = runs_page("vip-customers")  # default limit
    assert len(first["runs"]) == history.DEFAULT_LIMIT and first["next"] is not None
    run = first["runs"][0]
    assert (run["status"], run["dry_run"], run["triggered_by"], run["counts"]["rows_read"]) == \
        ("dry_run", True, "http", len(GOOD))
    assert "rejected" not in run and "batches" not in run  # a summary, not the report
    assert runs_page("newsletter") == {"runs": [], "next": None}


def test_bad_paging_input_is_a_400_naming_it_and_an_unknown_destination_a_404(env: Env) -> None:
    env.install()
    env.upload("vip/segment.csv", csv_bytes(GOOD))
    for _ in range(3):
        dry_run()
    token = runs_page("vip-customers", "?limit=1")["next"]
    assert token is not None
    for limit in ("0", "101", "abc", "-1", "1.5", "1e2"):
        result = http("GET", f"destinations/vip-customers/runs?limit={limit}")
        assert result.status == 400 and result.json()["parameter"] == "limit", limit
        assert "limit must be" in result.json()["error"]
    for before in ("not-a-token", "%%%", quote(token[:-3]), "eyJ4IjoxfQ"):
        result = http("GET", f"destinations/vip-customers/runs?before={before}")
        assert result.status == 400 and result.json()["parameter"] == "before", before
    other = http("GET", f"destinations/newsletter/runs?before={quote(token)}")  # another destination's token
    assert other.status == 400 and "another destination" in other.json()["error"]
    unknown = http("GET", "destinations/nope/runs")
    assert unknown.status == 404 and "vip-customers" in unknown.json()["known"]
    assert http("GET", "runs/bad$id/rejects").status == 400


def test_the_index_follows_a_queued_run_from_queued_to_succeeded(env: Env) -> None:
    env.install()
    env.upload("vip/segment.csv", csv_bytes([*GOOD, BAD[0]]))
    started = http("POST", "destinations/vip-customers/exports", {"full": True})
    assert started.status == 202 and started.queued is not None
    run_id = started.json()["run_id"]

    (queued,) = runs_page("vip-customers")["runs"]
    assert (queued["run_id"], queued["status"], queued["triggered_by"], queued["full"], queued["finished"]) == \
        (run_id, "queued", "http", True, None)
    env.install().runs.mark_running(run_id, 1)  # what the worker does first
    assert runs_page("vip-customers")["runs"][0]["status"] == "running"

    run_queue_message(started.queued)

    (done,) = runs_page("vip-customers")["runs"]  # the same entry, rewritten
    report = env.report(run_id)
    assert (done["run_id"], done["status"], done["triggered_by"], done["full"]) == (run_id, "succeeded", "http", True)
    assert done["finished"] == report["finished_at"] and done["counts"]["exported"] == len(GOOD)
    assert done["counts"]["rejected_count"] == 1 and report["triggered_by"] == "http" and report["full"] is True


def test_the_index_shows_a_queued_run_that_failed_to_start(env: Env) -> None:
    env.install()
    env.upload("vip/segment.csv", csv_bytes(GOOD))
    started = http("POST", "destinations/vip-customers/exports", {})
    assert started.queued is not None
    run_id = started.json()["run_id"]
    env.set_destinations([{"name": "Bad Name"}])
    run_queue_message(started.queued)  # `_record_failure`: the failure is written from the storage settings alone
    env.set_destinations(DESTINATIONS)

    (failed,) = runs_page("vip-customers")["runs"]
    assert (failed["run_id"], failed["status"]) == (run_id, "failed") and failed["finished"] is not None


def test_the_timer_and_the_queue_keep_their_trigger(env: Env) -> None:
    from tests.test_functions import fire_timer
    env.set_destinations(DESTINATIONS[:1])
    env.install()
    env.upload("vip/segment.csv", csv_bytes(GOOD))
    fire_timer()
    (run,) = runs_page("vip-customers")["runs"]
    assert (run["status"], run["triggered_by"]) == ("succeeded", "schedule")


def test_listing_reads_the_index_not_the_reports(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, str]] = []  # every storage request of the HTTP path, as Azurite answered it

    def hook(response: Any) -> None:
        sent.append((response.http_request.method, response.http_request.url))

    monkeypatch.setattr(export_service, "ANSWER_STORAGE_OPTIONS",
                        {**export_service.ANSWER_STORAGE_OPTIONS, "raw_response_hook": hook})
    env.install()
    env.upload("vip/segment.csv", csv_bytes([*GOOD, *BAD]))
    made = [dry_run() for _ in range(3)]
    sent.clear()
    before = runs_page("vip-customers")
    ((method, url),) = sent  # one page: one request, a List Blobs of the destination's index prefix
    assert method == "GET" and "comp=list" in url and "prefix=index%2Fvip-customers%2F" in url
    sent.clear()
    overview = http("GET", "destinations").json()
    runs_requests = [url for _, url in sent if f"/{env.runs.container_name}" in url]
    assert len(runs_requests) == len(DESTINATIONS) and all("comp=list" in url for url in runs_requests)
    for name in env.report_names():  # every report unreadable: a listing that opened one would fail or change
        env.runs.upload_blob(name, b"{not json", overwrite=True)
    assert runs_page("vip-customers") == before
    assert http("GET", "destinations").json() == overview
    for name in env.report_names():
        env.runs.delete_blob(name)
    assert [r["run_id"] for r in runs_page("vip-customers")["runs"]] == made[::-1]
    assert before["runs"][0]["counts"]["rejected_count"] == 2


def test_the_rejects_csv_downloads_as_stored_and_404s_without_one(env: Env) -> None:
    blob = env.upload("vip/segment.csv", csv_bytes([*GOOD, *BAD]))
    fire_blob_trigger(env.segments.container_name, blob)
    (report,) = env.reports()

    result = http("GET", f"runs/{report['run_id']}/rejects")

    assert result.status == 200 and result.response.mimetype == "text/csv"
    assert result.response.get_body() == env.runs.download_blob(report["rejects_blob"]).readall()
    assert BAD[0][1].encode() in result.response.get_body()  # the one answer holding row values
    assert result.response.headers["Cache-Control"] == "no-store"
    assert report["run_id"] in result.response.headers["Content-Disposition"]
    env.upload("vip/segment.csv", csv_bytes(GOOD))
    no_rejects = dry_run()
    answer = http("GET", f"runs/{no_rejects}/rejects")
    assert answer.status == 404 and "rejected no row" in answer.json()["error"]
    env.runs.delete_blob(report["rejects_blob"])  # expired (lifecycle rule) or erased
    gone = http("GET", f"runs/{report['run_id']}/rejects")
    assert gone.status == 404 and "gone" in gone.json()["error"] and gone.json()["rejected_count"] == 2
    unknown = http("GET", "runs/vip-customers-20260101T000000000Z-00000000/rejects")
    assert unknown.status == 404 and unknown.json()["error"] == "no such run"


def test_a_large_rejects_file_is_sent_whole_and_one_past_the_bound_refused(env: Env,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    env.install()
    env.upload("vip/segment.csv", csv_bytes(GOOD))
    run_id = dry_run()
    line = b"vip/segment.csv,7,email,is not an email address,someone-at-example\n"
    big = b"source,row,field,reason,value\n" + line * (9 * 1024 * 1024 // len(line))  # > 2 download chunks
    env.runs.upload_blob(f"rejects/{run_id}.csv", big, overwrite=True)

    result = http("GET", f"runs/{run_id}/rejects")
    assert result.status == 200 and result.response.get_body() == big

    monkeypatch.setattr(history, "MAX_REJECTS_BYTES", 1024 * 1024)
    refused = http("GET", f"runs/{run_id}/rejects")
    assert refused.status == 413
    assert refused.json()["size"] == len(big) and refused.json()["blob"] == f"rejects/{run_id}.csv"


def test_index_names_sort_newest_first_and_read_old_and_new_run_ids() -> None:
    older, newer = "d-20261201T101010000Z-aaaa", "d-20261201T101010001Z-0000"
    assert entry_name("d", newer) < entry_name("d", older)
    assert sort_key("d-20261201T101010Z-abcdef12") == sort_key("d-20261201T101010000Z-00")  # before ms were added
    assert sort_key("hand-made") > sort_key(older)  # an undated ID sorts after every dated run
    assert re.fullmatch(r"index/d/\d{14}-" + re.escape(newer), entry_name("d", newer))


@pytest.mark.parametrize("stamp", ["19700101T000000", "20261201T101010", "20280229T235959", "29991231T235959"])
def test_an_index_key_is_the_run_stamps_epoch_milliseconds_inverted(stamp: str) -> None:
    millis = int(datetime.strptime(stamp, "%Y%m%dT%H%M%S").replace(tzinfo=UTC).timestamp()) * 1000 + 7
    assert int(sort_key(f"d-{stamp}007Z-ab")) == 10**14 - 1 - millis


def test_a_run_id_with_an_impossible_date_is_refused() -> None:
    with pytest.raises(ValueError, match="month"):
        sort_key("d-20261301T101010000Z-ab")


def test_an_index_write_that_lost_a_race_follows_the_newer_report(env: Env) -> None:
    """Two writers of one report (the timer failing a run as it finishes): whichever index write comes last,
    the entry ends up saying what the last report says."""
    store = RunStore(env.runs)
    run_id = "vip-customers-20261201T101010000Z-0000abcd"
    queued = {"run_id": run_id, "destination": "vip-customers", "status": "queued", "rows_read": 0}
    store.save_report(run_id, queued)
    blob = env.runs.get_blob_client(RunStore.report_path(run_id))
    stale_etag = blob.get_blob_properties().etag
    blob.upload_blob(json.dumps({**queued, "status": "succeeded", "rows_read": 7}).encode(), overwrite=True)

    store._index(run_id, {**queued, "status": "failed"}, stale_etag)  # the slower writer's entry, written last

    (entry,) = store.index.page("vip-customers", 10).runs
    assert (entry["status"], entry["counts"]["rows_read"]) == ("succeeded", 7)
