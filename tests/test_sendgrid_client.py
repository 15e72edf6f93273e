"""SendGridClient against the running simulator: every error class, retries, rate limits, job polling.

No HTTP is faked: the simulator answers over loopback, faults are injected into it, and the API key is read
from the Key Vault stand-in where rotation is tested. Every test also checks that the API key never reaches
an exception or a log record.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from sendgrid_simulator import Simulator
from shared.config.secrets import ApiKeyProvider
from shared.sendgrid.client import RetryPolicy, SendGridClient
from shared.sendgrid.errors import (
    AuthenticationError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RateLimitExhausted,
    SendGridError,
    TransientFailure,
)
from shared.staging.batching import batches
from tests.keyvault_standin import KeyVaultStandIn
from tests.sendgrid_fixture import SENDGRID_TEST_KEY, SENDGRID_TEST_LIST_ID, require_openapi, running_simulator

OLD_KEY = "SG.rotated-out.0123456789abcdef"
NEW_KEY = "SG.rotated-in.fedcba9876543210"
WRONG_KEY = "SG.wrong-key.aaaaaaaaaaaaaaaa"
KEYS = (SENDGRID_TEST_KEY, OLD_KEY, NEW_KEY, WRONG_KEY)
SECRET = "sendgrid-api-key"
CONTACTS = "/v3/marketing/contacts"
PUT = "PUT /v3/marketing/contacts"
FAST = RetryPolicy(backoff_base=0.02, backoff_max=0.1, rate_limit_budget=5.0)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """The team's simulator: validates against SendGrid's OpenAPI files when present, failing the test on a
    request they refuse."""
    yield from running_simulator()


@pytest.fixture(autouse=True)
def _no_key_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    for key in KEYS:
        assert key not in caplog.text


class RecordingSleep:
    """Really sleeps, and notes each delay the client chose."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        time.sleep(seconds)


def client(sim: Simulator, key: str = SENDGRID_TEST_KEY, **kwargs: Any) -> SendGridClient:
    kwargs.setdefault("retry", FAST)
    return SendGridClient(key, base_url=sim.base_url, **kwargs)


def body(*emails: str, list_id: str = SENDGRID_TEST_LIST_ID) -> bytes:
    contacts = [(i, json.dumps({"email": e}).encode()) for i, e in enumerate(emails)]
    return next(batches(contacts, [list_id])).body()


def statuses(sim: Simulator, endpoint: str | None = None) -> list[int | None]:
    return [r.status for r in sim.request_log if endpoint is None or r.endpoint == endpoint]


def assert_clean(exc: BaseException) -> None:
    """No API key in what an operator sees (message, repr, args)."""
    for key in KEYS:
        assert key not in str(exc) and key not in repr(exc) and key not in repr(exc.args)


# -- the happy path --------------------------------------------------------------------------------


def test_upsert_poll_and_read_back(sim: Simulator) -> None:
    tier = sim.create_field("tier", "Text")
    sim.create_field("orders", "Number")
    with client(sim) as api:
        assert SENDGRID_TEST_KEY not in repr(api)
        definitions = api.field_definitions()
        assert {n: (d.id, d.field_type) for n, d in definitions.items()} == {
            "tier": (tier, "Text"), "orders": (sim.fields()["orders"], "Number")}
        job_id = api.upsert_contacts(body("a@example.com", "b@example.com"))
        jobs = api.wait_for_imports([job_id], poll_interval=0.01)
        assert jobs[job_id].status == "completed" and jobs[job_id].created_count == 2
        assert api.get_list(SENDGRID_TEST_LIST_ID)["id"] == SENDGRID_TEST_LIST_ID
        assert api.list_contact_count(SENDGRID_TEST_LIST_ID) == 2
        # per-endpoint counts use path templates, never IDs
        assert set(api.stats.by_endpoint) <= {"GET /v3/marketing/field_definitions", PUT,
                                             "GET /v3/marketing/contacts/imports/{id}", "GET /v3/marketing/lists/{id}",
                                             "GET /v3/marketing/lists/{id}/contacts/count"}
        assert api.stats.requests == len(sim.request_log)
    assert set(sim.list_contacts(SENDGRID_TEST_LIST_ID)) == {"a@example.com", "b@example.com"}


