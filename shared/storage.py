"""Blob Storage clients from the app's settings: a connection string locally, managed identity in Azure."""

from __future__ import annotations

from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
from azure.storage.blob import BlobServiceClient

from shared.errors import ConfigurationError
from shared.settings import setting
from shared.time_budgets import STORAGE_CLIENT_OPTIONS, storage_retry


def blob_service_from_settings() -> BlobServiceClient:
    connection = setting("AzureWebJobsStorage")
    if connection and "=" in connection:
        return BlobServiceClient.from_connection_string(connection, max_single_get_size=4 * 1024 * 1024,
                                                        retry_policy=storage_retry(), **STORAGE_CLIENT_OPTIONS)
    endpoint = setting("AzureWebJobsStorage__blobServiceUri")
    account = setting("AzureWebJobsStorage__accountName")
    if not endpoint and account:
        endpoint = f"https://{account}.blob.core.windows.net"
    if not endpoint:
        raise ConfigurationError(
            "no storage configured: set AzureWebJobsStorage (local) or AzureWebJobsStorage__blobServiceUri / "
            "AzureWebJobsStorage__accountName (Azure, managed identity)", field="AzureWebJobsStorage")
    client_id = setting("AzureWebJobsStorage__clientId") or setting("AZURE_CLIENT_ID")
    credential = (ManagedIdentityCredential(client_id=client_id) if client_id
                  else DefaultAzureCredential())
    return BlobServiceClient(endpoint, credential=credential, max_single_get_size=4 * 1024 * 1024,
                             retry_policy=storage_retry(), **STORAGE_CLIENT_OPTIONS)
