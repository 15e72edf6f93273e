"""Stage 4, settle: the outcome of every accepted batch (its import job), the removals, the snapshot, the status.

Only what SendGrid confirmed advances the snapshot; a run that lost its lock to another records nothing
more (the list and its state belong to the run holding the destination now).
"""

from __future__ import annotations

import bisect
import itertools
from array import array
from collections.abc import Iterator, Sequence

from azure.core.exceptions import AzureError

from shared.config.destinations import Destination
from shared.errors import ExportError
from shared.pipeline.drain import Drained
from shared.pipeline.report import BatchResult, RunReport
from shared.pipeline.result import Outcome, Run
from shared.sendgrid.client import ImportJob, SendGridClient
from shared.sendgrid.errors import SendGridError
from shared.staging.spool import Spool
from shared.state.lock import LeaseTooShort, LockLost
from shared.state.snapshot_merge import EntryBlock
from shared.state.sync_state import SyncState


def settle(run: Run, drained: Drained, removals: set[int]) -> None:
    report, client, sync = run.report, run.client, run.sync
    try:
        jobs = client.wait_for_imports([o.job_id for o, _ in drained.accepted if o.job_id],
                                       poll_interval=run.options.poll_interval, timeout=run.options.poll_timeout)
    except SendGridError as exc:  # the batches were accepted; only their outcome is unknown: keep the report
        jobs = {}
        report.notes.append(f"could not poll the import jobs: {exc}; their contacts are reported pending")
    _apply_job_results(drained.accepted, jobs, run.spool, report, run.outcome_of,
                       [read.start for read in run.result.reads])

    removed_ok: set[int] = set()
    lock_lost = False
    if drained.failure is None and removals and sync is not None:
        try:
            removed_ok = _remove_from_list(run.destination, sync, removals, client, report)
        except LockLost:  # the list is the new owner's now: it decides who leaves it
            lock_lost = True

    report.requests_sent = client.stats.requests
    if drained.failure is not None:
        report.finish("failed", f"{drained.failure}; re-run to resume after the last accepted batch")
        return
    if sync is not None and not lock_lost:
        lock_lost = not _save_snapshot(run, sync, removed_ok)
    if lock_lost:
        report.finish("failed", _taken_over(run.destination, len(removals), report.removed_from_list))
        return
    if report.in_failed_jobs or report.pending:
        report.finish("partial", "some import jobs did not complete; their contacts are sent again next refresh")
    else:
        report.finish("succeeded")


def _save_snapshot(run: Run, sync: SyncState, removed_ok: set[int]) -> bool:
    """Advance the snapshot by what SendGrid confirmed (the contacts of completed import jobs; the unchanged
    ones keep their entries, as do those of jobs not completed); False when the lock was lost meanwhile."""
    mirror = run.destination.mode == "mirror"
    try:
        sync.write_snapshot(_exported(run), dropped=removed_ok if mirror else set())
        sync.clear_checkpoint()
    except LockLost:  # not a storage outage: the checkpoint and snapshot belong to another run now
        return False
    except AzureError as exc:  # the contacts are exported; only the bookkeeping for the next run is lost
        run.report.notes.append(f"run state storage unavailable ({type(exc).__name__}): the sync snapshot was not "
                                "saved, so the next refresh may send this run's contacts again")
    return True


def _exported(run: Run) -> Iterator[EntryBlock]:
    """The contacts SendGrid confirmed this run, a spool block at a time: keys, fingerprints, line hashes, emails."""
    import numpy  # noqa: PLC0415 - the snapshot's merge uses it anyway

    keys = numpy.frombuffer(run.spool.keys, dtype=numpy.int64)
    outcome_of = numpy.frombuffer(run.outcome_of, dtype=numpy.int8)
    for indices, fps, line_hashes, emails in run.spool.email_blocks():
        confirmed = outcome_of[indices] == Outcome.EXPORTED
        if confirmed.any():
            yield (keys[indices[confirmed]], fps[confirmed], line_hashes[confirmed],
                   list(itertools.compress(emails, confirmed.tolist())))


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

    Raises LockLost if another run holds the destination (its segment files may be newer): the removals
    done before it are counted in the report. A lease too short to go on is a failure like any other here:
    the removals stop, the snapshot keeps those not done, and the next refresh tries them again.
    """
    removed: list[str] = []  # contact IDs whose removal SendGrid accepted, also when a later chunk fails
    unknown: list[str] = []  # contact IDs SendGrid no longer knows (deleted from the account): on no list
    refused: list[str] = []  # addresses SendGrid's search cannot look up: they stay pending in the snapshot
    emails: dict[int, str] = {}
    ids: dict[str, str] = {}
    try:  # a failure here must not lose the report of the contacts already exported
        sync.ensure_lock()
        emails = sync.snapshot_emails(positions)
        ids = client.search_emails(sorted(set(emails.values())), refused)
        sync.ensure_lock()  # again: the lookup takes a while on a big list
        client.remove_from_list(destination.list_id_str, ids.values(), removed, unknown)
    except LeaseTooShort as exc:
        return _removal_failed(report, positions, removed, unknown, emails, ids, exc)
    except LockLost:
        report.removed_from_list = len(removed)
        raise
    except (ExportError, SendGridError, AzureError) as exc:
        return _removal_failed(report, positions, removed, unknown, emails, ids, exc)
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


def _removal_failed(report: RunReport, positions: set[int], removed: list[str], unknown: list[str],
                    emails: dict[int, str], ids: dict[str, str], exc: Exception) -> set[int]:
    """Count what was done before the failure; the positions whose contact is off the list (or gone)."""
    report.removed_from_list = len(removed)
    report.notes.append(f"removing {len(positions)} contacts that left the segment failed after {len(removed)} "
                        f"were removed and {len(unknown)} found gone from SendGrid (the next refresh tries the "
                        f"others again): {exc}")
    done = set(removed) | set(unknown)
    return {position for position, email in emails.items() if ids.get(email) in done}


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
