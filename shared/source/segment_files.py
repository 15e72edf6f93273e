"""Which file each of a destination's segments is read from now: the one place that knows file kinds.

A destination's list holds the union of its segments, so every run (whatever started it) reads the current
file of every segment, resolved here under the destination's lock:
- a plain prefix: its newest data file (by Last-Modified) that no longer prefix gives to another segment;
- a Customer Insights table folder `<export>/<Table>/`: the table `<Table>` of `<export>/model.json`;
- a prefix holding a CDM `model.json`: its newest model.json (its one entity, or `file_format.entity`).
Partition files of a CDM folder are never a segment's file: they are read through their model.json.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import ContainerClient

from shared.config.destinations import Destination, DestinationsDocument, is_model_json
from shared.errors import SegmentFileError
from shared.source.readers.cdm_reader import MODEL_JSON

__all__ = ["DATA_SUFFIXES", "SegmentCatalog", "SegmentFile", "is_model_json", "is_segment_entry",
           "looks_like_cdm_partition"]

DATA_SUFFIXES = (".csv", ".tsv", ".txt", ".jsonl", ".ndjson", ".gz")  # any .gz: see readers.dispatch.kind_of
# Customer Insights' partition files: <Table>/<yyyy>/<mm>/<dd>/<hhmm>/<Table>_<partition>.csv[.gz]
_CDM_PARTITION_PATH = re.compile(r"(?:^|/)([^/]+)/\d{4}/\d{2}/\d{2}/\d{4}/\1_\d+\.csv(?:\.gz)?$", re.IGNORECASE)


def is_segment_entry(blob_name: str) -> bool:
    """Files that start an export: a CDM model.json or a data file (markers, manifests, CRCs do not)."""
    if is_model_json(blob_name):
        return True
    leaf = blob_name.rsplit("/", 1)[-1]
    if leaf.startswith(("_", ".")) or leaf.endswith(".crc"):  # manifest-*.json: .json is not a data suffix
        return False
    return leaf.lower().endswith(DATA_SUFFIXES)


def looks_like_cdm_partition(blob_name: str) -> bool:
    return _CDM_PARTITION_PATH.search(blob_name) is not None


@dataclass(frozen=True)
class SegmentFile:
    """One segment of a destination and the file it is read from in this run (`name` None: none yet)."""

    segment: str  # the destination's prefix
    name: str | None
    entity: str | None = None  # the CDM entity read from a model.json
    last_modified: datetime | None = None
    etag: str | None = None

    @property
    def identity(self) -> str:
        """What decides this segment's input: a change makes a new plan (never resumes the old one's batches)."""
        return f"{self.segment}\t{self.name}\t{self.entity}\t{self.etag}"


class SegmentCatalog:
    """The segments container seen as destinations' segments."""

    def __init__(self, container: ContainerClient, destinations: DestinationsDocument) -> None:
        self.container = container
        self.destinations = destinations

    def owns(self, destination: Destination, segment: str, blob_name: str) -> bool:
        """Whether the blob is this segment's: the longest prefix of all destinations that holds it is this one."""
        best: tuple[int, str, str] | None = None
        for other in self.destinations.destinations:
            prefix = other.segment_for(blob_name)
            if prefix is not None and (best is None or len(prefix) > best[0]):
                best = (len(prefix), other.name, prefix)
        return best is not None and best[1:] == (destination.name, segment)

    def current_files(self, destination: Destination) -> list[SegmentFile]:
        """The file of every segment now, in the destination's order (the order that decides merges).

        Last-Modified counts whole seconds: of files written in the same second the greatest name wins (exports
        name their files by date, time or sequence), for every run alike, whatever order their events come in.
        """
        return [self._current(destination, segment) for segment in destination.segments]

    def _current(self, destination: Destination, segment: str) -> SegmentFile:
        above = self._model_json_above(destination, segment)
        if above is not None:
            return above
        newest: dict[bool, tuple[datetime, str, str]] = {}
        try:
            for blob in self.container.list_blobs(name_starts_with=segment):
                name = str(blob.name)
                if not is_segment_entry(name) or not self.owns(destination, segment, name):
                    continue  # a marker, or a file a longer prefix gives to another segment
                model = is_model_json(name)
                if not model and looks_like_cdm_partition(name):
                    continue  # a Customer Insights partition is read through its model.json, never alone
                candidate = (blob.last_modified, name, str(blob.etag))
                current = newest.get(model)
                if current is None or candidate[:2] > current[:2]:
                    newest[model] = candidate
        except ResourceNotFoundError:  # no segments container yet: no segment has a file
            return SegmentFile(segment, None)
        chosen = newest.get(True) or newest.get(False)
        if chosen is None:
            return SegmentFile(segment, None)
        last_modified, name, etag = chosen
        entity = destination.file_format.entity if is_model_json(name) else None
        return SegmentFile(segment, name, entity, last_modified, etag)

    def _model_json_above(self, destination: Destination, segment: str) -> SegmentFile | None:
        """A Customer Insights model.json in the folder just above a `<export>/<Table>/` segment."""
        stripped = segment.rstrip("/")
        if "/" not in stripped:
            return None
        candidate = f"{stripped.rsplit('/', 1)[0]}/{MODEL_JSON}"
        table = destination.tables_below(candidate).get(segment)
        if table is None:
            return None
        try:
            properties = self.container.get_blob_client(candidate).get_blob_properties()
        except ResourceNotFoundError:
            return None
        return SegmentFile(segment, candidate, destination.file_format.entity or table, properties.last_modified,
                           str(properties.etag))

    def files_for(self, destination: Destination, blob_name: str) -> list[SegmentFile]:
        """A named blob as the file of the segment(s) it belongs to (HTTP `blob`, CLI `--blob`): a data file is
        one segment's, a Customer Insights model.json the file of every table-folder segment it holds."""
        segments = (self.model_json_segments(destination, blob_name) if is_model_json(blob_name)
                    else [s for s in [destination.segment_for(blob_name)] if s is not None])
        if not segments:
            raise SegmentFileError(blob_name, f"not under any segment prefix of destination {destination.name}")
        try:
            properties = self.container.get_blob_client(blob_name).get_blob_properties()
        except ResourceNotFoundError:
            raise SegmentFileError(f"{self.container.container_name}/{blob_name}", "file not found") from None
        tables = destination.tables_below(blob_name) if is_model_json(blob_name) else {}
        return [SegmentFile(segment, blob_name,
                            (destination.file_format.entity or tables.get(segment)) if is_model_json(blob_name)
                            else None, properties.last_modified, str(properties.etag))
                for segment in segments]

    def model_json_segments(self, destination: Destination, model_json: str) -> list[str]:
        """The destination's segments a model.json is the file of (a Customer Insights export holds several)."""
        tables = destination.tables_below(model_json)
        own = destination.segment_for(model_json)
        return [*tables, *([own] if own is not None and own not in tables else [])]

    def is_cdm_partition(self, destination: Destination, blob_name: str) -> bool:
        """A data file in a CDM folder is exported through its model.json, never alone.

        It is one when a model.json is above it (listed or not: a refresh writes its new timestamped folder
        before it updates model.json), or when its path has the Customer Insights partition layout
        `<Table>/<yyyy>/<mm>/<dd>/<hhmm>/<Table>_<n>.csv` (the first export may write the partitions before
        model.json exists).
        """
        if looks_like_cdm_partition(blob_name):
            return True
        parts = blob_name.split("/")
        for depth in range(len(parts) - 1, 0, -1):
            candidate = "/".join(parts[:depth]) + "/" + MODEL_JSON
            # a model.json under the destination's prefix, or one folder above a `<export>/<Table>/` prefix
            if not any(candidate.startswith(p) or p.startswith(candidate[: len(p)]) for p in destination.segments) \
                    and destination.table_below(candidate) is None:
                continue
            if self.container.get_blob_client(candidate).exists():
                return True  # listed or not yet listed: the model.json trigger exports it (or reports why not)
        return destination.file_format.entity is not None
