"""CDM folders (model.json + partitions), from a local folder and from real blob storage (Azurite)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient

from shared.errors import SegmentFileError
from shared.source.readers import ReaderOptions, cdm_partition_names, open_segment
from shared.source.records import Record
from shared.source.sources import BlobContainerSource, ByteSource, LocalDirSource

BASE = "https://acct.blob.core.windows.net/segments"
ATTRS = ["CustomerId", "PrimaryEmail", "FirstName"]


def entity(name: str, partitions: list[dict[str, Any]], attributes: list[str] = ATTRS) -> dict[str, Any]:
    return {"$type": "LocalEntity", "name": name, "attributes": [{"name": a, "dataType": "string"} for a in attributes],
            "partitions": partitions}


def model(*entities: dict[str, Any]) -> str:
    return json.dumps({"name": "export", "version": "1.0", "pbi:mashup": {}, "entities": list(entities)})


def write(root: Path, files: dict[str, str]) -> LocalDirSource:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return LocalDirSource(root)


def read(source: ByteSource, name: str = "ci/dest/model.json", options: ReaderOptions | None = None,
         ) -> tuple[list[str] | None, list[Record]]:
    with open_segment(source, name, options) as reader:
        return reader.columns, list(reader)


PART1 = "ci/dest/Vip/2024/05/01/0600/Vip_1.csv"
PART2 = "ci/dest/Vip/2024/05/01/0600/Vip_2.csv"


def two_partitions(settings: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    extra = {"fileFormatSettings": settings} if settings is not None else {}
    return [{"name": "Vip_1", "location": f"{BASE}/{PART1}?snapshot=2024-05-01T06:00:00Z", **extra},
            {"name": "Vip_2", "location": f"{BASE}/{PART2}", **extra}]


def test_partitions_without_header_read_in_order_with_per_partition_rows(tmp_path: Path) -> None:
    source = write(tmp_path, {"ci/dest/model.json": model(entity("Vip", two_partitions())),
                              PART1: "c1,a@example.com,Ann\nc2,b@example.com,Bob\n", PART2: "c3,c@example.com,Cy\n"})
    columns, records = read(source)
    assert columns == ATTRS
    assert [(r.source, r.row, r.fields["CustomerId"]) for r in records] == [
        (PART1, 1, "c1"), (PART1, 2, "c2"), (PART2, 1, "c3")]


def test_a_first_row_equal_to_the_attributes_is_a_header_when_settings_are_absent(tmp_path: Path) -> None:
    source = write(tmp_path, {"ci/dest/model.json": model(entity("Vip", two_partitions())),
                              PART1: "CustomerId,PrimaryEmail,FirstName\nc1,a@example.com,Ann\n", PART2: ""})
    _, records = read(source)
    assert [(r.row, r.fields["CustomerId"]) for r in records] == [(1, "c1")]


def test_settings_without_column_headers_recognise_a_header_row(tmp_path: Path) -> None:
    # fileFormatSettings present but silent on columnHeaders: as when there are no settings at all.
    settings = {"$type": "CsvFormatSettings", "delimiter": ","}
    source = write(tmp_path, {"ci/dest/model.json": model(entity("Vip", two_partitions(settings))),
                              PART1: "CustomerId,PrimaryEmail,FirstName\nc1,a@example.com,Ann\n",
                              PART2: "c2,b@example.com,Bob\n"})
    _, records = read(source)
    assert [(r.source, r.row, r.fields["CustomerId"], r.error) for r in records] == [
        (PART1, 1, "c1", None), (PART2, 1, "c2", None)]


def test_a_malformed_first_row_of_a_partition_is_rejected_not_the_export(tmp_path: Path) -> None:
    source = write(tmp_path, {"ci/dest/model.json": model(entity("Vip", two_partitions())),
                              PART1: 'c1,a@example.com,"Ann"e\nc2,b@example.com,Bob\n', PART2: "c3,c@example.com,Cy\n"})
    _, records = read(source)
    assert [(r.source, r.row, r.error is not None) for r in records] == [
        (PART1, 1, True), (PART1, 2, False), (PART2, 1, False)]


def test_file_format_settings_are_honoured(tmp_path: Path) -> None:
    settings = {"$type": "CsvFormatSettings", "columnHeaders": True, "delimiter": "|",
                "quoteStyle": "QuoteStyle.None", "encoding": "UTF-8"}
    source = write(tmp_path, {"ci/dest/model.json": model(entity("Vip", two_partitions(settings))),
                              PART1: 'CustomerId|PrimaryEmail|FirstName\nc1|a@example.com|"Ann"\n',
                              PART2: "CustomerId|PrimaryEmail|FirstName\n"})
    _, records = read(source)
    assert records == [Record(PART1, 1, {"CustomerId": "c1", "PrimaryEmail": "a@example.com", "FirstName": '"Ann"'})]


def test_declared_header_row_that_holds_data_is_refused_without_its_values(tmp_path: Path) -> None:
    settings = {"$type": "CsvFormatSettings", "columnHeaders": True}
    source = write(tmp_path, {"ci/dest/model.json": model(entity("Vip", two_partitions(settings))),
                              PART1: "c1,zeb.quix@canary.example,Zebulon\nc2,b@example.com,Bob\n", PART2: ""})
    with pytest.raises(SegmentFileError, match=r"missing: \['CustomerId', 'PrimaryEmail', 'FirstName'\]; 3 column"
                                               r"\(s\) not in model.json, at position\(s\) \[1, 2, 3\]") as caught:
        read(source)
    assert "Zebulon" not in str(caught.value) and "zeb.quix" not in str(caught.value)


def test_column_headers_false_keeps_a_header_looking_row_as_data(tmp_path: Path) -> None:
    source = write(tmp_path, {"ci/dest/model.json": model(entity("Vip", two_partitions({"columnHeaders": False}))),
                              PART1: "CustomerId,PrimaryEmail,FirstName\n", PART2: ""})
    assert read(source)[1][0].fields["PrimaryEmail"] == "PrimaryEmail"


def test_wrong_width_rows_are_rejected(tmp_path: Path) -> None:
    source = write(tmp_path, {"ci/dest/model.json": model(entity("Vip", two_partitions())),
                              PART1: "c1,a@example.com\n", PART2: "c2,b@example.com,B\n"})
    _, records = read(source)
    assert records[0] == Record(PART1, 1, {}, "row has 2 values, model.json lists 3")
    assert records[1].error is None


def test_entity_choice(tmp_path: Path) -> None:
    doc = model(entity("Vip", two_partitions()), entity("Churn", []),
                {"$type": "ReferenceEntity", "name": "Ref", "source": "x"})
    source = write(tmp_path, {"ci/dest/model.json": doc, PART1: "c1,a,A\n", PART2: ""})
    with pytest.raises(SegmentFileError, match=r"2 entities \(Vip, Churn\): set file_format.entity"):
        read(source)
    assert len(read(source, options=ReaderOptions(entity="Vip"))[1]) == 1
    assert read(source, options=ReaderOptions(entity="Churn")) == (ATTRS, [])
    with pytest.raises(SegmentFileError, match="no entity 'Nope'"):
        read(source, options=ReaderOptions(entity="Nope"))


def test_missing_partition_is_reported_before_any_record(tmp_path: Path) -> None:
    source = write(tmp_path, {"ci/dest/model.json": model(entity("Vip", two_partitions())), PART1: "c1,a,A\n"})
    with pytest.raises(SegmentFileError, match="partition 'Vip_2' of entity 'Vip' does not exist"):
        open_segment(source, "ci/dest/model.json")


@pytest.mark.parametrize(("text", "reason"), [
    ("not json", "not valid JSON"), ("[]", "must be a JSON object"), ('{"entities": {}}', "no 'entities' list"),
    ('{"entities": [{"$type": "LocalEntity", "name": "X", "attributes": []}]}', "has no attributes"),
    ('{"entities": [{"$type": "LocalEntity", "name": "X", "attributes": [{"name": "a"}, {"name": "a"}]}]}',
     "attribute 'a' twice"),
    ('{"entities": [{"$type": "LocalEntity", "name": "X", "attributes": [{"name": "a"}], "partitions": [{}]}]}',
     "has no location"),
])
def test_malformed_model_json(tmp_path: Path, text: str, reason: str) -> None:
    source = write(tmp_path, {"ci/dest/model.json": text})
    with pytest.raises(SegmentFileError, match=reason):
        read(source)


def test_relative_locations_and_partition_names(tmp_path: Path) -> None:
    parts = [{"name": "p", "location": "Vip/2024/05/01/0600/Vip_1.csv"}]
    source = write(tmp_path, {"ci/dest/model.json": model(entity("Vip", parts)), PART1: "c1,a,A\n"})
    assert read(source)[1][0].source == PART1
    assert cdm_partition_names(source, "ci/dest/model.json") == {PART1}


def test_relative_location_escaping_the_folder_is_refused(tmp_path: Path) -> None:
    parts = [{"name": "p", "location": "../../../secret.csv"}]
    source = write(tmp_path, {"ci/dest/model.json": model(entity("Vip", parts))})
    with pytest.raises(SegmentFileError, match="outside the container"):
        read(source)


# -- real blob storage ---------------------------------------------------------------------------------


def upload(container: ContainerClient, files: dict[str, str]) -> BlobContainerSource:
    for name, text in files.items():
        container.upload_blob(name, text.encode(), overwrite=True)
    return BlobContainerSource(container)


def test_blob_cdm_folder_maps_urls_into_the_same_container(container: ContainerClient) -> None:
    url = container.url.split("?")[0]
    parts = [{"name": "Vip_1", "location": f"{url}/{PART1}?snapshot=2024-05-01"},
             {"name": "Vip_2", "location": f"{url}/{PART2}"}]
    source = upload(container, {"ci/dest/model.json": model(entity("Vip", parts)),
                                PART1: "c1,a@example.com,Ann\n", PART2: "c2,b@example.com,Bob\n"})
    columns, records = read(source)
    assert columns == ATTRS
    assert [(r.source, r.row) for r in records] == [(PART1, 1), (PART2, 1)]
    assert cdm_partition_names(source, "ci/dest/model.json") == {PART1, PART2}


def test_blob_partition_in_another_container_or_account_is_refused(container: ContainerClient) -> None:
    url = container.url.split("?")[0]
    for location in (f"{url}-other/{PART1}", f"{BASE}/{PART1}", f"{url}/../x/{PART1}"):
        source = upload(container, {"ci/dest/model.json": model(entity("Vip", [{"name": "p", "location": location}])),
                                    PART1: "c1,a,A\n"})
        with pytest.raises(SegmentFileError, match="outside the container"):
            read(source)


def test_blob_missing_partition(container: ContainerClient) -> None:
    url = container.url.split("?")[0]
    parts = [{"name": "p", "location": f"{url}/{PART1}"}]
    source = upload(container, {"ci/dest/model.json": model(entity("Vip", parts))})
    with pytest.raises(SegmentFileError, match="does not exist"):
        read(source)


def test_dfs_host_and_abfss_locations_map_to_the_blob_container() -> None:
    client = ContainerClient("https://acct.blob.core.windows.net", "segments")
    source = BlobContainerSource(client)
    assert source.name_for_url(f"https://acct.dfs.core.windows.net/segments/{PART1}?snapshot=1") == PART1
    assert source.name_for_url(f"https://ACCT.blob.core.windows.net:443/segments/{PART1}") == PART1
    assert source.name_for_url(f"https://other.blob.core.windows.net/segments/{PART1}") is None
    from shared.source.readers.cdm_reader import locate
    assert locate(source, "ci/dest/model.json", f"abfss://segments@acct.dfs.core.windows.net/{PART1}") == PART1
