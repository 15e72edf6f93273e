"""One erasure run: every address found and deleted in every SendGrid account, then out of all stored state.

    1. the addresses' digests join the do-not-export set first, so an export starting now skips them;
    2. every destination's lock is taken (an export already running finishes first, and whatever it sent is
       found below), so no snapshot changes under the scrub;
    3. per SendGrid account (API key secret and region): search (100 a call), delete the contacts found
       (DELETE /v3/marketing/contacts, chunked to the URL limit), then search again until SendGrid no
       longer finds them: deletion is asynchronous, and no address is counted deleted while its contact
       can still be found;
    4. the addresses leave every snapshot and every stored rejects file;
    5. the request (the one blob holding the addresses) is deleted once nothing is left to do.

Every step is idempotent, so a run that is killed or fails part-way is simply run again (the timer's sweep,
a redelivered trigger, or `cli erase --resume`) and ends complete. The report holds counts only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from azure.core.exceptions import AzureError

from shared.config.destinations import Destination
from shared.errors import ExportError
from shared.mapping.email_rules import normalise_email
from shared.privacy.donotexport import DoNotExportStore
from shared.privacy.requests import ErasureRequest, ErasureStore
from shared.privacy.scrub import scrub_rejects, scrub_snapshot
from shared.sendgrid.client import SendGridClient
from shared.sendgrid.errors import SendGridError
from shared.state.lock import DestinationBusy, LockLost
from shared.state.run_store import RunStore, utc_now

log = logging.getLogger(__name__)


class Lockable(Protocol):
    """A destination's lock as the erasure uses it (shared.state.sync_state.SyncState)."""

    def acquire(self, wait: float = 0.0) -> None: ...

    def ensure_lock(self) -> None: ...

    def release(self) -> None: ...


@dataclass
class EraserParts:
    """What an erasure needs, wired by the service (shared.service.erasure_service)."""

    store: ErasureStore
    runs: RunStore
    do_not_export: DoNotExportStore
    hmac_key: Callable[[], bytes]
    destinations: Sequence[Destination]
    client_for: Callable[[Destination], SendGridClient]
    state_for: Callable[[Destination], Lockable]
    lock_wait: float = 300.0
    verify_timeout: float = 120.0  # how long to wait for SendGrid's deletion jobs before saying "incomplete"
    poll_interval: float = 1.0
    sleep: Callable[[float], None] = time.sleep


def blank_report(request: ErasureRequest, status: str = "queued") -> dict[str, Any]:
    return {"erasure_id": request.id, "reference": request.reference, "via": request.via, "status": status,
            "requested": len(request.emails), "invalid": 0, "found": 0, "deleted": 0, "not_found": 0,
            "errors": 0, "still_present": 0, "accounts": 0, "snapshot_entries_removed": 0,
            "rejects_files_rewritten": 0, "rejects_rows_removed": 0, "attempts": 0, "error": None, "notes": [],
            "received_at": utc_now(), "finished_at": None}


def run_erasure(parts: EraserParts, erasure_id: str) -> dict[str, Any] | None:
    """Run (or resume) one stored request; its report, or None for an unknown ID."""
    request = parts.store.load_request(erasure_id)
    report = parts.store.load_report(erasure_id)
    if request is None:
        return report  # done already (the request is deleted once complete), or never made
    report = report or blank_report(request)
    report.update(status="running", attempts=int(report.get("attempts", 0)) + 1, error=None, notes=[])
    parts.store.save_report(report)
    try:
        _erase(parts, request, report)
    except (SendGridError, AzureError, DestinationBusy, LockLost, ExportError) as exc:
        # Counts so far stay; the request stays, and the next attempt starts again from the top.
        report.update(status="failed", error=f"{type(exc).__name__}: {_safe(exc)}; the erasure is retried "
                                             "(the next scheduled run, or `python -m shared.cli erase --resume`)")
    report["finished_at"] = utc_now()
    parts.store.save_report(report)
    if report["status"] == "completed":
        parts.store.delete_request(erasure_id)
    log.info("erasure %s: %s (found=%s deleted=%s not_found=%s errors=%s still_present=%s)", erasure_id,
             report["status"], report["found"], report["deleted"], report["not_found"], report["errors"],
             report["still_present"])
    return report


