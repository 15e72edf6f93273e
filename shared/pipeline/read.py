"""Stage 1, read: every segment's file into one spool, each row mapped to a contact or rejected with its reason.

Segments are read in the destination's order into the same spool, so a person in several segments is one
contact (the row read last wins) and each segment's share is a range of spool positions.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from shared.config.destinations import Destination
from shared.errors import ConfigurationError, SegmentFileError
from shared.mapping.contact_mapping import ContactMapper, MappedContact, Rejection, missing_columns
from shared.mapping.email_rules import normalise_email
from shared.mapping.line_mapping import LineMapper
from shared.pipeline.known_lines import LineMatcher
from shared.pipeline.report import RejectedRow, RunReport, TruncatedField
from shared.pipeline.result import ExportOptions, ExportResult, SegmentRead, Suppression
from shared.source.readers import ReaderOptions, open_segment
from shared.source.readers.base import KEYS_SEEN_KEPT, SegmentReader
from shared.source.readers.raw_lines import RawChunk
from shared.source.segment_files import SegmentFile
from shared.source.sources import ByteSource
from shared.staging.spool import Spool
from shared.state.keys import SIGNED, email_key, fingerprint_seed, source_fingerprint, xxh3
from shared.state.snapshot_entries import Snapshot

# One row into the run: (source, row, its values, its reader's error, its fingerprint, its line hash)
RowSink = Callable[[str, int, Sequence[str | None], str | None, int, int], None]


@dataclass
class Known:
    """What the destination's sync state knows of the rows (None for a run without state: nothing is skipped).

    Every row is fingerprinted (its mapped source values, shared.state.keys.source_fingerprint) for the next
    run's snapshot; a row whose fingerprint is the trusted snapshot's for its email is unchanged, and goes into
    the spool unmapped. Every row whose email the snapshot holds is marked in it, for mirror's removals. With
    a trusted snapshot, a CSV file's plain lines are recognised from their bytes a chunk at a time
    (known_lines), before any parsing; the others take the row-by-row path here.
    """

    snapshot: Snapshot | None


def read_segments(destination: Destination, source: ByteSource, files: Sequence[SegmentFile], mapper: ContactMapper,
                  spool: Spool, result: ExportResult, options: ExportOptions, known: Known | None = None) -> None:
    """Each file in turn into the spool; a segment without a file is recorded, with nothing read."""
    report = result.report
    for file in files:
        read = SegmentRead(file, source.describe(file.name) if file.name is not None else None, start=len(spool))
        result.reads.append(read)
        if file.name is not None:
            rows, rejected, unknown = report.rows_read, report.rejected_count, result.email_rejected
            suppressed = report.suppressed
            _read_into_spool(destination, source, file, mapper, spool, result, options, known)
            read.rows_read, read.rejected = report.rows_read - rows, report.rejected_count - rejected
            read.email_rejected = result.email_rejected - unknown
            read.suppressed = report.suppressed - suppressed
        read.end = len(spool)
    report.contacts_valid = len(spool)


def reader_options(destination: Destination, entity: str | None = None) -> ReaderOptions:
    wanted = destination.file_format.model_dump(exclude_none=True)
    if entity is not None:
        wanted["entity"] = entity
    return ReaderOptions(**wanted)


def describe_sources(source: ByteSource, files: Sequence[SegmentFile]) -> str:
    """The report's `source`: the one file, or every segment's file (a segment without one is named so)."""
    names = [source.describe(f.name) if f.name is not None else f"{f.segment} (no file)" for f in files]
    return names[0] if len(names) == 1 else ", ".join(names)


def _read_into_spool(
    destination: Destination, source: ByteSource, file: SegmentFile, mapper: ContactMapper, spool: Spool,
    result: ExportResult, options: ExportOptions, known: Known | None,
) -> None:
    report = result.report
    assert file.name is not None
    where = source.describe(file.name)
    try:
        _read_file(destination, source, file.name, where, reader_options(destination, file.entity), mapper, spool,
                   result, options, known)
    except UnicodeError as exc:  # a decoder failing as a whole, past the reader's own checks: the file is unreadable
        raise SegmentFileError(where, f"cannot be decoded ({exc}); check file_format.encoding",
                               row=report.rows_read + 1) from None


def _read_file(
    destination: Destination, source: ByteSource, name: str, where: str, reading: ReaderOptions,
    mapper: ContactMapper, spool: Spool, result: ExportResult, options: ExportOptions, known: Known | None,
) -> None:
    """Every row of one file into the spool: known unchanged (unmapped, see known_lines for whole lines
    recognised as bytes), mapped, or rejected."""
    report = result.report
    snapshot = known.snapshot if known is not None else None
    # Against a trusted snapshot a CSV file's plain lines are read as bytes (known_lines). With no snapshot at
    # all (a first export, a run without state) every row is mapped: plain lines a chunk at a time where they
    # allow (line_mapping), each with its line hash. An untrusted snapshot (a full re-sync) is read by the csv
    # parser row by row, each row marked in it; the next refresh recognises those rows by their values.
    recognisable = snapshot is not None and snapshot.trusted and len(snapshot) > 0
    whole = snapshot is None and LineMapper.possible(mapper, bool(options.suppression),
                                                     options.dry_run and options.preview_limit > 0)
    with open_segment(source, name, reading, raw_lines=recognisable or whole) as reader:
        _check_columns(destination, where, reader.columns)
        columns = mapper.columns
        # A format without a header (JSON Lines) names its columns row by row: a mapped column that no row
        # has is a misspelled mapping, which would silently drop that field for every contact (and, for the
        # email, reject every row: mirror mode would then see everyone as gone).
        unseen = set(range(len(columns))) if reader.columns is None else set()
        one = _row_sink(mapper, spool, result, options, known, unseen)
        seed = fingerprint_seed(mapper.rules(), repr(reading)) if known is not None else None
        lines = None
        if recognisable and snapshot is not None and seed is not None and reader.raw_lines and all(
                c in (reader.columns or ()) for c in columns):
            lines = LineMatcher(reader, seed, columns, snapshot)
        mapped = LineMapper.for_reader(mapper, reader, seed) if whole else None
        raw = lines is not None or mapped is not None
        for item in reader.project_lines(columns) if raw else reader.project(columns):
            if type(item) is RawChunk:
                if lines is not None:
                    for (origin, row, values, error), fp, line_hash in lines.rows(item, spool, report):
                        one(origin, row, values, error, fp, line_hash)
                else:
                    assert mapped is not None
                    _mapped_lines(mapped, item, reader, spool, report, one, seed)
                continue
            origin, row, values, error = item  # type: ignore[misc]
            fp = 0 if seed is None or error is not None else source_fingerprint(values, seed)
            one(origin, row, values, error, fp, 0)
        if unseen and reader.keys_seen:
            raise _never_seen(destination, where, {columns[i] for i in unseen}, reader.keys_seen)


def _mapped_lines(mapper: LineMapper, chunk: RawChunk, reader: SegmentReader, spool: Spool, report: RunReport,
                  one: RowSink, seed: int | None) -> None:
    """A chunk of plain lines mapped a piece at a time, and (a piece the shortcut declines) parsed row by row."""
    for piece, block in mapper.pieces(chunk):
        if block is not None:
            spool.add_block(piece.source, piece.first_row, block.keys, block.pairs, block.bodies, block.starts)
            report.rows_read += len(block.starts)
            continue
        for item in reader.parse_lines(piece, range(len(piece.lines))):
            if item is not None:
                origin, row, values, error = item
                fp = 0 if seed is None or error is not None else source_fingerprint(values, seed)
                one(origin, row, values, error, fp, 0)


def _row_sink(mapper: ContactMapper, spool: Spool, result: ExportResult, options: ExportOptions,
              known: Known | None, unseen: set[int]) -> RowSink:
    """The row-by-row path: one row, with its fingerprint, into the spool (unchanged or mapped) or the rejects.

    Why long: this runs once per row that is not recognised as a whole line; its look-ups are bound once here.
    """
    report = result.report
    map_values, add, reject = mapper.map_values, spool.add, result.reject
    preview = options.preview_limit if options.dry_run else 0
    erased = options.suppression or None  # None when nobody was erased: no HMAC at all per row
    position, trusted, seen = _known_rows(known)
    add_unchanged = spool.add_unchanged

    def one(origin: str, row: int, values: Sequence[str | None], error: str | None, fp: int, line_hash: int) -> None:
        report.rows_read += 1
        if error is not None:
            result.unreadable_rows += 1
            reject(RejectedRow(origin, row, "row", error))
            return
        if unseen:
            unseen.difference_update([i for i in unseen if values[i] is not None])
        key, at, lowered = None, -1, ""
        if position is not None:
            lowered = (values[0] or "").strip().lower()
            address = lowered.encode("utf-8", "surrogatepass")
            key = xxh3(address) - SIGNED
            at = position(key)
            if at >= 0 and trusted is not None and trusted[at] == fp:  # as the list holds it: not mapped
                seen[at] = 1
                add_unchanged(origin, row, address, key)
                return
        mapped = map_values(values)
        if erased is not None and _erased(mapped, values, erased):
            report.suppressed += 1
            return
        if type(mapped) is MappedContact:
            if position is not None:
                if mapped.email != lowered:  # normalised past lower-casing: its own key
                    key = email_key(mapped.email)
                    at = position(key)
                if at >= 0:
                    seen[at] = 1
            add(origin, row, mapped.email, mapped.body, fp, key, line_hash)
            if mapped.truncated:
                for truncated in mapped.truncated:
                    report.add_truncated(TruncatedField(origin, row, truncated))
            if preview and len(result.preview) < preview:
                result.preview.append(mapped.body)
        else:
            _rejected(result, mapper, origin, row, mapped, values)

    return one


def _known_rows(known: Known | None) -> tuple[Callable[[int], int] | None, array[int] | None, bytearray]:
    """The snapshot's look-up, its trusted fingerprints and its marks (or Nones)."""
    snapshot = known.snapshot if known is not None else None
    if snapshot is None:
        return None, None, bytearray()
    return snapshot.position, snapshot.fingerprints if snapshot.trusted else None, snapshot.seen


