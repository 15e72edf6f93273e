"""The run index: one empty blob per run, named so a destination's runs list newest first by prefix alone.

A run's history must answer fast however many runs a destination has had, so listing never opens a report:
`index/<destination>/<inverted start>-<run_id>` sorts newest first (Blob Storage lists names in ascending
order), and the blob's metadata carries the run's summary (status, times, counts) as compact JSON, so one
page is one List Blobs call with `include=metadata`. The entry is rewritten whenever the report is
(`RunStore.save_report` / `update_report`), so queued -> running -> final status follows the report.

The inverted start comes from the run ID (`new_run_id`: `<destination>-<YYYYMMDDTHHMMSS[mmm]Z>-<hex>`), so
every rewrite lands on the same name without reading anything first. A run ID without that stamp (a hand-made
one) sorts after every dated run.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.storage.blob import ContainerClient

INDEX_PREFIX = "index/"
SUMMARY_FIELDS = ("run_id", "destination", "status", "triggered_by", "dry_run", "full", "started", "finished")
_STAMP = re.compile(r"-(\d{8}T\d{6})(\d{3})?Z-[0-9a-f]+$")
_KEY_DIGITS = 14  # epoch milliseconds fit in 13 digits until the year 2286
_UNDATED = "9" * _KEY_DIGITS


class BadToken(ValueError):
    """A continuation token this index did not give out (or gave out for another destination)."""


@dataclass(frozen=True)
class RunsPage:
    runs: list[dict[str, Any]]
    next: str | None


def summary_of(report: dict[str, Any]) -> dict[str, Any]:
    """The listing's view of a report: its identity, status, times and every top-level integer count.

    Counts are taken as they are (booleans, lists and nested parts left out), so a count the pipeline adds
    later (e.g. `suppressed`) is listed without a change here. No field holds a value of a row.
    """
    counts = {key: value for key, value in report.items() if isinstance(value, int) and not isinstance(value, bool)}
    counts.pop("attempt", None)  # a queue delivery count, not an outcome of rows
    return {"run_id": report.get("run_id"), "destination": report.get("destination"),
            "status": report.get("status"), "triggered_by": report.get("triggered_by"),
            "dry_run": bool(report.get("dry_run", False)), "full": bool(report.get("full", False)),
            "started": report.get("started_at"), "finished": report.get("finished_at"), "counts": counts}


def sort_key(run_id: str) -> str:
    """Epoch milliseconds of the run ID's stamp, inverted and zero-padded: newer runs get smaller keys."""
    match = _STAMP.search(run_id)
    if match is None:
        return _UNDATED
    stamp = match.group(1)  # %Y%m%dT%H%M%S by hand: strptime's first call in a worker costs ~8 ms of CPU
    moment = datetime(int(stamp[0:4]), int(stamp[4:6]), int(stamp[6:8]), int(stamp[9:11]), int(stamp[11:13]),
                      int(stamp[13:15]), tzinfo=UTC)
    millis = int(moment.timestamp()) * 1000 + int(match.group(2) or 0)
    return str(10**_KEY_DIGITS - 1 - millis).zfill(_KEY_DIGITS)


def entry_name(destination: str, run_id: str) -> str:
    return f"{INDEX_PREFIX}{destination}/{sort_key(run_id)}-{run_id}"


class RunIndex:
    def __init__(self, container: ContainerClient) -> None:
        self._container = container

    def record(self, report: dict[str, Any]) -> None:
        """Write (or overwrite) the run's entry from its report; a report without its identity is skipped."""
        run_id, destination = report.get("run_id"), report.get("destination")
        if not isinstance(run_id, str) or not isinstance(destination, str) or not run_id or not destination:
            return
        summary = summary_of(report)
        # json.dumps escapes anything outside ASCII, which is all a metadata value may hold.
        metadata = {"status": str(summary["status"]), "summary": json.dumps(summary, separators=(",", ":"))}
        self._container.upload_blob(entry_name(destination, run_id), b"", overwrite=True, metadata=metadata)

    def page(self, destination: str, limit: int, token: str | None = None) -> RunsPage:
        """One page of the destination's runs, newest first: a single List Blobs call, no report read.

        `token` is the `next` of the previous page: the listing's own marker, wrapped with the destination so
        a token of one destination is refused for another (BadToken, as is anything not made here).
        """
        marker = _unwrap(destination, token) if token is not None else None
        pages = self._container.list_blobs(name_starts_with=f"{INDEX_PREFIX}{destination}/", include=["metadata"],
                                           results_per_page=limit).by_page(continuation_token=marker)
        try:
            blobs = list(next(pages))
        except StopIteration:
            blobs = []
        except ResourceNotFoundError:  # no runs container yet: no run at all
            return RunsPage([], None)
        except HttpResponseError as exc:
            if exc.status_code == 400 and marker is not None:  # the service refused the marker inside it
                raise BadToken("the continuation token is not one this API gave out") from None
            raise
        runs = [_summary_from(blob.name, blob.metadata or {}) for blob in blobs]
        following: str | None = getattr(pages, "continuation_token", None)  # typed as a plain Iterator
        return RunsPage(runs, _wrap(destination, following) if following else None)

    def latest(self, destination: str) -> dict[str, Any] | None:
        runs = self.page(destination, 1).runs
        return runs[0] if runs else None


def _summary_from(name: str, metadata: dict[str, str]) -> dict[str, Any]:
    """The entry's summary; an entry whose metadata cannot be read still names its run (status unknown)."""
    destination, _, rest = name.removeprefix(INDEX_PREFIX).partition("/")
    run_id = rest.partition("-")[2]
    try:
        summary: dict[str, Any] = json.loads(metadata.get("summary", ""))
    except ValueError:
        summary = {}
    base: dict[str, Any] = dict.fromkeys(SUMMARY_FIELDS)
    return {**base, "counts": {}, **summary, "run_id": run_id, "destination": destination}


def _wrap(destination: str, marker: str) -> str:
    raw = json.dumps({"d": destination, "m": marker}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unwrap(destination: str, token: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
    except (ValueError, binascii.Error):
        raise BadToken("the continuation token is not one this API gave out") from None
    if not isinstance(data, dict) or not isinstance(data.get("m"), str) or not data["m"]:
        raise BadToken("the continuation token is not one this API gave out")
    if data.get("d") != destination:
        raise BadToken("the continuation token belongs to another destination's runs")
    marker: str = data["m"]
    return marker
