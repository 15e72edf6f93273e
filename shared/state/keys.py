"""The identities the snapshot keeps across runs: a 64-bit key per email and a fingerprint per contact."""

from __future__ import annotations

from xxhash import xxh3_64_intdigest

SIGNED = 1 << 63  # xxh3 gives 0..2**64-1; arrays of "q" hold signed 64-bit values
xxh3 = xxh3_64_intdigest


def email_key(email: str) -> int:
    """A stable signed 64-bit key for an email: the same in every process and on every machine (unlike
    hash()), as the snapshot keeps keys across runs.

    xxh3 is not a cryptographic hash, and need not be: no 64-bit digest resists a forged collision
    (2**32 tries), so nothing relies on that. Where two people could be confused (duplicates), the real
    emails are compared. It costs a sixth of blake2b's call for a short string, which a million rows feel.
    """
    return xxh3(email.encode()) - SIGNED


def fingerprint(body: bytes) -> int:
    """A stable signed 64-bit digest of a contact's JSON: equal fingerprints mean nothing changed."""
    return xxh3(body) - SIGNED
