"""Stage 2, plan: who leaves the list (mirror mode), whether that may happen this run, and the safety valve.

When in doubt, remove nobody and say why: a member must never look as if they had left because a segment
was not read, a row could not be read, or an export came out empty.
"""

from __future__ import annotations

from array import array

from shared.config.destinations import Destination
from shared.pipeline.result import ExportResult, Run
from shared.state.snapshot_entries import Snapshot


def plan_removals(run: Run) -> set[int] | None:
    """Snapshot positions to take off the list; None when the safety valve refuses the run (nothing is sent)."""
    sync, destination, report = run.sync, run.destination, run.report
    snapshot = sync.snapshot if sync is not None else None
    if snapshot is None or destination.mode != "mirror":
        return set()
    removals = _left_the_segments(snapshot, run.result.rejected_keys)
    withheld = _why_removals_are_withheld(destination, run.result) if removals else None
    if withheld is not None:
        # Who left cannot be told apart from who could not be read: keep them all. They stay in the
        # snapshot, so the next run that reads every segment whole removes those really gone.
        report.removals_withheld = len(removals)
        missing_from = "this file" if len(run.result.reads) == 1 else "the segments' files"
        report.notes.append(f"{withheld}: the {len(removals)} contact(s) missing from {missing_from} were not "
                            "removed from the list this run (new and changed contacts were sent); the next run "
                            "without this doubt removes those that left")
        return set()
    limit = destination.max_removal_fraction * len(snapshot)
    if len(removals) > destination.min_removals_checked and len(removals) > limit:
        share = len(removals) / max(len(snapshot), 1)
        report.not_sent = run.unique
        report.finish("refused", f"safety valve: this run would remove {len(removals)} of {len(snapshot)} "
                                 f"contacts ({share:.0%}) from the list, more than max_removal_fraction "
                                 f"{destination.max_removal_fraction:.0%} (and more than min_removals_checked "
                                 f"{destination.min_removals_checked}); is the segment file complete? "
                                 "Nothing was sent.")
        return None
    return removals


def _why_removals_are_withheld(destination: Destination, result: ExportResult) -> str | None:
    """Why this mirror run may not take anyone off the list, or None.

    Each doubt is a way for a member to look as if they had left: a segment not read at all, rows whose
    person is unknown (unreadable, or rejected on their email), or an export with no one in it (a header-only
    or emptied file is more often a broken export than an empty segment).
    """
    missing = [read.file.segment for read in result.reads if read.file.name is None]
    if missing:
        return f"segment(s) {', '.join(missing)} have no file yet, so who is in them is unknown"
    if result.unreadable_rows:
        return f"{result.unreadable_rows} row(s) could not be read, so whose profiles they hold is unknown"
    fraction = destination.max_email_rejected_fraction
    for read in result.reads:  # each segment on its own: the others' people must not hide its broken export
        where = f"segment {read.file.segment}" if len(result.reads) > 1 else "the segment"
        if read.email_rejected and read.email_rejected > fraction * read.rows_read:
            return (f"{read.email_rejected} of {read.rows_read} row(s) of {where} were rejected on their email, more "
                    f"than max_email_rejected_fraction {fraction:.0%}: whose profiles they hold is unknown")
        if read.end == read.start and not destination.allow_empty_segments:
            return (f"{where} holds no valid contact (an empty or header-only file, or every row rejected); set "
                    "allow_empty_segments to let such a run empty the list")
    return None


def _left_the_segments(snapshot: Snapshot, rejected_keys: array[int]) -> set[int]:
    """Snapshot positions whose email is in no segment file (a row rejected for another field is in one).

    The read stage marked every entry whose email a row of this run had (shared.pipeline.read.Known); the
    rows rejected for a field other than their email are marked here.
    """
    for key in rejected_keys:
        snapshot.mark(key)
    return snapshot.unseen()
