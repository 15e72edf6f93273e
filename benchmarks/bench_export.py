"""Benchmark: export generated 100,000- and 1,000,000-row segments to the SendGrid simulator.

Prints, per size: wall time, rows/s, peak RSS of the exporting process, requests sent, and the ratio to a
floor measured in the same run (bare `csv.reader` over the file + `json.dumps` of the bodies, no validation,
no HTTP). Also the time of an unchanged 100,000-row refresh (incremental sync: 0 contacts sent), and the
100,000-row export against a slow, rate-limited API (200 ms per answer, 3 PUTs/s), alone and as five
destinations at once (`--no-load` skips that part).

    .venv/bin/python -m benchmarks.bench_export [--sizes 100000 1000000]

Each export runs in a fresh child process so its peak RSS is its own; the simulator runs in another
process (it is not part of our memory or CPU profile, though it shares the machine's two cores). The floor
runs in a fresh child process too, so both sides start alike; each side is measured several times (5 at
100,000 rows, 2 at a million) and its fastest run counted (the peak RSS shown is the highest of the
export's runs), after the simulator finished the previous run's import jobs.
Targets: 100,000 rows < 10 s; within 2x of the floor; peak RSS < 150 MB at 1,000,000 rows; unchanged
100,000-row refresh < 3 s with 0 requests carrying contacts.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LIST_ID = "0f5e2a55-6a43-4bd5-9a55-1c2a7e3d9b10"
KEY = "SG.bench-key"
HEADER = ["CustomerId", "Email", "FirstName", "LastName", "Country", "State", "City", "PostCode"]
DESTINATION = {
    "name": "bench", "list_id": LIST_ID, "api_key_secret": "k", "segments": ["bench/"],
    "max_profiles": 2_000_000,
    "field_mapping": {"email": "Email", "first_name": "FirstName", "last_name": "LastName", "country": "Country",
                      "state_province_region": "State", "city": "City", "postal_code": "PostCode"},
    "consent": {"agreed_by": "bench", "agreed_at": "2026-11-22T00:00:00Z"},
}


def generate(path: Path, rows: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(HEADER)
        for i in range(rows):
            writer.writerow([f"C{i:08d}", f"customer.{i}@example{i % 97}.com", f"First{i % 1000}",
                             f"Last{i % 5000}", "United States", "WA", "Seattle", f"{98000 + i % 999}"])


def floor(path: Path) -> float:
    """Read the CSV and serialise SendGrid bodies of 30,000 contacts: the least any exporter must do."""
    start = time.perf_counter()
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        next(reader)
        batch: list[dict[str, str]] = []
        for cells in reader:
            batch.append({"email": cells[1], "first_name": cells[2], "last_name": cells[3], "country": cells[4],
                          "state_province_region": cells[5], "city": cells[6], "postal_code": cells[7]})
            if len(batch) == 30_000:
                json.dumps({"list_ids": [LIST_ID], "contacts": batch}).encode()
                batch = []
        if batch:
            json.dumps({"list_ids": [LIST_ID], "contacts": batch}).encode()
    return time.perf_counter() - start


def child(path: str, base_url: str, connection_string: str | None, state: bool, list_id: str = LIST_ID) -> None:
    """One export in this process; prints a JSON line of figures."""
    sys.path.insert(0, str(ROOT))
    from shared.config.destinations import Destination
    from shared.pipeline.engine import ExportOptions, export_segment
    from shared.sendgrid.client import SendGridClient
    from shared.source.sources import LocalDirSource

    destination = Destination.model_validate({**DESTINATION, "list_id": list_id})
    file = Path(path)
    sync = None
    if state and connection_string:
        from azure.storage.blob import BlobServiceClient

        from shared.service.export_service import config_digest
        from shared.state.sync_state import SyncState

        container = BlobServiceClient.from_connection_string(connection_string).get_container_client("bench-runs")
        sync = SyncState(container, destination.name, config_digest=config_digest(destination))
        sync.acquire()
        sync.load(source_id=f"{file.name}\n{file.stat().st_mtime_ns}", full=False)
    # Warm, as a function worker that has run before: httpx's lazy imports and the thread's TLS context
    # are set up once per worker thread, not per export (~45 ms of CPU the first time).
    SendGridClient(KEY, base_url=base_url).close()
    start = time.perf_counter()
    cpu_start = time.process_time()
    with SendGridClient(KEY, base_url=base_url) as client:
        result = export_segment(destination, LocalDirSource(str(file.parent)), file.name, client,
                                run_id="bench", options=ExportOptions(poll_interval=0.05), sync=sync)
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        contact_requests = client.stats.by_endpoint.get("PUT /v3/marketing/contacts", 0)
    if sync is not None:
        sync.release()
    result.close()  # deletes the rejects file
    report = result.report
    peak_kb = peak_rss_kb()
    print(json.dumps({"wall": wall, "cpu": cpu, "peak_mb": peak_kb / 1024, "requests": report.requests_sent,
                      "contact_requests": contact_requests, "exported": report.exported,
                      "unchanged": report.unchanged_skipped, "status": report.status,
                      "balanced": report.balanced, "rows": report.rows_read}))


def peak_rss_kb() -> int:
    """This process's peak RSS. Linux keeps ru_maxrss across fork+exec, so a child would report its parent's
    peak (the parent holds the simulator's contacts); VmHWM belongs to this address space only."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def floor_in_child(path: Path) -> float:
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_export", "--floor", str(path)], cwd=ROOT,
                         check=True, capture_output=True, text=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["floor"])


