"""Malformed and hostile segment files: each gives a specific SegmentFileError or per-row rejections.

Small files live in tests/bad_inputs/; big ones (bombs, huge rows) are generated here into tmp_path. Nothing may
raise any other exception type, and the big ones must not need memory in proportion to their size. Where the
product's answer depends on the mapping (missing email column, odd emails, formula-looking values), the file also
goes through the engine's dry run, and the operators' rejects CSV is checked for formula injection.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared.config.destinations import Destination
from shared.errors import ConfigurationError, SegmentFileError
from shared.pipeline.engine import ExportOptions, ExportResult, export_segment
from shared.service.export_service import DATA_SUFFIXES, is_segment_entry
from shared.source.readers import ReaderOptions, kind_of, open_segment
from shared.source.readers.dispatch import CSV_SUFFIXES, JSONL_SUFFIXES
from shared.source.records import Record
from shared.source.sources import LocalDirSource
from shared.state.run_store import RunStore

BAD = Path(__file__).parent / "bad_inputs"


def read_all(root: Path, name: str, options: ReaderOptions | None = None) -> tuple[list[str] | None, list[Record]]:
    with open_segment(LocalDirSource(root), name, options) as reader:
        return reader.columns, list(reader)


# name -> (reason fragment, row) of the SegmentFileError the file must raise
FILE_ERRORS: dict[str, tuple[str, int | None]] = {
    "empty.csv": ("file is empty", None),
    "blank_lines_only.csv": ("file is empty", None),
    "wrong_delimiter.csv": ("seems to use ';' as delimiter", None),
    "unterminated_quote.csv": ("unterminated quoted value", 2),
    "duplicate_header.csv": ("duplicate column name in the header: columns", None),
    "png_renamed.csv": ("PNG image", None),
    "encrypted.csv.gpg": ("encrypted file", None),
    "binary_pgp_renamed.csv": ("encrypted (OpenPGP)", None),
    "armored_pgp.csv": ("encrypted (OpenPGP) file", None),
    "xlsx_renamed.csv": ("ZIP archive", None),
    "parquet_renamed.csv": ("Parquet", None),
    "truncated.csv.gz": ("truncated gzip", None),
    "not_gzip.csv.gz": ("does not hold gzip data", None),
    "json_array.jsonl": ("JSON array, not JSON Lines", 1),
    "_SUCCESS": ("not a segment file", None),
    "part-0000.csv.crc": ("not a segment file", None),
    "manifest-abc.json": ("not a segment file", None),
    "notes.docx": ("not a segment file", None),
    "cdm_missing_partition/model.json": ("partition 'Seg_1' of entity 'Seg' does not exist", None),
    "cdm_outside_container/model.json": ("outside the container", None),
    "cdm_not_json/model.json": ("model.json is not valid JSON", None),
    "cdm_wrong_shape/model.json": ("no 'entities' list", None),
    "cdm_array/model.json": ("model.json must be a JSON object", None),
    "cdm_file_url/model.json": ("partition 'Seg_1' of entity 'Seg' is located outside the container", None),
    "bom_only.csv": ("file is empty", None),
    "nul_in_header.csv": ("the header row contains NUL bytes", None),
    "cp1252_header.csv": ("the header row is not valid UTF-8: set file_format.encoding", None),
    "empty.jsonl": ("file is empty", None),
    "cdm_bad_encoding/model.json": ("partition 'Seg_1': 'base64' is not a text encoding", None),
}


@pytest.mark.parametrize("name", sorted(FILE_ERRORS))
def test_file_is_refused_with_a_specific_reason(name: str) -> None:
    fragment, row = FILE_ERRORS[name]
    with pytest.raises(SegmentFileError) as caught:
        read_all(BAD, name)
    assert caught.value.source == name  # the file is named (LocalDirSource names files by their path)
    assert fragment in caught.value.reason
    if row is not None:
        assert caught.value.row == row


def test_truncated_gzip_fails_only_after_the_readable_part() -> None:
    with pytest.raises(SegmentFileError) as caught:
        read_all(BAD, "truncated.csv.gz")
    assert caught.value.row is not None and caught.value.row > 1  # the intact first half was read


def _ok(records: list[Record]) -> list[dict[str, str]]:
    assert all(r.error is None for r in records), [r.error for r in records]
    return [r.fields for r in records]


def check_header_only(columns: list[str] | None, records: list[Record]) -> None:
    assert columns == ["CustomerId", "Email", "FirstName"]
    assert records == []  # the engine reports "no profiles"


def check_missing_email(columns: list[str] | None, records: list[Record]) -> None:
    # The reader does not know the mapping: it yields the rows; the engine refuses the file up front.
    assert columns == ["CustomerId", "FirstName"]
    assert _ok(records) == [{"CustomerId": "c1", "FirstName": "Ann"}]


def check_invalid_utf8(columns: list[str] | None, records: list[Record]) -> None:
    assert [(r.row, r.error) for r in records] == [(1, None), (2, "invalid UTF-8 in column 'FirstName'"), (3, None)]
    assert records[1].fields == {}


def check_utf16(columns: list[str] | None, records: list[Record]) -> None:
    assert columns == ["CustomerId", "Email", "FirstName"]
    assert _ok(records) == [{"CustomerId": "c1", "Email": "a@example.com", "FirstName": "Zoë"}]


def check_nul(columns: list[str] | None, records: list[Record]) -> None:
    assert [(r.row, r.error) for r in records] == [(1, None), (2, "NUL byte in column 'Email'")]


def check_formulas(columns: list[str] | None, records: list[Record]) -> None:
    assert [f["FirstName"] for f in _ok(records)] == ["=cmd|' /C calc'!A0", "+SUM(1;2)", "@import"]


def check_odd_emails(columns: list[str] | None, records: list[Record]) -> None:
    # The reader hands emails over untouched; normalising and rejecting is the mapper's job (tested below).
    assert [f["Email"] for f in _ok(records)] == [
        "Ünïcödé@exämple.com", " spaced@example.com ", "UPPER@EXAMPLE.COM", "trailing.dot@example.com.",
        "jo hn@example.com", "Ann@Exämple.com", "\u00a0\tnbsp@example.com\u00a0", "a@xn--abc.com", "",
        "two@@example.com"]


def check_formula_rejects(columns: list[str] | None, records: list[Record]) -> None:
    assert [(r.row, r.fields["Email"], r.fields["FirstName"]) for r in records if r.error is None] == [
        (1, '=HYPERLINK("http://evil.example/","click")', "Ann"), (2, "+1@example.com", "-2+3"),
        (3, "@SUM(A1:A9)", "Cy"), (4, "d@example.com", "=cmd|' /C calc'!A0" + "x" * 40)]


def check_tsv_gz(columns: list[str] | None, records: list[Record]) -> None:
    assert columns == ["CustomerId", "Email", "FirstName"]  # .tsv.gz: gunzipped, and tab-separated by name
    assert _ok(records) == [{"CustomerId": "c1", "Email": "a@example.com", "FirstName": "Ann, Marie"},
                            {"CustomerId": "c2", "Email": "b@example.com", "FirstName": "Bob"}]


def check_txt_gz(columns: list[str] | None, records: list[Record]) -> None:
    assert columns == ["CustomerId", "Email", "FirstName"]  # .txt.gz: gunzipped, comma-separated
    assert [(r.row, r.fields["FirstName"]) for r in records if r.error is None] == [(1, "Ann"), (2, "Bob\tB")]


def check_jsonl_bad_values(columns: list[str] | None, records: list[Record]) -> None:
    assert [(r.row, r.error) for r in records] == [
        (1, None),
        (2, "value of 'Email' holds a NUL or an unpaired surrogate escape"),
        (3, "value of 'FirstName' holds a NUL or an unpaired surrogate escape"),
        (4, "invalid UTF-8"),
        (6, None),  # line 5 is blank: skipped but counted
    ]
    assert [r.fields for r in records if r.error is not None] == [{}, {}, {}]


def check_utf16_unpaired_surrogate(columns: list[str] | None, records: list[Record]) -> None:
    # UTF-16 errors are not bytes >= 0x80, so 'surrogateescape' raised UnicodeDecodeError here: the row is rejected.
    assert [(r.row, r.error) for r in records] == [(1, None), (2, "invalid UTF-16 in column 'FirstName'"), (3, None)]
    assert records[2].fields == {"CustomerId": "c3", "Email": "c@example.com", "FirstName": "Cy"}


def check_utf16_odd_length(columns: list[str] | None, records: list[Record]) -> None:
    # A UTF-16 file cut after an odd number of bytes (an interrupted upload): the last row is rejected.
    assert [(r.row, r.error) for r in records] == [(1, None), (2, "invalid UTF-16 in column 'FirstName'")]


PARTITIONS = {"cdm_partition_rows/Seg/Seg_1.csv", "cdm_partition_rows/Seg/Seg_2.csv",
              "cdm_bad_encoding/Seg/Seg_1.csv"}


def check_cdm_partition_rows(columns: list[str] | None, records: list[Record]) -> None:
    assert columns == ["CustomerId", "Email", "FirstName"]
    one, two = "cdm_partition_rows/Seg/Seg_1.csv", "cdm_partition_rows/Seg/Seg_2.csv"
    assert [(r.source, r.row, r.error) for r in records] == [
        (one, 1, None), (one, 2, "row has 2 values, model.json lists 3"),
        (one, 3, "invalid UTF-8 in column 'FirstName'"), (two, 1, None)]
    assert records[3].fields == {"CustomerId": "c4", "Email": "d@example.com", "FirstName": 'Di, "D"'}


def check_two_plain_rows(columns: list[str] | None, records: list[Record]) -> None:
    assert columns == ["CustomerId", "Email", "FirstName"]
    assert [(r.row, r.fields["Email"]) for r in records if r.error is None][:2] == [
        (1, "a@example.com"), (2, "b@example.com")]


def check_mixed_endings(columns: list[str] | None, records: list[Record]) -> None:
    assert [(r.row, r.fields["CustomerId"]) for r in records] == [(1, "c1"), (2, "c2"), (3, "c3")]


def check_quoted_newlines(columns: list[str] | None, records: list[Record]) -> None:
    assert [(r.row, r.fields["FirstName"]) for r in records] == [(1, "Ann\nMarie"), (2, 'Bob, "the builder"')]


def check_count_mismatch(columns: list[str] | None, records: list[Record]) -> None:
    assert [(r.row, r.error) for r in records] == [
        (1, None), (2, "row has 2 values, header has 3"), (3, "row has 5 values, header has 3"), (4, None)]
    assert records[1].fields == {} and records[2].fields == {}


def check_malformed_quote(columns: list[str] | None, records: list[Record]) -> None:
    assert records[0].row == 1 and records[0].error is not None and "malformed quoting" in records[0].error
    assert (records[1].row, records[1].error, records[1].fields["FirstName"]) == (2, None, "Bob")


def check_jsonl_not_objects(columns: list[str] | None, records: list[Record]) -> None:
    assert columns is None
    errors = [(r.row, r.error) for r in records]
    assert errors[0] == (1, None) and errors[4] == (5, None)
    assert "not a JSON object" in (errors[1][1] or "") and "not a JSON object" in (errors[2][1] or "")
    assert "not valid JSON" in (errors[3][1] or "")


ROW_LEVEL: dict[str, Callable[[list[str] | None, list[Record]], None]] = {
    "header_only.csv": check_header_only,
    "missing_email_column.csv": check_missing_email,
    "invalid_utf8.csv": check_invalid_utf8,
    "utf16_bom.csv": check_utf16,
    "nul_bytes.csv": check_nul,
    "formula_values.csv": check_formulas,
    "odd_emails.csv": check_odd_emails,
    "crlf.csv": check_two_plain_rows,
    "bom.csv": check_two_plain_rows,
    "mixed_line_endings.csv": check_mixed_endings,
    "quoted_newlines.csv": check_quoted_newlines,
    "row_count_mismatch.csv": check_count_mismatch,
    "malformed_quote.csv": check_malformed_quote,
    "jsonl_not_objects.jsonl": check_jsonl_not_objects,
    "utf16le_no_bom.csv": check_utf16,
    "utf16be_bom.csv": check_utf16,
    "utf16_unpaired_surrogate.csv": check_utf16_unpaired_surrogate,
    "utf16_odd_length.csv": check_utf16_odd_length,
    "formula_rejects.csv": check_formula_rejects,
    "tab_separated.tsv.gz": check_tsv_gz,
    "segment.txt.gz": check_txt_gz,
    "jsonl_bad_values.jsonl": check_jsonl_bad_values,
    "cdm_partition_rows/model.json": check_cdm_partition_rows,
}


@pytest.mark.parametrize("name", sorted(ROW_LEVEL))
def test_file_is_read_with_row_level_outcomes(name: str) -> None:
    columns, records = read_all(BAD, name)
    ROW_LEVEL[name](columns, records)


def test_every_committed_bad_input_is_covered() -> None:
    committed = {str(p.relative_to(BAD)) for p in BAD.rglob("*") if p.is_file()}
    assert committed == set(FILE_ERRORS) | set(ROW_LEVEL) | PARTITIONS  # partitions: read via their model.json
    assert not set(FILE_ERRORS) & set(ROW_LEVEL)
    assert len(committed) >= 25


@pytest.mark.parametrize("encoding", ["base64", "rot13", "zlib", "hex", "idna", "punycode", "no-such-codec"])
def test_an_encoding_that_cannot_read_text_is_a_configuration_error(encoding: str) -> None:
    # These passed codecs.lookup() and then crashed the read with LookupError/UnicodeError.
    with pytest.raises(ConfigurationError) as caught:
        ReaderOptions(encoding=encoding)
    assert caught.value.field == "file_format.encoding" and repr(encoding) in str(caught.value)


@pytest.mark.parametrize("encoding", ["cp1252", "latin-1", "utf-16", "utf-8-sig", "UTF8"])
def test_real_text_encodings_are_accepted(encoding: str) -> None:
    assert ReaderOptions(encoding=encoding).encoding == encoding


# -- through the mapper: what the product does with the rows --------------------------------------------

DESTINATION = Destination.model_validate({
    "name": "bad-inputs", "list_id": "5b0c3a1e-8d7f-4c2a-9e61-3f2d7a9b0c11", "api_key_secret": "k",
    "segments": ["x/"], "field_mapping": {"email": "Email", "first_name": "FirstName"}})


def dry_run(name: str) -> ExportResult:
    return export_segment(DESTINATION, LocalDirSource(BAD), name, None, run_id="run-bad",
                          options=ExportOptions(dry_run=True, preview_limit=100))


def sent(result: ExportResult) -> list[dict[str, Any]]:
    return [json.loads(body) for body in result.preview]


def test_missing_email_column_refuses_the_file_before_any_row() -> None:
    with pytest.raises(SegmentFileError) as caught:
        dry_run("missing_email_column.csv")
    assert caught.value.source == "missing_email_column.csv"
    assert "mapped column(s) Email not in the file" in caught.value.reason
    assert "CustomerId, FirstName" in caught.value.reason  # what the file has, to fix the mapping


def test_a_first_row_with_none_of_the_mapped_columns_is_not_quoted(tmp_path: Path) -> None:
    # The header row is missing and the first profile's email is malformed (no '@' to give it away).
    (tmp_path / "no_header.csv").write_text("octavia.wrenfeather.canary-mail.example,Octavia\nb@x.example,B\n")
    with pytest.raises(SegmentFileError) as caught:
        export_segment(DESTINATION, LocalDirSource(tmp_path), "no_header.csv", None, run_id="run-bad",
                       options=ExportOptions(dry_run=True))
    assert "mapped column(s) Email, FirstName not in the file" in caught.value.reason
    assert "is the header row missing?" in caught.value.reason
    assert "Octavia" not in str(caught.value) and "wrenfeather" not in str(caught.value)


def test_header_only_file_is_an_export_of_no_profiles() -> None:
    report = dry_run("header_only.csv").report
    assert (report.rows_read, report.contacts_valid, report.rejected) == (0, 0, [])


def test_odd_emails_are_trimmed_lower_cased_or_rejected_with_a_reason() -> None:
    result = dry_run("odd_emails.csv")
    assert [c["email"] for c in sent(result)] == [
        "spaced@example.com", "upper@example.com", "ann@xn--exmple-cua.com", "nbsp@example.com"]
    reasons = {r.row: r.reason for r in result.report.rejected}
    assert {r.field for r in result.report.rejected} == {"email"}
    assert sorted(reasons) == [1, 4, 5, 8, 9, 10]
    assert "Internationalized characters before the @-sign" in reasons[1]  # SendGrid takes ASCII local parts
    assert "cannot end with a period" in reasons[4]
    assert "invalid characters before the @-sign: SPACE" in reasons[5]
    assert "not valid IDNA" in reasons[8]  # an 'xn--' label that is not Punycode: not waved through
    assert reasons[9] == "email is empty"
    assert "invalid characters: '@'" in reasons[10]
    values = {int(row): value for _, row, _, _, value in result.rejects.rows()}
    for row, reason in reasons.items():  # the report never carries the address; the rejects file does
        assert not values[row] or values[row].strip().lower() not in reason.lower()


def test_formula_looking_values_go_to_sendgrid_as_plain_text() -> None:
    assert [c["first_name"] for c in sent(dry_run("formula_values.csv"))] == [
        "=cmd|' /C calc'!A0", "+SUM(1;2)", "@import"]
    result = dry_run("formula_rejects.csv")
    assert sent(result) == [{"email": "+1@example.com", "first_name": "-2+3"}]  # a valid address, kept as is
    assert [(r.row, r.field) for r in result.report.rejected] == [(1, "email"), (3, "email"), (4, "first_name")]


class _MemoryContainer:
    """Just enough of a ContainerClient for RunStore.save_rejects and upload_rejects (small files)."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def create_container(self) -> None:
        pass

    def upload_blob(self, name: str, data: bytes, **_: object) -> None:
        self.blobs[name] = data


