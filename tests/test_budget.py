"""The contact budget (max_billable_contacts, issue 14): GET /v3/marketing/contacts/count's billable_count plus
the run's contacts not in the destination's snapshot, against the limit; refused over it, warned above 90%."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from sendgrid_simulator import Simulator
from sendgrid_simulator.openapi import SERVER_URL, SPEC_DIR
from sendgrid_simulator.openapi import _load as openapi_spec
from shared.sendgrid.client import SendGridClient
from tests.sendgrid_fixture import SENDGRID_TEST_KEY, require_openapi
from tests.test_functions import (
    DESTINATIONS,
    VIP_LIST,
    Env,
    csv_bytes,
    destination,
    env,
    fire_blob_trigger,
    person,
    sim,
)

__all__ = ["env", "sim"]


def run(env: Env, name: str, rows: list[list[str]]) -> dict[str, Any]:
    before = set(env.report_names())
    fire_blob_trigger(env.segments.container_name, env.upload(name, csv_bytes(rows)))
    (new,) = [n for n in env.report_names() if n not in before]
    return env.report(new.removeprefix("reports/").removesuffix(".json"))


def test_the_count_endpoint_bills_uploads_and_never_gives_them_back(sendgrid_sim: Simulator) -> None:
    with SendGridClient(SENDGRID_TEST_KEY, base_url=sendgrid_sim.base_url) as client:
        assert (client.contact_count().contact_count, client.contact_count().billable_count) == (0, 0)
        client.wait_for_imports([client.upsert_contacts(json.dumps(
            {"contacts": [{"email": f"b{i}@example.com"} for i in range(3)]}).encode())], poll_interval=0.01)
        ids = client.search_emails(["b0@example.com"])
        client.delete_contacts(ids.values())
        assert sendgrid_sim.wait_for_jobs(5)
        count = client.contact_count()
        assert (count.contact_count, count.billable_count) == (2, 3)


def test_the_simulators_count_answer_is_the_one_sendgrids_openapi_file_describes(sendgrid_sim: Simulator) -> None:
    require_openapi()
    from openapi_core.testing import MockRequest, MockResponse
    from openapi_core.validation.response.exceptions import ResponseValidationError

    spec = openapi_spec(SPEC_DIR, "tsg_mc_contacts_v3.json")
    path = "/v3/marketing/contacts/count"
    sendgrid_sim.store.billable_count = 7
    answer = httpx.get(sendgrid_sim.base_url + path, headers={"Authorization": f"Bearer {SENDGRID_TEST_KEY}"})
    assert answer.status_code == 200 and answer.json() == {"contact_count": 0, "billable_count": 7}
    spec.validate_response(MockRequest(SERVER_URL, "GET", path), MockResponse(answer.content))
    with pytest.raises(ResponseValidationError):  # the check itself can fail: a negative count is not one
        spec.validate_response(MockRequest(SERVER_URL, "GET", path),
                               MockResponse(json.dumps({"contact_count": 0, "billable_count": -1}).encode()))


@pytest.mark.parametrize(("billable", "status", "warned"), [
    (5, "refused", False),  # 5 + 6 = 11 > 10
    (4, "succeeded", True),  # 10 of 10: allowed, above 90%
    (3, "succeeded", False),  # 9 of 10: not above 90%
])
def test_a_destination_budget_refuses_and_warns_at_the_right_numbers(env: Env, billable: int, status: str,
                                                                     warned: bool) -> None:
    env.set_destinations([destination("vip-customers", VIP_LIST, "vip/", max_billable_contacts=10)])
    env.install()
    env.sim.store.billable_count = billable
    report = run(env, "vip/a.csv", [person(n, "vip") for n in range(6)])
    assert report["status"] == status and report["balanced"]
    assert report["budget"] == {"max_billable_contacts": 10, "billable_count": billable, "new_contacts": 6,
                                "billable_after_run": billable + 6}
    assert any("contact budget" in note for note in report["notes"]) is warned
    if status == "refused":
        assert env.puts() == 0 and report["not_sent"] == 6
        assert f"holds {billable} billable contacts" in report["error"]
        assert "max_billable_contacts 10" in report["error"]
    else:
        assert len(env.sim.list_contacts(VIP_LIST)) == 6


def test_contacts_in_the_snapshot_do_not_count_and_the_app_wide_limit_applies(env: Env) -> None:
    env.monkeypatch.setenv("DESTINATIONS_JSON", json.dumps(
        {"destinations": DESTINATIONS[:1], "max_billable_contacts": 8}))
    env.install()
    first = run(env, "vip/a.csv", [person(n, "vip") for n in range(6)])
    assert first["status"] == "succeeded" and first["budget"]["new_contacts"] == 6
    second = run(env, "vip/b.csv", [person(n, "vip") for n in range(8)])  # 6 known, 2 new: 6 + 2 = 8
    assert second["status"] == "succeeded"
    assert second["budget"] == {"max_billable_contacts": 8, "billable_count": 6, "new_contacts": 2,
                                "billable_after_run": 8}
    third = run(env, "vip/c.csv", [person(n, "vip") for n in range(9)])  # 8 + 1 > 8
    assert third["status"] == "refused" and third["budget"]["new_contacts"] == 1
    assert len(env.sim.list_contacts(VIP_LIST)) == 8


def test_a_budget_that_cannot_be_read_fails_the_run_before_anything_is_sent(env: Env) -> None:
    env.set_destinations([destination("vip-customers", VIP_LIST, "vip/", max_billable_contacts=10)])
    env.install()
    env.sim.inject("status", status=403, method="GET", path="/v3/marketing/contacts/count")
    report = run(env, "vip/a.csv", [person(n, "vip") for n in range(3)])
    assert (report["status"], report["balanced"], report["not_sent"], env.puts()) == ("failed", True, 3, 0)
    assert "contact budget could not be checked" in report["error"] and report.get("budget") is None
