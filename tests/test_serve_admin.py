"""kq serve's administration APIs through the admin clients people use (confluent-kafka, kafka-python):
Kafka's topic configs, replica assignments, the broker's configs, and a one-broker cluster's answers."""

from __future__ import annotations

import json
import os

import pytest
from serve_support import KqServer

pytest.importorskip("confluent_kafka")
pytest.importorskip("kafka.admin")
from confluent_kafka.admin import (  # noqa: E402
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
)
from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402
from kafka import errors as kafka_errors  # noqa: E402
from kafka.admin import (  # noqa: E402
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    ConfigResourceType,
    KafkaAdminClient,
    ResourcePatternFilter,
    ResourceType,
)
from kafka.admin import ConfigResource as KPConfigResource  # noqa: E402
from kafka.admin import NewTopic as KPNewTopic  # noqa: E402

TIMEOUT = 30


@pytest.fixture
def server(data_dir, run_kq):
    run_kq("topic", "create", "base", "--partitions", "2")
    s = KqServer(data_dir)
    yield s
    s.kill()


@pytest.fixture
def admin(server):
    return AdminClient({"bootstrap.servers": server.bootstrap})


@pytest.fixture
def kp_admin(server):
    a = KafkaAdminClient(bootstrap_servers=server.bootstrap, request_timeout_ms=TIMEOUT * 1000)
    yield a
    a.close()


def _create(admin, topic: NewTopic, validate_only: bool = False):
    return admin.create_topics([topic], validate_only=validate_only)[topic.topic].result(TIMEOUT)


def _configs(admin, name: str) -> dict:
    res = ConfigResource("topic", name)
    return admin.describe_configs([res])[res].result(TIMEOUT)


def test_a_topic_takes_every_kafka_config_and_describes_it(admin, data_dir, run_kq):
    """Configs kq has no setting for are kept and shown; kq's own (compression.type among them) are applied."""
    configs = {
        "compression.type": "lz4",
        "min.insync.replicas": "1",
        "max.message.bytes": "2000000",
        "retention.ms": "3600000",
        "cleanup.policy": "compact,delete",
    }
    # validate_only checks the same configs and creates nothing
    _create(admin, NewTopic("checked", 1, 1, config=configs), validate_only=True)
    assert run_kq("topic", "describe", "checked").returncode == 1
    _create(admin, NewTopic("kept", 2, 1, config=configs))
    described = _configs(admin, "kept")
    assert described["compression.type"].value == "lz4"
    assert described["compression.type"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert described["max.message.bytes"].value == "2000000"
    assert described["retention.ms"].value == "3600000"
    assert described["cleanup.policy"].value == "compact"  # kq's compact applies retention too
    # Configs nobody set are Kafka's (or kq's) defaults, and say so.
    assert described["segment.ms"].source == ConfigSource.DEFAULT_CONFIG.value
    assert described["retention.bytes"].source == ConfigSource.DEFAULT_CONFIG.value
    assert described["retention.bytes"].value == "-1"
    topic = json.loads(run_kq("topic", "describe", "kept", "--json").stdout)
    assert (topic["config"]["retention_ms"], topic["config"]["cleanup"]) == (3_600_000, "compact")
    assert topic["config"]["compression"] == "lz4"  # records are stored lz4-compressed
    with open(os.path.join(data_dir, "topics", "kept", "topic.json")) as f:
        stored = json.load(f)
    assert stored["kafka_config"] == {
        "min.insync.replicas": "1",
        "max.message.bytes": "2000000",
    }


@pytest.mark.parametrize(
    "name,value",
    [
        ("no.such.config", "1"),
        ("compression.type", "brotli"),
        ("retention.ms", "soon"),
        ("min.insync.replicas", "0"),
        ("cleanup.policy", "forever"),
        ("min.cleanable.dirty.ratio", "1.5"),
    ],
)
def test_unknown_configs_and_invalid_values_are_refused_as_kafka_does(admin, run_kq, name, value):
    for validate_only in (True, False):
        with pytest.raises(Exception, match="INVALID_CONFIG") as caught:
            _create(admin, NewTopic("bad", 1, 1, config={name: value}), validate_only=validate_only)
        assert name in str(caught.value)
    assert run_kq("topic", "describe", "bad").returncode == 1


def test_incremental_alter_configs_sets_deletes_and_appends(admin, run_kq):
    _create(admin, NewTopic("tuned", 1, 1, config={"retention.ms": "60000"}))
    res = ConfigResource(
        "topic",
        "tuned",
        incremental_configs=[
            ConfigEntry("compression.type", "zstd", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE),
            ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.APPEND),
            ConfigEntry("segment.bytes", "1048576", incremental_operation=AlterConfigOpType.SET),
        ],
    )
    admin.incremental_alter_configs([res])[res].result(TIMEOUT)
    described = _configs(admin, "tuned")
    assert described["compression.type"].value == "zstd"
    assert described["retention.ms"].value == "-1"  # back to kq's default: keep forever
    assert described["retention.ms"].source == ConfigSource.DEFAULT_CONFIG.value
    assert described["cleanup.policy"].value == "compact"
    topic = json.loads(run_kq("topic", "describe", "tuned", "--json").stdout)
    assert topic["config"]["segment_bytes"] == 1048576
    assert topic["config"]["retention_ms"] is None
    # validate_only: checked, not applied; an invalid value is refused
    check = ConfigResource(
        "topic",
        "tuned",
        incremental_configs=[ConfigEntry("compression.type", "gzip", incremental_operation=AlterConfigOpType.SET)],
    )
    admin.incremental_alter_configs([check], validate_only=True)[check].result(TIMEOUT)
    assert _configs(admin, "tuned")["compression.type"].value == "zstd"
    bad = ConfigResource(
        "topic",
        "tuned",
        incremental_configs=[ConfigEntry("compression.type", "brotli", incremental_operation=AlterConfigOpType.SET)],
    )
    with pytest.raises(Exception, match="INVALID_CONFIG"):
        admin.incremental_alter_configs([bad])[bad].result(TIMEOUT)
    # kq's own tools keep the Kafka configs when they change the topic
    assert run_kq("topic", "alter", "tuned", "--retention", "1h").returncode == 0
    assert _configs(admin, "tuned")["compression.type"].value == "zstd"


