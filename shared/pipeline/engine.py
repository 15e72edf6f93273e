"""The export engine: read -> validate/map -> batch -> upload -> report, free of Azure trigger types.

`export_segment` is what the blob, timer and HTTP functions and the CLI all call. It never raises for
bad rows (they are rejected in the report); it raises only for what stops a run before anything is sent
(configuration, unreadable file, profile cap) and records in the report whatever stops it later.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
import re
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from azure.core.exceptions import AzureError

from shared.config.destinations import Destination
from shared.config.time_budgets import CHANGE_SHARE_OF_LEASE
from shared.errors import (
    ConfigurationError,
    ExportError,
    InvalidRequest,
    ProfileCapExceeded,
    SegmentFileError,
    SendGridError,
)
from shared.mapping.contact_mapping import (
    ContactMapper,
    MappedContact,
    Rejection,
    missing_columns,
    resolve_custom_fields,
)
from shared.mapping.email_rules import normalise_email
from shared.pipeline.report import BatchResult, RejectedRow, RunReport, SegmentPart, TruncatedField
from shared.sendgrid.client import ImportJob, SendGridClient, redact
from shared.source.readers import ReaderOptions, open_segment
from shared.source.readers.base import KEYS_SEEN_KEPT
from shared.source.segment_files import SegmentFile, is_model_json
from shared.source.sources import ByteSource
from shared.staging.batching import MAX_BODY_BYTES, MAX_CONTACTS_PER_REQUEST, Batch, batches
from shared.staging.rejects import RejectsFile
from shared.staging.spool import Spool, email_key
from shared.state.sync_state import LockLost, SetAside, Snapshot, SyncState

log = logging.getLogger(__name__)

_CONTACT_INDEX = re.compile(r"contacts\[(\d+)\]")
MAX_SET_ASIDE_ROUNDS = 5


@dataclass
class ExportOptions:
    dry_run: bool = False
    preview_limit: int = 20
    max_contacts_per_request: int = MAX_CONTACTS_PER_REQUEST
    max_body_bytes: int = MAX_BODY_BYTES
    poll_interval: float = 1.0
    poll_timeout: float = 600.0  # well inside the 30-minute function timeout; later jobs are settled by the timer
    spool_dir: str | None = None


@dataclass
class ExportResult:
    """What a run leaves: its report, a dry run's preview, and every rejected row with its value on local
    disk (`rejects`, the rejects CSV). `close()` deletes that file: whoever keeps the result calls it once
    the rejects are stored (ExportService._persist, the CLI)."""

    report: RunReport
    preview: list[bytes] = field(default_factory=list)  # dry runs: the first mapped contacts, as sent
    rejects: RejectsFile = field(default_factory=RejectsFile)
    # email keys of rows rejected for a field other than the email: still in the segment (mirror keeps them)
    rejected_keys: array[int] = field(default_factory=lambda: array("q"))
    # rows the reader could not parse (bad quoting, wrong column count): whose they are is unknown
    unreadable_rows: int = 0
    # rows rejected on their email: people of unknown identity (mirror mode may not remove on their account)
    email_rejected: int = 0
    # what each segment's file gave, in reading order (the order that decides which duplicate wins)
    reads: list[_SegmentRead] = field(default_factory=list)

    def reject(self, rejected: RejectedRow, value: str = "") -> None:
        """Count the row in the report (which lists the first few) and write it, with its value, to `rejects`."""
        self.report.add_rejected(rejected)
        self.rejects.write(rejected.source, rejected.row, rejected.field, rejected.reason, value)

    def close(self) -> None:
        self.rejects.close()


@dataclass
class _SegmentRead:
    """One segment's share of the spool: its contacts are positions start..end-1 (segments are read in turn)."""

    file: SegmentFile
    source: str | None
    start: int = 0
    end: int = 0
    rows_read: int = 0
    rejected: int = 0


class Outcome:
    """Per-contact outcome codes in one byte each (a million contacts cost a megabyte)."""

    NOT_SENT, EXPORTED, UNCHANGED, IN_FAILED_JOB, PENDING, SET_ASIDE, MERGED = range(7)
    CONFIRMED = (EXPORTED, UNCHANGED)  # in the list as this run read it: the snapshot takes its fingerprint


