"""Malformed and hostile segment files: each gives a specific SegmentFileError or per-row rejections.

Small files live in tests/bad_inputs/; big ones (bombs, huge rows) are generated here. Nothing may raise any
other exception type, and the big ones must not need memory in proportion to their size.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.errors import SegmentFileError
from shared.readers import ReaderOptions, open_segment
from shared.records import Record
from shared.sources import LocalDirSource

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
    "duplicate_header.csv": ("duplicate column name 'Email'", None),
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
}


@pytest.mark.parametrize("name", sorted(FILE_ERRORS))
def test_file_is_refused_with_a_specific_reason(name: str) -> None:
    fragment, row = FILE_ERRORS[name]
    with pytest.raises(SegmentFileError) as caught:
        read_all(BAD, name)
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
    assert [f["Email"] for f in _ok(records)] == [
        "Ünïcödé@exämple.com", " spaced@example.com ", "UPPER@EXAMPLE.COM", "trailing.dot@example.com."]


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
}


@pytest.mark.parametrize("name", sorted(ROW_LEVEL))
def test_file_is_read_with_row_level_outcomes(name: str) -> None:
    columns, records = read_all(BAD, name)
    ROW_LEVEL[name](columns, records)


def test_every_committed_bad_input_is_covered() -> None:
    committed = {str(p.relative_to(BAD)) for p in BAD.rglob("*") if p.is_file()}
    assert committed == set(FILE_ERRORS) | set(ROW_LEVEL)
    assert len(committed) >= 25


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


def test_gzip_bomb_is_bounded(tmp_path: Path) -> None:
    # ~1 GiB of zeros compresses to ~1 MB; the reader must stop at its limit without holding the data.
    path = tmp_path / "bomb.csv.gz"
    chunk = b"0" * (1 << 20)
    with gzip.open(path, "wb", compresslevel=9) as fh:
        fh.write(b"Email\n")
        for _ in range(1024):
            fh.write(chunk)
    options = ReaderOptions(max_decompressed_bytes=64 << 20, max_line_bytes=1 << 30)
    with pytest.raises(SegmentFileError, match="decompresses to more than 67108864 bytes"):
        read_all(tmp_path, "bomb.csv.gz", options)
    assert peak_bytes(lambda: read_all(tmp_path, "bomb.csv.gz", ReaderOptions(max_decompressed_bytes=8 << 20))) \
        < 32 << 20


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
