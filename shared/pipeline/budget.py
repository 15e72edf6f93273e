"""The contact budget (`max_billable_contacts`): refuse a run that could take the account past it.

SendGrid bills contacts per plan; every upload of a new contact counts toward the month's allotment and
deleting one does not give it back. So before sending, the account's `billable_count` (GET
/v3/marketing/contacts/count) plus the run's contacts SendGrid may not hold yet (those not in the
destination's snapshot) must stay within the limit; above 90% of it the report warns.
"""

from __future__ import annotations

from shared.pipeline.result import Run
from shared.sendgrid.errors import SendGridError

WARN_SHARE = 0.9


def within_budget(run: Run) -> bool:
    """True when the run may send (no budget, or within it); otherwise the report is finished and says why."""
    limit = run.options.max_billable_contacts
    if limit is None:
        return True
    report = run.report
    new = _not_in_snapshot(run)
    try:
        billable = run.client.contact_count().billable_count
    except SendGridError as exc:
        report.not_sent = run.unique
        report.finish("failed", f"the contact budget could not be checked ({exc}); nothing was sent")
        return False
    after = billable + new
    report.budget = {"max_billable_contacts": limit, "billable_count": billable, "new_contacts": new,
                     "billable_after_run": after}
    if after > limit:
        report.not_sent = run.unique
        report.finish("refused", f"contact budget: the account holds {billable} billable contacts this month and "
                                 f"this run may add {new} more ({after}), over max_billable_contacts {limit}; "
                                 "nothing was sent (raise the limit, or wait for the next billing month)")
        return False
    if after > WARN_SHARE * limit:
        report.notes.append(f"contact budget: after this run up to {after} of max_billable_contacts {limit} "
                            f"({after / limit:.0%}) are used this month")
    return True


def _not_in_snapshot(run: Run) -> int:
    """The run's contacts (one per person) whose key the snapshot lacks: SendGrid may not hold them yet."""
    snapshot = run.sync.snapshot if run.sync is not None else None
    superseded = run.superseded
    if snapshot is None:
        return len(run.spool) - len(superseded)
    position = snapshot.position
    return sum(1 for index, key in enumerate(run.spool.keys) if index not in superseded and position(key) < 0)
