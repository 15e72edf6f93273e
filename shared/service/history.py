"""What an operator looks at: every destination with its current files and last run, a destination's run
history, and a run's rejects file. Plain values in and out; the HTTP functions only translate.

Listings come from the run index (shared.state.run_index), never from the reports, so a page costs one List
Blobs call however long the history is. Nothing listed holds a value of a row: the rejects file is the one
answer with personal data in it, and it is only ever streamed to the caller, never parsed here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import ResourceNotFoundError

from shared.config.destinations import Destination
from shared.state.run_index import BadToken, RunsPage

if TYPE_CHECKING:
    from shared.service.export_service import ExportService

# Destination, BadToken and RunsPage are re-exported: the HTTP functions import shared.service only.
__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "MAX_REJECTS_BYTES", "BadToken", "Destination", "Rejects", "RunsPage",
           "destinations", "open_rejects", "parse_limit", "runs"]

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
# The Python worker answers an HTTP request with one body held in memory (HTTP streams need the FastAPI
# extension, which turns every HTTP function of the app into FastAPI ones): a rejects file past this size
# is refused with its size instead of filling the worker's memory; read it from the runs container then.
MAX_REJECTS_BYTES = 64 * 1024 * 1024


@dataclass
class Rejects:
    """A run's rejects file, opened: its size and its bytes, chunk by chunk as Blob Storage sends them."""

    path: str
    size: int
    chunks: Iterator[bytes]


def parse_limit(text: str | None) -> int:
    """The page size a caller asked for; ValueError naming the rule when it is not 1..MAX_LIMIT."""
    if text is None or text == "":
        return DEFAULT_LIMIT
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:
        raise ValueError(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(text)


def destinations(service: ExportService) -> list[dict[str, Any]]:
    """Every configured destination, as the operator sees it: settings, current files, consent, last run."""
    return [_overview(service, destination) for destination in service.destinations.destinations]


def _overview(service: ExportService, destination: Destination) -> dict[str, Any]:
    consent = destination.consent
    return {
        "name": destination.name,
        "display_name": destination.display_name or destination.name,
        "mode": destination.mode,
        "list_id": destination.list_id_str,
        "segments": [{"name": f.segment,
                      "current_file": None if f.name is None else {
                          "blob": f.name,
                          "last_modified": f.last_modified.isoformat().replace("+00:00", "Z")
                          if f.last_modified is not None else None}}
                     for f in service.current_files(destination)],
        "consent": None if consent is None else {"by": consent.agreed_by, "at": consent.agreed_at},
        "last_run": service.runs.index.latest(destination.name),
    }


def runs(service: ExportService, destination: Destination, *, limit: int = DEFAULT_LIMIT,
         before: str | None = None) -> RunsPage:
    """A page of the destination's runs, newest first; `before` is the previous page's `next` (BadToken)."""
    return service.runs.index.page(destination.name, limit, before)


def open_rejects(service: ExportService, run_id: str) -> Rejects | None:
    """The run's rejects file (None: the run rejected nothing, or is unknown). The first request reads the
    blob's size and first chunk; the rest is fetched while the caller iterates, never read whole here."""
    path = f"rejects/{run_id}.csv"
    try:
        downloader = service.runs.container.download_blob(path)
    except ResourceNotFoundError:
        return None
    return Rejects(path, int(downloader.size), iter(downloader.chunks()))
