"""Turn one input row into one SendGrid contact (as ready-to-send JSON) or a reason to reject it.

The mapping is compiled once per run into a flat plan so the per-row work is a few dict look-ups, length
checks and string escapes: this function runs a million times for a large segment. The JSON is written
with the C string escaper directly (keys are pre-encoded), a third of the cost of `json.dumps` per row.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from json.encoder import encode_basestring

from email_validator import __version__ as _validator_version

from shared.config.destinations import Destination
from shared.errors import ConfigurationError
from shared.mapping.email_rules import normalise_email
from shared.sendgrid.models import CustomField

# SendGrid's ContactRequest maxLength values (../shared/sendgrid/tsg_mc_contacts_v3.json).
FIELD_MAX_LENGTHS: dict[str, int] = {
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
# Identifiers are never truncated, whatever length_policy says: two people would end up with one ID.
IDENTIFIER_FIELDS = frozenset({"external_id", "anonymous_id"})
MAX_ALTERNATE_EMAILS = 5
# SendGrid documents a 1,000-character limit for Text custom field values.
CUSTOM_TEXT_MAX_LENGTH = 1000

_ALTERNATE_SPLIT = re.compile(r"[;,\s]+")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_quote = encode_basestring  # JSON string literal (C implementation), non-ASCII kept as UTF-8 like SendGrid's
MAX_NUMBER = 1.7976931348623157e308  # the largest double; SendGrid stores Number fields as doubles
# The version of the rules that turn a row into a contact (this module and email_rules). Bump it with any
# change to what a row becomes (a check, a normalisation, the JSON written): the snapshot's fingerprints are
# of source values under these rules, so a new version makes every row look changed and be sent again.
RULES_VERSION = 1


@dataclass(slots=True)
class MappedContact:
    email: str
    body: bytes  # the contact as compact JSON, exactly as it goes into the PUT body
    truncated: list[str] = field(default_factory=list)  # SendGrid fields cut to their limit


@dataclass(frozen=True, slots=True)
class Rejection:
    field: str  # the SendGrid field (or "row" for an unreadable row)
    column: str | None  # the input column it came from
    reason: str


def resolve_custom_fields(
    destination: Destination, definitions: dict[str, CustomField]
) -> dict[str, CustomField]:
    """Custom field names in the mapping -> SendGrid IDs; an unknown name stops the run before any send."""
    wanted = destination.field_mapping.custom_fields
    unknown = sorted(name for name in wanted if name not in definitions)
    if unknown:
        known = ", ".join(sorted(definitions)) or "none"
        raise ConfigurationError(
            f"custom field(s) {', '.join(unknown)} do not exist in SendGrid (defined: {known}); "
            "create them under Marketing > Custom Fields or fix the mapping",
            field=f"destinations[{destination.name}].field_mapping.custom_fields",
        )
    return {name: definitions[name] for name in wanted}


def missing_columns(destination: Destination, columns: list[str] | None) -> list[str]:
    """Mapped columns the file does not have (None: a format without a header, checked per row)."""
    if columns is None:
        return []
    present = set(columns)
    return [c for c in dict.fromkeys(destination.field_mapping.columns()) if c not in present]


class ContactMapper:
    """A compiled field mapping for one destination and run.

    It maps a row given as the values of `columns`, in that order (what `SegmentReader.project` yields),
    so a reader never builds a dict of every column for the seven a mapping reads: a fifth of the engine's
    time on a large CSV. `map` takes a dict, for callers that have one.
    """

    def __init__(self, destination: Destination, custom_fields: dict[str, CustomField]) -> None:
        mapping = destination.field_mapping
        self._truncate = destination.length_policy == "truncate"
        self._clear_empty = destination.empty_values == "clear"
        self._position: dict[str, int] = {mapping.email: 0}  # input column -> index into the values
        self._plain: list[tuple[str, int, int | None, str]] = []  # (field, position, limit, ',"field":')
        self._alternate: int | None = None
        for name, column in mapping.reserved().items():
            if name == "alternate_emails":
                self._alternate = self._place(column)
            else:
                self._plain.append((name, self._place(column), FIELD_MAX_LENGTHS.get(name), f",{_quote(name)}:"))
        self._custom: list[tuple[str, int, CustomField, str]] = [
            (name, self._place(mapping.custom_fields[name]), custom_fields[name], f"{_quote(custom_fields[name].id)}:")
            for name in mapping.custom_fields
        ]
        self.columns: tuple[str, ...] = tuple(self._position)  # the email column first

    def _place(self, column: str) -> int:
        return self._position.setdefault(column, len(self._position))

    def rules(self) -> str:
        """Everything this mapper's contacts depend on besides a row's values: the columns it reads, the
        fields they fill (with their limits and custom field IDs and types), the policies, and the version of
        the rules and of email-validator. A source fingerprint is taken under these (shared.state.keys)."""
        custom = [(name, position, definition.id, definition.field_type)
                  for name, position, definition, _ in self._custom]
        return repr((RULES_VERSION, _validator_version, self.columns, self._plain, self._alternate, custom,
                     self._truncate, self._clear_empty))

    def plain_fields(self) -> list[tuple[str, int, int | None, str]] | None:
        """(field, position, length limit, ',"field":') of each mapped field when all are plain strings (no
        custom field, no alternate emails): what shared.mapping.line_mapping can map a chunk at a time."""
        return None if self._custom or self._alternate is not None else list(self._plain)

    @property
    def clears_empty(self) -> bool:
        return self._clear_empty

    def value_of(self, values: Sequence[str | None], column: str) -> str:
        """The raw value of a mapped column in a projected row ("" if the row lacks it)."""
        position = self._position[column]
        return (values[position] if position < len(values) else None) or ""

    def map(self, fields: Mapping[str, str]) -> MappedContact | Rejection:
        return self.map_values(tuple(map(fields.get, self.columns)))

    def map_values(self, values: Sequence[str | None]) -> MappedContact | Rejection:
        raw_email = values[0]
        if raw_email is None:
            return Rejection("email", self.columns[0], f"column {self.columns[0]!r} is missing")
        email, problem = normalise_email(raw_email)
        if email is None:
            return Rejection("email", self.columns[0], problem or "email is not valid")
        out = ['{"email":', _quote(email)]
        truncated: list[str] = []
        for name, position, limit, key in self._plain:
            value = values[position]
            if value is None:
                continue
            value = value.strip()
            if not value:
                if self._clear_empty:
                    out.append(key + '""')
                continue
            if limit is not None and len(value) > limit:
                if not self._truncate or name in IDENTIFIER_FIELDS:
                    never = " (an identifier is never truncated)" if self._truncate else ""
                    return Rejection(name, self.columns[position],
                                     f"{name} is {len(value)} characters, SendGrid allows {limit}{never}")
                value = value[:limit].rstrip()
                truncated.append(name)
            out.append(key + _quote(value))
        if self._alternate is not None:
            alternates = self._alternates(values[self._alternate], email)
            if isinstance(alternates, Rejection):
                return alternates
            if alternates:
                out.append(',"alternate_emails":[' + ",".join(map(_quote, alternates)) + "]")
        if self._custom:
            custom: list[str] = []
            for name, position, definition, key in self._custom:
                value = values[position]
                if value is None:
                    continue
                value = value.strip()
                if not value:
                    if self._clear_empty:
                        custom.append(key + '""')
                    continue
                converted, problem = _convert_custom(value, definition, self._truncate)
                if problem is not None:
                    return Rejection(f"custom_fields.{name}", self.columns[position], f"{name} {problem}")
                if isinstance(converted, str):
                    if definition.field_type == "Text" and len(converted) < len(value):
                        truncated.append(f"custom_fields.{name}")
                    custom.append(key + _quote(converted))
                else:  # int or finite float: Python's repr is valid JSON (json.dumps uses it too)
                    custom.append(key + repr(converted))
            if custom:
                out.append(',"custom_fields":{' + ",".join(custom) + "}")
        out.append("}")
        try:
            body = "".join(out).encode()
        except UnicodeEncodeError:
            return self._not_text(values)
        return MappedContact(email, body, truncated)

    def _not_text(self, values: Sequence[str | None]) -> Rejection:
        """A value holding a lone surrogate cannot be sent as UTF-8 (readers never yield one; never crash)."""
        mapped = [(name, position) for name, position, _, _ in self._plain]
        mapped += [(f"custom_fields.{name}", position) for name, position, _, _ in self._custom]
        for name, position in mapped:
            if _LONE_SURROGATE.search(values[position] or ""):
                return Rejection(name, self.columns[position],
                                 f"{name} is not valid Unicode text (an unpaired surrogate)")
        return Rejection("row", None, "a value is not valid Unicode text (an unpaired surrogate)")

    def _alternates(self, raw: str | None, primary: str) -> list[str] | Rejection:
        column = self.columns[self._alternate] if self._alternate is not None else None
        if raw is None or not raw.strip():
            return []
        result: list[str] = []
        for part in _ALTERNATE_SPLIT.split(raw.strip()):
            if not part:
                continue
            email, problem = normalise_email(part)
            if email is None:
                return Rejection("alternate_emails", column, f"alternate {problem}")
            if email != primary and email not in result:
                result.append(email)
        if len(result) > MAX_ALTERNATE_EMAILS:
            return Rejection("alternate_emails", column,
                             f"{len(result)} alternate emails, SendGrid allows {MAX_ALTERNATE_EMAILS}")
        return result


def _convert_custom(value: str, definition: CustomField, truncate: bool) -> tuple[object, str | None]:
    """Convert to what SendGrid expects for the field type: (value, None) or (None, reason)."""
    if definition.field_type == "Number":
        try:
            number: float | int = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            return None, "is not a number"
        if isinstance(number, float) and not math.isfinite(number):
            return None, "is not a finite number"
        if abs(number) > MAX_NUMBER:
            return None, "is too large for a Number field"
        return number, None
    if definition.field_type == "Date":
        parsed = _parse_date(value)
        if parsed is None:
            return None, "is not a date (use YYYY-MM-DD, an ISO 8601 timestamp or MM/DD/YYYY)"
        return f"{parsed.month:02d}/{parsed.day:02d}/{parsed.year:04d}", None  # strftime: "01/01/1" for year 1
    if len(value) > CUSTOM_TEXT_MAX_LENGTH:
        if not truncate:
            return None, f"is {len(value)} characters, SendGrid allows {CUSTOM_TEXT_MAX_LENGTH}"
        return value[:CUSTOM_TEXT_MAX_LENGTH], None
    return value, None


def _parse_date(value: str) -> date | None:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).date()
    except ValueError:
        pass
    try:
        return datetime.strptime(value, "%m/%d/%Y").date()
    except ValueError:
        return None