def test_rejects_file_neutralises_formula_injection_for_spreadsheets() -> None:
    result = dry_run("formula_rejects.csv")
    with (BAD / "formula_rejects.csv").open(newline="", encoding="utf-8") as handle:  # the values as in the file
        raw = {row: dict(zip(("CustomerId", "Email", "FirstName"), cells, strict=True))
               for row, cells in enumerate(list(csv.reader(handle))[1:], start=1)}
    values = {("formula_rejects.csv", r.row): raw[r.row][r.column or ""] for r in result.report.rejected}
    container = _MemoryContainer()
    path = RunStore(container).upload_rejects("run-bad", result.rejects)  # type: ignore[arg-type]
    result.close()
    assert path == "rejects/run-bad.csv"
    rows = list(csv.reader(io.StringIO(container.blobs[path].decode())))
    assert rows[0] == ["source", "row", "field", "reason", "value"]
    assert [row[4] for row in rows[1:]] == [
        "'=HYPERLINK(\"http://evil.example/\",\"click\")", "'@SUM(A1:A9)", "'=cmd|' /C calc'!A0" + "x" * 40]
    for row in rows:  # no cell a spreadsheet would evaluate
        assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in row), row
    # The quote is the only change: an operator still sees the exact value that was rejected.
    assert [row[4][1:] for row in rows[1:]] == [values[(r.source, r.row)] for r in result.report.rejected]


