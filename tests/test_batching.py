import json

from shared.staging.batching import MAX_BODY_BYTES, MAX_CONTACTS_PER_REQUEST, batches

LIST = "5b0c3a1e-8d7f-4c2a-9e61-3f2d7a9b0c11"


def small(n: int) -> list[tuple[int, bytes]]:
    return [(i, json.dumps({"email": f"u{i}@example.com"}).encode()) for i in range(n)]


def test_30001_contacts_split_into_30000_and_1() -> None:
    result = list(batches(small(30_001), [LIST]))
    assert [len(b.contacts) for b in result] == [MAX_CONTACTS_PER_REQUEST, 1]
    body = json.loads(result[0].body())
    assert body["list_ids"] == [LIST] and len(body["contacts"]) == 30_000
    assert [i for b in result for i in b.indices] == list(range(30_001))


def test_30000_large_contacts_split_by_the_6mb_limit() -> None:
    padding = "x" * 230  # ~260-byte contacts: 30,000 of them are ~7.8 MB
    contacts = [(i, json.dumps({"email": f"u{i}@example.com", "address_line_1": padding[:100],
                                "address_line_2": padding[:100], "city": padding[:40]}).encode())
                for i in range(30_000)]
    result = list(batches(contacts, [LIST]))
    assert len(result) == 2
    for batch in result:
        body = batch.body()
        assert len(body) <= MAX_BODY_BYTES
        assert len(body) == batch.body_size()
        assert len(json.loads(body)["contacts"]) == len(batch.contacts)
    # greedy: the first batch is as full as the byte limit allows
    one = len(contacts[0][1]) + 1
    assert MAX_BODY_BYTES - len(result[0].body()) < one
    assert sum(len(b.contacts) for b in result) == 30_000


def test_without_drops_named_positions_and_keeps_order() -> None:
    batch = next(batches(small(5), [LIST]))
    rest = batch.without({1, 3})
    assert rest.indices == [0, 2, 4]
    assert [c["email"] for c in json.loads(rest.body())["contacts"]] == [
        "u0@example.com", "u2@example.com", "u4@example.com"]


def test_no_contacts_no_batches() -> None:
    assert list(batches([], [LIST])) == []
