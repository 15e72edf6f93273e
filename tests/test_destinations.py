import json

import pytest

from shared.config.destinations import load_destinations
from shared.errors import ConfigurationError

LIST_ID = "5b0c3a1e-8d7f-4c2a-9e61-3f2d7a9b0c11"


def doc(**overrides: object) -> str:
    destination = {
        "name": "vip", "list_id": LIST_ID, "api_key_secret": "sg-key", "segments": ["vip/"],
        "field_mapping": {"email": "PrimaryEmail"},
    }
    destination.update(overrides)
    return json.dumps({"destinations": [destination]})


def test_minimal_destination_gets_the_seed_defaults() -> None:
    destination = load_destinations(doc()).destinations[0]
    assert destination.max_profiles == 100_000
    assert destination.mode == "upsert"
    assert destination.length_policy == "reject"
    assert not destination.has_consent


@pytest.mark.parametrize(("overrides", "path"), [
    ({"list_id": "not-a-uuid"}, "destinations.0.list_id"),
    ({"field_mapping": {"first_name": "F"}}, "destinations.0.field_mapping.email"),
    ({"field_mapping": {"email": "E", "nickname": "N"}}, "destinations.0.field_mapping.nickname"),
    ({"mode": "sync"}, "destinations.0.mode"),
    ({"segments": ["../other/"]}, "destinations.0.segments"),
    ({"segments": [""]}, "destinations.0.segments"),
    ({"segments": ["/"]}, "destinations.0.segments"),
    ({"name": "Has Spaces"}, "destinations.0.name"),
    ({"max_profiles": 0}, "destinations.0.max_profiles"),
    ({"consent": {"agreed_by": ""}}, "destinations.0.consent"),
    ({"api_key_secret": "bad name!"}, "destinations.0.api_key_secret"),
    ({"api_key_secret": ""}, "destinations.0.api_key_secret"),
])
def test_errors_name_the_bad_field(overrides: dict[str, object], path: str) -> None:
    with pytest.raises(ConfigurationError) as error:
        load_destinations(doc(**overrides))
    assert path in str(error.value)
    assert "DESTINATIONS_JSON" in str(error.value)


def test_not_json_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        load_destinations("{destinations: [")


def test_duplicate_destination_names_are_refused() -> None:
    one = json.loads(doc())["destinations"][0]
    with pytest.raises(ConfigurationError, match="used twice"):
        load_destinations(json.dumps({"destinations": [one, one]}))


def test_two_destinations_with_one_prefix_are_refused() -> None:
    one = json.loads(doc())["destinations"][0]
    two = {**one, "name": "vip-copy", "list_id": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"}
    with pytest.raises(ConfigurationError, match="'vip' and 'vip-copy' both take segment prefix 'vip/'"):
        load_destinations(json.dumps({"destinations": [one, two]}))


def test_blob_matching_prefers_the_longest_prefix() -> None:
    a = json.loads(doc(name="all", segments=["ci/"]))["destinations"][0]
    b = json.loads(doc(name="vip", segments=["ci/vip/"]))["destinations"][0]
    document = load_destinations(json.dumps({"destinations": [a, b]}))
    assert document.for_blob("ci/vip/2026/x.csv").name == "vip"  # type: ignore[union-attr]
    assert document.for_blob("ci/other.csv").name == "all"  # type: ignore[union-attr]
    assert document.for_blob("elsewhere/x.csv") is None


def test_a_mirrored_list_cannot_be_filled_by_another_destination() -> None:
    second = {"name": "lapsed", "list_id": LIST_ID, "api_key_secret": "sg-key", "segments": ["lapsed/"],
              "field_mapping": {"email": "Email"}}
    first = json.loads(doc(mode="mirror"))["destinations"][0]
    with pytest.raises(ConfigurationError) as error:
        load_destinations(json.dumps({"destinations": [first, second]}))
    assert "mirrors list" in str(error.value) and "'lapsed'" in str(error.value)
    # two upsert destinations may share a list: neither removes anything
    first["mode"] = "upsert"
    assert len(load_destinations(json.dumps({"destinations": [first, second]})).destinations) == 2


def test_a_customer_insights_model_json_serves_each_table_folder() -> None:
    tables = [{"name": name, "list_id": LIST_ID, "api_key_secret": "k", "field_mapping": {"email": "E"},
               "segments": [f"CI_1/sendgrid/{table}/"]} for name, table in (("vip", "Vip"), ("news", "News"))]
    tables.append({"name": "owner", "list_id": LIST_ID, "api_key_secret": "k", "field_mapping": {"email": "E"},
                   "segments": ["CI_2/"], "file_format": {"entity": "Lapsed"}})
    document = load_destinations(json.dumps({"destinations": tables}))
    served = {d.name: entity for d, entity in document.for_model_json("CI_1/sendgrid/model.json")}
    assert served == {"vip": "Vip", "news": "News"}
    assert {d.name: e for d, e in document.for_model_json("CI_2/export/model.json")} == {"owner": "Lapsed"}
    assert document.for_model_json("model.json") == []
