"""Split contacts into `PUT /v3/marketing/contacts` bodies at SendGrid's real limits.

SendGrid takes at most 30,000 contacts *and* at most 6 MB of body per request, whichever is lower. The
batcher works on already-serialised contacts, so the size of every body is known exactly and the number
of requests is the lower bound for the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

MAX_CONTACTS_PER_REQUEST = 30_000
# "6 MB": we read it as the smaller 6,000,000 bytes so that no reading of SendGrid's limit refuses a body.
MAX_BODY_BYTES = 6_000_000


@dataclass(slots=True)
class Batch:
    number: int  # 1-based, in sending order
    prefix: bytes
    indices: list[int] = field(default_factory=list)  # positions of the contacts in the run's spool
    contacts: list[bytes] = field(default_factory=list)

    def body(self) -> bytes:
        return b"".join((self.prefix, b",".join(self.contacts), b"]}"))

    def body_size(self) -> int:
        return len(self.prefix) + sum(map(len, self.contacts)) + max(len(self.contacts) - 1, 0) + 2

    def without(self, positions: set[int]) -> Batch:
        """The same batch minus the contacts at these positions (set aside after a 400)."""
        keep = [i for i in range(len(self.contacts)) if i not in positions]
        return Batch(self.number, self.prefix, [self.indices[i] for i in keep], [self.contacts[i] for i in keep])


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
        added = len(contact) + (1 if current.contacts else 0)
        if current.contacts and (len(current.contacts) >= max_contacts or size + added > max_bytes):
            yield current
            number += 1
            current = Batch(number, prefix)
            size = overhead
            added = len(contact)
        if size + added > max_bytes:
            raise ValueError(f"one contact is {len(contact)} bytes, more than a whole request may carry")
        current.indices.append(index)
        current.contacts.append(contact)
        size += added
    if current.contacts:
        yield current
