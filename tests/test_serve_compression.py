"""kq serve keeps a producer's compression codec, as Kafka does with compression.type=producer (its default):
a consumer is served the records compressed as they were produced."""

from __future__ import annotations

import pytest
from serve_support import KqServer, roundtrip

pytest.importorskip("kafka.protocol.consumer")
from kafka import KafkaProducer  # noqa: E402
from kafka.protocol.consumer import FetchRequest, FetchResponse  # noqa: E402
from kafka.record import MemoryRecords  # noqa: E402

CODECS = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


@pytest.fixture
def server(data_dir, run_kq):
    run_kq("topic", "create", "squeezed")
    s = KqServer(data_dir)
    yield s
    s.kill()


def _fetched_batches(port: int, topic: str) -> list:
    Topic = FetchRequest.FetchTopic
    request = FetchRequest(
        version=11,
        replica_id=-1,
        max_wait_ms=0,
        min_bytes=1,
        max_bytes=10_000_000,
        isolation_level=0,
        session_id=0,
        session_epoch=-1,
        topics=[
            Topic(
                topic=topic,
                partitions=[
                    Topic.FetchPartition(
                        partition=0,
                        current_leader_epoch=-1,
                        fetch_offset=0,
                        log_start_offset=-1,
                        partition_max_bytes=10_000_000,
                    )
                ],
            )
        ],
        forgotten_topics_data=[],
        rack_id="",
    )
    response = roundtrip(port, request, FetchResponse)
    [partition] = response.responses[0].partitions
    assert partition.error_code == 0
    records = MemoryRecords(bytes(partition.records))
    batches = []
    while records.has_next():
        batches.append(records.next_batch())
    return batches


def test_records_are_served_compressed_as_they_were_produced(server, run_kq):
    expected = []
    for name in [None, *CODECS]:
        producer = KafkaProducer(bootstrap_servers=server.bootstrap, compression_type=name, linger_ms=50)
        values = [f"{name} {i} ".encode() * 20 for i in range(5)]
        for v in values:
            producer.send("squeezed", v, partition=0)
        producer.flush()
        producer.close()
        expected.append((CODECS.get(name or "", 0), values))
    batches = _fetched_batches(server.port, "squeezed")
    got: dict[int, list] = {}
    for b in batches:
        got.setdefault(b.compression_type, []).extend(r.value for r in b)
    assert got == {codec: values for codec, values in expected}
    # kq's own tools read the same records, stored uncompressed
    lines = run_kq("consume", "squeezed").stdout.splitlines()
    assert lines == [v for _, values in expected for v in values]
