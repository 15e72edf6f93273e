"""Forgetting a destination, the SendGrid deletion endpoint, and the do-not-export set's pieces (issue 14)."""

from __future__ import annotations

import hmac
import json
import os

import pytest

from sendgrid_simulator import Simulator
from shared.cli import main as cli_main
from shared.privacy.donotexport import DoNotExport, DoNotExportStore
from shared.privacy.scrub import mentions
from shared.sendgrid.client import SendGridClient
from shared.sendgrid.errors import InvalidRequest
from shared.sendgrid.id_urls import MAX_DELETE_URL_CHARS
from tests.sendgrid_fixture import SENDGRID_TEST_KEY
from tests.test_functions import (
    NEWS_LIST,
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


def state_blobs(env: Env, name: str) -> list[str]:
    return sorted(b.name for b in env.runs.list_blobs(name_starts_with=f"state/{name}/"))


def test_forget_destination_removes_its_state_and_with_the_flag_its_list_members_not_contacts(
        env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.install()
    rows = [person(n, "vip") for n in range(3)] + [["CI-9", "not-an-email", "A", "B", "France"]]
    fire_blob_trigger(env.segments.container_name, env.upload("vip/a.csv", csv_bytes(rows)))
    assert len(env.sim.list_contacts(VIP_LIST)) == 3 and state_blobs(env, "vip-customers")
    assert list(env.runs.list_blobs(name_starts_with="rejects/vip-customers-"))
    assert cli_main(["forget-destination", "vip-customers", "--remove-from-list"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["removed_from_list"] == 3 and counts["rejects_files_deleted"] == 1
    assert counts["receipts_deleted"] == 1
    assert env.sim.wait_for_jobs(5)
    assert env.sim.list_contacts(VIP_LIST) == {}
    assert all(env.sim.contact(row[1]) is not None for row in rows[:3])  # never deleted from the account
    assert state_blobs(env, "vip-customers") == []
    assert not list(env.runs.list_blobs(name_starts_with="rejects/vip-customers-"))
    assert env.reports()  # reports stay (counts only)
    # Its next file is a first export again: everyone is sent.
    fire_blob_trigger(env.segments.container_name, env.upload("vip/b.csv", csv_bytes(rows[:3])))
    assert len(env.sim.list_contacts(VIP_LIST)) == 3


def test_a_destination_no_longer_configured_can_be_forgotten_but_not_emptied(
        env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.install()
    fire_blob_trigger(env.segments.container_name, env.upload("news/a.csv", csv_bytes([person(1, "news")])))
    assert state_blobs(env, "newsletter")
    env.set_destinations([d for d in json.loads(os.environ["DESTINATIONS_JSON"])["destinations"]
                          if d["name"] != "newsletter"])
    assert cli_main(["forget-destination", "newsletter", "--remove-from-list"]) == 2
    assert "unknown destination" in capsys.readouterr().out
    assert cli_main(["forget-destination", "newsletter"]) == 0
    assert state_blobs(env, "newsletter") == []


def test_forgetting_a_destination_leaves_one_whose_name_starts_with_its_name_alone(
        env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """Rejects files and receipts are found by run ID: `vip`'s are not `vip-customers`'s, and a destination
    no longer configured loses its receipts too."""
    env.set_destinations([destination("vip-customers", VIP_LIST, "vip/"), destination("vip", NEWS_LIST, "news/")])
    env.install()
    bad = ["CI-9", "not-an-email", "A", "B", "France"]
    fire_blob_trigger(env.segments.container_name, env.upload("vip/a.csv", csv_bytes([person(1, "vip"), bad])))
    fire_blob_trigger(env.segments.container_name, env.upload("news/a.csv", csv_bytes([person(1, "news"), bad])))
    receipts = sorted(b.name for b in env.runs.list_blobs(name_starts_with="receipts/"))
    kept_rejects = [b.name for b in env.runs.list_blobs(name_starts_with="rejects/vip-customers-")]
    assert len(receipts) == 2 and len(kept_rejects) == 1
    env.set_destinations([destination("vip-customers", VIP_LIST, "vip/")])
    assert cli_main(["forget-destination", "vip"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert (counts["receipts_deleted"], counts["rejects_files_deleted"]) == (1, 1)
    assert [b.name for b in env.runs.list_blobs(name_starts_with="rejects/")] == kept_rejects
    assert len(list(env.runs.list_blobs(name_starts_with="receipts/"))) == 1
    assert state_blobs(env, "vip") == [] and state_blobs(env, "vip-customers")


def test_deleting_contacts_is_chunked_to_the_url_limit_and_validated(sendgrid_sim: Simulator) -> None:
    emails = [f"d{i}@example.com" for i in range(400)]
    with SendGridClient(SENDGRID_TEST_KEY, base_url=sendgrid_sim.base_url) as client:
        job = client.upsert_contacts(json.dumps({"contacts": [{"email": e} for e in emails]}).encode())
        client.wait_for_imports([job], poll_interval=0.01)
        everyone = [sendgrid_sim.store.contact_id(key) for key in sendgrid_sim.store.contacts]
        jobs = client.delete_contacts(everyone)
        assert len(jobs) > 1  # 400 UUIDs do not fit one URL
        assert sendgrid_sim.wait_for_jobs(5)
    deletes = [r for r in sendgrid_sim.request_log if r.endpoint == "DELETE /v3/marketing/contacts"]
    assert len(deletes) == len(jobs) and all(len(r.path) <= MAX_DELETE_URL_CHARS for r in deletes)
    assert sendgrid_sim.contacts() == {}
    with SendGridClient(SENDGRID_TEST_KEY, base_url=sendgrid_sim.base_url) as client, \
            pytest.raises(InvalidRequest):  # neither ids nor delete_all_contacts: SendGrid's 400
        client._request("DELETE", "/v3/marketing/contacts")


def test_the_do_not_export_set_holds_digests_only_and_costs_nothing_when_empty(env: Env) -> None:
    env.runs.create_container()
    store = DoNotExportStore(env.runs)
    assert not store.load(lambda: b"key") and len(store.load(lambda: b"key")) == 0
    assert store.add(b"key", ["a@example.com", "b@example.com"]) == 2
    assert store.add(b"key", ["a@example.com"]) == 0
    stored = env.runs.download_blob("privacy/do-not-export.txt").readall().decode()
    assert "example.com" not in stored
    assert hmac.digest(b"key", b"a@example.com", "sha256").hex() in stored
    loaded = store.load(lambda: b"key")
    assert "a@example.com" in loaded and "c@example.com" not in loaded and None not in loaded
    assert "a@example.com" not in store.load(lambda: b"another key")  # the digest needs the key
    assert store.remove(b"key", ["a@example.com"]) == 1 and "a@example.com" not in store.load(lambda: b"key")
    assert not DoNotExport.empty() and "key" not in repr(loaded)


@pytest.mark.parametrize(("value", "held"), [
    ("erased@example.com", True), ("  ERASED@example.com ", True), ("Erased <erased@example.com>", True),
    ("'=erased@example.com", True), ("x;erased@example.com;y", True), ("not-erased@example.com", False),
    ("erased@example.community", False), ("", False),
])
def test_a_rejected_value_mentions_an_erased_address(value: str, held: bool) -> None:
    assert mentions(value, {"erased@example.com"}) is held
