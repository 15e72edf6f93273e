"""The run's spool: every valid mapped contact, in file order, on local disk.

Why a spool: "last row wins" for duplicate emails and the profile cap both need to see the whole file
before the first request, and SendGrid bodies are built from the serialised contacts. Keeping them on
disk (not in memory) makes memory grow with one batch, not with the file; re-reading the spool costs a
fraction of re-parsing the source file.

A row known unchanged (its source fingerprint is the snapshot's, see shared.pipeline.read) is never mapped:
it takes a position like any contact (its key, where it came from) but only its email is kept, in a
second file, so the duplicates check can still compare real emails; a row recognised by its whole line keeps
not even that (nor an offset: 8 bytes a row at a million): its key finds its snapshot entry, whose email the
snapshot has (`entry_emails`). `contacts()` yields the mapped ones only: an unchanged refresh re-reads nothing.
"""

from __future__ import annotations

import bisect
import io
import re
import tempfile
from array import array
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from shared.staging.email_file import EmailFile, read_line
from shared.staging.repeated_keys import repeated_keys
from shared.state.keys import SIGNED, email_key, fingerprint, xxh3

_WRITE_EVERY = 1024  # contacts per write to the spool file
_FOUR_GB = 1 << 32  # offsets below it take 4 bytes (4 MB less a million contacts)
_SIGNED = SIGNED
_xxh3 = xxh3  # email_key() and fingerprint() are inlined in Spool.add, which runs once per contact

__all__ = ["Spool", "email_key", "fingerprint"]

MAPPED, UNCHANGED, KNOWN_LINE = 0, 1, 2  # Spool.unchanged: mapped; unchanged, email kept; by its line (entry kept)


