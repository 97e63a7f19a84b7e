"""Every call kq serve makes into kq's storage engine, in one place.

The engine's internals are being redesigned behind a backend interface
(issue #13); keeping the server's use of it to this module, and to a few
documented calls (DataDir, Topic, Partition, Cursor, Groups, Member), is
what lets that change leave the rest of kq/serve alone.
"""

from __future__ import annotations

import os
import time

from ..engine.batch import CODEC_MASK, Payload
from ..engine.batch import CONTROL as CONTROL_BATCH
from ..engine.batch import TRANSACTIONAL as TRANSACTIONAL_BATCH
from ..engine.batch import pack as pack_batch
from ..engine.compression import CODEC_IDS
from ..engine.cursor import Cursor
from ..engine.datadir import DataDir
from ..engine.dedup import DedupWindow, record_ids
from ..engine.fileio import try_lock
from ..engine.location import TOPIC_FILE
from ..engine.names import check_name
from ..engine.transactions import Session, TransactionStore, TxnRecord
from ..errors import (
    GroupNotFound,
    InvalidName,
    KqError,
    MessageTooLarge,
    ProducerFenced,
    TopicExists,
    TopicNotFound,
    TransactionalIdBusy,
    TransactionError,
)
from ..groups.member import Member
from ..groups.store import CommittedOffset, Groups

# The engine's errors and name check, for the rest of kq/serve.
__all__ = [
    "Storage",
    "CONTROL_BATCH",
    "TRANSACTIONAL_BATCH",
    "GroupNotFound",
    "InvalidName",
    "KqError",
    "MessageTooLarge",
    "Payload",
    "ProducerFenced",
    "Session",
    "TransactionalIdBusy",
    "TransactionError",
    "TxnRecord",
    "TopicExists",
    "TopicNotFound",
    "check_name",
]

# A cached Topic is looked at again after this long: `kq topic delete` and
# `kq topic create` in another process change what a name means.
TOPIC_RECHECK_SECONDS = 1.0
MAX_READERS = 1024  # open cursors kept for consumers that come back for more
CACHED_READ_BYTES = 4 * 1024 * 1024  # a cursor that read more at once is not kept


