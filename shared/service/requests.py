"""What an on-demand request may name: the one place that checks a blob path an HTTP caller or the CLI gives."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.config.destinations import Destination
from shared.service.common import BAD_BLOB, RequestRejected, RunRefused
from shared.source.segment_files import is_model_json, is_segment_entry

if TYPE_CHECKING:
    from shared.service.export_service import ExportService


def check_named_blob(service: ExportService, destination: Destination, blob_name: object) -> str:
    """A blob an on-demand request names for the destination, or RequestRejected saying what is wrong."""
    if not isinstance(blob_name, str) or not blob_name or BAD_BLOB.search(blob_name):
        raise RequestRejected(400, "blob must be a path inside the segments container (no '..', URLs or other "
                                   "containers)")
    if not is_segment_entry(blob_name):
        raise RequestRejected(400, "blob is not a segment file (a marker, manifest or unknown file type)")
    if destination not in service.destinations.served_by(blob_name):
        # Also under a nested prefix of another destination: the trigger gives such a file to that one.
        raise RequestRejected(400, "blob is not this destination's segment file (not under its segment "
                                   "prefixes, or under a longer prefix of another destination)",
                              prefixes=destination.segments)
    if not is_model_json(blob_name) and service.is_cdm_partition(destination, blob_name):
        raise RequestRejected(400, "blob is a CDM partition: export its model.json instead")
    if not service.segments.get_blob_client(blob_name).exists():
        raise RequestRejected(404, "no such blob in the segments container")
    try:
        service._files_of_run(destination, blob_name)
    except RunRefused as exc:
        raise RequestRejected(409, str(exc)) from None
    return blob_name
