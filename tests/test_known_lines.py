"""Plain CSV lines recognised from their bytes (shared.source.readers.raw_lines, shared.pipeline.known_lines).

The reader hands out lines that are whole records unparsed; every row must still come out exactly as the csv
parser gives it (numbers, values, reasons), whatever the chunks' edges. A refresh recognises the unchanged
lines without parsing them, sends only what changed, and is never fooled by a line that only looks the same.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from shared.mapping.contact_mapping import ContactMapper
from shared.source.readers import ReaderOptions, open_segment, raw_lines
from shared.source.readers.csv_reader import CsvSegmentReader
from shared.source.readers.raw_lines import RawChunk
from shared.source.sources import LocalDirSource
from tests.test_sync import NAME, PUT, Env, destination, env

__all__ = ["env"]

COLUMNS = ("Email", "First", "Tier")
MIXED = (
    b'\xef\xbb\xbf"Email","First","Tier"\r\n'  # a BOM and a quoted header
    b"a@example.com,Ann,gold\r\n"
    b'b@example.com,"Smith, Bob",silver\r\n'  # a quoted delimiter
    b"\r\n"  # a blank line: counted, not a row
    b'c@example.com,"two\r\nlines",bronze\n'  # a quoted value over two lines; its second looks plain
    b"d@example.com,Dee\n"  # too few values
    b"e@example.com,Eve,x\rf@example.com,Fay,y\n"  # a lone CR ends a row, as in the text stream
    b"g@example.com,Gus\x1fUnit,gold\n"  # the fingerprints' separator: parsed, not split
    b"H@Example.com , Hal,\n"
    b"i@example.com,Ida,gold"  # no newline at the end
)


def _rows(reader: Any, lines: bool) -> list[tuple[str, int, tuple[str | None, ...], str | None]]:
    out = []
    items = reader.project_lines(COLUMNS) if lines else reader.project(COLUMNS)
    for item in items:
        if isinstance(item, RawChunk):
            out += [row for row in reader.parse_lines(item, range(len(item.lines))) if row is not None]
        else:
            out.append(item)
    return [(source, row, tuple(values), error) for source, row, values, error in out]


@pytest.mark.parametrize("read_bytes", [5, 37, 1 << 18])
def test_lines_handed_out_raw_parse_to_the_rows_the_csv_parser_gives(tmp_path: Path, monkeypatch: Any,
                                                                     read_bytes: int) -> None:
    monkeypatch.setattr(raw_lines, "READ_BYTES", read_bytes)
    (tmp_path / "mixed.csv").write_bytes(MIXED)
    source = LocalDirSource(str(tmp_path))
    # an escape character the file never uses parses it the same, on the text stream alone (no raw lines)
    with open_segment(source, "mixed.csv", ReaderOptions(escapechar="\\")) as plain:
        assert not plain.raw_lines
        expected = _rows(plain, lines=False)
    with open_segment(source, "mixed.csv", raw_lines=True) as reader:
        assert reader.raw_lines and reader.columns == list(COLUMNS)
        chunks = [item for item in reader.project_lines(COLUMNS) if isinstance(item, RawChunk)]
    with open_segment(source, "mixed.csv", raw_lines=True) as reader:
        got = _rows(reader, lines=True)
    assert got == expected
    assert [(row, values[0]) for _, row, values, error in got if error is None] == [
        (1, "a@example.com"), (2, "b@example.com"), (4, "c@example.com"), (6, "e@example.com"),
        (7, "f@example.com"), (8, "g@example.com"), (9, "H@Example.com "), (10, "i@example.com")]
    assert [(row, error) for _, row, _, error in got if error] == [(5, "row has 2 values, header has 3")]
    assert dict((r[1], r[2]) for r in got)[4] == ("c@example.com", "two\r\nlines", "bronze")
    raw = {line for chunk in chunks for line in chunk.lines}
    # A CRLF line keeps its b"\r" where its chunk says so (crlf); a chunk of plain CRLF lines only loses them all
    assert {(b"a@example.com,Ann,gold\r", True), (b"a@example.com,Ann,gold", False)} & {
        (line, chunk.crlf) for chunk in chunks for line in chunk.lines}
    assert not any(b"\r" in line for chunk in chunks if not chunk.crlf for line in chunk.lines)
    assert b"i@example.com,Ida,gold" in raw
    assert not any(b'"' in line or b"\x1f" in line or b"lines" in line for line in raw)


@pytest.mark.parametrize("read_bytes", [9, 40, 1 << 18])
def test_crlf_lines_without_quotes_parse_as_the_text_stream_does_even_with_a_lone_cr(
        tmp_path: Path, monkeypatch: Any, read_bytes: int) -> None:
    """A chunk of plain CRLF lines loses its carriage returns at once; an LF line among them is a line as well,
    and a lone CR (a record's end to the csv parser) makes its chunk go line by line."""
    monkeypatch.setattr(raw_lines, "READ_BYTES", read_bytes)
    data = (b"Email,First,Tier\r\na@example.com,Ann,gold\r\nb@example.com,Bo,silver\n"
            b"c@example.com,Cy\rd@example.com,Di,gold\r\n\r\ne@example.com,Ed,bronze\r\nf@example.com,Fi,gold\r")
    (tmp_path / "crlf.csv").write_bytes(data)
    source = LocalDirSource(str(tmp_path))
    with open_segment(source, "crlf.csv", ReaderOptions(escapechar="\\")) as plain:
        expected = _rows(plain, lines=False)
    with open_segment(source, "crlf.csv", raw_lines=True) as reader:
        assert reader.raw_lines
        chunks = [item for item in reader.project_lines(COLUMNS) if isinstance(item, RawChunk)]
    with open_segment(source, "crlf.csv", raw_lines=True) as reader:
        assert _rows(reader, lines=True) == expected
    assert [values[0] for _, _, values, error in expected if error is None] == [
        "a@example.com", "b@example.com", "d@example.com", "e@example.com", "f@example.com"]
    assert not any(b"\r" in line for chunk in chunks if not chunk.crlf for line in chunk.lines)
    assert not any(b"\r" in line.removesuffix(b"\r") for chunk in chunks for line in chunk.lines)


def test_a_read_that_fails_after_plain_lines_names_the_row_it_stopped_at(tmp_path: Path) -> None:
    import gzip

    data = gzip.compress(b"Email,First,Tier\n" + b"".join(b"p%d@example.com,A,b\n" % i for i in range(5000)))
    (tmp_path / "cut.csv.gz").write_bytes(data[: len(data) // 2])
    with open_segment(LocalDirSource(str(tmp_path)), "cut.csv.gz", raw_lines=True) as reader:
        rows: list[Any] = []
        with pytest.raises(Exception, match="truncated gzip data") as caught:
            rows += _rows(reader, lines=True)
    assert getattr(caught.value, "row", None) is not None and caught.value.row > 100  # type: ignore[attr-defined]


# -- the refresh --------------------------------------------------------------------------------------------

def _upload(env: Env, lines: list[bytes], header: bytes = b"Email,First,Tier") -> str:
    env.uploads = getattr(env, "uploads", 0) + 1
    blob = f"{NAME}/{env.uploads:04d}-{uuid.uuid4().hex[:8]}.csv"
    env.segments.upload_blob(blob, b"\n".join([header, *lines]) + b"\n", overwrite=True)
    return blob


def _counting(monkeypatch: Any) -> dict[str, int]:
    counts = {"parsed": 0, "mapped": 0}
    parse, map_values = CsvSegmentReader.parse_lines, ContactMapper.map_values

    def parse_lines(self: CsvSegmentReader, chunk: RawChunk, indices: Any) -> Any:
        counts["parsed"] += len(indices)
        return parse(self, chunk, indices)

    def mapping(self: ContactMapper, values: Any) -> Any:
        counts["mapped"] += 1
        return map_values(self, values)

    monkeypatch.setattr(CsvSegmentReader, "parse_lines", parse_lines)
    monkeypatch.setattr(ContactMapper, "map_values", mapping)
    return counts


def _people(count: int, tier: str = "gold") -> list[bytes]:
    return [b"p%03d@example.com,P%d,%s" % (i, i, tier.encode()) for i in range(count)]


def test_a_refresh_parses_only_the_lines_that_changed_and_an_unmapped_column_changes_nothing(
        env: Env, monkeypatch: Any) -> None:
    mirror = destination(mode="mirror")
    first = env.export(_upload(env, _people(50)), mirror)
    assert (first.status, first.exported) == ("succeeded", 50), first.error
    counts = _counting(monkeypatch)
    same = env.export(_upload(env, _people(50)), mirror)
    assert (same.exported, same.unchanged_skipped, same.rows_read) == (0, 50, 50) and same.balanced
    assert counts == {"parsed": 0, "mapped": 0}
    # Tier is not mapped: every line's bytes differ, no contact does
    other = env.export(_upload(env, _people(50, tier="silver")), mirror)
    assert (other.exported, other.unchanged_skipped) == (0, 50) and counts["mapped"] == 0
    lines = _people(50)
    lines[3] = b"p003@example.com,Changed,gold"
    del lines[10]
    lines.append(b"new@example.com,New,gold")
    puts = env.count(PUT)
    since = len(env.sim.upsert_batches)
    changed = env.export(_upload(env, lines), mirror)
    assert (changed.exported, changed.unchanged_skipped, changed.removed_from_list) == (2, 48, 1)
    assert changed.balanced and env.count(PUT) == puts + 1
    assert sorted(env.sent(since)) == ["new@example.com", "p003@example.com"]
    assert counts["mapped"] == 2 and env.members()["p003@example.com"] == "Changed"


def test_a_line_that_only_looks_like_an_exported_one_is_parsed_and_judged(env: Env, monkeypatch: Any) -> None:
    env.export(_upload(env, [b"a@example.com,Ann,", b"b@example.com,Bob,gold", b"c@example.com,Cy,gold"]),
               destination(mode="mirror"))
    counts = _counting(monkeypatch)
    report = env.export(_upload(env, [
        b"a@example.com,Ann",  # the same mapped values, one value short: rejected, as the parser says
        b'b@example.com,"Bob",gold',  # quoted now: parsed, and the same contact
        b"C@EXAMPLE.COM,Cy,gold",  # another source value, the same person: mapped and sent, as on any path
    ]), destination(mode="mirror"))
    assert report.balanced and (report.rejected_count, report.unchanged_skipped, report.exported) == (1, 1, 1)
    assert counts["mapped"] == 1 and counts["parsed"] == 2


@pytest.mark.parametrize(("header", "columns"), [
    (b"Email,First,Tier", ("Email", "First")),  # side by side, from the first column
    (b"Id,Email,First,Tier", ("Email", "First", "Tier")),  # side by side, to the last
    (b"Id,Email,First,Tier", ("Email", "First")),  # side by side, in the middle
    (b"Email,First,Tier", ("Email", "Tier")),  # apart
    (b"First,Email,Tier", ("Email", "First")),  # in another order than the file's
    (b"Email,First,Tier", ("Email",)),  # the email alone
])
def test_a_lines_fingerprint_is_the_source_fingerprint_of_its_parsed_values(
        tmp_path: Path, header: bytes, columns: tuple[str, ...]) -> None:
    from array import array

    from shared.pipeline.known_lines import LineMatcher
    from shared.state.keys import source_fingerprint
    from shared.state.snapshot_entries import Snapshot

    width = header.count(b",") + 1
    body = [b"x%d@example.com,Ann %d,,gold" % (i, i) for i in range(5)] + [b"short@example.com"]
    lines = [b",".join(line.split(b",")[:width]) if line.count(b",") >= width - 1 else line for line in body]
    (tmp_path / "f.csv").write_bytes(b"\n".join([header, *lines]) + b"\n")
    with open_segment(LocalDirSource(str(tmp_path)), "f.csv", raw_lines=True) as reader:
        snapshot = Snapshot({}, array("q", [0]), array("q", [0]))
        matcher = LineMatcher(reader, 1234, columns, snapshot)
        chunk = next(item for item in reader.project_lines(columns) if isinstance(item, RawChunk))
        parsed = list(reader.parse_lines(chunk, range(len(chunk.lines))))
        _, _, emails, fps, _ = matcher._match(chunk.lines, 1 << 30)
    assert len(parsed) == 6 and parsed[-1] is not None and parsed[-1][3] is not None  # the short line
    for row, fp, email in zip(parsed[:-1], fps[:-1], emails, strict=False):
        assert row is not None and int(fp) == source_fingerprint(row[2], 1234)
        assert email == str(row[2][0]).strip().lower().encode()
    assert int(fps[-1]) == 0 and emails[-1] == b""


# -- the snapshot's index -----------------------------------------------------------------------------------

def test_a_refresh_loads_the_snapshots_index_and_downloads_its_text_only_for_leavers(env: Env,
                                                                                   monkeypatch: Any) -> None:
    from shared.state import snapshot as snapshot_module
    from shared.state.keys import email_key
    from shared.state.snapshot_index import load_index

    mirror = destination(mode="mirror")
    env.export(_upload(env, _people(40)), mirror)
    downloads: list[str | None] = []
    chunks = snapshot_module.SnapshotStore._chunks

    def counted(self: Any, etag: str | None = None, known: int | None = None) -> Any:
        downloads.append(etag)
        return chunks(self, etag, known)

    monkeypatch.setattr(snapshot_module.SnapshotStore, "_chunks", counted)
    same = env.export(_upload(env, _people(40)), mirror)
    assert (same.unchanged_skipped, same.exported) == (40, 0) and downloads == []  # the index alone
    lines = _people(40)
    lines[5] = b"p005@example.com,Changed,gold"
    changed = env.export(_upload(env, [*lines[:30], b"zz@example.com,New,gold"]), mirror)
    assert (changed.exported, changed.removed_from_list, changed.unchanged_skipped) == (2, 10, 29)
    assert len(downloads) == 1 and downloads[0] is not None  # once, pinned: the leavers' emails and the merge
    # the index holds the keys of the text's emails, in its order, and their fingerprints (the text has none)
    path = f"state/{NAME}/snapshot"
    indexed = load_index(env.runs, path + ".idx", path + ".txt")
    assert indexed is not None
    header, *emails = env.runs.download_blob(path + ".txt").readall().decode().splitlines()
    assert list(indexed[1]) == [email_key(email) for email in emails] and len(emails) == 31
    assert len(set(indexed[2])) == 31 and 0 not in indexed[2]
    assert indexed[0]["digest"] in header
    # a text changed behind the index's back is never trusted through a stale index: membership only, so every
    # contact is sent once more and nobody is removed who is still in the file
    env.runs.upload_blob(path + ".txt", env.runs.download_blob(path + ".txt").readall(), overwrite=True)
    assert load_index(env.runs, path + ".idx", path + ".txt") is None
    again = env.export(_upload(env, [*lines[:30], b"zz@example.com,New,gold"]), mirror)
    assert (again.exported, again.unchanged_skipped, again.removed_from_list) == (31, 0, 0) and again.balanced


@pytest.mark.parametrize("content", [
    b"Email,First,Tier\ra@example.com,Ann,gold\rb@example.com,Bob,gold\r",  # classic Mac line ends
    b"Email,First,Tier\ra@example.com,Ann,gold\n",
    b"Email,First,Tier\r\na@example.com,Ann,gold\rb@example.com,Bob,gold\r\n",
], ids=["cr", "cr-then-lf", "crlf-with-a-lone-cr"])
def test_lines_ended_by_a_lone_carriage_return_are_all_read(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "f.csv").write_bytes(content)
    source = LocalDirSource(str(tmp_path))
    with open_segment(source, "f.csv", ReaderOptions(escapechar="\\")) as plain:
        expected = _rows(plain, lines=False)
    with open_segment(source, "f.csv", raw_lines=True) as reader:
        assert _rows(reader, lines=True) == expected and expected


def test_a_quoted_value_running_over_lines_past_the_limit_stops_the_file_after_plain_lines(tmp_path: Path) -> None:
    from shared.errors import SegmentFileError

    content = (b'Email,First,Tier\na@example.com,A,b\nb@example.com,"' + b"x" * 70000 + b"\n" + b"y" * 70000
               + b'\nevil@example.com,Eve,z\nend",t\n')
    (tmp_path / "f.csv").write_bytes(content)
    with (open_segment(LocalDirSource(str(tmp_path)), "f.csv", raw_lines=True) as reader,
          pytest.raises(SegmentFileError, match="runs over 2 lines") as caught):
        _rows(reader, lines=True)
    assert caught.value.row == 2


@pytest.mark.parametrize("tier", [b"go\x00ld", b"g\xffold", b"g" * 140_000], ids=["nul", "bad-utf8", "too-long"])
def test_a_line_the_parser_rejects_for_an_unmapped_column_is_never_unchanged(env: Env, tier: bytes) -> None:
    mirror = destination(mode="mirror")
    env.export(_upload(env, [b"a@example.com,Ann,gold", b"b@example.com,Bob,gold"]), mirror)
    report = env.export(_upload(env, [b"a@example.com,Ann," + tier, b"b@example.com,Bob,gold"]), mirror)
    assert (report.rejected_count, report.unchanged_skipped, report.exported) == (1, 1, 0) and report.balanced


def test_the_index_is_best_effort_and_goes_with_an_erasure(env: Env, monkeypatch: Any) -> None:
    from azure.core.exceptions import ServiceResponseError

    from shared.privacy.scrub import scrub_snapshot
    from shared.state import snapshot_index
    from shared.state.keys import email_key
    from shared.state.snapshot_index import load_index

    mirror = destination(mode="mirror")
    index = f"state/{NAME}/snapshot.idx"

    def failing(*_: Any) -> None:
        raise ServiceResponseError("storage went away")

    monkeypatch.setattr(snapshot_index.IndexWriter, "_store", failing)
    first = env.export(_upload(env, _people(12)), mirror)
    assert first.status == "succeeded" and env.state("snapshot.idx") is None  # the text is stored all the same
    monkeypatch.undo()
    # the text parsed: its emails' keys, no fingerprints (membership only), so all are sent once more
    again = env.export(_upload(env, _people(12)[:11]), mirror)
    assert (again.exported, again.removed_from_list) == (11, 1) and env.runs.get_blob_client(index).exists()
    assert scrub_snapshot(env.runs, NAME, {"p003@example.com"}, lambda: None) == 1
    scrubbed = load_index(env.runs, index, f"state/{NAME}/snapshot.txt")  # written again, without the erased
    assert scrubbed is not None and email_key("p003@example.com") not in scrubbed[1] and len(scrubbed[1]) == 10
    after = env.export(_upload(env, _people(12)[:11]), mirror)
    assert (after.exported, after.unchanged_skipped) == (1, 10) and after.balanced  # p003 is sent again


def test_a_file_that_quotes_every_value_is_read_from_its_text_stream(tmp_path: Path) -> None:
    rows = b"".join(b'"p%d@example.com","P %d","gold"\n' % (i, i) for i in range(50))
    (tmp_path / "quoted.csv").write_bytes(b'"Email","First","Tier"\n' + rows)
    (tmp_path / "plain.csv").write_bytes(b'"Email","First","Tier"\n' + rows.replace(b'"', b""))
    source = LocalDirSource(str(tmp_path))
    with open_segment(source, "quoted.csv", raw_lines=True) as quoted, \
            open_segment(source, "plain.csv", raw_lines=True) as plain:
        assert not quoted.raw_lines and plain.raw_lines  # a quoted header alone does not count
        assert [r[1:] for r in _rows(quoted, lines=True)] == [r[1:] for r in _rows(plain, lines=True)]
