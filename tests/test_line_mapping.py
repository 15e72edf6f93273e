"""Plain lines mapped a chunk at a time (shared.mapping.line_mapping) against ContactMapper row by row.

Whenever the shortcut maps a chunk, every one of its rows must be what the row-by-row path makes of it: the
same contact bytes, key, source fingerprint and line hash; a chunk holding any row that path would reject,
trim past the shortcut's reach, or send through email-validator is declined whole (and then goes row by row).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy
import pytest

from shared.config.destinations import Destination
from shared.mapping.contact_mapping import ContactMapper, MappedContact
from shared.mapping.line_mapping import LineMapper
from shared.source.readers import ReaderOptions, open_segment, raw_lines
from shared.source.readers.raw_lines import RawChunk
from shared.source.sources import LocalDirSource
from shared.state.keys import SIGNED, email_key, line_seed, source_fingerprint, xxh3
from tests.test_sync import destination

SEED = 0x5EED
MAPPING = {"email": "Email", "first_name": "First", "last_name": "Last", "city": "City", "external_id": "Id"}
HEADER = ["Id", "Email", "First", "Tier", "Last", "City"]  # Tier is not mapped; the mapping's order is not the file's


def _destination(**overrides: Any) -> Destination:
    return destination(field_mapping=MAPPING, **overrides)


def _compare(tmp_path: Path, data: bytes, dest: Destination, options: ReaderOptions | None = None,
             seed: int | None = SEED) -> tuple[int, int]:
    """(rows mapped by the shortcut, chunks it declined), asserting each mapped chunk equals the row path."""
    (tmp_path / "s.csv").write_bytes(data)
    mapper = ContactMapper(dest, {})
    mapped_rows = declined = 0
    with open_segment(LocalDirSource(str(tmp_path)), "s.csv", options or ReaderOptions(), raw_lines=True) as reader:
        lines = LineMapper.for_reader(mapper, reader, seed)
        assert lines is not None
        header = reader.columns or []
        for item in reader.project_lines(mapper.columns):
            if not isinstance(item, RawChunk):
                continue
            block = lines.map(item)
            if block is None:
                declined += 1
                continue
            rows = list(reader.parse_lines(item, range(len(item.lines))))
            contacts = [mapper.map_values(row[2]) if row is not None and row[3] is None else None for row in rows]
            assert all(type(c) is MappedContact for c in contacts), "a chunk with a row the mapper would not send"
            bodies = [c.body for c in contacts if isinstance(c, MappedContact)]
            assert block.bodies == b"\n".join(bodies)
            assert numpy.frombuffer(block.keys, dtype=numpy.int64).tolist() == [
                email_key(c.email) for c in contacts if isinstance(c, MappedContact)]
            assert block.starts.tolist() == numpy.cumsum([0] + [len(b) + 1 for b in bodies[:-1]]).tolist()
            pairs = numpy.frombuffer(block.pairs, dtype=numpy.int64).reshape(-1, 2).tolist()
            if seed is None:
                assert pairs == [[0, 0]] * len(bodies)
            else:
                hashed = line_seed(seed, header, reader.line_delimiter)
                assert pairs == [[source_fingerprint(row[2], seed), xxh3(line.removesuffix(b"\r"), hashed) - SIGNED]
                                 for row, line in zip(rows, item.lines, strict=True) if row is not None]
            mapped_rows += len(bodies)
    return mapped_rows, declined


def _pieces(tmp_path: Path, data: bytes, dest: Destination, options: ReaderOptions | None = None) -> tuple[
        int, list[int]]:
    """(rows mapped, rows of the declined pieces) over `LineMapper.pieces`, asserting the pieces are the
    chunk's non-blank lines in order, each mapped one as the row path maps it."""
    (tmp_path / "s.csv").write_bytes(data)
    mapper = ContactMapper(dest, {})
    mapped, declined = 0, []
    with open_segment(LocalDirSource(str(tmp_path)), "s.csv", options or ReaderOptions(), raw_lines=True) as reader:
        lines = LineMapper.for_reader(mapper, reader, SEED)
        assert lines is not None
        for item in reader.project_lines(mapper.columns):
            if not isinstance(item, RawChunk):
                continue
            covered = []
            for piece, block in lines.pieces(item):
                covered += [(piece.first_row + i, line) for i, line in enumerate(piece.lines)]
                rows = [row for row in reader.parse_lines(piece, range(len(piece.lines))) if row is not None]
                if block is None:
                    declined += [row[1] for row in rows]
                    continue
                bodies = [mapper.map_values(row[2]) for row in rows]
                assert block.bodies == b"\n".join(c.body for c in bodies if isinstance(c, MappedContact))
                mapped += len(rows)
            assert covered == [(item.first_row + i, line) for i, line in enumerate(item.lines)
                               if line.removesuffix(b"\r")]
    return mapped, declined


