"""Forgetting a destination (`python -m shared.cli forget-destination NAME [--remove-from-list]`).

Its state goes: snapshot, checkpoint, current files, the receipts of its segment files and the rejects files
of its runs (they hold values from its segments); its reports stay (counts only). With `remove_from_list`,
first the contacts its snapshot says it exported are taken off its list: list membership only, a contact is
never deleted (other lists or destinations may hold it). Removing a destination from the configuration
already stops all traffic to it; this cleans up after it.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from shared.config.destinations import Destination
from shared.sendgrid.client import SendGridClient
from shared.state.run_store import RunStore
from shared.state.sync_state import SyncState


def forget_destination(runs: RunStore, name: str, destination: Destination | None, state: SyncState,
                       client: SendGridClient | None, *, lock_wait: float = 300.0) -> dict[str, Any]:
    """Remove the destination's state (under its lock); `client`: also take its contacts off its list.
    `destination` None: one no longer configured (its receipts, found by its segment prefixes, then stay)."""
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
        counts["receipts_deleted"] = _delete_receipts(runs, destination) if destination is not None else 0
        for blob in list(container.list_blobs(name_starts_with=f"rejects/{name}-")):
            container.delete_blob(blob.name)
            counts["rejects_files_deleted"] += 1
    finally:
        state.release()
    with contextlib.suppress(ResourceNotFoundError):
        container.delete_blob(f"state/{name}/lock")
    return counts


def _snapshot_emails(container: Any, name: str) -> list[str]:
    try:
        text = container.download_blob(f"state/{name}/snapshot.txt").readall().decode()
    except ResourceNotFoundError:
        return []
    return [line.rsplit(" ", 1)[-1] for line in text.splitlines()[1:] if line]


def _delete_receipts(runs: RunStore, destination: Destination) -> int:
    """Receipts of files under the destination's segment prefixes (their next upload is exported afresh)."""
    deleted = 0
    for blob in list(runs.container.list_blobs(name_starts_with="receipts/")):
        try:
            receipt = json.loads(runs.container.download_blob(blob.name).readall())
        except (ResourceNotFoundError, ValueError):
            continue
        name = str(receipt.get("blob", ""))
        if any(name.startswith(prefix) for prefix in destination.segments):
            with contextlib.suppress(ResourceNotFoundError):
                runs.container.delete_blob(blob.name)
                deleted += 1
    return deleted