def test_alter_configs_replaces_a_topics_configs(kp_admin, admin):
    """AlterConfigs (API 33): the configs given, the others back to their defaults."""
    kp_admin.create_topics([KPNewTopic("replaced", 1, 1, topic_configs={"retention.ms": "60000"})])
    res = ConfigResource("topic", "replaced", set_config={"compression.type": "gzip"})
    admin.alter_configs([res])[res].result(TIMEOUT)
    described = _configs(admin, "replaced")
    assert described["compression.type"].value == "gzip"
    assert described["retention.ms"].value == "-1"
    # kafka-python's AlterConfigs carries over the configs set before, as Kafka's own tools expect
    kp_admin.create_topics([KPNewTopic("carried", 1, 1, topic_configs={"retention.ms": "60000"})])
    resource = KPConfigResource(ConfigResourceType.TOPIC, "carried", configs={"compression.type": "snappy"})
    assert kp_admin.alter_configs([resource], incremental=False) == {"topic": {"carried": "OK"}}
    described = _configs(admin, "carried")
    assert (described["compression.type"].value, described["retention.ms"].value) == ("snappy", "60000")
    bad = KPConfigResource(ConfigResourceType.TOPIC, "carried", configs={"compression.type": "brotli"})
    assert "InvalidConfiguration" in kp_admin.alter_configs([bad], incremental=False)["topic"]["carried"]
    assert _configs(admin, "carried")["compression.type"].value == "snappy"


def test_topic_configs_left_at_defaults_are_reported_as_defaults(kp_admin):
    configs = kp_admin.describe_configs([KPConfigResource(ConfigResourceType.TOPIC, "base")], config_filter="all")
    entry = configs["topic"]["base"]["retention.bytes"]
    assert (entry["value"], entry["config_source"], entry["config_type"]) == ("-1", "DEFAULT_CONFIG", "LONG")
    modified = kp_admin.describe_configs([KPConfigResource(ConfigResourceType.TOPIC, "base")])
    assert modified["topic"]["base"] == {}


