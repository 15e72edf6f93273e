"""The SendGrid simulator over real HTTP (httpx): endpoints, limits, jobs, auth, rate limits, faults, OpenAPI."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sendgrid_simulator import MAX_BODY_BYTES, MAX_CONTACTS_PER_REQUEST, Simulator, specs_available
from tests.sendgrid_fixture import (
    SENDGRID_TEST_KEY,
    SENDGRID_TEST_LIST_ID,
    require_openapi,
    running_simulator,
)

ROOT = Path(__file__).resolve().parents[1]
CONTACTS = "/v3/marketing/contacts"
SEARCH = "/v3/marketing/contacts/search/emails"
LIST = f"/v3/marketing/lists/{SENDGRID_TEST_LIST_ID}"


def client(sim: Simulator, key: str = SENDGRID_TEST_KEY) -> httpx.Client:
    return httpx.Client(base_url=sim.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=10)


@pytest.fixture
def sim(sendgrid_sim: Simulator) -> Simulator:  # conftest's fixture, under the name this module uses
    return sendgrid_sim


@pytest.fixture
def api(sim: Simulator) -> Iterator[httpx.Client]:
    with client(sim) as http:
        yield http


@pytest.fixture
def loose_sim() -> Iterator[Simulator]:
    """No OpenAPI validation: for requests the spec itself refuses, to see the simulator's own answer."""
    with Simulator(api_keys={SENDGRID_TEST_KEY: None}, job_delay=0.0) as sim:
        sim.create_list("l", list_id=SENDGRID_TEST_LIST_ID)
        yield sim


def upsert(http: httpx.Client, contacts: list[dict[str, Any]], list_ids: list[str] | None = None) -> httpx.Response:
    return http.put(CONTACTS, json={"list_ids": [SENDGRID_TEST_LIST_ID] if list_ids is None else list_ids,
                                    "contacts": contacts})


def wait_final(http: httpx.Client, job_id: str) -> dict[str, Any]:
    for _ in range(200):
        job: dict[str, Any] = http.get(f"/v3/marketing/contacts/imports/{job_id}").json()
        if job["status"] != "pending":
            return job
        time.sleep(0.01)
    raise AssertionError("job stayed pending")


# -- upserts and jobs ------------------------------------------------------------------------------


def test_upsert_is_pending_then_completed_and_stores_contacts(sim: Simulator, api: httpx.Client) -> None:
    sim.job_delay = 0.2
    response = upsert(api, [{"email": "Ann@Example.com", "first_name": "Ann", "city": "Oslo"},
                            {"email": "bob@example.com", "last_name": "Berg"}])
    assert response.status_code == 202
    job_id = response.json()["job_id"]
    assert uuid.UUID(job_id)
    pending = api.get(f"/v3/marketing/contacts/imports/{job_id}").json()
    assert pending["status"] == "pending" and pending["job_type"] == "upsert"
    assert sim.contact("ann@example.com") is None  # not applied before the job runs
    job = wait_final(api, job_id)
    assert job["status"] == "completed"
    assert job["results"] == {"requested_count": 2, "created_count": 2, "updated_count": 0, "deleted_count": 0,
                              "errored_count": 0}
    assert job["started_at"] and job["finished_at"]
    members = sim.list_contacts(SENDGRID_TEST_LIST_ID)
    assert set(members) == {"ann@example.com", "bob@example.com"}
    assert members["ann@example.com"]["first_name"] == "Ann"
    assert members["ann@example.com"]["list_ids"] == [SENDGRID_TEST_LIST_ID]
    assert sim.upsert_batches == [(job_id, ["ann@example.com", "bob@example.com"])]


