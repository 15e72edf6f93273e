"""Benchmark: generated 100,000- and 1,000,000-row segments exported where they run, by the function.

    .venv/bin/python -m benchmarks.bench_export [--sizes 100000 1000000] [--repeat N] [--no-load]

Per size, in one run, each figure the fastest of N runs (3 at 100,000 rows, 2 at a million; the peak RSS shown
is the highest of them), each in a fresh child process so its CPU and peak RSS are its own:
- floor: bare `csv.reader` over the file and `json.dumps` of 30,000-contact bodies, no validation, no HTTP:
  the least any exporter must do;
- first export, function path (the headline): the file uploaded to Azurite and exported by the registered
  blob-triggered function (benchmarks/function_path.py) with no state yet: receipt, lease, snapshot,
  checkpoint, report, source record and the SendGrid requests, in mirror mode;
- first refresh after a first export, function path (one run): 1% changed, 1% new, 1% gone; the first
  export mapped its plain lines a chunk at a time (shared.mapping.line_mapping) and stored their line hashes
  (shared.state.line_hashes), so this refresh already knows its unchanged rows by their lines;
- steady-state refresh, function path: each day after, the next file of the same segment with 1% of profiles
  changed, 1% new and 1% gone (mirror: the gone are removed from the list);
- unchanged refresh, function path: the same profiles in a new file: 0 requests carrying contacts;
- engine, stateless (secondary): `export_segment` with no sync state, as `cli export` runs.
Then the 100,000-row first export and steady-state refresh against a slow, rate-limited simulator (200 ms per
answer, 3 PUTs/s), next to what requests x latency + our CPU predicts (`--no-load` skips it).

Requests are counted by the simulator; "carrying contacts" are the PUTs, against their lower bound (30,000
contacts or 6 MB a request, whichever binds). The simulator runs in this process, Azurite in another: both
share the machine's cores with the child, so compare a row's CPU with the floor of the same run.
Targets: first export <= 2.0x the floor's CPU, steady-state <= 0.6x, peak RSS < 150 MB at 1,000,000 rows.
The markdown rows at the end go into README.md's benchmark table as they are.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.function_path import KEY, LIST_ID, destination, peak_rss_kb

ROOT = Path(__file__).resolve().parent.parent
HEADER = ["CustomerId", "Email", "FirstName", "LastName", "Country", "State", "City", "PostCode"]
PUT = "PUT /v3/marketing/contacts"
MAX_CONTACTS, MAX_BYTES = 30_000, 6_000_000
LOAD_LATENCY = 0.2  # seconds added to every answer, as across the Atlantic
LOAD_RATE_LIMIT = {"limit": 20, "window": 1.0, "per_endpoint": {PUT: 3}}


def generate(path: Path, rows: int, version: int = 0) -> None:
    """Version 0: the segment; version 1: 1% changed (i % 100 == 2), 1% gone (== 1), 1% new (past the end).
    Going from either version to the other is a steady-state refresh (1% changed, 1% new, 1% gone)."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(HEADER)
        extra = rows // 100 if version else 0
        for i in range(rows + extra):
            if version and i % 100 == 1 and i < rows:
                continue
            first = f"Changed{i % 1000}" if version and i % 100 == 2 else f"First{i % 1000}"
            writer.writerow([f"C{i:08d}", f"customer.{i}@example{i % 97}.com", first, f"Last{i % 5000}",
                             "United States", "WA", "Seattle", f"{98000 + i % 999}"])


def floor(path: Path) -> tuple[float, int]:
    """Read the CSV and serialise SendGrid bodies of 30,000 contacts: (seconds, bytes of the bodies)."""
    start = time.process_time()
    size = 0
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        next(reader)
        batch: list[dict[str, str]] = []
        for cells in reader:
            batch.append({"email": cells[1], "first_name": cells[2], "last_name": cells[3], "country": cells[4],
                          "state_province_region": cells[5], "city": cells[6], "postal_code": cells[7]})
            if len(batch) == MAX_CONTACTS:
                size += len(json.dumps({"list_ids": [LIST_ID], "contacts": batch}).encode())
                batch = []
        if batch:
            size += len(json.dumps({"list_ids": [LIST_ID], "contacts": batch}).encode())
    return time.process_time() - start, size