def test_replica_assignments_that_name_broker_0_are_taken(admin, run_kq):
    _create(admin, NewTopic("placed", 3, -1, replica_assignment=[[0], [0], [0]]))
    assert len(json.loads(run_kq("topic", "describe", "placed", "--json").stdout)["partitions"]) == 3
    admin.create_partitions([NewPartitions("placed", 5, replica_assignment=[[0], [0]])])["placed"].result(TIMEOUT)
    assert len(json.loads(run_kq("topic", "describe", "placed", "--json").stdout)["partitions"]) == 5
    with pytest.raises(Exception, match="INVALID_REPLICA_ASSIGNMENT"):
        _create(admin, NewTopic("elsewhere", 1, -1, replica_assignment=[[1]]))
    with pytest.raises(Exception, match="INVALID_REPLICA_ASSIGNMENT"):
        admin.create_partitions([NewPartitions("placed", 6, replica_assignment=[[0, 1]])])["placed"].result(TIMEOUT)
    assert len(json.loads(run_kq("topic", "describe", "placed", "--json").stdout)["partitions"]) == 5


def _broker_configs(admin) -> dict:
    res = ConfigResource("broker", "0")
    return admin.describe_configs([res])[res].result(TIMEOUT)


def test_default_partitions_for_auto_created_topics_and_the_broker_configs(data_dir, run_kq):
    server = KqServer(data_dir, "--default-partitions", "3")
    try:
        producer = KafkaProducer(bootstrap_servers=server.bootstrap)
        producer.send("auto", b"x").get(TIMEOUT)
        producer.close()
        admin = AdminClient({"bootstrap.servers": server.bootstrap})
        _create(admin, NewTopic("counted"))  # no partition count: the broker's
        for name in ("auto", "counted"):
            assert len(json.loads(run_kq("topic", "describe", name, "--json").stdout)["partitions"]) == 3
        broker = _broker_configs(admin)
        assert broker["num.partitions"].value == "3"
        assert broker["auto.create.topics.enable"].value == "true"
        assert broker["advertised.listeners"].value == f"PLAINTEXT://{server.bootstrap}"
        assert broker["advertised.listeners"].source == ConfigSource.STATIC_BROKER_CONFIG.value
        assert broker["listeners"].value == f"PLAINTEXT://{server.bootstrap}"
        assert broker["log.dirs"].value == os.path.realpath(data_dir)
        assert broker["node.id"].value == broker["broker.id"].value == "0"
        assert int(broker["message.max.bytes"].value) > 0
    finally:
        server.kill()


def test_no_auto_create_shows_in_the_broker_configs(data_dir):
    server = KqServer(data_dir, "--no-auto-create")
    try:
        broker = _broker_configs(AdminClient({"bootstrap.servers": server.bootstrap}))
        assert broker["auto.create.topics.enable"].value == "false"
        assert broker["num.partitions"].value == "1"
        assert broker["num.partitions"].source == ConfigSource.DEFAULT_CONFIG.value
    finally:
        server.kill()


@pytest.mark.parametrize("value", ["0", "none", "10001"])
def test_default_partitions_out_of_range_is_a_usage_error(run_kq, value):
    r = run_kq("serve", "--default-partitions", value, "--listen", "127.0.0.1:0", timeout=30)
    assert r.returncode == 2
    assert b"Invalid value for '--default-partitions'" in r.stderr
    assert b"Traceback" not in r.stderr


