"""The data directory's transactions: transactional id -> producer, epoch, state, partitions, group offsets.

One store (``DATA/transactions/``, docs/FORMAT.md "Transactions") serves
``kq produce --transactional``, ``kq consume --exec --produce-to`` and kq
serve's transaction coordinator alike. There is no coordinator process:
files and locks decide.

- ``ID.json`` (the transactional id's record) is replaced atomically, like
  ``P.offset``, and only while ``store.lock`` is held, so every change is a
  read-check-write no other process interleaves with.
- ``ID.lock`` is flock'ed by the process that owns the transactional id
  (the producer, or kq serve) for as long as it may use it. A transaction
  whose owner's lock is free is abandoned: the next ``init_producer`` of any
  id, ``resolve_abandoned`` (``kq maintain``) and any transactional writer
  finish it. So is one open past its timeout, even if its owner lives (its
  epoch is bumped: the owner is fenced).

States: ``empty`` (no transaction yet at this epoch), ``ongoing``,
``committing`` and ``aborting`` (decided, markers being written),
``committed`` and ``aborted`` (done). The commit point is the record
flipping to ``committing``: from then on whoever finishes the transaction
(the owner, or a recovery) commits it; a transaction that had not got there
is aborted. Finishing writes a marker on each partition (idempotent: a
partition whose ``txn.open`` no longer names the producer has its marker),
applies the pending group offsets (through the ``commit_offset`` function the
store is given: groups live above the engine), then records the end. An
owner that holds the id's lock may leave the end of a transaction without
offsets unrecorded (``finish_decided(record_end=False)``) and record it with
its next change of the record (``ended=True``) or ``record_end``: one file
replacement fewer a transaction; finishing such a record again writes nothing.

The interface kq serve's coordinator uses:

    store = TransactionStore(data_dir, commit_offset=Groups(data_dir).commit)
    session = store.init_producer("my-app-1", timeout_ms=60000)   # InitProducerId
    store.add_partitions(session, "orders", [0, 3])               # AddPartitionsToTxn
    # ... Partition.append_payload(pack(..., producer=(session.producer_id, session.epoch)))
    store.add_offsets(session, "g", {("in", 0): (120, "")})       # TxnOffsetCommit
    store.end(session, commit=True)                               # EndTxn (or decide, then finish_decided)
    store.release(session)                                        # the process lets go of the id

``Session`` may also be rebuilt from a client's producer id and epoch
(``store.session(transactional_id, producer_id, epoch)``) by a server that
does not keep the lock per id (it then relies on the timeout).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import CorruptFile, ProducerFenced, TopicNotFound, TransactionalIdBusy, TransactionError, UsageError
from .fileio import FileLock, atomic_write, make_dirs, read_metadata, shown, try_lock

TRANSACTIONS_DIR = "transactions"
STORE_LOCK = "store.lock"
RECORD_FORMAT = 1
DEFAULT_TIMEOUT_MS = 60_000  # Kafka's transaction.timeout.ms default
MAX_TIMEOUT_MS = 15 * 60_000  # Kafka's transaction.max.timeout.ms default
MAX_EPOCH = 2**15 - 2  # epochs are int16; at the last one a new producer id is drawn

EMPTY = "empty"
ONGOING = "ongoing"
COMMITTING = "committing"
ABORTING = "aborting"
COMMITTED = "committed"
ABORTED = "aborted"
STATES = (EMPTY, ONGOING, COMMITTING, ABORTING, COMMITTED, ABORTED)
OPEN_STATES = (ONGOING, COMMITTING, ABORTING)

_PLAIN_ID = re.compile(r"[A-Za-z0-9._-]{1,200}")

# commit_offset(group, topic, partition, offset, metadata): a group's committed offset, stored
CommitOffset = Callable[[str, str, int, int, str], None]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class TxnRecord:
    """What ``ID.json`` holds (docs/FORMAT.md, "Transactions")."""

    transactional_id: str
    producer_id: int
    epoch: int
    state: str = EMPTY
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    started_at: int | None = None  # wall-clock ms the open transaction began
    partitions: dict[str, list[int]] = field(default_factory=dict)  # topic -> partitions
    # group -> "topic/partition" -> [offset, metadata]
    offsets: dict[str, dict[str, list]] = field(default_factory=dict)
    ephemeral: bool = False  # an id made for one run: the record goes once its transaction is over

    def to_json(self) -> dict:
        return {
            **({"ephemeral": True} if self.ephemeral else {}),
            "format": RECORD_FORMAT,
            "id": self.transactional_id,
            "producer_id": self.producer_id,
            "epoch": self.epoch,
            "state": self.state,
            "timeout_ms": self.timeout_ms,
            "started_at": self.started_at,
            "partitions": self.partitions,
            "offsets": self.offsets,
            "updated_at": now_ms(),
        }

    @classmethod
    def from_json(cls, body: dict, path: str) -> TxnRecord:
        def bad(what: str) -> CorruptFile:
            return CorruptFile(path, what)

        if body.get("format") != RECORD_FORMAT:
            raise bad(f"format is {shown(body.get('format'))}, not {RECORD_FORMAT}")
        txn_id, pid, epoch, state = body.get("id"), body.get("producer_id"), body.get("epoch"), body.get("state")
        timeout, started = body.get("timeout_ms"), body.get("started_at")
        partitions, offsets = body.get("partitions"), body.get("offsets")
        if type(txn_id) is not str or type(pid) is not int or not 0 <= pid < 2**63:
            raise bad("bad id or producer_id")
        if type(epoch) is not int or not 0 <= epoch <= MAX_EPOCH + 1 or state not in STATES:
            raise bad(f"bad epoch {shown(epoch)} or state {shown(state)}")
        if type(timeout) is not int or not 1 <= timeout <= MAX_TIMEOUT_MS:
            raise bad(f"bad timeout_ms {shown(timeout)}")
        if started is not None and type(started) is not int:
            raise bad("bad started_at")
        if type(partitions) is not dict or not all(
            type(t) is str and type(ps) is list and all(type(p) is int and p >= 0 for p in ps)
            for t, ps in partitions.items()
        ):
            raise bad("bad partitions")
        if type(offsets) is not dict or not all(
            type(g) is str
            and type(entries) is dict
            and all(
                type(k) is str
                and type(v) is list
                and len(v) == 2
                and type(v[0]) is int
                and v[0] >= 0
                and type(v[1]) is str
                for k, v in entries.items()
            )
            for g, entries in offsets.items()
        ):
            raise bad("bad offsets")
        ephemeral = body.get("ephemeral", False)
        if type(ephemeral) is not bool:
            raise bad("bad ephemeral")
        return cls(txn_id, pid, epoch, state, timeout, started, partitions, offsets, ephemeral)


@dataclass
class Session:
    """A producer's hold on a transactional id: its producer id and epoch (and its lock, if it took one)."""

    transactional_id: str
    producer_id: int
    epoch: int
    lock: FileLock | None = None


