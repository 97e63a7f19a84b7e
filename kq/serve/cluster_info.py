"""What a one-broker cluster truthfully answers to the cluster-administration APIs.

kq serve is broker 0, the only broker, controller and quorum voter, over one
log directory (the data directory), with one replica of each partition. So
leaders are always elected (ElectLeaders: ELECTION_NOT_NEEDED), no
reassignment is ever in progress, and the only replica placement is
broker 0. There is no authorizer: the ACL APIs answer SECURITY_DISABLED, as
Kafka does without one.

APIs: DescribeTopicPartitions, ListConfigResources, DescribeLogDirs,
AlterReplicaLogDirs, DescribeQuorum, ElectLeaders, AlterPartitionReassignments,
ListPartitionReassignments, DescribeAcls, CreateAcls, DeleteAcls; and the
broker's configs for DescribeConfigs.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import NamedTuple

from kafka.protocol.admin import (
    AlterPartitionReassignmentsResponse,
    AlterReplicaLogDirsResponse,
    CreateAclsResponse,
    DeleteAclsResponse,
    DescribeAclsResponse,
    DescribeLogDirsResponse,
    DescribeQuorumResponse,
    DescribeTopicPartitionsResponse,
    ElectLeadersResponse,
    ListConfigResourcesResponse,
    ListPartitionReassignmentsResponse,
)

from . import codes
from .storage import KqError, Storage, TopicNotFound, check_name

NODE_ID = 0
ZERO_UUID = uuid.UUID(int=0)
METADATA_TOPIC = "__cluster_metadata"
TOPIC_RESOURCE, BROKER_RESOURCE = 2, 4
NO_AUTHORIZER = "No Authorizer is configured on the broker"
# DescribeConfigs' config types and sources
BOOLEAN, STRING, INT, LONG, LIST = 1, 2, 3, 5, 7
STATIC_BROKER_CONFIG, DEFAULT_CONFIG = 4, 5


class BrokerConfig(NamedTuple):
    name: str
    value: str
    type: int
    source: int


def broker_configs(broker) -> list[BrokerConfig]:
    """The broker configs of kq serve (all read-only: they are set when it starts), by name."""
    from ..engine.partition import DEFAULT_SEGMENT_BYTES
    from .compression import MAX_DECOMPRESSED_BYTES

    listen_host, listen_port = broker.listen
    listener = f"PLAINTEXT://{_bracketed(listen_host)}:{listen_port}"
    advertised = f"PLAINTEXT://{_bracketed(broker.host)}:{broker.port}"
    started = STATIC_BROKER_CONFIG
    entries = [
        BrokerConfig("advertised.listeners", advertised, LIST, started),
        BrokerConfig("auto.create.topics.enable", str(broker.auto_create).lower(), BOOLEAN, started),
        BrokerConfig("broker.id", str(NODE_ID), INT, started),
        BrokerConfig("default.replication.factor", "1", INT, DEFAULT_CONFIG),
        BrokerConfig("delete.topic.enable", "true", BOOLEAN, DEFAULT_CONFIG),
        BrokerConfig("inter.broker.listener.name", "PLAINTEXT", STRING, DEFAULT_CONFIG),
        BrokerConfig("listener.security.protocol.map", "PLAINTEXT:PLAINTEXT", STRING, DEFAULT_CONFIG),
        BrokerConfig("listeners", listener, LIST, started),
        BrokerConfig("log.cleanup.policy", "delete", LIST, DEFAULT_CONFIG),
        BrokerConfig("log.dirs", broker.storage.path, LIST, started),
        BrokerConfig("log.retention.bytes", "-1", LONG, DEFAULT_CONFIG),
        BrokerConfig("log.retention.ms", "-1", LONG, DEFAULT_CONFIG),
        BrokerConfig("log.segment.bytes", str(DEFAULT_SEGMENT_BYTES), INT, DEFAULT_CONFIG),
        BrokerConfig("message.max.bytes", str(MAX_DECOMPRESSED_BYTES), INT, DEFAULT_CONFIG),
        BrokerConfig("min.insync.replicas", "1", INT, DEFAULT_CONFIG),
        BrokerConfig("node.id", str(NODE_ID), INT, started),
        BrokerConfig(
            "num.partitions",
            str(broker.default_partitions),
            INT,
            started if broker.default_partitions_given else DEFAULT_CONFIG,
        ),
        BrokerConfig("offsets.topic.replication.factor", "1", INT, DEFAULT_CONFIG),
        BrokerConfig("process.roles", "broker,controller", LIST, DEFAULT_CONFIG),
        BrokerConfig("socket.request.max.bytes", str(broker.max_request_bytes), INT, started),
        BrokerConfig("transaction.state.log.replication.factor", "1", INT, DEFAULT_CONFIG),
    ]
    return sorted(entries)


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _directory_bytes(path: str) -> int:
    """The bytes of the files in ``path`` (a partition directory)."""
    total = 0
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                try:
                    if entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
    except OSError:
        return 0
    return total


class ClusterInfo:
    def __init__(self, storage: Storage, broker):
        self.storage = storage
        self.broker = broker

    def _partition_count(self, name: str) -> int | None:
        """The number of partitions of topic ``name``, or None if there is no such topic."""
        try:
            check_name(name)
            return self.storage.topic(name).partition_count
        except (TopicNotFound, KqError):
            return None

    # ------------------------------------------------------------------ topics

    async def describe_topic_partitions(self, body, version: int):
        R = DescribeTopicPartitionsResponse
        T = R.DescribeTopicPartitionsResponseTopic
        P = T.DescribeTopicPartitionsResponsePartition
        asked = {t.name for t in body.topics or () if isinstance(t.name, str)}
        names = sorted(asked) if body.topics else sorted(self.storage.topic_names())
        cursor = body.cursor if body.cursor is not None and isinstance(body.cursor.topic_name, str) else None
        if cursor is not None:
            names = [n for n in names if n >= cursor.topic_name]
        left = max(1, body.response_partition_limit or 0)
        topics, next_cursor = [], None
        for name in names:
            count = self._partition_count(name)
            if count is None:
                topics.append(
                    T(error_code=codes.UNKNOWN_TOPIC_OR_PARTITION, name=name, topic_id=ZERO_UUID, partitions=[])
                )
                continue
            first = cursor.partition_index if cursor is not None and name == cursor.topic_name else 0
            if left == 0:
                next_cursor = R.Cursor(topic_name=name, partition_index=first)
                break
            numbers = range(max(0, first), count)
            shown = numbers[:left]
            left -= len(shown)
            topics.append(
                T(
                    error_code=codes.NONE,
                    name=name,
                    topic_id=ZERO_UUID,
                    partitions=[
                        P(
                            error_code=codes.NONE,
                            partition_index=n,
                            leader_id=NODE_ID,
                            leader_epoch=0,
                            replica_nodes=[NODE_ID],
                            isr_nodes=[NODE_ID],
                            eligible_leader_replicas=[],
                            last_known_elr=[],
                            offline_replicas=[],
                        )
                        for n in shown
                    ],
                )
            )
            if len(shown) < len(numbers):
                next_cursor = R.Cursor(topic_name=name, partition_index=shown[-1] + 1 if shown else first)
                break
        return R(version=version, throttle_time_ms=0, topics=topics, next_cursor=next_cursor)

    async def list_config_resources(self, body, version: int):
        R = ListConfigResourcesResponse
        # Version 0 lists client-metrics subscriptions only, of which kq serve has none.
        wanted = set(body.resource_types or ()) if version >= 1 else set()
        every = version >= 1 and not wanted
        resources = []
        if every or TOPIC_RESOURCE in wanted:
            resources += [
                R.ConfigResource(resource_name=n, resource_type=TOPIC_RESOURCE) for n in self.storage.topic_names()
            ]
        if every or BROKER_RESOURCE in wanted:
            resources.append(R.ConfigResource(resource_name=str(NODE_ID), resource_type=BROKER_RESOURCE))
        return R(version=version, throttle_time_ms=0, error_code=codes.NONE, config_resources=resources)

    # ------------------------------------------------------------------ log directories

    async def describe_log_dirs(self, body, version: int):
        R = DescribeLogDirsResponse
        Result = R.DescribeLogDirsResult
        Topic = Result.DescribeLogDirsTopic
        Partition = Topic.DescribeLogDirsPartition
        wanted: list[tuple[str, set | None]]
        if body.topics is None:
            wanted = [(n, None) for n in sorted(self.storage.topic_names())]
        else:
            wanted = [(t.topic, set(t.partitions or ())) for t in body.topics]
        topics = []
        for name, numbers in wanted:
            count = self._partition_count(name)
            if count is None:
                continue
            path = self.storage.topic(name).path
            partitions = [
                Partition(
                    partition_index=n,
                    partition_size=_directory_bytes(os.path.join(path, str(n))),
                    offset_lag=0,
                    is_future_key=False,
                )
                for n in range(count)
                if numbers is None or n in numbers
            ]
            if partitions:
                topics.append(Topic(name=name, partitions=partitions))
        try:
            fs = os.statvfs(self.storage.path)
            total, usable = fs.f_blocks * fs.f_frsize, fs.f_bavail * fs.f_frsize
        except OSError:
            total = usable = -1
        result = Result(
            error_code=codes.NONE,
            log_dir=self.storage.path,
            topics=topics,
            total_bytes=total,
            usable_bytes=usable,
            is_cordoned=False,
        )
        return R(version=version, throttle_time_ms=0, error_code=codes.NONE, results=[result])

    async def alter_replica_log_dirs(self, body, version: int):
        """Every replica already lives in the one log directory: moving it there is done; elsewhere, no such dir."""
        R = AlterReplicaLogDirsResponse
        here = os.path.realpath(self.storage.path)
        results = []
        for d in body.dirs or ():
            known = isinstance(d.path, str) and "\0" not in d.path and os.path.realpath(d.path) == here
            for t in d.topics or ():
                count = self._partition_count(t.name)
                partitions = []
                for n in t.partitions or ():
                    if not known:
                        code = codes.LOG_DIR_NOT_FOUND
                    elif count is None or not 0 <= n < count:
                        code = codes.UNKNOWN_TOPIC_OR_PARTITION
                    else:
                        code = codes.NONE
                    partitions.append(
                        R.AlterReplicaLogDirTopicResult.AlterReplicaLogDirPartitionResult(
                            partition_index=n, error_code=code
                        )
                    )
                results.append(R.AlterReplicaLogDirTopicResult(topic_name=t.name, partitions=partitions))
        return R(version=version, throttle_time_ms=0, results=results)

    # ------------------------------------------------------------------ quorum and leaders

    async def describe_quorum(self, body, version: int):
        R = DescribeQuorumResponse
        T = R.TopicData
        P = T.PartitionData
        asked = [(t.topic_name, p.partition_index) for t in body.topics or () for p in t.partitions or ()]
        if asked != [(METADATA_TOPIC, 0)]:
            return R(
                version=version,
                error_code=codes.NONE,
                error_message=None,
                topics=[
                    T(
                        topic_name=name,
                        partitions=[
                            P(
                                partition_index=n,
                                error_code=codes.UNKNOWN_TOPIC_OR_PARTITION,
                                error_message=None,
                                leader_id=-1,
                                leader_epoch=-1,
                                high_watermark=-1,
                                current_voters=[],
                                observers=[],
                            )
                        ],
                    )
                    for name, n in asked
                ],
                nodes=[],
            )
        now = int(time.time() * 1000)
        voter = P.ReplicaState(
            replica_id=NODE_ID,
            replica_directory_id=ZERO_UUID,
            log_end_offset=0,
            last_fetch_timestamp=now,
            last_caught_up_timestamp=now,
        )
        partition = P(
            partition_index=0,
            error_code=codes.NONE,
            error_message=None,
            leader_id=NODE_ID,
            leader_epoch=0,
            high_watermark=0,
            current_voters=[voter],
            observers=[],
        )
        node = R.Node(
            node_id=NODE_ID,
            listeners=[R.Node.Listener(name="PLAINTEXT", host=self.broker.host, port=self.broker.port)],
        )
        return R(
            version=version,
            error_code=codes.NONE,
            error_message=None,
            topics=[T(topic_name=METADATA_TOPIC, partitions=[partition])],
            nodes=[node],
        )

    async def elect_leaders(self, body, version: int):
        R = ElectLeadersResponse
        Result = R.ReplicaElectionResult
        results = []
        # All partitions (null): Kafka leaves out those that need no election, which is every one here.
        for t in body.topic_partitions or ():
            count = self._partition_count(t.topic)
            partitions = []
            for n in t.partitions or ():
                if count is None or not 0 <= n < count:
                    code, message = codes.UNKNOWN_TOPIC_OR_PARTITION, "no such topic or partition"
                else:
                    code, message = codes.ELECTION_NOT_NEEDED, "the partition's one replica is its leader"
                partitions.append(Result.PartitionResult(partition_id=n, error_code=code, error_message=message))
            results.append(Result(topic=t.topic, partition_result=partitions))
        return R(version=version, throttle_time_ms=0, error_code=codes.NONE, replica_election_results=results)

    async def alter_partition_reassignments(self, body, version: int):
        R = AlterPartitionReassignmentsResponse
        T = R.ReassignableTopicResponse
        topics = []
        for t in body.topics or ():
            count = self._partition_count(t.name)
            partitions = []
            for p in t.partitions or ():
                code, message = codes.NONE, None
                if count is None or not 0 <= p.partition_index < count:
                    code, message = codes.UNKNOWN_TOPIC_OR_PARTITION, "no such topic or partition"
                elif p.replicas is None:
                    code, message = codes.NO_REASSIGNMENT_IN_PROGRESS, "no reassignment is in progress"
                elif list(p.replicas) != [NODE_ID]:
                    code = codes.INVALID_REPLICA_ASSIGNMENT
                    message = f"kq serve is the one broker, {NODE_ID}: replicas {list(p.replicas)} cannot be"
                partitions.append(
                    T.ReassignablePartitionResponse(
                        partition_index=p.partition_index, error_code=code, error_message=message
                    )
                )
            topics.append(T(name=t.name, partitions=partitions))
        return R(
            version=version,
            throttle_time_ms=0,
            allow_replication_factor_change=True,
            error_code=codes.NONE,
            error_message=None,
            responses=topics,
        )

    async def list_partition_reassignments(self, body, version: int):
        R = ListPartitionReassignmentsResponse
        return R(version=version, throttle_time_ms=0, error_code=codes.NONE, error_message=None, topics=[])

    # ------------------------------------------------------------------ ACLs: no authorizer

    async def describe_acls(self, body, version: int):
        return DescribeAclsResponse(
            version=version,
            throttle_time_ms=0,
            error_code=codes.SECURITY_DISABLED,
            error_message=NO_AUTHORIZER,
            resources=[],
        )

    async def create_acls(self, body, version: int):
        R = CreateAclsResponse
        return R(
            version=version,
            throttle_time_ms=0,
            results=[
                R.AclCreationResult(error_code=codes.SECURITY_DISABLED, error_message=NO_AUTHORIZER)
                for _ in body.creations or ()
            ],
        )

    async def delete_acls(self, body, version: int):
        R = DeleteAclsResponse
        return R(
            version=version,
            throttle_time_ms=0,
            filter_results=[
                R.DeleteAclsFilterResult(
                    error_code=codes.SECURITY_DISABLED, error_message=NO_AUTHORIZER, matching_acls=[]
                )
                for _ in body.filters or ()
            ],
        )
