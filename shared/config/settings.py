"""Every app setting the app reads, in one place, read lazily (never at import time).

The infrastructure template must set each of these that has no default; `tests/test_infra_settings.py`
compares this table with `infra/`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# name -> (required in Azure, what it is for)
APP_SETTINGS: dict[str, tuple[bool, str]] = {
    "AzureWebJobsStorage": (
        False,
        "Connection string of the app's storage (local: UseDevelopmentStorage=true). In Azure use the "
        "identity-based AzureWebJobsStorage__* settings instead.",
    ),
    "AzureWebJobsStorage__accountName": (False, "Storage account name for identity-based connections."),
    "AzureWebJobsStorage__blobServiceUri": (True, "Blob endpoint for identity-based connections."),
    "AzureWebJobsStorage__queueServiceUri": (True, "Queue endpoint (blob trigger bookkeeping)."),
    "AzureWebJobsStorage__credential": (True, "'managedidentity' in Azure."),
    "AzureWebJobsStorage__clientId": (True, "Client ID of the user-assigned managed identity."),
    "SEGMENTS_STORAGE": (
        False,
        "Connection string of the account holding the segments container (local only; default: the "
        "AzureWebJobsStorage account). In Azure use the identity-based SEGMENTS_STORAGE__* settings.",
    ),
    "SEGMENTS_STORAGE__blobServiceUri": (True, "Blob endpoint of the segments account (identity-based)."),
    "SEGMENTS_STORAGE__serviceUri": (False, "The host's one-URI form of SEGMENTS_STORAGE__blobServiceUri."),
    "AzureWebJobsStorage__serviceUri": (False, "The host's one-URI form of AzureWebJobsStorage__blobServiceUri."),
    "SEGMENTS_STORAGE__queueServiceUri": (
        False, "Queue endpoint for the blob trigger's poison queue (read by the host; infra/ uses the app's "
               "own account)."),
    "SEGMENTS_STORAGE__credential": (True, "'managedidentity' in Azure (the segments connection)."),
    "SEGMENTS_STORAGE__clientId": (True, "Client ID of the managed identity reading the segments account."),
    "SEGMENTS_CONTAINER": (True, "Container the customer-data platform writes segment files into."),
    "RUNS_CONTAINER": (True, "Container for run reports, rejected rows, receipts and sync state."),
    "DESTINATIONS_JSON": (True, "The destinations document (JSON), see README 'Configuration'."),
    "KEY_VAULT_URL": (True, "https://<vault>.vault.azure.net/ holding the SendGrid API key secrets."),
    "AZURE_CLIENT_ID": (True, "Client ID of the user-assigned managed identity (Key Vault, storage)."),
    "SENDGRID_BASE_URL": (False, "SendGrid API base URL; default https://api.sendgrid.com."),
    "SENDGRID_EU_BASE_URL": (
        False, "Base URL for destinations with region 'eu'; default https://api.eu.sendgrid.com, or "
               "SENDGRID_BASE_URL when that names another host than SendGrid's global API (the simulator)."),
    "ERASURE_KEY_SECRET": (
        False, "Key Vault secret NAME holding the key of the do-not-export set's HMAC digests; default "
               "erasure-hmac-key (locally without KEY_VAULT_URL: LOCAL_DEV_SENDGRID_API_KEY)."),
    "REFRESH_SCHEDULE": (True, "NCRONTAB (6 fields, UTC) of the scheduled refresh, e.g. '0 0 6 * * *'."),
    "LOCAL_DEV_SENDGRID_API_KEY": (
        False,
        "Development only: the API key when KEY_VAULT_URL is unset. Logged loudly; never in Azure.",
    ),
}

DEFAULT_SENDGRID_BASE_URL = "https://api.sendgrid.com"
EU_SENDGRID_BASE_URL = "https://api.eu.sendgrid.com"
DEFAULT_ERASURE_KEY_SECRET = "erasure-hmac-key"  # noqa: S105 - a secret NAME, not a value


def _eu_base_url() -> str:
    """SENDGRID_EU_BASE_URL; else SENDGRID_BASE_URL when it points elsewhere than SendGrid's global API (the
    simulator serves both regions); else the EU API. The deployment sets SENDGRID_BASE_URL to the global
    URL, and an EU subuser's key is refused there."""
    overridden = (setting("SENDGRID_BASE_URL") or DEFAULT_SENDGRID_BASE_URL).rstrip("/")
    default = EU_SENDGRID_BASE_URL if overridden == DEFAULT_SENDGRID_BASE_URL else overridden
    return (setting("SENDGRID_EU_BASE_URL") or default).rstrip("/")


def setting(name: str, default: str | None = None) -> str | None:
    """Read one app setting; the name must be declared in APP_SETTINGS so none goes undocumented."""
    if name not in APP_SETTINGS:
        raise KeyError(f"undeclared app setting {name!r}: add it to shared.config.settings.APP_SETTINGS")
    value = os.environ.get(name)
    return value if value not in (None, "") else default


@dataclass(frozen=True)
class AppSettings:
    segments_container: str
    runs_container: str
    sendgrid_base_url: str
    key_vault_url: str | None
    azure_client_id: str | None
    sendgrid_eu_base_url: str = EU_SENDGRID_BASE_URL
    erasure_key_secret: str = DEFAULT_ERASURE_KEY_SECRET

    def base_url_for(self, region: str) -> str:
        """The SendGrid base URL of a destination's region (SENDGRID_EU_BASE_URL overrides the EU one)."""
        return self.sendgrid_eu_base_url if region == "eu" else self.sendgrid_base_url

    @classmethod
    def from_environment(cls) -> AppSettings:
        return cls(
            segments_container=setting("SEGMENTS_CONTAINER", "segments") or "segments",
            runs_container=setting("RUNS_CONTAINER", "export-runs") or "export-runs",
            sendgrid_base_url=(setting("SENDGRID_BASE_URL", DEFAULT_SENDGRID_BASE_URL)
                               or DEFAULT_SENDGRID_BASE_URL).rstrip("/"),
            key_vault_url=setting("KEY_VAULT_URL"),
            azure_client_id=setting("AZURE_CLIENT_ID"),
            sendgrid_eu_base_url=_eu_base_url(),
            erasure_key_secret=setting("ERASURE_KEY_SECRET") or DEFAULT_ERASURE_KEY_SECRET,
        )
