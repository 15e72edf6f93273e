"""Scripted misbehaviour: the next N matching requests (or import jobs) go wrong in a chosen way.

Request faults are taken in the order they were injected; a request takes at most one. Job faults
(`job_errored`, `job_failed`) are taken by accepted upserts, so they act on what the import job reports and
applies, not on the HTTP answer.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

FaultKind = Literal[
    "status",  # answer `status` (500/502/503/...) without doing anything
    "rate_limit",  # answer 429 with X-RateLimit-Reset `seconds` ahead
    "slow",  # sleep `seconds`, then handle the request normally
    "drop_before_body",  # close the connection before reading the body: nothing happened
    "drop_after_body",  # read and handle the request, then close without answering ("accepted, answer lost")
    "job_errored",  # the next upsert job ends `errored`: its first `errored` contacts are not applied
    "job_failed",  # the next upsert job ends `failed`: nothing applied
]
REQUEST_KINDS = frozenset({"status", "rate_limit", "slow", "drop_before_body", "drop_after_body"})
JOB_KINDS = frozenset({"job_errored", "job_failed"})
_ids = itertools.count(1)


@dataclass
class Fault:
    kind: FaultKind
    count: int = 1  # how many requests/jobs it applies to; remaining uses
    method: str | None = None  # only requests with this method (any when None)
    path: str | None = None  # only paths starting with this prefix (any when None)
    status: int = 503
    seconds: float = 1.0  # delay for `slow`; reset distance for `rate_limit`
    errored: int = 1  # contacts not applied by `job_errored`
    id: int = field(default_factory=lambda: next(_ids))
    used: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (self.path is None or path.startswith(self.path))

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "count": self.count, "method": self.method, "path": self.path,
                "status": self.status, "seconds": self.seconds, "errored": self.errored, "used": self.used}


class FaultPlan:
    """Thread-safe queue of faults; handlers `take` one per request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def inject(self, kind: FaultKind, *, count: int = 1, method: str | None = None, path: str | None = None,
               status: int = 503, seconds: float = 1.0, errored: int = 1) -> Fault:
        if kind not in REQUEST_KINDS | JOB_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {sorted(REQUEST_KINDS | JOB_KINDS)}")
        if count < 1:
            raise ValueError("count must be at least 1")
        fault = Fault(kind, count, method.upper() if method else None, path, status, seconds, errored)
        with self._lock:
            self._faults.append(fault)
        return fault

    def take(self, method: str, path: str, kinds: frozenset[str] = REQUEST_KINDS) -> Fault | None:
        if not self._faults:  # the common case, without the lock
            return None
        with self._lock:
            for fault in self._faults:
                if fault.kind in kinds and fault.matches(method, path):
                    fault.count -= 1
                    fault.used += 1
                    if fault.count <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def take_job_fault(self) -> Fault | None:
        return self.take("PUT", "/v3/marketing/contacts", JOB_KINDS)

    def pending(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
