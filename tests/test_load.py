"""Load: the exporter against a SendGrid simulator with realistic latency and rate limits.

- `test_100k_row_export`: 100,000 rows streamed from Azurite to one list (SendGrid's real 30,000-contact
  batches), with the list checked contact by contact afterwards.
- `test_five_concurrent_destinations`: five threads, each with its own list, API key, client and segment
  file (the segments overlap, so the same person is on several lists), all at once against the same
  per-endpoint rate limit; every list must end with exactly its own segment.

Both print wall time, requests (by endpoint, 429s included) and rows/s. The simulator answers every /v3
request after `LATENCY` seconds and allows `PUT_PER_SECOND` upserts per second across all clients (the
per-endpoint window SendGrid reports in X-RateLimit-*); OpenAPI validation is off here (it costs about a
second per 30,000-contact body; tests/test_faults.py and the simulator's own tests validate).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from azure.storage.blob import ContainerClient

from sendgrid_simulator import Simulator
from shared.config.destinations import Destination
from shared.pipeline.engine import ExportOptions, export_segment
from shared.pipeline.report import RunReport
from shared.sendgrid.client import RetryPolicy, SendGridClient
from shared.source.sources import BlobContainerSource

LATENCY = 0.2  # seconds added to every SendGrid answer
PUT_PER_SECOND = 3
RATE_LIMIT = {"limit": 20, "window": 1.0, "per_endpoint": {"PUT /v3/marketing/contacts": PUT_PER_SECOND}}
TIERS = ("bronze", "silver", "gold", "platinum")


def person(n: int) -> dict[str, str]:
    """The same person has the same values in every segment (so shared contacts have one right answer)."""
    return {"first_name": f"First{n}", "last_name": f"Last{n}", "city": f"City{n % 997}", "country": "Sweden",
            "loyalty_tier": TIERS[n % 4]}


def email(n: int) -> str:
    return f"person{n:06d}@example.com"


def segment_csv(numbers: range, invalid: frozenset[int] = frozenset()) -> bytes:
    lines = ["Email,FirstName,LastName,City,Country,LoyaltyTier"]
    for n in numbers:
        p = person(n)
        address = f"person{n:06d}-at-example.com" if n in invalid else email(n)
        lines.append(f"{address},{p['first_name']},{p['last_name']},{p['city']},{p['country']},{p['loyalty_tier']}")
    return ("\n".join(lines) + "\n").encode()


def make_destination(name: str, list_id: str) -> Destination:
    return Destination.model_validate({
        "name": name, "list_id": list_id, "api_key_secret": f"{name}-key", "segments": [f"{name}/"],
        "field_mapping": {"email": "Email", "first_name": "FirstName", "last_name": "LastName", "city": "City",
                          "country": "Country", "custom_fields": {"loyalty_tier": "LoyaltyTier"}},
        "max_profiles": 200_000,
        "consent": {"agreed_by": "qa@contoso.com", "agreed_at": "2026-11-01T09:00:00Z"},
    })


def client_for(sim: Simulator, key: str) -> SendGridClient:
    return SendGridClient(key, base_url=sim.base_url, timeout=httpx.Timeout(30.0, connect=5.0),
                          retry=RetryPolicy(backoff_base=0.05, backoff_max=1.0, rate_limit_budget=60.0))


@pytest.fixture
def loaded_sim() -> Iterator[Simulator]:
    keys = {f"SG.load-key-{i}": None for i in range(5)}
    sim = Simulator(api_keys=keys, latency=LATENCY, rate_limit=RATE_LIMIT, job_delay=0.2)
    sim.create_field("loyalty_tier", "Text")
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


def check_list(sim: Simulator, list_id: str, numbers: set[int]) -> None:
    """The list holds exactly these people, each with this file's values (custom fields render by name, as
    SendGrid's GET does; the upsert had to use the field's ID for the value to land)."""
    members = sim.list_contacts(list_id)
    assert set(members) == {email(n) for n in numbers}
    for n in numbers:
        contact, expected = members[email(n)], person(n)
        assert (contact["first_name"], contact["last_name"], contact["city"], contact["country"]) == (
            expected["first_name"], expected["last_name"], expected["city"], expected["country"])
        assert contact["custom_fields"] == {"loyalty_tier": expected["loyalty_tier"]}


def sent_twice(sim: Simulator) -> int:
    sent = [e for batch in sim.upsert_batches for e in batch.emails]
    return len(sent) - len(set(sent))


@dataclass
class Figures:
    label: str
    rows: int
    seconds: float
    requests: dict[str, int]
    rate_limited: int
    rate_limit_wait: float

    def print(self) -> None:
        total = sum(self.requests.values())
        by_endpoint = ", ".join(f"{k} x{v}" for k, v in sorted(self.requests.items()))
        print(f"\n{self.label}: {self.rows:,} rows in {self.seconds:.1f} s = {self.rows / self.seconds:,.0f} rows/s; "
              f"{total} requests ({by_endpoint}); 429s {self.rate_limited}, waited {self.rate_limit_wait:.1f} s "
              f"for rate limits; latency {LATENCY} s/request, PUT limit {PUT_PER_SECOND}/s")


def run(destination: Destination, container: ContainerClient, blob: str, client: SendGridClient,
        options: ExportOptions) -> RunReport:
    try:
        return export_segment(destination, BlobContainerSource(container), blob, client,
                              run_id=f"load-{uuid.uuid4().hex[:8]}", options=options).report
    finally:
        client.close()


@pytest.mark.slow
def test_100k_row_export(loaded_sim: Simulator, container: ContainerClient) -> None:
    rows = 100_000
    invalid = frozenset(range(9_999, rows, 10_000))  # 10 rows with a broken address
    container.upload_blob("big/segment.csv", segment_csv(range(rows), invalid))
    list_id = str(uuid.uuid4())
    loaded_sim.create_list("big", list_id=list_id)
    client = client_for(loaded_sim, "SG.load-key-0")

    started = time.perf_counter()
    report = run(make_destination("big", list_id), container, "big/segment.csv", client,
                 ExportOptions(poll_interval=0.25, poll_timeout=60))
    seconds = time.perf_counter() - started

    assert report.status == "succeeded", report.error
    assert report.balanced and report.rows_read == rows
    assert report.exported == rows - len(invalid) and {r.row - 1 for r in report.rejected} == invalid
    # SendGrid's limits decide the request count: 99,990 contacts in ceil(99,990 / 30,000) = 4 PUTs.
    assert [b.contacts for b in report.batches] == [30_000, 30_000, 30_000, 9_990]
    assert loaded_sim.request_counts["PUT /v3/marketing/contacts"] - client.stats.rate_limited <= 4
    assert sent_twice(loaded_sim) == 0
    check_list(loaded_sim, list_id, set(range(rows)) - invalid)
    Figures("100k-row export", rows, seconds, dict(loaded_sim.request_counts), client.stats.rate_limited,
            client.stats.rate_limit_wait_seconds).print()
    assert seconds < 60


def test_five_concurrent_destinations(loaded_sim: Simulator, container: ContainerClient) -> None:
    """Five exports at once, 8,000 rows each in 2,000-contact batches (20 PUTs against a 3/s limit):
    every run waits its turn on 429s, and every list ends with exactly its own segment."""
    per_destination, overlap, batch = 8_000, 2_000, 2_000
    segments: dict[str, range] = {}
    destinations: dict[str, Destination] = {}
    for i in range(5):
        name = f"dest{i}"
        segments[name] = range(i * (per_destination - overlap), i * (per_destination - overlap) + per_destination)
        container.upload_blob(f"{name}/segment.csv", segment_csv(segments[name]))
        list_id = loaded_sim.create_list(name, list_id=str(uuid.uuid4()))
        destinations[name] = make_destination(name, list_id)

    reports: dict[str, RunReport] = {}
    clients: dict[str, SendGridClient] = {}
    errors: list[BaseException] = []
    options = ExportOptions(max_contacts_per_request=batch, poll_interval=0.25, poll_timeout=60)

    def export(i: int, name: str) -> None:
        try:
            clients[name] = client = client_for(loaded_sim, f"SG.load-key-{i}")
            reports[name] = run(destinations[name], container, f"{name}/segment.csv", client, options)
        except BaseException as exc:  # reported after join: a thread's exception would otherwise be lost
            errors.append(exc)

    threads = [threading.Thread(target=export, args=(i, name), name=f"export-{name}")
               for i, name in enumerate(destinations)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    seconds = time.perf_counter() - started
    assert not errors, errors
    assert all(not t.is_alive() for t in threads)

    for name, destination in destinations.items():
        report = reports[name]
        assert report.status == "succeeded", (name, report.error)
        assert report.balanced and report.exported == per_destination, name
        assert len(report.batches) == per_destination // batch
        check_list(loaded_sim, destination.list_id_str, set(segments[name]))
    # Each client presented its own key; the shared rate limit made them queue, not fail.
    rate_limited = sum(c.stats.rate_limited for c in clients.values())
    assert rate_limited > 0, "the PUT limit was never reached: the test did not exercise concurrency limits"
    # No batch went twice, and within a run no contact went twice (the overlap is sent once per list).
    assert len(loaded_sim.upsert_batches) == sum(len(r.batches) for r in reports.values())
    by_job = {b.job_id: b.emails for b in loaded_sim.upsert_batches}
    for name, report in reports.items():
        sent = [e for b in report.batches for e in by_job[b.job_id or ""]]
        assert len(sent) == len(set(sent)) == per_destination, name
    rows = per_destination * len(destinations)
    Figures("5 concurrent destinations", rows, seconds, dict(loaded_sim.request_counts), rate_limited,
            sum(c.stats.rate_limit_wait_seconds for c in clients.values())).print()
    assert seconds < 60
