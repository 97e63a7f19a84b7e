"""A transaction over a data directory: records to any topics and a group's offsets, all or nothing.

The backend side of ``kq produce --transactional`` and the exactly-once
``--exec --produce-to`` pipeline (kq.ops.exactly_once). The rules are the
engine's transaction store (kq.engine.transactions): this only ties its
producers and a group's offsets to one transactional id.
"""

from __future__ import annotations

from ..engine.datadir import DataDir
from ..engine.partition import Partition
from ..engine.transactions import DEFAULT_TIMEOUT_MS, Session, TransactionStore
from ..groups.store import Groups
from ..producer import Producer


class LocalTransaction:
    """A transactional id's producer on a data directory (kq.backends.base.Transaction).

    Made by ``LocalBackend.transaction``: the id is initialised at once (a
    transaction it left open is finished, earlier holders fenced) and its
    lock held until ``close``. Records sent through ``producer(...)`` and
    offsets given to ``send_offsets`` become visible to read_committed
    readers together at ``commit``; ``abort`` (or this process's death)
    drops them.
    """

    def __init__(
        self,
        backend,
        transactional_id: str,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        sync: bool = False,
        ephemeral: bool = False,
    ):
        self.backend = backend
        self.ephemeral = ephemeral  # an id made for one run: its record goes at ``close`` once its transaction is over
        data: DataDir = backend.data
        data.ensure()
        self.sync = sync
        self.store: TransactionStore = data.transactions(
            commit_offset=Groups(data).transaction_committer(sync=sync), sync=sync
        )
        self.session: Session = self.store.init_producer(transactional_id, timeout_ms, ephemeral=ephemeral)
        self._producers: list[Producer] = []
        self._joined: set[tuple[str, int]] = set()
        self._offsets: dict[str, dict[tuple[str, int], tuple[int, str]]] = {}

    @property
    def transactional_id(self) -> str:
        return self.session.transactional_id

    def join(self, partition: Partition) -> tuple[int, int]:
        """Before a producer's first batch to ``partition`` in this transaction: (producer id, epoch)."""
        key = (partition.topic, partition.number)
        if key not in self._joined:
            self.store.add_partitions(self.session, partition.topic, [partition.number])
            self._joined.add(key)
        return self.session.producer_id, self.session.epoch

    def producer(self, topic: str, partition: int | None = None, background: bool = True) -> Producer:
        """A producer whose records belong to this transaction (visible once it commits)."""
        t = self.backend.topic(topic)
        if self.sync:
            t.sync_every_batch()
        producer = Producer(t, partition, background=background, transaction=self)
        self._producers.append(producer)
        return producer

    def resolve_abandoned(self) -> None:
        """Finish the transactions other processes left open (before a group's offsets are read)."""
        self.store.resolve_abandoned(skip=self.session.transactional_id)

    def send_offsets(self, group: str, topic: str, offsets: dict[int, int]) -> None:
        """Commit ``group``'s offsets on ``topic`` (partition -> next offset) with this transaction."""
        pending = self._offsets.setdefault(group, {})
        for p, offset in offsets.items():
            pending[(topic, p)] = (offset, "")

    def commit(self) -> None:
        """Every record sent and every offset given since the last commit or abort, at once."""
        try:
            for producer in self._producers:
                producer.flush()
        except BaseException:
            self.abort()
            raise
        offsets, self._offsets = self._offsets, {}
        self._joined.clear()
        self.store.end(self.session, commit=True, offsets=offsets or None)

    def abort(self) -> None:
        """None of what was sent since the last commit or abort is ever read by read_committed readers."""
        for producer in self._producers:
            try:
                producer.flush()
            except Exception:  # noqa: S110 (what failed to land is aborted all the same)
                pass
        self._offsets = {}
        self._joined.clear()
        self.store.end(self.session, commit=False)

    def close(self) -> None:
        """Stop the producers and let go of the transactional id (an open transaction is aborted by the next)."""
        try:
            for producer in self._producers:
                try:
                    producer.close()
                except Exception:  # noqa: S110 (closing after a failure: the failure was raised already)
                    pass
        finally:
            self._producers = []
            if self.ephemeral:
                self.store.forget(self.session)
            else:
                self.store.release(self.session)
