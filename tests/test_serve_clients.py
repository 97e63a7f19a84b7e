"""kq serve with the real Kafka clients: produce, consume, and the round trip with the kq command."""

from __future__ import annotations

import time

import pytest
from serve_support import CODECS, KqServer, client_params, consume, kq_records, produce

NOW = int(time.time() * 1000)


@pytest.fixture
def server(data_dir):
    s = KqServer(data_dir)
    yield s
    s.kill()


def _records(n: int, partitions: int, prefix: str, timestamps: bool = True) -> list[dict]:
    return [
        {
            "partition": i % partitions,
            "key": None if i % 4 == 3 else f"{prefix}-key-{i}".encode(),
            "value": f"{prefix} value {i} ".encode() * (1 + i % 7),
            "headers": [("trace", f"t{i}".encode()), ("kind", b"test")] if i % 2 == 0 else [],
            "timestamp": NOW - 10_000 + i if timestamps else None,
        }
        for i in range(n)
    ]


def _project(rows, *fields):
    return [tuple(r[f] for f in fields) for r in rows]


@pytest.mark.parametrize("client", client_params())
def test_every_record_a_client_produces_reads_back_identically_with_kq_consume(client, server, run_kq):
    """All acks settings and all five codecs; partition, offset, key, value, headers and timestamp survive."""
    run_kq("topic", "create", "t", "--partitions", "2")
    sent = []
    for acks in (0, 1, "all"):
        for codec in CODECS:
            batch = _records(12, 2, f"{acks}-{codec}", timestamps=client != "kcat")
            got = produce(client, server.bootstrap, "t", batch, acks=acks, compression=codec)
            if got:
                for r, (partition, offset) in zip(batch, got):
                    r["reported"] = (partition, offset)
            sent += batch
    stored = kq_records(run_kq, "t")
    assert len(stored) == len(sent)
    for p in (0, 1):
        mine = [r for r in sent if r["partition"] == p]
        theirs = [r for r in stored if r["partition"] == p]
        # Each partition holds what was sent to it, in order, at dense offsets.
        assert [r["offset"] for r in theirs] == list(range(len(mine)))
        assert _project(theirs, "key", "value", "headers") == _project(mine, "key", "value", "headers")
        for r, s in zip(mine, theirs):
            if r["timestamp"] is not None:
                assert s["timestamp"] == r["timestamp"]
            else:  # kcat stamps records itself
                assert abs(s["timestamp"] - time.time() * 1000) < 120_000
            if "reported" in r:
                assert r["reported"] == (s["partition"], s["offset"])


@pytest.mark.parametrize("client", client_params())
def test_every_record_kq_produces_reads_back_identically_with_a_client(client, server, run_kq, tmp_path):
    lines = []
    import json

    for i in range(30):
        lines.append(
            json.dumps(
                {
                    "partition": i % 3,
                    "key": f"k{i}" if i % 5 else None,
                    "value": f"value {i}",
                    "headers": {"h": f"v{i}"} if i % 2 else {},
                    "timestamp": NOW + i,
                }
            )
        )
    run_kq("topic", "create", "k", "--partitions", "3")
    out = run_kq("produce", "k", "--json", input="\n".join(lines) + "\n")
    assert out.returncode == 0, out.stderr
    expected = kq_records(run_kq, "k")
    got = consume(client, server.bootstrap, "k", [0, 1, 2], len(expected))
    got.sort(key=lambda r: (r["partition"], r["offset"]))
    assert got == expected


@pytest.mark.parametrize("client", client_params())
def test_keyed_produce_lands_where_kq_produce_puts_the_key(client, server, run_kq):
    run_kq("topic", "create", "keyed", "--partitions", "5")
    keys = [f"user-{i}".encode() for i in range(25)]
    produce(client, server.bootstrap, "keyed", [{"key": k, "value": b"from " + client.encode()} for k in keys])
    out = run_kq("produce", "keyed", "-K", ":", input="".join(f"{k.decode()}:from kq\n" for k in keys))
    assert out.returncode == 0
    by_key: dict = {}
    for r in kq_records(run_kq, "keyed"):
        by_key.setdefault(r["key"], set()).add(r["partition"])
    assert set(by_key) == set(keys)
    assert all(len(parts) == 1 for parts in by_key.values()), by_key


@pytest.mark.parametrize("client", client_params())
def test_idempotent_producer_stores_each_record_once(client, server, run_kq):
    run_kq("topic", "create", "idem")
    batch = [{"key": b"k", "value": f"v{i}".encode()} for i in range(200)]
    got = produce(client, server.bootstrap, "idem", batch, acks="all", compression="lz4", idempotent=True)
    if client != "kcat":  # kcat reports no offsets
        assert [o for _, o in got] == list(range(200))
    assert [r["value"] for r in kq_records(run_kq, "idem")] == [r["value"] for r in batch]


@pytest.mark.parametrize("client", client_params())
def test_consume_from_an_offset_from_latest_and_by_timestamp(client, server, run_kq):
    run_kq("topic", "create", "o")
    produce(
        "confluent",
        server.bootstrap,
        "o",
        [{"value": f"m{i}".encode(), "timestamp": NOW + 1000 * i, "partition": 0} for i in range(10)],
    )
    from_offset = consume(client, server.bootstrap, "o", [0], 4, start=6)
    assert [r["offset"] for r in from_offset] == [6, 7, 8, 9]
    assert consume(client, server.bootstrap, "o", [0], 1, start="latest", timeout=1.5) == []


@pytest.mark.parametrize("client", client_params(["confluent", "kafka-python", "aiokafka"]))
def test_offsets_for_times_earliest_and_latest(client, server, run_kq):
    run_kq("topic", "create", "ts")
    produce(
        "confluent",
        server.bootstrap,
        "ts",
        [{"value": f"m{i}".encode(), "timestamp": NOW + 1000 * i, "partition": 0} for i in range(10)],
    )
    found = _offsets_for_times(client, server.bootstrap, "ts", NOW + 3500)
    assert found[0] == 4 and found[1] in (None, NOW + 4000)
    assert _offsets_for_times(client, server.bootstrap, "ts", NOW + 60_000) is None


def _offsets_for_times(client, bootstrap, topic, ts):
    if client == "confluent":
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer({"bootstrap.servers": bootstrap, "group.id": "x"})
        try:
            [tp] = c.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=10)
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
            assert (lo, hi) == (0, 10)
        finally:
            c.close()
        return None if tp.offset < 0 else (tp.offset, None)  # librdkafka reports no timestamp
    if client == "kafka-python":
        from kafka import KafkaConsumer, TopicPartition

        c = KafkaConsumer(bootstrap_servers=bootstrap)
        try:
            tp = TopicPartition(topic, 0)
            found = c.offsets_for_times({tp: ts})[tp]
            assert c.beginning_offsets([tp])[tp] == 0 and c.end_offsets([tp])[tp] == 10
        finally:
            c.close()
        return None if found is None else (found.offset, found.timestamp)
    import asyncio

    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run():
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap)
        await c.start()
        try:
            tp = TopicPartition(topic, 0)
            found = (await c.offsets_for_times({tp: ts}))[tp]
            assert (await c.beginning_offsets([tp]))[tp] == 0 and (await c.end_offsets([tp]))[tp] == 10
        finally:
            await c.stop()
        return None if found is None else (found.offset, found.timestamp)

    return asyncio.run(run())