def reader_options(destination: Destination, entity: str | None = None) -> ReaderOptions:
    wanted = destination.file_format.model_dump(exclude_none=True)
    if entity is not None:
        wanted["entity"] = entity
    return ReaderOptions(**wanted)


def describe_sources(source: ByteSource, files: Sequence[SegmentFile]) -> str:
    """The report's `source`: the one file, or every segment's file (a segment without one is named so)."""
    names = [source.describe(f.name) if f.name is not None else f"{f.segment} (no file)" for f in files]
    return names[0] if len(names) == 1 else ", ".join(names)


def export_segment(
    destination: Destination,
    source: ByteSource,
    name: str,
    client: SendGridClient | None,
    *,
    run_id: str,
    options: ExportOptions | None = None,
    on_batch_accepted: Callable[[BatchResult], None] | None = None,
    sync: SyncState | None = None,
) -> ExportResult:
    """Export one segment file (or CDM model.json) as the destination's whole segment (the CLI's `export`)."""
    entity = destination.entity_in(name) if is_model_json(name) else None
    file = SegmentFile(destination.segment_for(name) or destination.segments[0], name, entity)
    return export_segments(destination, source, [file], client, run_id=run_id, options=options,
                           on_batch_accepted=on_batch_accepted, sync=sync)


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
    custom = {}
    if destination.field_mapping.custom_fields:
        if client is None:
            raise ExportError("custom fields need SendGrid's field definitions: a client is required")
        custom = resolve_custom_fields(destination, client.field_definitions())
    mapper = ContactMapper(destination, custom)
    result = ExportResult(report, rejects=RejectsFile(options.spool_dir))
    spool = Spool(options.spool_dir)
    try:
        for file in files:
            read = _SegmentRead(file, source.describe(file.name) if file.name is not None else None,
                                start=len(spool))
            result.reads.append(read)
            if file.name is not None:
                rows, rejected = report.rows_read, report.rejected_count
                _read_into_spool(destination, source, file, mapper, spool, result, options)
                read.rows_read, read.rejected = report.rows_read - rows, report.rejected_count - rejected
            read.end = len(spool)
        report.contacts_valid = len(spool)
        superseded = spool.superseded()
        report.duplicates_merged = len(superseded)
        outcome_of = array("b", bytes(len(spool)))
        for index in superseded:
            outcome_of[index] = Outcome.MERGED
        unique = len(spool) - len(superseded)
        if unique > destination.max_profiles:
            raise ProfileCapExceeded(unique, destination.max_profiles)
        if options.dry_run:
            report.not_sent = unique
            report.finish("dry_run")
        else:
            assert client is not None
            field_names = {definition.id: field_name for field_name, definition in custom.items()}
            guard = (client.guarded(sync.guard_change, sync.lease_seconds * CHANGE_SHARE_OF_LEASE)
                     if sync is not None else contextlib.nullcontext())
            with guard:
                _send(destination, spool, superseded, client, result, options, on_batch_accepted, sync,
                      field_names, outcome_of)
            report.requests_sent = client.stats.requests
        report.segments = _segment_parts(result.reads, outcome_of)
        return result
    except BaseException:
        result.close()  # the caller gets no result to close: the rejects file goes now
        raise
    finally:
        spool.close()


def _read_into_spool(
    destination: Destination, source: ByteSource, file: SegmentFile, mapper: ContactMapper, spool: Spool,
    result: ExportResult, options: ExportOptions,
) -> None:
    report = result.report
    assert file.name is not None
    where = source.describe(file.name)
    try:
        _read_file(destination, source, file.name, where, reader_options(destination, file.entity), mapper, spool,
                   result, options)
    except UnicodeError as exc:  # a decoder failing as a whole, past the reader's own checks: the file is unreadable
        raise SegmentFileError(where, f"cannot be decoded ({exc}); check file_format.encoding",
                               row=report.rows_read + 1) from None