class Spool:
    def __init__(self, directory: str | None = None) -> None:
        self._directory = directory
        self._file: BinaryIO = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 - closed in close()
        self._known = EmailFile(directory)  # the emails of the unchanged rows
        self.keys = array("q")  # email_key per contact
        # The source fingerprint (shared.state.keys; 0 in a run without state) and line hash (shared.state.
        # line_hashes; 0: none) of each mapped contact, in pairs by its line in the spool file, on disk beside
        # it (only emails() reads them, in order): an unchanged row's are the snapshot's already.
        self._pairs = array("q")
        self._pairs_file: BinaryIO | None = None
        # key -> email of the snapshot's entries with these keys (KNOWN_LINE rows), asked only when a key repeats.
        self.entry_emails: Callable[[set[int]], dict[int, str]] | None = None
        self._known_lines = 0  # KNOWN_LINE positions, which have no offset
        # Where each contact came from, as runs of consecutive rows of one source (a run breaks at a rejected
        # row or a new source): the position each run starts at, its source (an index into source_names: a
        # CDM folder may have many partitions) and its first row number. A clean file is one run.
        self._run_starts = array("I")
        self._run_sources = array("I")
        self._run_rows = array("I")
        self._next_row = -1  # the row that continues the current run
        self.unchanged = bytearray()  # per position: MAPPED, or UNCHANGED / KNOWN_LINE (not in `contacts()`)
        # Where each contact's line starts in its file (the spool's or `_known`'s), KNOWN_LINE rows left out.
        self._offsets = array("I")  # "Q" once an offset needs it (a spool file past 4 GB)
        # The position of each line of the spool file; None while every row was mapped (line == position),
        # so a first export keeps no such array.
        self._mapped: array[int] | None = None
        self._end = 0
        self._unwritten: list[bytes] = []  # contacts not yet in the file: one write per _WRITE_EVERY
        self.source_names: list[str] = []
        self._source_index: dict[str, int] = {}
        self._last_source: str | None = None  # rows come in runs of one source: skip the dict look-up
        self._last_index = 0

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, source: str, row: int, email: str, body: bytes, fingerprint: int = 0,
            key: int | None = None, line_hash: int = 0) -> None:
        """A mapped contact; `key` when the caller has email_key(email) already."""
        if source is not self._last_source:
            self._switch_source(source)
        if self._mapped is not None:
            self._mapped.append(len(self.keys))
        # email_key(), inlined: this runs once per contact
        self.keys.append(_xxh3(email.encode()) - _SIGNED if key is None else key)
        self._pairs.append(fingerprint)
        self._pairs.append(line_hash)
        if row != self._next_row:
            self._new_run(row)
        self._next_row = row + 1
        self.unchanged.append(0)
        if self._end >= _FOUR_GB:  # compared here: this runs once per contact
            self._room_for(self._end)
        self._offsets.append(self._end)
        self._end += len(body) + 1
        unwritten = self._unwritten
        unwritten.append(body)
        if len(unwritten) >= _WRITE_EVERY:
            self._write()

    def add_unchanged(self, source: str, row: int, email: bytes, key: int) -> None:
        """A row whose contact the list holds as it is: its key and (UTF-8) email only."""
        if source is not self._last_source:
            self._switch_source(source)
        if self._mapped is None:
            self._mapped = array("I", range(len(self.keys)))
        self.keys.append(key)
        if row != self._next_row:
            self._new_run(row)
        self._next_row = row + 1
        self.unchanged.append(1)
        offset = self._known.add(email)
        self._room_for(offset)
        self._offsets.append(offset)

    def add_unchanged_run(self, source: str, row: int, keys: bytes, emails: list[bytes]) -> None:
        """Consecutive unchanged rows from `row` on: their keys (native 64-bit signed, as bytes) and emails."""
        self._add_run(source, row, keys, len(emails), UNCHANGED)
        offsets = self._known.add_many(emails)
        if offsets:
            self._room_for(offsets[-1])
        self._offsets.extend(array(self._offsets.typecode, offsets))

    def add_known_lines(self, source: str, row: int, keys: bytes, count: int) -> None:
        """`count` consecutive rows from `row` on recognised by their lines: their keys (as bytes)."""
        self._add_run(source, row, keys, count, KNOWN_LINE)
        self._known_lines += count

    def add_block(self, source: str, row: int, keys: bytes, pairs: bytes, bodies: bytes, starts: Any) -> None:
        """Consecutive mapped contacts from `row` on (shared.mapping.line_mapping): their keys, (fingerprint,
        line hash) pairs, JSON bodies joined by b"\\n" and where each starts in them (numpy int64)."""
        count = len(starts)
        if not count:
            return
        if self._mapped is not None:
            self._mapped.extend(range(len(self.keys), len(self.keys) + count))
        self._add_run(source, row, keys, count, MAPPED)
        self._pairs.frombytes(pairs)
        offsets = starts + self._end
        self._room_for(int(offsets[-1]))
        self._offsets.frombytes(offsets.astype("u8" if self._offsets.typecode == "Q" else "u4").tobytes())
        self._end += len(bodies) + 1
        self._unwritten.append(bodies)
        self._write()

    def _add_run(self, source: str, row: int, keys: bytes, count: int, kind: int) -> None:
        """Consecutive rows from `row` on that are not mapped: their keys, their kind, where they came from."""
        if source is not self._last_source:
            self._switch_source(source)
        if self._mapped is None and kind != MAPPED:
            self._mapped = array("I", range(len(self.keys)))
        start = len(self.keys)
        self.keys.frombytes(keys)
        if row != self._next_row:
            self._run_starts.append(start)
            self._run_sources.append(self._last_index)
            self._run_rows.append(row)
        self._next_row = row + count
        self.unchanged.extend(bytes([kind]) * count)

    def _room_for(self, offset: int) -> None:
        """Offsets take 4 bytes each until one needs 8 (a file past 4 GB)."""
        if offset >= _FOUR_GB and self._offsets.typecode == "I":
            self._offsets = array("Q", self._offsets)

    def _switch_source(self, source: str) -> None:
        index = self._source_index.get(source)
        if index is None:
            index = self._source_index[source] = len(self.source_names)
            self.source_names.append(source)
        self._last_source, self._last_index = source, index
        self._next_row = -1

    def _new_run(self, row: int) -> None:
        self._run_starts.append(len(self.keys) - 1)  # the contact being added
        self._run_sources.append(self._last_index)
        self._run_rows.append(row)

    def _write(self) -> None:
        """Write the contacts added since the last write, and flush, so the file can be read back."""
        if self._unwritten:
            self._file.seek(0, io.SEEK_END)  # a read may have moved the position
            self._file.write(b"\n".join(self._unwritten) + b"\n")
            self._unwritten.clear()
            if self._pairs_file is None:
                self._pairs_file = tempfile.TemporaryFile(dir=self._directory)  # noqa: SIM115 - close()
            self._pairs_file.seek(0, io.SEEK_END)
            self._pairs.tofile(self._pairs_file)
            self._pairs = array("q")
        self._file.flush()

    def _all_pairs(self) -> Iterator[tuple[int, int]]:
        """(fingerprint, line hash) of each mapped contact, in spool order, read back a block at a time."""
        self._write()
        if self._pairs_file is None:
            return
        self._pairs_file.seek(0)
        while data := self._pairs_file.read(16 * _WRITE_EVERY):
            block = array("q")
            block.frombytes(data)
            yield from zip(block[0::2], block[1::2], strict=True)

    def where(self, index: int) -> tuple[str, int]:
        """(source, row number) of the contact at this position."""
        run = bisect.bisect_right(self._run_starts, index) - 1
        return self.source_names[self._run_sources[run]], self._run_rows[run] + index - self._run_starts[run]

    def email_at(self, index: int) -> str:
        """Read one contact's email back from the spool: a read at its offset, which leaves the file's
        position (maybe mid-iteration of `contacts()`) alone."""
        return self.emails_at([index])[index]

    def emails_at(self, indices: list[int]) -> dict[int, str]:
        """The emails of these contacts; those recognised by their line from the snapshot, in one pass."""
        known = {index: self.keys[index] for index in indices if self.unchanged[index] == KNOWN_LINE}
        found: dict[int, str] = {}
        # The others' offsets skip the KNOWN_LINE rows before them: counted once, in ascending order
        before, counted = 0, 0
        for index in sorted(index for index in indices if index not in known):
            if self._known_lines:
                before += self.unchanged.count(KNOWN_LINE, counted, index)
                counted = index
            found[index] = self._email_here(index, self._offsets[index - before])
        if known:
            assert self.entry_emails is not None, "rows recognised by their line come with the snapshot's emails"
            emails = self.entry_emails(set(known.values()))
            found.update((index, emails[key]) for index, key in known.items())
        return found

    def _email_here(self, index: int, offset: int) -> str:
        if self.unchanged[index]:
            return self._known.at(offset).decode()
        if self._unwritten:
            self._write()
        return _email_of(read_line(self._file, offset)).decode()

    def contacts(self) -> Iterator[tuple[int, bytes]]:
        """(index, contact JSON) of the mapped contacts, in file order (unchanged rows are not in it)."""
        self._write()
        self._file.seek(0)
        mapped = self._mapped
        for number, line in enumerate(self._file):
            yield number if mapped is None else mapped[number], line[:-1]

    def emails(self) -> Iterator[tuple[int, int, int, bytes]]:
        """(index, source fingerprint, line hash, UTF-8 email) of the mapped contacts, in file order: one
        sequential read of the spool."""
        for (index, body), (source_fp, line_hash) in zip(self.contacts(), self._all_pairs(), strict=True):
            yield index, source_fp, line_hash, _email_of(body)

    def email_blocks(self, size: int = 1 << 21) -> Iterator[tuple[Any, Any, Any, list[bytes]]]:
        """What `emails()` gives, about `size` bytes of the spool at a time: (indices, fingerprints, line hashes)
        as numpy arrays and the UTF-8 emails, taken from the file's bytes by one regex a block (the snapshot's
        write of a first export is then C-level work, not Python's per contact)."""
        import numpy  # noqa: PLC0415 - the snapshot's merge uses it anyway

        self._write()
        self._file.seek(0)
        pairs, mapped, done, rest = self._pairs_file, self._mapped, 0, b""
        if pairs is not None:
            pairs.seek(0)
        while data := rest + self._file.read(size):
            cut = data.rfind(b"\n") + 1
            data, rest = data[:cut], data[cut:]
            count = data.count(b"\n")
            if not count:
                continue
            emails = _EMAILS.findall(data)
            if len(emails) != count:  # (never: a contact starts with its email, and no value holds `{"`)
                emails = [_email_of(line) for line in data.splitlines()]
            assert pairs is not None
            both = numpy.frombuffer(pairs.read(16 * count), dtype=numpy.int64).reshape(-1, 2)
            numbers = numpy.arange(done, done + count, dtype=numpy.int64)
            indices = numbers if mapped is None else numpy.frombuffer(mapped, dtype=numpy.uint32)[numbers].astype(
                numpy.int64)
            done += count
            yield indices, both[:, 0], both[:, 1], emails

    def superseded(self) -> set[int]:
        """Indices of contacts whose email appears again later in the file (last row wins).

        Keys are compared first (cheap, in arrays); only rows whose key repeats are read back to compare
        the real emails, so a 64-bit collision can never merge two different people.
        """
        repeated = repeated_keys(self.keys)
        if not repeated:
            return set()
        last: dict[str, int] = {}
        candidates = [index for index, key in enumerate(self.keys) if key in repeated]
        emails = self.emails_at(candidates)
        for index in candidates:
            last[emails[index]] = index
        return {index for index in candidates if last[emails[index]] != index}

    def close(self) -> None:
        self._file.close()
        self._known.close()
        if self._pairs_file is not None:
            self._pairs_file.close()


_EMAILS = re.compile(rb'\{"email":"([^"]*)"')  # a literal start: found by a fast search, not tried at each byte


def _email_of(body: bytes) -> bytes:
    # Contacts are serialised by ContactMapper with "email" first: {"email":"...",
    end = body.index(b'"', 10)
    return body[10:end]