def test_a_single_broker_answers_the_cluster_administration_apis(kp_admin, server, data_dir):
    producer = KafkaProducer(bootstrap_servers=server.bootstrap)
    producer.send("base", b"some bytes", partition=1).get(TIMEOUT)
    producer.close()
    # The data directory is the log directory, with the partitions' real sizes.
    [result] = kp_admin.describe_log_dirs()
    [log_dir] = result["log_dirs"]
    assert log_dir["log_dir"] == os.path.realpath(data_dir) and log_dir["error_code"] == 0
    sizes = {(t["name"], p["partition_index"]): p["partition_size"] for t in log_dir["topics"] for p in t["partitions"]}
    assert sizes[("base", 1)] > sizes[("base", 0)] >= 0
    # Moving a replica to the directory it is in is done; any other directory does not exist.
    from kafka.structs import TopicPartitionReplica

    tpr = TopicPartitionReplica("base", 0, 0)
    assert kp_admin.alter_replica_log_dirs({tpr: log_dir["log_dir"]})[tpr] is kafka_errors.NoError
    assert kp_admin.alter_replica_log_dirs({tpr: "/elsewhere"})[tpr] is kafka_errors.LogDirNotFoundError
    # It is the quorum: leader and only voter.
    quorum = kp_admin.describe_metadata_quorum()
    [partition] = quorum["topics"][0]["partitions"]
    assert partition["leader_id"] == 0 and [v["replica_id"] for v in partition["current_voters"]] == [0]
    # Leaders are elected already; no reassignment is ever in progress; broker 0 is the only placement.
    election = kp_admin.elect_leaders(0, {"base": [0, 1]})
    [(topic, results)] = election.replica_election_results
    assert topic == "base" and {r[1] for r in results} == {kafka_errors.ElectionNotNeededError.errno}
    tp = TopicPartition("base", 0)
    assert kp_admin.alter_partition_reassignments({tp: [0]}) == {tp: None}
    assert kp_admin.list_partition_reassignments() == {}
    # DescribeTopicPartitions, one partition a page, follows its cursor.
    page = kp_admin.describe_topic_partitions(["base"], response_partition_limit=1)
    assert [p["partition_index"] for p in page["topics"][0]["partitions"]] == [0]
    assert page["next_cursor"]["partition_index"] == 1
    rest = kp_admin.describe_topic_partitions(["base"], response_partition_limit=10, cursor=page["next_cursor"])
    assert [p["partition_index"] for p in rest["topics"][0]["partitions"]] == [1]
    assert rest["next_cursor"] is None
    resources = kp_admin.list_config_resources()
    assert "base" in resources["topic"] and resources["broker"] == ["0"]
    # No authorizer: the ACL APIs say so, as Kafka does.
    acl_filter = ACLFilter(
        principal=None,
        host="*",
        operation=ACLOperation.ANY,
        permission_type=ACLPermissionType.ANY,
        resource_pattern=ResourcePatternFilter(ResourceType.TOPIC, "base", ACLResourcePatternType.LITERAL),
    )
    with pytest.raises(kafka_errors.SecurityDisabledError):
        kp_admin.describe_acls(acl_filter)


def test_kafka_python_infers_a_current_kafka(server):
    consumer = KafkaConsumer(bootstrap_servers=server.bootstrap, api_version=None)
    try:
        assert consumer.config["api_version"] == (4, 2)
    finally:
        consumer.close()


