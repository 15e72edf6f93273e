"""The do-not-export set: keyed hashes of erased addresses, so exports never send an erased person again.

Stored as `privacy/do-not-export.txt` in the runs container: a JSON header line, then one hex HMAC-SHA-256
digest a line (of the normalised address, keyed with the secret ERASURE_KEY_SECRET names in Key Vault). The
set alone does not reveal the addresses: guessing one needs the key. Writers use the blob's ETag, so two
erasures adding at once both land. Rotating the key makes every stored digest useless: do not rotate it.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Iterable

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import ContainerClient

from shared.errors import ExportError

SET_PATH = "privacy/do-not-export.txt"
SET_FORMAT = "segment-to-sendgrid do-not-export v1"
_ATTEMPTS = 8


def digest(key: bytes, email: str) -> bytes:
    """The keyed digest of a normalised address (hmac.digest: the one-shot C fast path)."""
    return hmac.digest(key, email.encode(), "sha256")


class DoNotExport:
    """What exports check (the pipeline's `Suppression`): false when empty, so no row is hashed at all."""

    __slots__ = ("_digests", "_key")

    def __init__(self, key: bytes, digests: frozenset[bytes]) -> None:
        self._key = key
        self._digests = digests

    @classmethod
    def empty(cls) -> DoNotExport:
        return cls(b"", frozenset())

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def __contains__(self, email: object) -> bool:
        return isinstance(email, str) and hmac.digest(self._key, email.encode(), "sha256") in self._digests

    def holds_exactly(self, digests: frozenset[bytes]) -> bool:
        """Whether the stored set is still the one this run checked (see erasure_service.unless_erased_since)."""
        return self._digests == digests

    def __repr__(self) -> str:  # never the key
        return f"DoNotExport({len(self._digests)} digests)"


class DoNotExportStore:
    """Reads and changes the stored set; callers read the key (from Key Vault) only when the set is not empty."""

    def __init__(self, container: ContainerClient) -> None:
        self._container = container

    def digests(self) -> frozenset[bytes]:
        return self._read()[0]

    def load(self, key: Callable[[], bytes]) -> DoNotExport:
        """What an export checks; `key` (a Key Vault read) is called only when someone was erased."""
        digests = self.digests()
        return DoNotExport(key(), digests) if digests else DoNotExport.empty()

    def add(self, key: bytes, emails: Iterable[str]) -> int:
        """Add these normalised addresses; returns how many were not in the set yet."""
        new = {digest(key, email) for email in emails}
        return self._change(lambda digests: digests | new)

    def remove(self, key: bytes, emails: Iterable[str]) -> int:
        """Lift the suppression of these normalised addresses (a person who opted in again)."""
        gone = {digest(key, email) for email in emails}
        return self._change(lambda digests: digests - gone)

    def _change(self, change: Callable[[frozenset[bytes]], frozenset[bytes]]) -> int:
        for _ in range(_ATTEMPTS):
            digests, etag = self._read()
            changed: frozenset[bytes] = frozenset(change(digests))
            if changed == digests:
                return 0
            try:
                self._write(changed, etag)
            except (ResourceExistsError, HttpResponseError) as exc:
                if isinstance(exc, ResourceExistsError) or exc.status_code in (409, 412):
                    continue  # another writer came first: apply the change to its version
                raise
            return abs(len(changed) - len(digests))
        raise ExportError("the do-not-export set kept changing while it was being updated; try again")

    def _read(self) -> tuple[frozenset[bytes], str | None]:
        try:
            downloader = self._container.download_blob(SET_PATH)
        except ResourceNotFoundError:
            return frozenset(), None
        lines = downloader.readall().decode().splitlines()
        if not lines or json.loads(lines[0]).get("format") != SET_FORMAT:
            raise ExportError(f"{SET_PATH} is not a {SET_FORMAT} file: no export runs while erased people "
                              "cannot be told apart")
        return frozenset(bytes.fromhex(line) for line in lines[1:] if line), downloader.properties.etag

    def _write(self, digests: frozenset[bytes], etag: str | None) -> None:
        header = json.dumps({"format": SET_FORMAT, "count": len(digests)})
        body = "\n".join([header, *sorted(d.hex() for d in digests)]) + "\n"
        blob = self._container.get_blob_client(SET_PATH)
        if etag is None:
            blob.upload_blob(body.encode(), overwrite=False)
        else:
            blob.upload_blob(body.encode(), overwrite=True, etag=etag, match_condition=MatchConditions.IfNotModified)
