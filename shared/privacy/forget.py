"""Forgetting a destination (`python -m shared.cli forget-destination NAME [--remove-from-list]`).

Its state goes: snapshot, checkpoint, current files, and the receipts and rejects files of its runs (found
by their run IDs, `<name>-<stamp>-<hex>`, so also for a destination no longer configured, and never those of
a destination whose name merely starts with this one); its reports and their run-history entries
(`index/<name>/`) stay: counts only. With `remove_from_list`,
first the contacts its snapshot says it exported are taken off its list: list membership only, a contact is
never deleted (other lists or destinations may hold it). Removing a destination from the configuration
already stops all traffic to it; this cleans up after it.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from shared.config.destinations import Destination
from shared.sendgrid.client import SendGridClient
from shared.state.run_store import RunStore
from shared.state.snapshot_lines import entry_email, has_fields
from shared.state.sync_state import SyncState


def forget_destination(runs: RunStore, name: str, destination: Destination | None, state: SyncState,
                       client: SendGridClient | None, *, lock_wait: float = 300.0) -> dict[str, Any]:
    """Remove the destination's state (under its lock); `client`: also take its contacts off its list.
    `destination` None: one no longer configured (its list cannot be emptied then)."""
    container = runs.container
    counts: dict[str, Any] = {"destination": name, "removed_from_list": 0, "not_found": 0,
                              "state_blobs_deleted": 0, "receipts_deleted": 0, "rejects_files_deleted": 0}
    if not container.exists():
        return counts
    state.acquire(wait=lock_wait)
    try:
        if client is not None and destination is not None:
            emails = _snapshot_emails(container, name)
            ids = client.search_emails(emails) if emails else {}
            removed: list[str] = []
            client.remove_from_list(destination.list_id_str, ids.values(), removed)
            counts["removed_from_list"], counts["not_found"] = len(removed), len(emails) - len(ids)
        prefix = f"state/{name}/"
        for blob in list(container.list_blobs(name_starts_with=prefix)):
            if blob.name != prefix + "lock":
                state.ensure_lock()
                container.delete_blob(blob.name)
                counts["state_blobs_deleted"] += 1
        run_of_it = _run_ids(name)
        counts["receipts_deleted"] = _delete_receipts(runs, run_of_it)
        for blob in list(container.list_blobs(name_starts_with=f"rejects/{name}-")):
            if run_of_it.fullmatch(blob.name.removeprefix("rejects/").removesuffix(".csv")):
                container.delete_blob(blob.name)
                counts["rejects_files_deleted"] += 1
    finally:
        state.release()
    with contextlib.suppress(ResourceNotFoundError):
        container.delete_blob(f"state/{name}/lock")
    return counts


def _snapshot_emails(container: Any, name: str) -> list[str]:
    try:
        data = container.download_blob(f"state/{name}/snapshot.txt").readall()
    except ResourceNotFoundError:
        return []
    header, *lines = data.splitlines() or [b"{}"]
    fields = has_fields(json.loads(header))
    return [entry_email(line, fields).decode() for line in lines if line]


def _run_ids(name: str) -> re.Pattern[str]:
    """The run IDs of this destination (shared.service.common.new_run_id; older ones without milliseconds)."""
    return re.compile(re.escape(name) + r"-\d{8}T\d{6}(\d{3})?Z-[0-9a-f]+")


def _delete_receipts(runs: RunStore, run_of_it: re.Pattern[str]) -> int:
    """Receipts its runs claimed (that version of a file is exported afresh when its event comes again); the
    receipt of a file several destinations share is per destination, so the others' stay."""
    deleted = 0
    for blob in list(runs.container.list_blobs(name_starts_with="receipts/")):
        try:
            receipt = json.loads(runs.container.download_blob(blob.name).readall())
        except (ResourceNotFoundError, ValueError):
            continue
        if run_of_it.fullmatch(str(receipt.get("run_id", ""))):
            with contextlib.suppress(ResourceNotFoundError):
                runs.container.delete_blob(blob.name)
                deleted += 1
    return deleted
