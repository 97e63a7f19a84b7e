"""Kafka's rules in kq serve: who may commit a group's offsets, and a Produce answered with an error keeps nothing."""

from __future__ import annotations

import json
import os
import signal
import struct

import pytest
from conftest import wait_for
from serve_support import KqServer, roundtrip

pytest.importorskip("kafka.protocol.consumer")
from crc32c import crc32c  # noqa: E402
from kafka.protocol.consumer import OffsetCommitRequest, OffsetCommitResponse  # noqa: E402
from kafka.protocol.producer import (  # noqa: E402
    InitProducerIdRequest,
    InitProducerIdResponse,
    ProduceRequest,
    ProduceResponse,
)
from kafka.record.default_records import DefaultRecordBatchBuilder  # noqa: E402

UNKNOWN_MEMBER_ID = 25
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
INVALID_TIMESTAMP = 32
CORRUPT_MESSAGE = 2
CRC_POSITION, BASE_TIMESTAMP_POSITION, HEADER_SIZE = 17, 27, 61  # in a v2 record batch header


@pytest.fixture
def server(data_dir, run_kq):
    run_kq("topic", "create", "p", "--partitions", "2")
    s = KqServer(data_dir, "-v")
    yield s
    s.kill()
    assert "internal error" not in s.stderr.rest()


def _offsets(run_kq, topic: str, group: str) -> dict[int, int]:
    out = run_kq("offsets", "show", topic, "-g", group, "--json")
    assert out.returncode == 0, out.stderr
    return {r["partition"]: r["committed"] for r in json.loads(out.stdout) if r.get("committed") is not None}


def _commit(port, group: str, topic: str, offsets: dict[int, int], generation=-1, member_id="") -> list[int]:
    """A raw OffsetCommit v8, as a client that never joined sends it: the error code per partition."""
    T = OffsetCommitRequest.OffsetCommitRequestTopic
    P = T.OffsetCommitRequestPartition
    req = OffsetCommitRequest(
        version=8,
        group_id=group,
        generation_id_or_member_epoch=generation,
        member_id=member_id,
        group_instance_id=None,
        topics=[
            T(
                name=topic,
                partitions=[
                    P(partition_index=p, committed_offset=o, committed_leader_epoch=-1, committed_metadata="")
                    for p, o in sorted(offsets.items())
                ],
            )
        ],
    )
    r = roundtrip(port, req, OffsetCommitResponse)
    return [p.error_code for t in r.topics for p in t.partitions]


# ---------------------------------------------------------------- commits


def test_a_client_outside_the_group_cannot_rewind_a_live_kq_member(server, run_kq, spawn_kq):
    run_kq("produce", "p", "-p", "0", input="".join(f"r{i}\n" for i in range(100)))
    member = spawn_kq("consume", "p", "-g", "live", "-f")
    try:
        wait_for(lambda: _offsets(run_kq, "p", "live").get(0) == 100, timeout=30, message="the kq member to commit 100")
        # A raw commit with no membership (generation -1, no member id), as kafka-python's assign() + commit sends.
        assert _commit(server.port, "live", "p", {0: 5}) == [UNKNOWN_MEMBER_ID]
        # confluent-kafka's assign() + commit, the same way.
        from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

        c = Consumer({"bootstrap.servers": server.bootstrap, "group.id": "live", "enable.auto.commit": False})
        try:
            c.assign([TopicPartition("p", 0, 5)])
            with pytest.raises(KafkaException) as refused:
                c.commit(offsets=[TopicPartition("p", 0, 5)], asynchronous=False)
            assert refused.value.args[0].code() == KafkaError.UNKNOWN_MEMBER_ID
        finally:
            c.close()
        # kafka-python's, too.
        from kafka import KafkaConsumer
        from kafka import TopicPartition as KafkaPythonPartition
        from kafka.errors import CommitFailedError
        from kafka.structs import OffsetAndMetadata

        kc = KafkaConsumer(bootstrap_servers=server.bootstrap, group_id="live", enable_auto_commit=False)
        try:
            kc.assign([KafkaPythonPartition("p", 0)])
            with pytest.raises(CommitFailedError, match="UnknownMemberId"):
                kc.commit({KafkaPythonPartition("p", 0): OffsetAndMetadata(5, "", -1)})
        finally:
            kc.close()
        # `kq -b` through serve says what the local CLI says, and moves nothing.
        reset = run_kq("-b", server.bootstrap, "offsets", "reset", "p", "-g", "live", "--to", "5", data=None)
        assert reset.returncode == 1
        assert b"group 'live' has 1 live member(s) consuming 'p'; stop them first" in reset.stderr
        assert _offsets(run_kq, "p", "live")[0] == 100
    finally:
        member.send_signal(signal.SIGINT)
        member.communicate(timeout=20)
    # Nothing is delivered twice when the group comes back.
    again = run_kq("consume", "p", "-g", "live")
    assert again.returncode == 0 and again.stdout == b""
    # Once the group is empty, an admin commit (no membership) moves it, as Kafka allows.
    assert _commit(server.port, "live", "p", {0: 5}) == [0]
    assert _offsets(run_kq, "p", "live")[0] == 5