def _erase(parts: EraserParts, request: ErasureRequest, report: dict[str, Any]) -> None:
    valid: set[str] = set()
    for email in request.emails:
        normalised = normalise_email(email)[0]
        if normalised is not None:
            valid.add(normalised)
    report["invalid"] = len(request.emails) - len(valid)
    if valid:
        parts.do_not_export.add(parts.hmac_key(), valid)
    held: dict[str, Lockable] = {}
    deadline = time.monotonic() + parts.lock_wait  # for all the locks: an HTTP request must answer in time
    try:
        for destination in sorted(parts.destinations, key=lambda d: d.name):  # one order: no two erasures deadlock
            state = parts.state_for(destination)
            state.acquire(wait=max(0.0, deadline - time.monotonic()))
            held[destination.name] = state
        found, still, refused = _delete_everywhere(parts, request, sorted(valid), report)
        found |= set(request.found)
        report.update(found=len(found), still_present=len(still), deleted=len(found - still),
                      errors=len(refused), not_found=len(valid - found - refused))
        locks = {name: state.ensure_lock for name, state in held.items()}
        report["snapshot_entries_removed"] += _scrub_snapshots(parts, valid, locks)  # over every attempt
        files, rows = scrub_rejects(parts.runs, {email.strip().lower() for email in request.emails} | valid)
        report["rejects_files_rewritten"] += files
        report["rejects_rows_removed"] += rows
    finally:
        for state in held.values():
            state.release()
    report["status"] = "completed" if not report["still_present"] else "incomplete"
    if refused:
        report["notes"].append(
            f"{len(refused)} address(es) SendGrid would not search (longer than 100 characters, or invalid to "
            "it): no contact could be found or deleted for them; they are in the do-not-export set")


def _delete_everywhere(parts: EraserParts, request: ErasureRequest, emails: list[str],
                       report: dict[str, Any]) -> tuple[set[str], set[str], set[str]]:
    """(found in some account, still found after the wait, refused by a search) over every account.

    What was found is kept with the request as soon as its deletion is accepted: an attempt stopped while
    waiting for SendGrid, run again, finds the contacts gone and counts them deleted, not "not found"."""
    accounts: dict[tuple[str, str], Destination] = {}
    for destination in parts.destinations:
        accounts.setdefault((destination.api_key_secret, destination.region), destination)
    report["accounts"] = len(accounts)
    found: set[str] = set()
    still: set[str] = set()
    refused: set[str] = set()
    for destination in accounts.values():
        if not emails:
            break
        with parts.client_for(destination) as client:
            left_out: list[str] = []
            ids = client.search_emails(emails, left_out)
            refused.update(left_out)
            if ids:
                client.delete_contacts(ids.values())
                found.update(ids)
                if not found <= set(request.found):
                    request.found[:] = sorted(found | set(request.found))
                    parts.store.save_request(request, new=False)
                still.update(_wait_until_gone(parts, client, sorted(ids)))
    return found, still, refused - found


def _wait_until_gone(parts: EraserParts, client: SendGridClient, emails: list[str]) -> set[str]:
    """The addresses SendGrid still finds once its deletion jobs had `verify_timeout` seconds."""
    deadline = time.monotonic() + parts.verify_timeout
    interval = parts.poll_interval
    while True:
        remaining = set(client.search_emails(emails))
        if not remaining or time.monotonic() >= deadline:
            return remaining
        parts.sleep(interval)
        interval = min(interval * 2, 15.0)
        emails = sorted(remaining)


def _scrub_snapshots(parts: EraserParts, erased: set[str], locks: dict[str, Callable[[], None]]) -> int:
    """Every `state/<name>/snapshot.txt`, also of destinations no longer configured (no run holds those)."""
    names = {blob.name.split("/")[1] for blob in parts.runs.container.list_blobs(name_starts_with="state/")
             if blob.name.endswith("/snapshot.txt")} if parts.runs.container.exists() else set()
    removed = 0
    for name in sorted(names):
        removed += scrub_snapshot(parts.runs.container, name, erased, locks.get(name, _no_lock))
    return removed


def _no_lock() -> None:
    """A destination no longer configured: no run can write its snapshot."""


def _safe(exc: Exception) -> str:
    """The error's own text: the app's and SendGrid's errors never hold an address (shared.sendgrid.errors)."""
    text = str(exc)
    return "(details withheld)" if "@" in text else text
