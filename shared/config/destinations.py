"""Destinations: which segment files go to which SendGrid list, and how their columns map.

This is configuration, not code (app setting `DESTINATIONS_JSON`). It is validated once at start-up with
pydantic so that a mistake is reported with the path of the bad field (`destinations.1.list_id: ...`)
before any profile is read.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.errors import ConfigurationError

# The fixed name of a CDM folder's manifest: a Customer Insights export's model.json serves the destinations
# configured for its table folders (shared.source.readers.cdm_reader reads it).
MODEL_JSON = "model.json"


ERASURES_PREFIX = "erasures/"  # CSVs of addresses to erase, dropped in the segments container (shared.privacy)


def is_model_json(blob_name: str) -> bool:
    """The one test of "is this a CDM manifest?" (shared.source.segment_files re-exports it)."""
    return blob_name.rsplit("/", 1)[-1] == MODEL_JSON

# SendGrid reserved contact fields this app can fill from a column (ContactRequest in the OpenAPI file).
RESERVED_FIELDS: frozenset[str] = frozenset({
    "first_name", "last_name", "address_line_1", "address_line_2", "city", "state_province_region",
    "country", "postal_code", "external_id", "anonymous_id", "phone_number_id", "alternate_emails",
})

DEFAULT_MAX_PROFILES = 100_000

CONSENT_CLOCK_SKEW = timedelta(minutes=5)  # a consent recorded "now" on a machine whose clock runs ahead
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldMapping(_Strict):
    """SendGrid field -> source column. `email` is required; custom fields are keyed by their SendGrid name."""

    email: str = Field(min_length=1)
    first_name: str | None = None
    last_name: str | None = None
    address_line_1: str | None = None
    address_line_2: str | None = None
    city: str | None = None
    state_province_region: str | None = None
    country: str | None = None
    postal_code: str | None = None
    external_id: str | None = None
    anonymous_id: str | None = None
    phone_number_id: str | None = None
    alternate_emails: str | None = None
    custom_fields: dict[str, str] = Field(default_factory=dict)

    def reserved(self) -> dict[str, str]:
        """The reserved fields that are mapped, in a stable order."""
        return {name: column for name in sorted(RESERVED_FIELDS)
                if (column := getattr(self, name)) is not None}

    def columns(self) -> list[str]:
        return [self.email, *self.reserved().values(), *self.custom_fields.values()]


class Consent(_Strict):
    """The seed connector's "I agree" step: who accepted the data-privacy terms for this destination, when."""

    agreed_by: str = Field(min_length=1)
    agreed_at: str = Field(min_length=1, description="ISO-8601 UTC timestamp, e.g. 2026-11-01T09:00:00Z")

    @field_validator("agreed_by")
    @classmethod
    def _someone_agreed(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name who agreed to the data-privacy terms (it is blank)")
        return value

    @field_validator("agreed_at")
    @classmethod
    def _a_real_moment(cls, value: str) -> str:
        """A consent record is evidence: a typo'd or future date would make it worthless in an audit."""
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError("must be an ISO-8601 UTC timestamp such as 2026-11-01T09:00:00Z") from None
        if moment.tzinfo is None or moment.utcoffset() != timedelta(0):
            raise ValueError("must be in UTC (end it with Z or +00:00), e.g. 2026-11-01T09:00:00Z")
        if moment > datetime.now(UTC) + CONSENT_CLOCK_SKEW:
            raise ValueError("is in the future: record when the terms were really agreed to")
        return value


class FileFormat(_Strict):
    """Reader settings for this destination's files, when they differ from the defaults."""

    delimiter: str | None = None
    quotechar: str | None = None
    escapechar: str | None = None
    encoding: str | None = None
    has_header: bool | None = None
    entity: str | None = Field(default=None, description="CDM entity name inside model.json")


class Destination(_Strict):
    name: Annotated[str, Field(description="Stable ID used in blob paths, URLs and run state")]
    display_name: str = ""
    list_id: UUID
    api_key_secret: str = Field(pattern=r"^[0-9A-Za-z-]{1,127}$",  # Key Vault's rule for secret names
                                description="Key Vault secret NAME holding the API key")
    segments: list[str] = Field(min_length=1, description="Blob path prefixes inside the segments container")
    field_mapping: FieldMapping
    mode: Literal["upsert", "mirror"] = "upsert"
    max_profiles: int = Field(default=DEFAULT_MAX_PROFILES, ge=1, le=10_000_000)
    length_policy: Literal["reject", "truncate"] = "reject"
    empty_values: Literal["skip", "clear"] = "skip"
    max_removal_fraction: float = Field(default=0.2, ge=0.0, le=1.0)
    min_removals_checked: int = Field(
        default=10, ge=0,
        description="Mirror safety valve: a run removing at most this many contacts is never refused by "
                    "max_removal_fraction (on a small list one removal is already a large share)")
    max_email_rejected_fraction: float = Field(
        default=0.01, ge=0.0, le=1.0,
        description="Mirror: removals are withheld for a run in which more than this share of rows was rejected "
                    "on its email (people of unknown identity may be members)")
    allow_empty_segments: bool = Field(
        default=False,
        description="Mirror: let a run whose segments hold no valid contact remove every member (off: such a "
                    "run removes nobody, since an empty export is more often a broken one)")
    consent: Consent | None = None
    file_format: FileFormat = Field(default_factory=FileFormat)
    region: Literal["global", "eu"] = Field(
        default="global", description="The SendGrid account's region: 'eu' (EU subusers) calls api.eu.sendgrid.com")
    max_billable_contacts: int | None = Field(
        default=None, ge=1, description="Refuse a run that could take the account's billable contacts (GET "
                                         "/v3/marketing/contacts/count) past this; warn above 90%. Default: the "
                                         "document's max_billable_contacts")

    @field_validator("name")
    @classmethod
    def _name_is_a_slug(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("must be 1-63 lower-case letters, digits or '-', starting with a letter or digit")
        return value

    @field_validator("segments")
    @classmethod
    def _segments_are_relative(cls, value: list[str]) -> list[str]:
        for prefix in value:
            if prefix.startswith("/") or ".." in prefix.split("/") or "://" in prefix:
                raise ValueError(f"segment prefix {prefix!r} must be a path inside the segments container")
            if not prefix.strip("/"):
                raise ValueError("an empty segment prefix would match every file in the container; name a folder")
            if prefix.startswith(ERASURES_PREFIX) or ERASURES_PREFIX.startswith(prefix):
                raise ValueError(f"{ERASURES_PREFIX} holds erasure requests, never segments; name another folder")
        if len(set(value)) != len(value):
            raise ValueError("a segment prefix is listed twice")
        return value

    @model_validator(mode="after")
    def _one_entity_needs_one_segment(self) -> Destination:
        if self.file_format.entity is not None and len(self.segments) > 1:
            raise ValueError("file_format.entity names one CDM table, but the destination has several segments: "
                             "each table-folder segment reads the table its folder is named for")
        return self

    def segment_for(self, blob_name: str) -> str | None:
        """The longest of this destination's prefixes that holds the blob."""
        matching = [prefix for prefix in self.segments if blob_name.startswith(prefix)]
        return max(matching, key=len) if matching else None

    def table_below(self, model_json: str) -> str | None:
        """`<Table>` when a prefix is `<folder of model_json>/<Table>/...` (see for_model_json)."""
        tables = self.tables_below(model_json)
        return next(iter(tables.values())) if tables else None

    def tables_below(self, model_json: str) -> dict[str, str]:
        """prefix -> `<Table>` for each prefix `<folder of model_json>/<Table>/...`: the segments a Customer
        Insights model.json holds (one table each)."""
        if "/" not in model_json:
            return {}  # a model.json at the container root serves only a destination that owns the root
        folder = model_json.rsplit("/", 1)[0] + "/"
        return {prefix: prefix[len(folder):].split("/", 1)[0] for prefix in self.segments
                if prefix.startswith(folder) and len(prefix) > len(folder)}

    def entity_in(self, model_json: str) -> str | None:
        """The entity this destination reads from a model.json it is served by."""
        if self.file_format.entity is not None or any(model_json.startswith(p) for p in self.segments):
            return self.file_format.entity
        return self.table_below(model_json)

    @property
    def list_id_str(self) -> str:
        return str(self.list_id)

    @property
    def has_consent(self) -> bool:
        return self.consent is not None


class DestinationsDocument(_Strict):
    destinations: list[Destination]
    max_billable_contacts: int | None = Field(
        default=None, ge=1, description="App-wide contact budget, for destinations that set none of their own")

    def billable_limit(self, destination: Destination) -> int | None:
        return destination.max_billable_contacts or self.max_billable_contacts

    @model_validator(mode="after")
    def _unique_names(self) -> DestinationsDocument:
        seen: set[str] = set()
        for destination in self.destinations:
            if destination.name in seen:
                raise ValueError(f"destination name {destination.name!r} is used twice")
            seen.add(destination.name)
        prefixes: dict[str, str] = {}
        for destination in self.destinations:
            for prefix in destination.segments:
                taken_by = prefixes.setdefault(prefix, destination.name)
                if taken_by != destination.name:
                    raise ValueError(
                        f"destinations {taken_by!r} and {destination.name!r} both take segment prefix {prefix!r}: a "
                        "file is exported to one destination (the longest matching prefix), so one would never "
                        "run; give each its own folder")
        for destination in self.destinations:
            if destination.mode != "mirror":
                continue
            for other in self.destinations:
                if other is not destination and other.list_id == destination.list_id:
                    raise ValueError(
                        f"destination {destination.name!r} mirrors list {destination.list_id} which destination "
                        f"{other.name!r} also fills: each mirror run would remove the other's contacts")
        return self

    def get(self, name: str) -> Destination | None:
        return next((d for d in self.destinations if d.name == name), None)

    def for_model_json(self, blob_name: str) -> list[tuple[Destination, str | None]]:
        """The destinations a CDM model.json serves, with the entity each one reads from it.

        Customer Insights writes one model.json per export at `<export>/model.json` and each table's
        partitions under `<export>/<Table>/...`, so a destination configured with the table's folder
        (`<export>/<Table>/`) is served by the model.json one level up and reads the entity `<Table>`
        (unless file_format.entity says otherwise). A destination whose prefix holds the model.json itself
        is matched as for any file (longest prefix).
        """
        matches: list[tuple[Destination, str | None]] = []
        owner = self.for_blob(blob_name)
        if owner is not None:
            matches.append((owner, owner.file_format.entity))
        for destination in self.destinations:
            table = destination.table_below(blob_name)
            if destination is not owner and table is not None:
                matches.append((destination, destination.file_format.entity or table))
        return matches

    def served_by(self, blob_name: str) -> list[Destination]:
        """The destinations a blob is exported to: the owner of a data file (longest prefix), or every
        destination a CDM model.json serves. Every way in (trigger, HTTP, timer) asks this, so a destination
        never exports a file a nested prefix gives to another."""
        if is_model_json(blob_name):
            return [destination for destination, _ in self.for_model_json(blob_name)]
        owner = self.for_blob(blob_name)
        return [owner] if owner is not None else []

    def for_blob(self, blob_name: str) -> Destination | None:
        """The destination whose segment prefix matches the blob; the longest prefix wins."""
        best: tuple[int, Destination] | None = None
        for destination in self.destinations:
            for prefix in destination.segments:
                if blob_name.startswith(prefix) and (best is None or len(prefix) > best[0]):
                    best = (len(prefix), destination)
        return best[1] if best else None


def load_destinations(text: str, *, origin: str = "DESTINATIONS_JSON") -> DestinationsDocument:
    """Parse and validate the destinations document; errors name the setting and the bad field."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"is not valid JSON ({exc.msg} at line {exc.lineno})", field=origin) from None
    try:
        return DestinationsDocument.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigurationError(problems, field=origin) from None
