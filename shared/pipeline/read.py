"""Stage 1, read: every segment's file into one spool, each row mapped to a contact or rejected with its reason.

Segments are read in the destination's order into the same spool, so a person in several segments is one
contact (the row read last wins) and each segment's share is a range of spool positions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from shared.config.destinations import Destination
from shared.errors import ConfigurationError, SegmentFileError
from shared.mapping.contact_mapping import ContactMapper, MappedContact, Rejection, missing_columns
from shared.mapping.email_rules import normalise_email
from shared.pipeline.report import RejectedRow, TruncatedField
from shared.pipeline.result import ExportOptions, ExportResult, SegmentRead
from shared.source.readers import ReaderOptions, open_segment
from shared.source.readers.base import KEYS_SEEN_KEPT
from shared.source.segment_files import SegmentFile
from shared.source.sources import ByteSource
from shared.staging.spool import Spool
from shared.state.keys import email_key


def read_segments(destination: Destination, source: ByteSource, files: Sequence[SegmentFile], mapper: ContactMapper,
                  spool: Spool, result: ExportResult, options: ExportOptions) -> None:
    """Each file in turn into the spool; a segment without a file is recorded, with nothing read."""
    report = result.report
    for file in files:
        read = SegmentRead(file, source.describe(file.name) if file.name is not None else None, start=len(spool))
        result.reads.append(read)
        if file.name is not None:
            rows, rejected, unknown = report.rows_read, report.rejected_count, result.email_rejected
            _read_into_spool(destination, source, file, mapper, spool, result, options)
            read.rows_read, read.rejected = report.rows_read - rows, report.rejected_count - rejected
            read.email_rejected = result.email_rejected - unknown
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
    result: ExportResult, options: ExportOptions,
) -> None:
    report = result.report
    assert file.name is not None
    where = source.describe(file.name)
    try:
        _read_file(destination, source, file.name, where, reader_options(destination, file.entity), mapper, spool,
                   result, options)
    except UnicodeError as exc:  # a decoder failing as a whole, past the reader's own checks: the file is unreadable
        raise SegmentFileError(where, f"cannot be decoded ({exc}); check file_format.encoding",
                               row=report.rows_read + 1) from None


def _read_file(
    destination: Destination, source: ByteSource, name: str, where: str, reading: ReaderOptions,
    mapper: ContactMapper, spool: Spool, result: ExportResult, options: ExportOptions,
) -> None:
    report = result.report
    with open_segment(source, name, reading) as reader:
        missing = missing_columns(destination, reader.columns)
        if missing:
            header = reader.columns or []
            found = f"columns found: {', '.join(header) or 'none'}"
            if len(missing) == len(set(destination.field_mapping.columns())) or any("@" in c for c in header):
                # Likely a file without its header row: its "columns" are a profile, which must not reach a
                # report or log. A real header has at least one mapped column and no addresses.
                found = (f"the first row has none of the mapped columns or holds an email address, so it may be "
                         f"data, not column names ({len(header)} values): is the header row missing?")
            raise SegmentFileError(where, f"mapped column(s) {', '.join(missing)} not in the file; {found}")
        columns = mapper.columns
        # A format without a header (JSON Lines) names its columns row by row: a mapped column that no row
        # has is a misspelled mapping, which would silently drop that field for every contact (and, for the
        # email, reject every row: mirror mode would then see everyone as gone).
        unseen = set(range(len(columns))) if reader.columns is None else set()
        map_values, add, reject = mapper.map_values, spool.add, result.reject
        preview = options.preview_limit if options.dry_run else 0
        for origin, row, values, error in reader.project(columns):
            report.rows_read += 1
            if error is not None:
                result.unreadable_rows += 1
                reject(RejectedRow(origin, row, "row", error))
                continue
            if unseen:
                unseen.difference_update([i for i in unseen if values[i] is not None])
            mapped = map_values(values)
            if type(mapped) is MappedContact:
                add(origin, row, mapped.email, mapped.body)
                if mapped.truncated:
                    for truncated in mapped.truncated:
                        report.add_truncated(TruncatedField(origin, row, truncated))
                if preview and len(result.preview) < preview:
                    result.preview.append(mapped.body)
            else:
                assert isinstance(mapped, Rejection)
                column = mapped.column or columns[0]
                reject(RejectedRow(origin, row, mapped.field, mapped.reason, mapped.column),
                       mapper.value_of(values, column))
                if mapped.field == "email":
                    result.email_rejected += 1
                    continue
                email = normalise_email(values[0] or "")[0]
                if email is not None:
                    result.rejected_keys.append(email_key(email))
        if unseen and reader.keys_seen:
            raise _never_seen(destination, where, {columns[i] for i in unseen}, reader.keys_seen)


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
