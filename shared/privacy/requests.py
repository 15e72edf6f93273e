"""An erasure request in: `POST /api/erasures` or a CSV under `erasures/` in the segments container; kept
(with its addresses) at `erasures/requests/<id>.json` in the runs container until it is done, so a killed
run resumes; its report (counts only, never an address) at `erasures/reports/<id>.json`.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import ContainerClient

MAX_ADDRESSES = 10_000
MAX_ADDRESS_LENGTH = 320  # longer is no address anyone holds; the request is refused rather than stored
MAX_REFERENCE_LENGTH = 200
MAX_FILE_BYTES = 4 * 1024 * 1024  # 10,000 addresses of 320 characters, and some
REQUESTS_PREFIX = "erasures/requests/"
REPORTS_PREFIX = "erasures/reports/"


class InvalidErasureRequest(ValueError):
    """What is wrong with a request, in words that never quote an address."""


@dataclass(frozen=True)
class ErasureRequest:
    id: str
    reference: str
    emails: list[str]
    via: str  # "http" | "file"
    found: list[str] = field(default_factory=list)  # found by an earlier attempt: deleted once no longer found


def new_erasure_id() -> str:
    return f"erasure-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:8]}"


def file_erasure_id(blob_name: str, etag: str) -> str:
    """The same ID for every delivery of one version of a dropped file: a redelivered trigger resumes it."""
    return "erasure-file-" + hashlib.sha256(f"{blob_name}\n{etag.strip(chr(34))}".encode()).hexdigest()[:20]


def parse_body(body: Any) -> tuple[list[str], str]:
    """`{"emails": [...], "reference": "..."}` -> (addresses, reference), or InvalidErasureRequest."""
    if not isinstance(body, dict):
        raise InvalidErasureRequest("the request body must be a JSON object")
    unknown = sorted(set(body) - {"emails", "reference"})
    if unknown:
        raise InvalidErasureRequest(f"unknown field(s): {', '.join(unknown)}")
    emails, reference = body.get("emails"), body.get("reference", "")
    if not isinstance(emails, list) or not emails:
        raise InvalidErasureRequest("emails must be a non-empty list of addresses")
    if not isinstance(reference, str):
        raise InvalidErasureRequest("reference must be a string")
    return check_addresses(emails), check_reference(reference)


def parse_csv(data: bytes, name: str) -> list[str]:
    """A dropped file: one address a line (first column; a header row without an @ is skipped)."""
    if len(data) > MAX_FILE_BYTES:
        raise InvalidErasureRequest(f"{name} is larger than {MAX_FILE_BYTES} bytes; split it")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidErasureRequest(f"{name} is not UTF-8 text") from None
    rows = [row for row in csv.reader(io.StringIO(text)) if row and row[0].strip()]
    if rows and "@" not in rows[0][0]:
        rows = rows[1:]  # a header ("email")
    if not rows:
        raise InvalidErasureRequest(f"{name} holds no address")
    return check_addresses([row[0] for row in rows])


def check_addresses(emails: list[Any]) -> list[str]:
    if len(emails) > MAX_ADDRESSES:
        raise InvalidErasureRequest(f"at most {MAX_ADDRESSES} addresses a request ({len(emails)} given); split it")
    for position, email in enumerate(emails):
        if not isinstance(email, str) or not email.strip():
            raise InvalidErasureRequest(f"emails[{position}] must be a non-empty string")
        if len(email) > MAX_ADDRESS_LENGTH:
            raise InvalidErasureRequest(f"emails[{position}] is longer than {MAX_ADDRESS_LENGTH} characters")
        if "@" not in email:
            raise InvalidErasureRequest(f"emails[{position}] is not an email address (it has no at-sign)")
    return list(dict.fromkeys(email.strip() for email in emails))


def check_reference(reference: str) -> str:
    """A ticket number or case ID: kept in the report, so it may not hold an address."""
    if len(reference) > MAX_REFERENCE_LENGTH:
        raise InvalidErasureRequest(f"reference is longer than {MAX_REFERENCE_LENGTH} characters")
    if "@" in reference:
        raise InvalidErasureRequest("reference must not hold an email address (reports keep no personal data)")
    return reference


class ErasureStore:
    """Requests and reports in the runs container."""

    def __init__(self, container: ContainerClient) -> None:
        self.container = container

    def save_request(self, request: ErasureRequest, *, new: bool = True) -> bool:
        """Store a request; False when a new one's ID is stored already (a redelivered file)."""
        with contextlib.suppress(ResourceExistsError):
            self.container.create_container()
        body = json.dumps({"id": request.id, "reference": request.reference, "via": request.via,
                           "emails": request.emails, "found": request.found})
        try:
            self.container.upload_blob(REQUESTS_PREFIX + request.id + ".json", body.encode(), overwrite=not new)
        except ResourceExistsError:
            return False
        return True

    def load_request(self, erasure_id: str) -> ErasureRequest | None:
        data = self._json(REQUESTS_PREFIX + erasure_id + ".json")
        if data is None:
            return None
        return ErasureRequest(str(data["id"]), str(data.get("reference", "")), list(data["emails"]),
                              str(data.get("via", "http")), list(data.get("found") or []))

    def delete_request(self, erasure_id: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            self.container.delete_blob(REQUESTS_PREFIX + erasure_id + ".json")

    def open_requests(self) -> list[str]:
        if not self.container.exists():
            return []
        return sorted(blob.name.removeprefix(REQUESTS_PREFIX).removesuffix(".json")
                      for blob in self.container.list_blobs(name_starts_with=REQUESTS_PREFIX))

    def save_report(self, report: dict[str, Any]) -> None:
        path, body = REPORTS_PREFIX + str(report["erasure_id"]) + ".json", json.dumps(report, indent=2).encode()
        try:
            self.container.upload_blob(path, body, overwrite=True)
        except ResourceNotFoundError:  # the first thing this app ever stores
            with contextlib.suppress(ResourceExistsError):
                self.container.create_container()
            self.container.upload_blob(path, body, overwrite=True)

    def load_report(self, erasure_id: str) -> dict[str, Any] | None:
        return self._json(REPORTS_PREFIX + erasure_id + ".json")

    def _json(self, path: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.container.download_blob(path).readall())
        except ResourceNotFoundError:
            return None
        return data
