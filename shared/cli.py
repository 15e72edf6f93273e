"""Command line over the same engine: export a local file or blob URL to a destination, or preview it.

    python -m shared.cli export samples/segments/vip-customers/vip_customers_1.csv \
        --config samples/destinations.local.json --destination vip-customers [--dry-run]
    python -m shared.cli sync vip-customers [--blob NAME] [--full]
    python -m shared.cli erase [EMAIL ...] [--file CSV] [--reference REF] | erase --resume
    python -m shared.cli lift-suppression EMAIL ...
    python -m shared.cli forget-destination NAME [--remove-from-list]

`export --rejects FILE` also writes every rejected row with its value to a local CSV.
`export` sends one file and keeps no sync state (every contact is sent, nothing is removed); `sync` runs a
destination exactly as the functions do, with its snapshot, checkpoint, lock and mirror removals.

Settings come from the environment as in the Function App (SENDGRID_BASE_URL, KEY_VAULT_URL or, for
development only, LOCAL_DEV_SENDGRID_API_KEY; AzureWebJobsStorage for blob URLs).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import uuid
from pathlib import Path
from typing import Any

from azure.core.exceptions import AzureError

from shared.config.destinations import DestinationsDocument, load_destinations
from shared.config.secrets import ApiKeyProvider
from shared.config.settings import AppSettings, setting
from shared.errors import ExportError
from shared.pipeline.engine import ExportOptions, export_segment
from shared.pipeline.report import MAX_REPORTED_DETAILS
from shared.privacy.requests import parse_csv
from shared.sendgrid.client import SendGridClient
from shared.sendgrid.errors import SendGridError
from shared.service.erasure_service import (
    InvalidErasureRequest,
    forget_destination,
    lift_suppression,
    resume_erasures,
    submit_erasure,
    suppression_from_environment,
)
from shared.service.export_service import ExportService, new_run_id
from shared.source.sources import source_for


def _destinations(config: str | None) -> DestinationsDocument:
    if config:
        return load_destinations(Path(config).read_text(encoding="utf-8"), origin=config)
    text = setting("DESTINATIONS_JSON")
    if not text:
        raise ExportError("no destinations: pass --config FILE or set DESTINATIONS_JSON")
    return load_destinations(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shared.cli", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="export one segment file (path or blob URL) to a destination")
    export.add_argument("segment", help="local path, or https://<account>.blob.core.windows.net/<container>/<blob>")
    export.add_argument("--destination", required=True, help="destination name from the configuration")
    export.add_argument("--config", help="destinations JSON file (default: the DESTINATIONS_JSON setting)")
    export.add_argument("--dry-run", action="store_true", help="map and validate only; print a preview")
    export.add_argument("--preview", type=int, default=10, help="contacts to show in a dry run")
    export.add_argument("--report", help="also write the run report to this file")
    export.add_argument("--rejects", help="write every rejected row with its value (CSV) to this file; the report "
                                          f"lists only the first {MAX_REPORTED_DETAILS} and counts all of them")
    sync = sub.add_parser("sync", help="run a destination's export as the functions do: from the segments "
                                       "container, with its sync state (incremental, mirror, lock, resume)")
    sync.add_argument("destination", help="destination name (from the DESTINATIONS_JSON setting)")
    sync.add_argument("--blob", help="a segment blob to read instead of its segment's current file, this run only "
                                     "(default: every segment's current file)")
    sync.add_argument("--full", action="store_true", help="re-send every contact, not only new and changed ones")
    sync.add_argument("--report", help="also write the run report to this file")
    _privacy_commands(sub)
    return parser


def _privacy_commands(sub: Any) -> None:
    erase = sub.add_parser("erase", help="erase people: delete their contacts, clean the state, never export "
                                         "them again (as POST /api/erasures)")
    erase.add_argument("emails", nargs="*", help="addresses to erase")
    erase.add_argument("--file", help="a CSV of addresses (first column)")
    erase.add_argument("--reference", default="", help="the request's ticket or case ID (no address)")
    erase.add_argument("--resume", action="store_true", help="run every unfinished erasure again")
    lift = sub.add_parser("lift-suppression", help="let addresses be exported again (a person who opted in again)")
    lift.add_argument("emails", nargs="+")
    forget = sub.add_parser("forget-destination", help="delete a destination's state (snapshot, checkpoint, "
                                                       "receipts, rejects files)")
    forget.add_argument("name")
    forget.add_argument("--remove-from-list", action="store_true",
                        help="first take its exported contacts off its list (contacts are never deleted)")


def _privacy(args: argparse.Namespace) -> int:
    """erase, lift-suppression, forget-destination: through the service, as the functions do."""
    try:
        service = ExportService.from_environment()
        if args.command == "forget-destination":
            result: Any = forget_destination(service, args.name, remove_from_list=args.remove_from_list)
        elif args.command == "lift-suppression":
            result = {"lifted": lift_suppression(service, args.emails)}
        elif args.resume:
            erasures = resume_erasures(service)
            done = all(erasure["status"] == "completed" for erasure in erasures)
            result = {"status": "completed" if done else "incomplete", "erasures": erasures}
        else:
            emails = list(args.emails)
            if args.file:
                emails += parse_csv(Path(args.file).read_bytes(), args.file)
            result = submit_erasure(service, {"emails": emails, "reference": args.reference}, answering=False)
    except KeyError as exc:
        return _print_result({"status": "failed", "error": f"unknown destination {exc}"}, None, 2)
    except (ExportError, AzureError, InvalidErasureRequest, SendGridError) as exc:
        error = str(exc) if not isinstance(exc, AzureError) else f"storage unavailable ({type(exc).__name__})"
        return _print_result({"status": "failed", "error": error}, None, 2)
    return _print_result(result, None, 0 if result.get("status", "completed") == "completed" else 1)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.command in ("erase", "lift-suppression", "forget-destination"):
        return _privacy(args)
    if args.command == "sync":
        return _sync(args.destination, args.blob, full=args.full, report_path=args.report)

    try:
        destinations = _destinations(args.config)
        destination = destinations.get(args.destination)
        if destination is None:
            names = ", ".join(d.name for d in destinations.destinations)
            raise ExportError(f"unknown destination {args.destination!r} (configured: {names})")
        if not destination.has_consent and not args.dry_run:  # "refused", as the functions and `sync` say
            return _print_result({"status": "refused", "error": f"destination {destination.name} has no recorded "
                                  "consent: record who agreed to the data-privacy terms in its 'consent' before "
                                  "exporting"}, args.report, 2)
        source, name = source_for(args.segment)
        client = None
        keys = ApiKeyProvider.from_settings()
        suppression = suppression_from_environment(keys)  # erased people are never sent, from here either
        if not args.dry_run or destination.field_mapping.custom_fields:
            secret = destination.api_key_secret
            base_url = AppSettings.from_environment().base_url_for(destination.region)
            client = SendGridClient(keys.get(secret), base_url=base_url, on_unauthorized=lambda: keys.refresh(secret))
        run_id = f"cli-{uuid.uuid4().hex[:12]}"
        try:
            result = export_segment(destination, source, name, client, run_id=run_id,
                                    options=ExportOptions(dry_run=args.dry_run, preview_limit=args.preview,
                                                          suppression=suppression))
        finally:
            if client is not None:
                client.close()
    except ExportError as exc:
        return _print_result({"status": "failed", "error": str(exc)}, args.report, 2)
    try:
        report = result.report.to_dict()
        if args.rejects:
            report["rejects_file"] = None
            if result.rejects.count:
                with Path(args.rejects).open("wb") as rejects:  # streamed from the run's temporary file
                    for chunk in result.rejects.chunks():
                        rejects.write(chunk)
                report["rejects_file"] = args.rejects
    finally:
        result.close()
    if args.dry_run:
        report["preview"] = [json.loads(c) for c in result.preview]
    return _print_result(report, args.report, 0 if result.report.status in ("succeeded", "dry_run") else 1)


def _sync(name: str, blob: str | None, *, full: bool, report_path: str | None) -> int:
    """The functions' path (ExportService): the same run state, so a CLI run and a triggered run never
    interleave and the next refresh knows what this one sent."""
    try:
        service = ExportService.from_environment()
        destination = service.destinations.get(name)
        if destination is None:
            names = ", ".join(d.name for d in service.destinations.destinations)
            raise ExportError(f"unknown destination {name!r} (configured: {names})")
        if blob is None and service.latest_segment(destination) is None:
            raise ExportError(f"no segment file under {destination.segments} in the segments container")
        report = service.export(destination, blob, run_id=new_run_id(destination.name), full=full,
                                lock_wait=service.trigger_lock_wait, trigger="cli")
        stored = service.report(report.run_id)
    except (ExportError, AzureError) as exc:
        error = str(exc) if isinstance(exc, ExportError) else f"storage unavailable ({type(exc).__name__})"
        return _print_result({"status": "failed", "error": error}, report_path, 2)
    return _print_result(stored or report.to_dict(), report_path, 0 if report.status == "succeeded" else 1)


def _print_result(data: dict[str, Any], report_path: str | None, code: int) -> int:
    text = json.dumps(data, indent=2)
    if report_path:
        Path(report_path).write_text(text, encoding="utf-8")
    print(text)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
