"""Run the main job end to end on local defaults and print the run report.

Starts Azurite and the SendGrid simulator on loopback, uploads the bundled sample segment into the
segments container, and fires the registered blob-triggered function exactly as the Functions host
would (with an SDK BlobClient for the new blob, through devtools.functions_host). Then prints the run
report it stored in Azurite and what the SendGrid list now holds.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from azure.storage.blob import BlobServiceClient

from devtools.functions_host import fire_blob_trigger
from devtools.local_env import (
    ROOT,
    SAMPLE_BLOB,
    SAMPLE_CONFIG,
    SAMPLE_SEGMENT,
    SEGMENTS_CONTAINER,
    start_local_services,
    upload_segment,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--segment", type=Path, default=SAMPLE_SEGMENT, help="segment file to drop")
    parser.add_argument("--config", type=Path, default=SAMPLE_CONFIG, help="destinations JSON")
    parser.add_argument("--blob", default=SAMPLE_BLOB, help="blob name to upload as")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)-7s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("azure", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    services = start_local_services(args.config)
    try:
        upload_segment(services.connection_string, SEGMENTS_CONTAINER, args.blob, args.segment.read_bytes())
        print(f"uploaded {args.segment.relative_to(ROOT) if args.segment.is_relative_to(ROOT) else args.segment}"
              f" to Azurite segments/{args.blob}", file=sys.stderr)
        fire_blob_trigger(SEGMENTS_CONTAINER, args.blob)

        blobs = BlobServiceClient.from_connection_string(services.connection_string)
        runs = blobs.get_container_client("export-runs")
        report_blob = max(runs.list_blobs(name_starts_with="reports/"), key=lambda b: b.last_modified)
        report = json.loads(runs.download_blob(report_blob.name).readall())
        print(json.dumps(report, indent=2))
        for destination in services.config["destinations"]:
            members = services.simulator.list_contacts(destination["list_id"])
            print(f"SendGrid list {destination['list_id']} ({destination['name']}) now holds "
                  f"{len(members)} contacts; report: {report_blob.name} in container export-runs",
                  file=sys.stderr)
        return 0 if report.get("status") == "succeeded" else 1
    finally:
        services.stop()


if __name__ == "__main__":
    raise SystemExit(main())