def test_update_keeps_omitted_fields_merges_custom_fields_and_counts_updates(sim: Simulator,
                                                                             api: httpx.Client) -> None:
    tier = sim.create_field("tier", "Text")
    orders = sim.create_field("orders", "Number")
    other = sim.create_list("other")
    first = upsert(api, [{"email": "ann@example.com", "first_name": "Ann", "city": "Oslo",
                          "custom_fields": {tier: "gold", orders: 3}}])
    wait_final(api, first.json()["job_id"])
    second = upsert(api, [{"email": "ANN@example.com", "city": "Bergen", "custom_fields": {orders: 4}},
                          {"email": "new@example.com"}], list_ids=[other])
    job = wait_final(api, second.json()["job_id"])
    assert (job["results"]["created_count"], job["results"]["updated_count"]) == (1, 1)
    ann = sim.contact("ann@example.com")
    assert ann is not None
    assert (ann["first_name"], ann["city"]) == ("Ann", "Bergen")
    assert ann["custom_fields"] == {"tier": "gold", "orders": 4}
    assert sorted(ann["list_ids"]) == sorted([SENDGRID_TEST_LIST_ID, other])


def test_jobs_are_processed_in_submission_order(sim: Simulator, api: httpx.Client) -> None:
    jobs = [upsert(api, [{"email": "ann@example.com", "first_name": f"v{i}"}]).json()["job_id"] for i in range(5)]
    assert sim.wait_for_jobs(5)
    assert sim.contact("ann@example.com")["first_name"] == "v4"  # type: ignore[index]
    assert [b.job_id for b in sim.upsert_batches] == jobs


def test_unknown_import_job_is_404(api: httpx.Client) -> None:
    response = api.get(f"/v3/marketing/contacts/imports/{uuid.uuid4()}")
    assert response.status_code == 404
    assert response.json()["errors"][0]["message"]


def test_errored_and_failed_jobs_apply_only_what_they_report(sim: Simulator, api: httpx.Client) -> None:
    sim.inject("job_errored", errored=2)
    sim.inject("job_failed")
    contacts = [{"email": f"u{i}@example.com"} for i in range(5)]
    errored = wait_final(api, upsert(api, contacts).json()["job_id"])
    assert errored["status"] == "errored"
    assert (errored["results"]["errored_count"], errored["results"]["created_count"]) == (2, 3)
    assert set(sim.list_contacts(SENDGRID_TEST_LIST_ID)) == {"u2@example.com", "u3@example.com",
                                                                      "u4@example.com"}
    errors_csv = httpx.get(errored["results"]["errors_url"]).text.splitlines()
    assert len(errors_csv) == 3 and errors_csv[1].startswith("0,u0@example.com,")
    failed = wait_final(api, upsert(api, [{"email": "x@example.com"}]).json()["job_id"])
    assert failed["status"] == "failed" and failed["results"]["errored_count"] == 1
    assert sim.contact("x@example.com") is None
    after = wait_final(api, upsert(api, [{"email": "y@example.com"}]).json()["job_id"])
    assert after["status"] == "completed"  # the faults were used up


def test_update_without_existing_identifier_is_an_errored_contact(sim: Simulator, api: httpx.Client) -> None:
    wait_final(api, upsert(api, [{"email": "ann@example.com", "external_id": "c-1"}]).json()["job_id"])
    job = wait_final(api, upsert(api, [{"email": "ann@example.com", "first_name": "A"},
                                       {"email": "bob@example.com"}]).json()["job_id"])
    assert job["status"] == "errored" and job["results"]["errored_count"] == 1
    assert "first_name" not in sim.contact("ann@example.com")  # type: ignore[operator]


# -- request limits and checks -----------------------------------------------------------------------


def test_more_than_30000_contacts_is_refused(loose_sim: Simulator) -> None:
    with client(loose_sim) as http:
        response = upsert(http, [{"email": f"u{i}@example.com"} for i in range(MAX_CONTACTS_PER_REQUEST + 1)])
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "contacts"
    assert loose_sim.upsert_batches == []


