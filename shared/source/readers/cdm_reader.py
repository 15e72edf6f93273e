"""CDM folders (`model.json` + header-less CSV partitions), as Customer Insights exports them.

Partition locations are full URLs (maybe with `?snapshot=...`, maybe on the `.dfs.` host, maybe `abfss://`).
They are mapped to names inside the SAME source as model.json:
- BlobContainerSource: the URL must point inside the container's own URL, or the partition is refused.
- any other source (LocalDirSource for the CLI and tests): relative locations are taken from model.json's
  folder; for a URL, the longest tail of its path that exists under the source's root is used (so a
  downloaded CDM folder reads as it did in storage). A local root cannot tell "outside"; it only finds files
  under itself.
Every partition is located and checked to exist before any record is yielded. Records name the partition's
path as `source`, and rows are numbered per partition.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from shared.config.destinations import MODEL_JSON
from shared.errors import SegmentFileError

__all__ = ["MODEL_JSON", "CdmReader", "load_model", "local_entities", "locate"]
from shared.source.readers.base import ProjectedRow, SegmentReader
from shared.source.readers.csv_header import CsvLayout, HeaderMode
from shared.source.readers.csv_reader import CsvSegmentReader
from shared.source.readers.decoding import EmptyFileError
from shared.source.readers.options import ReaderOptions
from shared.source.readers.text_encoding import encoding_problem
from shared.source.records import Record
from shared.source.sources import BlobContainerSource, ByteSource

MAX_MODEL_BYTES = 32 << 20


@dataclass(frozen=True)
class Partition:
    name: str
    path: str  # name inside the source
    layout: CsvLayout


@dataclass(frozen=True)
class Entity:
    name: str
    attributes: tuple[str, ...]
    partitions: tuple[dict[str, Any], ...]


def load_model(source: ByteSource, name: str) -> dict[str, Any]:
    """The parsed model.json; SegmentFileError when it is not JSON or not CDM-shaped at the root."""
    where = source.describe(name)
    with source.open(name) as stream:
        data = stream.read(MAX_MODEL_BYTES + 1)
    if len(data) > MAX_MODEL_BYTES:
        raise SegmentFileError(where, f"model.json is larger than {MAX_MODEL_BYTES} bytes")
    if not data.strip():
        raise SegmentFileError(where, "model.json is empty")
    try:
        model = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise SegmentFileError(where, "model.json is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise SegmentFileError(where, f"model.json is not valid JSON ({exc.msg} at line {exc.lineno} "
                                      f"column {exc.colno})") from None
    except RecursionError:
        raise SegmentFileError(where, "model.json is nested too deeply") from None
    if not isinstance(model, dict):
        raise SegmentFileError(where, "model.json must be a JSON object with 'name', 'version' and 'entities'")
    if not isinstance(model.get("entities"), list):
        raise SegmentFileError(where, "model.json has no 'entities' list")
    return model


def local_entities(model: dict[str, Any], where: str) -> list[Entity]:
    """The LocalEntity entries (ReferenceEntity entries hold no data here)."""
    found: list[Entity] = []
    for index, entity in enumerate(model["entities"], start=1):
        if not isinstance(entity, dict):
            raise SegmentFileError(where, f"model.json entity {index} is not an object")
        if entity.get("$type", "LocalEntity") != "LocalEntity":
            continue
        name = entity.get("name")
        if not isinstance(name, str) or not name:
            raise SegmentFileError(where, f"model.json entity {index} has no name")
        attributes = entity.get("attributes")
        if not isinstance(attributes, list) or not attributes:
            raise SegmentFileError(where, f"model.json entity {name!r} has no attributes")
        names: list[str] = []
        for position, attribute in enumerate(attributes, start=1):
            column = attribute.get("name") if isinstance(attribute, dict) else None
            if not isinstance(column, str):
                raise SegmentFileError(where, f"model.json entity {name!r} attribute {position} has no name")
            if column in names:
                raise SegmentFileError(where, f"model.json entity {name!r} lists attribute {column!r} twice")
            names.append(column)
        partitions = entity.get("partitions", [])
        if not isinstance(partitions, list) or not all(isinstance(p, dict) for p in partitions):
            raise SegmentFileError(where, f"model.json entity {name!r} has a malformed 'partitions' list")
        found.append(Entity(name, tuple(names), tuple(partitions)))
    return found


def choose_entity(entities: list[Entity], wanted: str | None, where: str) -> Entity:
    names = ", ".join(e.name for e in entities) or "none"
    if wanted is not None:
        for entity in entities:
            if entity.name == wanted:
                return entity
        raise SegmentFileError(where, f"model.json has no entity {wanted!r} (entities: {names})")
    if len(entities) != 1:
        raise SegmentFileError(where, f"model.json has {len(entities)} entities ({names}): set file_format.entity "
                                      "to the one to export")
    return entities[0]


def _url_of_abfs(location: str) -> str:
    """abfs[s]://container@account.dfs.core.windows.net/path -> https://account.blob.../container/path."""
    parts = urlsplit(location)
    container, _, host = parts.netloc.partition("@")
    return f"https://{host}/{container}{parts.path}"


def _safe_segments(path: str) -> list[str] | None:
    segments = [s for s in unquote(path).split("/") if s]
    if any(s in (".", "..") or "\\" in s for s in segments):
        return None
    return segments


