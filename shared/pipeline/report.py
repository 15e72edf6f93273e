"""The run report: what happened to every input row, as JSON an operator (or a test) can check.

Rows are accounted for by outcome so that `rows_read` always equals the sum of the outcomes; a report
that does not balance is a bug, and `balanced` says so. The report holds row numbers, field names and
reasons, never the values (no personal data): the values of rejected rows go only to the rejects file.

Its size does not grow with the file: rejected rows and truncated fields are counted exactly (in total, by
field and by kind of reason) but listed only up to MAX_REPORTED_DETAILS (every rejected row, with its value,
is in the rejects file); rows of failed import jobs are listed as row ranges, up to as many ranges.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from shared.state.run_store import utc_now

MAX_REPORTED_DETAILS = 1000  # rejected rows, truncated fields and failed-job row ranges listed in a report
MAX_REASON_KINDS = 100  # distinct (field, reason kind) counters; more fall into OTHER_REASONS
OTHER_REASONS = "(other reasons)"
_DIGITS = re.compile(r"\d+")


def reason_kind(reason: str) -> str:
    """A reason with its numbers blanked, so "is 61 characters" and "is 75 characters" count together."""
    return _DIGITS.sub("#", reason)




@dataclass(slots=True)
class RejectedRow:
    source: str
    row: int
    field: str
    reason: str
    column: str | None = None


@dataclass(slots=True)
class TruncatedField:
    source: str
    row: int
    field: str


@dataclass(slots=True)
class RowRange:
    """Data rows first_row..last_row (inclusive) of one source file."""

    source: str
    first_row: int
    last_row: int

    @property
    def rows(self) -> range:
        return range(self.first_row, self.last_row + 1)


@dataclass(slots=True)
class BatchResult:
    number: int
    contacts: int
    body_bytes: int
    job_id: str | None = None
    status: str = "not_sent"  # not_sent | accepted | completed | errored | failed | pending
    created_count: int = 0
    updated_count: int = 0
    errored_count: int = 0
    set_aside: int = 0  # contacts SendGrid refused with a 400 and we resent without
    resumed: bool = False  # accepted by an earlier, interrupted run of the same file
    # Times the PUT was sent again after its answer was lost (connection dropped, read timeout): SendGrid may
    # have accepted the lost attempt too, i.e. imported these contacts twice (harmless: upserts are by email).
    resent: int = 0
    by_segment: list[int] = field(default_factory=list)  # its contacts per segment, in the report's order


@dataclass(slots=True)
class SegmentPart:
    """One segment's share of a run: the same accounting as the total, for the rows of its file."""

    segment: str
    source: str | None  # the file read for it; None: the segment has no file yet
    entity: str | None = None
    rows_read: int = 0
    exported: int = 0
    unchanged_skipped: int = 0
    rejected_count: int = 0
    duplicates_merged: int = 0  # its rows merged into a later row (of its own file or of a later segment)
    in_failed_jobs: int = 0
    pending: int = 0
    not_sent: int = 0
    suppressed: int = 0  # rows of erased people (shared.privacy): never exported again
    note: str | None = None

    @property
    def balanced(self) -> bool:
        return self.rows_read == (self.exported + self.unchanged_skipped + self.rejected_count
                                  + self.duplicates_merged + self.in_failed_jobs + self.pending + self.not_sent
                                  + self.suppressed)