def _rejected(result: ExportResult, mapper: ContactMapper, origin: str, row: int, mapped: MappedContact | Rejection,
              values: Sequence[str | None]) -> None:
    """A row the mapping rejected: into the rejects, and its person (when known) is still in the segment."""
    assert isinstance(mapped, Rejection)
    column = mapped.column or mapper.columns[0]
    result.reject(RejectedRow(origin, row, mapped.field, mapped.reason, mapped.column), mapper.value_of(values, column))
    if mapped.field == "email":
        result.email_rejected += 1
        return
    email = normalise_email(values[0] or "")[0]
    if email is not None:
        result.rejected_keys.append(email_key(email))


def _check_columns(destination: Destination, where: str, columns: list[str] | None) -> None:
    missing = missing_columns(destination, columns)
    if missing:
        header = columns or []
        found = f"columns found: {', '.join(header) or 'none'}"
        if len(missing) == len(set(destination.field_mapping.columns())) or any("@" in c for c in header):
            # Likely a file without its header row: its "columns" are a profile, which must not reach a
            # report or log. A real header has at least one mapped column and no addresses.
            found = (f"the first row has none of the mapped columns or holds an email address, so it may be "
                     f"data, not column names ({len(header)} values): is the header row missing?")
        raise SegmentFileError(where, f"mapped column(s) {', '.join(missing)} not in the file; {found}")


