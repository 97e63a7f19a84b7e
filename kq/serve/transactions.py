"""Kafka's transaction coordinator (KIP-98) over the data directory's transaction store.

A transactional producer finds this server as its transaction coordinator
(FindCoordinator key type 1), gets a producer id and epoch for its
transactional id (InitProducerId: a new epoch fences the previous holder of
the id, a zombie), names the partitions and groups its transaction touches
(AddPartitionsToTxn, AddOffsetsToTxn), produces transactional batches,
stages group offsets (TxnOffsetCommit) and ends the transaction (EndTxn):
commit or abort markers go to every partition it touched, and staged
offsets become the group's committed offsets only on commit.

The state of every transactional id is the directory's transaction store
(``kq.engine.transactions``, shared with `kq produce --transactional`): the
server holds the lock of each id a client initialised, so no other kq
process takes it over while the server lives, and a server that dies
leaves its transactions to be aborted by the next writer, `kq maintain` or
the next server start. What is kept here is only what the Produce path
checks on every batch without reading the store (``Held``: the id's
producer, epoch and the partitions of its open transaction).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field

from kafka.protocol.admin import DescribeTransactionsResponse, ListTransactionsResponse
from kafka.protocol.producer import (
    AddOffsetsToTxnResponse,
    AddPartitionsToTxnResponse,
    EndTxnResponse,
    InitProducerIdResponse,
    TxnOffsetCommitResponse,
)

from ..groups.store import MAX_COMMIT_METADATA
from . import codes
from .producers import ProducerState
from .storage import (
    KqError,
    ProducerFenced,
    Session,
    Storage,
    TransactionalIdBusy,
    TransactionError,
    TxnRecord,
    check_name,
)

log = logging.getLogger("kq.serve")

TRANSACTION_KEY = 1  # FindCoordinator key_type
MAX_TRANSACTION_TIMEOUT_MS = 900_000  # Kafka's transaction.max.timeout.ms
RESOLVE_SECONDS = 1.0
# Each held id keeps its lock file open; past this many, ids with no open transaction are let go
# (the least recently initialised first): a later request from their producer holds them again.
MAX_HELD_IDS = 4096  # how often transactions abandoned by other processes (or timed out) are finished

# The store's states by Kafka's TransactionState names (DescribeTransactions, ListTransactions).
KAFKA_STATES = {
    "empty": "Empty",
    "ongoing": "Ongoing",
    "committing": "PrepareCommit",
    "aborting": "PrepareAbort",
    "committed": "CompleteCommit",
    "aborted": "CompleteAbort",
}


@dataclass
class Held:
    """A transactional id this server holds: its session in the store, and what Produce checks."""

    session: Session
    timeout_ms: int
    ongoing: bool = False
    started: float = 0.0  # monotonic, when the open transaction began
    partitions: set[tuple[str, int]] = field(default_factory=set)
    groups: set[str] = field(default_factory=set)
    staged: dict[str, set[tuple[str, int]]] = field(default_factory=dict)  # group -> partitions with staged offsets
    last_end: bool | None = None  # how the last transaction ended (True: committed), for a retried EndTxn
    # The last transaction's markers are written and its end not yet recorded: the next write of the
    # record records it (TransactionStore.finish_decided, record_end=False).
    end_unrecorded: bool = False
    timed_out_epoch: int = -1  # the epoch a timeout fenced: its producer may still bump it (KIP-360), as in Kafka

    @property
    def producer_id(self) -> int:
        return self.session.producer_id

    @property
    def epoch(self) -> int:
        return self.session.epoch

    def open(self) -> None:
        if not self.ongoing:
            self.ongoing, self.started = True, time.monotonic()

    def closed(self, committed: bool | None) -> None:
        self.ongoing, self.partitions, self.groups, self.staged = False, set(), set(), {}
        self.last_end = committed


class Transactions:
    """The transaction APIs; ``producers`` is the Produce handler's idempotence state (epochs fence there too)."""

    def __init__(self, storage: Storage, producers: ProducerState, on_error, waiters=None):
        self.storage = storage
        self.store = storage.transaction_store()
        self.producers = producers
        self.on_error = on_error
        self.waiters = waiters
        self.held: dict[str, Held] = {}
        self.by_producer: dict[int, Held] = {}
        self._next_resolve = 0.0
        # transactional id -> (session, partitions) of a transaction decided and answered, markers to write
        self._finishing: dict[str, tuple[Session, set[tuple[str, int]]]] = {}

    def close(self) -> None:
        for tid in list(self._finishing):
            self._finish_pending(tid)
        for held in self.held.values():
            self._record_end(held)
            self.store.release(held.session)
        self.held.clear()
        self.by_producer.clear()
        self.store.close()

    # ------------------------------------------------------------------ lookups

    def _lookup(self, tid: str, producer_id: int, epoch: int) -> tuple[int, Held | None]:
        """The held id of a request, or the error code to answer with."""
        if tid in self._finishing:
            self._finish_pending(tid)
        held = self.held.get(tid)
        if held is None:
            held = self._adopt(tid, producer_id, epoch)
            if held is None:
                return codes.PRODUCER_FENCED if self._known(tid) else codes.INVALID_PRODUCER_ID_MAPPING, None
        if held.producer_id != producer_id:
            return codes.INVALID_PRODUCER_ID_MAPPING, None
        if held.epoch != epoch:
            return codes.PRODUCER_FENCED, None
        return codes.NONE, held

    def _known(self, tid: str) -> bool:
        try:
            return self.store.load(tid) is not None
        except (KqError, OSError):
            return False

    def _adopt(self, tid: str, producer_id: int, epoch: int) -> Held | None:
        """A producer initialised before this server started (it restarted): held again if it is still current."""
        try:
            record = self.store.load(tid)
            if record is None or (record.producer_id, record.epoch) != (producer_id, epoch):
                return None
            session = self.storage.adopt_transactional_id(tid, producer_id, epoch)
        except (KqError, OSError):
            return None
        if session is None:
            return None
        held = self._hold(session, record.timeout_ms)
        if record.state == "ongoing":
            held.open()
            held.partitions = {(t, p) for t, ps in record.partitions.items() for p in ps}
        return held

    def _hold(self, session: Session, timeout_ms: int) -> Held:
        if len(self.held) >= MAX_HELD_IDS:
            for tid, idle in list(self.held.items()):
                if len(self.held) < MAX_HELD_IDS:
                    break
                if not idle.ongoing:
                    del self.held[tid]
                    self.by_producer.pop(idle.producer_id, None)
                    self._record_end(idle)
                    self.store.release(idle.session)
        held = Held(session, timeout_ms)
        self.held[session.transactional_id] = held
        self.by_producer[session.producer_id] = held
        self.producers.fence(session.producer_id, session.epoch)
        return held

    def for_batch(self, topic: str, partition: int, producer_id: int, epoch: int) -> int:
        """Whether a transactional batch may be appended: an error code, or NONE (and the transaction is open)."""
        held = self.by_producer.get(producer_id)
        if held is None:
            return codes.INVALID_PRODUCER_ID_MAPPING
        if epoch != held.epoch:
            return codes.INVALID_PRODUCER_EPOCH
        if not held.ongoing or (topic, partition) not in held.partitions:
            return codes.INVALID_TXN_STATE
        return codes.NONE

    def pending_offsets(self, group: str) -> set[tuple[str, int]]:
        """Partitions of ``group`` with offsets staged by an open transaction (OffsetFetch's require_stable)."""
        out: set[tuple[str, int]] = set()
        for held in self.held.values():
            if held.ongoing:
                out.update(held.staged.get(group, ()))
        return out

    def _failed(self, exc: BaseException) -> int:
        """The answer to a store call that raised ``exc``."""
        if isinstance(exc, ProducerFenced):
            return codes.PRODUCER_FENCED
        if isinstance(exc, TransactionalIdBusy):
            return codes.CONCURRENT_TRANSACTIONS  # another kq process holds the id: the client retries
        if isinstance(exc, TransactionError):
            return codes.INVALID_TXN_STATE
        self.on_error(exc)
        return codes.COORDINATOR_NOT_AVAILABLE

    # ------------------------------------------------------------------ InitProducerId

    def init_producer_id(self, body, version: int):
        def reply(code: int, pid: int = -1, epoch: int = -1):
            return InitProducerIdResponse(
                version=version, throttle_time_ms=0, error_code=code, producer_id=pid, producer_epoch=epoch
            )

        tid = body.transactional_id
        if not tid or len(tid) > 4096:
            return reply(codes.INVALID_REQUEST)
        timeout_ms = body.transaction_timeout_ms
        if not 0 < timeout_ms <= MAX_TRANSACTION_TIMEOUT_MS:
            return reply(codes.INVALID_TRANSACTION_TIMEOUT)
        given = (body.producer_id, body.producer_epoch) if version >= 3 and body.producer_id >= 0 else None
        if tid in self._finishing:
            self._finish_pending(tid)
        try:
            if given is not None:
                # KIP-360: a producer that names its id bumps its own epoch, if it still holds it.
                record = self.store.load(tid)
                held = self.held.get(tid)
                timed_out = held is not None and (held.producer_id, held.timed_out_epoch) == given
                if record is None or ((record.producer_id, record.epoch) != given and not timed_out):
                    return reply(codes.PRODUCER_FENCED)
            old = self.held.pop(tid, None)
            if old is not None:
                self.by_producer.pop(old.producer_id, None)
                self._record_end(old)  # else the new epoch would find it decided and finish it again
                self.store.release(old.session)
            session = self.store.init_producer(tid, timeout_ms, lock=True)
        except (KqError, OSError) as exc:
            return reply(self._failed(exc))
        held = self._hold(session, timeout_ms)
        self._woken(held)
        return reply(codes.NONE, held.producer_id, held.epoch)

    def _record_end(self, held: Held) -> None:
        """Record the end of the held id's last transaction, if its markers are written and it is not recorded."""
        if not held.end_unrecorded:
            return
        try:
            self.store.record_end(held.session)
        except (KqError, OSError) as exc:  # it stays decided: finishing it again writes nothing
            self.on_error(exc)
        held.end_unrecorded = False

    def _record_ends(self) -> None:
        for held in self.held.values():
            self._record_end(held)

    def _woken(self, held: Held) -> None:
        """Wake the Fetch waiters of partitions a marker may have gone to (a transaction ended out of EndTxn)."""
        if self.waiters is not None:
            for topic, partition in held.partitions:
                self.waiters.appended(topic, partition)

    # ------------------------------------------------------------------ AddPartitionsToTxn / AddOffsetsToTxn

    def add_partitions(self, body, version: int):
        R = AddPartitionsToTxnResponse
        if version >= 4:
            results = []
            for t in body.transactions:
                topics = self._add_partitions(t.transactional_id, t.producer_id, t.producer_epoch, t.topics, R)
                results.append(R.AddPartitionsToTxnResult(transactional_id=t.transactional_id, topic_results=topics))
            return R(version=version, throttle_time_ms=0, error_code=0, results_by_transaction=results)
        topics = self._add_partitions(
            body.v3_and_below_transactional_id,
            body.v3_and_below_producer_id,
            body.v3_and_below_producer_epoch,
            body.v3_and_below_topics,
            R,
        )
        return R(version=version, throttle_time_ms=0, error_code=0, results_by_topic_v3_and_below=topics)

    def _add_partitions(self, tid: str, pid: int, epoch: int, topics, R):
        TR = R.AddPartitionsToTxnTopicResult
        PR = TR.AddPartitionsToTxnPartitionResult
        code, held = self._lookup(tid, pid, epoch)
        wanted: list[tuple[str, int, int]] = []
        for t in topics:
            for p in t.partitions:
                wanted.append((t.name, p, code if code else self._partition_code(t.name, p)))
        if code == codes.NONE and any(c for _, _, c in wanted):
            # Kafka adds none when one fails; the others are answered OPERATION_NOT_ATTEMPTED.
            wanted = [(n, p, c or codes.OPERATION_NOT_ATTEMPTED) for n, p, c in wanted]
        elif code == codes.NONE and held is not None:
            by_topic: dict[str, list[int]] = {}
            for name, p, _ in wanted:
                if (name, p) not in held.partitions:
                    by_topic.setdefault(name, []).append(p)
            try:
                for name, numbers in by_topic.items():
                    self.store.add_partitions(held.session, name, numbers, ended=held.end_unrecorded)
                    held.end_unrecorded = False
                    held.open()
                    held.partitions.update((name, p) for p in numbers)
            except (KqError, OSError) as exc:
                failed = self._failed(exc)
                wanted = [(n, p, failed) for n, p, _ in wanted]
        out: dict[str, list] = {}
        for name, p, c in wanted:
            out.setdefault(name, []).append(PR(partition_index=p, partition_error_code=c))
        return [TR(name=n, results_by_partition=parts) for n, parts in out.items()]

    def _partition_code(self, topic: str, partition: int) -> int:
        try:
            check_name(topic)
            if 0 <= partition < self.storage.topic(topic).partition_count:
                return codes.NONE
        except KqError:
            pass
        return codes.UNKNOWN_TOPIC_OR_PARTITION

    def add_offsets(self, body, version: int):
        code, held = self._lookup(body.transactional_id, body.producer_id, body.producer_epoch)
        if held is not None:
            try:
                check_name(body.group_id, "group")
                if body.group_id not in held.groups:
                    # the transaction begins (its clock runs)
                    self.store.add_offsets(held.session, body.group_id, {}, ended=held.end_unrecorded)
                    held.end_unrecorded = False
                    held.open()
                    held.groups.add(body.group_id)
            except KqError as exc:
                code = codes.INVALID_GROUP_ID if not isinstance(exc, TransactionError) else self._failed(exc)
            except OSError as exc:
                code = self._failed(exc)
        return AddOffsetsToTxnResponse(version=version, throttle_time_ms=0, error_code=code)

    def txn_offset_commit(self, body, version: int):
        R = TxnOffsetCommitResponse
        TR = R.TxnOffsetCommitResponseTopic
        PR = TR.TxnOffsetCommitResponsePartition
        code, held = self._lookup(body.transactional_id, body.producer_id, body.producer_epoch)
        if code == codes.PRODUCER_FENCED:
            code = codes.INVALID_PRODUCER_EPOCH  # as Kafka's group coordinator answers
        if held is not None and body.group_id not in held.groups:
            code = codes.INVALID_TXN_STATE  # AddOffsetsToTxn first
        answers: list[tuple[str, list[tuple[int, int]]]] = []
        staged: dict[tuple[str, int], tuple[int, str]] = {}
        for t in body.topics:
            parts = []
            for p in t.partitions:
                pcode = code or self._partition_code(t.name, p.partition_index)
                metadata = p.committed_metadata or ""
                if not pcode and len(metadata) > MAX_COMMIT_METADATA:
                    pcode = codes.OFFSET_METADATA_TOO_LARGE
                if not pcode and p.committed_offset >= 0:
                    staged[(t.name, p.partition_index)] = (p.committed_offset, metadata)
                parts.append((p.partition_index, pcode))
            answers.append((t.name, parts))
        if staged and held is not None:
            try:
                self.store.add_offsets(held.session, body.group_id, staged, ended=held.end_unrecorded)
                held.end_unrecorded = False
                held.staged.setdefault(body.group_id, set()).update(staged)
            except (KqError, OSError) as exc:
                failed = self._failed(exc)
                answers = [(name, [(i, c or failed) for i, c in parts]) for name, parts in answers]
        out = [
            TR(name=name, partitions=[PR(partition_index=i, error_code=c) for i, c in parts]) for name, parts in answers
        ]
        return R(version=version, throttle_time_ms=0, topics=out)

    # ------------------------------------------------------------------ EndTxn

    def end_txn(self, body, version: int):
        code, held = self._lookup(body.transactional_id, body.producer_id, body.producer_epoch)
        commit = bool(body.committed)
        if held is not None:
            if not held.ongoing:
                # Nothing open: a retry of the EndTxn that ended it, or an abort of an empty transaction.
                if held.last_end is not None and held.last_end != commit:
                    code = codes.INVALID_TXN_STATE
                elif held.last_end is None and commit and held.partitions:
                    code = codes.INVALID_TXN_STATE
            else:
                try:
                    decided, expired = self.store.decide(held.session, commit)
                except (KqError, OSError) as exc:
                    code = self._failed(exc)
                    if code == codes.COORDINATOR_NOT_AVAILABLE:
                        return EndTxnResponse(version=version, throttle_time_ms=0, error_code=code)
                else:
                    if expired and commit:
                        code = codes.PRODUCER_FENCED  # committing past its timeout aborts instead, as in Kafka
                    if decided is not None:
                        self._finish_after_answer(held)
                held.closed(commit if code == codes.NONE else False)
        return EndTxnResponse(version=version, throttle_time_ms=0, error_code=code)

    def _finish_after_answer(self, held: Held) -> None:
        """Write the markers of a decided transaction once the EndTxn answer is out (the loop's next turn).

        The answer does not wait for them: the client goes on to its next
        transaction meanwhile. Nothing can see the difference: the event loop
        runs this before it reads any later request (and every transaction
        API finishes a pending one of its id first); a server killed in
        between leaves a ``committing`` record, which the next start commits.
        """
        tid = held.session.transactional_id
        self._finishing[tid] = (held.session, set(held.partitions))
        try:
            asyncio.get_running_loop().call_soon(self._finish_pending, tid)
        except RuntimeError:  # no event loop (called directly): now
            self._finish_pending(tid)

    def _finish_pending(self, tid: str) -> None:
        pending = self._finishing.pop(tid, None)
        if pending is None:
            return
        session, partitions = pending
        held = self.held.get(tid)
        try:
            # The end is recorded by the id's next write of its record (the next transaction's start),
            # one file replacement fewer a transaction; the server holds the id's lock meanwhile.
            recorded = self.store.finish_decided(session, record_end=held is None or held.session is not session)
        except (KqError, OSError) as exc:  # the record stays decided: the next start, or expire, finishes it
            self.on_error(exc)
        else:
            if held is not None and held.session is session:
                held.end_unrecorded = not recorded
        if self.waiters is not None:
            for topic, partition in partitions:
                self.waiters.appended(topic, partition)

    def expire(self) -> None:
        """Finish transactions open past their timeout (this server's: their producers are fenced) and,
        now and then, those other kq processes abandoned (their lock is free)."""
        now = time.monotonic()
        expired = [h for h in self.held.values() if h.ongoing and now - h.started > h.timeout_ms / 1000]
        if not expired and now < self._next_resolve:
            return
        self._next_resolve = now + RESOLVE_SECONDS
        try:
            for line in self.store.resolve_abandoned():
                log.info("%s", line)
        except (KqError, OSError) as exc:
            self.on_error(exc)
            return
        for held in expired:
            try:
                record = self.store.load(held.session.transactional_id)
            except (KqError, OSError) as exc:
                self.on_error(exc)
                continue
            if record is None or record.state != "ongoing" or record.epoch != held.epoch:
                self._woken(held)
                held.closed(False)
                if record is not None and record.producer_id == held.producer_id and record.epoch != held.epoch:
                    # Aborted on timeout with a new epoch: the producer's requests are fenced from here on.
                    held.timed_out_epoch = held.session.epoch
                    held.session.epoch = record.epoch
                    self.producers.fence(record.producer_id, record.epoch)

    # ------------------------------------------------------------------ describe / list

    def describe_transactions(self, body, version: int):
        R = DescribeTransactionsResponse
        TS = R.TransactionState
        self._record_ends()  # a transaction ended is described as ended
        out = []
        for tid in body.transactional_ids:
            try:
                record = self.store.load(tid)
            except (KqError, OSError) as exc:
                self.on_error(exc)
                record = None
            if record is None:
                out.append(
                    TS(
                        error_code=codes.TRANSACTIONAL_ID_NOT_FOUND,
                        transactional_id=tid,
                        transaction_state="",
                        transaction_timeout_ms=0,
                        transaction_start_time_ms=-1,
                        producer_id=-1,
                        producer_epoch=-1,
                        topics=[],
                    )
                )
                continue
            out.append(
                TS(
                    error_code=0,
                    transactional_id=tid,
                    transaction_state=KAFKA_STATES[record.state],
                    transaction_timeout_ms=record.timeout_ms,
                    transaction_start_time_ms=record.started_at if record.started_at is not None else -1,
                    producer_id=record.producer_id,
                    producer_epoch=record.epoch,
                    topics=[TS.TopicData(topic=n, partitions=ps) for n, ps in sorted(record.partitions.items())],
                )
            )
        return R(version=version, throttle_time_ms=0, transaction_states=out)

    def list_transactions(self, body, version: int):
        R = ListTransactionsResponse
        self._record_ends()
        known = set(KAFKA_STATES.values())
        states = set(body.state_filters or ())
        pids = set(body.producer_id_filters or ())
        min_ms = body.duration_filter if version >= 1 else -1
        pattern = body.transactional_id_pattern if version >= 2 else None
        try:
            matcher = re.compile(pattern) if pattern else None
        except re.error:
            return R(version=version, throttle_time_ms=0, error_code=codes.INVALID_REQUEST, transaction_states=[])
        try:
            records: list[TxnRecord] = self.store.records()
        except (KqError, OSError) as exc:
            self.on_error(exc)
            records = []
        now_ms = int(time.time() * 1000)
        out = []
        for record in records:
            state = KAFKA_STATES[record.state]
            if states and state not in states:
                continue
            if pids and record.producer_id not in pids:
                continue
            if min_ms is not None and min_ms >= 0:
                if record.started_at is None or now_ms - record.started_at < min_ms:
                    continue
            if matcher is not None and not matcher.fullmatch(record.transactional_id):
                continue
            out.append(
                R.TransactionState(
                    transactional_id=record.transactional_id, producer_id=record.producer_id, transaction_state=state
                )
            )
        return R(
            version=version,
            throttle_time_ms=0,
            error_code=0,
            unknown_state_filters=sorted(states - known),
            transaction_states=out,
        )