def test_a_kq_member_on_another_topic_does_not_lock_this_topics_offsets(server, run_kq, spawn_kq):
    # kq's membership is per topic, as `kq offsets reset` sees it.
    run_kq("topic", "create", "other")
    member = spawn_kq("consume", "other", "-g", "split", "-f")
    try:
        wait_for(lambda: run_kq("group", "describe", "split").returncode == 0, timeout=20, message="the kq member")
        wait_for(
            lambda: "other" in run_kq("group", "describe", "split").stdout.decode(),
            timeout=20,
            message="the kq member to join",
        )
        assert _commit(server.port, "split", "other", {0: 0}) == [UNKNOWN_MEMBER_ID]
        run_kq("produce", "p", "-p", "1", input="a\nb\n")
        assert _commit(server.port, "split", "p", {1: 2}) == [0]
        assert _offsets(run_kq, "p", "split") == {1: 2}
    finally:
        member.kill()


def test_a_client_outside_the_group_cannot_commit_while_a_kafka_member_is_in_it(server, run_kq):
    from confluent_kafka import Consumer

    run_kq("produce", "p", "-p", "0", input="".join(f"r{i}\n" for i in range(10)))
    c = Consumer(
        {
            "bootstrap.servers": server.bootstrap,
            "group.id": "kafka-live",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        c.subscribe(["p"])
        got = []
        wait_for(lambda: got.extend(c.consume(100, timeout=0.2)) or len(got) >= 10, timeout=30, message="10 records")
        c.commit(asynchronous=False)
        assert _offsets(run_kq, "p", "kafka-live") == {0: 10}
        assert _commit(server.port, "kafka-live", "p", {0: 1}) == [UNKNOWN_MEMBER_ID]
        assert _commit(server.port, "kafka-live", "p", {0: 1}, generation=1, member_id="made-up") == [UNKNOWN_MEMBER_ID]
        assert _offsets(run_kq, "p", "kafka-live") == {0: 10}
    finally:
        c.close()


def test_a_commit_through_serve_records_the_topic_id_as_the_clis_do(server, run_kq, data_dir):
    # The id is what tells a topic's offsets from those of an earlier topic of the same name
    # (docs/FORMAT.md): a commit that lands after a delete and re-create is then ignored.
    run_kq("produce", "p", "-p", "0", input="a\nb\nc\n")
    assert _commit(server.port, "g", "p", {0: 3}) == [0]
    assert run_kq("offsets", "reset", "p", "-g", "cli", "--to", "1").returncode == 0
    with open(os.path.join(data_dir, "topics", "p", "topic.json")) as f:
        topic_id = json.load(f)["id"]
    for group, offset in (("g", 3), ("cli", 1)):
        with open(os.path.join(data_dir, "groups", group, "p", "0.offset")) as f:
            committed = json.load(f)
        assert (committed["offset"], committed.get("topic_id")) == (offset, topic_id), group


# ---------------------------------------------------------------- produce


def _batch(values, producer_id=-1, epoch=-1, sequence=-1, timestamps=None) -> bytes:
    b = DefaultRecordBatchBuilder(2, 0, False, producer_id, epoch, sequence, 2**20)
    for i, v in enumerate(values):
        b.append(i, None if timestamps is None else timestamps[i], None, v, [])
    return bytes(b.build())


def _produce(port, records: bytes, partition=0):
    req = ProduceRequest(
        version=9,
        transactional_id=None,
        acks=-1,
        timeout_ms=5000,
        topic_data=[
            ProduceRequest.TopicProduceData(
                name="p",
                partition_data=[ProduceRequest.TopicProduceData.PartitionProduceData(index=partition, records=records)],
            )
        ],
    )
    [t] = roundtrip(port, req, ProduceResponse).responses
    [p] = t.partition_responses
    return p.error_code, p.base_offset


def _producer(port) -> tuple[int, int]:
    init = roundtrip(
        port,
        InitProducerIdRequest(version=1, transactional_id=None, transaction_timeout_ms=1000),
        InitProducerIdResponse,
    )
    assert init.error_code == 0
    return init.producer_id, init.producer_epoch


def test_a_request_refused_for_its_sequence_stores_none_of_its_batches(server, run_kq):
    pid, epoch = _producer(server.port)
    good = _batch([b"a", b"b"], pid, epoch, 0)
    gap = _batch([b"z"], pid, epoch, 7)
    assert _produce(server.port, good + gap)[0] == OUT_OF_ORDER_SEQUENCE_NUMBER
    assert run_kq("consume", "p", "-p", "0").stdout == b""
    # The client retries the batch that was fine: it is stored once.
    assert _produce(server.port, good) == (0, 0)
    assert _produce(server.port, good) == (0, 0)
    assert run_kq("consume", "p", "-p", "0").stdout == b"a\nb\n"


def test_batches_of_one_request_are_checked_in_sequence_with_each_other(server, run_kq):
    pid, epoch = _producer(server.port)
    first, second = _batch([b"a", b"b"], pid, epoch, 0), _batch([b"c"], pid, epoch, 2)
    assert _produce(server.port, first + second) == (0, 0)
    # The same request again: both batches are duplicates, answered with where they went.
    assert _produce(server.port, first + second) == (0, 0)
    # A batch repeated inside one request is out of sequence with the copy before it.
    third = _batch([b"d"], pid, epoch, 3)
    assert _produce(server.port, third + third)[0] == OUT_OF_ORDER_SEQUENCE_NUMBER
    assert run_kq("consume", "p", "-p", "0").stdout == b"a\nb\nc\n"


def test_a_timestamp_past_64_bits_is_refused_and_stores_nothing(server, run_kq):
    ok = _batch([b"fine"])
    # A record 2**62 ms after its batch's base timestamp, which is near the largest int64.
    overflow = bytearray(_batch([b"x", b"y"], timestamps=[0, 2**62]))
    struct.pack_into(">qq", overflow, BASE_TIMESTAMP_POSITION, 2**63 - 10, 2**63 - 10)
    struct.pack_into(">I", overflow, CRC_POSITION, crc32c(overflow[CRC_POSITION + 4 :]))
    overflow = bytes(overflow)
    assert _produce(server.port, ok + overflow)[0] == INVALID_TIMESTAMP
    assert run_kq("consume", "p", "-p", "0").stdout == b""
    assert _produce(server.port, ok) == (0, 0)


@pytest.mark.parametrize("codec", [1, 2, 3, 4], ids=["gzip", "snappy", "lz4", "zstd"])
def test_a_damaged_compressed_batch_is_answered_as_corrupt_with_a_valid_checksum(server, run_kq, codec):
    # Bytes that do not decompress, under a checksum that matches them (a client's bug, not
    # a transfer error): CORRUPT_MESSAGE, as for any batch that does not decode.
    b = DefaultRecordBatchBuilder(2, codec, False, -1, -1, -1, 2**20)
    for i in range(5):
        b.append(i, None, None, b"value%d" % i * 10, [])
    damaged = bytearray(b.build())
    assert damaged[22] & 0x07 == codec  # sent compressed
    damaged[HEADER_SIZE] ^= 0xFF
    struct.pack_into(">I", damaged, CRC_POSITION, crc32c(damaged[CRC_POSITION + 4 :]))
    assert _produce(server.port, bytes(damaged))[0] == CORRUPT_MESSAGE
    assert run_kq("consume", "p").stdout == b""


# ---------------------------------------------------------------- malformed requests


def test_a_null_where_the_schema_allows_none_closes_the_connection_with_one_log_line(server):
    from kafka.protocol.admin import DeleteGroupsRequest
    from kafka.protocol.metadata import MetadataRequest, MetadataResponse
    from serve_support import closed_by_server, connect, send_request

    with connect(server.port) as sock:
        send_request(sock, DeleteGroupsRequest(version=0, groups_names=None))  # encoded as length -1
        assert closed_by_server(sock)
    line = server.stderr.wait_for(lambda text: "closing connection" in text, timeout=10)
    assert "DeleteGroupsRequest v0 has a null groups_names, which the schema does not allow" in line
    assert roundtrip(server.port, MetadataRequest(version=1, topics=None), MetadataResponse).brokers