def _read_file(
    destination: Destination, source: ByteSource, name: str, where: str, reading: ReaderOptions,
    mapper: ContactMapper, spool: Spool, result: ExportResult, options: ExportOptions,
) -> None:
    report = result.report
    with open_segment(source, name, reading) as reader:
        missing = missing_columns(destination, reader.columns)
        if missing:
            header = reader.columns or []
            found = f"columns found: {', '.join(header) or 'none'}"
            if len(missing) == len(set(destination.field_mapping.columns())) or any("@" in c for c in header):
                # Likely a file without its header row: its "columns" are a profile, which must not reach a
                # report or log. A real header has at least one mapped column and no addresses.
                found = (f"the first row has none of the mapped columns or holds an email address, so it may be "
                         f"data, not column names ({len(header)} values): is the header row missing?")
            raise SegmentFileError(where, f"mapped column(s) {', '.join(missing)} not in the file; {found}")
        columns = mapper.columns
        # A format without a header (JSON Lines) names its columns row by row: a mapped column that no row
        # has is a misspelled mapping, which would silently drop that field for every contact (and, for the
        # email, reject every row: mirror mode would then see everyone as gone).
        unseen = set(range(len(columns))) if reader.columns is None else set()
        map_values, add, reject = mapper.map_values, spool.add, result.reject
        preview = options.preview_limit if options.dry_run else 0
        for origin, row, values, error in reader.project(columns):
            report.rows_read += 1
            if error is not None:
                result.unreadable_rows += 1
                reject(RejectedRow(origin, row, "row", error))
                continue
            if unseen:
                unseen.difference_update([i for i in unseen if values[i] is not None])
            mapped = map_values(values)
            if type(mapped) is MappedContact:
                add(origin, row, mapped.email, mapped.body)
                if mapped.truncated:
                    for truncated in mapped.truncated:
                        report.add_truncated(TruncatedField(origin, row, truncated))
                if preview and len(result.preview) < preview:
                    result.preview.append(mapped.body)
            else:
                assert isinstance(mapped, Rejection)
                column = mapped.column or columns[0]
                reject(RejectedRow(origin, row, mapped.field, mapped.reason, mapped.column),
                       mapper.value_of(values, column))
                if mapped.field == "email":
                    result.email_rejected += 1
                    continue
                email = normalise_email(values[0] or "")[0]
                if email is not None:
                    result.rejected_keys.append(email_key(email))
        if unseen and reader.keys_seen:
            raise _never_seen(destination, where, {columns[i] for i in unseen}, reader.keys_seen)


def _never_seen(destination: Destination, source: str, unseen: set[str],
                seen: Mapping[str, None]) -> ConfigurationError:
    """The error for mapped columns no row of a header-less file had: names only, never values."""
    names = [name for name in seen if "@" not in name]  # a key that is an address is data, not a column name
    hidden = len(seen) - len(names)
    shown = ", ".join(names[:KEYS_SEEN_KEPT]) or "none"
    more = " and more" if len(seen) >= KEYS_SEEN_KEPT else ""
    hint = f" ({hidden} that look like email addresses not shown)" if hidden else ""
    missing = sorted(unseen, key=destination.field_mapping.columns().index)
    return ConfigurationError(
        f"mapped column(s) {', '.join(missing)} appear in no row of {source} (JSON Lines has no header, so each "
        f"row names its fields; nested objects are flattened to parent.child); columns seen: {shown}{more}{hint}. "
        "Fix the field mapping; nothing was sent",
        field=f"destinations[{destination.name}].field_mapping")


