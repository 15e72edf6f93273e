"""Run the main job end to end on local defaults and print the run report.

Starts Azurite and the SendGrid simulator on loopback, uploads the bundled sample segment into the
segments container, and fires the registered blob-triggered function exactly as the Functions host
would (with an SDK BlobClient for the new blob). Then prints the run report it stored in Azurite and
what the SendGrid list now holds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from azure.storage.blob import BlobServiceClient

from sendgrid_simulator import Simulator
from shared.service.export_service import reset_service
from tests.azurite import start_azurite

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CONFIG = ROOT / "samples" / "destinations.local.json"
SAMPLE_SEGMENT = ROOT / "samples" / "segments" / "vip-customers" / "vip_customers_1.csv"
DEV_KEY = "SG.local-dev-key"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--segment", type=Path, default=SAMPLE_SEGMENT, help="segment file to drop")
    parser.add_argument("--config", type=Path, default=SAMPLE_CONFIG, help="destinations JSON")
    parser.add_argument("--blob", default="vip-customers/vip_customers_1.csv", help="blob name to upload as")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)-7s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("azure", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    config_text = args.config.read_text(encoding="utf-8")
    config = json.loads(config_text)
    azurite = start_azurite()
    simulator = Simulator(api_keys={DEV_KEY: None}, validate_openapi=False)
    try:
        simulator.start()
        for destination in config["destinations"]:
            simulator.create_list(destination.get("display_name") or destination["name"],
                                  list_id=destination["list_id"])
            for name in destination["field_mapping"].get("custom_fields", {}):
                simulator.create_field(name, "Date" if "date" in name else "Text")
        os.environ.update({
            "AzureWebJobsStorage": azurite.connection_string,
            "SEGMENTS_STORAGE": azurite.connection_string,
            "SEGMENTS_CONTAINER": "segments",
            "RUNS_CONTAINER": "export-runs",
            "SENDGRID_BASE_URL": simulator.base_url,
            "LOCAL_DEV_SENDGRID_API_KEY": DEV_KEY,
            "DESTINATIONS_JSON": config_text,
        })
        os.environ.pop("KEY_VAULT_URL", None)
        blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
        segments = blobs.create_container("segments")
        segments.upload_blob(args.blob, args.segment.read_bytes(), overwrite=True)
        print(f"uploaded {args.segment.relative_to(ROOT) if args.segment.is_relative_to(ROOT) else args.segment}"
              f" to Azurite segments/{args.blob}", file=sys.stderr)

        reset_service(None)
        from function_app import app  # noqa: PLC0415 - imported after the settings above are in place

        trigger = next(f for f in app.get_functions() if f.get_function_name() == "ExportOnNewSegmentFile")
        trigger.get_user_function()(segments.get_blob_client(args.blob))

        runs = blobs.get_container_client("export-runs")
        report_blob = max(runs.list_blobs(name_starts_with="reports/"), key=lambda b: b.last_modified)
        report = json.loads(runs.download_blob(report_blob.name).readall())
        print(json.dumps(report, indent=2))
        for destination in config["destinations"]:
            members = simulator.list_contacts(destination["list_id"])
            print(f"SendGrid list {destination['list_id']} ({destination['name']}) now holds "
                  f"{len(members)} contacts; report: {report_blob.name} in container export-runs",
                  file=sys.stderr)
        return 0 if report.get("status") == "succeeded" else 1
    finally:
        simulator.stop()
        azurite.stop()


if __name__ == "__main__":
    raise SystemExit(main())