def test_rejects_file_leaves_ordinary_values_alone() -> None:
    container = _MemoryContainer()
    RunStore(container).save_rejects(  # type: ignore[arg-type]
        "run-plain", [("s.csv", 7, "email", "email is empty", ""), ("s.csv", 8, "first_name", "too long", "Ann-Marie")])
    rows = list(csv.reader(io.StringIO(container.blobs["rejects/run-plain.csv"].decode())))
    assert rows[1:] == [["s.csv", "7", "email", "email is empty", ""], ["s.csv", "8", "first_name", "too long",
                                                                        "Ann-Marie"]]


# -- file names: the blob trigger starts an export for exactly the files the readers accept ---------------

def _accepted_suffixes() -> list[str]:
    plain = [*CSV_SUFFIXES, *JSONL_SUFFIXES]
    return [*plain, *(f"{suffix}.gz" for suffix in plain), ".json.gz", ".gz", ".3fb1e0d1.gz"]


@pytest.mark.parametrize("suffix", _accepted_suffixes())
def test_every_suffix_the_readers_accept_starts_an_export(suffix: str) -> None:
    assert suffix.lower().endswith(DATA_SUFFIXES)
    for name in (f"vip/segment{suffix}", f"vip/SEGMENT{suffix.upper()}"):
        kind_of(name)  # the readers accept it...
        assert is_segment_entry(name)  # ...so the blob trigger and the timer pick it up


