"""Per-destination sync state in Blob Storage (`state/<destination>/`), as one object a run holds:

- the lock (shared.state.lock): one run per destination, a renewed blob lease;
- the snapshot (shared.state.snapshot): what the list holds, for incremental and mirror runs;
- the checkpoint (`checkpoint.json`): the batches SendGrid accepted for one plan (same files, same snapshot,
  same mapping, full or not); a re-run of that plan skips them and polls their jobs. With each batch go the
  contacts SendGrid refused (400) and the batch was resent without (`set_aside`: spool position, field,
  reason): a resumed run rebuilds the batch with them, so it must drop them again, or their rows would be
  credited to a job that never imported them;
- the current files (`source.json`): the file of each segment the last successful run exported.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import ContainerClient

from shared.state.lock import LEASE_SECONDS, DestinationBusy, DestinationLock, LeaseTooShort, LockLost
from shared.state.snapshot import SnapshotStore
from shared.state.snapshot_entries import Snapshot
from shared.state.snapshot_merge import EntryBlock

__all__ = ["LEASE_SECONDS", "DestinationBusy", "LeaseTooShort", "LockLost", "SetAside", "Snapshot", "SyncState"]

# A contact SendGrid refused in an accepted batch: (spool position, reported field, reason).
SetAside = tuple[int, str, str]


class SyncState:
    """State of one destination, bound to the runs container."""

    def __init__(self, container: ContainerClient, destination: str, *, config_digest: str,
                 list_id: str | None = None, lease_seconds: int | None = None) -> None:
        self._container = container
        self.destination = destination
        self.config_digest = config_digest
        self._prefix = f"state/{destination}/"
        self.lock = DestinationLock(container, destination,
                                    lease_seconds if lease_seconds is not None else LEASE_SECONDS)
        self._snapshots = SnapshotStore(container, destination, config_digest=config_digest, list_id=list_id,
                                        ensure_lock=self.lock.ensure_lock)
        self.snapshot: Snapshot | None = None
        self.run_key = ""
        self.resume: dict[int, str] = {}
        self.resume_set_aside: dict[int, list[SetAside]] = {}  # batch number -> contacts its job never had

    # -- lock (shared.state.lock) ----------------------------------------------------------------------

    @property
    def lease_seconds(self) -> int:
        return self.lock.lease_seconds

    def acquire(self, wait: float = 0.0) -> None:
        self.lock.acquire(wait)

    def ensure_lock(self) -> None:
        self.lock.ensure_lock()

    def guard_change(self, worst_case: float) -> None:
        self.lock.guard_change(worst_case)

    def held_by_a_run(self) -> bool:
        return self.lock.held_by_a_run()

    def release(self) -> None:
        self._snapshots.close()
        self.lock.release()

    # -- snapshot (shared.state.snapshot) --------------------------------------------------------------

    def load(self, *, source_id: str, full: bool) -> None:
        """Read the snapshot and the checkpoint of this plan.

        `full`: send every contact again; the snapshot is then only the membership that mirror mode
        removes from (without it, contacts that left the segment would stay on the list for good).
        """
        self.snapshot = self._snapshots.load()
        if full and self.snapshot is not None:
            self.snapshot.trusted = False
        snapshot_digest = self.snapshot.digest if self.snapshot else "none"
        trust = "incremental" if self.snapshot is not None and self.snapshot.trusted else "full"
        self.run_key = hashlib.sha256(
            f"{source_id}\n{snapshot_digest}\n{self.config_digest}\n{trust}".encode()).hexdigest()
        checkpoint = self._read_json(self._prefix + "checkpoint.json")
        if checkpoint and checkpoint.get("run_key") == self.run_key:
            self.resume = {int(k): str(v) for k, v in checkpoint.get("accepted", {}).items()}
            # absent from checkpoints written before set-aside contacts were recorded
            self.resume_set_aside = {int(k): [(int(position), str(field), str(reason))
                                              for position, field, reason in entries]
                                     for k, entries in checkpoint.get("set_aside", {}).items()}
        else:
            self.resume = {}
            self.resume_set_aside = {}

    def snapshot_emails(self, positions: set[int]) -> dict[int, str]:
        """Emails of the snapshot entries at these positions (contacts that left the segments)."""
        return self._snapshots.snapshot_emails(positions)

    def snapshot_emails_by_key(self, keys: set[int]) -> dict[int, str]:
        """key -> email of the snapshot's entries with these keys (those it holds)."""
        snapshot = self.snapshot
        positions = {snapshot.position(key): key for key in keys} if snapshot is not None else {}
        positions.pop(-1, None)
        return {positions[at]: email for at, email in self.snapshot_emails(set(positions)).items()}

    def write_snapshot(self, exported: Iterable[EntryBlock], dropped: set[int]) -> int:
        """See SnapshotStore.write_snapshot; the snapshot this state loaded is the one merged."""
        self._snapshots.snapshot = self.snapshot
        return self._snapshots.write_snapshot(exported, dropped)

    # -- checkpoint and current files ------------------------------------------------------------------

    def set_aside(self, number: int, contacts: Sequence[SetAside]) -> None:
        """Contacts SendGrid refused in batch `number`, which its job lacks; saved with its checkpoint."""
        if contacts:
            self.resume_set_aside[number] = list(contacts)
        else:
            self.resume_set_aside.pop(number, None)

    def batch_accepted(self, number: int, job_id: str) -> None:
        """Checkpoint an accepted batch, with the contacts `set_aside` recorded for it."""
        self.ensure_lock()
        self.resume[number] = job_id
        body = json.dumps({"run_key": self.run_key, "accepted": {str(k): v for k, v in self.resume.items()},
                           "set_aside": {str(k): [list(entry) for entry in v]
                                         for k, v in self.resume_set_aside.items()}})
        self._container.get_blob_client(self._prefix + "checkpoint.json").upload_blob(body.encode(), overwrite=True)

    def record_sources(self, files: Sequence[Any]) -> None:
        """Record the segment files the list now reflects (`state/<destination>/source.json`), for operators;
        written only by a run that exported them. Written, not compared first: a run that exported has a new
        file to record almost always, and a read to compare cost as much as the write."""
        path = self._prefix + "source.json"
        current = {"segments": [{"segment": f.segment, "name": f.name, "entity": f.entity, "etag": f.etag,
                                 "last_modified": f.last_modified.isoformat() if f.last_modified else None}
                                for f in files]}
        self.ensure_lock()
        self._container.get_blob_client(path).upload_blob(json.dumps(current).encode(), overwrite=True)

    def clear_checkpoint(self) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            self._container.delete_blob(self._prefix + "checkpoint.json")
        self.resume = {}
        self.resume_set_aside = {}

    def _read_json(self, path: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self._container.download_blob(path).readall())
        except ResourceNotFoundError:
            return None
        return data
