"""A user's tests of Kafka code, with kq's fixtures and no conftest.py (run by tests/test_testing.py).

Each test here is how its client's documentation would have it written.
"""

import asyncio
import json

import pytest

from kq.testing import KafkaBroker


def produce_confluent(bootstrap, topic, messages, **settings):
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, **settings})
    for key, value in messages:
        producer.produce(topic, value=value, key=key, headers=[("source", b"test")])
    assert producer.flush(10) == 0


def consume_confluent(bootstrap, topic, count, group="orders-app"):
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    got = []
    try:
        for _ in range(200):
            if len(got) == count:
                break
            msg = consumer.poll(0.1)
            if msg is not None and msg.error() is None:
                got.append(msg)
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return got


def test_confluent_kafka_through_a_consumer_group(kq_broker):
    kq_broker.create_topic("orders", partitions=3)
    orders = [(f"customer-{n % 4}".encode(), json.dumps({"order": n}).encode()) for n in range(20)]
    produce_confluent(kq_broker.bootstrap_servers, "orders", orders)

    got = consume_confluent(kq_broker.bootstrap_servers, "orders", 20)
    assert sorted((m.key(), m.value()) for m in got) == sorted(orders)
    records = list(kq_broker.records("orders"))
    assert {r.partition for r in records} == {0, 1, 2}
    assert sorted((r.key, r.value) for r in records) == sorted(orders)
    assert all(r.headers == [("source", b"test")] and r.timestamp > 0 for r in records)
    # A key's records keep their order in their partition.
    for key in {k for k, _ in orders}:
        mine = [r for r in records if r.key == key]
        assert len({r.partition for r in mine}) == 1
        assert [r.value for r in sorted(mine, key=lambda r: r.offset)] == [v for k, v in orders if k == key]


def test_kafka_python(kq_broker):
    from kafka import KafkaConsumer, KafkaProducer

    kq_broker.create_topic("payments", partitions=2, retention_ms=3_600_000)
    producer = KafkaProducer(bootstrap_servers=kq_broker.bootstrap_servers)
    for n in range(10):
        producer.send("payments", key=b"k%d" % n, value=b"paid %d" % n, headers=[("currency", b"EUR")])
    producer.flush()
    producer.close()

    consumer = KafkaConsumer(
        "payments",
        bootstrap_servers=kq_broker.bootstrap_servers,
        group_id="ledger",
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    values = []
    for message in consumer:
        values.append(message.value)
        if len(values) == 10:
            break
    consumer.close()
    assert sorted(values) == sorted(b"paid %d" % n for n in range(10))
    assert sorted(r.value for r in kq_broker.records("payments")) == sorted(values)
    assert {r.headers[0] for r in kq_broker.records("payments")} == {("currency", b"EUR")}


def test_aiokafka(kq_broker):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    async def roundtrip():
        producer = AIOKafkaProducer(bootstrap_servers=kq_broker.bootstrap_servers)
        await producer.start()
        try:
            for n in range(10):
                await producer.send_and_wait("clicks", b"click %d" % n, key=b"page")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            "clicks", bootstrap_servers=kq_broker.bootstrap_servers, group_id="stats", auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            got = []
            async for message in consumer:
                got.append(message.value)
                if len(got) == 10:
                    return got
        finally:
            await consumer.stop()

    assert asyncio.run(asyncio.wait_for(roundtrip(), 20)) == [b"click %d" % n for n in range(10)]
    assert [(r.offset, r.key) for r in kq_broker.records("clicks")] == [(n, b"page") for n in range(10)]


@pytest.mark.parametrize("n", range(4))
def test_each_test_has_a_broker_of_its_own(kq_broker, n):
    """Four tests write to a topic of the same name: each sees only its own record."""
    produce_confluent(kq_broker.bootstrap_servers, "events", [(None, b"from test %d" % n)])
    assert [r.value for r in kq_broker.records("events")] == [b"from test %d" % n]
    assert kq_broker.topics() == ["events"]


def test_the_session_broker_is_shared(kq_broker_session, kq_broker):
    assert kq_broker_session.bootstrap_servers != kq_broker.bootstrap_servers
    produce_confluent(kq_broker_session.bootstrap_servers, "audit", [(None, b"seen")])
    assert b"seen" in [r.value for r in kq_broker_session.records("audit")]


def test_a_broker_in_a_with_block():
    with KafkaBroker() as broker:
        broker.create_topic("jobs", partitions=2)
        produce_confluent(broker.bootstrap_servers, "jobs", [(b"a", b"1"), (b"b", b"2")])
        assert sorted(r.value for r in broker.records("jobs")) == [b"1", b"2"]
        data_dir = broker.data_dir
    import os

    assert not os.path.exists(data_dir)


def test_a_broker_in_an_async_with_block():
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    async def main():
        async with KafkaBroker() as broker:
            broker.create_topic("async-jobs")
            producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
            await producer.start()
            await producer.send_and_wait("async-jobs", b"job 1")
            await producer.stop()
            consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap_servers)
            await consumer.start()
            consumer.assign([TopicPartition("async-jobs", 0)])
            await consumer.seek_to_beginning()
            message = await consumer.getone()
            await consumer.stop()
            return message.value, [r.value for r in broker.records("async-jobs")]

    assert asyncio.run(asyncio.wait_for(main(), 20)) == (b"job 1", [b"job 1"])
