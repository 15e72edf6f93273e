"""Erased addresses out of stored state: every destination's snapshot and every stored rejects file.

Both are streamed through a local temporary file (a snapshot may hold a million lines), and written back
only when something was removed. A snapshot is rewritten under its destination's lock (the caller holds
it): an export merging into it meanwhile would otherwise write the erased entries back.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import re
import shutil
import tempfile
from array import array
from collections.abc import Callable, Set
from typing import IO, Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import ContainerClient

from shared.state.rejects import RejectsFile
from shared.state.run_store import RunStore
from shared.state.snapshot_index import IndexWriter, load_index
from shared.state.snapshot_lines import entry_email, has_fields

REJECTS_PREFIX = "rejects/"
_ADDRESS_LIKE = re.compile(r"[^\s,;<>\"()\[\]]+@[^\s,;<>\"()\[\]]+")
_LEADING = "'=+-@\t\r"  # a formula-safe quote, or what a spreadsheet would have evaluated


def scrub_snapshot(container: ContainerClient, destination: str, erased: Set[str],
                   ensure_lock: Callable[[], None]) -> int:
    """Remove the entries of these normalised addresses from `state/<destination>/snapshot.txt`; returns how
    many. A v4 line is the entry's email (a v3 one ends with it: `<key> <fingerprint> <email>`); the header's
    count and digest are made again as the snapshot store makes them. The index (keys, fingerprints and line
    hashes, shared.state.snapshot_index) is written again without those entries, bound to the new text: without
    it the next export would have to send every contact again."""
    for attempt in (1, 2, 3):
        try:
            return _scrub_snapshot(container, destination, erased, ensure_lock)
        except ResourceModifiedError:  # an export stored its snapshot meanwhile: scrub that one
            if attempt == 3:
                raise
    return 0  # (never: the loop returns or raises)


def _scrub_snapshot(container: ContainerClient, destination: str, erased: Set[str],
                    ensure_lock: Callable[[], None]) -> int:
    path, index_path = f"state/{destination}/snapshot.txt", f"state/{destination}/snapshot.idx"
    indexed = load_index(container, index_path, path)
    with tempfile.TemporaryFile() as old, tempfile.TemporaryFile() as out:
        etag = _download(container, path, old)
        if etag is None:
            return 0
        header = json.loads(old.readline())
        fields = has_fields(header)
        digest = hashlib.sha256()
        gone: list[int] = []
        kept = 0
        for position, line in enumerate(old):
            entry = line.rstrip(b"\n")
            if entry_email(entry, fields).decode() in erased:
                gone.append(position)
                continue
            out.write(line)
            digest.update(line)
            kept += 1
        if not gone:
            return 0
        header.update(count=kept, digest=digest.hexdigest())
        out.seek(0)
        with tempfile.TemporaryFile() as body:
            body.write(json.dumps(header).encode() + b"\n")
            shutil.copyfileobj(out, body)
            body.seek(0)
            ensure_lock()
            # only over the version read: an export that wrote meanwhile is scrubbed again, not overwritten
            written = container.get_blob_client(path).upload_blob(
                body, overwrite=True, etag=etag, match_condition=MatchConditions.IfNotModified).get("etag")
    if indexed is not None and indexed[3] == etag and written and len(indexed[1]) - len(gone) == kept:
        _store_index(container, index_path, indexed, gone, header, str(written))
    else:  # stale or missing: it would describe the erased people's entries too
        with contextlib.suppress(ResourceNotFoundError):
            container.delete_blob(index_path)
    return len(gone)


def _store_index(container: ContainerClient, path: str, indexed: tuple[dict[str, Any], array[int], array[int],
                 str, array[int], int], gone: list[int], header: dict[str, Any], text_etag: str) -> None:
    """The loaded index less the erased entries, for the text just written."""
    import numpy  # noqa: PLC0415 - an erasure that found entries only

    _, keys, fps, _, hashes, _ = indexed
    count = len(keys)
    kept = [numpy.delete(numpy.frombuffer(part, dtype=numpy.int64), gone) if len(part) == count
            else numpy.zeros(count - len(gone), dtype=numpy.int64) for part in (keys, fps, hashes)]
    index = IndexWriter()
    try:
        index.add_arrays(*kept)
        index.store(container, path, header, text_etag)
    finally:
        index.close()


def mentions(value: str, erased: Set[str]) -> bool:
    """Whether a rejected value holds one of these (lower-cased) addresses, alone or among other text."""
    lowered = value.strip().lower()
    if lowered.lstrip(_LEADING) in erased:
        return True
    return any(token.lstrip(_LEADING) in erased for token in _ADDRESS_LIKE.findall(lowered))


def scrub_rejects(runs: RunStore, erased: Set[str]) -> tuple[int, int]:
    """Remove every rejects-file row with a cell holding an erased address: (files changed, rows removed).
    A file left without rows is deleted. `erased` holds the addresses as given (lower-cased) and normalised."""
    container = runs.container
    files = rows_removed = 0
    if not container.exists():
        return 0, 0
    for blob in list(container.list_blobs(name_starts_with=REJECTS_PREFIX)):
        removed = _scrub_one(runs, blob.name, erased)
        if removed:
            files += 1
            rows_removed += removed
    return files, rows_removed


def _scrub_one(runs: RunStore, name: str, erased: Set[str]) -> int:
    with tempfile.TemporaryFile() as raw, RejectsFile() as kept:
        if not _download(runs.container, name, raw):
            return 0
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        reader = csv.reader(text)
        next(reader, None)  # the header
        removed = 0
        for row in reader:
            if any(mentions(cell, erased) for cell in row):  # the value, or a file name holding the address
                removed += 1
                continue
            source, number, field, reason, value = (row + [""] * 5)[:5]
            kept.write(source, int(number) if number.isdigit() else 0, field, reason, value)
        text.detach()
        if not removed:
            return 0
        if kept.count:
            runs.upload_rejects(name.removeprefix(REJECTS_PREFIX).removesuffix(".csv"), kept)
        else:
            runs.container.delete_blob(name)
        return removed


def _download(container: ContainerClient, path: str, into: IO[bytes]) -> str | None:
    """The blob into the file; its ETag (None: there is none)."""
    try:
        stream = container.download_blob(path)
    except ResourceNotFoundError:
        return None
    for chunk in stream.chunks():
        into.write(chunk)
    into.seek(0)
    return str(stream.properties.etag)
