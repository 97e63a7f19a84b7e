"""Fetch: kq's batches read as Kafka batches, and the long poll (``Waiters``) until records come."""

from __future__ import annotations

import asyncio
import logging
import time

from kafka.protocol.consumer import FetchResponse

from . import codes, fetch_records
from .storage import KqError, Storage, TopicNotFound, check_name

log = logging.getLogger("kq.serve")

MAX_FETCH_RESPONSE_BYTES = 64 * 1024 * 1024  # whatever a client asks for
# How often partitions with waiting consumers are looked at for records that
# another process (`kq produce`) appended, while such records flow and after
# a quiet second (as `kq consume -f` does); appends through this server
# wake waiters at once.
READ_COMMITTED = 1  # a Fetch's isolation level
EXTERNAL_POLL_SECONDS = 0.005
EXTERNAL_IDLE_POLL_SECONDS = 0.04
QUIET_SECONDS = 1.0


class Waiters:
    """Consumers in a long-poll Fetch, woken by appends to the partitions they read."""

    def __init__(self, storage: Storage):
        self.storage = storage
        self._waiting: dict[tuple[str, int], set[asyncio.Future]] = {}
        self._ends: dict[tuple[str, int], int] = {}
        self._watcher: asyncio.Task | None = None
        self._last_change = 0.0  # when the watcher last saw another process append
        self.closed = False  # the server is stopping: long polls answer at once

    def appended(self, topic: str, partition: int) -> None:
        for fut in self._waiting.pop((topic, partition), ()):
            if not fut.done():
                fut.set_result(None)

    async def wait(self, partitions: list[tuple[str, int, int]], timeout: float) -> None:
        """Wait until one of (topic, partition, end offset seen) grows, or ``timeout``, or the server stops."""
        if self.closed:
            return
        fut = asyncio.get_running_loop().create_future()
        for topic, partition, end in partitions:
            self._waiting.setdefault((topic, partition), set()).add(fut)
            self._ends[(topic, partition)] = end
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch())
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            for topic, partition, _ in partitions:
                futs = self._waiting.get((topic, partition))
                if futs is not None:
                    futs.discard(fut)
                    if not futs:
                        del self._waiting[(topic, partition)]
                        self._ends.pop((topic, partition), None)

    async def _watch(self) -> None:
        """While anyone waits, look for appends made by other processes."""
        while self._waiting:
            quiet = time.monotonic() - self._last_change > QUIET_SECONDS
            await asyncio.sleep(EXTERNAL_IDLE_POLL_SECONDS if quiet else EXTERNAL_POLL_SECONDS)
            for key in list(self._waiting):
                try:
                    end = self.storage.end_offset(*key)
                except (KqError, OSError):
                    end = None  # deleted: wake the waiters, who will see the error
                if end is None or end != self._ends.get(key, end):
                    self._last_change = time.monotonic()
                    self.appended(*key)

    def close(self) -> None:
        """Answer every long poll now: a stopping server does not keep its clients (or its owner) waiting."""
        self.closed = True
        for futs in self._waiting.values():
            for fut in futs:
                if not fut.done():
                    fut.set_result(None)
        if self._watcher is not None:
            self._watcher.cancel()


