"""JSON Lines: flattening, row rejections, gzip, dispatch by name."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from shared.errors import SegmentFileError
from shared.source.readers import open_segment
from shared.source.records import Record
from shared.source.sources import LocalDirSource


def read(tmp_path: Path, name: str, data: bytes | str) -> list[Record]:
    (tmp_path / name).write_bytes(data.encode() if isinstance(data, str) else data)
    with open_segment(LocalDirSource(tmp_path), name) as reader:
        assert reader.columns is None
        return list(reader)


def test_objects_are_flattened_one_level_to_strings(tmp_path: Path) -> None:
    line = ('{"email": "a@example.com", "score": 1.50, "big": 100000000000000000000, "vip": true, "gone": null, '
            '"address": {"city": "Berlin", "geo": {"lat": 52.5}}, "tags": ["x", "y"], "items": [{"n": 1}]}\n')
    [record] = read(tmp_path, "s.jsonl", line)
    assert record == Record("s.jsonl", 1, {
        "email": "a@example.com", "score": "1.50", "big": "100000000000000000000", "vip": "true", "gone": "",
        "address.city": "Berlin", "address.geo": '{"lat":52.5}', "tags": "x, y", "items": '[{"n":1}]'})
    assert all(type(v) is str for v in record.fields.values())


def test_bad_lines_are_rejected_rows_and_blank_lines_are_counted(tmp_path: Path) -> None:
    records = read(tmp_path, "s.ndjson", '{"a": "1"}\n\n[1, 2]\n{"a": \nnull\n{"a": "\\u0000"}\n{"a": "2"}\n')
    assert [(r.row, r.error is None) for r in records] == [
        (1, True), (3, False), (4, False), (5, False), (6, False), (7, True)]
    assert records[1].error == "line is a JSON list, not a JSON object"
    assert (records[2].error or "").startswith("not valid JSON")
    assert records[3].error == "line is a JSON null, not a JSON object"
    assert "NUL" in (records[4].error or "")


def test_invalid_utf8_rejects_the_line(tmp_path: Path) -> None:
    records = read(tmp_path, "s.jsonl", b'{"a": "\xff"}\n{"a": "ok"}\n')
    assert [(r.row, r.error) for r in records] == [(1, "invalid UTF-8"), (2, None)]


@pytest.mark.parametrize("name", ["s.jsonl.gz", "s.json.gz", "s.ndjson.gz"])
def test_gzipped_json_lines(tmp_path: Path, name: str) -> None:
    records = read(tmp_path, name, gzip.compress(b'{"email": "a@example.com"}\n'))
    assert records[0].fields == {"email": "a@example.com"}


def test_a_json_array_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SegmentFileError, match="JSON array"):
        read(tmp_path, "s.jsonl", '[{"a": 1},\n{"a": 2}]\n')


def test_plain_json_is_not_a_segment_file(tmp_path: Path) -> None:
    with pytest.raises(SegmentFileError, match="not a segment file"):
        read(tmp_path, "s.json", '{"a": 1}\n')