def _erased(mapped: MappedContact | Rejection, values: Sequence[str | None], erased: Suppression) -> bool:
    """The do-not-export check, on the normalised email of a row that became a contact, or was rejected for
    another field than its email (an erased person's bad row: its value is not kept in the rejects file either).

    A row skipped earlier as unchanged is in the destination's snapshot, and an erasure removes erased people
    from every snapshot: such a row is never an erased person's, so checking here misses nobody.
    """
    if type(mapped) is MappedContact:
        return mapped.email in erased
    assert isinstance(mapped, Rejection)
    return mapped.field != "email" and normalise_email(values[0] or "")[0] in erased


def _never_seen(destination: Destination, source: str, unseen: set[str],
                seen: Mapping[str, None]) -> ConfigurationError:
    """The error for mapped columns no row of a header-less file had: names only, never values."""
    names = [name for name in seen if "@" not in name]  # a key that is an address is data, not a column name
    hidden = len(seen) - len(names)
    shown = ", ".join(names[:KEYS_SEEN_KEPT]) or "none"
    more = " and more" if len(seen) >= KEYS_SEEN_KEPT else ""
    hint = f" ({hidden} that look like email addresses not shown)" if hidden else ""
    missing = sorted(unseen, key=destination.field_mapping.columns().index)
    return ConfigurationError(
        f"mapped column(s) {', '.join(missing)} appear in no row of {source} (JSON Lines has no header, so each "
        f"row names its fields; nested objects are flattened to parent.child); columns seen: {shown}{more}{hint}. "
        "Fix the field mapping; nothing was sent",
        field=f"destinations[{destination.name}].field_mapping")
