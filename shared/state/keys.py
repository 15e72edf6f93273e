"""The identities the snapshot keeps across runs: a 64-bit key per email and a fingerprint per contact."""

from __future__ import annotations

from collections.abc import Sequence

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


_SEP = "\x1f"  # between a row's values; a value holding it takes the repr path below
_OTHER_PATH = 0x9E3779B97F4A7C15  # seed change for the repr path: its digests never meet the joined path's


def fingerprint_seed(*rules: str) -> int:
    """The xxh3 seed of source fingerprints: a digest of everything that decides the contact a row becomes
    (mapping, policies, reader options, the mapping rules' version). Other rules, other fingerprints: a
    snapshot written under them matches no row, so every contact is sent again."""
    return xxh3("\n".join(rules).encode("utf-8", "surrogatepass"))


def source_fingerprint(values: Sequence[str | None], seed: int) -> int:
    """A stable signed 64-bit digest of a row's mapped source values (in the mapper's column order), before
    any validation: equal fingerprints under one seed mean the row would become the same contact.

    The values are joined by a separator no export uses; a row whose values hold it, or that lacks a
    column (None), is digested as its repr instead, so no two different rows share an input.
    """
    try:
        joined = _SEP.join(values)  # type: ignore[arg-type]  # a None raises: the repr path
    except TypeError:
        joined = None
    if joined is None or joined.count(_SEP) != len(values) - 1:
        return xxh3(repr(values).encode("utf-8", "surrogatepass"), seed ^ _OTHER_PATH) - SIGNED
    return xxh3(joined.encode("utf-8", "surrogatepass"), seed) - SIGNED


def line_seed(seed: int, header: Sequence[str], delimiter: bytes) -> int:
    """The xxh3 seed of line hashes (shared.state.line_hashes): the fingerprints' seed (the rules) and the
    file's header and delimiter (which value of a line is which column). Any of them changing, no line matches."""
    layout = "\x1f".join(header).encode("utf-8", "surrogatepass") + b"\x00" + delimiter
    return xxh3(layout, seed)
