"""Streaming readers for segment files: CSV/TSV, JSON Lines and CDM folders, plain or gzipped.

    with open_segment(source, name, options) as reader:
        reader.columns          # header / CDM attributes, or None (JSON Lines)
        for record in reader:   # Record(source, row, fields, error)
            ...

A file that cannot be read at all raises SegmentFileError; a single unusable row comes back as a Record with
`error` set (and empty fields), so the engine can reject it and go on.
"""

from shared.source.readers.base import SegmentReader
from shared.source.readers.cdm_reader import MODEL_JSON, cdm_partition_names
from shared.source.readers.dispatch import kind_of, open_segment
from shared.source.readers.options import ReaderOptions

__all__ = ["MODEL_JSON", "ReaderOptions", "SegmentReader", "cdm_partition_names", "kind_of", "open_segment"]