def run_child(path: Path, base_url: str, connection_string: str | None = None, state: bool = False,
              list_id: str = LIST_ID) -> dict[str, Any]:
    args = [sys.executable, "-m", "benchmarks.bench_export", "--child", str(path), "--base-url", base_url,
            "--list-id", list_id]
    if state and connection_string:
        args += ["--state", connection_string]
    out = subprocess.run(args, cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--child")
    parser.add_argument("--floor", help=argparse.SUPPRESS)
    parser.add_argument("--base-url")
    parser.add_argument("--state")
    parser.add_argument("--list-id", default=LIST_ID)
    parser.add_argument("--no-load", action="store_true", help="skip the run against a slow, rate-limited API")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.base_url, args.state, bool(args.state), args.list_id)
        return 0
    if args.floor:
        print(json.dumps({"floor": floor(Path(args.floor))}))
        return 0

    sys.path.insert(0, str(ROOT))
    from sendgrid_simulator import Simulator
    from tests.azurite import start_azurite

    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    rows_out = []
    with tempfile.TemporaryDirectory() as tmp:
        azurite = start_azurite()
        simulator = Simulator(api_keys={KEY: None}, validate_openapi=False, job_delay=0.0)
        simulator.start()
        try:
            simulator.create_list("bench", list_id=LIST_ID)
            for size in args.sizes:
                path = Path(tmp) / f"segment_{size}.csv"
                generate(path, size)
                repeat = 5 if size <= 200_000 else 2
                floor_s = min(floor_in_child(path) for _ in range(repeat))
                runs = []
                for _ in range(repeat):
                    runs.append(run_child(path, simulator.base_url))
                    simulator.wait_for_jobs(60)  # its import jobs must not compete with the next run
                figures = dict(min(runs, key=lambda r: r["cpu"]), peak_mb=max(r["peak_mb"] for r in runs))
                ratio = figures["cpu"] / floor_s
                rows_out.append((size, figures, floor_s, ratio))
                print(f"{size:>9,} rows: wall {figures['wall']:.2f} s, {size / figures['wall']:,.0f} rows/s, "
                      f"our CPU {figures['cpu']:.2f} s (the rest of the wall time is SendGrid's: HTTP and import "
                      f"jobs), peak RSS {figures['peak_mb']:.0f} MB, requests {figures['requests']:.0f} "
                      f"({figures['contact_requests']:.0f} carrying contacts), floor {floor_s:.2f} s, "
                      f"ratio to floor {ratio:.2f}x (CPU) / {figures['wall'] / floor_s:.2f}x (wall), "
                      f"status {figures['status']}, balanced {figures['balanced']}")
            # unchanged refresh: first export records the snapshot, the second finds nothing to send
            size = 100_000
            path = Path(tmp) / f"segment_{size}.csv"
            if not path.exists():
                generate(path, size)
            first = run_child(path, simulator.base_url, azurite.connection_string, state=True)
            second = run_child(path, simulator.base_url, azurite.connection_string, state=True)
            print(f"unchanged {size:,}-row refresh: wall {second['wall']:.2f} s, CPU {second['cpu']:.2f} s, "
                  f"{second['contact_requests']:.0f} requests carrying contacts, unchanged {second['unchanged']:.0f} "
                  f"(first export with snapshot: {first['wall']:.2f} s)")
            if not args.no_load:
                load(Path(tmp) / "segment_100000.csv")
        finally:
            simulator.stop()
            azurite.stop()
    return 0


LOAD_LATENCY = 0.2  # seconds added to every answer, as across the Atlantic
LOAD_RATE_LIMIT = {"limit": 20, "window": 1.0, "per_endpoint": {"PUT /v3/marketing/contacts": 3}}


def load(path: Path) -> None:
    """The same 100,000-row export against a slow, rate-limited API: alone, then five destinations at once
    (five processes, five lists), as tests/test_load.py checks for correctness."""
    from sendgrid_simulator import Simulator

    lists = [f"0f5e2a55-6a43-4bd5-9a55-1c2a7e3d9b1{i}" for i in range(5)]
    slow = Simulator(api_keys={KEY: None}, validate_openapi=False, latency=LOAD_LATENCY,
                     rate_limit=LOAD_RATE_LIMIT, job_delay=0.2)
    slow.start()
    try:
        for number, list_id in enumerate(lists):
            slow.create_list(f"load-{number}", list_id=list_id)
        alone = run_child(path, slow.base_url, list_id=lists[0])
        print(f"load, 1 destination: 100,000 rows in {alone['wall']:.2f} s wall ({alone['cpu']:.2f} s our CPU), "
              f"{alone['requests']:.0f} requests, {LOAD_LATENCY * 1000:.0f} ms latency, PUT limit 3/s, "
              f"status {alone['status']}")
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(lists)) as pool:
            runs = list(pool.map(lambda list_id: run_child(path, slow.base_url, list_id=list_id), lists))
        wall = time.perf_counter() - start
        members = [len(slow.list_contacts(list_id)) for list_id in lists]
        print(f"load, 5 destinations at once: 500,000 rows in {wall:.2f} s wall, "
              f"{sum(r['requests'] for r in runs):.0f} requests, statuses {sorted({str(r['status']) for r in runs})}, "
              f"list sizes {members}")
    finally:
        slow.stop()


if __name__ == "__main__":
    raise SystemExit(main())
