"""Split contacts into `PUT /v3/marketing/contacts` bodies at SendGrid's real limits.

SendGrid takes at most 30,000 contacts *and* at most 6 MB of body per request, whichever is lower. The
batcher works on already-serialised contacts, so the size of every body is known exactly and the number
of requests is the lower bound for the file.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload

MAX_CONTACTS_PER_REQUEST = 30_000
# "6 MB": we read it as the smaller 6,000,000 bytes so that no reading of SendGrid's limit refuses a body.
MAX_BODY_BYTES = 6_000_000


@dataclass(slots=True)
class Batch:
    """One request's contacts, already joined: each contact read from the spool is appended to one buffer and
    let go, so a batch is two objects however many contacts it holds (30,000 small bytes objects held until
    the request is sent would leave ~7 MB of the allocator's arenas behind after it)."""

    number: int  # 1-based, in sending order
    prefix: bytes
    indices: list[int] = field(default_factory=list)  # positions of the contacts in the run's spool
    joined: bytearray = field(default_factory=bytearray)  # the contacts' JSON, joined by ","
    ends: array[int] = field(default_factory=lambda: array("L"))  # where each contact ends in `joined`

    def add(self, index: int, contact: bytes) -> None:
        if self.ends:
            self.joined += b","
        self.joined += contact
        self.ends.append(len(self.joined))
        self.indices.append(index)

    @property
    def contacts(self) -> _Contacts:
        return _Contacts(self.joined, self.ends)

    def body(self) -> bytes:
        return b"".join((self.prefix, self.joined, b"]}"))

    def body_size(self) -> int:
        return len(self.prefix) + len(self.joined) + 2

    def without(self, positions: set[int]) -> Batch:
        """The same batch minus the contacts at these positions (set aside after a 400)."""
        kept = Batch(self.number, self.prefix)
        contacts = self.contacts
        for i in range(len(contacts)):
            if i not in positions:
                kept.add(self.indices[i], contacts[i])
        return kept


class _Contacts(Sequence[bytes]):
    """A batch's contacts, each read out of its joined buffer when asked for."""

    def __init__(self, joined: bytearray, ends: array[int]) -> None:
        self._joined, self._ends = joined, ends

    def __len__(self) -> int:
        return len(self._ends)

    @overload
    def __getitem__(self, index: int) -> bytes: ...

    @overload
    def __getitem__(self, index: slice) -> list[bytes]: ...

    def __getitem__(self, index: int | slice) -> bytes | list[bytes]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self._ends)
        if not 0 <= index < len(self._ends):
            raise IndexError(index)
        start = self._ends[index - 1] + 1 if index else 0
        return bytes(self._joined[start:self._ends[index]])


def body_prefix(list_ids: Iterable[str]) -> bytes:
    return b'{"list_ids":' + json.dumps(list(list_ids), separators=(",", ":")).encode() + b',"contacts":['


def batches(
    contacts: Iterable[tuple[int, bytes]],
    list_ids: Iterable[str],
    *,
    max_contacts: int = MAX_CONTACTS_PER_REQUEST,
    max_bytes: int = MAX_BODY_BYTES,
    first_number: int = 1,
) -> Iterator[Batch]:
    """Greedy packing in input order: each batch is as full as both limits allow."""
    prefix = body_prefix(list_ids)
    overhead = len(prefix) + 2  # prefix + "]}"
    if overhead >= max_bytes:
        raise ValueError("max_bytes is smaller than an empty request body")
    number = first_number
    current = Batch(number, prefix)
    size = overhead
    for index, contact in contacts:
        count = len(current.ends)
        added = len(contact) + (1 if count else 0)
        if count and (count >= max_contacts or size + added > max_bytes):
            yield current
            number += 1
            current = Batch(number, prefix)
            size = overhead
            added = len(contact)
        if size + added > max_bytes:
            raise ValueError(f"one contact is {len(contact)} bytes, more than a whole request may carry")
        current.add(index, contact)
        size += added
    if current.ends:
        yield current
