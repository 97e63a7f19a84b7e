"""What the broker answers: one handler per API, over the storage adapter.

The data path (Produce, Fetch, ListOffsets, Metadata, InitProducerId) lives
here; consumer groups in ``coordinator``, topic administration in ``admin``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

from kafka.protocol.consumer import FetchResponse, ListOffsetsResponse
from kafka.protocol.metadata import ApiVersionsResponse, FindCoordinatorResponse, MetadataResponse
from kafka.protocol.producer import InitProducerIdResponse, ProduceResponse

from . import auth, codes, records, wire
from .admin import Admin
from .cluster_info import ClusterInfo
from .coordinator import Coordinator
from .producers import ProducerState, SequenceError
from .storage import KqError, MessageTooLarge, Payload, Storage, TopicNotFound, check_name

log = logging.getLogger("kq.serve")

NODE_ID = 0
CLUSTER_ID = "kq"
MAX_FETCH_RESPONSE_BYTES = 64 * 1024 * 1024  # whatever a client asks for
# How often partitions with waiting consumers are looked at for records that
# another process (`kq produce`) appended, while such records flow and after
# a quiet second (as `kq consume -f` does); appends through this server
# wake waiters at once.
EXTERNAL_POLL_SECONDS = 0.005
EXTERNAL_IDLE_POLL_SECONDS = 0.04
QUIET_SECONDS = 1.0
ZERO_UUID = uuid.UUID(int=0)

EARLIEST, LATEST, MAX_TIMESTAMP, EARLIEST_LOCAL, LATEST_TIERED, EARLIEST_PENDING_UPLOAD = -2, -1, -3, -4, -5, -6


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # a record timestamp is a signed 64-bit field


class InvalidTimestamp(ValueError):
    """A record timestamp that does not fit Kafka's (and kq's) signed 64-bit field."""


def _pack(storage: Storage, batch) -> Payload:
    """A produced batch packed for kq's log; InvalidTimestamp if a timestamp leaves 64 bits.

    A batch's base timestamp plus a record's 64-bit delta can leave the
    range; packing finds the smallest and largest timestamps anyway.
    """
    try:
        payload = storage.pack(batch.values, batch.keys, batch.headers, batch.timestamps, batch.codec)
    except OverflowError:  # two timestamps further apart than 64 bits hold
        raise InvalidTimestamp("record timestamps do not fit a signed 64-bit field") from None
    for timestamp in (payload.base_timestamp, payload.max_timestamp):
        if not INT64_MIN <= timestamp <= INT64_MAX:
            raise InvalidTimestamp(f"record timestamp {timestamp} does not fit a signed 64-bit field")
    return payload


def _decode_batch(raw):
    """records.decode_produced, with the compression libraries' own errors as InvalidBatch.

    Each codec raises its own kinds (gzip an OSError, which is no storage
    error; lz4 a RuntimeError; zstd and snappy theirs) on damaged bytes
    that carry a valid checksum.
    """
    try:
        return records.decode_produced(raw)
    except (records.InvalidBatch, records.UnsupportedBatch):
        raise
    except Exception as exc:
        raise records.InvalidBatch(f"a batch does not decode ({type(exc).__name__}: {exc})") from None


class Connection:
    """What the server knows of a connection: the client's address and who it is (``auth``)."""

    __slots__ = ("host", "session")

    def __init__(self, host: str = "", session: auth.Session | None = None):
        self.host = host
        self.session = session


class Waiters:
    """Consumers in a long-poll Fetch, woken by appends to the partitions they read."""

    def __init__(self, storage: Storage):
        self.storage = storage
        self._waiting: dict[tuple[str, int], set[asyncio.Future]] = {}
        self._ends: dict[tuple[str, int], int] = {}
        self._watcher: asyncio.Task | None = None
        self._last_change = 0.0  # when the watcher last saw another process append

    def appended(self, topic: str, partition: int) -> None:
        for fut in self._waiting.pop((topic, partition), ()):
            if not fut.done():
                fut.set_result(None)

    async def wait(self, partitions: list[tuple[str, int, int]], timeout: float) -> None:
        """Wait until one of (topic, partition, end offset seen) grows, or ``timeout``."""
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
        if self._watcher is not None:
            self._watcher.cancel()


