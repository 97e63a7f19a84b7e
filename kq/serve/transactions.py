"""Kafka's transaction coordinator (KIP-98) over kq's transactional log.

A transactional producer finds this server as its transaction coordinator
(FindCoordinator key type 1), gets a producer id and epoch for its
transactional id (InitProducerId: a new epoch fences the previous holder of
the id, a zombie), names the partitions and groups its transaction touches
(AddPartitionsToTxn, AddOffsetsToTxn), produces transactional batches,
stages group offsets (TxnOffsetCommit) and ends the transaction (EndTxn):
commit or abort markers go to every partition it touched, and staged
offsets become the group's committed offsets only on commit.

The log side (transactional batches, markers, the last stable offset, the
aborted-transaction index) is the engine's (``Storage.txn_*``); the
coordinator's own state is kept per transactional id in memory, and a
transaction left open by a server that died is aborted by the engine's
rules (its lock is free). A transaction open longer than its
``transaction.timeout.ms`` is aborted here, and its producer fenced.
"""

from __future__ import annotations

import logging
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
from .storage import KqError, Storage, check_name

log = logging.getLogger("kq.serve")

TRANSACTION_KEY = 1  # FindCoordinator key_type
MAX_TRANSACTION_TIMEOUT_MS = 900_000  # Kafka's transaction.max.timeout.ms
MAX_EPOCH = 32767

# Kafka's TransactionState names (DescribeTransactions, ListTransactions).
EMPTY, ONGOING, PREPARE_COMMIT, PREPARE_ABORT, COMPLETE_COMMIT, COMPLETE_ABORT = (
    "Empty",
    "Ongoing",
    "PrepareCommit",
    "PrepareAbort",
    "CompleteCommit",
    "CompleteAbort",
)


class Fenced(Exception):
    """A request from a producer whose epoch is no longer the transactional id's."""


@dataclass
class Transaction:
    """One transactional id: its producer, and the transaction it has open."""

    transactional_id: str
    producer_id: int
    epoch: int
    timeout_ms: int
    state: str = EMPTY
    partitions: set[tuple[str, int]] = field(default_factory=set)
    groups: set[str] = field(default_factory=set)
    # group -> (topic, partition) -> (offset, metadata): committed only with the transaction
    offsets: dict[str, dict[tuple[str, int], tuple[int, str]]] = field(default_factory=dict)
    started_ms: int = -1  # wall clock, for DescribeTransactions
    started: float = 0.0  # monotonic, for the timeout
    last_change_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def open(self) -> None:
        if self.state != ONGOING:
            self.state = ONGOING
            self.started = time.monotonic()
            self.started_ms = int(time.time() * 1000)
            self.last_change_ms = self.started_ms

    def expired(self, now: float) -> bool:
        return self.state == ONGOING and now - self.started > self.timeout_ms / 1000


