"""A v1 snapshot (blake2b keys) rewritten as the current format, once, when first loaded."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from array import array
from collections.abc import Callable
from typing import IO, Any

from azure.storage.blob import ContainerClient

from shared.state.keys import email_key
from shared.state.snapshot_lines import V4_FORMAT as SNAPSHOT_FORMAT
from shared.state.snapshot_lines import entry_email, sorted_by_key

log = logging.getLogger("shared.state.snapshot")


def upgrade_v1(container: ContainerClient, path: str, destination: str,
               store: Callable[[IO[bytes], dict[str, Any]], str | None]) -> None:
    """Rewrite a v1 snapshot (blake2b keys) as v4: its emails sorted by their keys, computed again.

    Its fingerprints cannot be recomputed (the rows are not stored), and a v4 text without an index is
    membership only: each contact is sent once more, while mirror mode keeps the membership and still
    removes those who left. Memory: two arrays (16 bytes an entry); the lines wait in a local file.
    """
    stream = container.download_blob(path)
    with tempfile.TemporaryFile() as old, tempfile.TemporaryFile() as out:
        for chunk in stream.chunks():
            old.write(chunk)
        old.seek(0)
        header = json.loads(old.readline())
        keys, offsets = array("q"), array("Q")
        offset = old.tell()
        for line in old:
            keys.append(email_key(entry_email(line.rstrip(b"\n"), True).decode()))
            offsets.append(offset)
            offset += len(line)
        digest = hashlib.sha256()
        for index in sorted_by_key(keys, iter(range(len(keys)))):
            old.seek(offsets[index])
            email = entry_email(old.readline().rstrip(b"\n"), True).decode()
            line = f"{email}\n".encode()
            out.write(line)
            digest.update(line)
        store(out, {"config": header.get("config"), "list": header.get("list"),
                                   "count": len(keys), "digest": digest.hexdigest()})
    log.info("destination %s: snapshot upgraded to %s; every contact is sent once more", destination,
             SNAPSHOT_FORMAT)
