"""A partition's transactions: which are open (``txn.open``) and which were aborted (``.txnindex``).

These are the two things a ``read_committed`` reader needs besides the log
(docs/FORMAT.md, "Transactions"):

- ``P/txn.open``: the transactions open on the partition, producer id ->
  (epoch, transactional id, first offset). The first offset is the end
  offset when the producer joined the partition (under the writer lock), so
  every record of the transaction is at or after it. The last stable offset
  (LSO) is the smallest first offset there, or the end offset. Replaced
  atomically, under the writer lock, by whoever joins or ends a transaction.
- ``<segment>.txnindex``: one 24-byte entry per aborted transaction whose
  abort marker is in that segment: producer id, first offset, marker offset
  (Kafka's ``.txnindex``). Written *before* the marker, so a crash leaves at
  worst an entry whose marker offset is at or past the end offset; the
  writer's recovery drops such entries (``trim_txn_index``), and the marker
  is written again by whoever finishes the transaction.

Readers take no lock. A reader reads the end offset *before* ``txn.open``: a
transaction that joined after that end offset has all its records past it.
"""

from __future__ import annotations

import json
import os
import struct
from typing import NamedTuple

from ..errors import CorruptFile
from .batch import MAX_OFFSET
from .fileio import atomic_write, open_regular, read_metadata, shown, write_all

OPEN_FILE = "txn.open"
TXN_INDEX_SUFFIX = ".txnindex"
TXN_ENTRY = struct.Struct(">qqq")  # producer id, first offset, marker offset
TXN_ENTRY_SIZE = TXN_ENTRY.size
OPEN_FORMAT = 1
MAX_OPEN = 10_000  # open transactions on one partition (a bound on a file read from disk)


class OpenTxn(NamedTuple):
    """A transaction open on a partition (an entry of ``txn.open``)."""

    epoch: int
    transactional_id: str
    first_offset: int


class AbortedTxn(NamedTuple):
    """An aborted transaction on a partition: its producer's records in
    [``first_offset``, ``last_offset``) are aborted; ``last_offset`` is the abort marker's offset."""

    producer_id: int
    first_offset: int
    last_offset: int


def txn_index_name(base_offset: int) -> str:
    return f"{base_offset:020d}{TXN_INDEX_SUFFIX}"


def read_open(partition_path: str) -> dict[int, OpenTxn]:
    """The transactions open on the partition at ``partition_path`` (none if it never had any)."""
    path = os.path.join(partition_path, OPEN_FILE)
    try:
        meta = read_metadata(path)
    except FileNotFoundError:
        return {}
    entries = meta.get("open")
    if meta.get("format") != OPEN_FORMAT or type(entries) is not dict or len(entries) > MAX_OPEN:
        raise CorruptFile(path, f"not a {OPEN_FILE} file of format {OPEN_FORMAT}")
    out: dict[int, OpenTxn] = {}
    for key, entry in entries.items():
        if not (key.isascii() and key.isdigit() and int(key) < 2**63) or type(entry) is not dict:
            raise CorruptFile(path, f"bad producer id {shown(key)}")
        epoch, txn_id, first = entry.get("epoch"), entry.get("id"), entry.get("first")
        if (
            type(epoch) is not int
            or not 0 <= epoch < 2**15
            or type(txn_id) is not str
            or type(first) is not int
            or not 0 <= first <= MAX_OFFSET
        ):
            raise CorruptFile(path, f"bad entry for producer {key}: {shown(entry)}")
        out[int(key)] = OpenTxn(epoch, txn_id, first)
    return out


def write_open(partition_path: str, entries: dict[int, OpenTxn], sync: bool) -> None:
    """Replace ``txn.open`` (the caller holds the writer lock)."""
    body = {
        "format": OPEN_FORMAT,
        "open": {
            str(pid): {"epoch": e.epoch, "id": e.transactional_id, "first": e.first_offset}
            for pid, e in sorted(entries.items())
        },
    }
    atomic_write(
        os.path.join(partition_path, OPEN_FILE), json.dumps(body).encode() + b"\n", sync=sync, release_old_later=True
    )


def load_txn_index(path: str) -> list[AbortedTxn]:
    """The entries of one ``.txnindex`` (none if missing; a torn last entry is ignored)."""
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        return []
    try:
        size = os.fstat(fd).st_size
        blob = os.pread(fd, size - size % TXN_ENTRY_SIZE, 0)
    finally:
        os.close(fd)
    out = []
    for pid, first, last in TXN_ENTRY.iter_unpack(blob):
        if 0 <= pid and 0 <= first <= last <= MAX_OFFSET:  # anything else is not kq's: ignored
            out.append(AbortedTxn(pid, first, last))
    return out


def append_txn_index(path: str, entry: AbortedTxn, sync: bool) -> None:
    fd = open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        # A torn entry from a crash is cut first, so entries stay aligned.
        size = os.fstat(fd).st_size
        if size % TXN_ENTRY_SIZE:
            os.ftruncate(fd, size - size % TXN_ENTRY_SIZE)
        write_all(fd, TXN_ENTRY.pack(*entry))
        if sync:
            os.fdatasync(fd)
    finally:
        os.close(fd)


def trim_txn_index(path: str, end_offset: int) -> None:
    """Drop the entries whose marker is at or past ``end_offset`` (never written, or cut off), and a torn one."""
    try:
        fd = open_regular(path, os.O_RDWR)
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        blob = os.pread(fd, size, 0)
        keep = 0
        for i, (_, _, last) in enumerate(TXN_ENTRY.iter_unpack(blob[: size - size % TXN_ENTRY_SIZE])):
            if last >= end_offset:
                break
            keep = i + 1
        if keep * TXN_ENTRY_SIZE != size:
            os.ftruncate(fd, keep * TXN_ENTRY_SIZE)
    finally:
        os.close(fd)


def aborted_between(entries: list[AbortedTxn], start: int, stop: int | None) -> list[AbortedTxn]:
    """The aborted transactions that may hold records in [start, stop)."""
    return [e for e in entries if e.last_offset > start and (stop is None or e.first_offset < stop)]


def is_aborted(aborted: list[AbortedTxn], producer_id: int, offset: int) -> bool:
    """Whether producer ``producer_id``'s batch at ``offset`` belongs to one of the ``aborted`` transactions."""
    for e in aborted:
        if e.producer_id == producer_id and e.first_offset <= offset < e.last_offset:
            return True
    return False