# -- 401 -------------------------------------------------------------------------------------------


def test_bad_key_is_401_not_retried_and_says_what_to_fix(sim: Simulator) -> None:
    with client(sim, WRONG_KEY) as api, pytest.raises(AuthenticationError) as caught:
        api.upsert_contacts(body("a@example.com"))
    assert caught.value.status == 401
    assert "store a valid key" in str(caught.value) and "Key Vault" in str(caught.value)
    assert_clean(caught.value)
    assert statuses(sim) == [401]
    assert sim.contact("a@example.com") is None


def keys_from(vault: KeyVaultStandIn) -> ApiKeyProvider:
    return ApiKeyProvider(vault.url, credential=vault.credential,  # type: ignore[arg-type]
                          client_kwargs=vault.client_kwargs)


def test_401_rereads_a_rotated_key_from_key_vault_once(sim: Simulator, keyvault: KeyVaultStandIn) -> None:
    keyvault.set_secret(SECRET, OLD_KEY)
    keys = keys_from(keyvault)
    sim.set_api_keys({OLD_KEY: None})
    with client(sim, keys.get(SECRET), on_unauthorized=lambda: keys.refresh(SECRET)) as api:
        api.get_list(SENDGRID_TEST_LIST_ID)
        keyvault.set_secret(SECRET, NEW_KEY)  # rotated in the vault ...
        sim.set_api_keys({NEW_KEY: None})  # ... and the old key revoked in SendGrid
        job_id = api.upsert_contacts(body("a@example.com"))
        assert api.wait_for_imports([job_id], poll_interval=0.01)[job_id].status == "completed"
    assert statuses(sim)[:3] == [200, 401, 202]  # then the job polls
    assert len(keyvault.secret_reads()) == 2
    keys.close()


def test_401_with_the_same_key_still_in_the_vault_gives_up_after_one_reread(
        sim: Simulator, keyvault: KeyVaultStandIn) -> None:
    keyvault.set_secret(SECRET, OLD_KEY)
    keys = keys_from(keyvault)
    sim.set_api_keys({NEW_KEY: None})
    with client(sim, keys.get(SECRET), on_unauthorized=lambda: keys.refresh(SECRET)) as api, \
            pytest.raises(AuthenticationError) as caught:
        api.get_list(SENDGRID_TEST_LIST_ID)
    assert statuses(sim) == [401]
    assert len(keyvault.secret_reads()) == 2
    assert_clean(caught.value)
    keys.close()


# -- 403 -------------------------------------------------------------------------------------------


def test_key_without_write_scope_is_403_naming_the_scopes(sim: Simulator) -> None:
    sim.set_api_keys({SENDGRID_TEST_KEY: ["marketing.read"], WRONG_KEY: []})
    with client(sim) as api:
        assert api.get_list(SENDGRID_TEST_LIST_ID)["id"] == SENDGRID_TEST_LIST_ID  # reading is allowed
        with pytest.raises(PermissionDenied) as caught:
            api.upsert_contacts(body("a@example.com"))
    assert caught.value.status == 403
    assert "Marketing full access" in str(caught.value) and "marketing.read/write" in str(caught.value)
    assert_clean(caught.value)
    with client(sim, WRONG_KEY) as api, pytest.raises(PermissionDenied):
        api.field_definitions()
    assert statuses(sim) == [200, 403, 403]


# -- 404 -------------------------------------------------------------------------------------------