def _send(
    destination: Destination, spool: Spool, superseded: set[int], client: SendGridClient, result: ExportResult,
    options: ExportOptions, on_batch_accepted: Callable[[BatchResult], None] | None, sync: SyncState | None,
    field_names: dict[str, str], outcome_of: array[int],
) -> None:
    report = result.report
    snapshot = sync.snapshot if sync is not None else None

    removals: set[int] = set()
    if sync is not None and snapshot is not None and destination.mode == "mirror":
        removals = _left_the_segment(spool, snapshot, result.rejected_keys)
        withheld = _why_removals_are_withheld(destination, result, len(spool) - len(superseded)) if removals else None
        if withheld is not None:
            # Who left cannot be told apart from who could not be read: keep them all. They stay in the
            # snapshot, so the next run that reads every segment whole removes those really gone.
            report.removals_withheld = len(removals)
            missing_from = "this file" if len(result.reads) == 1 else "the segments' files"
            report.notes.append(f"{withheld}: the {len(removals)} contact(s) missing from {missing_from} were not "
                                "removed from the list this run (new and changed contacts were sent); the next run "
                                "without this doubt removes those that left")
            removals = set()
        limit = destination.max_removal_fraction * len(snapshot)
        if len(removals) > destination.min_removals_checked and len(removals) > limit:
            share = len(removals) / max(len(snapshot), 1)
            report.not_sent = len(spool) - len(superseded)
            report.finish("refused", f"safety valve: this run would remove {len(removals)} of {len(snapshot)} "
                                     f"contacts ({share:.0%}) from the list, more than max_removal_fraction "
                                     f"{destination.max_removal_fraction:.0%} (and more than min_removals_checked "
                                     f"{destination.min_removals_checked}); is the segment file complete? "
                                     "Nothing was sent.")
            return

    def outgoing() -> Iterator[tuple[int, bytes]]:
        for index, body in spool.contacts():
            if index in superseded:
                continue
            if snapshot is not None and snapshot.fingerprint(spool.keys[index]) == spool.fingerprints[index]:
                report.unchanged_skipped += 1
                outcome_of[index] = Outcome.UNCHANGED
                continue
            yield index, body

    # Sent batches are kept as (outcome, spool positions) only: their bodies would hold the whole file.
    accepted: list[tuple[BatchResult, array[int]]] = []
    failure: ExportError | None = None
    resume = sync.resume if sync is not None else {}
    resume_set_aside = sync.resume_set_aside if sync is not None else {}
    for batch in batches(outgoing(), [destination.list_id_str],
                         max_contacts=options.max_contacts_per_request, max_bytes=options.max_body_bytes):
        if batch.number in resume:
            outcome, indices = _resumed(batch, resume[batch.number], resume_set_aside.get(batch.number, ()), spool,
                                        result, outcome_of)
            report.batches.append(outcome)
            accepted.append((outcome, indices))
            continue
        if failure is not None:
            report.not_sent += len(batch.contacts)
            report.batches.append(BatchResult(batch.number, len(batch.contacts), batch.body_size()))
            continue
        resends = client.stats.unconfirmed_resends
        outcome, sent, set_aside = _send_batch(batch, spool, client, result, field_names, outcome_of)
        outcome.resent = client.stats.unconfirmed_resends - resends
        if outcome.resent:
            report.notes.append(f"batch {batch.number}: SendGrid's answer was lost and the batch was sent again "
                                f"{outcome.resent} time(s); SendGrid may have imported its {outcome.contacts} "
                                "contacts more than once (harmless: upserts are keyed by email)")
        report.batches.append(outcome)
        if isinstance(sent, ExportError):
            failure = sent
            report.not_sent += outcome.contacts
            continue
        accepted.append((outcome, array("L", sent.indices)))
        del sent, batch
        if sync is not None and outcome.job_id:
            try:
                sync.set_aside(outcome.number, set_aside)
                sync.batch_accepted(outcome.number, outcome.job_id)
            except LockLost as exc:  # another run owns the destination now: it must not be interleaved with
                failure = ExportError(f"{exc}; batch {outcome.number} was accepted by SendGrid, sending stopped")
            except AzureError as exc:  # without run state there is no lock, checkpoint or snapshot: stop
                failure = ExportError(f"run state storage unavailable ({type(exc).__name__}): batch {outcome.number} "
                                      "was accepted by SendGrid but could not be recorded, so sending stopped")
        if on_batch_accepted is not None:
            on_batch_accepted(outcome)

    try:
        jobs = client.wait_for_imports([o.job_id for o, _ in accepted if o.job_id],
                                       poll_interval=options.poll_interval, timeout=options.poll_timeout)
    except SendGridError as exc:  # the batches were accepted; only their outcome is unknown: keep the report
        jobs = {}
        report.notes.append(f"could not poll the import jobs: {exc}; their contacts are reported pending")
    _apply_job_results(accepted, jobs, spool, report, outcome_of, [read.start for read in result.reads])

    removed_ok: set[int] = set()
    lock_lost = False
    if failure is None and removals and sync is not None:
        try:
            removed_ok = _remove_from_list(destination, sync, removals, client, report)
        except LockLost:  # the list is the new owner's now: it decides who leaves it
            lock_lost = True

    report.requests_sent = client.stats.requests
    if failure is not None:
        report.finish("failed", f"{failure}; re-run to resume after the last accepted batch")
        return
    if sync is not None and not lock_lost:
        mirror = destination.mode == "mirror"
        try:
            sync.write_snapshot(
                spool.keys, spool.fingerprints, (i for i in range(len(spool)) if i not in superseded),
                email_of=spool.email_at, confirmed=lambda i: outcome_of[i] in Outcome.CONFIRMED,
                keep_absent=lambda position: not (mirror and position in removed_ok))
            sync.clear_checkpoint()
        except LockLost:  # not a storage outage: the checkpoint and snapshot belong to another run now
            lock_lost = True
        except AzureError as exc:  # the contacts are exported; only the bookkeeping for the next run is lost
            report.notes.append(f"run state storage unavailable ({type(exc).__name__}): the sync snapshot was not "
                                "saved, so the next refresh may send this run's contacts again")
    if lock_lost:
        report.finish("failed", _taken_over(destination, len(removals), report.removed_from_list))
        return
    if report.in_failed_jobs or report.pending:
        report.finish("partial", "some import jobs did not complete; their contacts are sent again next refresh")
    else:
        report.finish("succeeded")