class Transactions:
    """The transaction APIs; ``producers`` is the Produce handler's idempotence state (epochs fence there too)."""

    def __init__(self, storage: Storage, producers: ProducerState, on_error, waiters=None):
        self.storage = storage
        self.producers = producers
        self.on_error = on_error
        self.waiters = waiters
        self.by_id: dict[str, Transaction] = {}
        self.by_producer: dict[int, Transaction] = {}

    # ------------------------------------------------------------------ lookups

    def _check(self, transactional_id: str, producer_id: int, epoch: int) -> Transaction:
        """The transaction of a request, or Fenced / KeyError (not known)."""
        txn = self.by_id.get(transactional_id)
        if txn is None:
            raise KeyError(transactional_id)
        if txn.producer_id != producer_id:
            raise LookupError(transactional_id)
        if txn.epoch != epoch:
            raise Fenced(transactional_id)
        return txn

    def _code_for(self, transactional_id: str, producer_id: int, epoch: int) -> tuple[int, Transaction | None]:
        try:
            return codes.NONE, self._check(transactional_id, producer_id, epoch)
        except Fenced:
            return codes.PRODUCER_FENCED, None
        except KeyError:
            return codes.INVALID_PRODUCER_ID_MAPPING, None
        except LookupError:
            return codes.INVALID_PRODUCER_ID_MAPPING, None

    def for_batch(self, topic: str, partition: int, producer_id: int, epoch: int) -> int:
        """Whether a transactional batch may be appended: an error code, or NONE (and the transaction is open)."""
        txn = self.by_producer.get(producer_id)
        if txn is None:
            return codes.INVALID_PRODUCER_ID_MAPPING
        if epoch < txn.epoch:
            return codes.INVALID_PRODUCER_EPOCH
        if epoch > txn.epoch:
            return codes.INVALID_PRODUCER_EPOCH
        if txn.state != ONGOING or (topic, partition) not in txn.partitions:
            return codes.INVALID_TXN_STATE
        return codes.NONE

    def pending_offsets(self, group: str) -> set[tuple[str, int]]:
        """Partitions of ``group`` with offsets staged by an open transaction (OffsetFetch's require_stable)."""
        out: set[tuple[str, int]] = set()
        for txn in self.by_id.values():
            if txn.state == ONGOING:
                out.update(txn.offsets.get(group, {}))
        return out

    # ------------------------------------------------------------------ InitProducerId

    def init_producer_id(self, body, version: int):
        def reply(code: int, pid: int = -1, epoch: int = -1):
            return InitProducerIdResponse(
                version=version, throttle_time_ms=0, error_code=code, producer_id=pid, producer_epoch=epoch
            )

        tid = body.transactional_id
        if not tid:
            return reply(codes.INVALID_REQUEST)
        timeout_ms = body.transaction_timeout_ms
        if not 0 < timeout_ms <= MAX_TRANSACTION_TIMEOUT_MS:
            return reply(codes.INVALID_TRANSACTION_TIMEOUT)
        given_pid = getattr(body, "producer_id", -1) if version >= 3 else -1
        given_epoch = getattr(body, "producer_epoch", -1) if version >= 3 else -1
        txn = self.by_id.get(tid)
        if txn is None:
            pid, epoch = self.producers.init()
            txn = Transaction(tid, pid, epoch, timeout_ms)
            self.by_id[tid] = txn
            self.by_producer[pid] = txn
            self._register(txn)
            return reply(codes.NONE, pid, epoch)
        if given_pid >= 0 and (given_pid, given_epoch) != (txn.producer_id, txn.epoch):
            # KIP-360: a producer that names its id must hold the current epoch.
            return reply(codes.PRODUCER_FENCED)
        if txn.state == ONGOING:
            # The previous holder of the id left a transaction open: it is aborted before the new one starts.
            if not self._end(txn, commit=False):
                return reply(codes.CONCURRENT_TRANSACTIONS)
        txn.timeout_ms = timeout_ms
        self._bump(txn)
        return reply(codes.NONE, txn.producer_id, txn.epoch)

    def _bump(self, txn: Transaction) -> None:
        """A new epoch for the transactional id (a new producer id when epochs run out): the old holder is fenced."""
        if txn.epoch + 1 > MAX_EPOCH:
            self.by_producer.pop(txn.producer_id, None)
            txn.producer_id, txn.epoch = self.producers.init()
            self.by_producer[txn.producer_id] = txn
        else:
            txn.epoch += 1
        self._register(txn)
        txn.state = EMPTY if txn.state in (EMPTY, ONGOING) else txn.state
        txn.last_change_ms = int(time.time() * 1000)

    def _register(self, txn: Transaction) -> None:
        self.producers.fence(txn.producer_id, txn.epoch)

    # ------------------------------------------------------------------ AddPartitionsToTxn / AddOffsetsToTxn

    def add_partitions(self, body, version: int):
        R = AddPartitionsToTxnResponse
        if version >= 4:
            results = []
            for t in body.transactions:
                topics, _ = self._add_partitions(t.transactional_id, t.producer_id, t.producer_epoch, t.topics, R)
                results.append(R.AddPartitionsToTxnResult(transactional_id=t.transactional_id, topic_results=topics))
            return R(version=version, throttle_time_ms=0, error_code=0, results_by_transaction=results)
        topics, _ = self._add_partitions(
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
        code, txn = self._code_for(tid, pid, epoch)
        wanted: list[tuple[str, int, int]] = []
        for t in topics:
            for p in t.partitions:
                wanted.append((t.name, p, code if code else self._partition_code(t.name, p)))
        if code == codes.NONE and any(c for _, _, c in wanted):
            # Kafka adds none when one fails; the others are answered OPERATION_NOT_ATTEMPTED.
            wanted = [(n, p, c or codes.OPERATION_NOT_ATTEMPTED) for n, p, c in wanted]
        elif code == codes.NONE and txn is not None:
            txn.open()
            txn.partitions.update((n, p) for n, p, _ in wanted)
        out: dict[str, list] = {}
        for name, p, c in wanted:
            out.setdefault(name, []).append(PR(partition_index=p, partition_error_code=c))
        return [TR(name=n, results_by_partition=parts) for n, parts in out.items()], code

    def _partition_code(self, topic: str, partition: int) -> int:
        try:
            check_name(topic)
            if 0 <= partition < self.storage.topic(topic).partition_count:
                return codes.NONE
        except KqError:
            pass
        return codes.UNKNOWN_TOPIC_OR_PARTITION

    def add_offsets(self, body, version: int):
        code, txn = self._code_for(body.transactional_id, body.producer_id, body.producer_epoch)
        if txn is not None:
            try:
                check_name(body.group_id, "group")
            except KqError:
                code = codes.INVALID_GROUP_ID
            else:
                txn.open()
                txn.groups.add(body.group_id)
        return AddOffsetsToTxnResponse(version=version, throttle_time_ms=0, error_code=code)

    def txn_offset_commit(self, body, version: int):
        R = TxnOffsetCommitResponse
        TR = R.TxnOffsetCommitResponseTopic
        PR = TR.TxnOffsetCommitResponsePartition
        code, txn = self._code_for(body.transactional_id, body.producer_id, body.producer_epoch)
        if code == codes.PRODUCER_FENCED:
            code = codes.INVALID_PRODUCER_EPOCH  # as Kafka's group coordinator answers
        if txn is not None and body.group_id not in txn.groups:
            code = codes.INVALID_TXN_STATE  # AddOffsetsToTxn first
        out = []
        for t in body.topics:
            parts = []
            for p in t.partitions:
                pcode = code or self._partition_code(t.name, p.partition_index)
                metadata = p.committed_metadata or ""
                if not pcode and len(metadata) > MAX_COMMIT_METADATA:
                    pcode = codes.OFFSET_METADATA_TOO_LARGE
                if not pcode and txn is not None:
                    staged = txn.offsets.setdefault(body.group_id, {})
                    staged[(t.name, p.partition_index)] = (p.committed_offset, metadata)
                parts.append(PR(partition_index=p.partition_index, error_code=pcode))
            out.append(TR(name=t.name, partitions=parts))
        return R(version=version, throttle_time_ms=0, topics=out)

    # ------------------------------------------------------------------ EndTxn

    def end_txn(self, body, version: int):
        code, txn = self._code_for(body.transactional_id, body.producer_id, body.producer_epoch)
        if txn is not None:
            if txn.state == ONGOING:
                if not self._end(txn, bool(body.committed)):
                    code = codes.COORDINATOR_NOT_AVAILABLE
            elif txn.state == (COMPLETE_COMMIT if body.committed else COMPLETE_ABORT):
                pass  # a retry of the EndTxn that ended it
            elif txn.state == EMPTY and not body.committed:
                pass  # librdkafka aborts an empty transaction after an error
            else:
                code = codes.INVALID_TXN_STATE
        return EndTxnResponse(version=version, throttle_time_ms=0, error_code=code)

    def _end(self, txn: Transaction, commit: bool) -> bool:
        """Write the markers (and commit the staged offsets); False if the log could not be written."""
        txn.state = PREPARE_COMMIT if commit else PREPARE_ABORT
        try:
            if commit:
                for group, staged in txn.offsets.items():
                    for (topic, partition), (offset, metadata) in staged.items():
                        if offset >= 0:
                            self.storage.commit(group, topic, partition, offset, metadata)
            self.storage.txn_end(sorted(txn.partitions), txn.producer_id, txn.epoch, commit)
        except (KqError, OSError) as exc:
            self.on_error(exc)
            txn.state = ONGOING
            return False
        if self.waiters is not None:
            for topic, partition in txn.partitions:
                self.waiters.appended(topic, partition)
        txn.state = COMPLETE_COMMIT if commit else COMPLETE_ABORT
        txn.partitions = set()
        txn.groups = set()
        txn.offsets = {}
        txn.last_change_ms = int(time.time() * 1000)
        return True

    def expire(self) -> None:
        """Abort the transactions open past their timeout, and fence their producers (Kafka bumps the epoch)."""
        now = time.monotonic()
        for txn in list(self.by_id.values()):
            if txn.expired(now):
                log.info("transaction %s timed out after %d ms: aborted", txn.transactional_id, txn.timeout_ms)
                if self._end(txn, commit=False):
                    self._bump(txn)

    # ------------------------------------------------------------------ describe / list

    def describe_transactions(self, body, version: int):
        R = DescribeTransactionsResponse
        TS = R.TransactionState
        out = []
        for tid in body.transactional_ids:
            txn = self.by_id.get(tid)
            if txn is None:
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
            topics: dict[str, list[int]] = {}
            for topic, partition in sorted(txn.partitions):
                topics.setdefault(topic, []).append(partition)
            out.append(
                TS(
                    error_code=0,
                    transactional_id=tid,
                    transaction_state=txn.state,
                    transaction_timeout_ms=txn.timeout_ms,
                    transaction_start_time_ms=txn.started_ms if txn.state == ONGOING else -1,
                    producer_id=txn.producer_id,
                    producer_epoch=txn.epoch,
                    topics=[TS.TopicData(topic=n, partitions=ps) for n, ps in topics.items()],
                )
            )
        return R(version=version, throttle_time_ms=0, transaction_states=out)

    def list_transactions(self, body, version: int):
        R = ListTransactionsResponse
        states = set(body.state_filters or ())
        pids = set(body.producer_id_filters or ())
        min_ms = getattr(body, "duration_filter", -1) if version >= 1 else -1
        pattern = getattr(body, "transactional_id_pattern", None) if version >= 2 else None
        now_ms = int(time.time() * 1000)
        out = []
        for txn in self.by_id.values():
            if states and txn.state not in states:
                continue
            if pids and txn.producer_id not in pids:
                continue
            if min_ms is not None and min_ms >= 0 and (txn.state != ONGOING or now_ms - txn.started_ms < min_ms):
                continue
            if pattern:
                import re

                try:
                    if not re.fullmatch(pattern, txn.transactional_id):
                        continue
                except re.error:
                    return R(
                        version=version, throttle_time_ms=0, error_code=codes.INVALID_REQUEST, transaction_states=[]
                    )
            out.append(
                R.TransactionState(
                    transactional_id=txn.transactional_id, producer_id=txn.producer_id, transaction_state=txn.state
                )
            )
        return R(version=version, throttle_time_ms=0, error_code=0, unknown_state_filters=[], transaction_states=out)
