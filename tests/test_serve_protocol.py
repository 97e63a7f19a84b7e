"""kq serve at the protocol level, where a client library would hide the detail: joins, sequences, errors."""

from __future__ import annotations

import pytest
from serve_support import KqServer, connect, read_frame, roundtrip, send_request

pytest.importorskip("kafka.protocol.consumer")
from kafka.protocol.consumer import (  # noqa: E402
    FetchRequest,
    FetchResponse,
    JoinGroupRequest,
    JoinGroupResponse,
    ListOffsetsRequest,
    ListOffsetsResponse,
    SyncGroupRequest,
    SyncGroupResponse,
)
from kafka.protocol.producer import (  # noqa: E402
    InitProducerIdRequest,
    InitProducerIdResponse,
    ProduceRequest,
    ProduceResponse,
)
from kafka.record.default_records import DefaultRecordBatchBuilder  # noqa: E402


@pytest.fixture
def server(data_dir, run_kq):
    run_kq("topic", "create", "p", "--partitions", "2")
    s = KqServer(data_dir)
    yield s
    s.kill()


def _batch(values, producer_id=-1, epoch=-1, sequence=-1, timestamps=None) -> bytes:
    b = DefaultRecordBatchBuilder(2, 0, False, producer_id, epoch, sequence, 2**20)
    for i, v in enumerate(values):
        b.append(i, None if timestamps is None else timestamps[i], None, v, [])
    return bytes(b.build())


def _produce(port, records: bytes, topic="p", partition=0, acks=-1, version=9):
    req = ProduceRequest(
        version=version,
        transactional_id=None,
        acks=acks,
        timeout_ms=5000,
        topic_data=[
            ProduceRequest.TopicProduceData(
                name=topic,
                partition_data=[ProduceRequest.TopicProduceData.PartitionProduceData(index=partition, records=records)],
            )
        ],
    )
    r = roundtrip(port, req, ProduceResponse)
    [t] = r.responses
    [p] = t.partition_responses
    return p.error_code, p.base_offset


def test_a_retried_idempotent_batch_is_stored_once_and_answered_with_its_first_offset(server, run_kq):
    init = roundtrip(
        server.port,
        InitProducerIdRequest(version=1, transactional_id=None, transaction_timeout_ms=1000),
        InitProducerIdResponse,
    )
    assert init.error_code == 0 and init.producer_id >= 0
    pid, epoch = init.producer_id, init.producer_epoch
    assert _produce(server.port, _batch([b"a", b"b"], pid, epoch, 0)) == (0, 0)
    assert _produce(server.port, _batch([b"c"], pid, epoch, 2)) == (0, 2)
    # The client lost the answer to the first batch and sends it again.
    assert _produce(server.port, _batch([b"a", b"b"], pid, epoch, 0)) == (0, 0)
    # A gap in the sequence is refused, not stored.
    assert _produce(server.port, _batch([b"z"], pid, epoch, 7))[0] == 45  # OUT_OF_ORDER_SEQUENCE_NUMBER
    assert run_kq("consume", "p", "-p", "0").stdout == b"a\nb\nc\n"


def test_produce_errors_name_what_is_wrong(server):
    assert _produce(server.port, _batch([b"x"]), topic="missing")[0] == 3  # UNKNOWN_TOPIC_OR_PARTITION
    assert _produce(server.port, _batch([b"x"]), partition=9)[0] == 3
    assert _produce(server.port, _batch([b"x"]), topic="bad/name")[0] == 17  # INVALID_TOPIC_EXCEPTION
    assert _produce(server.port, _batch([b"x"]), acks=2)[0] == 21  # INVALID_REQUIRED_ACKS
    damaged = bytearray(_batch([b"x" * 40]))
    damaged[-2] ^= 1
    assert _produce(server.port, bytes(damaged))[0] == 2  # CORRUPT_MESSAGE


def test_a_request_with_a_bad_batch_stores_none_of_its_batches(server, run_kq):
    # As Kafka: an error answer means nothing was kept, so the client's retry stores nothing twice.
    damaged = bytearray(_batch([b"bad" * 20]))
    damaged[-2] ^= 1
    assert _produce(server.port, _batch([b"good"]) + bytes(damaged))[0] == 2  # CORRUPT_MESSAGE
    assert run_kq("consume", "p", "-p", "0").stdout == b""


def test_acks_0_gets_no_response_and_the_next_request_is_answered(server, run_kq):
    from kafka.protocol.metadata import ApiVersionsRequest, ApiVersionsResponse

    with connect(server.port) as sock:
        req = ProduceRequest(
            version=9,
            transactional_id=None,
            acks=0,
            timeout_ms=5000,
            topic_data=[
                ProduceRequest.TopicProduceData(
                    name="p",
                    partition_data=[
                        ProduceRequest.TopicProduceData.PartitionProduceData(index=1, records=_batch([b"fire"]))
                    ],
                )
            ],
        )
        send_request(sock, req, correlation_id=1)
        send_request(sock, ApiVersionsRequest(version=0), correlation_id=2)
        frame = read_frame(sock)
    r = ApiVersionsResponse.decode(frame, version=0, header=True)
    assert r.header.correlation_id == 2  # the first answer on the wire is the second request's
    assert run_kq("consume", "p", "-p", "1").stdout == b"fire\n"