def _why_removals_are_withheld(destination: Destination, result: ExportResult, contacts: int) -> str | None:
    """Why this mirror run may not take anyone off the list, or None: when in doubt, remove nobody.

    Each doubt is a way for a member to look as if they had left: a segment not read at all, rows whose
    person is unknown (unreadable, or rejected on their email), or an export with no one in it (a header-only
    or emptied file is more often a broken export than an empty segment).
    """
    missing = [read.file.segment for read in result.reads if read.file.name is None]
    if missing:
        return (f"segment(s) {', '.join(missing)} have no file yet, so who is in them is unknown")
    if result.unreadable_rows:
        return f"{result.unreadable_rows} row(s) could not be read, so whose profiles they hold is unknown"
    rows = result.report.rows_read
    if result.email_rejected and result.email_rejected > destination.max_email_rejected_fraction * rows:
        return (f"{result.email_rejected} of {rows} row(s) were rejected on their email, more than "
                f"max_email_rejected_fraction {destination.max_email_rejected_fraction:.0%}: whose profiles they "
                "hold is unknown")
    if contacts == 0 and not destination.allow_empty_segments:
        return ("the segments hold no valid contact (an empty or header-only file, or every row rejected); set "
                "allow_empty_segments to let such a run empty the list")
    return None


def _segment_parts(reads: Sequence[_SegmentRead], outcome_of: array[int]) -> list[SegmentPart]:
    """Each segment's share of the report, counted from the contacts' outcome codes: it balances on its own."""
    parts: list[SegmentPart] = []
    for read in reads:
        codes = outcome_of[read.start:read.end].tobytes()
        count = codes.count
        part = SegmentPart(segment=read.file.segment, source=read.source, entity=read.file.entity,
                           rows_read=read.rows_read, exported=count(Outcome.EXPORTED),
                           unchanged_skipped=count(Outcome.UNCHANGED),
                           rejected_count=read.rejected + count(Outcome.SET_ASIDE),
                           duplicates_merged=count(Outcome.MERGED), in_failed_jobs=count(Outcome.IN_FAILED_JOB),
                           pending=count(Outcome.PENDING), not_sent=count(Outcome.NOT_SENT))
        if read.file.name is None:
            part.note = "no file yet: nothing was read for this segment"
        parts.append(part)
    return parts


def _left_the_segment(spool: Spool, snapshot: Snapshot, rejected_keys: array[int]) -> set[int]:
    """Snapshot positions whose email is not in this segment file (a row rejected for another field is in it)."""
    present = array("q", sorted(itertools.chain(spool.keys, rejected_keys)))
    gone: set[int] = set()
    for position, key in enumerate(snapshot.keys):
        at = bisect.bisect_left(present, key)
        if at == len(present) or present[at] != key:
            gone.add(position)
    return gone