@dataclass
class RunReport:
    run_id: str
    destination: str
    list_id: str
    source: str
    mode: str = "upsert"
    dry_run: bool = False
    status: str = "running"  # running | succeeded | partial | failed | refused | dry_run
    error: str | None = None
    started_at: str = field(default_factory=utc_now)
    finished_at: str | None = None
    rows_read: int = 0
    contacts_valid: int = 0
    duplicates_merged: int = 0
    unchanged_skipped: int = 0
    exported: int = 0
    in_failed_jobs: int = 0
    not_sent: int = 0
    pending: int = 0
    suppressed: int = 0  # rows of erased people, in the do-not-export set: not sent, not rejected (no value kept)
    removed_from_list: int = 0
    removals_withheld: int = 0  # mirror: contacts that left but were kept on the list this run (see notes)
    requests_sent: int = 0
    rejected_count: int = 0  # exact; `rejected` lists the first MAX_REPORTED_DETAILS
    rejected_by_field: dict[str, int] = field(default_factory=dict)
    rejected_by_reason: dict[str, dict[str, int]] = field(default_factory=dict)  # field -> reason kind -> count
    rejected: list[RejectedRow] = field(default_factory=list)
    truncated_count: int = 0  # exact; `truncated` lists the first MAX_REPORTED_DETAILS
    truncated_by_field: dict[str, int] = field(default_factory=dict)
    truncated: list[TruncatedField] = field(default_factory=list)
    failed_job_rows: list[RowRange] = field(default_factory=list)  # resent by the next refresh
    failed_job_rows_omitted: int = 0  # rows of failed jobs past the first MAX_REPORTED_DETAILS ranges
    batches: list[BatchResult] = field(default_factory=list)
    segments: list[SegmentPart] = field(default_factory=list)  # the destination's segments, in reading order
    budget: dict[str, int] | None = None  # max_billable_contacts: the numbers the run was checked against
    notes: list[str] = field(default_factory=list)

    def add_rejected(self, rejected: RejectedRow) -> None:
        """Count a rejected row (exactly) and list it if fewer than MAX_REPORTED_DETAILS are listed."""
        self.rejected_count += 1
        self.rejected_by_field[rejected.field] = self.rejected_by_field.get(rejected.field, 0) + 1
        kinds = self.rejected_by_reason.setdefault(rejected.field, {})
        kind = reason_kind(rejected.reason)
        if kind not in kinds and sum(map(len, self.rejected_by_reason.values())) >= MAX_REASON_KINDS:
            kind = OTHER_REASONS  # a new kind is rare (once per kind): counting the kinds here costs nothing
        kinds[kind] = kinds.get(kind, 0) + 1
        if len(self.rejected) < MAX_REPORTED_DETAILS:
            self.rejected.append(rejected)

    def add_truncated(self, truncated: TruncatedField) -> None:
        self.truncated_count += 1
        self.truncated_by_field[truncated.field] = self.truncated_by_field.get(truncated.field, 0) + 1
        if len(self.truncated) < MAX_REPORTED_DETAILS:
            self.truncated.append(truncated)

    def add_failed_job_row(self, source: str, row: int) -> None:
        """A row whose contact was in an errored/failed import job; consecutive rows share one range."""
        last = self.failed_job_rows[-1] if self.failed_job_rows else None
        if last is not None and last.source == source and last.last_row + 1 == row:
            last.last_row = row
        elif len(self.failed_job_rows) < MAX_REPORTED_DETAILS:
            self.failed_job_rows.append(RowRange(source, row, row))
        else:
            self.failed_job_rows_omitted += 1

    @property
    def possible_duplicate_sends(self) -> int:
        """Contacts that may have reached SendGrid more than once in this run (see BatchResult.resent)."""
        return sum(b.contacts * b.resent for b in self.batches)

    @property
    def balanced(self) -> bool:
        """Every row read is exported, unchanged, rejected, merged, pending, in a failed job or not sent; in
        total, and within each segment (whose parts add up to the total)."""
        outcomes = (self.exported + self.unchanged_skipped + self.rejected_count + self.duplicates_merged
                    + self.in_failed_jobs + self.not_sent + self.pending + self.suppressed)
        if self.rows_read != outcomes:
            return False
        if not self.segments:
            return True
        return (all(part.balanced for part in self.segments)
                and sum(part.rows_read for part in self.segments) == self.rows_read)

    def finish(self, status: str, error: str | None = None) -> None:
        self.status = status
        self.error = error
        self.finished_at = utc_now()

    def summary(self) -> str:
        """One log line: counts only, no personal data."""
        return (f"run {self.run_id} destination={self.destination} status={self.status} rows={self.rows_read} "
                f"exported={self.exported} unchanged={self.unchanged_skipped} rejected={self.rejected_count} "
                f"merged={self.duplicates_merged} failed_jobs={self.in_failed_jobs} not_sent={self.not_sent} "
                f"pending={self.pending} suppressed={self.suppressed} removed={self.removed_from_list} "
                f"requests={self.requests_sent}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rejected_details_omitted"] = self.rejected_count - len(self.rejected)
        data["truncated_details_omitted"] = self.truncated_count - len(self.truncated)
        notes = data["notes"]
        if data["rejected_details_omitted"]:
            notes.append(f"rejected lists the first {len(self.rejected)} of {self.rejected_count} rejected rows; "
                         "all of them, with their values, are in the rejects file (rejects_blob; with the CLI: "
                         "--rejects FILE)")
        if data["truncated_details_omitted"]:
            notes.append(f"truncated lists the first {len(self.truncated)} of {self.truncated_count} truncated "
                         "fields; truncated_by_field counts all of them")
        if self.failed_job_rows_omitted:
            notes.append(f"failed_job_rows lists the first {len(self.failed_job_rows)} row ranges; "
                         f"{self.failed_job_rows_omitted} more rows were in failed import jobs (all of them are "
                         "sent again by the next refresh)")
        data["balanced"] = self.balanced
        for part, stored in zip(self.segments, data["segments"], strict=True):
            stored["balanced"] = part.balanced
        data["possible_duplicate_sends"] = self.possible_duplicate_sends
        return data

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def settle_stored_batch(data: dict[str, Any], batch: dict[str, Any], status: str, *, created: int, updated: int,
                        errored: int) -> None:
    """A stored report (`to_dict()` form, kept as it was read so no field is lost) once a batch's import job,
    pending when the run ended, is final: its contacts move from `pending` to `exported` or `in_failed_jobs`,
    in the total and in each segment's part (`by_segment`), so both still balance."""
    batch.update(status=status, created_count=created, updated_count=updated, errored_count=errored)
    outcome = "exported" if status == "completed" else "in_failed_jobs"
    for part, contacts in zip(data.get("segments") or [], batch.get("by_segment") or [], strict=False):
        part["pending"] -= contacts
        part[outcome] += contacts
    data["pending"] -= batch["contacts"]
    data[outcome] += batch["contacts"]
    if data["pending"] <= 0:
        # Only the jobs settle here: a run that stopped ("failed", rows not sent) stays failed.
        if data.get("status") == "partial":
            data["status"] = "partial" if data["in_failed_jobs"] or data.get("not_sent") else "succeeded"
        notes = data.setdefault("notes", [])
        if "pending import jobs finished after the run ended" not in notes:
            notes.append("pending import jobs finished after the run ended")