def engine_child(path: str, base_url: str) -> None:
    """The stateless engine (as `cli export`) in this process; prints a JSON line of figures."""
    sys.path.insert(0, str(ROOT))
    from shared.config.destinations import Destination
    from shared.pipeline.engine import ExportOptions, export_segment
    from shared.sendgrid.client import SendGridClient
    from shared.source.sources import LocalDirSource

    dest = Destination.model_validate(destination("upsert"))
    file = Path(path)
    SendGridClient(KEY, base_url=base_url).close()  # warm, as a worker that has run before
    start, cpu_start = time.perf_counter(), time.process_time()
    with SendGridClient(KEY, base_url=base_url) as client:
        result = export_segment(dest, LocalDirSource(str(file.parent)), file.name, client, run_id="bench",
                                options=ExportOptions(poll_interval=0.05))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    result.close()
    report = result.report
    print(json.dumps({"wall": wall, "cpu": cpu, "peak_mb": peak_rss_kb() / 1024, "status": report.status,
                      "exported": report.exported, "unchanged": report.unchanged_skipped, "removed": 0,
                      "balanced": report.balanced, "rows": report.rows_read}))


def _child(args: list[str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"benchmark child failed: {' '.join(args[:2])}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


class Bench:
    """Azurite, the simulator, and the child runs with the requests each one made."""

    def __init__(self, simulator: Any, connection: str) -> None:
        from azure.storage.blob import BlobServiceClient

        self.sim = simulator
        self.connection = connection
        self.blobs = BlobServiceClient.from_connection_string(connection)
        self.segments = self.blobs.create_container(f"bench-segments-{uuid.uuid4().hex[:8]}")

    def upload(self, path: Path) -> str:
        # names in upload order: of two files written within a second the greatest name is the current one
        name = f"bench/{time.time_ns()}-{path.stem}.csv"
        with path.open("rb") as fh:
            self.segments.upload_blob(name, fh, overwrite=True)
        return name

    def function(self, path: Path, runs: str, profile: str | None = None) -> dict[str, Any]:
        blob = self.upload(path)
        args = ["benchmarks.function_path", "--blob", blob, "--connection", self.connection,
                "--segments", self.segments.container_name, "--runs", runs, "--base-url", self.sim.base_url]
        return self._counted(args + (["--profile", profile] if profile else []))

    def engine(self, path: Path) -> dict[str, Any]:
        return self._counted(["benchmarks.bench_export", "--engine-child", str(path), "--base-url",
                              self.sim.base_url])

    def _counted(self, args: list[str]) -> dict[str, Any]:
        before = dict(self.sim.request_counts)
        figures = _child(args)
        self.sim.wait_for_jobs(120)  # its import jobs must not compete with the next run
        after = self.sim.request_counts
        figures["requests"] = sum(after.values()) - sum(before.values())
        figures["contact_requests"] = after.get(PUT, 0) - before.get(PUT, 0)
        return figures


def fastest(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(min(runs, key=lambda r: r["cpu"]), peak_mb=max(r["peak_mb"] for r in runs),
                cpus=[r["cpu"] for r in runs])


def measure(bench: Bench, size: int, tmp: Path, repeat: int) -> list[tuple[str, dict[str, Any], str]]:
    """Every row of one size: (what, figures, lower bound of requests carrying contacts)."""
    base, other = tmp / f"segment_{size}.csv", tmp / f"segment_{size}_next.csv"
    generate(base, size)
    generate(other, size, version=1)
    floors = [_child(["benchmarks.bench_export", "--floor", str(base)]) for _ in range(repeat)]
    floor_cpu, body_bytes = min(f["floor"] for f in floors), floors[0]["bytes"]
    bound_first = max(math.ceil(size / MAX_CONTACTS), math.ceil(body_bytes / MAX_BYTES))
    changed = 2 * (size // 100)  # changed + new, each way
    bound_steady = max(math.ceil(changed / MAX_CONTACTS), math.ceil(body_bytes * changed / size / MAX_BYTES))
    first = fastest([bench.function(base, f"bench-runs-{uuid.uuid4().hex[:8]}") for _ in range(repeat)])
    runs = f"bench-runs-{uuid.uuid4().hex[:8]}"
    bench.function(base, runs)  # a first export, with its lines' hashes
    learning = bench.function(other, runs)  # day 2
    steady = fastest([bench.function(base if turn % 2 == 0 else other, runs) for turn in range(repeat)])
    unchanged = fastest([bench.function(base if repeat % 2 else other, runs) for _ in range(repeat)])
    engine = fastest([bench.engine(base) for _ in range(repeat)])
    floor_row = {"cpu": floor_cpu, "wall": floor_cpu, "peak_mb": 0.0, "requests": 0, "contact_requests": 0,
                 "cpus": [f["floor"] for f in floors], "status": "-", "balanced": True, "exported": 0,
                 "unchanged": 0, "removed": 0}
    return [("floor (csv.reader + json.dumps)", floor_row, "-"),
            ("first export, function path", first, str(bound_first)),
            ("first refresh after it (1% changed/new/gone), function path",
             dict(learning, cpus=[learning["cpu"]]), str(bound_steady)),
            ("steady-state refresh (1% changed/new/gone, mirror), function path", steady, str(bound_steady)),
            ("unchanged refresh, function path", unchanged, "0"),
            ("first export, engine without state (secondary)", engine, str(bound_first))]


def load(tmp: Path, simulator_class: Any, connection: str) -> list[str]:
    """100,000 rows against a slow, rate-limited API: first export and steady-state, function path."""
    slow = simulator_class(api_keys={KEY: None}, validate_openapi=False, latency=LOAD_LATENCY,
                           rate_limit=LOAD_RATE_LIMIT, job_delay=0.2, record_batches=False)
    slow.start()
    lines = []
    try:
        slow.create_list("bench", list_id=LIST_ID)
        bench = Bench(slow, connection)
        base, other = tmp / "segment_100000.csv", tmp / "segment_100000_next.csv"
        if not base.exists():
            generate(base, 100_000)
            generate(other, 100_000, version=1)
        runs = f"bench-runs-{uuid.uuid4().hex[:8]}"
        for what, path in (("first export", base), ("steady-state refresh", other)):
            r = bench.function(path, runs)
            predicted = r["requests"] * LOAD_LATENCY + r["cpu"]
            lines.append(f"load, 100,000 rows, {what}: wall {r['wall']:.2f} s, our CPU {r['cpu']:.2f} s, "
                         f"{r['requests']} requests ({r['contact_requests']} carrying contacts) x "
                         f"{LOAD_LATENCY * 1000:.0f} ms + CPU = {predicted:.2f} s predicted, status {r['status']}")
            print(lines[-1], flush=True)
    finally:
        slow.stop()
    return lines


def _line(size: int, what: str, r: dict[str, Any], floor_cpu: float) -> str:
    spread = "/".join(f"{c / floor_cpu:.2f}" for c in r["cpus"])
    return (f"{size:>9,} rows, {what}: CPU {r['cpu']:.2f} s ({r['cpu'] / floor_cpu:.2f}x floor; runs {spread}), "
            f"wall {r['wall']:.2f} s, peak RSS {r['peak_mb']:.0f} MB, requests {r['requests']} "
            f"({r['contact_requests']} carrying contacts), exported {r['exported']}, unchanged {r['unchanged']}, "
            f"removed {r['removed']}, status {r['status']}, balanced {r['balanced']}")


def _markdown(size: int, what: str, r: dict[str, Any], floor_cpu: float, bound: str) -> str:
    peak = f"{r['peak_mb']:.0f} MB" if r["peak_mb"] else "-"
    requests = f"{r['requests']} ({r['contact_requests']}; bound {bound})" if bound != "-" else "-"
    return (f"| {size:,} | {what} | {r['cpu']:.2f} s | **{r['cpu'] / floor_cpu:.2f}x** | {r['wall']:.2f} s | "
            f"{peak} | {requests} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, help="runs per figure (default 3 up to 200,000 rows, else 2)")
    parser.add_argument("--no-load", action="store_true", help="skip the run against a slow, rate-limited API")
    parser.add_argument("--engine-child", help=argparse.SUPPRESS)
    parser.add_argument("--floor", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine_child:
        engine_child(args.engine_child, args.base_url)
        return 0
    if args.floor:
        seconds, size = floor(Path(args.floor))
        print(json.dumps({"floor": seconds, "bytes": size}))
        return 0

    sys.path.insert(0, str(ROOT))
    from sendgrid_simulator import Simulator
    from tests.azurite import start_azurite

    started = time.perf_counter()
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}", flush=True)
    table = ["| rows | run | our CPU | CPU / floor | wall | peak RSS | requests (carrying contacts; lower bound) |",
             "|---:|---|---:|---:|---:|---:|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        azurite = start_azurite()
        simulator = Simulator(api_keys={KEY: None}, validate_openapi=False, job_delay=0.0, record_batches=False)
        simulator.start()
        try:
            simulator.create_list("bench", list_id=LIST_ID)
            bench = Bench(simulator, azurite.connection_string)
            for size in args.sizes:
                repeat = args.repeat or (3 if size <= 200_000 else 2)
                rows = measure(bench, size, Path(tmp), repeat)
                floor_cpu = rows[0][1]["cpu"]
                for what, figures, bound in rows:
                    print(_line(size, what, figures, floor_cpu), flush=True)
                    table.append(_markdown(size, what, figures, floor_cpu, bound))
            if not args.no_load:
                load(Path(tmp), Simulator, azurite.connection_string)
        finally:
            simulator.stop()
            azurite.stop()
    print("\n".join(["", "README table rows:", *table]))
    print(f"benchmark took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
