"""The scheduled refresh: queue an export of every configured destination from its latest segment file."""

from __future__ import annotations

import json
import logging
import typing

import azure.functions as func

from shared.service.erasure_service import resume_erasures
from shared.service.export_service import EXPORT_QUEUE, get_service

bp = func.Blueprint()
log = logging.getLogger("OnSchedule")


@bp.function_name("ScheduledRefresh")
# A failed timer run is otherwise lost until the next schedule (a storage blip skips a day's refresh).
@bp.retry(strategy="exponential_backoff", max_retry_count="3", minimum_interval="00:01:00",
          maximum_interval="00:10:00")
@bp.timer_trigger(arg_name="timer", schedule="%REFRESH_SCHEDULE%", run_on_startup=False, use_monitor=True)
@bp.queue_output(arg_name="queued", queue_name=EXPORT_QUEUE, connection="AzureWebJobsStorage")
# typing.List, not list: the worker checks an Out[...] type with the binding converter, which knows only
# typing's generics (azure-functions 1.x); `list[str]` would stop the app from indexing this function.
def scheduled_refresh(timer: func.TimerRequest, queued: func.Out[typing.List[str]]) -> None:  # noqa: UP006
    """Each destination runs in RunQueuedExport: its own timeout and retries, not one long timer run."""
    if timer.past_due:
        log.warning("scheduled refresh is running late")
    service = get_service()
    for earlier in service.finish_pending_runs():
        log.info("run %s: pending import jobs now %s", earlier.get("run_id"), earlier.get("status"))
    try:  # unfinished erasures (killed, failed, SendGrid still deleting): never in the way of the refresh
        for erasure in resume_erasures(service):
            log.info("erasure %s: %s", erasure["erasure_id"], erasure["status"])
    except Exception as exc:
        log.error("unfinished erasures could not be resumed now (%s); the next run tries again", type(exc).__name__)
    messages = service.queue_refresh()
    queued.set([json.dumps(message) for message in messages])
    log.info("scheduled refresh queued %d of %d destination(s)", len(messages), len(service.destinations.destinations))
