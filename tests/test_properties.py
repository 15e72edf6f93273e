"""Property tests (hypothesis) for the three pieces every row passes through: reader, mapper, batcher.

- CSV reader: whatever a CSV writer produces (quotes, delimiters, CR/LF/CRLF, line breaks inside values,
  BOM or not, UTF-8/16/32, gzip or not, blank lines, rows of the wrong width, NUL bytes, undecodable bytes)
  reads back value for value, with the row numbers the reader documents (data records counted from 1 after
  the header; a quoted value spanning lines is one row; blank lines are skipped but counted).
- email rules and mapper: never an exception; a MappedContact is valid JSON within SendGrid's ContactRequest
  limits, a Rejection names the field, the column and a reason that never repeats the address.
- any bytes under any segment name, and any JSON as model.json: Records or a SegmentFileError naming the file,
  never another exception; what reaches the mapper is clean text.
- batcher: no body over the contact or byte limit, nothing lost, reordered or duplicated, greedy packing.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import math
import os
import re
import string
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from sendgrid_simulator.openapi import SPEC_DIR
from shared.config.destinations import Destination
from shared.errors import SegmentFileError
from shared.mapping.contact_mapping import (
    CUSTOM_TEXT_MAX_LENGTH,
    FIELD_MAX_LENGTHS,
    MAX_ALTERNATE_EMAILS,
    ContactMapper,
    CustomField,
    MappedContact,
    Rejection,
    resolve_custom_fields,
)
from shared.mapping.email_rules import MAX_EMAIL_LENGTH, normalise_email
from shared.source.readers import ReaderOptions, open_segment
from shared.source.records import Record
from shared.source.sources import LocalDirSource
from shared.staging.batching import MAX_BODY_BYTES, MAX_CONTACTS_PER_REQUEST, batches, body_prefix

# PROPERTY_EXAMPLES=5000 for a deeper hunt; the default keeps the file at a few seconds.
SETTINGS = settings(max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "150")), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
LIST_ID = "5b0c3a1e-8d7f-4c2a-9e61-3f2d7a9b0c11"

# == CSV reader ==========================================================================================

# Values: anything a spreadsheet can hold, with the characters that matter to CSV made likely.
_CSV_SPECIAL = st.sampled_from([",", ";", "\t", "|", ":", '"', "'", "\n", "\r", "\r\n", " ", "\ufeff", "é", "Zoë",
                                "日本", "🙂", "\u2028", "\x85", "=cmd|' /C calc'!A0", "\\"])
_PLAIN_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)
VALUE = st.lists(st.one_of(_PLAIN_TEXT, _CSV_SPECIAL), max_size=5).map("".join)
# Header names: unique; no NUL, no delimiter (a one-column header holding a delimiter earns the "wrong
# delimiter" refusal, tested in test_bad_inputs), no BOM character (it would read as the file's BOM).
HEADER_NAME = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00,;|\t:\ufeff"),
                      min_size=1, max_size=10)
# Bytes that are never valid anywhere in UTF-8, written through surrogateescape.
_BAD_UTF8 = st.sampled_from(["\udcc0", "\udcc1", "\udcf5", "\udcfe", "\udcff"])

ENCODINGS: dict[str, tuple[bytes, str]] = {  # label -> (BOM written by hand, codec)
    "utf-8": (b"", "utf-8"),
    "utf-8 BOM": (codecs.BOM_UTF8, "utf-8"),
    "utf-16-le BOM": (codecs.BOM_UTF16_LE, "utf-16-le"),
    "utf-16-be BOM": (codecs.BOM_UTF16_BE, "utf-16-be"),
    "utf-32-le BOM": (codecs.BOM_UTF32_LE, "utf-32-le"),
}


@st.composite
def csv_files(draw: st.DrawFn) -> dict[str, Any]:
    width = draw(st.integers(1, 5))
    header = draw(st.lists(HEADER_NAME, min_size=width, max_size=width, unique=True))
    encoding = draw(st.sampled_from(sorted(ENCODINGS)))
    utf8 = ENCODINGS[encoding][1] == "utf-8"
    # Each entry: ("row", cells) | ("blank",) | ("wide", cells of the wrong width) | ("nul", cells, column)
    # | ("bad", cells, column) (undecodable bytes, UTF-8 only).
    kinds = ["row", "row", "row", "blank", "wide", "nul"] + (["bad"] if utf8 else [])
    entries: list[tuple[Any, ...]] = []
    for kind in draw(st.lists(st.sampled_from(kinds), max_size=12)):
        if kind == "blank":
            entries.append(("blank",))
            continue
        if kind == "wide":
            other = draw(st.integers(1, 7).filter(lambda n: n != width))
            cells = draw(st.lists(VALUE, min_size=other, max_size=other))
            if other == 1 and cells == [""]:
                cells = ["x"]  # csv.writer writes [''] as "" (a value), but keep the row unmistakable
            entries.append(("wide", cells))
            continue
        cells = draw(st.lists(VALUE, min_size=width, max_size=width))
        if kind in ("nul", "bad"):
            column = draw(st.integers(0, width - 1))
            position = draw(st.integers(0, len(cells[column])))
            poison = "\x00" if kind == "nul" else draw(_BAD_UTF8)
            cells[column] = cells[column][:position] + poison + cells[column][position:]
            entries.append((kind, cells, column))
        else:
            entries.append(("row", cells))
    return {
        "header": header,
        "entries": entries,
        "encoding": encoding,
        "terminator": draw(st.sampled_from(["\r\n", "\n", "\r"])),
        "quote_all": draw(st.booleans()),
        "delimiter": draw(st.sampled_from([",", ";", "|", "\t", ":"])),
        "final_newline": draw(st.booleans()),
        "gzip": draw(st.booleans()),
        # a long first value pushes the rest of the file over the reader's 64 KiB chunk boundaries
        "padding": draw(st.sampled_from([0, 0, 0, 65_530, 70_000])),
    }


def _write(spec: dict[str, Any]) -> bytes:
    buffer = io.StringIO()
    terminator = spec["terminator"]
    # csv.writer quotes a value with a line break only when it holds a character of the terminator (or
    # '\n'), so for LF/CR files it must quote every value, as a careful exporter does.
    quoting = csv.QUOTE_ALL if spec["quote_all"] or terminator != "\r\n" else csv.QUOTE_MINIMAL
    writer = csv.writer(buffer, delimiter=spec["delimiter"], lineterminator=terminator, quoting=quoting)
    writer.writerow(spec["header"])
    for entry in spec["entries"]:
        writer.writerow([] if entry[0] == "blank" else entry[1])
    text = buffer.getvalue()
    if not spec["final_newline"]:
        text = text.removesuffix(terminator)
    bom, codec = ENCODINGS[spec["encoding"]]
    data = bom + text.encode(codec, errors="surrogateescape")
    return gzip.compress(data, mtime=0) if spec["gzip"] else data


def _expected(spec: dict[str, Any], name: str) -> list[Record]:
    header = spec["header"]
    expected: list[Record] = []
    entries = spec["entries"]
    if not spec["final_newline"] and entries and entries[-1][0] == "blank":
        entries = entries[:-1]  # removing the last terminator removed that blank line
    for row, entry in enumerate(entries, start=1):
        kind = entry[0]
        if kind == "row":
            expected.append(Record(name, row, dict(zip(header, entry[1], strict=True))))
        elif kind == "wide":
            expected.append(Record(name, row, {}, f"row has {len(entry[1])} values, header has {len(header)}"))
        elif kind == "nul":
            expected.append(Record(name, row, {}, f"NUL byte in column {header[entry[2]]!r}"))
        elif kind == "bad":
            # the first column holding an undecodable byte is named; only `entry[2]` got one
            expected.append(Record(name, row, {}, f"invalid UTF-8 in column {header[entry[2]]!r}"))
    return expected


@SETTINGS
@given(spec=csv_files())
@example(spec={"header": ["Email"], "entries": [("row", ["a\r\nb"]), ("blank",), ("row", ['"'])],
               "encoding": "utf-8 BOM", "terminator": "\r\n", "quote_all": False, "delimiter": ",",
               "final_newline": False, "gzip": True, "padding": 0})
def test_csv_reads_back_what_a_csv_writer_wrote(tmp_path: Path, spec: dict[str, Any]) -> None:
    if spec["padding"]:
        spec = dict(spec, entries=[("row", ["p" * spec["padding"], *([""] * (len(spec["header"]) - 1))]),
                                   *spec["entries"]])
    name = "segment.tsv" if spec["delimiter"] == "\t" else "segment.csv"
    if spec["gzip"]:
        name += ".gz"
    (tmp_path / name).write_bytes(_write(spec))
    options = None if spec["delimiter"] in (",", "\t") else ReaderOptions(delimiter=spec["delimiter"])
    with open_segment(LocalDirSource(tmp_path), name, options) as reader:
        assert reader.columns == spec["header"]
        records = list(reader)
    assert records == _expected(spec, name)
    _assert_projects_like_its_records(LocalDirSource(tmp_path), name, options, records,
                                      [*reversed(spec["header"]), "Absent"])


def _assert_projects_like_its_records(source: LocalDirSource, name: str, options: ReaderOptions | None,
                                      records: list[Record], columns: list[str]) -> None:
    """What the engine maps (`project`: values picked by position) is what the Records hold, row for row."""
    with open_segment(source, name, options) as reader:
        projected = list(reader.project(columns))
    assert projected == [(r.source, r.row, tuple(map(r.fields.get, columns)) if r.error is None else (), r.error)
                         for r in records]


_TOKENS = st.sampled_from([b",", b";", b"\t", b'"', b'""', b"\r", b"\n", b"\r\n", b"\x00", b"\xff", b"\xc3", b"\xa9",
                           b"\xef\xbb\xbf", b"\xff\xfe", b"{", b"}", b"[", b'"Email":', b"a@example.com", b"\\u0000",
                           b"\\ud800", b"Email", b"x" * 70])


@st.composite
def hostile_files(draw: st.DrawFn) -> tuple[str, bytes]:
    data = b"".join(draw(st.lists(st.one_of(_TOKENS, st.binary(max_size=8)), max_size=40)))
    name = draw(st.sampled_from(["f.csv", "f.tsv", "f.txt", "f.jsonl", "f.csv.gz", "f.jsonl.gz"]))
    if name.endswith(".gz"):
        compressed = gzip.compress(data, mtime=0)
        cut = draw(st.sampled_from([len(compressed), len(compressed) - 1, len(compressed) // 2, 12]))
        data = compressed[:cut]
    elif draw(st.booleans()):
        data = gzip.compress(data, mtime=0)  # gzip under a plain name: gunzipped too
    return name, data


@SETTINGS
@given(file=hostile_files(), limits=st.booleans(), header=st.sampled_from([None, False]))
def test_any_bytes_give_records_or_a_segment_file_error(tmp_path: Path, file: tuple[str, bytes],
                                                        limits: bool, header: bool | None) -> None:
    name, data = file
    (tmp_path / name).write_bytes(data)
    options = ReaderOptions(max_field_chars=40, max_columns=6, max_line_bytes=200, has_header=header) if limits \
        else ReaderOptions(has_header=header)
    try:
        with open_segment(LocalDirSource(tmp_path), name, options) as reader:
            records = list(reader)
            columns = [*(reader.columns or [])[:3], "Email", "2"]
    except SegmentFileError as exc:
        assert exc.source == name and exc.reason
        return
    _assert_projects_like_its_records(LocalDirSource(tmp_path), name, options, records, columns)
    rows = [r.row for r in records]
    assert rows == sorted(set(rows)) and all(row >= 1 for row in rows)  # increasing, never reused
    for record in records:
        assert record.source == name
        if record.error is not None:
            assert record.fields == {}
        for value in record.fields.values():  # what reaches the mapper is always clean text
            assert "\x00" not in value and not re.search("[\ud800-\udfff]", value)
            assert options is None or len(value) <= options.max_field_chars


_JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-2, 2), st.sampled_from(
    ["", "Seg", "Email", "LocalEntity", "ReferenceEntity", "CsvFormatSettings", "QuoteStyle.None", "base64", "utf-16",
     ",", ";;", "\n", "p.csv", "../p.csv", "/etc/passwd", "file:///etc/passwd", "https://a.blob.core.windows.net/c/p.csv",
     "abfss://c@a.dfs.core.windows.net/p.csv", "sub/p.csv", "http://[::1", "p.csv?snapshot=1"]))
_CDM_KEYS = st.sampled_from(["name", "version", "entities", "$type", "attributes", "partitions", "location",
                             "fileFormatSettings", "columnHeaders", "delimiter", "quoteStyle", "encoding", "dataType"])
_CDM_JSON = st.recursive(_JSON_LEAF, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(_CDM_KEYS, inner, max_size=5)), max_leaves=25)


@st.composite
def cdm_models(draw: st.DrawFn) -> Any:
    """Mostly CDM-shaped documents with any part swapped for something else."""
    partition = st.fixed_dictionaries({"name": _JSON_LEAF, "location": _JSON_LEAF},
                                      optional={"fileFormatSettings": _CDM_JSON})
    attribute = st.one_of(st.fixed_dictionaries({"name": st.sampled_from(["Email", "Id", ""])}), _CDM_JSON)
    entity = st.fixed_dictionaries({"$type": st.sampled_from(["LocalEntity", "ReferenceEntity"]), "name": _JSON_LEAF,
                                    "attributes": st.one_of(st.lists(attribute, max_size=3), _CDM_JSON),
                                    "partitions": st.one_of(st.lists(partition, max_size=3), _CDM_JSON)})
    return draw(st.one_of(st.fixed_dictionaries({"name": st.just("m"), "entities": st.lists(entity, max_size=2)}),
                          _CDM_JSON))


@SETTINGS
@given(model=cdm_models(), entity=st.sampled_from([None, "Seg"]))
def test_any_model_json_gives_records_or_a_segment_file_error(tmp_path: Path, model: Any,
                                                              entity: str | None) -> None:
    (tmp_path / "cdm").mkdir(exist_ok=True)
    (tmp_path / "cdm" / "model.json").write_text(json.dumps(model))
    for partition in ("cdm/p.csv", "cdm/sub/p.csv", "c/p.csv"):
        (tmp_path / partition).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / partition).write_text("a@example.com\n")
    try:
        with open_segment(LocalDirSource(tmp_path), "cdm/model.json", ReaderOptions(entity=entity)) as reader:
            records = list(reader)
    except SegmentFileError as exc:
        assert exc.source == "cdm/model.json" and exc.reason
        return
    assert all(r.source in ("cdm/p.csv", "cdm/sub/p.csv", "c/p.csv") for r in records)  # never outside the root
    _assert_projects_like_its_records(LocalDirSource(tmp_path), "cdm/model.json", ReaderOptions(entity=entity),
                                      records, ["Id", "Email", "Other"])


# == email rules =========================================================================================

_LOCAL_CHARS = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-."
_LABEL_CHARS = string.ascii_letters + string.digits + "-"


@st.composite
def email_like(draw: st.DrawFn) -> str:
    """Addresses near the edge of valid: dots, dashes (incl. 'xn--' and 'ab--'), long parts, case, spaces."""
    local = draw(st.one_of(st.text(_LOCAL_CHARS, min_size=1, max_size=12),
                           st.text(_LOCAL_CHARS, min_size=60, max_size=70),
                           st.sampled_from(['"quoted"', "ünï", "a b", "a..b", ".a", "a."])))
    labels = draw(st.lists(st.one_of(st.text(_LABEL_CHARS, min_size=1, max_size=8),
                                     st.sampled_from(["xn--abc", "xn--mller-kva", "ab--cd", "exämple", "日本",
                                                      "a" * 63, "a" * 64, "localhost", "test", "arpa", "1"])),
                          min_size=1, max_size=4))
    tld = draw(st.sampled_from(["com", "co", "de", "xn--p1ai", "museum", "c", "123", "test", "local", "x1"]))
    address = f"{local}@{'.'.join([*labels, tld])}"
    address = draw(st.sampled_from([address, address.upper(), address + ".", f"  {address}\t", f"{address} "]))
    return address


EMAILS = st.one_of(email_like(), st.emails().map(str), st.text(max_size=30))


def _library(address: str) -> str | None:
    """email-validator's answer, plus RFC 5321's 64-character local part (which it checks only when strict)."""
    try:
        email = validate_email(address, check_deliverability=False, allow_smtputf8=False).ascii_email
    except EmailNotValidError:
        return None
    return email if email is not None and email.rfind("@") <= 64 else None


def _leaks(reason: str, raw: str) -> bool:
    address = raw.strip()
    return "@" in address and len(address) >= 3 and address.lower() in reason.lower()


@SETTINGS
@given(raw=EMAILS)
@example(raw="  Ada.Lovelace@Example.COM.")
@example(raw="a@xn--abc.com")
@example(raw="a@ab--cd.com")
def test_email_rules_agree_with_email_validator_and_never_leak_the_address(raw: str) -> None:
    email, problem = normalise_email(raw)
    # The fast path may only accept what email-validator (the documented final word) accepts.
    assert email == _library(raw.strip().lower())
    if email is not None:
        assert problem is None
        assert email == email.strip().lower() and email.isascii() and len(email) <= MAX_EMAIL_LENGTH
    else:
        assert problem and not _leaks(problem, raw)


# == contact mapper ======================================================================================

CUSTOM = {"tier": CustomField("e1_T", "Text"), "score": CustomField("e2_N", "Number"),
          "since": CustomField("e3_D", "Date")}
MAPPING = {"email": "Email", "first_name": "First", "last_name": "Last", "address_line_1": "Addr1",
           "address_line_2": "Addr2", "city": "City", "state_province_region": "State", "country": "Country",
           "postal_code": "Zip", "external_id": "Ext", "anonymous_id": "Anon", "alternate_emails": "Alt"}
CUSTOM_COLUMNS = {"tier": "Tier", "score": "Score", "since": "Since"}
SENDGRID_FIELDS = {*MAPPING} | {f"custom_fields.{n}" for n in CUSTOM}


def _around(limit: int) -> st.SearchStrategy[str]:
    """Text whose length (after trimming) lands on both sides of a limit."""
    return st.tuples(st.integers(limit - 2, limit + 2), st.sampled_from(["x", "é", "日", "🙂"]),
                     st.sampled_from(["", " ", "  \t"])).map(lambda t: t[2] + t[1] * t[0] + t[2])


_ANY_TEXT = st.text(st.characters(), max_size=15)  # includes lone surrogates (Cs), NUL, line breaks
_NUMBERS = st.one_of(st.integers().map(str), st.floats().map(str), st.sampled_from(
    ["1e400", "-1e400", "nan", "inf", "1_000", "٣", "²", "9" * 400, "--5", " 42 ", "0x10", "1,5"]))
_DATES = st.one_of(st.dates().map(str), st.datetimes().map(lambda d: d.isoformat() + "Z"),
                   st.dates().map(lambda d: d.strftime("%m/%d/%Y")), st.sampled_from(["2024-02-30", "13/01/2024"]))
_ALTERNATES = st.lists(EMAILS, max_size=7).flatmap(
    lambda xs: st.sampled_from([", ", ";", " "]).map(lambda sep: sep.join(xs)))


def _value(limit: int | None) -> st.SearchStrategy[str]:
    options = [_ANY_TEXT, st.just(""), st.just("   ")]
    if limit is not None:
        options.append(_around(limit))
    return st.one_of(*options)


ROWS = st.fixed_dictionaries({}, optional={
    "Email": EMAILS,
    **{MAPPING[name]: _value(FIELD_MAX_LENGTHS.get(name)) for name in MAPPING if name not in ("email",
                                                                                               "alternate_emails")},
    "Alt": st.one_of(_ALTERNATES, _ANY_TEXT),
    "Tier": _value(CUSTOM_TEXT_MAX_LENGTH),
    "Score": st.one_of(_NUMBERS, _ANY_TEXT),
    "Since": st.one_of(_DATES, _ANY_TEXT),
})


def _mapper(length_policy: str, empty_values: str) -> ContactMapper:
    destination = Destination.model_validate({
        "name": "props", "list_id": LIST_ID, "api_key_secret": "k", "segments": ["p/"],
        "field_mapping": {**MAPPING, "custom_fields": CUSTOM_COLUMNS},
        "length_policy": length_policy, "empty_values": empty_values})
    return ContactMapper(destination, resolve_custom_fields(destination, CUSTOM))


MAPPERS = {(lp, ev): _mapper(lp, ev) for lp in ("reject", "truncate") for ev in ("skip", "clear")}
_DATE_OUT = re.compile(r"(0[1-9]|1[0-2])/(0[1-9]|[12]\d|3[01])/\d{4}")


def _contact_request_schema() -> dict[str, Any] | None:
    """SendGrid's own ContactRequest schema (../shared/sendgrid/), when the team kit is checked out."""
    path = SPEC_DIR / "tsg_mc_contacts_v3.json"
    if not path.is_file():
        return None
    schema: dict[str, Any] = json.loads(path.read_text())["components"]["schemas"]["ContactRequest"]
    return schema


