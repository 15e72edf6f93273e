"""The app's own exceptions: each carries what the caller needs to act on it, never a secret or personal data.

Grouped by what the caller does (a bad row is no exception: it is rejected, with its reason, in the report):

    ExportError                  the run cannot go on; its report says `failed` (or `refused`) and why
    ├── terminal: fix the configuration or the file, then run again
    │   ├── ConfigurationError   app settings or the destinations document (`field` names what)
    │   ├── SegmentFileError     a file that cannot be read at all (file, row, reason)
    │   │   └── EmptyFileError   (shared.source.readers.decoding) an empty file
    │   ├── ProfileCapExceeded   more profiles than `max_profiles`
    │   └── SendGridRefused      SendGrid refused what the run needs first (key, scope, list)
    ├── either: SecretUnavailable  Key Vault unreachable (transient) or the secret missing (terminal)
    └── RunRefused / RequestRejected (shared.service): the run would leave the list wrong; nothing was sent

Elsewhere, each where it is raised: shared.sendgrid.errors (SendGrid's answers: terminal, skippable or
transient), shared.state.lock (LockLost, DestinationBusy: another run holds the destination, retry later).
"""

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


class SendGridRefused(ExportError):
    """What a run needs from SendGrid before it sends anything was refused (a bad key, a missing scope, no
    such list): `cause` is the shared.sendgrid.errors exception, whose message this carries."""


class SecretUnavailable(ExportError):
    """The SendGrid API key could not be read from Key Vault (or the dev fallback)."""
