"""A stateful SendGrid Marketing Contacts API on loopback, for tests, benchmarks and the local demo.

Never deployed. Standard library HTTP (no runtime dependency beyond email-validator); OpenAPI validation
uses openapi-core from requirements-dev.txt and the team kit's ../shared/sendgrid/*.json, only when on.

    from sendgrid_simulator import Simulator
    with Simulator(api_keys={"SG.key": None}, validate_openapi=True) as sim:
        list_id = sim.create_list("vip")
        ...  # point the client at sim.base_url

Choices where SendGrid is vague (documented so tests can rely on them):
- body over MAX_BODY_BYTES (6,000,000) -> 413; more than 30,000 contacts -> 400 field "contacts".
- unknown list in `list_ids` -> 404 (field "list_ids[i]"); unknown custom field ID -> 400
  ("contacts[i].custom_fields.<id>"); any bad contact -> 400 for the whole request, one error per problem.
- scopes: GETs and the email search need "marketing.read", PUT/POST/DELETE "marketing.write"; /v3/scopes any key.
- rate limits are counted before the key is checked, so 401/403 answers carry the headers too.
- custom field IDs are `e<n>_<T|N|D>`; contact IDs are minted when a contact is first shown (search, inspection).
- DELETE /v3/marketing/contacts takes `ids` or `delete_all_contacts=true` (neither or both: 400) and deletes in
  a job; IDs of contacts already gone are ignored. GET /v3/marketing/contacts/count's `billable_count` counts
  every contact created since the last reset and never falls on a delete (settable: /__sim/settings).

Out-of-process control (no auth, JSON): GET /__sim/stats | /__sim/contacts?list_id= | /__sim/batches |
/__sim/requests | /__sim/violations | /__sim/faults; POST /__sim/faults ({"kind", "count", "method", "path",
"status", "seconds", "errored"} or a list), DELETE /__sim/faults, POST /__sim/reset ({"everything": bool}),
POST /__sim/settings ({"latency", "job_delay", "rate_limit", "api_keys", "validate_openapi", "billable_count"}),
POST /__sim/lists ({"name", "id"}), POST /__sim/fields ({"name", "field_type"}), POST /__sim/wait ({"timeout"}),
GET /__sim/imports/<job id>/errors.csv (the job's `errors_url`).
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
