"""Stage 3, drain: the contacts to send, in batches within SendGrid's limits, each checkpointed once accepted.

Unchanged contacts (same source fingerprint as in the snapshot) were never mapped, so are not here; batches
an interrupted run of the same plan had accepted are taken from its checkpoint instead of being sent again;
contacts SendGrid names in a 400 are set aside (rejected with its reason) and the rest of their batch is sent
again. The first failure stops sending: the batches after it are counted as not sent.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from azure.core.exceptions import AzureError

from shared.errors import ExportError
from shared.pipeline.report import BatchResult, RejectedRow
from shared.pipeline.result import Outcome, Run
from shared.sendgrid.errors import InvalidRequest, SendGridError
from shared.staging.batching import Batch, batches
from shared.state.lock import LockLost
from shared.state.sync_state import SetAside

MAX_SET_ASIDE_ROUNDS = 5
Failure = ExportError | SendGridError


@dataclass
class Drained:
    """Sent batches as (outcome, spool positions) only (their bodies would hold the whole file), and what
    stopped sending, if anything did."""

    accepted: list[tuple[BatchResult, array[int]]] = field(default_factory=list)
    failure: Failure | None = None


def drain(run: Run) -> Drained:
    report, sync, client = run.report, run.sync, run.client
    drained = Drained()
    resume = sync.resume if sync is not None else {}
    resume_set_aside = sync.resume_set_aside if sync is not None else {}
    for batch in batches(_outgoing(run), [run.destination.list_id_str],
                         max_contacts=run.options.max_contacts_per_request, max_bytes=run.options.max_body_bytes):
        if batch.number in resume:
            outcome, indices = _resumed(run, batch, resume[batch.number], resume_set_aside.get(batch.number, ()))
            report.batches.append(outcome)
            drained.accepted.append((outcome, indices))
            continue
        if drained.failure is not None:
            report.not_sent += len(batch.contacts)
            report.batches.append(BatchResult(batch.number, len(batch.contacts), batch.body_size()))
            continue
        resends = client.stats.unconfirmed_resends
        outcome, sent, set_aside = _send_batch(run, batch)
        outcome.resent = client.stats.unconfirmed_resends - resends
        if outcome.resent:
            report.notes.append(f"batch {batch.number}: SendGrid's answer was lost and the batch was sent again "
                                f"{outcome.resent} time(s); SendGrid may have imported its {outcome.contacts} "
                                "contacts more than once (harmless: upserts are keyed by email)")
        report.batches.append(outcome)
        if not isinstance(sent, Batch):
            drained.failure = sent
            report.not_sent += outcome.contacts
            continue
        drained.accepted.append((outcome, array("L", sent.indices)))
        del sent, batch
        if sync is not None and outcome.job_id:
            drained.failure = _checkpoint(run, outcome, set_aside)
        if run.on_batch_accepted is not None:
            run.on_batch_accepted(outcome)
    return drained


def _outgoing(run: Run) -> Iterator[tuple[int, bytes]]:
    """(position, contact JSON) of every contact to send: not merged into a later row. Rows known unchanged
    were never mapped (shared.pipeline.read): the spool's contacts are the others only."""
    superseded = run.superseded
    for index, body in run.spool.contacts():
        if index not in superseded:
            yield index, body


def _checkpoint(run: Run, outcome: BatchResult, set_aside: list[SetAside]) -> Failure | None:
    """Record an accepted batch, so a re-run resumes after it; what stops sending when that is impossible."""
    assert run.sync is not None and outcome.job_id is not None
    try:
        run.sync.set_aside(outcome.number, set_aside)
        run.sync.batch_accepted(outcome.number, outcome.job_id)
    except LockLost as exc:  # another run owns the destination now: it must not be interleaved with
        return ExportError(f"{exc}; batch {outcome.number} was accepted by SendGrid, sending stopped")
    except AzureError as exc:  # without run state there is no lock, checkpoint or snapshot: stop
        return ExportError(f"run state storage unavailable ({type(exc).__name__}): batch {outcome.number} "
                           "was accepted by SendGrid but could not be recorded, so sending stopped")
    return None


def _send_batch(run: Run, batch: Batch) -> tuple[BatchResult, Batch | Failure, list[SetAside]]:
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
            outcome.job_id = run.client.upsert_contacts(current.body())
        except InvalidRequest as exc:
            named = exc.positions("contacts", len(current.contacts))
            if not named:
                return _unsent(outcome, current), exc, set_aside
            for position, (sendgrid_field, message) in named.items():
                index = current.indices[position]
                field_name, reason = _reported_field(sendgrid_field, run.field_names), f"SendGrid: {message}"
                run.result.reject(RejectedRow(*run.spool.where(index), field_name, reason))
                run.outcome_of[index] = Outcome.SET_ASIDE
                set_aside.append((index, field_name, reason))
            outcome.set_aside += len(named)
            current = current.without(set(named))
            continue
        except SendGridError as exc:  # any other answer (or none): this batch and the rest stay unsent, reported
            return _unsent(outcome, current), exc, set_aside
        except ExportError as exc:  # the key could not be re-read after a 401 (SecretUnavailable): stop, reported
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


def _resumed(run: Run, batch: Batch, job_id: str, set_aside: Sequence[SetAside]) -> tuple[BatchResult, array[int]]:
    """A batch an interrupted run of this plan had accepted. Rebuilt from the spool it holds again the
    contacts SendGrid refused then: they are rejected again, never credited to the job that lacks them."""
    refused = {index: (field_name, reason) for index, field_name, reason in set_aside}
    dropped = {position for position, index in enumerate(batch.indices) if index in refused}
    for position in sorted(dropped):
        index = batch.indices[position]
        run.result.reject(RejectedRow(*run.spool.where(index), *refused[index]))
        run.outcome_of[index] = Outcome.SET_ASIDE
    kept = batch.without(dropped) if dropped else batch
    outcome = BatchResult(batch.number, len(kept.contacts), kept.body_size(), job_id=job_id, status="accepted",
                          resumed=True, set_aside=len(dropped))
    return outcome, array("L", kept.indices)


def _unsent(outcome: BatchResult, current: Batch) -> BatchResult:
    """A failed batch counts only the contacts still in it: those set aside earlier are already rejected."""
    outcome.contacts = len(current.contacts)
    outcome.body_bytes = current.body_size()
    return outcome


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
