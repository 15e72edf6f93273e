"""Run the main job end to end on local defaults and print the run report.

Starts Azurite and the SendGrid simulator on loopback, uploads the bundled sample segment into the
segments container, and fires the registered blob-triggered function exactly as the Functions host
would (with an SDK BlobClient for the new blob, through devtools.functions_host). Then prints the run
report it stored in Azurite and what the SendGrid list now holds.
"""

from __future__ import annotations

import argparse
import json
import sys

from azure.storage.blob import BlobServiceClient

from devtools.local_env import RUNS_CONTAINER, add_sample_options, start_with_sample


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_sample_options(parser)
    services = start_with_sample(parser.parse_args(argv))
    try:
        blobs = BlobServiceClient.from_connection_string(services.connection_string)
        runs = blobs.get_container_client(RUNS_CONTAINER)
        report_blob = max(runs.list_blobs(name_starts_with="reports/"), key=lambda b: b.last_modified)
        report = json.loads(runs.download_blob(report_blob.name).readall())
        print(json.dumps(report, indent=2))
        for destination in services.config["destinations"]:
            members = services.simulator.list_contacts(destination["list_id"])
            print(f"SendGrid list {destination['list_id']} ({destination['name']}) now holds "
                  f"{len(members)} contacts; report: {report_blob.name} in container {RUNS_CONTAINER}",
                  file=sys.stderr)
        return 0 if report.get("status") == "succeeded" else 1
    finally:
        services.stop()


if __name__ == "__main__":
    raise SystemExit(main())