def test_unknown_list_is_404_telling_to_check_list_id(sim: Simulator) -> None:
    missing = str(uuid.uuid4())
    with client(sim) as api:
        with pytest.raises(NotFound) as on_get:
            api.get_list(missing)
        with pytest.raises(NotFound) as on_put:
            api.upsert_contacts(body("a@example.com", list_id=missing))
        with pytest.raises(NotFound) as on_job:
            api.get_import(str(uuid.uuid4()))
    for caught in (on_get, on_put):
        assert caught.value.status == 404
        assert "check the destination's list_id" in str(caught.value)
    assert missing in str(on_put.value)  # which list
    assert "list_id" not in str(on_job.value)  # an unknown job is not a configuration problem
    assert statuses(sim) == [404, 404, 404]


# -- 400 -------------------------------------------------------------------------------------------


def test_400_keeps_sendgrid_s_fields_and_leaves_addresses_out_of_the_message(sim: Simulator) -> None:
    payload = {"list_ids": [SENDGRID_TEST_LIST_ID], "contacts": [
        {"email": "ok@example.com"}, {"email": "bad@@example.com"},
        {"email": "ok2@example.com", "custom_fields": {"e99_T": "x"}}]}
    with client(sim) as api, pytest.raises(InvalidRequest) as caught:
        api.upsert_contacts(json.dumps(payload).encode())
    exc = caught.value
    assert exc.status == 400
    assert [e["field"] for e in exc.errors] == ["contacts[1].identifier", "contacts[2].custom_fields.e99_T"]
    assert "bad@@example.com" not in str(exc) and "<email>" in str(exc)
    assert "does not exist" in str(exc)  # SendGrid's reason is kept
    assert statuses(sim) == [400]  # a 400 is not retried
    assert sim.contact("ok@example.com") is None  # the whole request was refused


def test_key_that_cannot_go_into_a_header_fails_without_quoting_it(sim: Simulator) -> None:
    # httpx refuses the header with a message that quotes it whole; the client must not pass that on.
    key = f"{SENDGRID_TEST_KEY}\n"
    with SendGridClient(key, base_url=sim.base_url) as api, pytest.raises(SendGridError) as caught:
        api.get_list(SENDGRID_TEST_LIST_ID)
    text = "".join(traceback.format_exception(caught.value))
    assert "LocalProtocolError" in str(caught.value)
    assert SENDGRID_TEST_KEY not in text
    assert statuses(sim) == []


@pytest.mark.parametrize("key", [f"{SENDGRID_TEST_KEY[:6]}\u00a0{SENDGRID_TEST_KEY[6:]}", f"{SENDGRID_TEST_KEY}é"])
def test_non_ascii_key_fails_as_a_sendgrid_error_without_the_key(sim: Simulator, key: str) -> None:
    with SendGridClient(key, base_url=sim.base_url) as api, pytest.raises(SendGridError) as caught:
        api.get_list(SENDGRID_TEST_LIST_ID)
    assert key not in repr(caught.value.args) and SENDGRID_TEST_KEY[6:] not in str(caught.value)
    assert statuses(sim) == []


@pytest.mark.parametrize(("message", "hidden"), [
    ("email 'john.o'brien@example.com' is not valid", ["brien", "john"]),
    ("first_name 'O'Neil-Zebulon' is too long", ["Neil", "Zebulon"]),
    ('email "ann@example.com" is not valid', ["ann@"]),
    ("first_name 'Mary\nO Hara' contains invalid characters", ["Mary", "Hara"]),  # a value with a line break
    ("last_name ‘Zebulon’ is too long", ["Zebulon"]),
])
def test_values_sendgrid_quotes_never_reach_the_error(message: str, hidden: list[str]) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"errors": [{"field": "contacts[0].identifier", "message": message}]})

    with SendGridClient(SENDGRID_TEST_KEY, transport=httpx.MockTransport(answer), retry=FAST) as api, \
            pytest.raises(InvalidRequest) as caught:
        api.upsert_contacts(body("a@example.com"))
    rule = message.rsplit(" ", 2)[-2:]  # e.g. "too long": what SendGrid objects to stays in the message
    assert str(caught.value).split(" (see errors")[0].rsplit(" ", 2)[-2:] == rule
    assert not any(part in str(caught.value) for part in hidden)


