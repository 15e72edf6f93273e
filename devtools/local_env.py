"""The local stand-ins the demo and the development server run the app against.

Azurite (blob storage, started from node_modules like the tests' fixture) and the SendGrid simulator on
loopback, with a list and the custom fields each configured destination needs; the app settings that point
the app at them; the sample segment uploaded where the blob trigger looks. One copy of this, so
`scripts/demo.sh` and `scripts/serve.sh` run the app the same way.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azure.storage.blob import BlobServiceClient

from devtools.functions_host import fire_blob_trigger
from sendgrid_simulator import Simulator
from shared.service.export_service import reset_service
from tests.azurite import Azurite, start_azurite

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CONFIG = ROOT / "samples" / "destinations.local.json"
SAMPLE_SEGMENT = ROOT / "samples" / "segments" / "vip-customers" / "vip_customers_1.csv"
SAMPLE_BLOB = "vip-customers/vip_customers_1.csv"
DEV_KEY = "SG.local-dev-key"  # the simulator's key, read by the app through LOCAL_DEV_SENDGRID_API_KEY
SEGMENTS_CONTAINER = "segments"
RUNS_CONTAINER = "export-runs"


def prepare_simulator(simulator: Simulator, config: dict[str, Any]) -> None:
    """The lists and custom fields the destinations name, as they would exist in the SendGrid account."""
    for destination in config["destinations"]:
        simulator.create_list(destination.get("display_name") or destination["name"], list_id=destination["list_id"])
        for name in destination["field_mapping"].get("custom_fields", {}):
            simulator.create_field(name, "Date" if "date" in name else "Text")


def local_settings(connection_string: str, sendgrid_url: str, config_text: str, *,
                   segments: str = SEGMENTS_CONTAINER, runs: str = RUNS_CONTAINER,
                   sendgrid_key: str = DEV_KEY) -> dict[str, str]:
    """The app settings of a local run (no Key Vault: the local-development key fallback)."""
    return {
        "AzureWebJobsStorage": connection_string,
        "SEGMENTS_STORAGE": connection_string,
        "SEGMENTS_CONTAINER": segments,
        "RUNS_CONTAINER": runs,
        "SENDGRID_BASE_URL": sendgrid_url,
        "LOCAL_DEV_SENDGRID_API_KEY": sendgrid_key,
        "DESTINATIONS_JSON": config_text,
    }


def upload_segment(connection_string: str, container: str, blob: str, data: bytes) -> None:
    segments = BlobServiceClient.from_connection_string(connection_string).get_container_client(container)
    if not segments.exists():
        segments.create_container()
    segments.upload_blob(blob, data, overwrite=True)


@dataclass
class LocalServices:
    azurite: Azurite
    simulator: Simulator
    config: dict[str, Any]

    @property
    def connection_string(self) -> str:
        return self.azurite.connection_string

    def stop(self) -> None:
        self.simulator.stop()
        self.azurite.stop()


def start_local_services(config_path: Path = SAMPLE_CONFIG) -> LocalServices:
    """Start Azurite and the simulator and point this process's app settings at them."""
    config_text = config_path.read_text(encoding="utf-8")
    config = json.loads(config_text)
    azurite = start_azurite()
    simulator = Simulator(api_keys={DEV_KEY: None}, validate_openapi=False)
    try:
        simulator.start()
        prepare_simulator(simulator, config)
    except BaseException:
        simulator.stop()
        azurite.stop()
        raise
    os.environ.update(local_settings(azurite.connection_string, simulator.base_url, config_text))
    os.environ.pop("KEY_VAULT_URL", None)
    reset_service(None)
    return LocalServices(azurite, simulator, config)


def add_sample_options(parser: argparse.ArgumentParser) -> None:
    """What both local programs take: the destinations and the segment file they start with."""
    parser.add_argument("--config", type=Path, default=SAMPLE_CONFIG, help="destinations JSON")
    parser.add_argument("--segment", type=Path, default=SAMPLE_SEGMENT, help="segment file uploaded at start")
    parser.add_argument("--blob", default=SAMPLE_BLOB, help="blob name to upload it as")


def start_with_sample(args: argparse.Namespace) -> LocalServices:
    """Log to stderr, start the stand-ins, upload `--segment` as `--blob` and fire the blob trigger on it as the
    host would on its Event Grid event: both programs begin with one real run (stop the services when done)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)-7s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("azure", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    services = start_local_services(args.config)
    try:
        upload_segment(services.connection_string, SEGMENTS_CONTAINER, args.blob, args.segment.read_bytes())
        shown = args.segment.relative_to(ROOT) if args.segment.is_relative_to(ROOT) else args.segment
        print(f"uploaded {shown} to Azurite {SEGMENTS_CONTAINER}/{args.blob}", file=sys.stderr)
        fire_blob_trigger(SEGMENTS_CONTAINER, args.blob)
    except BaseException:
        services.stop()
        raise
    return services