def test_join_group_v4_and_later_first_answers_member_id_required(server):
    def join(member_id):
        return roundtrip(
            server.port,
            JoinGroupRequest(
                version=5,
                group_id="raw",
                session_timeout_ms=10000,
                rebalance_timeout_ms=10000,
                member_id=member_id,
                group_instance_id=None,
                protocol_type="consumer",
                protocols=[JoinGroupRequest.JoinGroupRequestProtocol(name="range", metadata=b"\0\0\0\0\0\0\0\0\0\0")],
            ),
            JoinGroupResponse,
        )

    first = join("")
    assert first.error_code == 79 and first.member_id  # MEMBER_ID_REQUIRED, with the id to use
    second = join(first.member_id)
    assert (second.error_code, second.generation_id, second.leader, second.member_id) == (
        0,
        1,
        first.member_id,
        first.member_id,
    )
    assert [m.member_id for m in second.members] == [first.member_id]
    sync = roundtrip(
        server.port,
        SyncGroupRequest(
            version=3,
            group_id="raw",
            generation_id=1,
            member_id=first.member_id,
            group_instance_id=None,
            assignments=[],
        ),
        SyncGroupResponse,
    )
    assert sync.error_code == 0
    assert join("someone-else").error_code == 25  # UNKNOWN_MEMBER_ID
    bad = roundtrip(
        server.port,
        JoinGroupRequest(
            version=5,
            group_id="no/slash",
            session_timeout_ms=10000,
            rebalance_timeout_ms=10000,
            member_id="",
            group_instance_id=None,
            protocol_type="consumer",
            protocols=[JoinGroupRequest.JoinGroupRequestProtocol(name="range", metadata=b"")],
        ),
        JoinGroupResponse,
    )
    assert bad.error_code == 24  # INVALID_GROUP_ID


def test_list_offsets_finds_the_largest_timestamp_and_fetch_refuses_unknown_sessions(server):
    assert _produce(server.port, _batch([b"a", b"b", b"c"], timestamps=[1000, 5000, 3000]))[0] == 0
    req = ListOffsetsRequest(
        version=7,
        replica_id=-1,
        isolation_level=0,
        topics=[
            ListOffsetsRequest.ListOffsetsTopic(
                name="p",
                partitions=[
                    ListOffsetsRequest.ListOffsetsTopic.ListOffsetsPartition(
                        partition_index=0, current_leader_epoch=-1, timestamp=t
                    )
                    for t in (-3, -2, -1, 2000)
                ],
            )
        ],
    )
    r = roundtrip(server.port, req, ListOffsetsResponse)
    assert [(p.offset, p.timestamp) for p in r.topics[0].partitions] == [(1, 5000), (0, -1), (3, -1), (1, 5000)]
    fetch = FetchRequest(
        version=11,
        replica_id=-1,
        max_wait_ms=0,
        min_bytes=1,
        max_bytes=1000,
        isolation_level=0,
        session_id=1234,
        session_epoch=1,
        topics=[],
        forgotten_topics_data=[],
        rack_id="",
    )
    assert roundtrip(server.port, fetch, FetchResponse).error_code == 70  # FETCH_SESSION_ID_NOT_FOUND


def test_an_answer_does_not_wait_behind_a_join_sent_after_it_on_the_same_connection(server):
    """A client that sends a request and then a JoinGroup that must wait for a rebalance gets the
    first answer at once, not when the rebalance ends (answers are batched with the next ones)."""
    import time

    from kafka.protocol.metadata import ApiVersionsRequest, ApiVersionsResponse

    def join_request(member_id, version):
        return JoinGroupRequest(
            version=version,
            group_id="held",
            session_timeout_ms=30000,
            rebalance_timeout_ms=8000,
            member_id=member_id,
            **({"group_instance_id": None} if version >= 5 else {}),
            protocol_type="consumer",
            protocols=[JoinGroupRequest.JoinGroupRequestProtocol(name="range", metadata=b"\0\0\0\0\0\0\0\0\0\0")],
        )

    first = roundtrip(server.port, join_request("", 5), JoinGroupResponse)
    member = first.member_id
    assert roundtrip(server.port, join_request(member, 5), JoinGroupResponse).error_code == 0
    # A second member's join waits for the first to join again, which it never does here.
    versions = ApiVersionsRequest(version=0)
    versions.with_header(correlation_id=1, client_id="test")
    join = join_request("", 3)
    join.with_header(correlation_id=2, client_id="test")
    with connect(server.port, timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(bytes(versions.encode(header=True, framed=True)) + bytes(join.encode(header=True, framed=True)))
        frame = read_frame(sock)
        waited = time.monotonic() - started
    assert frame is not None
    assert ApiVersionsResponse.decode(frame, version=0, header=True).header.correlation_id == 1
    assert waited < 3, f"the ApiVersions answer waited {waited:.1f} s behind the JoinGroup"