class TransactionStore:
    """The transactions of the data directory at ``root``.

    ``open_partition(topic, number)`` returns a ``kq.engine.partition.Partition``
    (default: through ``DataDir(root)``); ``commit_offset`` stores a group's
    offset when a transaction that carries some commits (None: such a
    transaction cannot be committed or recovered here: TransactionError).
    """

    def __init__(
        self,
        root: str,
        commit_offset: CommitOffset | None = None,
        open_partition: Callable | None = None,
        sync: bool = False,
    ):
        self.root = root
        # fsync each record (and directory) it replaces: for power loss. Without it a record
        # is still replaced atomically, which is what a crash of a process needs.
        self.sync = sync
        self.path = os.path.join(root, TRANSACTIONS_DIR)
        self.commit_offset = commit_offset
        self._open_partition = open_partition
        self._topics: dict = {}
        self._lock: FileLock | None = None

    # ------------------------------------------------------------------ files

    def record_path(self, transactional_id: str) -> str:
        return os.path.join(self.path, file_stem(transactional_id) + ".json")

    def lock_path(self, transactional_id: str) -> str:
        return os.path.join(self.path, file_stem(transactional_id) + ".lock")

    def _store_lock(self) -> FileLock:
        """``store.lock``, opened once per store (a store is used by one thread at a time).

        A lock file that is no longer the one at its path (the directory was
        removed and made again) is opened again: a lock on a file nobody else
        opens would exclude nobody.
        """
        path = os.path.join(self.path, STORE_LOCK)
        lock = self._lock
        if lock is not None and lock.file is not None:
            try:
                if os.stat(path).st_ino == os.fstat(lock.fileno()).st_ino:
                    return lock
            except FileNotFoundError:
                pass
            lock.close()
            lock = None
        if lock is None:
            make_dirs(self.path)
            lock = self._lock = FileLock(path)
        return lock

    def load(self, transactional_id: str) -> TxnRecord | None:
        """The transactional id's record (None: never used)."""
        path = self.record_path(transactional_id)
        try:
            record = TxnRecord.from_json(read_metadata(path), path)
        except FileNotFoundError:
            return None
        if record.transactional_id != transactional_id:
            raise CorruptFile(path, f"holds transactional id {shown(record.transactional_id)}")
        return record

    def records(self) -> list[TxnRecord]:
        """Every transactional id's record."""
        try:
            names = sorted(os.listdir(self.path))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            if name.endswith(".json"):
                path = os.path.join(self.path, name)
                try:
                    out.append(TxnRecord.from_json(read_metadata(path), path))
                except FileNotFoundError:
                    continue
        return out

    def _save(self, record: TxnRecord) -> None:
        atomic_write(
            self.record_path(record.transactional_id),
            json.dumps(record.to_json()).encode() + b"\n",
            sync=self.sync,
            release_old_later=True,
        )

    def partition(self, topic: str, number: int):
        if self._open_partition is not None:
            return self._open_partition(topic, number)
        t = self._topics.get(topic)
        if t is None:
            from .datadir import DataDir

            t = self._topics[topic] = DataDir(self.root).topic(topic)
        return t.partition(number)

    # ------------------------------------------------------------------ a producer's calls

    def init_producer(
        self, transactional_id: str, timeout_ms: int = DEFAULT_TIMEOUT_MS, lock: bool = True, ephemeral: bool = False
    ) -> Session:
        """Kafka's InitProducerId with a transactional id: the producer id and a new epoch.

        A transaction the id left open is finished first (committed if it got
        to ``committing``, else aborted), and every earlier epoch is fenced.
        With ``lock`` the calling process takes ``ID.lock`` (held until
        ``release`` or its exit; TransactionalIdBusy if another live process
        holds it). Abandoned transactions of other ids are finished too.
        """
        if type(transactional_id) is not str or not transactional_id or len(transactional_id) > 4096:
            raise UsageError("a transactional id is a string of 1 to 4,096 characters")
        if not 1 <= timeout_ms <= MAX_TIMEOUT_MS:
            raise UsageError(f"a transaction timeout is 1 ms to {MAX_TIMEOUT_MS} ms, not {timeout_ms}")
        held = None
        if lock:
            make_dirs(self.path)
            held = try_lock(self.lock_path(transactional_id), create=True)
            if held is None:
                raise TransactionalIdBusy(
                    f"transactional id {transactional_id!r} is in use by another live process ({self.lock_path(transactional_id)})"
                )
        try:
            self.resolve_abandoned(skip=transactional_id)
            with self._store_lock():
                record = self.load(transactional_id)
                if record is None:
                    record = TxnRecord(transactional_id, secrets.randbits(62), 0, ephemeral=ephemeral)
                else:
                    if record.state in OPEN_STATES:
                        self._finish(record, record.epoch + 1 if record.epoch <= MAX_EPOCH else record.epoch)
                    if record.epoch >= MAX_EPOCH:
                        record.producer_id, record.epoch = secrets.randbits(62), 0
                    else:
                        record.epoch += 1
                record.state, record.timeout_ms, record.started_at = EMPTY, timeout_ms, None
                record.partitions, record.offsets = {}, {}
                self._save(record)
        except BaseException:
            if held is not None:
                held.close()
            raise
        return Session(transactional_id, record.producer_id, record.epoch, held)

    def session(self, transactional_id: str, producer_id: int, epoch: int) -> Session:
        """A session for a producer id and epoch a client names (checked at each call, not here)."""
        return Session(transactional_id, producer_id, epoch)

    def close(self) -> None:
        """Close ``store.lock`` (opened again by the next call that needs it)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def release(self, session: Session) -> None:
        """Let go of the transactional id's lock (an open transaction is then abandoned: aborted by the next)."""
        if session.lock is not None:
            session.lock.close()
            session.lock = None

    def forget(self, session: Session) -> None:
        """Remove the id's record, if its last transaction is over, and let go of it (an id used once)."""
        try:
            with self._store_lock():
                record = self.load(session.transactional_id)
                if record is not None and record.state not in OPEN_STATES and record.epoch == session.epoch:
                    os.unlink(self.record_path(session.transactional_id))
                    try:
                        os.unlink(self.lock_path(session.transactional_id))
                    except FileNotFoundError:
                        pass
        finally:
            self.release(session)

    def _current(self, session: Session) -> TxnRecord:
        """Under the store lock: the session's record, or ProducerFenced if it is no longer the session's."""
        record = self.load(session.transactional_id)
        if record is None or record.producer_id != session.producer_id or record.epoch != session.epoch:
            raise ProducerFenced(
                f"transactional id {session.transactional_id!r}: producer {session.producer_id} epoch {session.epoch} "
                "was fenced by a newer one (or its transaction was aborted on timeout)"
            )
        return record

    def _begin(self, record: TxnRecord, ended: bool = False) -> None:
        """Open a transaction on ``record`` (in memory) unless one is open.

        ``ended``: the caller (the id's owner) wrote every marker of the
        decided transaction the record still names (``finish_decided`` with
        ``record_end=False``): it is recorded as ended in this same write.
        """
        if ended and record.state in (COMMITTING, ABORTING) and not record.offsets:
            self._ended(record)
        if record.state in (COMMITTING, ABORTING):
            raise TransactionError(
                f"transactional id {record.transactional_id!r}: the transaction is {record.state}; end it first"
            )
        if record.state != ONGOING:
            record.state, record.started_at, record.partitions, record.offsets = ONGOING, now_ms(), {}, {}

    def add_partitions(
        self, session: Session, topic: str, partitions: list[int], ended: bool = False
    ) -> dict[int, int]:
        """Kafka's AddPartitionsToTxn: the transaction writes to these partitions of ``topic`` (idempotent).

        Starts the transaction if none is open. Returns each partition's first
        offset of the transaction (from then on read_committed readers stop
        there until the transaction ends). Record first, partitions second: a
        recovery finds every partition that may hold the transaction's records.
        """
        with self._store_lock():
            record = self._current(session)
            state = record.state
            self._begin(record, ended)
            known = record.partitions.setdefault(topic, [])
            new = [p for p in partitions if p not in known]
            if new or record.state != state:
                known.extend(new)
                known.sort()
                self._save(record)
            return {
                p: self.partition(topic, p).begin_transaction(
                    session.producer_id, session.epoch, session.transactional_id
                )
                for p in partitions
            }

    def add_offsets(
        self,
        session: Session,
        group: str,
        offsets: dict[tuple[str, int], tuple[int, str]],
        ended: bool = False,
    ) -> None:
        """Kafka's AddOffsetsToTxn + TxnOffsetCommit: ``group``'s offsets (``(topic, partition) -> (offset,
        metadata)``), committed with the transaction (and dropped if it aborts). ``ended``: see ``_begin``."""
        with self._store_lock():
            record = self._current(session)
            self._begin(record, ended)
            pending = record.offsets.setdefault(group, {})
            for (topic, p), (offset, metadata) in offsets.items():
                pending[f"{topic}/{p}"] = [offset, metadata]
            self._save(record)

    def end(
        self, session: Session, commit: bool, offsets: dict[str, dict[tuple[str, int], tuple[int, str]]] | None = None
    ) -> None:
        """Kafka's EndTxn: commit or abort the open transaction (nothing open: nothing to do).

        ``offsets`` (group -> ``add_offsets``'s mapping) are committed with it,
        recorded in the same write as the commit decision. Committing past its
        timeout aborts instead and raises TransactionError.
        """
        with self._store_lock():
            record = self._current(session)
            if record.state in (EMPTY, COMMITTED, ABORTED):
                if not (commit and offsets):
                    return
                self._begin(record)  # offsets alone: a transaction of offsets only
            expired = record.state == ONGOING and self._expired(record)
            if record.state == ONGOING:
                if commit and offsets:
                    for group, entries in offsets.items():
                        pending = record.offsets.setdefault(group, {})
                        for (topic, p), (offset, metadata) in entries.items():
                            pending[f"{topic}/{p}"] = [offset, metadata]
                record.state = COMMITTING if commit and not expired else ABORTING
                self._save(record)  # the commit point
            self._finish(record, record.epoch)
        if expired and commit:
            raise TransactionError(
                f"transactional id {session.transactional_id!r}: the transaction ran past its timeout "
                f"({record.timeout_ms} ms) and was aborted"
            )

    def decide(self, session: Session, commit: bool) -> tuple[str | None, bool]:
        """The first half of ``end``: only the commit point (the record now says ``committing``, or
        ``aborting``); ``finish_decided`` writes the markers and applies the offsets.

        Returns the state decided (None: nothing was open) and whether the
        transaction ran past its timeout (a commit then aborts instead). kq
        serve answers EndTxn between the two, as Kafka answers it once
        PrepareCommit is in its transaction log: from the commit point on,
        whoever finishes the transaction commits it.
        """
        with self._store_lock():
            record = self._current(session)
            if record.state not in OPEN_STATES:
                return None, False
            expired = record.state == ONGOING and self._expired(record)
            if record.state == ONGOING:
                record.state = COMMITTING if commit and not expired else ABORTING
                self._save(record)  # the commit point
            return record.state, expired

    def finish_decided(self, session: Session, record_end: bool = True) -> bool:
        """The second half of ``end``: the markers and offsets of the session's decided transaction
        (nothing, if it is no longer the session's or someone finished it).

        Without ``record_end`` (for an owner that holds the id's lock) a
        transaction with no group offsets is not recorded as ended: the
        record stays decided until the owner's next call records it in the
        same write as the next transaction's start (``ended=True``) or
        ``record_end``. Finishing such a record again, as a recovery would
        if the owner died meanwhile, writes nothing: no partition's
        ``txn.open`` names the producer any more, and there are no offsets
        to apply. Returns whether the end is recorded.
        """
        with self._store_lock():
            record = self._decided(session)
            if record is None:
                return True
            save = record_end or bool(record.offsets)
            self._finish(record, record.epoch, save=save)
            return save

    def record_end(self, session: Session) -> None:
        """Record as ended the session's decided transaction whose markers it wrote (``finish_decided``
        with ``record_end=False``)."""
        with self._store_lock():
            record = self._decided(session)
            if record is not None and not record.offsets:
                self._ended(record)
                self._save(record)

    def _decided(self, session: Session) -> TxnRecord | None:
        """Under the store lock: the session's record if it is its decided transaction, not yet recorded as ended."""
        record = self.load(session.transactional_id)
        if (
            record is None
            or (record.producer_id, record.epoch) != (session.producer_id, session.epoch)
            or record.state not in (COMMITTING, ABORTING)
        ):
            return None
        return record

    # ------------------------------------------------------------------ finishing

    def _expired(self, record: TxnRecord, now: int | None = None) -> bool:
        return record.started_at is not None and (now or now_ms()) > record.started_at + record.timeout_ms

    def _finish(self, record: TxnRecord, marker_epoch: int, save: bool = True) -> None:
        """Under the store lock: write the markers of a decided (or to-be-aborted) transaction, apply its offsets,
        and (with ``save``) record its end."""
        commit = record.state == COMMITTING
        if not commit and record.state != ABORTING:
            record.state = ABORTING
            self._save(record)
        if commit and record.offsets and self.commit_offset is None:
            raise TransactionError(
                f"transactional id {record.transactional_id!r} commits group offsets, and this process cannot store them"
            )
        for topic, numbers in sorted(record.partitions.items()):
            for number in numbers:
                try:
                    part = self.partition(topic, number)
                except TopicNotFound:  # a deleted topic has no records left to mark
                    continue
                part.end_transaction(record.producer_id, marker_epoch, commit)
        if commit and self.commit_offset is not None:
            for group, entries in sorted(record.offsets.items()):
                for key, (offset, metadata) in sorted(entries.items()):
                    topic, _, digits = key.rpartition("/")
                    self.commit_offset(group, topic, int(digits), offset, metadata)
        if save:
            record.epoch = marker_epoch
            self._ended(record)
            self._save(record)

    @staticmethod
    def _ended(record: TxnRecord) -> None:
        """A decided transaction's record, its markers and offsets written: ended (in memory)."""
        record.state = COMMITTED if record.state == COMMITTING else ABORTED
        record.partitions, record.offsets, record.started_at = {}, {}, None

    def resolve_abandoned(self, skip: str | None = None, now: int | None = None) -> list[str]:
        """Finish every transaction whose owner is gone (its lock free) or that ran past its timeout.

        A decided one (``committing``) is committed, any other aborted; one
        aborted on timeout while its owner lives gets a new epoch (the owner
        is fenced). Returns a line per transaction finished. ``skip``: an id
        the caller owns and finishes itself.
        """
        done: list[str] = []
        for found in self.records():
            if found.state not in OPEN_STATES or found.transactional_id == skip:
                continue
            owner = try_lock(self.lock_path(found.transactional_id), create=True)
            if owner is None and not (found.state == ONGOING and self._expired(found, now)):
                continue  # its owner lives and its time is not up
            try:
                with self._store_lock():
                    record = self.load(found.transactional_id)
                    if record is None or record.state not in OPEN_STATES:
                        continue
                    epoch = record.epoch
                    why = "its owner is gone"
                    if owner is None:
                        if not (record.state == ONGOING and self._expired(record, now)):
                            continue
                        epoch, why = (
                            min(record.epoch + 1, MAX_EPOCH + 1),
                            f"it ran past its timeout ({record.timeout_ms} ms)",
                        )
                    decided = record.state == COMMITTING
                    self._finish(record, epoch)
                    if record.ephemeral and owner is not None:  # nobody will use the id again
                        os.unlink(self.record_path(record.transactional_id))
                        os.unlink(self.lock_path(record.transactional_id))
                    done.append(
                        f"transaction of {record.transactional_id!r} (producer {record.producer_id}) "
                        f"{'committed' if decided else 'aborted'}: {why}"
                    )
            finally:
                if owner is not None:
                    owner.close()
        return done


def file_stem(transactional_id: str) -> str:
    """The file name (without suffix) of a transactional id: itself when it is a plain name, else a digest.

    (A Kafka transactional id may hold any character; the record keeps the id itself.)
    """
    if _PLAIN_ID.fullmatch(transactional_id) and transactional_id not in (".", "..", STORE_LOCK.split(".")[0]):
        return transactional_id
    return "~" + hashlib.sha256(transactional_id.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def has_transactions(root: str) -> bool:
    return os.path.isdir(os.path.join(root, TRANSACTIONS_DIR))
