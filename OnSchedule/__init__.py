"""The scheduled refresh: re-export every configured destination from its latest segment file."""

from __future__ import annotations

import logging

import azure.functions as func

from shared.export_service import get_service

bp = func.Blueprint()
log = logging.getLogger("OnSchedule")


@bp.function_name("ScheduledRefresh")
@bp.timer_trigger(arg_name="timer", schedule="%REFRESH_SCHEDULE%", run_on_startup=False, use_monitor=True)
def scheduled_refresh(timer: func.TimerRequest) -> None:
    if timer.past_due:
        log.warning("scheduled refresh is running late")
    service = get_service()
    for earlier in service.finish_pending_runs():
        log.info("run %s: pending import jobs now %s", earlier.get("run_id"), earlier.get("status"))
    reports = service.refresh_all()
    for report in reports:
        log.info("%s", report.summary())
    log.info("scheduled refresh finished: %d destination(s)", len(reports))