def _line(values: list[str], delimiter: str = ",") -> str:
    return delimiter.join(values)


def _clean(i: int) -> list[str]:
    return [f"C{i:06d}", f"person.{i}@example{i % 7}.com", f"First{i}", "gold", f"Last{i}", "Seattle"]


def test_a_clean_file_is_mapped_whole_and_as_the_row_path_maps_it(tmp_path: Path) -> None:
    rows = [_clean(i) for i in range(5000)]
    rows[10][1] = "Upper.Case@Example.COM"  # lower-cased, as normalise_email does
    rows[11][2] = "José"  # non-ASCII kept as UTF-8
    rows[12][5] = "  Spaced  "  # trimmed
    rows[13][2] = "\u00a0Nbsp\u00a0"  # trimmed as str.strip() does
    rows[14][4] = ""  # an empty value: the field left out (empty_values: skip)
    data = ("\n".join(_line(r) for r in [HEADER, *rows]) + "\n").encode()
    assert _compare(tmp_path, data, _destination()) == (5000, 0)
    assert _compare(tmp_path, data.replace(b"\n", b"\r\n"), _destination()) == (5000, 0)  # CRLF
    assert _compare(tmp_path, data, _destination(empty_values="clear")) == (5000, 0)  # '"last_name":""'
    assert _compare(tmp_path, data, _destination(), seed=None) == (5000, 0)  # a run without state: no pairs


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_other_delimiters(tmp_path: Path, delimiter: str) -> None:
    rows = [HEADER, *(_clean(i) for i in range(300))]
    data = ("\n".join(_line(r, delimiter) for r in rows) + "\n").encode()
    assert _compare(tmp_path, data, _destination(), ReaderOptions(delimiter=delimiter)) == (300, 0)


# Each line declines its chunk: the row path rejects, truncates or asks email-validator about it.
DECLINED = [
    ["C1", "no-at-sign", "A", "g", "B", "C"],
    ["C1", "a@localhost", "A", "g", "B", "C"],
    ["C1", "a@example.test", "A", "g", "B", "C"],  # a special-use TLD
    ["C1", "a@xn--bcher-kva.example", "A", "g", "B", "C"],  # IDNA: the library decides
    ["C1", "a@b--c.example", "A", "g", "B", "C"],
    ["C1", " a@example.com", "A", "g", "B", "C"],  # trimmed by the row path
    ["C1", "a" * 65 + "@example.com", "A", "g", "B", "C"],  # local part too long
    ["C1", "a@" + ".".join(["b" * 60] * 5) + ".com", "A", "g", "B", "C"],  # past 254 characters
    ["C1", "ann@example.com", "x" * 51, "g", "B", "C"],  # first_name past SendGrid's 50
    ["C1", "ann@example.com", "back\\slash", "g", "B", "C"],  # JSON escapes it
    ["C1", "ann@example.com", "A", "g", "B"],  # too few values
    ["C1", "ann@example.com", "A", "g", "B", "C", "extra"],  # too many
    ["C1", "", "A", "g", "B", "C"],  # no email
    [],  # a blank line
]


