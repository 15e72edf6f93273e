"""The run report: what happened to every input row, as JSON an operator (or a test) can check.

Rows are accounted for by outcome so that `rows_read` always equals the sum of the outcomes; a report
that does not balance is a bug, and `balanced` says so. The report holds row numbers, field names and
reasons, never the values (no personal data): the values of rejected rows go only to the rejects file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


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
class RowRef:
    source: str
    row: int


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
    removed_from_list: int = 0
    requests_sent: int = 0
    rejected: list[RejectedRow] = field(default_factory=list)
    truncated: list[TruncatedField] = field(default_factory=list)
    failed_job_rows: list[RowRef] = field(default_factory=list)  # resent by the next refresh
    batches: list[BatchResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def rejected_count(self) -> int:
        return len(self.rejected)

    @property
    def possible_duplicate_sends(self) -> int:
        """Contacts that may have reached SendGrid more than once in this run (see BatchResult.resent)."""
        return sum(b.contacts * b.resent for b in self.batches)

    @property
    def balanced(self) -> bool:
        """Every row read is exported, unchanged, rejected, merged, pending, in a failed job or not sent."""
        outcomes = (self.exported + self.unchanged_skipped + self.rejected_count + self.duplicates_merged
                    + self.in_failed_jobs + self.not_sent + self.pending)
        return self.rows_read == outcomes

    def finish(self, status: str, error: str | None = None) -> None:
        self.status = status
        self.error = error
        self.finished_at = utc_now()

    def summary(self) -> str:
        """One log line: counts only, no personal data."""
        return (f"run {self.run_id} destination={self.destination} status={self.status} rows={self.rows_read} "
                f"exported={self.exported} unchanged={self.unchanged_skipped} rejected={self.rejected_count} "
                f"merged={self.duplicates_merged} failed_jobs={self.in_failed_jobs} not_sent={self.not_sent} "
                f"pending={self.pending} removed={self.removed_from_list} requests={self.requests_sent}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rejected_count"] = self.rejected_count
        data["balanced"] = self.balanced
        data["possible_duplicate_sends"] = self.possible_duplicate_sends
        return data

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)