def test_a_non_finite_rate_limit_reset_is_ignored_not_slept() -> None:
    answers = iter([httpx.Response(429, headers={"X-RateLimit-Reset": "nan"}),
                    httpx.Response(200, json={"id": SENDGRID_TEST_LIST_ID, "name": "x", "contact_count": 0})])
    sleep = RecordingSleep()
    with SendGridClient(SENDGRID_TEST_KEY, transport=httpx.MockTransport(lambda _: next(answers)), retry=FAST,
                        sleep=sleep) as api:
        api.get_list(SENDGRID_TEST_LIST_ID)
    assert len(sleep.delays) == 1 and 0 < sleep.delays[0] < 60  # a bounded fallback wait, not NaN


# -- 429 -------------------------------------------------------------------------------------------


def test_429_waits_until_x_ratelimit_reset_then_succeeds(sim: Simulator) -> None:
    sim.inject("rate_limit", method="PUT", seconds=0.5)
    sleep = RecordingSleep()
    with client(sim, sleep=sleep) as api:
        started = time.monotonic()
        api.upsert_contacts(body("a@example.com"))
        elapsed = time.monotonic() - started
        assert api.stats.rate_limited == 1
        assert 0.35 <= api.stats.rate_limit_wait_seconds <= 0.55
    assert elapsed >= 0.35
    assert len(sleep.delays) == 1 and 0.35 <= sleep.delays[0] <= 0.55  # the reset, not a fixed backoff
    assert statuses(sim) == [429, 202]


def test_used_up_window_is_waited_out_before_drawing_a_429(sim: Simulator) -> None:
    sim.set_rate_limit({"limit": 2, "window": 0.5})
    with client(sim, retry=RetryPolicy()) as api:  # the proactive wait is bounded by backoff_max (30 s)
        for _ in range(6):
            api.get_list(SENDGRID_TEST_LIST_ID)
        # Windows are aligned to multiples of 0.5 s: the first may end a moment after it starts, but the
        # second is waited out almost whole (less the time of its two requests).
        assert api.stats.rate_limit_wait_seconds > 0.4
    assert statuses(sim).count(200) == 6
    assert statuses(sim).count(429) <= 1  # a reset rounded to the millisecond may wake the client a hair early


def test_429_past_the_wait_budget_gives_up_with_what_to_do(sim: Simulator) -> None:
    sim.inject("rate_limit", method="PUT", seconds=30)
    with client(sim, retry=RetryPolicy(rate_limit_budget=1.0)) as api, pytest.raises(RateLimitExhausted) as caught:
        started = time.monotonic()
        api.upsert_contacts(body("a@example.com"))
    assert time.monotonic() - started < 5  # did not sleep through a wait it could not afford
    assert caught.value.status == 429 and "run again later" in str(caught.value)
    assert_clean(caught.value)
    assert statuses(sim) == [429]


# -- 5xx, timeouts, dropped connections --------------------------------------------------------------


def test_5xx_is_retried_with_bounded_exponential_backoff(sim: Simulator) -> None:
    sim.inject("status", method="PUT", status=503, count=2)
    sim.inject("status", method="PUT", status=502)
    sleep = RecordingSleep()
    policy = RetryPolicy(backoff_base=0.02, backoff_max=0.05)
    with client(sim, retry=policy, sleep=sleep) as api:
        job_id = api.upsert_contacts(body("a@example.com"))
        assert api.stats.retries == 3
        assert api.wait_for_imports([job_id], poll_interval=0.01)[job_id].status == "completed"
    assert statuses(sim, PUT) == [503, 503, 502, 202]
    ceilings = [0.02, 0.04, 0.05]  # base * 2^(n-1), capped at backoff_max
    assert len(sleep.delays) >= 3
    assert all(0 <= d <= c for d, c in zip(sleep.delays[:3], ceilings, strict=True))
    assert [len(b.emails) for b in sim.upsert_batches] == [1]