def _taken_over(destination: Destination, leavers: int, removed: int) -> str:
    """The error of a run whose destination lock another run took after this run's last accepted batch."""
    if destination.mode != "mirror" or not leavers:
        removals = ""
    elif removed:
        removals = f"{removed} contact(s) that left the segment were removed from the list, but "
    else:
        removals = f"none of the {leavers} contact(s) that left the segment was removed from the list and "
    return (f"another run took over destination {destination.name} (this run's lock expired and was taken or "
            f"broken) after this run's batches were sent; {removals}the sync snapshot was not saved (the run "
            "holding the destination now keeps its state; the next refresh may send this run's contacts again)")


def _remove_from_list(destination: Destination, sync: SyncState, positions: set[int], client: SendGridClient,
                      report: RunReport) -> set[int]:
    """Mirror mode: take contacts that left the segment off the list (they stay in the account).

    Raises LockLost (removing nothing) if another run holds the destination: its segment file may be newer.
    """
    removed: list[str] = []  # contact IDs whose removal SendGrid accepted, also when a later chunk fails
    unknown: list[str] = []  # contact IDs SendGrid no longer knows (deleted from the account): on no list
    refused: list[str] = []  # addresses SendGrid's search cannot look up: they stay pending in the snapshot
    try:  # a failure here must not lose the report of the contacts already exported
        sync.ensure_lock()
        emails = sync.snapshot_emails(positions)
        ids = client.search_emails(sorted(set(emails.values())), refused)
        sync.ensure_lock()  # again: the lookup takes a while on a big list
        client.remove_from_list(destination.list_id_str, ids.values(), removed, unknown)
    except LockLost:
        raise
    except (ExportError, AzureError) as exc:
        report.removed_from_list = len(removed)
        report.notes.append(f"removing {len(positions)} contacts that left the segment failed after {len(removed)} "
                            f"were removed and {len(unknown)} found gone from SendGrid (the next refresh tries the "
                            f"others again): {exc}")
        if not removed and not unknown:
            return set()
        done = set(removed) | set(unknown)
        return {position for position, email in emails.items() if ids.get(email) in done}
    report.removed_from_list = len(removed)
    pending = set(refused)
    absent = sum(1 for email in set(emails.values()) if email not in ids and email not in pending) + len(unknown)
    if absent:
        report.notes.append(f"{absent} contacts that left the segment were not in SendGrid any more")
    if pending:
        report.notes.append(f"{len(pending)} contacts that left the segment could not be looked up (SendGrid's "
                            "search takes addresses of up to 100 characters, and refused these): they stay on the "
                            "list; remove them in SendGrid by hand. The next refresh tries again")
    return {position for position, email in emails.items() if email not in pending}


def _send_batch(
    batch: Batch, spool: Spool, client: SendGridClient, result: ExportResult, field_names: dict[str, str],
    outcome_of: array[int],
) -> tuple[BatchResult, Batch | ExportError, list[SetAside]]:
    """Send one batch; contacts SendGrid names in a 400 are set aside (rejected, and returned for the
    checkpoint) and the rest resent."""
    outcome = BatchResult(batch.number, len(batch.contacts), batch.body_size())
    set_aside: list[SetAside] = []
    current = batch
    for _ in range(MAX_SET_ASIDE_ROUNDS):
        if not current.contacts:
            outcome.status = "empty"
            return _unsent(outcome, current), current, set_aside
        try:
            outcome.job_id = client.upsert_contacts(current.body())
        except InvalidRequest as exc:
            named = _named_contacts(exc, len(current.contacts), field_names)
            if not named:
                return _unsent(outcome, current), exc, set_aside
            for position, (field_name, message) in named.items():
                index = current.indices[position]
                source, row = spool.where(index)
                reason = f"SendGrid: {message}"
                result.reject(RejectedRow(source, row, field_name, reason))
                outcome_of[index] = Outcome.SET_ASIDE
                set_aside.append((index, field_name, reason))
            outcome.set_aside += len(named)
            current = current.without(set(named))
            continue
        except SendGridError as exc:  # any other answer (or none): this batch and the rest stay unsent, reported
            return _unsent(outcome, current), exc, set_aside
        except LockLost as exc:  # checked before the PUT: another run may hold the destination now
            return _unsent(outcome, current), ExportError(f"{exc}; batch {batch.number} and later were not sent"), \
                set_aside
        except AzureError as exc:  # the lease could not be renewed: sending without it could interleave runs
            return _unsent(outcome, current), ExportError(
                f"run state storage unavailable ({type(exc).__name__}) while renewing the destination's lock: "
                f"batch {batch.number} and later were not sent"), set_aside
        outcome.status = "accepted"
        outcome.contacts = len(current.contacts)
        outcome.body_bytes = current.body_size()
        return outcome, current, set_aside
    return (_unsent(outcome, current), InvalidRequest("SendGrid kept refusing contacts in this batch", status=400),
            set_aside)


