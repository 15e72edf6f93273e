"""EU accounts (issue 14): a destination's `region` picks SendGrid's base URL. Two simulators stand for the
global API and the EU one (SENDGRID_BASE_URL and SENDGRID_EU_BASE_URL, the overrides tests use), and record
which destination's requests reached which."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sendgrid_simulator import Simulator
from shared.config.settings import AppSettings
from tests.sendgrid_fixture import running_simulator
from tests.test_functions import (
    API_KEY,
    NEWS_LIST,
    VIP_LIST,
    Env,
    csv_bytes,
    destination,
    env,
    fire_blob_trigger,
    http,
    person,
    sim,
)

__all__ = ["env", "sim"]


@pytest.fixture
def eu_sim() -> Iterator[Simulator]:
    for simulator in running_simulator():
        simulator.set_api_keys({API_KEY: None})
        simulator.create_list("news", list_id=NEWS_LIST)
        yield simulator


def test_eu_and_global_destinations_run_side_by_side_each_on_its_base_url(env: Env, eu_sim: Simulator) -> None:
    env.monkeypatch.setenv("SENDGRID_EU_BASE_URL", eu_sim.base_url)
    env.set_destinations([destination("vip-customers", VIP_LIST, "vip/"),
                          destination("newsletter", NEWS_LIST, "news/", region="eu")])
    env.install()
    fire_blob_trigger(env.segments.container_name, env.upload("vip/a.csv", csv_bytes([person(1, "vip")])))
    fire_blob_trigger(env.segments.container_name, env.upload("news/a.csv", csv_bytes([person(2, "news")])))
    assert set(env.sim.list_contacts(VIP_LIST)) == {person(1, "vip")[1]}
    assert set(eu_sim.list_contacts(NEWS_LIST)) == {person(2, "news")[1]}
    assert env.sim.list_contacts(NEWS_LIST) == {}  # the global API never saw the EU destination's contacts
    assert not any(NEWS_LIST in r.path for r in env.sim.request_log)
    assert not any(VIP_LIST in r.path for r in eu_sim.request_log)
    assert eu_sim.request_counts.get("PUT /v3/marketing/contacts") == 1


def test_the_base_urls_without_overrides_and_with_only_the_global_one(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SENDGRID_BASE_URL", "SENDGRID_EU_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = AppSettings.from_environment()
    assert settings.base_url_for("global") == "https://api.sendgrid.com"
    assert settings.base_url_for("eu") == "https://api.eu.sendgrid.com"
    monkeypatch.setenv("SENDGRID_BASE_URL", "https://api.sendgrid.com/")  # as the deployment sets it
    settings = AppSettings.from_environment()
    assert settings.base_url_for("eu") == "https://api.eu.sendgrid.com"  # an EU key is refused globally
    monkeypatch.setenv("SENDGRID_BASE_URL", "http://127.0.0.1:9/")  # the simulator for every region
    settings = AppSettings.from_environment()
    assert settings.base_url_for("eu") == settings.base_url_for("global") == "http://127.0.0.1:9"


def test_an_erasure_deletes_the_person_in_every_account_of_both_regions(env: Env, eu_sim: Simulator) -> None:
    env.monkeypatch.setenv("SENDGRID_EU_BASE_URL", eu_sim.base_url)
    env.set_destinations([destination("vip-customers", VIP_LIST, "vip/"),
                          destination("newsletter", NEWS_LIST, "news/", region="eu")])
    env.install()
    both = ["CI-7", "both@example.com", "Both", "Regions", "France"]
    fire_blob_trigger(env.segments.container_name, env.upload("vip/a.csv", csv_bytes([both, person(1, "vip")])))
    fire_blob_trigger(env.segments.container_name, env.upload("news/a.csv", csv_bytes([both])))
    assert env.sim.contact("both@example.com") and eu_sim.contact("both@example.com")
    report = http("POST", "erasures", {"emails": ["both@example.com"]}).json()
    assert (report["status"], report["accounts"], report["found"], report["deleted"]) == ("completed", 2, 1, 1)
    assert env.sim.contact("both@example.com") is None and eu_sim.contact("both@example.com") is None
    assert env.sim.contact(person(1, "vip")[1]) is not None


def test_a_destination_moved_to_the_eu_sends_everyone_to_its_new_account(env: Env, eu_sim: Simulator) -> None:
    """Another region is another SendGrid account: the snapshot of the old one must not make the contacts
    look unchanged (`region` is part of the config digest)."""
    env.monkeypatch.setenv("SENDGRID_EU_BASE_URL", eu_sim.base_url)
    env.set_destinations([destination("newsletter", NEWS_LIST, "news/")])
    env.install()
    rows = [person(1, "news"), person(2, "news")]
    fire_blob_trigger(env.segments.container_name, env.upload("news/a.csv", csv_bytes(rows)))
    assert set(env.sim.list_contacts(NEWS_LIST)) == {row[1] for row in rows}
    env.set_destinations([destination("newsletter", NEWS_LIST, "news/", region="eu")])
    env.install()
    fire_blob_trigger(env.segments.container_name, env.upload("news/b.csv", csv_bytes(rows)))
    assert set(eu_sim.list_contacts(NEWS_LIST)) == {row[1] for row in rows}