CONTACT_REQUEST = _contact_request_schema()


def _check_contact(result: MappedContact, row: dict[str, str], length_policy: str, empty_values: str) -> None:
    body = json.loads(result.body)  # valid JSON (and UTF-8: bytes, decoded by json.loads)
    assert isinstance(body, dict)
    assert body["email"] == result.email == result.email.strip().lower()
    assert result.email == _library(row["Email"].strip().lower())
    assert set(body) <= set(MAPPING) | {"custom_fields"}
    expected_truncated: list[str] = []
    for name, column in MAPPING.items():
        if name in ("email", "alternate_emails"):
            continue
        given = row.get(column)
        stripped = given.strip() if given is not None else None
        if not stripped:
            assert body.get(name, None) == ("" if given is not None and empty_values == "clear" else None)
            continue
        sent = body[name]
        limit = FIELD_MAX_LENGTHS.get(name)
        assert sent == sent.strip()
        if limit is not None and len(stripped) > limit:
            assert length_policy == "truncate" and len(sent) <= limit and stripped.startswith(sent)
            expected_truncated.append(name)
        else:
            assert sent == stripped
    for alternate in body.get("alternate_emails", []):
        assert alternate == alternate.strip().lower() and _library(alternate) == alternate
        assert alternate != body["email"]
    assert len(body.get("alternate_emails", [])) <= MAX_ALTERNATE_EMAILS
    assert body.get("alternate_emails", ["x"]) != []  # an empty list is left out
    custom = body.get("custom_fields", {})
    assert set(custom) <= {"e1_T", "e2_N", "e3_D"}
    if "e1_T" in custom and custom["e1_T"] != "":
        stripped = row["Tier"].strip()
        assert len(custom["e1_T"]) <= CUSTOM_TEXT_MAX_LENGTH and stripped.startswith(custom["e1_T"])
        if len(stripped) > CUSTOM_TEXT_MAX_LENGTH:
            expected_truncated.append("custom_fields.tier")
    if "e2_N" in custom and custom["e2_N"] != "":
        number = custom["e2_N"]
        assert isinstance(number, int | float) and not isinstance(number, bool)
        assert math.isfinite(float(number))
    if "e3_D" in custom and custom["e3_D"] != "":
        assert _DATE_OUT.fullmatch(custom["e3_D"]), custom["e3_D"]
    assert sorted(result.truncated) == sorted(expected_truncated)
    if CONTACT_REQUEST is not None:
        jsonschema.validate(body, CONTACT_REQUEST)


