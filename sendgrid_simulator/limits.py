"""SendGrid's documented limits, as the simulator enforces them (tests may import-compare the app's own).

`MAX_BODY_BYTES`: SendGrid documents "6 MB" for `PUT /v3/marketing/contacts` without saying which megabyte.
The simulator takes the smaller reading, 6,000,000 bytes, so a body it accepts is accepted under either
reading (6 * 1024 * 1024 = 6,291,456 would let through bodies the real API may refuse).
"""

from __future__ import annotations

MAX_BODY_BYTES = 6_000_000
MAX_CONTACTS_PER_REQUEST = 30_000
MAX_SEARCH_EMAILS = 100
MAX_SEARCH_EMAIL_LENGTH = 100  # maxLength of an `emails` item in SendGrid's OpenAPI description
MAX_URL_CHARS = 8_000  # SendGrid has answered 414 past about 8,000 characters
MAX_ALTERNATE_EMAILS = 5
MAX_CUSTOM_TEXT_LENGTH = 1_000
MAX_FIELD_NAME_LENGTH = 100
MAX_LIST_NAME_LENGTH = 100
LIST_PAGE_SIZE_DEFAULT = 100
LIST_PAGE_SIZE_MAX = 1_000

# ContactRequest maxLength values from ../shared/sendgrid/tsg_mc_contacts_v3.json
FIELD_MAX_LENGTHS: dict[str, int] = {
    "email": 254,
    "first_name": 50,
    "last_name": 50,
    "address_line_1": 100,
    "address_line_2": 100,
    "city": 60,
    "state_province_region": 50,
    "country": 50,
    "external_id": 254,
    "anonymous_id": 254,
}
IDENTIFIERS = ("email", "phone_number_id", "external_id", "anonymous_id")
