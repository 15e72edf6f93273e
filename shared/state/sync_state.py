"""Per-destination sync state in Blob Storage: what was last exported, where an interrupted run stopped,
and who is running now.

- Snapshot (`state/<destination>/snapshot.txt`): one line per exported contact, sorted by email key:
  `<key> <fingerprint> <email>`. Keys and fingerprints load into two arrays (16 bytes a contact), so an
  unchanged refresh is a binary search per contact, not a dictionary of a million strings. Emails are
  only read back for contacts that left the segment (mirror mode).
  A forced full re-sync, or a changed mapping on the same list, still loads it, as membership only: its
  fingerprints are not trusted (every contact is sent again) but mirror mode still removes the contacts
  that left the segment. A different list (or an unknown list) discards it.
- Checkpoint (`state/<destination>/checkpoint.json`): the batches SendGrid accepted for one plan (same
  file version, same snapshot, same mapping, full or not); a re-run of that plan skips them and polls
  their jobs. With each batch go the contacts SendGrid refused (400) and the batch was resent without
  (`set_aside`: spool position, field, reason): a resumed run rebuilds the batch with them, so it must drop
  them again, or their rows would be credited to a job that never imported them.
- Current files (`state/<destination>/source.json`): the file of each segment the last successful run
  exported (name, entity, ETag, Last-Modified): what the list reflects, for operators.
- Lock (`state/<destination>/lock`): a blob lease (60 s, renewed while the run lives) so two runs for one
  destination never interleave; a dead run's lease simply expires. A run that finds its lease lost
  (another run took the lock after it expired) records nothing more: `LockLost` before every checkpoint
  and snapshot write.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import io
import json
import logging
import tempfile
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from azure.core.exceptions import AzureError, HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobLeaseClient, ContainerClient

from shared.config.time_budgets import LEASE_CALL_ATTEMPTS, LEASE_CALL_OPTIONS, LEASE_MARGIN_SECONDS
from shared.staging.spool import email_key

log = logging.getLogger(__name__)

LOCK_POLL_SECONDS = 5.0
LEASE_SECONDS = 60  # Blob Storage allows 15-60 s (or infinite, which a dead run would never give back)
SNAPSHOT_FORMAT = "segment-to-sendgrid snapshot v2"  # v2: xxh3 keys and fingerprints (shared.staging.spool)
V1_FORMAT = "segment-to-sendgrid snapshot v1"  # blake2b keys: rewritten as v2 when first loaded
# Fingerprint written for entries carried over from an untrusted snapshot: never equal to a real one (but
# for a 2**-64 chance), so the contact is sent again when it is next in the segment.
UNTRUSTED = 0

# A contact SendGrid refused in an accepted batch: (spool position, reported field, reason).
SetAside = tuple[int, str, str]


class DestinationBusy(Exception):
    """Another run holds this destination's lock."""


class LockLost(AzureError):
    """This run's lease on the destination lock is gone: it expired and another run may hold it now."""


class LeaseTooShort(LockLost):
    """The lease is held, but renewing it took so long that a request that changes SendGrid could outlive it."""


def _clock() -> float:
    """Seconds that keep counting while the process is paused or the machine sleeps (CLOCK_BOOTTIME on
    Linux): a lease runs out on storage's clock whatever happens to ours."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boottime) if boottime is not None else time.monotonic()


class Snapshot:
    def __init__(self, header: dict[str, Any], keys: array[int], fingerprints: array[int], *,
                 trusted: bool = True) -> None:
        self.header = header
        self.keys = keys
        self.fingerprints = fingerprints
        # False: membership only (full re-sync, or mapping changed): no contact counts as unchanged.
        self.trusted = trusted

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def digest(self) -> str:
        return str(self.header.get("digest", ""))

    def fingerprint(self, key: int) -> int | None:
        if not self.trusted:
            return None
        position = bisect.bisect_left(self.keys, key)
        if position < len(self.keys) and self.keys[position] == key:
            return self.fingerprints[position]
        return None


def _sorted_by_key(keys: array[int], indices: Iterator[int]) -> Iterator[int]:
    """Indices ordered by key, bucketed by the key's top byte so no million-entry list is ever built."""
    buckets: list[array[int]] = [array("L") for _ in range(256)]
    for index in indices:
        buckets[(keys[index] >> 56) & 0xFF].append(index)
    # Signed keys: buckets 128..255 hold the negative ones, which sort first.
    for bucket in (*buckets[128:], *buckets[:128]):
        yield from sorted(bucket, key=keys.__getitem__)