def test_5xx_past_the_attempt_budget_is_a_transient_failure(sim: Simulator) -> None:
    sim.inject("status", status=500, count=10)
    with client(sim, retry=RetryPolicy(max_attempts=3, backoff_base=0.01)) as api, \
            pytest.raises(TransientFailure) as caught:
        api.get_list(SENDGRID_TEST_LIST_ID)
    assert caught.value.status == 500
    assert "HTTP 500 after 3 attempts" in str(caught.value) and "try again later" in str(caught.value)
    assert statuses(sim) == [500, 500, 500]


def test_timeouts_are_retried(sim: Simulator) -> None:
    sim.inject("slow", path="/v3/marketing/field_definitions", seconds=0.8)
    with client(sim, timeout=0.3) as api:
        assert api.field_definitions() == {}
        assert api.stats.retries == 1
    assert sim.request_counts["GET /v3/marketing/field_definitions"] == 2


def test_timeouts_past_the_attempt_budget_name_the_cause(sim: Simulator) -> None:
    sim.inject("slow", method="GET", seconds=0.6, count=2)
    with client(sim, timeout=0.2, retry=RetryPolicy(max_attempts=2, backoff_base=0.01)) as api, \
            pytest.raises(TransientFailure) as caught:
        api.get_list(SENDGRID_TEST_LIST_ID)
    assert "Timeout after 2 attempts" in str(caught.value) and "did not answer" in str(caught.value)
    assert_clean(caught.value)


def test_dropped_connections_are_retried_and_a_lost_answer_does_not_lose_the_batch(sim: Simulator) -> None:
    sim.inject("drop_before_body", method="PUT")
    sim.inject("drop_after_body", method="PUT")
    with client(sim) as api:
        job_id = api.upsert_contacts(body("a@example.com", "b@example.com"))
        assert api.wait_for_imports([job_id], poll_interval=0.01)[job_id].status == "completed"
    assert statuses(sim, PUT) == [None, None, 202]
    assert sim.wait_for_jobs(5)
    # the answer to the second PUT was lost after SendGrid accepted it: sent twice, stored once
    assert [len(b.emails) for b in sim.upsert_batches] == [2, 2]
    assert set(sim.list_contacts(SENDGRID_TEST_LIST_ID)) == {"a@example.com", "b@example.com"}


# -- import jobs -------------------------------------------------------------------------------------


def test_completed_errored_and_failed_jobs_are_final_with_their_counts(sim: Simulator) -> None:
    sim.inject("job_errored", errored=2)
    sim.inject("job_failed")
    with client(sim) as api:
        errored = api.upsert_contacts(body(*(f"e{i}@example.com" for i in range(5))))
        failed = api.upsert_contacts(body("f@example.com"))
        completed = api.upsert_contacts(body("c@example.com"))
        jobs = api.wait_for_imports([errored, failed, completed], poll_interval=0.01)
    assert {job_id: job.status for job_id, job in jobs.items()} == {
        errored: "errored", failed: "failed", completed: "completed"}
    assert all(job.is_final for job in jobs.values())
    assert (jobs[errored].created_count, jobs[errored].errored_count, jobs[errored].requested_count) == (3, 2, 5)
    assert jobs[errored].errors_url is not None
    assert (jobs[failed].created_count, jobs[failed].errored_count) == (0, 1)
    assert (jobs[completed].created_count, jobs[completed].errored_count) == (1, 0)


def test_polling_backs_off_and_stops_at_the_timeout(sim: Simulator) -> None:
    sim.job_delay = 2.0
    sleep = RecordingSleep()
    with client(sim, sleep=sleep) as api:
        job_id = api.upsert_contacts(body("a@example.com"))
        started = time.monotonic()
        jobs = api.wait_for_imports([job_id], poll_interval=0.05, max_interval=0.2, timeout=0.5)
    assert time.monotonic() - started < 1.5
    assert jobs[job_id].status == "pending" and not jobs[job_id].is_final
    assert sleep.delays[:3] == [0.05, 0.1, 0.2] and max(sleep.delays) == 0.2


def test_no_jobs_means_no_polling(sim: Simulator) -> None:
    with client(sim) as api:
        assert api.wait_for_imports([]) == {}
    assert sim.request_log == []


