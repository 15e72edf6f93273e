"""Run state in Blob Storage: reports, rejected rows, and a receipt per processed segment file.

Blob triggers are at-least-once, and two instances may receive the same blob. The receipt for
(blob name, ETag) is created with `If-None-Match: *`, so exactly one caller wins the claim; later
updates use `If-Match` on the receipt's ETag so a stale writer cannot overwrite a newer state.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import BlobBlock, ContainerClient, ContentSettings

from shared.state.rejects import RejectsFile
from shared.state.run_index import RunIndex

log = logging.getLogger(__name__)
_T = TypeVar("_T")

RECEIPT_STALE_AFTER = timedelta(minutes=45)  # longer than functionTimeout (30 min): a claim older is a dead run
# A claim older than this whose run shows no sign of life (see `claim`) is a run that was killed.
RECEIPT_GRACE = timedelta(seconds=60)
_JSON = ContentSettings(content_type="application/json")
_CSV = ContentSettings(content_type="text/csv")
REJECTS_BLOCK_BYTES = 4 * 1024 * 1024  # the rejects file is uploaded in blocks of this size, never whole


@dataclass(frozen=True)
class Claim:
    """Proof that this caller owns the processing of one version of one blob."""

    path: str
    etag: str
    run_id: str
    body: dict[str, Any] = field(default_factory=dict)  # the receipt as claimed (its ETag's content)


class RunStore:
    def __init__(self, container: ContainerClient) -> None:
        self.container = container
        self._container = container
        self._ensured = False
        self.index = RunIndex(container)

    def _ensure_container(self) -> None:
        if not self._ensured:
            with contextlib.suppress(ResourceExistsError):
                self._container.create_container()
            self._ensured = True

    def _into_container(self, write: Callable[[], _T]) -> _T:
        """A write that creates the container when it is missing (a new deployment) instead of before each
        run: every run of a fresh worker (and of the benchmark) saved one request."""
        if not self._ensured:
            try:
                result = write()
            except ResourceNotFoundError as exc:
                if getattr(exc, "error_code", None) != "ContainerNotFound":  # set by the storage SDK
                    raise
            else:
                self._ensured = True
                return result
            self._ensure_container()
        return write()

    # -- reports -------------------------------------------------------------------------------------

    @staticmethod
    def report_path(run_id: str) -> str:
        return f"reports/{run_id}.json"

    def save_report(self, run_id: str, report: dict[str, Any]) -> None:
        blob = self._container.get_blob_client(self.report_path(run_id))
        body = json.dumps(report, indent=2).encode()
        written = self._into_container(lambda: blob.upload_blob(body, overwrite=True, content_settings=_JSON))
        self._index(run_id, report, written.get("etag"))

    def update_report(self, run_id: str, change: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        """Read-modify-write a report under its ETag: `change` edits it in place and says whether to save.

        The timer and a queue worker may touch the same report (a run finishing while its queued message is
        failed, pending jobs settled while a re-run writes): If-Match makes the later writer read again
        instead of overwriting a newer report. None when the report does not exist or `change` declined.
        """
        for _ in range(5):
            data, etag = self._read(self.report_path(run_id))
            if data is None or not change(data):
                return None
            try:
                written = self._container.get_blob_client(self.report_path(run_id)).upload_blob(
                    json.dumps(data, indent=2).encode(), overwrite=True, etag=etag,
                    match_condition=MatchConditions.IfNotModified, content_settings=_JSON)
            except HttpResponseError as exc:
                if exc.status_code == 412:
                    continue  # someone wrote it since we read it: apply the change to their version
                raise
            self._index(run_id, data, written.get("etag"))
            return data
        raise ResourceModifiedError(f"report {run_id} kept changing while it was being updated")

    def _index(self, run_id: str, report: dict[str, Any], etag: str | None) -> None:
        """Rewrite the run's index entry after its report (the report stays the truth). A failure is logged,
        not raised: the run's work is done and stored, and the next write of its report rewrites the entry.

        Two writers of one report (the timer failing a killed run while it finishes) could write the entries
        in the other order than the reports; so after writing, the report's ETag is checked (one HEAD), and a
        report that changed meanwhile is indexed again from what it says now: the last entry follows the last
        report whichever order the writes came in.
        """
        try:
            for _ in range(3):
                self.index.record(report)
                current = self._container.get_blob_client(self.report_path(run_id)).get_blob_properties().etag
                if current == etag:
                    return
                newer, etag = self._read(self.report_path(run_id))
                if newer is None:
                    return
                report = newer
        except Exception:
            log.warning("run %s: its report is stored but its run-index entry could not be updated",
                        report.get("run_id"), exc_info=True)

    def mark_running(self, run_id: str, attempt: int) -> dict[str, Any] | None:
        """A queued run a worker has started (attempt n of the queue's deliveries): no longer `queued`.
        Returns the updated report (None: no queued report), which says who queued the run (`triggered_by`)."""
        def start(report: dict[str, Any]) -> bool:
            if report.get("status") not in ("queued", "running"):
                return False
            report.update(status="running", attempt=attempt, running_since=utc_now())
            return True

        return self.update_report(run_id, start)

    def fail_queued(self, run_id: str, error: str) -> None:
        """A queued run that cannot start or finish: its status URL must say why instead of `queued` (or
        `running`) for ever."""
        def fail(report: dict[str, Any]) -> bool:
            if report.get("status") not in ("queued", "running"):
                return False  # the run finished meanwhile: its own report is the truth
            report.update(status="failed", error=error, finished_at=utc_now())
            return True

        self.update_report(run_id, fail)

    def load_report(self, run_id: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self._container.download_blob(self.report_path(run_id)).readall())
        except ResourceNotFoundError:
            return None
        return data

    def save_rejects(self, run_id: str, rows: Iterable[tuple[str, int, str, str, str]]) -> str | None:
        """(source, row, field, reason, value) rows as CSV; the one place values of rejected rows are kept."""
        with RejectsFile() as rejects:
            for row in rows:
                rejects.write(*row)
            return self.upload_rejects(run_id, rejects)

    def upload_rejects(self, run_id: str, rejects: RejectsFile) -> str | None:
        """Store a run's rejects file as `rejects/<run_id>.csv` (None when nothing was rejected).

        Read from local disk and uploaded block by block, so memory does not grow with the rejects.
        """
        if not rejects.count:
            return None
        path = f"rejects/{run_id}.csv"
        self._ensure_container()
        if rejects.size() <= REJECTS_BLOCK_BYTES:
            self._container.upload_blob(path, b"".join(rejects.chunks()), overwrite=True, content_settings=_CSV)
            return path
        blob = self._container.get_blob_client(path)
        blocks: list[BlobBlock] = []
        for number, chunk in enumerate(rejects.chunks(REJECTS_BLOCK_BYTES)):
            block_id = base64.b64encode(f"{number:08d}".encode()).decode()
            blob.stage_block(block_id, chunk)
            blocks.append(BlobBlock(block_id))
        blob.commit_block_list(blocks, content_settings=_CSV)  # replaces an earlier blob of the same name
        return path

    def mark_pending(self, run_id: str) -> None:
        self._ensure_container()
        self._container.upload_blob(f"pending/{run_id}", b"", overwrite=True)

    def pending_runs(self) -> list[str]:
        self._ensure_container()
        return [blob.name.removeprefix("pending/") for blob in self._container.list_blobs(name_starts_with="pending/")]

    def clear_pending(self, run_id: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            self._container.delete_blob(f"pending/{run_id}")

    # -- receipts ------------------------------------------------------------------------------------

    @staticmethod
    def receipt_path(blob_name: str, etag: str, scope: str = "") -> str:
        key = f"{blob_name}\n{etag.strip(chr(34))}" + (f"\n{scope}" if scope else "")
        digest = hashlib.sha256(key.encode()).hexdigest()
        return f"receipts/{digest}.json"

    def claim(self, blob_name: str, etag: str, run_id: str, scope: str = "",
              run_is_alive: Callable[[], bool] | None = None) -> Claim | None:
        """Claim this blob version (for one destination: `scope`); None when another run already did it.

        A `running` claim whose worker was killed (timeout, out of memory, recycled instance) never gets to
        say so: it is taken over once it is older than RECEIPT_GRACE and `run_is_alive` says no run is
        working on the destination, or after RECEIPT_STALE_AFTER in any case.
        """
        path = self.receipt_path(blob_name, etag, scope)
        state = {"blob": blob_name, "etag": etag, "run_id": run_id, "state": "running", "at": _now()}
        receipt = self._container.get_blob_client(path)
        try:
            result = self._into_container(lambda: receipt.upload_blob(json.dumps(state).encode(), overwrite=False,
                                                                       content_settings=_JSON))
            return Claim(path, str(result["etag"]), run_id, state)
        except ResourceExistsError:
            pass
        existing, existing_etag = self._read(path)
        if existing is None:
            return None
        age = _age(existing.get("at"))
        retry = existing.get("state") == "failed" or (existing.get("state") == "running" and (
            age > RECEIPT_STALE_AFTER or (age > RECEIPT_GRACE and run_is_alive is not None and not run_is_alive())))
        if not retry:
            log.info("blob version already %s by run %s; skipping duplicate trigger",
                     existing.get("state"), existing.get("run_id"))
            return None
        try:
            result = receipt.upload_blob(json.dumps(state).encode(), overwrite=True, etag=existing_etag,
                                         match_condition=MatchConditions.IfNotModified, content_settings=_JSON)
        except (ResourceModifiedError, HttpResponseError) as exc:
            if getattr(exc, "status_code", 412) == 412:
                return None  # another instance re-claimed it first
            raise
        return Claim(path, str(result["etag"]), run_id, state)

    def complete(self, claim: Claim, state: str, report_summary: dict[str, Any]) -> None:
        """Record the outcome; `failed` lets the next trigger of the same blob version try again. Written over
        the claim's own version only, so the receipt is the claim's body (not read again) with the outcome."""
        body = dict(claim.body or self._read(claim.path)[0] or {}, state=state, finished=_now(),
                    summary=report_summary)
        try:
            self._container.upload_blob(claim.path, json.dumps(body).encode(), overwrite=True, etag=claim.etag,
                                        match_condition=MatchConditions.IfNotModified, content_settings=_JSON)
        except ResourceModifiedError:
            log.warning("receipt for run %s changed under us; leaving the newer state", claim.run_id)

    def _read(self, path: str) -> tuple[dict[str, Any] | None, str | None]:
        try:
            downloader = self._container.download_blob(path)
        except ResourceNotFoundError:
            return None, None
        data: dict[str, Any] = json.loads(downloader.readall())
        return data, downloader.properties.etag


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _age(at: object) -> timedelta:
    try:
        return datetime.now(UTC) - datetime.fromisoformat(str(at))
    except ValueError:
        return timedelta.max


def utc_now() -> str:
    """Report timestamps: UTC, whole seconds, `Z`."""
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