class SyncState:
    """State of one destination, bound to the runs container."""

    def __init__(self, container: ContainerClient, destination: str, *, config_digest: str,
                 list_id: str | None = None, lease_seconds: int | None = None) -> None:
        self._container = container
        self.destination = destination
        self.config_digest = config_digest
        self.list_id = list_id  # the snapshot's membership is kept across a config change only on the same list
        self.lease_seconds = lease_seconds if lease_seconds is not None else LEASE_SECONDS
        self._prefix = f"state/{destination}/"
        self._lease: BlobLeaseClient | None = None
        self._lease_guard = threading.Lock()  # the renewer thread and the run both renew
        self._lost = False
        self._renewed_at = 0.0  # when the last successful acquire or renewal was sent (_clock)
        self._renewer: threading.Thread | None = None
        self._stop = threading.Event()
        self.snapshot: Snapshot | None = None
        self.run_key = ""
        self.resume: dict[int, str] = {}
        self.resume_set_aside: dict[int, list[SetAside]] = {}  # batch number -> contacts its job never had

    # -- lock ----------------------------------------------------------------------------------------

    def acquire(self, wait: float = 0.0) -> None:
        """Take the destination's lock; wait up to `wait` seconds for a running export to finish first.

        Segment files are whole snapshots, so a trigger that arrives during a run of the same destination
        is worth waiting for (its file is newer), but not for ever: DestinationBusy after `wait`.
        """
        with contextlib.suppress(ResourceExistsError):
            self._container.create_container()
        lock = self._container.get_blob_client(self._prefix + "lock")
        with contextlib.suppress(ResourceExistsError):
            lock.upload_blob(b"", overwrite=False)
        deadline = time.monotonic() + wait
        while True:
            try:
                started = _clock()
                self._lease = lock.acquire_lease(lease_duration=self.lease_seconds, **LEASE_CALL_OPTIONS)
                self._renewed_at = started
                break
            except HttpResponseError as exc:
                if exc.status_code != 409:
                    raise
                if time.monotonic() >= deadline:
                    raise DestinationBusy(
                        f"another run of destination {self.destination} is in progress") from None
            time.sleep(min(LOCK_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
        self._lost = False
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew, name=f"lease-{self.destination}", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            try:
                self.ensure_lock()
            except LockLost:
                log.error("destination %s: this run lost its lock; it records no more state", self.destination)
                return
            except AzureError:  # storage unreachable too, not only an error answer
                log.warning("could not renew the lock of destination %s", self.destination)

    def ensure_lock(self) -> None:
        """Renew the lease now; LockLost if it is gone (no-op when this state was never locked).

        Each renewal call is short (LEASE_CALL_OPTIONS: no SDK retry, seconds-long timeouts) and tried twice,
        so a slow renewal cannot outlive the lease it renews.
        """
        with self._lease_guard:
            if self._lease is None:
                return
            if self._lost:
                raise LockLost(f"the lock of destination {self.destination} was lost")
            for attempt in range(1, LEASE_CALL_ATTEMPTS + 1):
                started = _clock()
                try:
                    self._lease.renew(**LEASE_CALL_OPTIONS)
                except HttpResponseError as exc:
                    if exc.status_code == 409:  # broken, or another lease holds it now
                        self._lost = True
                        raise LockLost(f"the lock of destination {self.destination} expired and was taken or "
                                       "broken; this run stopped recording state") from None
                    if attempt == LEASE_CALL_ATTEMPTS or exc.status_code is None or exc.status_code < 500:
                        raise
                    continue
                except AzureError:
                    if attempt == LEASE_CALL_ATTEMPTS:
                        raise
                    continue
                self._renewed_at = started
                return

    def lease_left(self) -> float:
        """Seconds the lease surely has left (counted from when its last renewal was sent)."""
        return self.lease_seconds - (_clock() - self._renewed_at)

    def guard_change(self, worst_case: float) -> None:
        """Before each request that changes SendGrid: renew the lease, and refuse a request that could still be
        running when the lease runs out (another run may then hold the destination and send a newer segment).

        A run paused past its lease (GC, SIGSTOP, a slow network) finds here, before it sends anything more,
        that another run took over: LockLost. No-op when this state holds no lock (dry runs, the CLI export).
        """
        if self._lease is None:
            return
        try:
            self.ensure_lock()
        except LockLost:
            raise
        except AzureError:
            # Storage did not answer: the lease is still surely ours while the time left since its last
            # renewal covers the request (an unexpired lease can only be broken by hand, never taken).
            if self.lease_left() < worst_case + LEASE_MARGIN_SECONDS:
                raise
            log.warning("could not renew the lock of destination %s; %.0fs of the lease are left, enough for the "
                        "next request", self.destination, self.lease_left())
        left = self.lease_left()
        if left < worst_case + LEASE_MARGIN_SECONDS:
            raise LeaseTooShort(f"the lease of destination {self.destination} has {left:.1f}s left after renewing, "
                                f"less than a request to SendGrid may take ({worst_case:.1f}s): storage answers too "
                                "slowly to send safely; nothing more was sent")

    def held_by_a_run(self) -> bool:
        """Whether a live run holds the destination's lock now (a dead run's lease expires within a minute)."""
        try:
            properties = self._container.get_blob_client(self._prefix + "lock").get_blob_properties()
        except ResourceNotFoundError:
            return False
        return str(properties.lease.status) == "locked"

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        if self._lease is not None:
            with contextlib.suppress(AzureError):  # storage may be down: the lease then simply expires
                self._lease.release(**LEASE_CALL_OPTIONS)
            self._lease = None

    # -- snapshot ------------------------------------------------------------------------------------

    def load(self, *, source_id: str, full: bool) -> None:
        """Read the snapshot and the checkpoint of this plan.

        `full`: send every contact again; the snapshot is then only the membership that mirror mode
        removes from (without it, contacts that left the segment would stay on the list for good).
        """
        self.snapshot = self._load_snapshot()
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

    def _load_snapshot(self, upgraded: bool = False) -> Snapshot | None:
        try:
            stream = self._container.download_blob(self._prefix + "snapshot.txt")
        except ResourceNotFoundError:
            return None
        keys, fingerprints = array("q"), array("q")
        with io.TextIOWrapper(io.BufferedReader(_ChunkReader(stream.chunks())), encoding="utf-8") as text:
            header = json.loads(text.readline())
            if header.get("format") == V1_FORMAT and not upgraded:
                text.close()
                self._upgrade_v1()
                return self._load_snapshot(upgraded=True)
            if header.get("format") != SNAPSHOT_FORMAT:
                return None
            trusted = header.get("config") == self.config_digest
            if not trusted:
                if self.list_id is None or header.get("list") != self.list_id:
                    log.info("destination %s: list changed since the last export; full sync", self.destination)
                    return None
                log.info("destination %s: mapping changed since the last export; full sync", self.destination)
            for line in text:
                key, fp, _ = line.split(" ", 2)
                keys.append(int(key))
                fingerprints.append(int(fp))
        return Snapshot(header, keys, fingerprints, trusted=trusted)

    def snapshot_emails(self, positions: set[int]) -> dict[int, str]:
        """Emails of the snapshot entries at these positions (contacts that left the segment)."""
        if not positions:
            return {}
        stream = self._container.download_blob(self._prefix + "snapshot.txt")
        found: dict[int, str] = {}
        with io.TextIOWrapper(io.BufferedReader(_ChunkReader(stream.chunks())), encoding="utf-8") as text:
            text.readline()
            for position, line in enumerate(text):
                if position in positions:
                    found[position] = line.rstrip("\n").split(" ", 2)[2]
        return found

    def write_snapshot(
        self,
        segment_keys: array[int],
        segment_fingerprints: array[int],
        segment_indices: Iterator[int],
        email_of: Callable[[int], str],
        confirmed: Callable[[int], bool],
        keep_absent: Callable[[int], bool],
    ) -> int:
        """Merge the previous snapshot with this run's outcome and store it; returns the entry count.

        A contact of this segment takes its new fingerprint only if `confirmed` (its import job completed,
        or it was unchanged); otherwise its previous entry stays, so the next refresh sends it again.
        Entries of contacts no longer in the segment stay while `keep_absent(position)` says so.
        A snapshot that would come out as it was (an unchanged refresh) is not uploaded again, and an
        unchanged contact keeps its stored line, so its email is not read back from the spool.
        """
        self.ensure_lock()
        old = self.snapshot
        carried_fp = None if old is None or old.trusted else UNTRUSTED
        changed = old is None or not old.trusted
        with tempfile.TemporaryFile() as out:
            digest = hashlib.sha256()
            count = 0

            def emit(key: int, fp: int, email: str) -> None:
                nonlocal count
                line = f"{key} {fp} {email}\n".encode()
                out.write(line)
                digest.update(line)
                count += 1

            old_lines = self._old_lines(carried_fp) if old is not None else iter(())
            pending_old = next(old_lines, None)
            old_position = 0
            for index in _sorted_by_key(segment_keys, segment_indices):
                key = segment_keys[index]
                while pending_old is not None and pending_old[0] < key:
                    if keep_absent(old_position):
                        emit(*pending_old)
                    else:
                        changed = True
                    pending_old, old_position = next(old_lines, None), old_position + 1
                previous = None
                if pending_old is not None and pending_old[0] == key:
                    previous = pending_old
                    pending_old, old_position = next(old_lines, None), old_position + 1
                if confirmed(index):
                    fp = segment_fingerprints[index]
                    if previous is not None and previous[1] == fp:
                        emit(*previous)  # same key and same contact JSON (which holds the email)
                    else:
                        emit(key, fp, email_of(index))
                        changed = True
                elif previous is not None:
                    emit(*previous)
            while pending_old is not None:
                if keep_absent(old_position):
                    emit(*pending_old)
                else:
                    changed = True
                pending_old, old_position = next(old_lines, None), old_position + 1
            if changed:
                self._store_snapshot(out, {"config": self.config_digest, "list": self.list_id, "count": count,
                                           "digest": digest.hexdigest()})
        return count

    def _store_snapshot(self, lines: Any, header: dict[str, Any]) -> None:
        lines.seek(0)
        body = _Concat(json.dumps({"format": SNAPSHOT_FORMAT, **header}).encode() + b"\n", lines)
        self._container.get_blob_client(self._prefix + "snapshot.txt").upload_blob(body, overwrite=True)

    def _upgrade_v1(self) -> None:
        """Rewrite a v1 snapshot (blake2b keys) as v2: keys computed again from its emails, and sorted again.

        Its fingerprints cannot be recomputed (the contacts' JSON is not stored), so they become UNTRUSTED:
        each contact is sent once more, while mirror mode keeps the membership and still removes those who
        left. Memory: two arrays (16 bytes an entry); the lines wait in a local file.
        """
        self.ensure_lock()
        stream = self._container.download_blob(self._prefix + "snapshot.txt")
        with tempfile.TemporaryFile() as old, tempfile.TemporaryFile() as out:
            for chunk in stream.chunks():
                old.write(chunk)
            old.seek(0)
            header = json.loads(old.readline())
            keys, offsets = array("q"), array("Q")
            offset = old.tell()
            for line in old:
                keys.append(email_key(line.rstrip(b"\n").split(b" ", 2)[2].decode()))
                offsets.append(offset)
                offset += len(line)
            digest = hashlib.sha256()
            for index in _sorted_by_key(keys, iter(range(len(keys)))):
                old.seek(offsets[index])
                email = old.readline().rstrip(b"\n").split(b" ", 2)[2].decode()
                line = f"{keys[index]} {UNTRUSTED} {email}\n".encode()
                out.write(line)
                digest.update(line)
            self._store_snapshot(out, {"config": header.get("config"), "list": header.get("list"),
                                       "count": len(keys), "digest": digest.hexdigest()})
        log.info("destination %s: snapshot upgraded to %s; every contact is sent once more", self.destination,
                 SNAPSHOT_FORMAT)

    def _old_lines(self, fingerprint: int | None) -> Iterator[tuple[int, int, str]]:
        """The stored entries; with `fingerprint`, carried over under that one instead of their own."""
        stream = self._container.download_blob(self._prefix + "snapshot.txt")
        with io.TextIOWrapper(io.BufferedReader(_ChunkReader(stream.chunks())), encoding="utf-8") as text:
            text.readline()
            for line in text:
                key, fp, email = line.rstrip("\n").split(" ", 2)
                yield int(key), int(fp) if fingerprint is None else fingerprint, email

    # -- checkpoint ----------------------------------------------------------------------------------

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

    # -- which file is current -----------------------------------------------------------------------

    def record_sources(self, files: Sequence[Any]) -> None:
        """Record the segment files the list now reflects (`state/<destination>/source.json`), for operators;
        written only when it changes, and only by a run that exported them."""
        path = self._prefix + "source.json"
        current = {"segments": [{"segment": f.segment, "name": f.name, "entity": f.entity, "etag": f.etag,
                                 "last_modified": f.last_modified.isoformat() if f.last_modified else None}
                                for f in files]}
        if self._read_json(path) == current:
            return
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


class _ChunkReader(io.RawIOBase):
    """A readable stream over the SDK's chunk iterator (the blob is never held whole in memory)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


class _Concat(io.RawIOBase):
    """Header bytes followed by a file, as one upload stream."""

    def __init__(self, head: bytes, tail: Any) -> None:
        self._head = head
        self._tail = tail

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        if self._head:
            size = min(len(target), len(self._head))
            target[:size] = self._head[:size]
            self._head = self._head[size:]
            return size
        data = self._tail.read(len(target))
        target[: len(data)] = data
        return len(data)
