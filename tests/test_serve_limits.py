"""kq serve's memory against tiny hostile requests, and its pace under a producer that fills its queue.

Each test runs a real ``kq serve`` and reads its peak resident memory
(VmHWM in /proc/PID/status) after the hostile clients did their worst,
while another client's Metadata requests must still be answered promptly.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest
from conftest import wait_for
from serve_support import KqServer, connect, roundtrip, send_request

pytest.importorskip("kafka.protocol.producer")
from crc32c import crc32c  # noqa: E402
from kafka.protocol.consumer import FetchRequest  # noqa: E402
from kafka.protocol.metadata import MetadataRequest, MetadataResponse  # noqa: E402
from kafka.protocol.producer import ProduceRequest, ProduceResponse  # noqa: E402
from kafka.record.default_records import DefaultRecordBatchBuilder  # noqa: E402

from kq.serve import codes  # noqa: E402

PEAK_MB = 300  # the bound for each hostile load, with the default --max-memory
METADATA_SECONDS = 0.5


@pytest.fixture
def server(data_dir, run_kq):
    run_kq("topic", "create", "t")
    s = KqServer(data_dir)
    yield s
    s.kill()


def _peak_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc")


def _metadata_seconds(port: int) -> float:
    start = time.perf_counter()
    r = roundtrip(port, MetadataRequest(version=1, topics=None), MetadataResponse)
    took = time.perf_counter() - start
    assert "t" in [t.name for t in r.topics]
    return took


def _slowest_metadata(port: int, busy: threading.Thread | None = None, at_least: float = 2.0) -> float:
    """The slowest of Metadata round trips made for ``at_least`` seconds, and until ``busy`` ends."""
    slowest = 0.0
    start = time.monotonic()
    while time.monotonic() - start < at_least or (busy is not None and busy.is_alive()):
        took = _metadata_seconds(port)
        slowest = max(slowest, took)
        if time.monotonic() - start > 120:
            break
    return slowest


def _produce_request(records: bytes) -> ProduceRequest:
    return ProduceRequest(
        version=9,
        transactional_id=None,
        acks=-1,
        timeout_ms=5000,
        topic_data=[
            ProduceRequest.TopicProduceData(
                name="t",
                partition_data=[ProduceRequest.TopicProduceData.PartitionProduceData(index=0, records=records)],
            )
        ],
    )


def _produce_error(port: int, records: bytes) -> int:
    r = roundtrip(port, _produce_request(records), ProduceResponse)
    [t] = r.responses
    [p] = t.partition_responses
    return p.error_code


def _with_crc(batch: bytearray) -> bytes:
    struct.pack_into(">I", batch, 17, crc32c(bytes(batch[21:])))
    return bytes(batch)


# ---------------------------------------------------------------- counts and lengths


def test_a_batch_header_claiming_100_million_records_costs_nothing(server):
    b = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 2**20)
    b.append(0, None, None, b"x", [])
    batch = bytearray(b.build())
    struct.pack_into(">i", batch, 57, 100_000_000)  # recordCount, the header's last field
    hostile = _with_crc(batch)
    assert len(hostile) < 80

    errors = []
    attack = threading.Thread(target=lambda: errors.extend(_produce_error(server.port, hostile) for _ in range(3)))
    attack.start()
    slowest = _slowest_metadata(server.port, attack, at_least=1.0)
    attack.join()
    assert errors == [codes.CORRUPT_MESSAGE] * 3
    peak = _peak_mb(server.proc.pid)
    assert peak <= PEAK_MB, f"the server reached {peak:.0f} MB for a {len(hostile)}-byte batch"
    assert slowest < METADATA_SECONDS, f"a Metadata round trip took {slowest:.2f}s meanwhile"


def _bomb(codec: str) -> bytes:
    """A batch of one GiB of zeros, compressed: the records do not matter, it is refused for its size."""
    zeros = bytes(16 * 1024 * 1024)
    if codec == "zstd":
        import zstandard

        c = zstandard.ZstdCompressor(level=1).compressobj()
        body = b"".join(c.compress(zeros) for _ in range(64)) + c.flush()
        kind = 4
    elif codec == "gzip":
        import zlib

        c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        body = b"".join(c.compress(zeros) for _ in range(64)) + c.flush()
        kind = 1
    else:
        import lz4.frame

        c = lz4.frame.LZ4FrameCompressor()
        body = c.begin() + b"".join(c.compress(zeros) for _ in range(64)) + c.flush()
        kind = 3
    head = struct.pack(">qiibIhiqqqhii", 0, 49 + len(body), 0, 2, 0, kind, 0, 0, 0, -1, -1, -1, 1)
    return _with_crc(bytearray(head + body))


@pytest.mark.parametrize("codec", ["zstd", "gzip", "lz4"])
def test_a_compressed_batch_that_inflates_to_a_gibibyte_is_refused_at_the_batch_limit(server, codec):
    hostile = _bomb(codec)
    assert len(hostile) < 5 * 1024 * 1024
    errors = []
    attack = threading.Thread(target=lambda: errors.append(_produce_error(server.port, hostile)))
    attack.start()
    slowest = _slowest_metadata(server.port, attack, at_least=1.0)
    attack.join()
    assert errors in ([codes.CORRUPT_MESSAGE], [codes.MESSAGE_TOO_LARGE])
    peak = _peak_mb(server.proc.pid)
    assert peak <= PEAK_MB, f"the server reached {peak:.0f} MB for a {len(hostile)}-byte {codec} batch"
    assert slowest < METADATA_SECONDS, f"a Metadata round trip took {slowest:.2f}s meanwhile"
    assert _produce_error(server.port, _bomb_free_batch()) == codes.NONE  # the server goes on


def _bomb_free_batch() -> bytes:
    b = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 2**20)
    b.append(0, None, None, b"fine", [])
    return bytes(b.build())


# ---------------------------------------------------------------- one budget across connections


def test_eight_connections_sending_most_of_95_mib_frames_hold_the_budget_not_more(server):
    frame_size = 95 * 1024 * 1024
    chunk = bytes(1024 * 1024)
    sent = [0] * 8
    socks = [connect(server.port, timeout=120) for _ in range(8)]

    def send(i: int) -> None:
        try:
            socks[i].sendall(struct.pack(">i", frame_size))
            for _ in range(90):
                socks[i].sendall(chunk)
                sent[i] += len(chunk)
        except OSError:
            pass  # closed by the test while the server was not reading

    senders = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(8)]
    try:
        for t in senders:
            t.start()
        done = 90 * len(chunk)
        # The budget lets two such frames in; without it all eight are buffered whole.
        wait_for(lambda: sum(s == done for s in sent) >= 2, timeout=120, message="two frames to be sent")
        slowest = _slowest_metadata(server.port, at_least=3.0)
        peak = _peak_mb(server.proc.pid)
        assert peak <= PEAK_MB, f"the server reached {peak:.0f} MB for 8 unfinished frames"
        assert slowest < METADATA_SECONDS, f"a Metadata round trip took {slowest:.2f}s meanwhile"
    finally:
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
    assert wait_for(lambda: _metadata_seconds(server.port) < 5, message="the server to answer after they left")


def test_ten_clients_that_pipeline_fetches_and_never_read_hold_the_budget_not_more(server, run_kq):
    run_kq("produce", "t", input=("z" * 1000 + "\n") * 48_000)  # 48 MB
    fetch = FetchRequest(
        version=4,
        replica_id=-1,
        max_wait_ms=0,
        min_bytes=1,
        max_bytes=64 * 1024 * 1024,
        isolation_level=0,
        topics=[
            FetchRequest.FetchTopic(
                topic="t",
                partitions=[
                    FetchRequest.FetchTopic.FetchPartition(partition=0, fetch_offset=0, partition_max_bytes=64_000_000)
                ],
            )
        ],
    )
    readers = []
    try:
        for _ in range(10):
            sock = connect(server.port)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            for i in range(20):
                send_request(sock, fetch, correlation_id=i)
            readers.append(sock)
        slowest = _slowest_metadata(server.port, at_least=5.0)
        peak = _peak_mb(server.proc.pid)
        assert peak <= PEAK_MB, f"the server reached {peak:.0f} MB for 10 clients that never read"
        assert slowest < METADATA_SECONDS, f"a Metadata round trip took {slowest:.2f}s meanwhile"
    finally:
        for sock in readers:
            sock.close()
    assert wait_for(lambda: _metadata_seconds(server.port) < 5, message="the server to answer after they left")


# ---------------------------------------------------------------- pace


def _produce_like_confluents_performance_check(bootstrap: str, topic: str, count: int) -> int:
    """confluent-kafka's integration_test.py ``verify_producer_performance(with_dr_cb=False)``.

    Messages of 100 bytes, ``poll(100)`` whenever the local queue is full
    (that message is skipped, as there), then ``flush``. Returns how many
    were accepted into the queue.
    """
    from confluent_kafka import Producer

    errors = []
    p = Producer({"bootstrap.servers": bootstrap, "error_cb": errors.append})
    payload = "m" * 100
    produced = 0
    for _ in range(count):
        try:
            p.produce(topic, value=payload)
        except BufferError:
            p.poll(100)
            continue
        produced += 1
    left = p.flush(120)
    assert left == 0, f"{left} messages still queued after 120 s: the producer stalled"
    assert not errors, errors[:3]
    return produced


@pytest.mark.timeout(900)
def test_confluent_kafkas_producer_performance_check_twice_to_one_topic_completes(server):
    pytest.importorskip("confluent_kafka")
    from confluent_kafka import Consumer, TopicPartition

    produced = [_produce_like_confluents_performance_check(server.bootstrap, "perf", 3_000_000) for _ in range(2)]
    assert all(n > 2_900_000 for n in produced), produced
    c = Consumer({"bootstrap.servers": server.bootstrap, "group.id": "count"})
    try:
        low, high = c.get_watermark_offsets(TopicPartition("perf", 0), timeout=10)
    finally:
        c.close()
    assert (low, high) == (0, sum(produced))