class FetchHandler:
    """Fetch, over the storage adapter; ``broker.response_room()`` says how many bytes an answer may take now."""

    def __init__(self, storage: Storage, waiters: Waiters, broker):
        self.storage = storage
        self.waiters = waiters
        self.broker = broker

    async def fetch(self, body, version: int):
        R = FetchResponse
        if version >= 7 and body.session_id != 0:
            return R(
                version=version,
                throttle_time_ms=0,
                error_code=codes.FETCH_SESSION_ID_NOT_FOUND,
                session_id=0,
                responses=[],
            )
        deadline = time.monotonic() + max(body.max_wait_ms, 0) / 1000
        max_bytes = min(body.max_bytes if version >= 3 else MAX_FETCH_RESPONSE_BYTES, MAX_FETCH_RESPONSE_BYTES)
        while True:
            # A fuller server answers with less (at least a batch, as Kafka does past max_bytes).
            responses, total, ends, errors = self._read_fetch(body, min(max_bytes, max(self.broker.response_room(), 1)))
            remaining = deadline - time.monotonic()
            if total >= body.min_bytes or errors or remaining <= 0 or not ends or self.waiters.closed:
                break
            await self.waiters.wait(ends, remaining)
        # session id 0: "no session", so clients fall back to full fetches.
        return R(version=version, throttle_time_ms=0, error_code=0, session_id=0, responses=responses)

    def _read_fetch(self, body, max_bytes: int):
        R = FetchResponse
        TR = R.FetchableTopicResponse
        PD = TR.PartitionData
        responses = []
        total = 0
        ends = []
        errors = False
        committed = body.isolation_level == READ_COMMITTED
        for t in body.topics:
            parts = []
            for p in t.partitions:
                code, hw, lso, start, data, aborted = self._fetch_partition(
                    t.topic,
                    p.partition,
                    p.fetch_offset,
                    min(p.partition_max_bytes, max_bytes - total) if total < max_bytes else 0,
                    committed,
                )
                if code:
                    errors = True
                elif not data:
                    ends.append((t.topic, p.partition, hw))
                total += len(data)
                parts.append(
                    PD(
                        partition_index=p.partition,
                        error_code=code,
                        high_watermark=hw,
                        last_stable_offset=lso,
                        log_start_offset=start,
                        aborted_transactions=(
                            [PD.AbortedTransaction(producer_id=pid, first_offset=first) for pid, first in aborted]
                            if committed
                            else None
                        ),
                        preferred_read_replica=-1,
                        records=data,
                    )
                )
            responses.append(TR(topic=t.topic, partitions=parts))
        return responses, total, ends, errors

    def _fetch_partition(self, topic: str, partition: int, offset: int, max_bytes: int, committed: bool = False):
        """(error, high watermark, last stable offset, log start, records, aborted transactions) of one partition.

        ``committed`` (isolation level read_committed): no record at or past the
        last stable offset is sent, and the aborted transactions among those
        sent are listed, for the client to drop their records (as Kafka does).
        """
        try:
            check_name(topic)
            t = self.storage.topic(topic)
            if not 0 <= partition < t.partition_count:
                return codes.UNKNOWN_TOPIC_OR_PARTITION, -1, -1, -1, b"", []
            start, end = self.storage.offsets(topic, partition)
            lso = self.storage.last_stable_offset(topic, partition)
        except TopicNotFound:
            return codes.UNKNOWN_TOPIC_OR_PARTITION, -1, -1, -1, b"", []
        except KqError:
            return codes.UNKNOWN_TOPIC_OR_PARTITION, -1, -1, -1, b"", []
        if offset < start or offset > end:
            return codes.OFFSET_OUT_OF_RANGE, end, lso, start, b"", []
        limit = lso if committed else end
        if offset >= limit or max_bytes <= 0:
            return codes.NONE, end, lso, start, b"", []
        first = offset
        pieces: list = []
        sent = 0
        try:
            # Read at least one batch even past the limit (KIP-74): a consumer
            # must always be able to make progress.
            while sent < max_bytes and offset < limit:
                batches = self.storage.read(topic, partition, offset, max(min(max_bytes - sent, 2 * 1024 * 1024), 1))
                if not batches:
                    break
                for b in batches:
                    if sent >= max_bytes or b.base_offset >= limit:
                        break
                    sent += fetch_records.kafka_batches(b, offset, max(max_bytes - sent, 1), pieces)
                    offset = b.next_offset
                if batches[-1].next_offset != offset:
                    break
            aborted = self.storage.aborted_transactions(topic, partition, first, offset) if committed else []
        except KqError as exc:
            log.error("reading %s/%d: %s", topic, partition, exc)
            return codes.KAFKA_STORAGE_ERROR, end, lso, start, b"", []
        # The end may have moved since it was read: report what was sent at least.
        hw = max(end, offset if pieces else end)
        return codes.NONE, hw, min(lso, hw), start, b"".join(pieces), aborted
