"""Queued runs: a status URL works at once (`queued`), and a run killed on its last attempt reads `failed`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.service import telemetry
from shared.state.run_store import RunStore
from shared.state.sync_state import SyncState

if TYPE_CHECKING:
    from shared.service.export_service import ExportService

# A run on the lock's lease renews it every 20 s; a run waiting for the lock (up to 5 min) sees it held.
KILLED_AFTER = timedelta(minutes=6)


def report_of(service: ExportService, run_id: str, *, last_attempt: int | None = None) -> dict[str, Any] | None:
    """A run's report. A queued run still `running` on its `last_attempt` whose destination no run holds
    any more (its lease expired) was killed (function timeout, out of memory): nothing will retry it,
    so it is failed now, with what to do, instead of saying `running` for ever."""
    data = service.runs.load_report(run_id)
    if not data or data.get("status") != "running" or last_attempt is None or \
            int(data.get("attempt") or 0) < last_attempt:
        return data
    try:
        since = datetime.fromisoformat(str(data.get("running_since")))
    except ValueError:
        return data
    state = SyncState(service.runs.container, str(data.get("destination")), config_digest="")
    if datetime.now(UTC) - since < KILLED_AFTER or state.held_by_a_run():
        return data
    return fail_run(service.runs, run_id, "the last attempt stopped without finishing (the function timeout, or "
                                          "the worker ran out of memory) and nothing retries it: start the export "
                                          "again")


def fail_run(runs: RunStore, run_id: str, error: str) -> dict[str, Any] | None:
    """Fail a queued or running run (RunStore.fail_queued) and, when this call is what ended it, emit its one
    telemetry record; returns the report as stored now."""
    runs.fail_queued(run_id, error)
    data = runs.load_report(run_id)
    if data and data.get("status") == "failed" and data.get("error") == error:
        telemetry.emit_run(data)
    return data
