"""How long one call to storage, Key Vault or SendGrid may take, at most: the SDK defaults are minutes.

azure-storage-blob retries 3 times with 15 s x 3^n backoff and waits 60 s for a read; Key Vault (azure-core)
retries 10 times with backoff up to 120 s. One such call can outlive the destination's 60 s lease and the
230 s an HTTP answer may take. These options, passed to the SDKs' own clients and calls, bound them; the
README's "Time budgets" table repeats the worst cases.
"""

from __future__ import annotations

from typing import Any

from azure.storage.blob import ExponentialRetry

# Every storage call of the app (run state, listings, reports, segment downloads chunk by chunk):
# 3 attempts, 1 s then 3 s apart (+ jitter), 5 s to connect, 20 s per read: worst case about 80 s.
STORAGE_CLIENT_OPTIONS: dict[str, Any] = {"connection_timeout": 5, "read_timeout": 20}


def storage_retry() -> ExponentialRetry:
    return ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=2, random_jitter_range=1)


# The HTTP functions' storage calls (listings, a report, a queued marker, a dry run's reads): the host cuts an
# answer at 230 s, and a person is waiting. 2 attempts 1 s apart, 3 s to connect, 10 s per read: about 27 s.
ANSWER_STORAGE_OPTIONS: dict[str, Any] = {"connection_timeout": 3, "read_timeout": 10}


def answer_retry() -> ExponentialRetry:
    return ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=1, random_jitter_range=1)


# A segment file's download (chunks of up to 4 MB, one after another): a slower read is still progress.
DOWNLOAD_CALL_OPTIONS: dict[str, Any] = {"read_timeout": 60}


# A lease call (acquire, renew): no SDK retry (its first backoff alone is longer than we can wait), 3 s to
# connect, 5 s to read, 5 s on the server: worst case about 8 s; the caller tries twice.
LEASE_CALL_OPTIONS: dict[str, Any] = {"retry_total": 0, "connection_timeout": 3, "read_timeout": 5, "timeout": 5}
LEASE_CALL_ATTEMPTS = 2

# Key Vault (one secret read per process and destination, again after a 401): 4 attempts, backoff up to
# 4 s, 5 s to connect, 10 s per read: worst case about 70 s.
KEY_VAULT_CLIENT_OPTIONS: dict[str, Any] = {"retry_total": 3, "retry_backoff_factor": 0.5, "retry_backoff_max": 4,
                                            "connection_timeout": 5, "read_timeout": 10}

# A request that changes SendGrid (PUT contacts, DELETE list membership) must end before the lease it
# runs under could expire: each attempt gets at most this share of a fresh lease, split over its phases.
CHANGE_SHARE_OF_LEASE = 0.6
LEASE_MARGIN_SECONDS = 2.0  # clock drift between us and storage, and the time to start the request
