"""Per-endpoint fixed-window rate limits, reported the way SendGrid does on every answer.

SendGrid sends `X-RateLimit-Reset` as whole Unix seconds. Windows here are aligned to multiples of the
window length, so a 1 s window always resets on a whole second; a shorter window (for fast tests) yields a
fractional reset, which the header then carries with millisecond precision.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

UNLIMITED = 1_000_000  # reported as the limit when none is configured (SendGrid always sends the headers)


@dataclass
class RateLimit:
    limit: int  # requests per window, per endpoint
    window: float = 1.0  # seconds
    per_endpoint: dict[str, int] = field(default_factory=dict)  # "PUT /v3/marketing/contacts" -> limit

    @classmethod
    def parse(cls, spec: RateLimit | dict[str, object] | None) -> RateLimit | None:
        """Accepts {"per_second": n} or {"limit": n, "window": s, "per_endpoint": {...}}."""
        if spec is None or isinstance(spec, RateLimit):
            return spec
        per_endpoint = {str(k): int(v) for k, v in dict(spec.get("per_endpoint") or {}).items()}  # type: ignore[call-overload]
        if "per_second" in spec:
            return cls(int(str(spec["per_second"])), 1.0, per_endpoint)
        return cls(int(str(spec["limit"])), float(str(spec.get("window", 1.0))), per_endpoint)


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    reset: float  # Unix time

    def headers(self) -> list[tuple[str, str]]:
        return [("X-RateLimit-Limit", str(self.limit)), ("X-RateLimit-Remaining", str(self.remaining)),
                ("X-RateLimit-Reset", format_reset(self.reset))]


def format_reset(reset: float) -> str:
    return str(int(reset)) if reset == int(reset) else f"{reset:.3f}"


class RateLimiter:
    def __init__(self, config: RateLimit | None) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[float, int]] = {}  # endpoint -> (window start, count)

    def check(self, endpoint: str) -> Verdict:
        config = self.config
        now = time.time()
        window = config.window if config else 1.0
        limit = (config.per_endpoint.get(endpoint, config.limit)) if config else UNLIMITED
        start = math.floor(now / window) * window
        with self._lock:
            current_start, count = self._windows.get(endpoint, (start, 0))
            if current_start != start:
                count = 0
            allowed = count < limit
            if allowed:
                count += 1
            self._windows[endpoint] = (start, count)
        return Verdict(allowed, limit, max(limit - count, 0), round(start + window, 3))

    def reset(self) -> None:
        with self._lock:
            self._windows.clear()
