"""Which reader a file name calls for; refuses markers, manifests, encrypted and unknown files by name."""

from __future__ import annotations

from shared.config.destinations import is_model_json
from shared.errors import SegmentFileError
from shared.source.readers.base import SegmentReader
from shared.source.readers.cdm_reader import CdmReader
from shared.source.readers.csv_header import CsvLayout
from shared.source.readers.csv_reader import CsvSegmentReader
from shared.source.readers.decoding import content_head
from shared.source.readers.jsonl_reader import JsonLinesReader
from shared.source.readers.options import ReaderOptions
from shared.source.sources import ByteSource

CSV_SUFFIXES = (".csv", ".tsv", ".txt")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
ENCRYPTED_SUFFIXES = (".gpg", ".pgp", ".enc", ".asc", ".age")
_LEADING = b"\xef\xbb\xbf\xff\xfe\x00 \t\r\n"  # BOMs, UTF-16 zero bytes and blank space before the first value


def kind_of(name: str) -> str:
    """'cdm', 'jsonl', 'csv' or 'sniff' (a .gz named after neither: look at its content); SegmentFileError
    saying why anything else is not a segment file."""
    leaf = name.rsplit("/", 1)[-1]
    lower = leaf.lower()
    if is_model_json(name):
        return "cdm"
    if lower.endswith(ENCRYPTED_SUFFIXES):
        raise SegmentFileError(name, "encrypted file: decrypt it before it is dropped into storage "
                                     "(this app does not hold decryption keys)")
    if lower == "_success" or lower.startswith(("_", ".")) or lower.endswith(".crc") or (
            lower.startswith("manifest-") and lower.endswith(".json")):
        raise SegmentFileError(name, "not a segment file: a marker, checksum or manifest file (skipped)")
    if lower.endswith(".manifest.cdm.json"):
        raise SegmentFileError(name, "CDM manifest folders (*.manifest.cdm.json) are not supported: export "
                                     "with model.json")
    base = lower.removesuffix(".gz")
    if base.endswith(JSONL_SUFFIXES) or (base.endswith(".json") and lower.endswith(".gz")):
        return "jsonl"
    if base.endswith(CSV_SUFFIXES):
        return "csv"
    if lower.endswith(".gz"):
        return "sniff"  # e.g. Segment's `<received-at>.<id>.gz` (gzipped JSON Lines): decided by the content
    raise SegmentFileError(name, "not a segment file: expected .csv, .tsv, .txt, .jsonl, .ndjson (each optionally "
                                 ".gz), .json.gz, another .gz holding CSV or JSON Lines, or a CDM model.json")


def open_segment(source: ByteSource, name: str, options: ReaderOptions | None = None, *,
                 raw_lines: bool = False) -> SegmentReader:
    """Open a segment file for reading; use as a context manager. Raises SegmentFileError (or
    ConfigurationError for bad options) before any record when the file cannot be read at all. `raw_lines`:
    a CSV file that allows it hands out plain lines unparsed (`SegmentReader.project_lines`), for a refresh
    that recognises them; otherwise the text stream is parsed as a whole, which costs less per row."""
    options = options or ReaderOptions()
    try:
        kind = kind_of(name)
    except SegmentFileError as exc:
        raise SegmentFileError(source.describe(name), exc.reason) from None
    if kind == "sniff":
        kind = "jsonl" if content_head(source, name).lstrip(_LEADING).startswith(b"{") else "csv"
    if kind == "cdm":
        return CdmReader(source, name, options)
    if kind == "jsonl":
        return JsonLinesReader(source, name, options)
    return CsvSegmentReader(source, name, options, CsvLayout.for_file(name, options), raw_lines=raw_lines)
