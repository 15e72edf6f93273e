"""The client's typed answers and knobs: import jobs, custom fields, retry policy, request statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FINAL_IMPORT_STATUSES = frozenset({"completed", "errored", "failed", "expired"})  # expired: ours, for a 404
CustomFieldType = Literal["Text", "Number", "Date"]


@dataclass(frozen=True, slots=True)
class CustomField:
    id: str
    field_type: CustomFieldType


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6  # per request, for 5xx / timeouts / dropped connections
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    rate_limit_budget: float = 600.0  # total seconds a client may spend waiting on 429s
    min_rate_limit_wait: float = 0.05


@dataclass(frozen=True)
class ImportJob:
    id: str
    status: str
    requested_count: int = 0
    created_count: int = 0
    updated_count: int = 0
    deleted_count: int = 0
    errored_count: int = 0
    errors_url: str | None = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_IMPORT_STATUSES


@dataclass(frozen=True)
class ContactCount:
    """GET /v3/marketing/contacts/count: contacts stored now, and those billed this month (uploads count toward
    the monthly allotment and deleting a contact does not give it back, so billable_count never falls)."""

    contact_count: int
    billable_count: int


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    rate_limit_wait_seconds: float = 0.0
    by_endpoint: dict[str, int] = field(default_factory=dict)
    # Non-idempotent requests (PUT upserts) sent again after an attempt that may have reached SendGrid (the
    # connection failed after the request was written: dropped, read timeout). SendGrid has no idempotency key
    # and no list of import jobs to check, so such an attempt may have been accepted: a possible duplicate send.
    unconfirmed_resends: int = 0
