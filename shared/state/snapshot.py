"""The snapshot of what a destination's list holds (`state/<destination>/snapshot.txt`).

One line per exported contact, its email, sorted by email key (v4). Each entry's key, fingerprint and line
hash are in the binary index beside the text (shared.state.snapshot_index), bound to the text's ETag. The
fingerprint is of the row's mapped source values under the destination's mapping rules (shared.state.keys.
source_fingerprint), so a row that did not change is known before it is mapped. Keys and fingerprints load
into two arrays (16 bytes a contact), with a bucket index over the keys so a look-up is a few comparisons.

Why emails alone: the text is downloaded, merged and uploaded again by every refresh that changes anything,
and the keys and fingerprints as decimal text were most of its bytes (65 MB at a million contacts, 30 MB
now) and of a first export's snapshot CPU (two int-to-text conversions an entry). Without a valid index
(deleted, or stale) the keys are the emails' keys again, but the fingerprints are lost: the snapshot is
membership only (every contact is sent once more, the leavers are still removed). A v3 text (`<key>
<fingerprint> <email>` lines) loads as it did, and is rewritten as v4 by its next merge.

The text is read for the emails of contacts that left (mirror) and for the merge, once, into a local copy; a
new snapshot copies the stored lines of unchanged contacts in runs. Its metadata holds its entry count (the
index's size, read in one GET when small).

A forced full re-sync, or a changed mapping on the same list, still loads it, as membership only: its
fingerprints are not trusted (every contact is sent again) but mirror mode still removes the contacts that
left. A different list (or an unknown list) discards it. Older formats load as membership only too (v2 held
fingerprints of the contacts' JSON, v1 blake2b keys): every contact is sent once more, and no one still in
a segment is taken off the list on their account.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import tempfile
from array import array
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobBlock, ContainerClient

from shared.state.keys import email_key
from shared.state.line_hashes import LineHashes
from shared.state.snapshot_entries import Snapshot
from shared.state.snapshot_index import IndexWriter, load_index
from shared.state.snapshot_lines import (
    V4_FORMAT,
    DigestWriter,
    copied,
    entry_email,
    has_fields,
    line_blocks,
    line_starts,
    local_copy,
    parse_block,
)
from shared.state.snapshot_merge import EntryBlock, SortedLines, merge
from shared.state.snapshot_v1 import upgrade_v1

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = V4_FORMAT  # v4: the emails; keys and fingerprints in the index
V3_FORMAT = "segment-to-sendgrid snapshot v3"  # v3: `<key> <fingerprint> <email>` lines, rewritten when merged
V2_FORMAT = "segment-to-sendgrid snapshot v2"  # xxh3 keys, fingerprints of the contact JSON: membership only
V1_FORMAT = "segment-to-sendgrid snapshot v1"  # blake2b keys: rewritten (keys again) when first loaded
# Fingerprint written for entries carried over from an untrusted snapshot: never equal to a real one (but
# for a 2**-64 chance), so the contact is sent again when it is next in the segment.
UNTRUSTED = 0
UPLOAD_BLOCK = 2 << 20  # bytes a block of the snapshot's upload
SINGLE_PUT = 4 << 20  # a text up to this size is one PUT, not blocks and a block list (~2 ms a request)
READ_BLOCK = 2 << 20  # bytes a ranged read of the stored snapshot


class SnapshotStore:
    """Reads, merges and writes one destination's snapshot; `ensure_lock` is called before every write."""

    def __init__(self, container: ContainerClient, destination: str, *, config_digest: str, list_id: str | None,
                 ensure_lock: Callable[[], None]) -> None:
        self._container = container
        self.destination = destination
        self.config_digest = config_digest
        self.list_id = list_id  # the snapshot's membership is kept across a config change only on the same list
        self._path = f"state/{destination}/snapshot.txt"
        self._index_path = f"state/{destination}/snapshot.idx"  # shared.state.snapshot_index
        self.ensure_lock = ensure_lock
        self.snapshot: Snapshot | None = None
        self._read_etag: str | None = None
        # The stored snapshot as load read it, on local disk: the leavers' emails and the merge read it again,
        # which from storage would cost a download of the whole blob each; its size from the index's load.
        self._local: IO[bytes] | None = None
        self._text_size: int | None = None
        self._fields = False  # the loaded text is v3: `<key> <fingerprint> <email>` lines

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
            self._local = None
        if self.snapshot is not None:
            self.snapshot.lines.close()

    def load(self) -> Snapshot | None:
        self.snapshot = self._load_snapshot()
        return self.snapshot

    def _load_snapshot(self, upgraded: bool = False) -> Snapshot | None:
        self.close()
        indexed = load_index(self._container, self._index_path, self._path)
        if indexed is not None:  # the arrays as written with this very text: the text is read only if needed
            header, keys, fingerprints, self._read_etag, lines, self._text_size = indexed
            return self._snapshot_of(header, lambda: (keys, fingerprints), lines)
        try:
            chunks = self._chunks()
            first = next(chunks)
        except ResourceNotFoundError:
            return None
        self._local = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        blocks = line_blocks(copied(itertools.chain([first], chunks), self._local))
        header = json.loads(next(blocks, b"{}"))
        if header.get("format") == V1_FORMAT and not upgraded:
            self.ensure_lock()
            upgrade_v1(self._container, self._path, self.destination, self._store_snapshot)
            return self._load_snapshot(upgraded=True)

        def parsed() -> tuple[array[int], array[int]]:
            keys, fingerprints = array("q"), array("q")
            for block in blocks:
                if has_fields(header):  # v3 and v2
                    parse_block(block, keys, fingerprints)
                else:  # emails alone: their keys again, their fingerprints lost (membership only)
                    keys.extend(map(email_key, block.decode("utf-8").split("\n")))
            fingerprints.extend(array("q", bytes(8 * (len(keys) - len(fingerprints)))))
            return keys, fingerprints

        return self._snapshot_of(header, parsed, indexed=False)

    def _snapshot_of(self, header: dict[str, Any], arrays: Callable[[], tuple[array[int], array[int]]],
                     lines: array[int] | None = None, indexed: bool = True) -> Snapshot | None:
        """The snapshot with this header, trusted or as membership only, or None (another list or format)."""
        if header.get("format") not in (SNAPSHOT_FORMAT, V3_FORMAT, V2_FORMAT):
            self.close()
            return None
        self._fields = has_fields(header)
        known = indexed or header.get("format") == V3_FORMAT  # v4's fingerprints are in its index only
        trusted = header.get("config") == self.config_digest and header.get("format") != V2_FORMAT and known
        if header.get("config") != self.config_digest:
            if self.list_id is None or header.get("list") != self.list_id:
                log.info("destination %s: list changed since the last export; full sync", self.destination)
                self.close()
                return None
            log.info("destination %s: mapping changed since the last export; full sync", self.destination)
        elif not known:
            log.info("destination %s: the snapshot's index is missing or stale; every contact is sent once more",
                     self.destination)
        elif not trusted:
            log.info("destination %s: snapshot of an older version; every contact is sent once more",
                     self.destination)
        keys, fingerprints = arrays()
        # made only for a snapshot kept: without line hashes they are a local file (shared.state.line_hashes)
        hashes = LineHashes(lines if lines else None, len(keys))
        return Snapshot(header, keys, fingerprints, trusted=trusted, etag=self._read_etag, lines=hashes)

    def snapshot_emails(self, positions: set[int]) -> dict[int, str]:
        """Emails of the snapshot entries at these positions (contacts that left the segment)."""
        if not positions:
            return {}
        found: dict[int, str] = {}
        wanted = sorted(positions)
        first = 0  # the position of the block's first line
        blocks = line_blocks(self._stored_chunks())
        next(blocks, None)
        for block in blocks:
            starts = line_starts(block)  # a slice of the wanted lines only: ~1% of them in a daily refresh
            count = len(starts) - 1
            at = bisect.bisect_left(wanted, first)
            while at < len(wanted) and wanted[at] < first + count:
                line = wanted[at] - first
                entry = block[starts[line]:starts[line + 1] - 1]
                found[wanted[at]] = entry_email(entry, self._fields).decode()
                at += 1
            first += count
        return found

    def write_snapshot(self, exported: Iterable[EntryBlock], dropped: set[int]) -> int:
        """Merge the previous snapshot with this run's outcome and store it; returns the entry count.

        Why long: the new lines sorted out of this run's blocks, then the merge (shared.state.snapshot_merge) and
        the store, which share the output file, its digest and the index: split up, each would need all of it.

        `exported`: blocks (EntryBlock: keys, fingerprints, line hashes, UTF-8 emails) of the contacts SendGrid
        confirmed this run, in any order: each takes its entry with its new fingerprint. Every other entry stays
        as it was (an unchanged contact, or one whose import did not complete, so the next refresh sends it
        again), except the `dropped` positions of the previous snapshot (mirror: contacts taken off the list).
        New lines are sorted in buckets on local disk, stored lines copied in runs; an unchanged snapshot is not
        uploaded again (its index is, alone, when only line hashes changed).
        """
        self.ensure_lock()
        old = self.snapshot
        carried_fp = None if old is None or old.trusted else UNTRUSTED
        changed = old is None or not old.trusted or bool(dropped)
        drops = set(dropped)
        relined: tuple[list[int], list[int]] = ([], [])  # entries kept whose line hash is new
        import numpy  # noqa: PLC0415 - the merge is done in arrays

        old_keys = numpy.frombuffer(old.keys if old is not None else b"", dtype=numpy.int64)
        old_fps = numpy.frombuffer(old.fingerprints if old is not None else b"", dtype=numpy.int64)
        with SortedLines() as new, tempfile.TemporaryFile() as out:
            for keys, fps, hashes, emails in exported:
                fresh = numpy.ones(len(keys), dtype=bool)
                if len(old_keys):
                    at = numpy.minimum(numpy.searchsorted(old_keys, keys), len(old_keys) - 1)
                    held = old_keys[at] == keys
                    if carried_fp is None:  # the same source values: its stored line stays
                        same = held & (old_fps[at] == fps)
                        relined[0].extend(at[same].tolist())
                        relined[1].extend(hashes[same].tolist())
                        fresh = ~same
                    drops.update(at[held & fresh].tolist())  # replaced by its new line, in the same place
                if fresh.all():
                    new.add_block(keys, fps, hashes, emails)
                elif fresh.any():
                    new.add_block(keys[fresh], fps[fresh], hashes[fresh],
                                  list(itertools.compress(emails, fresh.tolist())))
                changed = changed or bool(fresh.any())
            if old is not None and relined[0]:
                old.lines.update(relined[0], relined[1])
            if not changed:
                if old is not None and old.lines.changed and old.etag:
                    self._store_index_alone(old)
                return len(old) if old is not None else 0
            writer, index = DigestWriter(out), IndexWriter()
            try:
                merge(new, old, self._stored_chunks(), sorted(drops), carried_fp, writer, index, self._fields)
                writer.flush()
                header = {"config": self.config_digest, "list": self.list_id, "count": writer.count,
                          "digest": writer.digest.hexdigest()}
                etag = self._store_snapshot(out, header, replacing=old.etag if old is not None else None)
                if etag is not None and index.count == writer.count:
                    index.store(self._container, self._index_path, {"format": SNAPSHOT_FORMAT, **header}, etag)
            finally:
                index.close()
        return writer.count

    def _store_index_alone(self, old: Snapshot) -> None:
        """The stored text stays; its index again, with the line hashes this run learnt (an unmapped column
        changed): the next refresh recognises those lines too."""
        assert old.etag is not None
        index = IndexWriter()
        try:
            _index_entries(index, old, 0, len(old), None)
            index.store(self._container, self._index_path, dict(old.header), old.etag)  # the text's format kept
        finally:
            index.close()

    def _stored_chunks(self) -> Iterator[bytes]:
        """The text as loaded, from the local copy (downloaded, pinned to its ETag, when first needed)."""
        if self.snapshot is None:
            return
        if self._local is None:
            self._local = local_copy(self._chunks(self.snapshot.etag, self._text_size))
        self._local.seek(0)
        while chunk := self._local.read(READ_BLOCK):
            yield chunk

    def _chunks(self, etag: str | None = None, known: int | None = None) -> Iterator[bytes]:
        """The stored snapshot in READ_BLOCK ranges (one when its `known` size fits a PUT), each pinned to the first
        one's ETag (or `etag`): a blob changed meanwhile fails the read. (SDK chunks left ~15 MB freed memory.)"""
        offset, size, block = 0, None, known if known and known <= SINGLE_PUT else READ_BLOCK
        while size is None or offset < size:
            pinned: dict[str, Any] = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
            stream = self._container.download_blob(self._path, offset=offset, length=block, **pinned)
            if size is None:  # the blob's whole size, from "bytes 0-1048575/<size>"
                content_range = stream.properties.content_range or ""
                size = int(content_range.rsplit("/", 1)[1]) if "/" in content_range else stream.size
                etag = self._read_etag = stream.properties.etag
            data = stream.readall()
            if not data:
                return
            offset += len(data)
            yield data

    def _store_snapshot(self, lines: Any, header: dict[str, Any], replacing: str | None = None) -> str | None:
        """Upload the header and the lines' file: one PUT up to SINGLE_PUT, else blocks of UPLOAD_BLOCK bytes
        (the SDK would hold a 64 MB snapshot in memory for one PUT, and copy it); returns the new ETag."""
        head = json.dumps({"format": SNAPSHOT_FORMAT, **header}).encode() + b"\n"
        blob = self._container.get_blob_client(self._path)
        whole = len(head) + (size := lines.seek(0, 2)) <= SINGLE_PUT
        lines.seek(0)
        chunk = head + lines.read(size if whole else UPLOAD_BLOCK - len(head))
        following = b"" if whole else lines.read(UPLOAD_BLOCK)
        self.ensure_lock()
        # Only over the version this run loaded (the merge read its lines): a blob changed since fails the write.
        pinned: dict[str, Any] = {"etag": replacing, "match_condition": MatchConditions.IfNotModified} if (
            replacing) else {}
        pinned["metadata"] = {"entries": str(header["count"])} if "count" in header else None  # see load_index
        if not following:
            return str(blob.upload_blob(chunk, overwrite=True, **pinned).get("etag") or "") or None
        blocks: list[BlobBlock] = []
        while chunk:
            block_id = f"{len(blocks):08d}"
            blob.stage_block(block_id, chunk)
            blocks.append(BlobBlock(block_id))
            chunk, following = following, lines.read(UPLOAD_BLOCK) if following else b""
        self.ensure_lock()
        return str(blob.commit_block_list(blocks, **pinned).get("etag") or "") or None


def _index_entries(index: IndexWriter, old: Snapshot, position: int, count: int, carried_fp: int | None) -> None:
    """Entries position.. of the old snapshot into the new index, a block at a time (no million-entry copies);
    with `carried_fp` (an untrusted snapshot) neither their fingerprint nor their line may match next time."""
    for start in range(position, position + count, _INDEX_BLOCK):
        size = min(_INDEX_BLOCK, position + count - start)
        if carried_fp is None:
            index.add_run(old.keys[start:start + size], old.fingerprints[start:start + size],
                          old.lines.run(start, size))
        else:
            index.add_run(old.keys[start:start + size], array("q", [carried_fp]) * size, array("q", bytes(8 * size)))


_INDEX_BLOCK = 1 << 16

