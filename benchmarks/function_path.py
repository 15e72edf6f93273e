"""One export through the registered blob-triggered function, in this (fresh) process: the benchmark's headline.

The parent uploads the file to Azurite; this child sets the app settings a Function App would have, indexes
`function_app` as the worker does, builds the `BlobClient` the blob extension hands the function from the
host's `model_binding_data`, and calls `ExportOnNewSegmentFile` with it. Everything the deployed function
does is inside the measured call: the receipt, the destination's lease, the snapshot and checkpoint, the
reading of the segment file from storage, the SendGrid requests, the report and the source record.

The worker is warm, as one that has run before: the app is indexed, the service built, one SendGrid client
opened and numpy imported (a refresh's look-up, ~0.14 s of CPU and ~10 MB once per worker) before the clock
starts (a cold start's imports are the platform's, paid once per worker). Peak RSS includes all of them.

    python -m benchmarks.function_path --blob NAME --connection CS --segments C --runs C --base-url URL
        [--mode mirror] [--profile FILE]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import resource
import sys
import time
import typing
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KEY = "SG.bench-key"
LIST_ID = "0f5e2a55-6a43-4bd5-9a55-1c2a7e3d9b10"
FIELD_MAPPING = {"email": "Email", "first_name": "FirstName", "last_name": "LastName", "country": "Country",
                 "state_province_region": "State", "city": "City", "postal_code": "PostCode"}


def destination(mode: str, list_id: str = LIST_ID) -> dict[str, Any]:
    return {"name": "bench", "list_id": list_id, "api_key_secret": "k", "segments": ["bench/"],
            "max_profiles": 2_000_000, "mode": mode, "field_mapping": FIELD_MAPPING,
            "consent": {"agreed_by": "bench", "agreed_at": "2026-11-22T00:00:00Z"}}


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


def _settings(args: argparse.Namespace) -> None:
    """The Function App's settings, pointed at Azurite and the simulator (the local dev key fallback)."""
    for name in ("KEY_VAULT_URL", "AZURE_CLIENT_ID", "IDENTITY_ENDPOINT", "WEBSITE_INSTANCE_ID",
                 "AzureWebJobsStorage__blobServiceUri", "AzureWebJobsStorage__accountName"):
        os.environ.pop(name, None)
    os.environ.update({
        "AzureWebJobsStorage": args.connection, "SEGMENTS_STORAGE": args.connection,
        "SEGMENTS_CONTAINER": args.segments, "RUNS_CONTAINER": args.runs, "SENDGRID_BASE_URL": args.base_url,
        "LOCAL_DEV_SENDGRID_API_KEY": KEY, "REFRESH_SCHEDULE": "0 0 6 * * *",
        "DESTINATIONS_JSON": json.dumps({"destinations": [destination(args.mode, args.list_id)]}),
    })


def _blob_client(fn: Any, trigger: dict[str, Any], container: str, blob: str) -> Any:
    """What the worker gives the function: the blob extension's converter decoding the host's binding data."""
    import azurefunctions.extensions.bindings.blob as blob_binding
    from azurefunctions.extensions.base import Datum
    from azurefunctions.extensions.bindings.blob.blobClientConverter import BlobClientConverter

    annotation = typing.get_type_hints(fn)["client"]
    assert annotation is blob_binding.BlobClient
    content = json.dumps({"Connection": trigger["connection"], "ContainerName": container, "BlobName": blob})
    data = SimpleNamespace(version="1.0", source="AzureStorageBlobs", content_type="application/json",
                           content=content)
    return BlobClientConverter.decode(Datum(data, "model_binding_data"), trigger_metadata={}, pytype=annotation)


def run(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    _settings(args)
    from function_app import app
    from shared.pipeline.engine import ExportOptions
    from shared.sendgrid.client import SendGridClient
    from shared.service.export_service import ExportService, reset_service

    function = next(f for f in app.get_functions() if f.get_function_name() == "ExportOnNewSegmentFile")
    fn = function.get_user_function()
    trigger = next(b for b in json.loads(function.get_function_json())["bindings"] if b["type"] == "blobTrigger")
    # Polling as often as the simulator finishes jobs: the default 1 s would only add idle wall time.
    service = ExportService.from_environment(options=ExportOptions(poll_interval=0.05))
    reset_service(service)
    SendGridClient(KEY, base_url=args.base_url).close()  # httpx's lazy imports, once per worker
    import numpy  # noqa: F401 - imported by a worker's first refresh (known_lines), then kept: in RSS too
    client = _blob_client(fn, trigger, args.segments, args.blob)
    runs = service.runs.container
    before = {b.name for b in runs.list_blobs(name_starts_with="reports/")} if runs.exists() else set()
    profile = cProfile.Profile(time.process_time) if args.profile else None  # CPU, as measured
    start, cpu_start = time.perf_counter(), time.process_time()
    if profile is not None:
        profile.enable()
    fn(client)
    if profile is not None:
        profile.disable()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if profile is not None:
        profile.dump_stats(args.profile)
    peak_kb = peak_rss_kb()
    names = [b.name for b in runs.list_blobs(name_starts_with="reports/") if b.name not in before]
    report = json.loads(runs.download_blob(names[0]).readall()) if len(names) == 1 else {"status": "no report"}
    return {"wall": wall, "cpu": cpu, "peak_mb": peak_kb / 1024, "status": report.get("status"),
            "rows": report.get("rows_read"), "exported": report.get("exported"),
            "unchanged": report.get("unchanged_skipped"), "removed": report.get("removed_from_list"),
            "balanced": report.get("balanced"), "requests": report.get("requests_sent")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blob", required=True)
    parser.add_argument("--connection", required=True)
    parser.add_argument("--segments", required=True)
    parser.add_argument("--runs", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--list-id", default=LIST_ID)
    parser.add_argument("--mode", default="mirror", choices=["mirror", "upsert"])
    parser.add_argument("--profile", help="write cProfile stats of the measured call to this file")
    print(json.dumps(run(parser.parse_args())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
