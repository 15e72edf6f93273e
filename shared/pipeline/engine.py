"""One run of a destination, top to bottom, free of Azure trigger types:

    read     every segment's file into one spool (shared.pipeline.read)
    plan     who leaves the list, and whether that may happen this run (shared.pipeline.plan)
    drain    the changed contacts in batches, each checkpointed (shared.pipeline.drain)
    settle   import jobs, removals, the snapshot, the status (shared.pipeline.settle)
    report   each segment's part of the accounting (here)

`export_segments` is what the blob, timer and HTTP functions and the CLI all reach. It never raises for bad
rows (they are rejected in the report); it raises only for what stops a run before anything is sent
(configuration, unreadable file, profile cap) and records in the report whatever stops it later.
"""

from __future__ import annotations

import contextlib
from array import array
from collections.abc import Callable, Sequence
from typing import Required, TypedDict, Unpack

from shared.config.destinations import Destination
from shared.config.time_budgets import CHANGE_SHARE_OF_LEASE
from shared.errors import ExportError, ProfileCapExceeded, SendGridRefused
from shared.mapping.contact_mapping import ContactMapper, resolve_custom_fields
from shared.pipeline.budget import within_budget
from shared.pipeline.drain import drain
from shared.pipeline.plan import plan_removals
from shared.pipeline.read import Known, describe_sources, read_segments, reader_options
from shared.pipeline.report import BatchResult, RunReport, SegmentPart
from shared.pipeline.result import ExportOptions, ExportResult, Outcome, Run, SegmentRead
from shared.pipeline.settle import settle
from shared.sendgrid.client import SendGridClient
from shared.sendgrid.errors import SendGridError
from shared.sendgrid.models import CustomField
from shared.source.segment_files import SegmentFile, is_model_json
from shared.source.sources import ByteSource
from shared.staging.spool import Spool
from shared.state.rejects import RejectsFile
from shared.state.sync_state import SyncState

__all__ = ["ExportOptions", "ExportResult", "Outcome", "RunArguments", "describe_sources", "export_segment",
           "export_segments", "reader_options"]


# Spool.unchanged (mapped, unchanged, recognised by its line) -> outcome codes
_UNCHANGED_CODE = bytes([Outcome.NOT_SENT, Outcome.UNCHANGED, Outcome.UNCHANGED]).ljust(256, b"\0")


class RunArguments(TypedDict, total=False):
    """What a run takes besides its inputs (export_segments' keywords; `run_id` is required)."""

    run_id: Required[str]
    options: ExportOptions | None
    on_batch_accepted: Callable[[BatchResult], None] | None
    sync: SyncState | None


def export_segment(destination: Destination, source: ByteSource, name: str, client: SendGridClient | None,
                   **run: Unpack[RunArguments]) -> ExportResult:
    """Export one segment file (or CDM model.json) as the destination's whole segment (the CLI's `export`)."""
    entity = destination.entity_in(name) if is_model_json(name) else None
    file = SegmentFile(destination.segment_for(name) or destination.segments[0], name, entity)
    return export_segments(destination, source, [file], client, **run)


def export_segments(
    destination: Destination,
    source: ByteSource,
    files: Sequence[SegmentFile],
    client: SendGridClient | None,
    *,
    run_id: str,
    options: ExportOptions | None = None,
    on_batch_accepted: Callable[[BatchResult], None] | None = None,
    sync: SyncState | None = None,
) -> ExportResult:
    """Export the union of the segments' files to the destination's list.

    Files are read in the order given (the destination's `segments` order) into one spool, so a person in
    several segments is one contact and the row read last wins, as for duplicates within one file.
    `client` may be None only for a dry run against a destination without custom fields.
    """
    options = options or ExportOptions()
    report = RunReport(run_id=run_id, destination=destination.name, list_id=destination.list_id_str,
                       source=describe_sources(source, files), mode=destination.mode, dry_run=options.dry_run)
    custom = _custom_fields(destination, client)
    result = ExportResult(report, rejects=RejectsFile(options.spool_dir))
    spool = Spool(options.spool_dir)
    try:
        known = Known(sync.snapshot) if sync is not None and not options.dry_run else None
        if sync is not None:
            spool.entry_emails = sync.snapshot_emails_by_key  # rows recognised by their line keep only their key
        read_segments(destination, source, files, ContactMapper(destination, custom), spool, result, options, known)
        if known is not None and known.snapshot is not None:
            known.snapshot.lines.release()  # the look-up by line is over: its arrays go before sending
        superseded = spool.superseded()
        report.duplicates_merged = len(superseded)
        outcome_of = array("b", spool.unchanged.translate(_UNCHANGED_CODE))  # the rows known unchanged, unmapped
        for index in superseded:
            outcome_of[index] = Outcome.MERGED
        report.unchanged_skipped = outcome_of.tobytes().count(Outcome.UNCHANGED)
        unique = len(spool) - len(superseded)
        if unique > destination.max_profiles:
            raise ProfileCapExceeded(unique, destination.max_profiles)
        if options.dry_run:
            report.not_sent = unique
            report.finish("dry_run")
        else:
            assert client is not None
            run = Run(destination, spool, superseded, client, result, options, sync,
                      {definition.id: name for name, definition in custom.items()}, outcome_of, on_batch_accepted)
            _send(run)
        report.segments = _segment_parts(result.reads, outcome_of)
        return result
    except BaseException:
        result.close()  # the caller gets no result to close: the rejects file goes now
        raise
    finally:
        spool.close()


def _custom_fields(destination: Destination, client: SendGridClient | None) -> dict[str, CustomField]:
    """The mapping's custom field names resolved to SendGrid's IDs (an unknown name stops the run here)."""
    if not destination.field_mapping.custom_fields:
        return {}
    if client is None:
        raise ExportError("custom fields need SendGrid's field definitions: a client is required")
    try:
        definitions = client.field_definitions()
    except SendGridError as exc:  # a bad key or a missing scope, before anything was read or sent
        raise SendGridRefused(str(exc)) from exc
    return resolve_custom_fields(destination, definitions)


def _send(run: Run) -> None:
    """plan -> drain -> settle, every change to SendGrid behind the destination's lease."""
    sync, client = run.sync, run.client
    guard = (client.guarded(sync.guard_change, sync.lease_seconds * CHANGE_SHARE_OF_LEASE)
             if sync is not None else contextlib.nullcontext())
    with guard:
        removals = plan_removals(run) if within_budget(run) else None
        if removals is not None:  # None: refused by the safety valve, nothing is sent
            settle(run, drain(run), removals)
    run.report.requests_sent = client.stats.requests


def _segment_parts(reads: Sequence[SegmentRead], outcome_of: array[int]) -> list[SegmentPart]:
    """Each segment's share of the report, counted from the contacts' outcome codes: it balances on its own."""
    parts: list[SegmentPart] = []
    for read in reads:
        count = outcome_of[read.start:read.end].tobytes().count
        part = SegmentPart(segment=read.file.segment, source=read.source, entity=read.file.entity,
                           rows_read=read.rows_read, exported=count(Outcome.EXPORTED),
                           unchanged_skipped=count(Outcome.UNCHANGED),
                           rejected_count=read.rejected + count(Outcome.SET_ASIDE),
                           duplicates_merged=count(Outcome.MERGED), in_failed_jobs=count(Outcome.IN_FAILED_JOB),
                           pending=count(Outcome.PENDING), not_sent=count(Outcome.NOT_SENT),
                           suppressed=read.suppressed)
        if read.file.name is None:
            part.note = "no file yet: nothing was read for this segment"
        parts.append(part)
    return parts