@pytest.mark.parametrize("name", [
    "vip/model.json", "vip/Model.json", "vip/manifest-2026.json", "vip/manifest-2026.csv", "vip/_SUCCESS",
    "vip/.hidden.csv", "vip/part-0000.csv.crc", "vip/x.manifest.cdm.json", "vip/x.csv.gpg", "vip/x.json",
    "vip/x.gz", "vip/x.parquet", "vip/x.xlsx", "vip/x.json.gz", "vip/x.TSV.GZ", "vip/x.txt.gz",
])
def test_trigger_and_readers_agree_on_what_is_a_segment_file(name: str) -> None:
    try:
        kind_of(name)
        readable = True
    except SegmentFileError:
        readable = False
    assert is_segment_entry(name) == readable


@pytest.mark.parametrize(("content", "kind"), [
    (b'{"userId": "u1", "traits": {"email": "A@Example.com", "first_name": "Ann"}}\n', "jsonl"),
    (b"\xef\xbb\xbfEmail,FirstName\nA@Example.com,Ann\n", "csv"),
])
def test_a_gz_named_after_no_format_is_read_by_its_content(tmp_path: Path, content: bytes, kind: str) -> None:
    # Segment names its gzipped JSON Lines `<received-at>.<id>.gz`; SFTP drops compress without renaming.
    name = "1700000123456.3fb1e0d1.gz"
    (tmp_path / name).write_bytes(gzip.compress(content))
    email = "traits.email" if kind == "jsonl" else "Email"
    first = "traits.first_name" if kind == "jsonl" else "FirstName"
    destination = DESTINATION.model_copy(update={"field_mapping": DESTINATION.field_mapping.model_copy(
        update={"email": email, "first_name": first})})
    result = export_segment(destination, LocalDirSource(tmp_path), name, None, run_id="run-gz",
                            options=ExportOptions(dry_run=True))
    assert [json.loads(body) for body in result.preview] == [{"email": "a@example.com", "first_name": "Ann"}]


