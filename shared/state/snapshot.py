"""The snapshot of what a destination's list holds (`state/<destination>/snapshot.txt`).

One line per exported contact, sorted by email key: `<key> <fingerprint> <email>`. Keys and fingerprints
load into two arrays (16 bytes a contact), so an unchanged refresh is a binary search per contact, not a
dictionary of a million strings. Emails are only read back for contacts that left the segments (mirror).
A forced full re-sync, or a changed mapping on the same list, still loads it, as membership only: its
fingerprints are not trusted (every contact is sent again) but mirror mode still removes the contacts
that left. A different list (or an unknown list) discards it.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import logging
import tempfile
from array import array
from collections.abc import Callable, Iterator
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import ContainerClient

from shared.state.keys import email_key

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = "segment-to-sendgrid snapshot v2"  # v2: xxh3 keys and fingerprints (shared.state.keys)
V1_FORMAT = "segment-to-sendgrid snapshot v1"  # blake2b keys: rewritten as v2 when first loaded
# Fingerprint written for entries carried over from an untrusted snapshot: never equal to a real one (but
# for a 2**-64 chance), so the contact is sent again when it is next in the segment.
UNTRUSTED = 0


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


class SnapshotStore:
    """Reads, merges and writes one destination's snapshot; `ensure_lock` is called before every write."""

    def __init__(self, container: ContainerClient, destination: str, *, config_digest: str, list_id: str | None,
                 ensure_lock: Callable[[], None]) -> None:
        self._container = container
        self.destination = destination
        self.config_digest = config_digest
        self.list_id = list_id  # the snapshot's membership is kept across a config change only on the same list
        self._prefix = f"state/{destination}/"
        self.ensure_lock = ensure_lock
        self.snapshot: Snapshot | None = None

    def load(self) -> Snapshot | None:
        self.snapshot = self._load_snapshot()
        return self.snapshot

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

        Why long: one streaming merge of two sorted sequences (the stored lines and this run's contacts), whose
        cases share the output file and its digest; split up, each piece would need all of that state.

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
