"""What the Key Vault client is given: the app's credential, guarded so its errors say what to fix, and
checks of the values the platform hands over (an unresolved Key Vault reference, a malformed key).
"""

from __future__ import annotations

import os
import re
from typing import Any, cast

from azure.core.credentials import AccessToken, AccessTokenInfo, SupportsTokenInfo, TokenCredential, TokenRequestOptions
from azure.core.exceptions import ClientAuthenticationError

from shared.errors import ConfigurationError, SecretUnavailable

# What an app setting holds when App Service could not resolve a Key Vault reference.
UNRESOLVED_REFERENCE_PREFIX = "@Microsoft.KeyVault("

def running_in_azure() -> bool:
    """True on an App Service / Functions instance with a managed identity endpoint.

    These are platform-provided environment variables, not app settings, so they are read directly.
    """
    return bool(os.environ.get("IDENTITY_ENDPOINT") or os.environ.get("WEBSITE_INSTANCE_ID"))


_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")  # printable ASCII without spaces: what a bearer token can hold


def usable_api_key(value: str, where: str) -> str:
    """The key without surrounding whitespace (`az keyvault secret set --file` keeps a trailing newline).

    A key with a control or non-ASCII character inside cannot go into an HTTP header, and httpx's error for it
    quotes the whole header: refuse it here with a message that never contains the value.
    """
    key = value.strip()
    if not _HEADER_SAFE.fullmatch(key):
        raise SecretUnavailable(f"{where} is not a usable SendGrid API key: it contains spaces, control or "
                                "non-ASCII characters; store the key alone, as SendGrid showed it")
    return key


def reject_unresolved_reference(name: str, value: str | None) -> None:
    if value is not None and value.strip().startswith(UNRESOLVED_REFERENCE_PREFIX):
        raise ConfigurationError(
            "holds an unresolved Key Vault reference (@Microsoft.KeyVault(...)): App Service could not read "
            "the secret. Check the reference's SecretUri and that the app's identity may read the vault "
            "(Key Vault Secrets User), or set KEY_VAULT_URL and let the app read the secret itself",
            field=name,
        )


class TokenUnavailable(ClientAuthenticationError):
    """The credential failed (not the vault): raised through the SDK pipeline so the two can be told apart."""


class _CredentialGuard:
    """Wraps the credential so a failure to get a token is not mistaken for a vault failure.

    Without it, an unreachable identity endpoint surfaces as the same ServiceRequestError as an
    unreachable vault, and the operator would be sent to check the vault's network rules.
    """

    def __init__(self, inner: TokenCredential) -> None:
        self._inner = inner

    def get_token(self, *scopes: str, claims: str | None = None, tenant_id: str | None = None,
                  enable_cae: bool = False, **kwargs: Any) -> AccessToken:
        try:
            return self._inner.get_token(*scopes, claims=claims, tenant_id=tenant_id, enable_cae=enable_cae,
                                         **kwargs)
        except Exception as exc:
            raise TokenUnavailable(type(exc).__name__) from exc


class _TokenInfoCredentialGuard(_CredentialGuard):
    """The same for credentials with `get_token_info`, which the SDK prefers when it exists."""

    def get_token_info(self, *scopes: str, options: TokenRequestOptions | None = None) -> AccessTokenInfo:
        try:
            return cast(SupportsTokenInfo, self._inner).get_token_info(*scopes, options=options)
        except Exception as exc:
            raise TokenUnavailable(type(exc).__name__) from exc


def guard_credential(credential: TokenCredential) -> TokenCredential:
    if hasattr(credential, "get_token_info"):
        return _TokenInfoCredentialGuard(credential)
    return _CredentialGuard(credential)