def locate(source: ByteSource, model_name: str, location: str) -> str | None:
    """The name of a partition inside `source`, or None when its location points outside it."""
    location = location.split("?", 1)[0].split("#", 1)[0]
    scheme = urlsplit(location).scheme.lower()
    if scheme in ("abfs", "abfss"):
        location, scheme = _url_of_abfs(location), "https"
    if scheme in ("http", "https"):
        if isinstance(source, BlobContainerSource):
            return source.name_for_url(location)
        segments = _safe_segments(urlsplit(location).path)
        if not segments:
            return None
        for start in range(len(segments)):
            candidate = "/".join(segments[start:])
            if source.exists(candidate):
                return candidate
        return "/".join(segments[-2:])  # reported as missing by the caller
    if scheme or location.startswith("/"):
        return None
    segments = _safe_segments(location)
    if not segments:
        return None
    folder = model_name.rsplit("/", 1)[0] + "/" if "/" in model_name else ""
    return folder + "/".join(segments)


_HEADER_MODES: dict[bool | None, HeaderMode] = {None: "auto", True: "first-row", False: "none"}


def _layout(settings: Any, attributes: tuple[str, ...], options: ReaderOptions, where: str,
            partition: str) -> CsvLayout:
    if settings is None:
        header = _HEADER_MODES[options.has_header]
        return CsvLayout(delimiter=options.delimiter or ",", quotechar=options.quotechar or '"',
                         escapechar=options.escapechar, header=header, columns=attributes, encoding=options.encoding)
    if not isinstance(settings, dict):
        raise SegmentFileError(where, f"partition {partition!r}: fileFormatSettings is not an object")
    kind = settings.get("$type", "CsvFormatSettings")
    if kind != "CsvFormatSettings":
        raise SegmentFileError(where, f"partition {partition!r}: format {kind!r} is not supported (CSV only)")
    headers = settings.get("columnHeaders")  # absent: a first row equal to the attribute names is a header
    delimiter = settings.get("delimiter", ",")
    quote_style = settings.get("quoteStyle", "QuoteStyle.Csv")
    encoding = settings.get("encoding", "UTF-8")
    if headers is not None and not isinstance(headers, bool):
        raise SegmentFileError(where, f"partition {partition!r}: columnHeaders must be true or false")
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '\r\n"':
        raise SegmentFileError(where, f"partition {partition!r}: delimiter must be one character")
    if quote_style not in ("QuoteStyle.Csv", "QuoteStyle.None"):
        raise SegmentFileError(where, f"partition {partition!r}: unknown quoteStyle {quote_style!r}")
    problem = encoding_problem(str(encoding))
    if problem is not None:
        raise SegmentFileError(where, f"partition {partition!r}: {problem}")
    return CsvLayout(delimiter=delimiter, quotechar=options.quotechar or '"', escapechar=options.escapechar,
                     quote_none=quote_style == "QuoteStyle.None",
                     header=_HEADER_MODES[headers if headers is not None else options.has_header],
                     columns=attributes, encoding=str(encoding))


def resolve_partitions(source: ByteSource, model_name: str, entity: Entity, options: ReaderOptions) -> list[Partition]:
    """Every partition of the entity, located and checked to exist, in model.json order."""
    where = source.describe(model_name)
    resolved: list[Partition] = []
    for index, raw in enumerate(entity.partitions, start=1):
        given = raw.get("name")
        label = given if isinstance(given, str) and given else f"#{index}"
        location = raw.get("location")
        if not isinstance(location, str) or not location:
            raise SegmentFileError(where, f"partition {label!r} of entity {entity.name!r} has no location")
        path = locate(source, model_name, location)
        if path is None:
            raise SegmentFileError(where, f"partition {label!r} of entity {entity.name!r} is located outside the "
                                          "container model.json is in; refusing to read it")
        if not source.exists(path):
            raise SegmentFileError(where, f"partition {label!r} of entity {entity.name!r} does not exist "
                                          f"({source.describe(path)}); was the export interrupted?")
        layout = _layout(raw.get("fileFormatSettings"), entity.attributes, options, where, label)
        resolved.append(Partition(label, path, layout))
    return resolved


def cdm_partition_names(source: ByteSource, model_name: str) -> set[str]:
    """Names of the data files a model.json lists (all entities), so a blob trigger can skip them.

    Raises SegmentFileError when model.json itself is unusable; partitions that cannot be located are left out.
    """
    where = source.describe(model_name)
    names: set[str] = set()
    for entity in local_entities(load_model(source, model_name), where):
        for raw in entity.partitions:
            location = raw.get("location")
            if isinstance(location, str) and location:
                path = locate(source, model_name, location)
                if path is not None:
                    names.add(path)
    return names


class CdmReader(SegmentReader):
    """All partitions of one entity, in order, as one stream of Records with the entity's attributes."""

    def __init__(self, source: ByteSource, name: str, options: ReaderOptions) -> None:
        where = source.describe(name)
        self._source = source
        self._options = options
        entity = choose_entity(local_entities(load_model(source, name), where), options.entity, where)
        self.entity = entity.name
        self.columns = list(entity.attributes)
        self.partitions = resolve_partitions(source, name, entity, options)
        self._current: CsvSegmentReader | None = None

    def __iter__(self) -> Iterator[Record]:
        for reader in self._open_partitions():
            yield from reader

    def project(self, columns: Sequence[str]) -> Iterator[ProjectedRow]:
        for reader in self._open_partitions():
            yield from reader.project(columns)

    def _open_partitions(self) -> Iterator[CsvSegmentReader]:
        """Each partition's reader in turn, closed once the caller moves on to the next."""
        for partition in self.partitions:
            try:
                reader = self._current = CsvSegmentReader(self._source, partition.path, self._options,
                                                          partition.layout)
            except EmptyFileError:
                continue  # a partition of an empty (or small) segment
            try:
                yield reader
            finally:
                reader.close()
                self._current = None

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None
