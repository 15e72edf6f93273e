"""A stateful SendGrid Marketing Contacts API on loopback, for tests, benchmarks and the local demo.

Never deployed. Standard library HTTP (no runtime dependency beyond email-validator); OpenAPI validation
uses openapi-core from requirements-dev.txt and the team kit's ../shared/sendgrid/*.json, only when on.

    from sendgrid_simulator import Simulator
    with Simulator(api_keys={"SG.key": None}, validate_openapi=True) as sim:
        list_id = sim.create_list("vip")
        ...  # point the client at sim.base_url
"""

from sendgrid_simulator.faults import Fault, FaultKind
from sendgrid_simulator.limits import (
    FIELD_MAX_LENGTHS,
    MAX_ALTERNATE_EMAILS,
    MAX_BODY_BYTES,
    MAX_CONTACTS_PER_REQUEST,
    MAX_SEARCH_EMAILS,
    MAX_URL_CHARS,
)
from sendgrid_simulator.openapi import Violation, missing_specs_reason, specs_available
from sendgrid_simulator.ratelimit import RateLimit
from sendgrid_simulator.simulator import ALL_SCOPES, DEFAULT_API_KEY, RequestRecord, Simulator
from sendgrid_simulator.store import UpsertBatch

__all__ = [
    "ALL_SCOPES",
    "DEFAULT_API_KEY",
    "FIELD_MAX_LENGTHS",
    "MAX_ALTERNATE_EMAILS",
    "MAX_BODY_BYTES",
    "MAX_CONTACTS_PER_REQUEST",
    "MAX_SEARCH_EMAILS",
    "MAX_URL_CHARS",
    "Fault",
    "FaultKind",
    "RateLimit",
    "RequestRecord",
    "Simulator",
    "UpsertBatch",
    "Violation",
    "missing_specs_reason",
    "specs_available",
]