# -- search and list removal (mirror mode) ---------------------------------------------------------------


def test_search_is_chunked_by_100_and_a_404_means_none_found(sim: Simulator) -> None:
    emails = [f"s{i}@example.com" for i in range(250)]
    with client(sim) as api:
        job_id = api.upsert_contacts(body(*emails[:120]))
        api.wait_for_imports([job_id], poll_interval=0.01)
        found = api.search_emails([e.upper() for e in emails])
        assert api.search_emails(["nobody@example.com"]) == {}
    assert set(found) == set(emails[:120])
    assert statuses(sim, "POST /v3/marketing/contacts/search/emails") == [200, 200, 404, 404]


def test_list_removal_is_chunked_below_sendgrid_s_url_limit(sim: Simulator) -> None:
    emails = [f"r{i}@example.com" for i in range(300)]
    with client(sim) as api:
        api.wait_for_imports([api.upsert_contacts(body(*emails))], poll_interval=0.01)
        ids = api.search_emails(emails)
        jobs = api.remove_from_list(SENDGRID_TEST_LIST_ID, ids.values())
        assert len(jobs) == 2  # 300 IDs of 36 characters do not fit one URL
        assert all(j.status == "completed" for j in api.wait_for_imports(jobs, poll_interval=0.01).values())
    assert statuses(sim, "DELETE /v3/marketing/lists/{id}/contacts") == [202, 202]
    assert sim.list_contacts(SENDGRID_TEST_LIST_ID) == {}
    assert len(sim.contacts()) == 300  # the contacts stay in the account


def test_search_leaves_out_addresses_sendgrid_s_search_refuses_and_finds_the_rest(sim: Simulator) -> None:
    emails = [f"s{i}@example.com" for i in range(150)]
    long_one = "x" * 90 + "@example.com"  # 102 characters: upserts take it, the search does not
    refused: list[str] = []
    with client(sim) as api:
        api.wait_for_imports([api.upsert_contacts(body(*emails, long_one))], poll_interval=0.01)
        found = api.search_emails([*emails[:60], long_one, "bad@@example.com", *emails[60:]], refused)
    assert set(found) == set(emails)  # one refused address no longer costs the whole chunk
    assert sorted(refused) == sorted([long_one, "bad@@example.com"])  # neither found nor known to be absent
    assert statuses(sim, "POST /v3/marketing/contacts/search/emails") == [400, 200, 200]
    assert sim.take_violations() == []  # the over-long address was never sent


def test_removal_goes_on_when_a_contact_was_deleted_meanwhile(sim: Simulator) -> None:
    emails = [f"d{i}@example.com" for i in range(300)]
    with client(sim) as api:
        api.wait_for_imports([api.upsert_contacts(body(*emails))], poll_interval=0.01)
        ids = api.search_emails(emails)
        assert sim.delete_contact(emails[7])  # deleted in SendGrid between the search and the removal
        removed: list[str] = []
        unknown: list[str] = []
        api.wait_for_imports(api.remove_from_list(SENDGRID_TEST_LIST_ID, ids.values(), removed, unknown),
                             poll_interval=0.01)
        assert unknown == [ids[emails[7]]]
        assert set(removed) == set(ids.values()) - {ids[emails[7]]}
        gone = "0f0e0d0c-0b0a-4999-8888-777766665555"
        with pytest.raises(NotFound, match="check the destination's list_id"):
            api.remove_from_list(gone, list(ids.values())[:3])  # a missing list is still an error
    assert sim.list_contacts(SENDGRID_TEST_LIST_ID) == {}
    assert statuses(sim, "DELETE /v3/marketing/lists/{id}/contacts").count(404) == 2  # one per call above