def test_body_over_6_mb_is_413_and_the_connection_stays_usable(loose_sim: Simulator) -> None:
    assert MAX_BODY_BYTES == 6_000_000
    filler = "x" * 40
    contacts = [{"email": f"u{i}@example.com", "address_line_1": filler} for i in range(MAX_BODY_BYTES // 60 + 10)]
    body = json.dumps({"list_ids": [SENDGRID_TEST_LIST_ID], "contacts": contacts[:29_000]}).encode()
    body = body[:-2] + b"," + b",".join(json.dumps(c).encode() for c in contacts[29_000:]) + b"]}"
    assert len(body) > MAX_BODY_BYTES
    with client(loose_sim) as http:
        response = http.put(CONTACTS, content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 413
        assert http.get(LIST).status_code == 200
    assert loose_sim.upsert_batches == []


def test_field_too_long_is_a_whole_request_400(loose_sim: Simulator) -> None:
    with client(loose_sim) as http:
        response = upsert(http, [{"email": "a@example.com"}, {"email": "b@example.com", "first_name": "x" * 51}])
    assert response.status_code == 400
    assert response.json()["errors"] == [{"field": "contacts[1].first_name",
                                          "message": "first_name must be at most 50 characters"}]
    assert loose_sim.upsert_batches == []


def test_invalid_emails_refuse_the_whole_request_naming_each_contact(sim: Simulator,
                                                                     api: httpx.Client) -> None:
    response = upsert(api, [{"email": "ok@example.com"}, {"email": "not-an-email"}, {"email": "ok2@example.com"},
                            {"email": "two@@example.com"}])
    assert response.status_code == 400
    fields = [e["field"] for e in response.json()["errors"]]
    assert fields == ["contacts[1].identifier", "contacts[3].identifier"]
    assert "is not valid" in response.json()["errors"][0]["message"]
    assert sim.upsert_batches == []
    assert sim.wait_for_jobs(1) and sim.contact("ok@example.com") is None


def test_alternate_emails_limit_and_search_by_alternate(sim: Simulator, api: httpx.Client) -> None:
    too_many = [f"alt{i}@example.com" for i in range(6)]
    assert upsert(api, [{"email": "a@example.com", "alternate_emails": too_many}]).status_code == 400
    if sim.validating:  # the OpenAPI file says maxItems 5 too
        assert len(sim.take_violations()) == 1
    wait_final(api, upsert(api, [{"email": "a@example.com", "alternate_emails": ["Alt@example.com"]}])
               .json()["job_id"])
    found = api.post(SEARCH, json={"emails": ["alt@example.com"]}).json()["result"]
    assert found["alt@example.com"]["contact"]["email"] == "a@example.com"


def test_unknown_list_is_404_and_unknown_custom_field_is_400(sim: Simulator, api: httpx.Client) -> None:
    missing = str(uuid.uuid4())
    response = upsert(api, [{"email": "a@example.com"}], list_ids=[missing])
    assert response.status_code == 404
    assert response.json()["errors"][0]["field"] == "list_ids[0]"
    response = upsert(api, [{"email": "a@example.com", "custom_fields": {"e99_T": "x"}}])
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "contacts[0].custom_fields.e99_T"
    number = sim.create_field("orders", "Number")
    response = upsert(api, [{"email": "a@example.com", "custom_fields": {number: "many"}}])
    assert response.status_code == 400
    assert sim.upsert_batches == []


# -- search ----------------------------------------------------------------------------------------


def test_search_emails_found_partial_none_and_invalid(sim: Simulator, api: httpx.Client) -> None:
    wait_final(api, upsert(api, [{"email": "ann@example.com", "first_name": "Ann"}]).json()["job_id"])
    none = api.post(SEARCH, json={"emails": ["nobody@example.com"]})
    assert none.status_code == 404
    partial = api.post(SEARCH, json={"emails": ["ANN@example.com", "nobody@example.com"]})
    assert partial.status_code == 200
    result = partial.json()["result"]
    contact = result["ann@example.com"]["contact"]
    assert contact["first_name"] == "Ann" and uuid.UUID(contact["id"])
    assert result["nobody@example.com"] == {"error": "contact not found"}
    assert api.post(SEARCH, json={"emails": ["bad"]}).status_code == 400
    too_many = api.post(SEARCH, json={"emails": [f"u{i}@example.com" for i in range(101)]})
    assert too_many.status_code == 400
    again = api.post(SEARCH, json={"emails": ["ann@example.com"]}).json()["result"]["ann@example.com"]["contact"]
    assert again["id"] == contact["id"]  # IDs are stable


# -- lists -----------------------------------------------------------------------------------------


def test_lists_create_get_page_and_count(sim: Simulator, api: httpx.Client) -> None:
    created = api.post("/v3/marketing/lists", json={"name": "second"})
    assert created.status_code == 201
    second = created.json()["id"]
    assert uuid.UUID(second) and created.json()["contact_count"] == 0
    api.post("/v3/marketing/lists", json={"name": "third"})
    first_page = api.get("/v3/marketing/lists", params={"page_size": 2}).json()
    assert [x["name"] for x in first_page["result"]] == ["test-list", "second"]
    assert first_page["_metadata"]["count"] == 3
    token = httpx.URL(first_page["_metadata"]["next"]).params["page_token"]
    next_page = api.get("/v3/marketing/lists", params={"page_size": 2, "page_token": token}).json()
    assert [x["name"] for x in next_page["result"]] == ["third"] and "next" not in next_page["_metadata"]
    wait_final(api, upsert(api, [{"email": "a@example.com"}, {"email": "b@example.com"}]).json()["job_id"])
    assert api.get(LIST).json()["contact_count"] == 2
    assert api.get(f"{LIST}/contacts/count").json() == {"contact_count": 2, "billable_count": 2}
    assert api.get(f"/v3/marketing/lists/{uuid.uuid4()}").status_code == 404
    assert api.get(f"/v3/marketing/lists/{uuid.uuid4()}/contacts/count").status_code == 404


def test_list_page_size_out_of_range_is_400(loose_sim: Simulator) -> None:
    with client(loose_sim) as http:
        assert http.get("/v3/marketing/lists", params={"page_size": 0}).status_code == 400
        assert http.get("/v3/marketing/lists", params={"page_size": 1001}).status_code == 400


def test_removing_list_membership_keeps_the_contact(sim: Simulator, api: httpx.Client) -> None:
    wait_final(api, upsert(api, [{"email": "a@example.com"}, {"email": "b@example.com"}]).json()["job_id"])
    ids = {e: r["contact"]["id"] for e, r in
           api.post(SEARCH, json={"emails": ["a@example.com", "b@example.com"]}).json()["result"].items()}
    response = api.delete(f"{LIST}/contacts", params={"contact_ids": ids["a@example.com"]})
    assert response.status_code == 202
    job = wait_final(api, response.json()["job_id"])
    assert job["status"] == "completed" and job["results"]["deleted_count"] == 1
    assert set(sim.list_contacts(SENDGRID_TEST_LIST_ID)) == {"b@example.com"}
    assert sim.contact("a@example.com") is not None  # still in the account
    unknown = api.delete(f"{LIST}/contacts", params={"contact_ids": f"{ids['b@example.com']},{uuid.uuid4()}"})
    assert unknown.status_code == 404
    assert api.delete(f"/v3/marketing/lists/{uuid.uuid4()}/contacts",
                      params={"contact_ids": ids["b@example.com"]}).status_code == 404
    assert set(sim.list_contacts(SENDGRID_TEST_LIST_ID)) == {"b@example.com"}


def test_url_over_8000_characters_is_414(sim: Simulator, api: httpx.Client) -> None:
    ids = ",".join(str(uuid.uuid4()) for _ in range(230))
    response = api.delete(f"{LIST}/contacts", params={"contact_ids": ids})
    assert response.status_code == 414
    assert api.get(LIST).status_code == 200  # the connection survives


# -- field definitions and scopes ------------------------------------------------------------------


def test_field_definitions(api: httpx.Client) -> None:
    created = api.post("/v3/marketing/field_definitions", json={"name": "birthday", "field_type": "Date"})
    assert created.status_code == 200
    assert created.json()["id"].endswith("_D")
    number = api.post("/v3/marketing/field_definitions", json={"name": "orders", "field_type": "Number"}).json()
    assert number["id"].endswith("_N") and number["id"] != created.json()["id"]
    listing = api.get("/v3/marketing/field_definitions").json()
    assert [(f["name"], f["field_type"]) for f in listing["custom_fields"]] == [("birthday", "Date"),
                                                                                ("orders", "Number")]
    assert {"first_name", "email"} <= {f["name"] for f in listing["reserved_fields"]}
    duplicate = api.post("/v3/marketing/field_definitions", json={"name": "orders", "field_type": "Text"})
    assert duplicate.status_code == 400


def test_scopes_lists_what_the_key_may_do(sim: Simulator) -> None:
    sim.set_api_keys({"SG.read": {"marketing.read"}})
    with client(sim, "SG.read") as http:
        assert http.get("/v3/scopes").json() == {"scopes": ["marketing.read"]}


# -- auth ------------------------------------------------------------------------------------------


def test_missing_or_unknown_key_is_401(sim: Simulator) -> None:
    with httpx.Client(base_url=sim.base_url) as http:
        response = http.get(LIST)
        assert response.status_code == 401
        assert response.json() == {"errors": [{"field": None, "message": "authorization required"}]}
        assert http.get(LIST, headers={"Authorization": "Bearer SG.wrong"}).status_code == 401


def test_key_without_marketing_write_is_403(sim: Simulator) -> None:
    sim.set_api_keys({SENDGRID_TEST_KEY: None, "SG.read": {"marketing.read"}, "SG.mail": {"mail.send"}})
    with client(sim, "SG.read") as http:
        assert http.get(LIST).status_code == 200
        response = upsert(http, [{"email": "a@example.com"}])
        assert response.status_code == 403
        assert response.json()["errors"][0]["message"] == "access forbidden"
    with client(sim, "SG.mail") as http:
        assert http.get(LIST).status_code == 403
    assert sim.upsert_batches == []


def test_rotated_key_answers_401_and_the_new_one_works(sim: Simulator, api: httpx.Client) -> None:
    assert api.get(LIST).status_code == 200
    sim.set_api_keys({"SG.rotated": None})
    assert api.get(LIST).status_code == 401
    with client(sim, "SG.rotated") as http:
        assert http.get(LIST).status_code == 200


# -- rate limits -----------------------------------------------------------------------------------


def test_rate_limit_headers_429_and_reset(sim: Simulator, api: httpx.Client) -> None:
    sim.set_rate_limit({"per_second": 2})
    while time.time() % 1 > 0.5:  # start early in a window so the three requests share it
        time.sleep(0.05)
    first, second, third = (api.get(LIST) for _ in range(3))
    other_endpoint = api.get("/v3/marketing/field_definitions")
    assert [r.status_code for r in (first, second, third, other_endpoint)] == [200, 200, 429, 200]
    assert first.headers["X-RateLimit-Limit"] == "2"
    assert [r.headers["X-RateLimit-Remaining"] for r in (first, second, third)] == ["1", "0", "0"]
    reset = third.headers["X-RateLimit-Reset"]
    assert reset.isdigit() and 0 < int(reset) - time.time() <= 1
    assert third.json() == {"errors": [{"field": None, "message": "too many requests"}]}
    time.sleep(max(int(reset) - time.time(), 0) + 0.01)
    assert api.get(LIST).status_code == 200


def test_every_answer_carries_rate_limit_headers(sim: Simulator, api: httpx.Client) -> None:
    responses = [api.get(LIST), api.get(f"/v3/marketing/lists/{uuid.uuid4()}"), upsert(api, [{"email": "bad"}]),
                 httpx.get(f"{sim.base_url}{LIST}")]
    for response in responses:
        assert {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"} <= set(response.headers)


# -- faults ----------------------------------------------------------------------------------------


def test_status_faults_only_hit_the_matching_method_and_path(sim: Simulator, api: httpx.Client) -> None:
    sim.inject("status", status=503, count=2, method="PUT", path=CONTACTS)
    assert api.get(LIST).status_code == 200
    statuses = [upsert(api, [{"email": "a@example.com"}]).status_code for _ in range(3)]
    assert statuses == [503, 503, 202]
    assert len(sim.upsert_batches) == 1
    sim.inject("status", status=500)
    sim.inject("status", status=502)
    assert [api.get(LIST).status_code for _ in range(3)] == [500, 502, 200]


def test_injected_429_carries_a_reset_seconds_ahead(api: httpx.Client, sim: Simulator) -> None:
    sim.inject("rate_limit", seconds=0.25)
    before = time.time()
    response = api.get(LIST)
    assert response.status_code == 429
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert 0.2 <= float(response.headers["X-RateLimit-Reset"]) - before <= 0.35


def test_slow_answer_and_latency(sim: Simulator, api: httpx.Client) -> None:
    sim.inject("slow", seconds=0.3)
    started = time.perf_counter()
    assert api.get(LIST).status_code == 200
    assert time.perf_counter() - started >= 0.3
    with pytest.raises(httpx.ReadTimeout):
        sim.inject("slow", seconds=0.5)
        api.get(LIST, timeout=0.1)
    sim.latency = 0.2
    started = time.perf_counter()
    api.get(LIST)
    assert time.perf_counter() - started >= 0.2


def test_drop_before_body_applies_nothing(sim: Simulator, api: httpx.Client) -> None:
    sim.inject("drop_before_body", method="PUT")
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        upsert(api, [{"email": "a@example.com"}])
    assert sim.upsert_batches == []
    assert sim.request_log[-1].status is None
    assert upsert(api, [{"email": "a@example.com"}]).status_code == 202  # the pool recovers


def test_drop_after_body_accepts_but_the_answer_is_lost(sim: Simulator, api: httpx.Client) -> None:
    sim.inject("drop_after_body", method="PUT")
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        upsert(api, [{"email": "a@example.com"}])
    assert len(sim.upsert_batches) == 1
    assert sim.wait_for_jobs(5)
    assert sim.contact("a@example.com") is not None


# -- inspection and the out-of-process controls ----------------------------------------------------


def test_request_log_and_counts(sim: Simulator, api: httpx.Client) -> None:
    api.get(LIST)
    api.get(f"/v3/marketing/lists/{uuid.uuid4()}")
    upsert(api, [{"email": "a@example.com"}])
    assert sim.request_counts == {"GET /v3/marketing/lists/{id}": 2, "PUT /v3/marketing/contacts": 1}
    assert [(r.method, r.status) for r in sim.request_log] == [("GET", 200), ("GET", 404), ("PUT", 202)]


def test_sim_http_controls(sim: Simulator, api: httpx.Client) -> None:
    admin = httpx.Client(base_url=f"{sim.base_url}/__sim")
    assert admin.post("/faults", json={"kind": "status", "status": 502, "method": "GET"}).status_code == 201
    assert api.get(LIST).status_code == 502
    wait_final(api, upsert(api, [{"email": "a@example.com"}]).json()["job_id"])
    stats = admin.get("/stats").json()
    assert stats["requests"]["PUT /v3/marketing/contacts"] == 1 and stats["contacts"] == 1
    contacts = admin.get("/contacts", params={"list_id": SENDGRID_TEST_LIST_ID}).json()["contacts"]
    assert list(contacts) == ["a@example.com"]
    assert admin.get("/batches").json()["batches"][0]["emails"] == ["a@example.com"]
    assert admin.post("/settings", json={"api_keys": {"SG.new": None}}).status_code == 200
    assert api.get(LIST).status_code == 401
    assert admin.post("/reset").status_code == 200
    assert sim.contact("a@example.com") is None and sim.request_log == []
    assert admin.post("/faults", json={"kind": "nonsense"}).status_code == 400
    admin.close()


def test_keep_alive_with_exact_content_length(sim: Simulator) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=5)
    headers = {"Authorization": f"Bearer {SENDGRID_TEST_KEY}"}
    for _ in range(3):
        connection.request("GET", LIST, headers=headers)
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200 and int(response.headers["Content-Length"]) == len(body)
        assert response.headers.get("Connection") != "close"
    connection.close()


def test_cli_prints_base_url_and_lists_then_serves() -> None:
    list_id = str(uuid.uuid4())
    process = subprocess.Popen(
        [sys.executable, "-m", "sendgrid_simulator", "--port", "0", "--api-key", "SG.cli",
         "--create-list", f"vip={list_id}", "--create-field", "tier:Text"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        first = json.loads(process.stdout.readline())
        assert first["lists"] == {"vip": list_id} and first["fields"]["tier"].endswith("_T")
        response = httpx.get(f"{first['base_url']}/v3/marketing/lists/{list_id}",
                             headers={"Authorization": "Bearer SG.cli"})
        assert response.json()["name"] == "vip"
    finally:
        process.terminate()
        assert process.wait(10) == 0
        if process.stdout is not None:
            process.stdout.close()


# -- OpenAPI validation ----------------------------------------------------------------------------


def test_openapi_violation_is_answered_400_and_recorded(sim: Simulator, api: httpx.Client) -> None:
    require_openapi()
    response = upsert(api, [{"email": "a@example.com"}], list_ids=["not-a-uuid"])
    assert response.status_code == 400
    violations = sim.take_violations()
    assert len(violations) == 1
    assert violations[0].messages == ('body.list_ids[0]: format "uuid"',)
    assert "a@example.com" not in str(violations[0])  # no personal data in the record
    assert sim.upsert_batches == []


def test_fixture_fails_at_teardown_on_a_violation() -> None:
    require_openapi()
    fixture = running_simulator()
    sim = next(fixture)
    with client(sim) as http:
        http.get("/v3/marketing/lists", params={"page_size": 5000})
    with pytest.raises(pytest.fail.Exception, match="page_size"):
        next(fixture)


def test_validation_accepts_a_full_30000_contact_body(sim: Simulator, api: httpx.Client) -> None:
    require_openapi()
    field = sim.create_field("orders", "Number")
    contacts = [{"email": f"u{i}@example.com", "first_name": "F", "custom_fields": {field: i}}
                for i in range(MAX_CONTACTS_PER_REQUEST)]
    response = upsert(api, contacts)
    assert response.status_code == 202, response.text
    assert sim.violations == []


def test_responses_conform_to_the_openapi_files(sim: Simulator, api: httpx.Client) -> None:
    require_openapi()
    from openapi_core import OpenAPI
    from openapi_core.testing import MockRequest, MockResponse

    spec_dir = ROOT.parent / "shared" / "sendgrid"
    specs = {name: OpenAPI.from_file_path(str(spec_dir / f"tsg_mc_{name}_v3.json"))
             for name in ("contacts", "lists", "custom_fields")}
    field = sim.create_field("tier", "Text")
    job_id = upsert(api, [{"email": "a@example.com", "custom_fields": {field: "gold"}}]).json()["job_id"]
    wait_final(api, job_id)
    calls = [
        ("contacts", "GET", f"/v3/marketing/contacts/imports/{job_id}", None),
        ("contacts", "POST", SEARCH, {"emails": ["a@example.com"]}),
        ("lists", "GET", "/v3/marketing/lists", None),
        ("lists", "GET", LIST, None),
        ("lists", "GET", f"{LIST}/contacts/count", None),
        ("custom_fields", "GET", "/v3/marketing/field_definitions", None),
    ]
    for spec, method, path, body in calls:
        response = api.request(method, path, json=body)
        assert response.status_code == 200
        request = MockRequest("https://api.sendgrid.com", method, path,
                              headers={"Authorization": "Bearer x"}, data=json.dumps(body).encode() if body else None)
        specs[spec].validate_response(request, MockResponse(response.content, status_code=200))


def test_validation_without_spec_files_is_refused_clearly(tmp_path: Path) -> None:
    assert not specs_available(tmp_path)
    with pytest.raises(FileNotFoundError, match="OpenAPI files not found"):
        Simulator(validate_openapi=True, spec_dir=tmp_path)