def _resumed(batch: Batch, job_id: str, set_aside: Sequence[SetAside], spool: Spool,
             result: ExportResult, outcome_of: array[int]) -> tuple[BatchResult, array[int]]:
    """A batch an interrupted run of this plan had accepted. Rebuilt from the spool it holds again the
    contacts SendGrid refused then: they are rejected again, never credited to the job that lacks them."""
    refused = {index: (field_name, reason) for index, field_name, reason in set_aside}
    dropped = {position for position, index in enumerate(batch.indices) if index in refused}
    for position in sorted(dropped):
        index = batch.indices[position]
        source, row = spool.where(index)
        result.reject(RejectedRow(source, row, *refused[index]))
        outcome_of[index] = Outcome.SET_ASIDE
    kept = batch.without(dropped) if dropped else batch
    outcome = BatchResult(batch.number, len(kept.contacts), kept.body_size(), job_id=job_id, status="accepted",
                          resumed=True, set_aside=len(dropped))
    return outcome, array("L", kept.indices)


def _unsent(outcome: BatchResult, current: Batch) -> BatchResult:
    """A failed batch counts only the contacts still in it: those set aside earlier are already rejected."""
    outcome.contacts = len(current.contacts)
    outcome.body_bytes = current.body_size()
    return outcome


def _named_contacts(exc: InvalidRequest, count: int, field_names: dict[str, str]) -> dict[int, tuple[str, str]]:
    """position -> (field, message) for each contact SendGrid's 400 names, e.g. `contacts[3].identifier`."""
    named: dict[int, tuple[str, str]] = {}
    for error in exc.errors:
        where = error.get("field") or ""
        match = _CONTACT_INDEX.search(where)
        if match and int(match.group(1)) < count:
            # SendGrid's message quotes the address: report the rule, not the value.
            message = redact(error.get("message") or "refused")
            named[int(match.group(1))] = (_reported_field(where[match.end():].lstrip("."), field_names), message)
    return named


def _reported_field(sendgrid_field: str, field_names: dict[str, str]) -> str:
    """`identifier` -> `email`; `custom_fields.e1_T` -> `custom_fields.<name>`; other fields as SendGrid names them."""
    if not sendgrid_field:
        return "contact"
    if sendgrid_field == "identifier":
        return "email"
    if sendgrid_field.startswith("custom_fields."):
        field_id = sendgrid_field.removeprefix("custom_fields.")
        return f"custom_fields.{field_names.get(field_id, field_id)}"
    return sendgrid_field


def _apply_job_results(accepted: list[tuple[BatchResult, array[int]]], jobs: dict[str, ImportJob], spool: Spool,
                       report: RunReport, outcome_of: array[int], starts: Sequence[int]) -> None:
    for outcome, indices in accepted:
        if outcome.job_id is None and not indices:
            continue  # every contact was set aside: nothing was sent, the batch stays "empty"
        job = jobs.get(outcome.job_id or "")
        status = job.status if job else "pending"
        outcome.status = status
        # Each segment's contacts in the batch (its positions ascend): settling a pending job later updates
        # the segments' parts of the stored report as well as its total.
        bounds = [bisect.bisect_left(indices, start) for start in starts] + [len(indices)]
        outcome.by_segment = [high - low for low, high in itertools.pairwise(bounds)]
        if job:
            outcome.created_count = job.created_count
            outcome.updated_count = job.updated_count
            outcome.errored_count = job.errored_count
        if status == "completed":
            report.exported += len(indices)
            code = Outcome.EXPORTED
        elif status in ("errored", "failed"):
            report.in_failed_jobs += len(indices)
            for index in indices:
                report.add_failed_job_row(*spool.where(index))
            code = Outcome.IN_FAILED_JOB
        else:
            report.pending += len(indices)
            code = Outcome.PENDING
        for index in indices:
            outcome_of[index] = code