def test_only_an_explicit_not_found_counts_as_absent_and_shared_contacts_are_removed_once() -> None:
    """A search entry with another error, or none at all, is not proof the contact is gone (it would leave
    the list's member behind for good); an address found only as another contact's alternate email is not
    that contact (who may still be in the segment), so a contact is removed only under its own email."""
    deletes: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json={"result": {
                "a@example.com": {"contact": {"id": "id-a", "email": "A@example.com"}},
                "alt@example.com": {"contact": {"id": "id-a", "email": "a@example.com"}},
                "gone@example.com": {"error": "contact not found"},
                "busy@example.com": {"error": "temporarily unavailable"}}})  # and silent@ has no entry
        deletes.append(request.url.params["contact_ids"])
        return httpx.Response(202, json={"job_id": "j1"})

    refused: list[str] = []
    removed: list[str] = []
    with SendGridClient(SENDGRID_TEST_KEY, transport=httpx.MockTransport(answer), retry=FAST) as api:
        found = api.search_emails(["a@example.com", "alt@example.com", "gone@example.com", "busy@example.com",
                                   "silent@example.com"], refused)
        api.remove_from_list(SENDGRID_TEST_LIST_ID, found.values(), removed)
    assert found == {"a@example.com": "id-a"}
    assert refused == ["busy@example.com", "silent@example.com"]
    assert deletes == ["id-a"] and removed == ["id-a"]


def test_errors_that_name_no_item_fail_the_search_and_the_removal_in_one_request() -> None:
    """A 400 or 404 that names no address or ID is not split item by item (a request explosion that would
    also mistake every leaver for gone): it fails the step, and the leavers stay for the next refresh."""
    calls: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        if request.method == "GET":
            return httpx.Response(200, json={"id": SENDGRID_TEST_LIST_ID, "name": "x", "contact_count": 1})
        status = 400 if request.method == "POST" else 404
        return httpx.Response(status, json={"errors": [{"field": None, "message": "something went wrong"}]})

    with SendGridClient(SENDGRID_TEST_KEY, transport=httpx.MockTransport(answer), retry=FAST) as api:
        with pytest.raises(InvalidRequest):
            api.search_emails([f"e{i}@example.com" for i in range(100)])
        with pytest.raises(NotFound):
            api.remove_from_list(SENDGRID_TEST_LIST_ID, [f"id-{i}" for i in range(100)])
    assert calls == ["POST", "DELETE", "GET"]


def test_every_endpoint_the_client_uses_conforms_to_sendgrid_s_openapi_files(sim: Simulator) -> None:
    require_openapi()  # the fixture validates whenever the team kit's files exist; here they must
    assert sim.validating
    with client(sim) as api:
        api.field_definitions()
        job_id = api.upsert_contacts(body("a@example.com", "b@example.com"))
        api.wait_for_imports([job_id], poll_interval=0.01)
        api.get_list(SENDGRID_TEST_LIST_ID)
        api.list_contact_count(SENDGRID_TEST_LIST_ID)
        ids = api.search_emails(["a@example.com", "b@example.com"])
        api.wait_for_imports(api.remove_from_list(SENDGRID_TEST_LIST_ID, ids.values()), poll_interval=0.01)
    assert len(sim.request_counts) == 7 and all(s is not None and s < 300 for s in statuses(sim))
    assert sim.take_violations() == []


# -- the key never leaks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("provoke", [
    lambda sim: sim.set_api_keys({}),
    lambda sim: sim.set_api_keys({SENDGRID_TEST_KEY: []}),
    lambda sim: sim.inject("status", status=500, count=10),
    lambda sim: sim.inject("rate_limit", seconds=60),
    lambda sim: sim.inject("slow", seconds=0.5, count=10),
], ids=["401", "403", "5xx", "429", "timeout"])
def test_no_error_message_contains_the_api_key(sim: Simulator, provoke: Callable[[Simulator], Any]) -> None:
    provoke(sim)
    with client(sim, timeout=0.2, retry=RetryPolicy(max_attempts=2, backoff_base=0.01, rate_limit_budget=0.5)) \
            as api, pytest.raises(SendGridError) as caught:
        api.upsert_contacts(body("a@example.com"))
    assert_clean(caught.value)
    assert caught.value.hint  # and it says what to do