# -- generated big and hostile files ------------------------------------------------------------------


def peak_bytes(action: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        with contextlib.suppress(SegmentFileError):
            action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_ten_thousand_column_row_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "wide.csv").write_text("Email,Name\n" + ",".join(["x"] * 10_000) + "\na@example.com,Ann\n")
    _, records = read_all(tmp_path, "wide.csv")
    assert [(r.row, r.error) for r in records] == [(1, "row has 10000 values, header has 2"), (2, None)]


def test_ten_thousand_column_header_refuses_the_file(tmp_path: Path) -> None:
    (tmp_path / "wide.csv").write_text(",".join(f"c{i}" for i in range(10_000)) + "\n")
    with pytest.raises(SegmentFileError, match="more than max_columns 2000"):
        read_all(tmp_path, "wide.csv")


@pytest.mark.parametrize("quoted", [False, True])
def test_ten_megabyte_field_rejects_only_its_row(tmp_path: Path, quoted: bool) -> None:
    big = "y" * (10 << 20)
    value = f'"{big}"' if quoted else big
    (tmp_path / "big.csv").write_text(f"Email,Name\na@example.com,{value}\nb@example.com,Bob\n")
    peak = peak_bytes(lambda: read_all(tmp_path, "big.csv"))
    _, records = read_all(tmp_path, "big.csv")
    assert [(r.row, r.error) for r in records] == [
        (1, "a value is longer than 131072 characters (max_field_chars)"), (2, None)]
    assert records[1].fields == {"Email": "b@example.com", "Name": "Bob"}
    assert peak < 64 << 20  # the line is held once (bounded by max_line_bytes), never the file