@SETTINGS
@given(row=ROWS, length_policy=st.sampled_from(["reject", "truncate"]),
       empty_values=st.sampled_from(["skip", "clear"]))
@example(row={"Email": "a@example.com", "Since": "2024-02-29T10:00:00Z"}, length_policy="reject",
         empty_values="skip")
@example(row={"Email": "a@example.com", "Since": "0999-12-31"}, length_policy="reject", empty_values="skip")
@example(row={"Email": "a@example.com", "First": "Ann\ud800"}, length_policy="reject", empty_values="skip")
@example(row={"Email": "a@example.com", "Score": "9" * 400}, length_policy="reject", empty_values="skip")
def test_mapper_gives_a_valid_contact_or_a_named_rejection(row: dict[str, str], length_policy: str,
                                                           empty_values: str) -> None:
    result = MAPPERS[(length_policy, empty_values)].map(row)  # never raises
    if isinstance(result, MappedContact):
        _check_contact(result, row, length_policy, empty_values)
        return
    assert isinstance(result, Rejection)
    assert result.field in SENDGRID_FIELDS
    assert result.column == {**MAPPING, **{f"custom_fields.{n}": c for n, c in CUSTOM_COLUMNS.items()}}[result.field]
    assert result.reason
    if "Email" in row:
        assert not _leaks(result.reason, row["Email"])
    if result.field == "email":
        assert "Email" not in row or _library(row["Email"].strip().lower()) is None
    for alternate in re.split(r"[;,\s]+", row.get("Alt", "")):
        assert not _leaks(result.reason, alternate)


