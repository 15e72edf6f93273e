"""Contact IDs in a DELETE's query string (shared.sendgrid.id_urls): plain IDs as the request's whole URL with
literal commas, anything else encoded through `params`; the same IDs reach SendGrid either way."""

from __future__ import annotations

import json

import httpx

from sendgrid_simulator import Simulator
from shared.sendgrid.client import SendGridClient
from shared.sendgrid.id_urls import MAX_DELETE_URL_CHARS, ids_target, url_chunks
from shared.sendgrid.models import RetryPolicy
from tests.sendgrid_fixture import SENDGRID_TEST_KEY, SENDGRID_TEST_LIST_ID

FAST = RetryPolicy(max_attempts=1)


def test_a_removal_names_its_uuids_with_literal_commas_and_the_simulator_takes_them(sendgrid_sim: Simulator) -> None:
    """The fixture's simulator checks every request against SendGrid's OpenAPI description."""
    emails = [f"r{i}@example.com" for i in range(300)]
    with SendGridClient(SENDGRID_TEST_KEY, base_url=sendgrid_sim.base_url) as client:
        body = {"list_ids": [SENDGRID_TEST_LIST_ID], "contacts": [{"email": e} for e in emails]}
        client.wait_for_imports([client.upsert_contacts(json.dumps(body).encode())], poll_interval=0.01)
        ids = client.search_emails(emails)
        removed: list[str] = []
        jobs = client.remove_from_list(SENDGRID_TEST_LIST_ID, ids.values(), removed)
    assert len(jobs) == 2 and sorted(removed) == sorted(ids.values())  # 300 UUIDs: two URLs
    deletes = [r for r in sendgrid_sim.request_log if r.endpoint == "DELETE /v3/marketing/lists/{id}/contacts"]
    assert len(deletes) == 2 and all(len(r.path) <= MAX_DELETE_URL_CHARS for r in deletes)
    assert all("%2C" not in r.path and r.path.count(",") > 100 for r in deletes)
    assert sendgrid_sim.wait_for_jobs(5) and sendgrid_sim.list_contacts(SENDGRID_TEST_LIST_ID) == {}


def test_ids_that_are_not_plain_are_encoded_and_arrive_as_they_are() -> None:
    seen: list[tuple[str, str, bytes]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.url.params.get("contact_ids", request.url.params.get("ids", "")),
                     request.url.query))
        return httpx.Response(202, json={"job_id": "j"})

    odd = ["a b", "c&d", "ü", "g#h", "%41"]
    plain = ["0f0e0d0c-0b0a-4999-8888-777766665555", "id_1.x~"]
    with SendGridClient(SENDGRID_TEST_KEY, base_url="https://sendgrid.example/relay/", retry=FAST,
                        transport=httpx.MockTransport(answer)) as api:
        api.remove_from_list("L", [odd[0]])
        api.remove_from_list("L", plain)
        api.delete_contacts(plain)
    assert seen[0][:2] == ("/relay/v3/marketing/lists/L/contacts", "a b") and b" " not in seen[0][2]
    assert seen[1] == ("/relay/v3/marketing/lists/L/contacts", ",".join(plain),
                       f"contact_ids={','.join(plain)}".encode())
    assert seen[2] == ("/relay/v3/marketing/contacts", ",".join(plain), f"ids={','.join(plain)}".encode())
    for name in odd:
        url, params = ids_target("https://sendgrid.example", "/v3/x", "contact_ids", [plain[0], name])
        assert (url, params) == ("/v3/x", {"contact_ids": f"{plain[0]},{name}"})


def test_chunks_count_each_comma_as_its_encoding_whatever_the_ids() -> None:
    ids = [f"{i:036d}" for i in range(1000)]
    chunks = list(url_chunks("/v3/marketing/lists/L/contacts", ids))
    assert [i for chunk in chunks for i in chunk] == ids
    for chunk in chunks:
        url, params = ids_target("", "/v3/marketing/lists/L/contacts", "contact_ids", chunk)
        encoded = len("/v3/marketing/lists/L/contacts?contact_ids=") + len(",".join(chunk).replace(",", "%2C"))
        assert params is None and len(url) < encoded <= MAX_DELETE_URL_CHARS
