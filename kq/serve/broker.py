"""What the broker answers: one handler per API, over the storage adapter.

Here: the dispatch of each request to its handler (after the login check),
Metadata, ApiVersions, FindCoordinator and ListOffsets. Produce and
InitProducerId in ``produce``, Fetch in ``fetch``, consumer groups in
``coordinator``, topic administration in ``admin``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

from kafka.protocol.consumer import ListOffsetsResponse
from kafka.protocol.metadata import ApiVersionsResponse, FindCoordinatorResponse, MetadataResponse

from ..ops.metrics import Histogram
from . import auth, codes, wire
from .admin import Admin
from .cluster_info import ClusterInfo
from .config_admin import ConfigAdmin
from .coordinator import Coordinator
from .fetch import MAX_FETCH_RESPONSE_BYTES, READ_COMMITTED, FetchHandler, Waiters
from .produce import ProduceHandler
from .storage import KqError, Storage, TopicNotFound, check_name
from .transactions import TRANSACTION_KEY, Transactions

log = logging.getLogger("kq.serve")

NODE_ID = 0
CLUSTER_ID = "kq"
ZERO_UUID = uuid.UUID(int=0)

# Kafka's names for its APIs (Produce, Fetch, ...), as kq serve --metrics labels them.
API_NAMES = {key: api.request.__name__.removesuffix("Request") for key, api in wire.APIS.items()}

TRANSACTION_TICK_SECONDS = 0.1  # how often transactions are looked at for their timeout
EARLIEST, LATEST, MAX_TIMESTAMP, EARLIEST_LOCAL, LATEST_TIERED, EARLIEST_PENDING_UPLOAD = -2, -1, -3, -4, -5, -6


class Connection:
    """What the server knows of a connection: the client's address and who it is (``auth``)."""

    __slots__ = ("host", "session")

    def __init__(self, host: str = "", session: auth.Session | None = None):
        self.host = host
        self.session = session


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
        # Each request's time by API, kept only when asked for (kq serve --metrics).
        self.latencies: Histogram | None = None
        # How many bytes a Fetch response may take now (the server's memory budget sets it).
        self.response_room: Callable[[], int] = lambda: MAX_FETCH_RESPONSE_BYTES
        self.producing = ProduceHandler(storage, self.waiters, self.storage_error)
        self.fetching = FetchHandler(storage, self.waiters, self)
        self.coordinator = Coordinator(storage, self.storage_error)
        self.transactions = Transactions(storage, self.producing.producers, self.storage_error, self.waiters)
        self.producing.transactions = self.transactions
        self._transaction_ticker: asyncio.Task | None = None
        self.coordinator.offsets.transactions = self.transactions
        self.admin = Admin(storage, self)
        self.config_admin = ConfigAdmin(storage, self)
        self.cluster_info = ClusterInfo(storage, self)
        self._handlers = {
            0: self.producing.produce,
            1: self.fetching.fetch,
            2: self.list_offsets,
            3: self.metadata,
            10: self.find_coordinator,
            18: self.api_versions,
            22: self.init_producer_id,
            24: self._sync(self.transactions.add_partitions),
            25: self._sync(self.transactions.add_offsets),
            26: self._sync(self.transactions.end_txn),
            28: self._sync(self.transactions.txn_offset_commit),
            65: self._sync(self.transactions.describe_transactions),
            66: self._sync(self.transactions.list_transactions),
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
            32: self.config_admin.describe_configs,
            44: self.config_admin.incremental_alter_configs,
            37: self.admin.create_partitions,
            21: self.admin.delete_records,
            33: self.config_admin.alter_configs,
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

    @staticmethod
    def _sync(handler):
        async def handle(body, version: int):
            return handler(body, version)

        return handle

    async def init_producer_id(self, body, version: int):
        if body.transactional_id is not None:
            return self.transactions.init_producer_id(body, version)
        return await self.producing.init_producer_id(body, version)

    def start(self) -> None:
        self.coordinator.start()
        # Transactions a server that died left open (their locks are free now) are finished first.
        self.transactions.expire()
        self._transaction_ticker = asyncio.get_running_loop().create_task(self._expire_transactions())

    async def _expire_transactions(self) -> None:
        while True:
            await asyncio.sleep(TRANSACTION_TICK_SECONDS)
            try:
                self.transactions.expire()
            except Exception as exc:  # never let the ticker die
                log.exception("transaction ticker: %s", exc)

    def release_waiting(self) -> None:
        """Stopping: requests waiting on time (fetch long polls, group joins and syncs) are answered now."""
        self.waiters.close()
        self.coordinator.release_waiting()

    def close(self) -> None:
        if self._transaction_ticker is not None:
            self._transaction_ticker.cancel()
        self.transactions.close()
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
        if self.latencies is None:
            response = await self._handlers[request.api_key](request.body, request.api_version)
        else:
            started = time.perf_counter()
            response = await self._handlers[request.api_key](request.body, request.api_version)
            self.latencies.observe(API_NAMES[request.api_key], time.perf_counter() - started)
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
                error, message = self._check_coordinator_key(key, body.key_type)
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
        error, message = self._check_coordinator_key(body.key, body.key_type if version >= 1 else 0)
        return R(
            version=version,
            throttle_time_ms=0,
            error_code=error,
            error_message=message,
            node_id=NODE_ID,
            host=self.host,
            port=self.port,
        )

    def _check_coordinator_key(self, key: str, key_type: int) -> tuple[int, str | None]:
        if key_type == TRANSACTION_KEY:
            if not key:
                return codes.INVALID_REQUEST, "an empty transactional id"
            return codes.NONE, None
        return self.coordinator.check_key(key, key_type)

    # ------------------------------------------------------------------ list offsets

    async def list_offsets(self, body, version: int):
        R = ListOffsetsResponse
        TR = R.ListOffsetsTopicResponse
        PR = TR.ListOffsetsPartitionResponse
        committed = version >= 2 and body.isolation_level == READ_COMMITTED
        out = []
        for t in body.topics:
            parts = []
            for p in t.partitions:
                code, offset, ts = self._list_offset(t.name, p.partition_index, p.timestamp, committed)
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

    def _list_offset(self, topic: str, partition: int, timestamp: int, committed: bool) -> tuple[int, int, int]:
        try:
            check_name(topic)
            t = self.storage.topic(topic)
            if not 0 <= partition < t.partition_count:
                return codes.UNKNOWN_TOPIC_OR_PARTITION, -1, -1
            if timestamp in (LATEST, LATEST_TIERED):
                if committed:  # read_committed: the end is the last stable offset
                    return codes.NONE, self.storage.last_stable_offset(topic, partition), -1
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
