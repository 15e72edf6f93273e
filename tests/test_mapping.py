import json

import pytest

from shared.config.destinations import Destination
from shared.errors import ConfigurationError
from shared.mapping.contact_mapping import ContactMapper, CustomField, MappedContact, Rejection, resolve_custom_fields
from shared.mapping.email_rules import normalise_email

LIST_ID = "5b0c3a1e-8d7f-4c2a-9e61-3f2d7a9b0c11"
FIELDS = {"tier": CustomField("e1_T", "Text"), "score": CustomField("e2_N", "Number"),
          "since": CustomField("e3_D", "Date")}


def destination(**overrides: object) -> Destination:
    data: dict[str, object] = {
        "name": "vip", "list_id": LIST_ID, "api_key_secret": "k", "segments": ["vip/"],
        "field_mapping": {"email": "Email", "first_name": "First", "last_name": "Last", "country": "Country",
                          "state_province_region": "State", "city": "City", "postal_code": "Zip",
                          "alternate_emails": "Alt",
                          "custom_fields": {"tier": "Tier", "score": "Score", "since": "Since"}},
    }
    data.update(overrides)
    return Destination.model_validate(data)


def mapper(**overrides: object) -> ContactMapper:
    d = destination(**overrides)
    return ContactMapper(d, resolve_custom_fields(d, FIELDS))


def contact(result: MappedContact | Rejection) -> dict[str, object]:
    assert isinstance(result, MappedContact), result
    return json.loads(result.body)  # type: ignore[no-any-return]


@pytest.mark.parametrize(("raw", "expected"), [
    ("  Ada.Lovelace@Example.COM ", "ada.lovelace@example.com"),
    ("user+tag@sub.example.co.uk", "user+tag@sub.example.co.uk"),
    ("user@müller.de", "user@xn--mller-kva.de"),
])
def test_valid_emails_are_trimmed_and_lower_cased(raw: str, expected: str) -> None:
    assert normalise_email(raw) == (expected, None)


@pytest.mark.parametrize(("raw", "reason"), [
    ("", "empty"), ("   ", "empty"), ("not-an-email", "not valid"), ("a@b.com.", "period"),
    ("x y@example.com", "invalid characters"), ("müller@example.de", "Internationalized"),
    ("a..b@example.com", "two periods"), ("a@" + "b" * 250 + ".com", "longer than 254"),
    ("=cmd|'/c calc'!A1@example.com", "not valid"),
    ("a" * 65 + "@example.com", "longer than 64"),  # RFC 5321's local-part limit
])
def test_invalid_emails_have_a_reason_without_the_address(raw: str, reason: str) -> None:
    email, problem = normalise_email(raw)
    assert email is None and problem is not None
    assert reason in problem
    if len(raw.strip()) >= 4:
        assert raw.strip().lower() not in problem


def test_all_fields_map_to_sendgrid_names_and_ids() -> None:
    result = contact(mapper().map({
        "Email": "Ada@Example.com", "First": " Ada ", "Last": "Lovelace", "Country": "United Kingdom",
        "State": "", "City": "London", "Zip": "SW1A 1AA", "Alt": "ada2@example.com; ADA3@example.com",
        "Tier": "Gold", "Score": "42", "Since": "2024-02-29"}))
    assert result == {
        "email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace", "country": "United Kingdom",
        "city": "London", "postal_code": "SW1A 1AA", "alternate_emails": ["ada2@example.com", "ada3@example.com"],
        "custom_fields": {"e1_T": "Gold", "e2_N": 42, "e3_D": "02/29/2024"},
    }


def test_empty_values_are_skipped_or_cleared_by_policy() -> None:
    row = {"Email": "a@example.com", "First": "", "Last": "  ", "Tier": ""}
    assert contact(mapper().map(row)) == {"email": "a@example.com"}
    cleared = contact(mapper(empty_values="clear").map(row))
    assert cleared == {"email": "a@example.com", "first_name": "", "last_name": "", "custom_fields": {"e1_T": ""}}


def test_over_long_field_is_rejected_by_default_and_truncated_when_configured() -> None:
    row = {"Email": "a@example.com", "First": "x" * 51}
    rejected = mapper().map(row)
    assert rejected == Rejection("first_name", "First", "first_name is 51 characters, SendGrid allows 50")
    truncated = mapper(length_policy="truncate").map(row)
    assert isinstance(truncated, MappedContact)
    assert json.loads(truncated.body)["first_name"] == "x" * 50
    assert truncated.truncated == ["first_name"]


def test_an_over_long_identifier_is_rejected_even_when_truncating() -> None:
    # Cut to 254 characters, two people whose IDs differ only at the end would share one.
    d = destination(length_policy="truncate",
                    field_mapping={"email": "Email", "external_id": "Id", "anonymous_id": "Anon"})
    mapping = ContactMapper(d, {})
    for column, field in (("Id", "external_id"), ("Anon", "anonymous_id")):
        rejected = mapping.map({"Email": "a@example.com", column: "7" * 255})
        reason = f"{field} is 255 characters, SendGrid allows 254 (an identifier is never truncated)"
        assert rejected == Rejection(field, column, reason)
    assert contact(mapping.map({"Email": "a@example.com", "Id": "7" * 254}))["external_id"] == "7" * 254


@pytest.mark.parametrize(("column", "value", "field", "reason"), [
    ("Score", "forty-two", "custom_fields.score", "not a number"),
    ("Score", "nan", "custom_fields.score", "not a finite number"),
    ("Since", "yesterday", "custom_fields.since", "not a date"),
    ("Alt", "ok@example.com, broken", "alternate_emails", "alternate email is not valid"),
    ("Alt", ",".join(f"a{i}@example.com" for i in range(6)), "alternate_emails", "allows 5"),
    ("City", "c" * 61, "city", "allows 60"),
])
def test_field_rules_reject_with_field_and_reason(column: str, value: str, field: str, reason: str) -> None:
    result = mapper().map({"Email": "a@example.com", column: value})
    assert isinstance(result, Rejection)
    assert result.field == field
    assert reason in result.reason


def test_missing_email_column_in_a_row_is_a_rejection() -> None:
    result = mapper().map({"First": "Ada"})
    assert isinstance(result, Rejection) and result.field == "email" and "missing" in result.reason


def test_formula_looking_values_are_plain_text() -> None:
    result = contact(mapper().map({"Email": "a@example.com", "First": "=cmd|' /C calc'!A0"}))
    assert result["first_name"] == "=cmd|' /C calc'!A0"


def test_unknown_custom_field_name_is_a_configuration_error_naming_it() -> None:
    d = destination()
    with pytest.raises(ConfigurationError, match="score") as error:
        resolve_custom_fields(d, {"tier": FIELDS["tier"], "since": FIELDS["since"]})
    assert "defined: since, tier" in str(error.value)
