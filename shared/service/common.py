"""What the service's parts share: run IDs, the config digest, the queue's name, and its errors."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from shared.config.destinations import Destination
from shared.errors import ExportError
from shared.mapping.contact_mapping import RULES_VERSION
from shared.pipeline.report import RunReport

EXPORT_QUEUE = "export-requests"  # on-demand and scheduled exports, run by the queue-triggered function
BAD_BLOB = re.compile(r"(^/)|(\\)|(^|/)\.\.?(/|$)|://|^[a-z]+:|[\x00-\x1f]")


def config_digest(destination: Destination) -> str:
    """What decides the bytes sent for a profile (how the file is read, how it is mapped) and where they go: a
    change makes the next export a full one, and never resumes a checkpoint of the old reading. `region` is
    another SendGrid account (whose contacts the snapshot does not describe); it counts only when not the
    default, so destinations configured before regions existed keep their digest."""
    relevant = destination.model_dump(include={"list_id", "field_mapping", "length_policy", "empty_values",
                                               "file_format"},
                                      mode="json")
    if destination.region != "global":
        relevant["region"] = destination.region
    if RULES_VERSION != 1:  # new mapping rules: never resume a checkpoint of batches built by the old ones
        relevant["rules"] = RULES_VERSION
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]



def new_run_id(destination: str) -> str:
    """`<destination>-<YYYYMMDDTHHMMSSmmmZ>-<hex>`: the milliseconds order a destination's runs in its run
    index (shared.state.run_index) even when several start within one second."""
    now = datetime.now(UTC)
    stamp = f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z"
    return f"{destination}-{stamp}-{uuid.uuid4().hex[:8]}"



class SupersededFile(Exception):
    """A trigger's file is no longer its segment's current one (events arrive out of order, runs wait)."""



class RequestRejected(Exception):
    """An on-demand request that cannot be taken: its HTTP status, message and details for the caller."""

    def __init__(self, status: int, message: str, **details: object) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details



class RunRefused(ExportError):
    """The run would leave the list wrong, so nothing is sent (its report says `refused`, and why)."""



@dataclass
class TriggerOutcome:
    """What happened to a blob-triggered file: exported (report), skipped (reason)."""

    blob_name: str
    report: RunReport | None = None
    skipped: str | None = None