@pytest.mark.parametrize("bad", DECLINED, ids=range(len(DECLINED)))
def test_a_chunk_with_a_row_the_shortcut_cannot_vouch_for_is_declined(tmp_path: Path, bad: list[str]) -> None:
    rows = [HEADER, *(_clean(i) for i in range(50)), bad, *(_clean(i) for i in range(50, 100))]
    data = ("\n".join(_line(r) for r in rows) + "\n").encode()
    assert _compare(tmp_path, data, _destination()) == (0, 1)


def test_truncate_policy_and_a_tight_field_limit_still_decline(tmp_path: Path) -> None:
    rows = [HEADER, *(_clean(i) for i in range(20)), ["C1", "ann@example.com", "x" * 51, "g", "B", "C"]]
    data = ("\n".join(_line(r) for r in rows) + "\n").encode()
    assert _compare(tmp_path, data, _destination(length_policy="truncate")) == (0, 1)
    short = ReaderOptions(max_field_chars=20)  # a line this long may hold a value the reader rejects
    assert _compare(tmp_path, data, _destination(), short) == (0, 1)


ODD = ["Zoë", " lead", "trail ", "\u3000wide", "", "北京", "x" * 50, "x" * 51, "a\tb", "back\\", "\u00a0"]


@pytest.mark.parametrize("fuzz", range(6))
def test_random_files_map_as_the_row_path_does_in_small_chunks(tmp_path: Path, monkeypatch: Any, fuzz: int) -> None:
    monkeypatch.setattr(raw_lines, "READ_BYTES", 700)  # ~10 lines a chunk: some clean, some declined
    rng = random.Random(fuzz)
    rows: list[list[str]] = [HEADER]
    for i in range(1500):
        row = _clean(i)
        if rng.random() < 0.04:
            row[rng.choice([0, 2, 3, 4, 5])] = rng.choice(ODD)
        if rng.random() < 0.01:
            row = list(rng.choice(DECLINED))
        if row and rng.random() < 0.02:
            row[1] = row[1].upper()
        rows.append(row)
    data = ("\n".join(_line(r) for r in rows) + "\n").encode()
    dest = _destination(empty_values=rng.choice(["skip", "clear"]))
    mapped, declined = _compare(tmp_path, data, dest)
    assert mapped > 500 and declined > 10  # both paths taken
    in_pieces, row_by_row = _pieces(tmp_path, data, dest)
    assert in_pieces >= mapped and in_pieces + len(row_by_row) == sum(1 for row in rows[1:] if row)


def test_a_declined_chunk_is_mapped_in_pieces_around_its_odd_row_and_blank_lines_are_no_rows(tmp_path: Path) -> None:
    rows = [HEADER, *(_clean(i) for i in range(200)), [], ["C1", "no-at-sign", "A", "g", "B", "C"],
            *(_clean(i) for i in range(200, 400)), []]
    data = ("\n".join(_line(r) for r in rows) + "\n").encode()
    mapped, declined = _pieces(tmp_path, data, _destination())
    assert mapped + len(declined) == 401 and 203 in declined and len(declined) <= 400 // 16 + 1


def test_a_double_quote_in_a_file_quoted_otherwise_is_escaped_row_by_row(tmp_path: Path) -> None:
    # quotechar ' makes a line with " plain; JSON must escape it, so the shortcut leaves such a chunk alone
    data = b"Id;Email;First;Tier;Last;City\nC1;ann@example.com;x\",\"email\":\"eve@example.com;g;L;C\n"
    options = ReaderOptions(delimiter=";", quotechar="'")
    assert _compare(tmp_path, data, _destination(), options) == (0, 1)
    assert _pieces(tmp_path, data, _destination(), options) == (0, [1])


def test_a_field_limit_other_than_the_default_still_maps(tmp_path: Path) -> None:
    rows = [HEADER, *(_clean(i) for i in range(100))]
    data = ("\n".join(_line(r) for r in rows) + "\n").encode()
    assert _compare(tmp_path, data, _destination(), ReaderOptions(max_field_chars=300)) == (100, 0)
    assert _compare(tmp_path, data, _destination(), ReaderOptions(max_field_chars=1 << 20)) == (100, 0)