def test_tls_is_verified_with_the_context_every_client_shares(keyvault: KeyVaultStandIn) -> None:
    # The process-wide TLS context must still verify: a server whose certificate no trusted CA signed (the
    # Key Vault stand-in's own test CA) is refused, by the first client and by the next, at once (no retry:
    # waiting cannot make a certificate trusted) and with what to check.
    for _ in range(2):
        with SendGridClient(SENDGRID_TEST_KEY, base_url=keyvault.url, retry=FAST) as client, \
                pytest.raises(SendGridError) as caught:
            client.field_definitions()
        assert not isinstance(caught.value, TransientFailure) and client.stats.requests == 1
        message = str(caught.value)
        assert "TLS certificate of 127.0.0.1 was refused (unable to get local issuer certificate)" in message
        assert "SSL_CERT_FILE" in message and SENDGRID_TEST_KEY not in message


@pytest.mark.parametrize("answer", [b"<html>proxy page</html>", b"[]", b'{"id": "x"}'], ids=["html", "array", "no-job"])
def test_a_success_answer_that_is_not_what_sendgrid_sends_is_a_sendgrid_error(answer: bytes) -> None:
    # A proxy (or a wrong base URL) answering 2xx with something else: a SendGridError the engine reports,
    # never a bare ValueError/KeyError that would escape the run and lose its report.
    transport = httpx.MockTransport(lambda request: httpx.Response(202, content=answer))
    with SendGridClient(SENDGRID_TEST_KEY, transport=transport, retry=FAST) as client:
        with pytest.raises(SendGridError) as upsert:
            client.upsert_contacts(b'{"list_ids":[],"contacts":[{"email":"a@example.com"}]}')
        assert "PUT /v3/marketing/contacts" in str(upsert.value)
        if answer != b'{"id": "x"}':
            with pytest.raises(SendGridError, match="not a JSON object"):
                client.get_import("job-1")


class _BodyLostOnce(httpx.SyncByteStream):
    """An answer whose body is cut off while it is read, the first time only."""

    def __init__(self, cut: list[bool]) -> None:
        self.cut = cut

    def __iter__(self) -> Iterator[bytes]:
        if self.cut and self.cut.pop():
            raise httpx.ReadError("connection reset while reading the answer")
        yield b'{"job_id": "job-after-retry"}'


def test_an_answer_lost_while_its_body_is_read_is_retried_and_counted() -> None:
    """The retries cover reading the answer too: a PUT whose 202 was cut off is sent again, and said so."""
    cut = [True]

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(202, stream=_BodyLostOnce(cut))

    with SendGridClient(SENDGRID_TEST_KEY, transport=httpx.MockTransport(answer), retry=FAST) as api:
        assert api.upsert_contacts(b'{"contacts":[]}') == "job-after-retry"
        assert (api.stats.requests, api.stats.retries, api.stats.unconfirmed_resends) == (2, 1, 1)


def test_an_attempt_the_lease_guard_refuses_is_neither_sent_nor_counted() -> None:
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(202, json={"job_id": "j"})

    def refuse(worst_case: float) -> None:
        assert 0 < worst_case <= 30.0  # each phase cut to its share of the 30 s budget
        raise RuntimeError("lease lost")

    with SendGridClient(SENDGRID_TEST_KEY, transport=httpx.MockTransport(answer), retry=FAST) as api:
        with api.guarded(refuse, 30.0), pytest.raises(RuntimeError):
            api.upsert_contacts(b'{"contacts":[]}')
        assert sent == [] and api.stats.requests == 0
        assert api.get_list(SENDGRID_TEST_LIST_ID) == {"job_id": "j"}  # a read is never guarded
        assert len(sent) == 1


def test_the_client_honours_the_environments_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.sendgrid.transport import environment_proxy

    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert environment_proxy("https://api.sendgrid.com") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert environment_proxy("https://api.sendgrid.com") == "http://proxy.internal:3128"
    monkeypatch.setenv("NO_PROXY", "api.sendgrid.com")
    assert environment_proxy("https://api.sendgrid.com") is None