class Storage:
    """A data directory as kq serve sees it: topics, partitions, groups."""

    def __init__(self, path: str | None, sync: bool = False):
        self.data = DataDir(path)
        self.path = self.data.path
        self.sync = sync  # --sync: every partition fdatasyncs each batch
        self.groups = Groups(self.data)
        self._topics: dict[str, tuple] = {}  # name -> (Topic, directory inode, checked at)
        self._readers: dict[tuple, Cursor] = {}  # (topic, partition, next offset) -> Cursor
        self._windows: dict[str, tuple] = {}  # name -> (Topic, its DedupWindow or None)

    # ------------------------------------------------------------------ topics

    def ensure(self) -> None:
        self.data.ensure()

    def topic_names(self) -> list[str]:
        return self.data.topic_names()

    def topic(self, name: str):
        """The Topic called ``name`` (TopicNotFound, InvalidName)."""
        now = time.monotonic()
        cached = self._topics.get(name)
        if cached is not None:
            topic, inode, checked = cached
            if now - checked < TOPIC_RECHECK_SECONDS:
                return topic
            if _inode(topic.path) == inode:
                self._topics[name] = (topic, inode, now)
                return topic
            self._forget(name)
        topic = self.data.topic(name)
        if self.sync:
            for number in range(topic.partition_count):
                topic.partition(number).sync = True
        self._topics[name] = (topic, _inode(topic.path), now)
        return topic

    def _forget(self, name: str) -> None:
        cached = self._topics.pop(name, None)
        if cached is not None:
            cached[0].close()
        window = self._windows.pop(name, None)
        if window is not None and window[1] is not None:
            window[1].close()
        for key in [k for k in self._readers if k[0] == name]:
            self._readers.pop(key).close()

    def create_topic(
        self, name: str, partitions: int, config: dict | None = None, kafka_config: dict[str, str] | None = None
    ):
        self._forget(name)
        self.data.create_topic(name, partitions, config, kafka_config=kafka_config)
        return self.topic(name)

    def delete_topic(self, name: str) -> None:
        self._forget(name)
        self.data.delete_topic(name)

    def topic_config(self, name: str) -> dict:
        return dict(self.topic(name).config)

    def alter_topic(self, name: str, changes: dict, kafka_config: dict[str, str] | None = None) -> dict:
        self._forget(name)
        return dict(self.data.alter_topic(name, changes, kafka_config).config)

    def add_partitions(self, name: str, count: int) -> None:
        topic = self.topic(name)
        self.data.add_partitions(topic, count)
        self._forget(name)

    def trim(self, name: str, partition: int, before: int) -> int:
        """Delete the records before ``before`` (at most the end); the new start offset."""
        from ..engine.maintain import trim

        return trim(self.topic(name).partition(partition), before).start_offset

    # ------------------------------------------------------------------ partitions

    @staticmethod
    def pack(
        values, keys, headers, timestamps, codec: int = 0, stored: int = 0, producer: tuple[int, int] | None = None
    ) -> Payload:
        """One batch's records packed for ``append_packed`` (MessageTooLarge), before anything is written.

        ``codec``: the Kafka compression codec the records came in, kept to serve them so again.
        ``stored``: the codec the payload is stored compressed with (``stored_codec``).
        ``producer``: (producer id, epoch) of a transactional batch, whose transaction must be open
        on the partition (``append_packed`` raises ProducerFenced otherwise).
        """
        return pack_batch(
            values,
            keys=keys,
            headers=headers,
            timestamps=timestamps,
            attributes=codec,
            compression=stored,
            producer=producer,
        )

    @staticmethod
    def stored_codec(config: dict, arrived: int) -> tuple[int, int]:
        """(codec to serve the records in, codec to store them in) under a topic's ``compression``.

        As Kafka: ``producer`` keeps the producer's codec, a codec recompresses the
        records with it (and consumers get them so), ``none`` stores them uncompressed
        (and serves them in the producer's codec, as kq serve always has).
        """
        setting = config.get("compression", "none")
        if setting == "producer":
            return arrived, arrived
        if setting == "none":
            return arrived, 0
        stored = CODEC_IDS[setting]
        return stored, stored

    def append_packed(self, topic: str, partition: int, payload: Payload, batch=None) -> tuple[int, int]:
        """Append one packed batch; (first, last) offset. On disk (fdatasync) if the topic or --sync says so.

        If the topic has a deduplication window, ``batch`` (the records
        ``payload`` packs) is appended without the records whose id the
        window has seen: (end offset, end offset - 1) if none is left.
        """
        t = self.topic(topic)
        part = t.partition(partition)
        try:
            window = self._window(topic, t)
            if window is None or batch is None:
                return part.append_payload(payload)
            with window.holding():
                duplicates = window.admit(record_ids(batch.keys, batch.headers, window.header, batch.count))
                if duplicates:
                    dropped = set(duplicates)
                    kept = [i for i in range(batch.count) if i not in dropped]
                    if not kept:  # acknowledged, as NATS does, with nothing stored
                        end = part.end_offset()
                        window.commit()
                        return end, end - 1
                    keys, headers = batch.keys, batch.headers
                    payload = self.pack(
                        [batch.values[i] for i in kept],
                        None if keys is None else [keys[i] for i in kept],
                        None if headers is None else [headers[i] for i in kept],
                        [batch.timestamps[i] for i in kept],
                        payload.attributes & CODEC_MASK,  # the codec to serve them in, as packed
                        payload.codec,
                        (payload.producer_id, payload.producer_epoch) if payload.producer_id >= 0 else None,
                    )
                first, last = part.append_payload(payload)
                window.appended(partition, first, last)
                window.commit()
                return first, last
        except FileNotFoundError:
            # The topic was deleted (and maybe created again) under us.
            self._forget(topic)
            raise

    def _window(self, name: str, topic) -> DedupWindow | None:
        """The topic's deduplication window, if its settings give it one."""
        cached = self._windows.get(name)
        if cached is not None and cached[0] is topic:
            return cached[1]
        if cached is not None and cached[1] is not None:
            cached[1].close()
        window_ms = topic.config["dedup_window_ms"]
        window = None if window_ms is None else DedupWindow(topic, window_ms, topic.config["dedup_header"])
        self._windows[name] = (topic, window)
        return window

    # ------------------------------------------------------------------ transactions (KIP-98)

    def transaction_store(self) -> TransactionStore:
        """The directory's transaction store; its partitions are this adapter's (cached) ones."""
        return TransactionStore(
            self.path,
            commit_offset=self.commit,
            open_partition=lambda topic, number: self.topic(topic).partition(number),
        )

    def adopt_transactional_id(self, transactional_id: str, producer_id: int, epoch: int) -> Session | None:
        """Hold a transactional id again (its lock) for a producer initialised before this server started;
        None if another live process holds it."""
        store = self.transaction_store()
        lock = try_lock(store.lock_path(transactional_id), create=True)
        return None if lock is None else Session(transactional_id, producer_id, epoch, lock)

    def last_stable_offset(self, topic: str, partition: int) -> int:
        """The first offset of a transaction still open (the end when none is): where read_committed stops."""
        return self.topic(topic).partition(partition).last_stable_offset()

    def aborted_transactions(self, topic: str, partition: int, start: int, end: int) -> list[tuple[int, int]]:
        """(producer id, first offset) of the aborted transactions with records in [start, end)."""
        found = self.topic(topic).partition(partition).aborted_transactions(start, end)
        return [(a.producer_id, a.first_offset) for a in found]

    def offsets(self, topic: str, partition: int) -> tuple[int, int]:
        """(log start offset, high watermark) of a partition."""
        part = self.topic(topic).partition(partition)
        return part.start_offset(), part.end_offset()

    def end_offset(self, topic: str, partition: int) -> int:
        return self.topic(topic).partition(partition).end_offset()

    def offset_for_timestamp(self, topic: str, partition: int, timestamp: int) -> tuple[int, int] | None:
        """(offset, timestamp) of the first record at or after ``timestamp``; None if there is none."""
        part = self.topic(topic).partition(partition)
        offset = part.offset_for_timestamp(timestamp)
        if offset >= part.end_offset():
            return None
        return offset, self._timestamp_at(part, offset)

    def max_timestamp_offset(self, topic: str, partition: int) -> tuple[int, int] | None:
        """(offset, timestamp) of the record with the largest timestamp (the first of equals)."""
        part = self.topic(topic).partition(partition)
        best = None
        cursor = part.cursor(part.start_offset())
        try:
            while True:
                batches = cursor.poll()
                if not batches:
                    return best
                for b in batches:
                    if best is None or b.max_timestamp > best[1]:
                        for off, ts in zip(b.offsets(), b.timestamps()):
                            if ts == b.max_timestamp:
                                best = (off, ts)
                                break
        finally:
            cursor.close()

    @staticmethod
    def _timestamp_at(part, offset: int) -> int:
        cursor = part.cursor(offset)
        try:
            for b in cursor.poll(max_bytes=1):
                for off, ts in zip(b.offsets(), b.timestamps()):
                    if off >= offset:
                        return ts
        finally:
            cursor.close()
        return -1

    def read(self, topic: str, partition: int, offset: int, max_bytes: int) -> list:
        """Decoded kq batches from the one holding ``offset`` on, about ``max_bytes`` of them.

        A cursor that ended where a consumer asks next is reused, so a
        consumer reading on costs no seek.
        """
        part = self.topic(topic).partition(partition)
        cursor = self._readers.pop((topic, partition, offset), None)
        if cursor is None:
            cursor = part.cursor(offset)
        try:
            batches = cursor.poll(max_bytes=max_bytes)
        except BaseException:
            cursor.close()
            raise
        if sum(b.size for b in batches) > CACHED_READ_BYTES:
            # Its read buffers are as large as what it read: keep no such cursor
            # waiting for a consumer that may never come back.
            cursor.close()
            return batches
        self._readers[(topic, partition, cursor.offset)] = cursor
        while len(self._readers) > MAX_READERS:
            self._readers.pop(next(iter(self._readers))).close()
        return batches

    # ------------------------------------------------------------------ groups

    def group_names(self) -> list[str]:
        return self.groups.names()

    def group_topics(self, group: str) -> list[str]:
        return self.groups.topics(group)

    def committed(self, group: str, topic: str) -> dict[int, int]:
        return self.groups.committed(group, topic)

    def committed_offsets(self, group: str, topic: str) -> dict[int, CommittedOffset]:
        """By partition: (offset, topic_id, metadata), as ``Groups.committed_offsets``."""
        return self.groups.committed_offsets(group, topic)

    def commit(self, group: str, topic: str, partition: int, offset: int, metadata: str = "") -> None:
        """Commit an offset of the topic called ``topic``, recording its id as the CLI's commits do."""
        self.groups.commit(group, self.topic(topic), partition, offset, metadata)

    def delete_group(self, group: str) -> None:
        self.groups.delete(group)

    def group_exists(self, group: str) -> bool:
        return group in self.groups.names()

    def kq_members(self, group: str, topic: str) -> list[dict]:
        return self.groups.members(group, topic)

    def claim_owners(self, group: str, topic: str) -> dict[int, str]:
        return self.groups.owners(group, topic)

    def member(self, group: str, topic: str) -> Member:
        """A kq group member (not yet joined) through which the server holds partitions."""
        return Member(self.groups, group, topic)

    # ------------------------------------------------------------------ shutdown

    def close(self) -> None:
        for cursor in self._readers.values():
            cursor.close()
        self._readers.clear()
        for topic, _, _ in self._topics.values():
            topic.close()
        self._topics.clear()


def _inode(path: str) -> tuple | None:
    """What changes when a topic is deleted and made again, or its settings altered (topic.json replaced)."""
    try:
        return os.stat(path).st_ino, os.stat(os.path.join(path, TOPIC_FILE)).st_ino
    except FileNotFoundError:
        return None