# == batcher =============================================================================================

_CONTACT = st.integers(0, 120).map(lambda n: json.dumps({"email": "u@example.com", "first_name": "é" * n},
                                                        ensure_ascii=False, separators=(",", ":")).encode())


def _check_batches(contacts: list[bytes], list_ids: list[str], max_contacts: int, max_bytes: int,
                   first_number: int = 1) -> None:
    numbered = [(10 * i + 3, c) for i, c in enumerate(contacts)]  # indices need not be 0..n-1
    prefix_size = len(body_prefix(list_ids)) + 2
    if any(prefix_size + len(c) > max_bytes for c in contacts):
        with pytest.raises(ValueError, match="more than a whole request may carry"):
            list(batches(numbered, list_ids, max_contacts=max_contacts, max_bytes=max_bytes))
        return
    result = list(batches(numbered, list_ids, max_contacts=max_contacts, max_bytes=max_bytes,
                          first_number=first_number))
    assert [b.number for b in result] == list(range(first_number, first_number + len(result)))
    assert [i for b in result for i in b.indices] == [i for i, _ in numbered]  # order and count preserved
    assert [c for b in result for c in b.contacts] == contacts
    for position, batch in enumerate(result):
        body = batch.body()
        assert 1 <= len(batch.contacts) <= max_contacts
        assert len(body) == batch.body_size() <= max_bytes
        parsed = json.loads(body)
        assert parsed["list_ids"] == list_ids
        assert parsed["contacts"] == [json.loads(c) for c in batch.contacts]
        if position + 1 < len(result):  # greedy: the next contact did not fit in this batch
            following = result[position + 1].contacts[0]
            assert len(batch.contacts) == max_contacts or len(body) + 1 + len(following) > max_bytes


