"""The SendGrid API keys, read from Azure Key Vault by secret name.

Why a provider rather than a Key Vault reference app setting: a destination names its own secret
(`api_key_secret`), so one app can hold several SendGrid accounts; a key rotated in the vault is picked up
by `refresh()` (called once after SendGrid answers 401) without restarting the app.

Secret values never enter a log record, an exception message or a repr: errors say what to fix and name
the secret and the vault, nothing more.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from azure.core.credentials import (
    TokenCredential,
)
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.identity import CredentialUnavailableError, DefaultAzureCredential, ManagedIdentityCredential
from azure.keyvault.secrets import SecretClient

from shared.config.credentials import (
    TokenUnavailable,
    guard_credential,
    reject_unresolved_reference,
    running_in_azure,
    usable_api_key,
)
from shared.config.settings import setting
from shared.config.time_budgets import KEY_VAULT_CLIENT_OPTIONS
from shared.errors import ConfigurationError, SecretUnavailable

log = logging.getLogger(__name__)

# Key Vault object names: 1-127 alphanumerics and dashes. Checked here so a typo in the destinations
# document gives a clear error instead of an odd URL.
_SECRET_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")

GRANT_HINT = (
    "grant the app's identity Key Vault Secrets User on the vault "
    "(role 4633458b-17de-408a-b874-0445c86b69e6; on a vault using access policies: the 'get' secret permission)"
)


class ApiKeyProvider:
    """Reads SendGrid API keys (by Key Vault secret name), caches them for the process, re-reads on demand.

    Thread-safe: concurrent `get`s of one name read the vault once, and concurrent `refresh`es after the
    same 401 coalesce into one re-read. The SecretClient (and its connection pool) is created on first
    use, never at import time, so a missing setting cannot stop the Functions host from loading.
    """

    def __init__(
        self,
        vault_url: str | None,
        *,
        credential: TokenCredential | None = None,
        dev_fallback: str | None = None,
        client_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self._vault_url = vault_url.strip() if vault_url else None
        self._credential = credential
        self._client_kwargs: dict[str, Any] = dict(client_kwargs or {})
        if self._client_kwargs.get("logging_enable"):
            # The SDK's network trace logs response bodies, i.e. the secret value.
            raise ConfigurationError("logging_enable would log secret values; remove it", field="client_kwargs")
        self._client: SecretClient | None = None
        self._lock = threading.Lock()
        self._name_locks: dict[str, threading.Lock] = {}
        # secret name -> (value, generation); the generation lets concurrent refreshes coalesce.
        self._cache: dict[str, tuple[str, int]] = {}
        self._generation = 0

        if self._vault_url:
            parsed = urlparse(self._vault_url)
            if parsed.scheme != "https" or not parsed.hostname:
                raise ConfigurationError(
                    "must be the vault's https URL, e.g. https://<vault-name>.vault.azure.net/", field="KEY_VAULT_URL"
                )
            self._dev_fallback: str | None = None
            if dev_fallback:
                log.warning(
                    "LOCAL_DEV_SENDGRID_API_KEY is set but ignored because KEY_VAULT_URL is set; "
                    "API keys are read from Key Vault %s. Remove LOCAL_DEV_SENDGRID_API_KEY from the settings.",
                    self._vault_url,
                )
        else:
            self._dev_fallback = dev_fallback or None
            if self._dev_fallback:
                log.warning(
                    "!!! DEVELOPMENT ONLY: KEY_VAULT_URL is not set; using LOCAL_DEV_SENDGRID_API_KEY as the "
                    "SendGrid API key for every destination. Never deploy this configuration. !!!"
                )

    @classmethod
    def from_settings(cls) -> ApiKeyProvider:
        """Build from KEY_VAULT_URL / AZURE_CLIENT_ID / LOCAL_DEV_SENDGRID_API_KEY.

        In Azure with AZURE_CLIENT_ID: ManagedIdentityCredential for that user-assigned identity, so a
        failure names the identity rather than a chain of developer credentials. Elsewhere:
        DefaultAzureCredential (az login, VS Code, environment), still preferring that identity if set.
        """
        vault_url = setting("KEY_VAULT_URL")
        client_id = setting("AZURE_CLIENT_ID")
        dev_fallback = setting("LOCAL_DEV_SENDGRID_API_KEY")
        for name, value in (("KEY_VAULT_URL", vault_url), ("AZURE_CLIENT_ID", client_id),
                            ("LOCAL_DEV_SENDGRID_API_KEY", dev_fallback)):
            reject_unresolved_reference(name, value)

        credential: TokenCredential | None = None
        if vault_url:
            if client_id and running_in_azure():
                credential = ManagedIdentityCredential(client_id=client_id)
            else:
                credential = DefaultAzureCredential(managed_identity_client_id=client_id)
        return cls(vault_url, credential=credential, dev_fallback=dev_fallback)

    @property
    def vault_url(self) -> str | None:
        return self._vault_url

    @property
    def uses_dev_fallback(self) -> bool:
        return self._vault_url is None and self._dev_fallback is not None

    def __repr__(self) -> str:
        source = self._vault_url or ("dev fallback" if self._dev_fallback else "unconfigured")
        return f"ApiKeyProvider({source}, cached={sorted(self._cache)})"

    def get(self, secret_name: str) -> str:
        """The key held in `secret_name`, read from the vault on first use and cached for the process."""
        self._check_name(secret_name)
        with self._lock:
            cached = self._cache.get(secret_name)
            if cached is not None:
                return cached[0]
            name_lock = self._name_lock(secret_name)
        with name_lock:
            with self._lock:
                cached = self._cache.get(secret_name)
            if cached is not None:  # another thread read it while this one waited
                return cached[0]
            return self._read_and_store(secret_name)

    def refresh(self, secret_name: str) -> str:
        """Drop the cached key and read it again (after SendGrid answered 401: the key may have been rotated)."""
        self._check_name(secret_name)
        with self._lock:
            seen = self._cache.get(secret_name)
            name_lock = self._name_lock(secret_name)
        with name_lock:
            with self._lock:
                current = self._cache.get(secret_name)
            if current is not None and (seen is None or current[1] != seen[1]):
                # Another thread re-read it after this caller last looked: that value is fresh.
                return current[0]
            with self._lock:
                self._cache.pop(secret_name, None)
            value = self._read_and_store(secret_name)
            log.info("re-read secret %r from %s (%s)", secret_name, self._source(),
                     "value changed" if seen is None or seen[0] != value else "value unchanged")
            return value

    def close(self) -> None:
        """Close the SecretClient's connections (tests, CLI); the provider reconnects if used again."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- internals -------------------------------------------------------------------------------------

    def _source(self) -> str:
        return f"Key Vault {self._vault_url}" if self._vault_url else "LOCAL_DEV_SENDGRID_API_KEY"

    def _name_lock(self, secret_name: str) -> threading.Lock:
        # Caller holds self._lock.
        return self._name_locks.setdefault(secret_name, threading.Lock())

    @staticmethod
    def _check_name(secret_name: str) -> None:
        if not isinstance(secret_name, str) or not _SECRET_NAME.match(secret_name):
            raise ConfigurationError(
                f"{secret_name!r} is not a Key Vault secret name (1-127 letters, digits and dashes)",
                field="api_key_secret",
            )

    def _read_and_store(self, secret_name: str) -> str:
        value = self._read(secret_name)
        with self._lock:
            self._generation += 1
            self._cache[secret_name] = (value, self._generation)
        return value

    def _secret_client(self) -> SecretClient:
        with self._lock:
            if self._client is None:
                assert self._vault_url is not None
                credential = self._credential
                if credential is None:
                    credential = self._credential = DefaultAzureCredential()
                # Bounded retries and timeouts (the SDK's are minutes); a caller's own kwargs win.
                self._client = SecretClient(self._vault_url, guard_credential(credential),
                                            **{**KEY_VAULT_CLIENT_OPTIONS, **self._client_kwargs})
            return self._client

    def _read(self, secret_name: str) -> str:
        if self._vault_url is None:
            if self._dev_fallback is None:
                raise SecretUnavailable(
                    f"cannot read secret {secret_name!r}: KEY_VAULT_URL is not set "
                    "(set it to https://<vault-name>.vault.azure.net/; for local development only, "
                    "LOCAL_DEV_SENDGRID_API_KEY)"
                )
            return usable_api_key(self._dev_fallback, "LOCAL_DEV_SENDGRID_API_KEY")

        try:
            secret = self._secret_client().get_secret(secret_name)
        except Exception as exc:
            raise self._explain(secret_name, exc) from exc
        if secret.value is None or not secret.value.strip():
            raise SecretUnavailable(
                f"secret {secret_name!r} in Key Vault {self._vault_url} is empty: set the SendGrid API key as "
                "its value"
            )
        version = secret.properties.version or "?"
        log.info("read secret %r (version %s) from Key Vault %s", secret_name, version, self._vault_url)
        return usable_api_key(secret.value, f"secret {secret_name!r} in Key Vault {self._vault_url}")

    def _explain(self, secret_name: str, exc: Exception) -> SecretUnavailable:
        """Turn an SDK failure into a message that says what to fix; built from fixed text, never the SDK's."""
        vault = self._vault_url
        what = f"cannot read secret {secret_name!r} from Key Vault {vault}"
        if isinstance(exc, ResourceNotFoundError):
            return SecretUnavailable(
                f"{what}: secret not found. Create it (az keyvault secret set --vault-name <vault> "
                f"--name {secret_name} --value <key>) or fix the destination's api_key_secret"
            )
        credential_error = exc.__cause__ if isinstance(exc, TokenUnavailable) else None
        if isinstance(credential_error, CredentialUnavailableError):
            return SecretUnavailable(
                f"{what}: no Azure credential available. In Azure, assign the user-assigned managed identity "
                "to the app and set AZURE_CLIENT_ID to its client ID; locally, sign in with `az login`"
            )
        if isinstance(exc, TokenUnavailable):
            return SecretUnavailable(
                f"{what}: the app's credential could not get a token for Key Vault "
                f"({type(credential_error).__name__}). Check the managed identity (AZURE_CLIENT_ID is its "
                "client ID, the identity is assigned to the app) or, locally, `az login`"
            )
        if isinstance(exc, ClientAuthenticationError):
            return SecretUnavailable(
                f"{what}: the vault rejected the app's token (HTTP {exc.status_code}). Check that the "
                "identity belongs to the vault's tenant and that AZURE_CLIENT_ID is the identity's client ID"
            )
        if isinstance(exc, HttpResponseError) and exc.status_code == 403:
            code = getattr(getattr(exc, "error", None), "code", None)
            text = str(getattr(exc, "message", "") or "")
            if "disabled" in text.lower() or code == "SecretDisabled":
                return SecretUnavailable(f"{what}: the secret is disabled (403); enable it or add a new version")
            return SecretUnavailable(f"{what}: access denied (403); {GRANT_HINT}")
        if isinstance(exc, ServiceRequestError | ServiceResponseError):
            return SecretUnavailable(
                f"{what}: vault unreachable ({type(exc).__name__}). Check KEY_VAULT_URL, DNS, and the vault's "
                "network rules / private endpoint for this app"
            )
        if isinstance(exc, HttpResponseError) and exc.status_code is not None and (
                exc.status_code >= 500 or exc.status_code == 429):
            return SecretUnavailable(
                f"{what}: vault unavailable (HTTP {exc.status_code}) after retries; try again later"
            )
        if isinstance(exc, HttpResponseError):
            return SecretUnavailable(f"{what}: Key Vault answered HTTP {exc.status_code}")
        if isinstance(exc, ValueError) and "challenge" in str(exc):
            return SecretUnavailable(
                f"{what}: the server's authentication challenge is not for this vault's domain; "
                "KEY_VAULT_URL must be a Key Vault URL (https://<vault-name>.vault.azure.net/)"
            )
        return SecretUnavailable(f"{what}: {type(exc).__name__}")
