"""ApiKeyProvider against a real SecretClient over HTTPS (tests/keyvault_standin.py), not a mocked SDK."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

from shared.config.secrets import ApiKeyProvider
from shared.errors import ConfigurationError, SecretUnavailable
from tests.keyvault_standin import (
    KEY_VAULT_RESOURCE,
    TENANT_ID,
    KeyVaultStandIn,
    StaticTokenCredential,
)

API_KEY = "SG.live-key-1.abcdefghijklmnopqrstuvwxyz0123456789"
ROTATED_KEY = "SG.live-key-2.ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210"
DEV_KEY = "SG.dev-only-key.0123456789abcdefghij"
SECRET = "sendgrid-api-key"


def provider_for(vault: KeyVaultStandIn, credential: object | None = None,
                 dev_fallback: str | None = None) -> ApiKeyProvider:
    return ApiKeyProvider(vault.url, credential=credential or vault.credential,  # type: ignore[arg-type]
                          dev_fallback=dev_fallback, client_kwargs=vault.client_kwargs)


@pytest.fixture(autouse=True)
def _capture_everything(caplog: pytest.LogCaptureFixture) -> None:
    """Capture every logger (the SDK's too) at DEBUG, so the no-leak assertions see all of it."""
    caplog.set_level(logging.DEBUG)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("KEY_VAULT_URL", "AZURE_CLIENT_ID", "LOCAL_DEV_SENDGRID_API_KEY", "IDENTITY_ENDPOINT",
                 "IDENTITY_HEADER", "WEBSITE_INSTANCE_ID"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def assert_no_leak(text: str, *values: str) -> None:
    for value in values or (API_KEY, ROTATED_KEY, DEV_KEY):
        assert value not in text


# -- reading from the vault -------------------------------------------------------------------------------

def test_get_runs_the_key_vault_challenge_flow_and_returns_the_value(
        keyvault: KeyVaultStandIn, caplog: pytest.LogCaptureFixture) -> None:
    keyvault.set_secret(SECRET, API_KEY)
    keys = provider_for(keyvault)

    assert keys.get(SECRET) == API_KEY

    first, second = keyvault.requests
    assert (first.authorization, first.status) == (None, 401)  # the SDK's challenge probe
    assert (second.authorization, second.status) == ("Bearer standin-access-token", 200)
    assert second.path == f"/secrets/{SECRET}/" and second.query["api-version"]
    # The scope and tenant the credential was asked for came from the 401 challenge.
    assert keyvault.credential.calls == [((f"{KEY_VAULT_RESOURCE}/.default",), TENANT_ID)]
    assert_no_leak(caplog.text)
    assert_no_leak(repr(keys))


def test_second_get_is_served_from_the_cache(keyvault: KeyVaultStandIn) -> None:
    keyvault.set_secret(SECRET, API_KEY)
    keys = provider_for(keyvault)
    keys.get(SECRET)
    sent = len(keyvault.requests)

    assert keys.get(SECRET) == API_KEY
    assert len(keyvault.requests) == sent


def test_refresh_after_rotation_returns_the_new_value(keyvault: KeyVaultStandIn,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    keyvault.set_secret(SECRET, API_KEY)
    keys = provider_for(keyvault)
    assert keys.get(SECRET) == API_KEY

    keyvault.set_secret(SECRET, ROTATED_KEY)
    assert keys.get(SECRET) == API_KEY  # still cached: rotation is seen only on refresh
    assert keys.refresh(SECRET) == ROTATED_KEY
    assert keys.get(SECRET) == ROTATED_KEY
    assert len(keyvault.secret_reads()) == 2
    assert "value changed" in caplog.text
    assert_no_leak(caplog.text)


def test_each_secret_name_is_read_and_cached_separately(keyvault: KeyVaultStandIn) -> None:
    keyvault.set_secret("account-a", API_KEY)
    keyvault.set_secret("account-b", ROTATED_KEY)
    keys = provider_for(keyvault)

    assert (keys.get("account-a"), keys.get("account-b")) == (API_KEY, ROTATED_KEY)
    assert [r.path for r in keyvault.secret_reads()] == ["/secrets/account-a/", "/secrets/account-b/"]


def test_concurrent_gets_read_the_vault_once(keyvault: KeyVaultStandIn) -> None:
    keyvault.set_secret(SECRET, API_KEY)
    keyvault.set_latency(0.2)
    keys = provider_for(keyvault)
    start = threading.Barrier(8)
    results: list[str] = []

    def worker() -> None:
        start.wait()
        results.append(keys.get(SECRET))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)

    assert results == [API_KEY] * 8
    assert len(keyvault.secret_reads()) == 1


def test_concurrent_refreshes_after_one_401_coalesce(keyvault: KeyVaultStandIn) -> None:
    keyvault.set_secret(SECRET, API_KEY)
    keys = provider_for(keyvault)
    keys.get(SECRET)
    keyvault.set_secret(SECRET, ROTATED_KEY)
    keyvault.set_latency(0.2)
    start = threading.Barrier(6)
    results: list[str] = []

    def worker() -> None:
        start.wait()
        results.append(keys.refresh(SECRET))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)

    assert results == [ROTATED_KEY] * 6
    assert len(keyvault.secret_reads()) == 2  # the first get, then one re-read for all six workers


# -- failures say what to fix, never the value -------------------------------------------------------------

def test_unknown_secret_names_the_secret_and_the_vault(keyvault: KeyVaultStandIn,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    keyvault.set_secret(SECRET, API_KEY)
    keys = provider_for(keyvault)
    assert keys.get(SECRET) == API_KEY

    with pytest.raises(SecretUnavailable) as caught:
        keys.get("no-such-secret")

    message = str(caught.value)
    assert "no-such-secret" in message and keyvault.url in message and "not found" in message
    assert keyvault.requests[-1].status == 404
    assert_no_leak(message)
    assert_no_leak(caplog.text)

    keyvault.set_secret("no-such-secret", ROTATED_KEY)  # a failure is not cached
    assert keys.get("no-such-secret") == ROTATED_KEY


def test_token_the_vault_refuses_says_to_grant_secrets_user(keyvault: KeyVaultStandIn,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    keyvault.set_secret(SECRET, API_KEY)
    keys = provider_for(keyvault, credential=StaticTokenCredential("token-for-another-identity"))

    with pytest.raises(SecretUnavailable) as caught:
        keys.get(SECRET)

    message = str(caught.value)
    assert "grant the app's identity Key Vault Secrets User on the vault" in message
    assert SECRET in message and keyvault.url in message
    assert keyvault.requests[-1].status == 403
    assert_no_leak(message)
    assert_no_leak(caplog.text)


def test_identity_that_cannot_get_a_token_is_not_reported_as_a_vault_problem(
        keyvault: KeyVaultStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real ManagedIdentityCredential whose identity endpoint is down (as when no identity is assigned)."""
    keyvault.set_secret(SECRET, API_KEY)
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"http://127.0.0.1:{_closed_port()}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", "standin")
    credential = ManagedIdentityCredential(client_id="00000000-0000-0000-0000-0000000000c1", retry_total=0)
    keys = provider_for(keyvault, credential=credential)

    with pytest.raises(SecretUnavailable) as caught:
        keys.get(SECRET)

    message = str(caught.value)
    assert "could not get a token" in message and "AZURE_CLIENT_ID" in message
    assert "unreachable" not in message
    assert keyvault.secret_reads() == []  # the vault never saw a token


@pytest.mark.parametrize("mode", ["503", "close"])
def test_unavailable_vault_fails_fast_with_secret_unavailable(keyvault: KeyVaultStandIn, mode: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    keyvault.set_secret(SECRET, API_KEY)
    keyvault.set_unavailable(True, mode=mode)  # type: ignore[arg-type]
    keys = provider_for(keyvault)

    started = time.monotonic()
    with pytest.raises(SecretUnavailable) as caught:
        keys.get(SECRET)

    assert time.monotonic() - started < 5
    assert len(keyvault.requests) == 2  # retry_total=1: one try, one retry
    message = str(caught.value)
    assert SECRET in message and keyvault.url in message
    assert ("unavailable (HTTP 503)" if mode == "503" else "unreachable") in message
    assert_no_leak(caplog.text)

    keyvault.set_unavailable(False)  # back up: the next call reads it (failures are not cached)
    assert keys.get(SECRET) == API_KEY


def test_unreachable_vault(keyvault: KeyVaultStandIn) -> None:
    keys = ApiKeyProvider(f"https://127.0.0.1:{_closed_port()}/", credential=keyvault.credential,  # type: ignore[arg-type]
                          client_kwargs=keyvault.client_kwargs)
    with pytest.raises(SecretUnavailable, match="vault unreachable"):
        keys.get(SECRET)


def test_failed_refresh_drops_the_stale_key(keyvault: KeyVaultStandIn) -> None:
    """After a 401 the cached key is known bad: a refresh that fails must not leave it in the cache."""
    keyvault.set_secret(SECRET, API_KEY)
    keys = provider_for(keyvault)
    keys.get(SECRET)
    keyvault.set_unavailable(True)

    with pytest.raises(SecretUnavailable):
        keys.refresh(SECRET)
    with pytest.raises(SecretUnavailable):
        keys.get(SECRET)

    keyvault.set_unavailable(False)
    keyvault.set_secret(SECRET, ROTATED_KEY)
    assert keys.get(SECRET) == ROTATED_KEY


def test_empty_secret_is_rejected(keyvault: KeyVaultStandIn) -> None:
    keyvault.set_secret(SECRET, "  ")
    with pytest.raises(SecretUnavailable, match="is empty"):
        provider_for(keyvault).get(SECRET)


def test_key_stored_with_a_trailing_newline_is_used_without_it(keyvault: KeyVaultStandIn) -> None:
    keyvault.set_secret(SECRET, f"{API_KEY}\n")  # what `az keyvault secret set --file key.txt` stores
    assert provider_for(keyvault).get(SECRET) == API_KEY


@pytest.mark.parametrize("value", [f"{API_KEY[:8]} {API_KEY[8:]}", f"{API_KEY}\r\nX-Injected: 1",
                                   f"{API_KEY}é"])
def test_key_that_cannot_go_into_a_header_is_refused_without_its_value(keyvault: KeyVaultStandIn,
                                                                        value: str) -> None:
    keyvault.set_secret(SECRET, value)
    with pytest.raises(SecretUnavailable, match="not a usable SendGrid API key") as caught:
        provider_for(keyvault).get(SECRET)
    assert_no_leak(str(caught.value), value, API_KEY[8:])


def test_invalid_secret_name_is_a_configuration_error(keyvault: KeyVaultStandIn) -> None:
    with pytest.raises(ConfigurationError, match="api_key_secret"):
        provider_for(keyvault).get("../keys/other")
    assert keyvault.requests == []


def test_sdk_network_logging_cannot_be_switched_on(keyvault: KeyVaultStandIn) -> None:
    with pytest.raises(ConfigurationError, match="logging_enable"):
        ApiKeyProvider(keyvault.url, credential=keyvault.credential,  # type: ignore[arg-type]
                       client_kwargs={**keyvault.client_kwargs, "logging_enable": True})


def test_value_never_in_logs_exceptions_or_reprs(keyvault: KeyVaultStandIn, caplog: pytest.LogCaptureFixture) -> None:
    """The whole life of a key: read, rotate, refresh, failures; the values appear nowhere but the return."""
    keyvault.set_secret(SECRET, API_KEY)
    keys = provider_for(keyvault)
    errors: list[BaseException] = []
    keys.get(SECRET)
    keyvault.set_secret(SECRET, ROTATED_KEY)
    keys.refresh(SECRET)
    for action in (lambda: keys.get("missing"),
                   lambda: provider_for(keyvault, StaticTokenCredential("bad")).get(SECRET)):
        try:
            action()
        except SecretUnavailable as exc:
            errors.append(exc)
    keyvault.set_unavailable(True)
    try:
        keys.refresh(SECRET)
    except SecretUnavailable as exc:
        errors.append(exc)

    assert len(errors) == 3
    for exc in errors:
        chain: BaseException | None = exc
        while chain is not None:  # the SDK exceptions chained as causes too
            assert_no_leak(str(chain))
            assert_no_leak(repr(chain))
            chain = chain.__cause__
    assert_no_leak(caplog.text)
    assert_no_leak(repr(keys))


# -- settings and the development fallback ---------------------------------------------------------------

def test_dev_fallback_used_only_without_a_vault_and_logged_loudly(clean_env: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    clean_env.setenv("LOCAL_DEV_SENDGRID_API_KEY", DEV_KEY)

    keys = ApiKeyProvider.from_settings()

    assert keys.uses_dev_fallback and keys.vault_url is None
    assert keys.get(SECRET) == DEV_KEY
    assert keys.get("any-other-secret") == DEV_KEY
    assert keys.refresh(SECRET) == DEV_KEY
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "shared.config.secrets"]
    assert len(warnings) == 1
    assert "LOCAL_DEV_SENDGRID_API_KEY" in warnings[0].getMessage()
    assert "DEVELOPMENT ONLY" in warnings[0].getMessage()
    assert_no_leak(caplog.text)
    assert_no_leak(repr(keys))


def test_dev_fallback_ignored_when_a_vault_is_set(keyvault: KeyVaultStandIn, clean_env: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    keyvault.set_secret(SECRET, API_KEY)
    clean_env.setenv("KEY_VAULT_URL", keyvault.url)
    clean_env.setenv("LOCAL_DEV_SENDGRID_API_KEY", DEV_KEY)

    from_settings = ApiKeyProvider.from_settings()
    assert not from_settings.uses_dev_fallback and from_settings.vault_url == keyvault.url
    assert "LOCAL_DEV_SENDGRID_API_KEY is set but ignored" in caplog.text

    keys = provider_for(keyvault, dev_fallback=DEV_KEY)  # same rule in the constructor, read for real
    assert keys.get(SECRET) == API_KEY
    assert_no_leak(caplog.text)


def test_no_vault_and_no_fallback_says_to_set_key_vault_url(clean_env: pytest.MonkeyPatch) -> None:
    keys = ApiKeyProvider.from_settings()
    with pytest.raises(SecretUnavailable, match="KEY_VAULT_URL is not set"):
        keys.get(SECRET)


@pytest.mark.parametrize("setting", ["LOCAL_DEV_SENDGRID_API_KEY", "KEY_VAULT_URL"])
def test_unresolved_key_vault_reference_is_rejected(clean_env: pytest.MonkeyPatch, setting: str) -> None:
    reference = "@Microsoft.KeyVault(SecretUri=https://kv-prod.vault.azure.net/secrets/sendgrid-api-key/)"
    clean_env.setenv(setting, reference)

    with pytest.raises(ConfigurationError) as caught:
        ApiKeyProvider.from_settings()

    assert caught.value.field == setting
    assert "unresolved Key Vault reference" in str(caught.value)


def test_vault_url_must_be_https(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("KEY_VAULT_URL", "http://kv-prod.vault.azure.net/")
    with pytest.raises(ConfigurationError, match="KEY_VAULT_URL"):
        ApiKeyProvider.from_settings()


def test_credential_choice(clean_env: pytest.MonkeyPatch) -> None:
    """Managed identity in Azure when a client ID is set; DefaultAzureCredential elsewhere (az login)."""
    clean_env.setenv("KEY_VAULT_URL", "https://kv-prod.vault.azure.net/")
    clean_env.setenv("AZURE_CLIENT_ID", "00000000-0000-0000-0000-0000000000c1")
    assert isinstance(ApiKeyProvider.from_settings()._credential, DefaultAzureCredential)

    clean_env.setenv("IDENTITY_ENDPOINT", "http://127.0.0.1:41234/msi/token")
    clean_env.setenv("IDENTITY_HEADER", "standin")
    assert isinstance(ApiKeyProvider.from_settings()._credential, ManagedIdentityCredential)


def _closed_port() -> int:
    """A port nothing listens on (bound then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