def _bomb(path: Path, header: bytes, line: bytes, members: int = 256) -> None:
    """~1 GiB of `line` repeated, in ~4 MB: one 4 MiB gzip member, concatenated (gzip allows many members)."""
    member = gzip.compress(line * ((4 << 20) // len(line)), compresslevel=9, mtime=0)
    with path.open("wb") as fh:
        fh.write(gzip.compress(header, mtime=0))
        for _ in range(members):
            fh.write(member)


def drain(root: Path, name: str, options: ReaderOptions | None = None) -> int:
    """Read every record without keeping any (as the engine does); the number read."""
    count = 0
    with open_segment(LocalDirSource(root), name, options) as reader:
        for _ in reader:
            count += 1
    return count


@pytest.mark.parametrize(("name", "header", "line"), [
    ("bomb.csv.gz", b"CustomerId,Email,FirstName\n", b"c1,someone@example.com,Ann " + b"x" * 150 + b"\n"),
    ("bomb.jsonl.gz", b"", b'{"Email": "someone@example.com", "FirstName": "Ann ' + b"x" * 150 + b'"}\n'),
], ids=["csv", "jsonl"])
def test_gzip_bomb_of_valid_rows_stops_at_the_limit_in_bounded_memory(tmp_path: Path, name: str, header: bytes,
                                                                      line: bytes) -> None:
    _bomb(tmp_path / name, header, line)
    assert (tmp_path / name).stat().st_size < 8 << 20  # compressed ~4 MB; decompressed ~1 GiB
    limit = 16 << 20
    options = ReaderOptions(max_decompressed_bytes=limit)
    with pytest.raises(SegmentFileError) as caught:
        drain(tmp_path, name, options)
    assert caught.value.source == name
    assert f"decompresses to more than {limit} bytes (max_decompressed_bytes)" in caught.value.reason
    rows_within_limit = (limit - len(header)) // len(line)
    assert caught.value.row is not None and abs(caught.value.row - rows_within_limit) < 1000  # stopped there
    peak = peak_bytes(lambda: drain(tmp_path, name, options))
    assert peak < 4 << 20  # streamed: a few read buffers, never the 16 MiB it decompressed


def test_gzip_bomb_without_line_breaks_is_bounded(tmp_path: Path) -> None:
    _bomb(tmp_path / "zeros.csv.gz", b"Email\n", b"0" * (1 << 20))
    # With the line limit out of the way, the decompression limit stops it...
    options = ReaderOptions(max_decompressed_bytes=64 << 20, max_line_bytes=1 << 30)
    with pytest.raises(SegmentFileError, match="decompresses to more than 67108864 bytes"):
        read_all(tmp_path, "zeros.csv.gz", options)
    # ...and with the defaults the line limit does, long before 2 GiB; neither holds the data.
    with pytest.raises(SegmentFileError, match="longer than 16777216 bytes without a line break") as caught:
        read_all(tmp_path, "zeros.csv.gz")
    assert caught.value.row == 1
    assert peak_bytes(lambda: read_all(tmp_path, "zeros.csv.gz", ReaderOptions(max_decompressed_bytes=8 << 20))) \
        < 32 << 20


def test_ten_megabyte_json_value_rejects_only_its_line(tmp_path: Path) -> None:
    big = "y" * (10 << 20)
    (tmp_path / "big.jsonl").write_text(f'{{"Email": "a@example.com", "Name": "{big}"}}\n'
                                        '{"Email": "b@example.com", "Name": "Bob"}\n')
    peak = peak_bytes(lambda: drain(tmp_path, "big.jsonl"))
    _, records = read_all(tmp_path, "big.jsonl")
    assert [(r.row, r.error) for r in records] == [
        (1, "value of 'Name' is longer than 131072 characters (max_field_chars)"), (2, None)]
    assert peak < 48 << 20  # the one line (bounded by max_line_bytes) and its parse, never the file


def test_ten_thousand_key_json_object_rejects_only_its_line(tmp_path: Path) -> None:
    wide = json.dumps({f"k{i}": "x" for i in range(10_000)})
    (tmp_path / "wide.jsonl").write_text(wide + '\n{"Email": "a@example.com"}\n')
    _, records = read_all(tmp_path, "wide.jsonl")
    assert [(r.row, r.error) for r in records] == [
        (1, "object has 10000 fields, more than max_columns 2000"), (2, None)]


def test_very_long_line_without_newline_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "oneline.csv"
    with path.open("wb") as fh:
        fh.write(b"Email,Name\n")
        for _ in range(40):
            fh.write(b"z" * (1 << 20))
    peak = peak_bytes(lambda: read_all(tmp_path, "oneline.csv"))
    with pytest.raises(SegmentFileError) as caught:
        read_all(tmp_path, "oneline.csv")
    assert "longer than 16777216 bytes without a line break" in caught.value.reason
    assert caught.value.row == 1
    assert peak < 48 << 20


def test_random_binary_garbage_never_raises_another_exception(tmp_path: Path) -> None:
    for seed in range(30):
        data = os.urandom(4096 + seed)
        (tmp_path / "garbage.csv").write_bytes(data)
        try:
            _, records = read_all(tmp_path, "garbage.csv")
        except SegmentFileError:
            continue
        assert all(isinstance(r, Record) for r in records)


def test_unterminated_quote_in_a_big_file_is_not_swallowed_silently(tmp_path: Path) -> None:
    rows = "".join(f"c{i},u{i}@example.com,N\n" for i in range(50_000))
    (tmp_path / "stray.csv").write_text('CustomerId,Email,FirstName\nc0,"u@example.com,N\n' + rows)
    with pytest.raises(SegmentFileError) as caught:
        read_all(tmp_path, "stray.csv")
    assert caught.value.row == 1
    assert "unterminated quote" in caught.value.reason


def test_a_gz_whose_first_member_is_empty_is_still_told_apart(tmp_path: Path) -> None:
    # A writer that creates the file, then appends: gzip.open(p, "wb").close(); gzip.open(p, "ab").write(...)
    name = "1700000123456.appended.gz"
    body = b'{"traits": {"email": "a@example.com", "first_name": "Ann"}}\n'
    (tmp_path / name).write_bytes(gzip.compress(b"") + gzip.compress(body))
    destination = DESTINATION.model_copy(update={"field_mapping": DESTINATION.field_mapping.model_copy(
        update={"email": "traits.email", "first_name": "traits.first_name"})})
    result = export_segment(destination, LocalDirSource(tmp_path), name, None, run_id="run-gz",
                            options=ExportOptions(dry_run=True))
    assert [json.loads(b) for b in result.preview] == [{"email": "a@example.com", "first_name": "Ann"}]


def test_a_corrupt_gz_named_after_no_format_gets_the_reader_s_own_error(tmp_path: Path) -> None:
    (tmp_path / "x.gz").write_bytes(b"\x1f\x8b\x09" + b"\x00" * 40)  # compression method 9 does not exist
    with pytest.raises(SegmentFileError, match=r"corrupt gzip data \(Unknown compression method\)"):
        export_segment(DESTINATION, LocalDirSource(tmp_path), "x.gz", None, run_id="run-gz",
                       options=ExportOptions(dry_run=True))
