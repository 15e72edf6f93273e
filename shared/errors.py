"""Exceptions that carry what the caller needs to act on them, and never a secret or personal data."""

from __future__ import annotations


class ExportError(Exception):
    """Base class: every failure the engine reports to an operator."""


class ConfigurationError(ExportError):
    """The app settings or the destination configuration are wrong; `field` names what to fix."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class SegmentFileError(ExportError):
    """A segment file cannot be read at all (as opposed to one bad row, which is rejected)."""

    def __init__(self, source: str, reason: str, *, row: int | None = None) -> None:
        self.source = source
        self.row = row
        self.reason = reason
        where = f"{source}, row {row}" if row is not None else source
        super().__init__(f"{where}: {reason}")


class ProfileCapExceeded(ExportError):
    """The segment holds more profiles than the destination allows; nothing was sent."""

    def __init__(self, count: int, cap: int) -> None:
        self.count = count
        self.cap = cap
        super().__init__(
            f"segment has at least {count} valid profiles, over this destination's cap of {cap}; "
            "nothing was sent (raise max_profiles or split the segment)"
        )


class SendGridError(ExportError):
    """SendGrid refused a request; `status` and `hint` say what to fix. Never includes the API key."""

    def __init__(self, message: str, *, status: int | None = None, hint: str = "",
                 errors: list[dict[str, str]] | None = None) -> None:
        self.status = status
        self.hint = hint
        self.errors = errors or []
        text = message if not hint else f"{message} ({hint})"
        super().__init__(text)


class AuthenticationError(SendGridError):
    """401: the API key is wrong, expired or revoked (re-read it from Key Vault once, then give up)."""


class PermissionDenied(SendGridError):
    """403: the API key lacks the Marketing scopes this app needs."""


class NotFound(SendGridError):
    """404: an unknown list ID, import job or contact."""


class InvalidRequest(SendGridError):
    """400: SendGrid rejected the body; `errors` holds its field/message pairs."""


class RateLimitExhausted(SendGridError):
    """429s went on past the client's wait budget."""


class TransientFailure(SendGridError):
    """5xx, timeouts or dropped connections went on past the retry budget; the batch was not accepted."""


class SecretUnavailable(ExportError):
    """The SendGrid API key could not be read from Key Vault (or the dev fallback)."""