@SETTINGS
@given(contacts=st.lists(_CONTACT, max_size=60), max_contacts=st.integers(1, 12),
       extra_bytes=st.integers(0, 1200), list_count=st.integers(1, 3), first_number=st.integers(1, 5))
def test_batches_respect_both_limits_at_small_sizes(contacts: list[bytes], max_contacts: int, extra_bytes: int,
                                                    list_count: int, first_number: int) -> None:
    list_ids = [LIST_ID] * list_count
    max_bytes = len(body_prefix(list_ids)) + 2 + extra_bytes
    assume(max_bytes > len(body_prefix(list_ids)) + 2)
    _check_batches(contacts, list_ids, max_contacts, max_bytes, first_number)


@settings(max_examples=4, deadline=None)
@given(count=st.integers(29_990, 60_500), size=st.integers(60, 420), seed=st.integers(0, 50))
@example(count=30_001, size=60, seed=0)  # the contact limit decides
@example(count=30_000, size=400, seed=7)  # the 6,000,000-byte limit decides
def test_batches_respect_sendgrids_real_limits(count: int, size: int, seed: int) -> None:
    template = json.dumps({"email": "u0000000@example.com", "first_name": ""}, separators=(",", ":")).encode()
    contacts = [template[:-2] + b"x" * (size - len(template) + (i * seed) % 17) + b'"}' for i in range(count)]
    _check_batches(contacts, [LIST_ID], MAX_CONTACTS_PER_REQUEST, MAX_BODY_BYTES)
    result = list(batches(enumerate(contacts), [LIST_ID]))  # the defaults are the real limits
    assert max(len(b.contacts) for b in result) <= MAX_CONTACTS_PER_REQUEST
    assert max(b.body_size() for b in result) <= MAX_BODY_BYTES
