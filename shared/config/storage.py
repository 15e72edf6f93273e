"""Blob Storage clients from the app's settings: a connection string locally, managed identity in Azure."""

from __future__ import annotations

import os
from typing import Any

from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
from azure.storage.blob import BlobServiceClient

from shared.config.settings import setting
from shared.config.time_budgets import STORAGE_CLIENT_OPTIONS, storage_retry
from shared.errors import ConfigurationError

# Bytes a GET of a streamed blob (a segment file): one is in memory at a time, with the HTTP layer's copy, at
# the read's peak; 2 MB costs ~0.05 s more CPU than 4 MB on a 70 MB file and ~4 MB less peak RSS.
_GET_BYTES = 2 * 1024 * 1024
# The first GET of a blob read from the app's own account (run state, reports): a snapshot's index or text that
# fits one PUT (shared.state.snapshot.SINGLE_PUT: 2.4 and 2.9 MB at 100,000 contacts) is then one GET, not two
# (~2 ms of CPU each). Bigger ones are read in ranges that name their size (2 MB); a segment file read from this
# account (when SEGMENTS_STORAGE is not set) has only its first GET this big.
_STATE_FIRST_GET = 4 * 1024 * 1024


# Proxies and the hosts they do not apply to, as urllib (and so requests) reads them: any case.
_PROXY_NAMES = frozenset({"http_proxy", "https_proxy", "all_proxy", "no_proxy"})


def transport_options() -> dict[str, Any]:
    """Options for every storage client the app builds: the environment read once, not on every request.

    requests (the storage SDK's HTTP layer) reads the proxy settings again on every request, a walk of the whole
    environment (twice, with NO_PROXY), and looks for a CA bundle and ~/.netrc: ~0.3 ms of a storage call's
    ~2 ms of CPU with a Functions worker's ~90 variables, and a refresh makes 25 calls at 100,000 rows, 150 at a
    million. Without a proxy setting there is nothing per request to decide, so the client is built not to
    look, with the CA bundle requests would have found (REQUESTS_CA_BUNDLE, then CURL_CA_BUNDLE) given
    once; with one, requests keeps deciding per host. Read when a client is built (the host starts a new worker
    when app settings change); ~/.netrc is never read for storage, whose requests are signed.
    """
    if any(name.lower() in _PROXY_NAMES for name in os.environ):
        return {}
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    return {"use_env_settings": False, **({"connection_verify": bundle} if bundle else {})}


def blob_service_from_settings() -> BlobServiceClient:
    """The app's own account (AzureWebJobsStorage): run state, reports, receipts, locks."""
    return _blob_service("AzureWebJobsStorage", first_get=_STATE_FIRST_GET)


def segments_blob_service_from_settings() -> BlobServiceClient:
    """The account the platforms write segment files to (SEGMENTS_STORAGE, identity-based in Azure like the
    host's connection); the app's own account when it is not set (local runs with one Azurite account)."""
    if setting("SEGMENTS_STORAGE") or setting("SEGMENTS_STORAGE__blobServiceUri") \
            or setting("SEGMENTS_STORAGE__serviceUri"):
        return _blob_service("SEGMENTS_STORAGE")
    return blob_service_from_settings()


def _blob_service(connection_name: str, first_get: int = _GET_BYTES) -> BlobServiceClient:
    connection = setting(connection_name)
    if connection and "=" in connection:
        return BlobServiceClient.from_connection_string(connection, max_single_get_size=first_get,
                                                        max_chunk_get_size=_GET_BYTES, retry_policy=storage_retry(),
                                                        **STORAGE_CLIENT_OPTIONS, **transport_options())
    endpoint = setting(f"{connection_name}__blobServiceUri") or setting(f"{connection_name}__serviceUri")
    account = setting("AzureWebJobsStorage__accountName") if connection_name == "AzureWebJobsStorage" else None
    if not endpoint and account:
        endpoint = f"https://{account}.blob.core.windows.net"
    if not endpoint:
        raise ConfigurationError(
            f"no storage configured: set {connection_name} (local) or {connection_name}__blobServiceUri "
            "(Azure, managed identity)", field=connection_name)
    client_id = setting(f"{connection_name}__clientId") or setting("AZURE_CLIENT_ID")
    credential = (ManagedIdentityCredential(client_id=client_id) if client_id
                  else DefaultAzureCredential())
    return BlobServiceClient(endpoint, credential=credential, max_single_get_size=first_get,
                             max_chunk_get_size=_GET_BYTES, retry_policy=storage_retry(), **STORAGE_CLIENT_OPTIONS,
                             **transport_options())