class Broker:
    def __init__(
        self,
        storage: Storage,
        advertised_host: str,
        advertised_port: int,
        auto_create: bool = True,
        default_partitions: int | None = None,
        listen: tuple[str, int] | None = None,
        max_request_bytes: int = 100 * 1024 * 1024,
    ):
        self.storage = storage
        self.host = advertised_host
        self.port = advertised_port
        self.auto_create = auto_create
        # Kafka's num.partitions: for topics created without a partition count
        self.default_partitions = default_partitions or 1
        self.default_partitions_given = default_partitions is not None
        self.listen = listen or (advertised_host, advertised_port)  # the address listened on (DescribeConfigs)
        self.max_request_bytes = max_request_bytes
        self.waiters = Waiters(storage)
        # How many bytes a Fetch response may take now (the server's memory budget sets it).
        self.response_room: Callable[[], int] = lambda: MAX_FETCH_RESPONSE_BYTES
        self.producers = ProducerState()
        self.coordinator = Coordinator(storage, self.storage_error)
        self.admin = Admin(storage, self)
        self.cluster_info = ClusterInfo(storage, self)
        self._handlers = {
            0: self.produce,
            1: self.fetch,
            2: self.list_offsets,
            3: self.metadata,
            10: self.find_coordinator,
            18: self.api_versions,
            22: self.init_producer_id,
            8: self.coordinator.offset_commit,
            9: self.coordinator.offset_fetch,
            11: self.coordinator.join_group,
            12: self.coordinator.heartbeat,
            13: self.coordinator.leave_group,
            14: self.coordinator.sync_group,
            15: self.coordinator.describe_groups,
            16: self.coordinator.list_groups,
            42: self.coordinator.delete_groups,
            19: self.admin.create_topics,
            20: self.admin.delete_topics,
            32: self.admin.describe_configs,
            44: self.admin.incremental_alter_configs,
            37: self.admin.create_partitions,
            21: self.admin.delete_records,
            33: self.admin.alter_configs,
            29: self.cluster_info.describe_acls,
            30: self.cluster_info.create_acls,
            31: self.cluster_info.delete_acls,
            34: self.cluster_info.alter_replica_log_dirs,
            35: self.cluster_info.describe_log_dirs,
            43: self.cluster_info.elect_leaders,
            45: self.cluster_info.alter_partition_reassignments,
            46: self.cluster_info.list_partition_reassignments,
            55: self.cluster_info.describe_quorum,
            74: self.cluster_info.list_config_resources,
            75: self.cluster_info.describe_topic_partitions,
        }

    def start(self) -> None:
        self.coordinator.start()

    def close(self) -> None:
        self.waiters.close()
        self.coordinator.close()
        self.storage.close()

    def connection(self, host: str = "", session: auth.Session | None = None) -> Connection:
        return Connection(host, session)

    @staticmethod
    def storage_error(exc: BaseException) -> None:
        log.error("storage error: %s", exc)

    async def handle(self, frame: bytes, connection: Connection) -> bytes | None:
        """The framed response to one request frame (None: no response, as for acks=0)."""
        api_key, version, correlation_id = wire.peek_header(frame)
        if api_key == wire.API_VERSIONS_KEY and not 0 <= version <= wire.APIS[api_key].max_version:
            return wire.unsupported_api_versions(correlation_id)
        request = wire.decode_request(frame)
        session = connection.session
        if request.api_key in auth.SASL_KEYS or (session is not None and not session.admitted):
            early = auth.answer(request, session)  # auth.Refused: closed unanswered
            if early is not None:
                return wire.encode_response(request, early)
        self.coordinator.client = (request.client_id or "", connection.host)
        response = await self._handlers[request.api_key](request.body, request.api_version)
        if response is None:
            return None
        return wire.encode_response(request, response)

    # ------------------------------------------------------------------ metadata

    async def api_versions(self, body, version: int):
        return ApiVersionsResponse(
            version=version, error_code=0, api_keys=wire.api_version_list(version), throttle_time_ms=0
        )

    def _broker_list(self, cls):
        return [cls(node_id=NODE_ID, host=self.host, port=self.port, rack=None)]

    async def metadata(self, body, version: int):
        R = MetadataResponse
        T = R.MetadataResponseTopic
        P = T.MetadataResponsePartition
        if body.topics is None or (version == 0 and not body.topics):
            names = self.storage.topic_names()
        else:
            names = [t.name for t in body.topics]
        auto = self.auto_create and (version < 4 or body.allow_auto_topic_creation)
        topics = []
        for name in names:
            if name is None:  # a topic by id: kq topics have none
                topics.append(
                    T(
                        error_code=codes.UNKNOWN_TOPIC_OR_PARTITION,
                        name=None,
                        topic_id=ZERO_UUID,
                        is_internal=False,
                        partitions=[],
                    )
                )
                continue
            error, partitions = codes.NONE, []
            try:
                topic = self._topic_for_metadata(name, auto)
                partitions = [
                    P(
                        error_code=0,
                        partition_index=p,
                        leader_id=NODE_ID,
                        leader_epoch=0,
                        replica_nodes=[NODE_ID],
                        isr_nodes=[NODE_ID],
                        offline_replicas=[],
                    )
                    for p in range(topic.partition_count)
                ]
            except TopicNotFound:
                error = codes.UNKNOWN_TOPIC_OR_PARTITION
            except KqError:
                error = codes.INVALID_TOPIC_EXCEPTION
            topics.append(T(error_code=error, name=name, topic_id=ZERO_UUID, is_internal=False, partitions=partitions))
        return R(
            version=version,
            throttle_time_ms=0,
            brokers=self._broker_list(R.MetadataResponseBroker),
            cluster_id=CLUSTER_ID,
            controller_id=NODE_ID,
            topics=topics,
            authorized_operations=None,
        )

    def _topic_for_metadata(self, name: str, auto: bool):
        check_name(name)
        try:
            return self.storage.topic(name)
        except TopicNotFound:
            if not auto:
                raise
        self.storage.ensure()
        try:
            return self.storage.create_topic(name, self.default_partitions)
        except KqError:  # created meanwhile by another process
            return self.storage.topic(name)

    async def find_coordinator(self, body, version: int):
        R = FindCoordinatorResponse
        if version >= 4:
            coordinators = []
            for key in body.coordinator_keys:
                error, message = self.coordinator.check_key(key, body.key_type)
                coordinators.append(
                    R.Coordinator(
                        key=key,
                        node_id=NODE_ID,
                        host=self.host,
                        port=self.port,
                        error_code=error,
                        error_message=message,
                    )
                )
            return R(version=version, throttle_time_ms=0, coordinators=coordinators)
        error, message = self.coordinator.check_key(body.key, body.key_type)
        return R(
            version=version,
            throttle_time_ms=0,
            error_code=error,
            error_message=message,
            node_id=NODE_ID,
            host=self.host,
            port=self.port,
        )

    # ------------------------------------------------------------------ produce

    async def init_producer_id(self, body, version: int):
        if body.transactional_id is not None:
            return InitProducerIdResponse(
                version=version,
                throttle_time_ms=0,
                error_code=codes.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                producer_id=-1,
                producer_epoch=-1,
            )
        pid, epoch = self.producers.init(getattr(body, "producer_id", -1), getattr(body, "producer_epoch", -1))
        return InitProducerIdResponse(
            version=version, throttle_time_ms=0, error_code=0, producer_id=pid, producer_epoch=epoch
        )

    async def produce(self, body, version: int):
        R = ProduceResponse
        TR = R.TopicProduceResponse
        PR = TR.PartitionProduceResponse
        acks = body.acks
        if body.transactional_id is not None:
            error = codes.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
        elif acks not in (0, 1, -1):
            error = codes.INVALID_REQUIRED_ACKS
        else:
            error = None
        out = []
        for t in body.topic_data:
            parts = []
            for p in t.partition_data:
                if error is not None:
                    parts.append(
                        PR(
                            index=p.index,
                            error_code=error,
                            base_offset=-1,
                            log_append_time_ms=-1,
                            log_start_offset=-1,
                            record_errors=[],
                            error_message=None,
                        )
                    )
                    continue
                code, base, message = self._produce_partition(t.name, p.index, p.records)
                parts.append(
                    PR(
                        index=p.index,
                        error_code=code,
                        base_offset=base,
                        log_append_time_ms=-1,
                        log_start_offset=-1 if code else 0,
                        record_errors=[],
                        error_message=message,
                    )
                )
            out.append(TR(name=t.name, partition_responses=parts))
        if acks == 0:
            return None
        return R(version=version, responses=out, throttle_time_ms=0)

    def _produce_partition(self, topic: str, partition: int, data) -> tuple[int, int | None, str | None]:
        """Append a partition's batches: (error code, base offset, message)."""
        try:
            check_name(topic)
            t = self.storage.topic(topic)
            if not 0 <= partition < t.partition_count:
                return codes.UNKNOWN_TOPIC_OR_PARTITION, -1, None
        except TopicNotFound:
            return codes.UNKNOWN_TOPIC_OR_PARTITION, -1, None
        except KqError as exc:
            return codes.INVALID_TOPIC_EXCEPTION, -1, str(exc)
        if not data:
            return codes.CORRUPT_MESSAGE, -1, "no records"
        first_base = None
        try:
            # Every batch is checked (decoded, its sequence, its timestamps, packed) before any is
            # kept, as Kafka does: an error answer means nothing was stored, so a client that
            # retries stores nothing twice.
            batches = [_decode_batch(raw) for raw in records.split_batches(data)]
            duplicates = self.producers.check_all(topic, partition, batches)
            packed: list[Payload | None] = []
            for batch, duplicate in zip(batches, duplicates):
                packed.append(_pack(self.storage, batch) if duplicate is None else None)
            for batch, duplicate, payload in zip(batches, duplicates, packed):
                if payload is None:
                    base = duplicate
                else:
                    base, last = self.storage.append_packed(topic, partition, payload)
                    self.producers.appended(topic, partition, batch, base, last)
                    self.waiters.appended(topic, partition)
                if first_base is None:
                    first_base = base
        except records.UnsupportedBatch as exc:
            return codes.UNSUPPORTED_FOR_MESSAGE_FORMAT, -1, str(exc)
        except records.InvalidBatch as exc:
            return codes.CORRUPT_MESSAGE, -1, str(exc)
        except InvalidTimestamp as exc:
            return codes.INVALID_TIMESTAMP, -1, str(exc)
        except SequenceError as exc:
            return exc.code, -1, str(exc)
        except MessageTooLarge as exc:
            return codes.MESSAGE_TOO_LARGE, -1, str(exc)
        except KqError as exc:  # a corrupt log, an unreadable topic
            self.storage_error(exc)
            return codes.KAFKA_STORAGE_ERROR, -1, str(exc)
        except OSError as exc:
            self.storage_error(exc)
            return codes.KAFKA_STORAGE_ERROR, -1, f"{exc.strerror or exc}"
        return codes.NONE, first_base, None

    # ------------------------------------------------------------------ fetch

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
            responses, total, ends, errors = self._read_fetch(body, min(max_bytes, max(self.response_room(), 1)))
            remaining = deadline - time.monotonic()
            if total >= body.min_bytes or errors or remaining <= 0 or not ends:
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
        for t in body.topics:
            parts = []
            for p in t.partitions:
                code, hw, start, data = self._fetch_partition(
                    t.topic,
                    p.partition,
                    p.fetch_offset,
                    min(p.partition_max_bytes, max_bytes - total) if total < max_bytes else 0,
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
                        last_stable_offset=hw,
                        log_start_offset=start,
                        aborted_transactions=None,
                        preferred_read_replica=-1,
                        records=data,
                    )
                )
            responses.append(TR(topic=t.topic, partitions=parts))
        return responses, total, ends, errors

    def _fetch_partition(self, topic: str, partition: int, offset: int, max_bytes: int):
        try:
            check_name(topic)
            t = self.storage.topic(topic)
            if not 0 <= partition < t.partition_count:
                return codes.UNKNOWN_TOPIC_OR_PARTITION, -1, -1, b""
            start, end = self.storage.offsets(topic, partition)
        except TopicNotFound:
            return codes.UNKNOWN_TOPIC_OR_PARTITION, -1, -1, b""
        except KqError:
            return codes.UNKNOWN_TOPIC_OR_PARTITION, -1, -1, b""
        if offset < start or offset > end:
            return codes.OFFSET_OUT_OF_RANGE, end, start, b""
        if offset == end or max_bytes <= 0:
            return codes.NONE, end, start, b""
        pieces: list = []
        sent = 0
        try:
            # Read at least one batch even past the limit (KIP-74): a consumer
            # must always be able to make progress.
            while sent < max_bytes:
                batches = self.storage.read(topic, partition, offset, max(min(max_bytes - sent, 2 * 1024 * 1024), 1))
                if not batches:
                    break
                for b in batches:
                    if sent >= max_bytes:
                        break
                    sent += records.kafka_batches(b, offset, max(max_bytes - sent, 1), pieces)
                    offset = b.next_offset
                if batches[-1].next_offset != offset:
                    break
        except KqError as exc:
            log.error("reading %s/%d: %s", topic, partition, exc)
            return codes.KAFKA_STORAGE_ERROR, end, start, b""
        # The end may have moved since it was read: report what was sent at least.
        return codes.NONE, max(end, offset if pieces else end), start, b"".join(pieces)

    # ------------------------------------------------------------------ list offsets

    async def list_offsets(self, body, version: int):
        R = ListOffsetsResponse
        TR = R.ListOffsetsTopicResponse
        PR = TR.ListOffsetsPartitionResponse
        out = []
        for t in body.topics:
            parts = []
            for p in t.partitions:
                code, offset, ts = self._list_offset(t.name, p.partition_index, p.timestamp)
                parts.append(
                    PR(
                        partition_index=p.partition_index,
                        error_code=code,
                        timestamp=ts,
                        offset=offset,
                        leader_epoch=0 if code == 0 else -1,
                        old_style_offsets=[],
                    )
                )
            out.append(TR(name=t.name, partitions=parts))
        return R(version=version, throttle_time_ms=0, topics=out)

    def _list_offset(self, topic: str, partition: int, timestamp: int) -> tuple[int, int, int]:
        try:
            check_name(topic)
            t = self.storage.topic(topic)
            if not 0 <= partition < t.partition_count:
                return codes.UNKNOWN_TOPIC_OR_PARTITION, -1, -1
            if timestamp in (LATEST, LATEST_TIERED):
                return codes.NONE, self.storage.end_offset(topic, partition), -1
            if timestamp in (EARLIEST, EARLIEST_LOCAL):
                return codes.NONE, self.storage.offsets(topic, partition)[0], -1
            if timestamp == EARLIEST_PENDING_UPLOAD:
                return codes.NONE, -1, -1  # no tiered storage: nothing waits to be uploaded
            if timestamp == MAX_TIMESTAMP:
                found = self.storage.max_timestamp_offset(topic, partition)
            elif timestamp < 0:
                return codes.INVALID_REQUEST, -1, -1
            else:
                found = self.storage.offset_for_timestamp(topic, partition, timestamp)
        except TopicNotFound:
            return codes.UNKNOWN_TOPIC_OR_PARTITION, -1, -1
        except KqError:
            return codes.UNKNOWN_TOPIC_OR_PARTITION, -1, -1
        if found is None:
            return codes.NONE, -1, -1
        return codes.NONE, found[0], found[1]