def _admin_requests(data_dir: str) -> list:
    from kafka.protocol import admin as A

    Cursor = A.DescribeTopicPartitionsRequest.Cursor
    LogDir = A.AlterReplicaLogDirsRequest.AlterReplicaLogDir
    Reassign = A.AlterPartitionReassignmentsRequest.ReassignableTopic
    Alter = A.AlterConfigsRequest.AlterConfigsResource
    Incremental = A.IncrementalAlterConfigsRequest.AlterConfigsResource
    Quorum = A.DescribeQuorumRequest.TopicData
    Create = A.CreateTopicsRequest.CreatableTopic
    return [
        A.DescribeTopicPartitionsRequest(
            version=0,
            topics=[A.DescribeTopicPartitionsRequest.TopicRequest(name="base")],
            response_partition_limit=1,
            cursor=Cursor(topic_name="base", partition_index=1),
        ),
        A.ListConfigResourcesRequest(version=1, resource_types=[2, 4]),
        A.DescribeLogDirsRequest(
            version=4, topics=[A.DescribeLogDirsRequest.DescribableLogDirTopic(topic="base", partitions=[0, 1])]
        ),
        A.AlterReplicaLogDirsRequest(
            version=2,
            dirs=[LogDir(path=data_dir, topics=[LogDir.AlterReplicaLogDirTopic(name="base", partitions=[0])])],
        ),
        A.DescribeQuorumRequest(
            version=2,
            topics=[Quorum(topic_name="__cluster_metadata", partitions=[Quorum.PartitionData(partition_index=0)])],
        ),
        A.ElectLeadersRequest(
            version=2,
            election_type=0,
            topic_partitions=[A.ElectLeadersRequest.TopicPartitions(topic="base", partitions=[0, 1])],
            timeout_ms=100,
        ),
        A.AlterPartitionReassignmentsRequest(
            version=1,
            timeout_ms=10,
            allow_replication_factor_change=True,
            topics=[
                Reassign(name="base", partitions=[Reassign.ReassignablePartition(partition_index=0, replicas=[0])])
            ],
        ),
        A.ListPartitionReassignmentsRequest(version=0, timeout_ms=10, topics=None),
        A.AlterConfigsRequest(
            version=2,
            resources=[
                Alter(
                    resource_type=2,
                    resource_name="base",
                    configs=[Alter.AlterableConfig(name="compression.type", value="lz4")],
                )
            ],
            validate_only=True,
        ),
        A.IncrementalAlterConfigsRequest(
            version=1,
            resources=[
                Incremental(
                    resource_type=2,
                    resource_name="base",
                    configs=[Incremental.AlterableConfig(name="cleanup.policy", config_operation=2, value="compact")],
                )
            ],
            validate_only=True,
        ),
        A.DescribeConfigsRequest(
            version=4,
            resources=[
                A.DescribeConfigsRequest.DescribeConfigsResource(
                    resource_type=4, resource_name="0", configuration_keys=None
                )
            ],
            include_synonyms=True,
            include_documentation=True,
        ),
        A.CreateTopicsRequest(
            version=7,
            topics=[
                Create(
                    name="made",
                    num_partitions=-1,
                    replication_factor=-1,
                    assignments=[Create.CreatableReplicaAssignment(partition_index=0, broker_ids=[0])],
                    configs=[Create.CreatableTopicConfig(name="compression.type", value="zstd")],
                )
            ],
            timeout_ms=1000,
            validate_only=True,
        ),
        A.DescribeAclsRequest(
            version=3,
            resource_type_filter=1,
            resource_name_filter=None,
            pattern_type_filter=1,
            principal_filter=None,
            host_filter=None,
            operation=1,
            permission_type=1,
        ),
    ]


def test_mutated_admin_requests_get_an_answer_or_a_clean_close(server, data_dir):
    """Damaged bytes in any administration request: an answer, or the connection closed with one log line."""
    import random
    import socket
    import struct

    from serve_support import read_frame

    rng = random.Random(20)
    requests = []
    for request in _admin_requests(os.path.realpath(data_dir)):
        request.with_header(correlation_id=1, client_id="fuzz")
        requests.append(bytes(request.encode(header=True, framed=False)))
    answered = 0
    for _ in range(1500):
        body = bytearray(rng.choice(requests))
        for _ in range(rng.randint(1, 4)):
            body[rng.randrange(8, len(body))] = rng.choice([0, 0xFF, rng.randrange(256)])
        if rng.random() < 0.2:
            body = body[: rng.randrange(8, len(body))]
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(struct.pack(">i", len(body)) + bytes(body))
            answered += read_frame(sock) is not None
    server.stop()
    log = server.stderr.rest()
    assert "internal error" not in log and "Traceback" not in log, log[-3000:]
    assert answered > 100  # most damage still decodes, and is answered


def test_list_groups_answers_its_type_filter(server, run_kq):
    # kq serve's groups are classic ones: asked for consumer-protocol groups only (as librdkafka's
    # ListConsumerGroups with a type does), it lists none, as Kafka would.
    from kafka.protocol.admin import ListGroupsRequest, ListGroupsResponse
    from serve_support import roundtrip

    run_kq("produce", "t", input="a\n")
    assert run_kq("consume", "t", "-g", "billing").returncode == 0

    def listed(types):
        request = ListGroupsRequest(version=5, states_filter=[], types_filter=types)
        response = roundtrip(server.port, request, ListGroupsResponse)
        assert response.error_code == 0
        return [(g.group_id, g.group_type) for g in response.groups]

    assert listed([]) == [("billing", "classic")]
    assert listed(["Classic"]) == [("billing", "classic")]
    assert listed(["consumer"]) == []
    assert listed(["share", "consumer"]) == []
