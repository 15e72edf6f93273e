"""What a run carries from stage to stage: its options, its result, and each contact's outcome code."""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from shared.config.destinations import Destination
from shared.pipeline.report import BatchResult, RejectedRow, RunReport
from shared.sendgrid.client import SendGridClient
from shared.source.segment_files import SegmentFile
from shared.staging.batching import MAX_BODY_BYTES, MAX_CONTACTS_PER_REQUEST
from shared.staging.spool import Spool
from shared.state.rejects import RejectsFile
from shared.state.sync_state import SyncState


class Suppression(Protocol):
    """The do-not-export set as the pipeline sees it (shared.privacy.DoNotExport): false when empty, so a
    run with nobody erased costs nothing per row; `in` takes a normalised email."""

    def __bool__(self) -> bool: ...

    def __contains__(self, email: object) -> bool: ...


@dataclass
class ExportOptions:
    dry_run: bool = False
    preview_limit: int = 20
    max_contacts_per_request: int = MAX_CONTACTS_PER_REQUEST
    max_body_bytes: int = MAX_BODY_BYTES
    poll_interval: float = 1.0
    poll_timeout: float = 600.0  # well inside the 30-minute function timeout; later jobs are settled by the timer
    spool_dir: str | None = None
    suppression: Suppression | None = None  # erased people: their rows are counted `suppressed`, never sent
    max_billable_contacts: int | None = None  # the contact budget (shared.pipeline.budget)


@dataclass
class SegmentRead:
    """One segment's share of the spool: its contacts are positions start..end-1 (segments are read in turn)."""

    file: SegmentFile
    source: str | None
    start: int = 0
    end: int = 0
    rows_read: int = 0
    rejected: int = 0
    email_rejected: int = 0  # of `rejected`: rows rejected on their email (people of unknown identity)
    suppressed: int = 0  # rows of erased people


@dataclass
class ExportResult:
    """What a run leaves: its report, a dry run's preview, and every rejected row with its value on local
    disk (`rejects`, the rejects CSV). `close()` deletes that file: whoever keeps the result calls it once
    the rejects are stored (ExportService._persist, the CLI)."""

    report: RunReport
    preview: list[bytes] = field(default_factory=list)  # dry runs: the first mapped contacts, as sent
    rejects: RejectsFile = field(default_factory=RejectsFile)
    # email keys of rows rejected for a field other than the email: still in the segment (mirror keeps them)
    rejected_keys: array[int] = field(default_factory=lambda: array("q"))
    # rows the reader could not parse (bad quoting, wrong column count): whose they are is unknown
    unreadable_rows: int = 0
    # rows rejected on their email: people of unknown identity (mirror mode may not remove on their account)
    email_rejected: int = 0
    # what each segment's file gave, in reading order (the order that decides which duplicate wins)
    reads: list[SegmentRead] = field(default_factory=list)

    def reject(self, rejected: RejectedRow, value: str = "") -> None:
        """Count the row in the report (which lists the first few) and write it, with its value, to `rejects`."""
        self.report.add_rejected(rejected)
        self.rejects.write(rejected.source, rejected.row, rejected.field, rejected.reason, value)

    def close(self) -> None:
        self.rejects.close()


class Outcome:
    """Per-contact outcome codes in one byte each (a million contacts cost a megabyte)."""

    NOT_SENT, EXPORTED, UNCHANGED, IN_FAILED_JOB, PENDING, SET_ASIDE, MERGED = range(7)
    CONFIRMED = (EXPORTED, UNCHANGED)  # in the list as this run read it: the snapshot takes its fingerprint


@dataclass
class Run:
    """One run's working set, handed from stage to stage (plan -> drain -> settle)."""

    destination: Destination
    spool: Spool
    superseded: set[int]  # spool positions merged into a later row of the same person
    client: SendGridClient
    result: ExportResult
    options: ExportOptions
    sync: SyncState | None  # None: no run state (the CLI's export): nothing unchanged, nothing removed
    field_names: dict[str, str]  # custom field ID -> name, for the fields SendGrid's 400s name
    outcome_of: array[int]  # Outcome code per spool position
    on_batch_accepted: Callable[[BatchResult], None] | None = None

    @property
    def report(self) -> RunReport:
        return self.result.report

    @property
    def unique(self) -> int:
        """The contacts this run has to send: one per person, not those known unchanged (counted already)."""
        return len(self.spool) - len(self.superseded) - self.report.unchanged_skipped
