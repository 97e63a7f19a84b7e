"""Consumer groups through kq serve: Kafka members, kq's offsets, and `kq consume -g` members side by side."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import wait_for
from serve_support import KCAT, KqServer, client_params, needs_kcat, produce

pytest.importorskip("confluent_kafka")


@pytest.fixture
def server(data_dir):
    s = KqServer(data_dir)
    yield s
    s.kill()


def _offsets(run_kq, topic: str, group: str) -> dict[int, int]:
    out = run_kq("offsets", "show", topic, "-g", group, "--json")
    assert out.returncode == 0, out.stderr
    return {r["partition"]: r["committed"] for r in json.loads(out.stdout) if r.get("committed") is not None}


def _group_read(
    client: str, bootstrap: str, topic: str, group: str, count: int, timeout: float = 30, assignor: str | None = None
) -> list[tuple[int, int, bytes]]:
    """Join ``group``, read ``count`` records, commit, leave: (partition, offset, value)."""
    out = []
    deadline = time.monotonic() + timeout
    if client == "confluent":
        from confluent_kafka import Consumer

        conf = {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
        if assignor:
            conf["partition.assignment.strategy"] = assignor
        c = Consumer(conf)
        c.subscribe([topic])
        try:
            while len(out) < count and time.monotonic() < deadline:
                for m in c.consume(100, timeout=0.2):
                    assert m.error() is None, m.error()
                    out.append((m.partition(), m.offset(), m.value()))
            c.commit(asynchronous=False)
        finally:
            c.close()
    elif client == "kafka-python":
        from kafka import KafkaConsumer

        kwargs = {}
        if assignor == "roundrobin":
            from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

            kwargs["partition_assignment_strategy"] = [RoundRobinPartitionAssignor]
        c = KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=6000,
            heartbeat_interval_ms=500,
            **kwargs,
        )
        try:
            while len(out) < count and time.monotonic() < deadline:
                for _, msgs in c.poll(timeout_ms=200).items():
                    out += [(m.partition, m.offset, m.value) for m in msgs]
            c.commit()
        finally:
            c.close()
    elif client == "aiokafka":
        from aiokafka import AIOKafkaConsumer

        async def run():
            kwargs = {}
            if assignor == "roundrobin":
                from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

                kwargs["partition_assignment_strategy"] = [RoundRobinPartitionAssignor]
            c = AIOKafkaConsumer(
                topic,
                bootstrap_servers=bootstrap,
                group_id=group,
                auto_offset_reset="earliest",
                enable_auto_commit=False,
                session_timeout_ms=6000,
                heartbeat_interval_ms=500,
                **kwargs,
            )
            await c.start()
            try:
                while len(out) < count and time.monotonic() < deadline:
                    for _, msgs in (await c.getmany(timeout_ms=200)).items():
                        out.extend((m.partition, m.offset, m.value) for m in msgs)
                await c.commit()
            finally:
                await c.stop()

        asyncio.run(run())
    else:  # kcat's balanced consumer: -G commits as it goes (auto commit), -e ends at the end
        res = subprocess.run(
            [
                KCAT,
                "-b",
                bootstrap,
                "-G",
                group,
                topic,
                "-e",
                "-J",
                "-X",
                "auto.offset.reset=earliest",
                "-X",
                "enable.auto.commit=false",
            ],
            capture_output=True,
            timeout=timeout,
        )
        for line in res.stdout.decode().splitlines():
            m = json.loads(line)
            out.append((m["partition"], m["offset"], m["payload"].encode()))
    return out


@pytest.mark.parametrize("client", client_params(["confluent", "kafka-python", "aiokafka"]))
def test_a_group_commits_into_kq_offsets_and_resumes_where_it_left_off(client, server, run_kq):
    run_kq("topic", "create", "g", "--partitions", "3")
    produce("confluent", server.bootstrap, "g", [{"value": f"a{i}".encode(), "partition": i % 3} for i in range(30)])
    first = _group_read(client, server.bootstrap, "g", "billing", 30)
    assert sorted(v for _, _, v in first) == sorted(f"a{i}".encode() for i in range(30))
    assert _offsets(run_kq, "g", "billing") == {0: 10, 1: 10, 2: 10}
    produce("confluent", server.bootstrap, "g", [{"value": f"b{i}".encode(), "partition": i % 3} for i in range(6)])
    again = _group_read(client, server.bootstrap, "g", "billing", 6)
    assert sorted(v for _, _, v in again) == sorted(f"b{i}".encode() for i in range(6))
    # ... and `kq consume -g` takes over exactly there.
    out = run_kq("consume", "g", "-g", "billing")
    assert out.stdout == b""
    run_kq("produce", "g", "-p", "1", input="c0\n")
    assert run_kq("consume", "g", "-g", "billing").stdout == b"c0\n"
    assert _offsets(run_kq, "g", "billing")[1] == 13


@needs_kcat
def test_kcat_balanced_consumer_group_reads_and_commits(server, run_kq):
    run_kq("topic", "create", "kc", "--partitions", "2")
    produce("confluent", server.bootstrap, "kc", [{"value": f"m{i}".encode(), "partition": i % 2} for i in range(10)])
    res = subprocess.run(
        [
            KCAT,
            "-b",
            server.bootstrap,
            "-G",
            "kgroup",
            "kc",
            "-e",
            "-J",
            "-X",
            "auto.offset.reset=earliest",
            "-X",
            "auto.commit.interval.ms=100",
        ],
        capture_output=True,
        timeout=60,
    )
    got = sorted(json.loads(line)["payload"] for line in res.stdout.decode().splitlines())
    assert got == sorted(f"m{i}" for i in range(10)), res.stderr.decode()
    assert _offsets(run_kq, "kc", "kgroup") == {0: 5, 1: 5}


def test_kq_group_offsets_are_where_a_kafka_member_starts(server, run_kq):
    run_kq("topic", "create", "rev", "--partitions", "2")
    run_kq("produce", "rev", "-p", "0", input="".join(f"x{i}\n" for i in range(5)))
    run_kq("produce", "rev", "-p", "1", input="".join(f"y{i}\n" for i in range(5)))
    assert run_kq("consume", "rev", "-g", "shared", "-n", "6").returncode == 0
    before = _offsets(run_kq, "rev", "shared")
    assert sum(before.values()) == 6
    rest = _group_read("confluent", server.bootstrap, "rev", "shared", 4)
    assert sorted(o for p, o, _ in rest if p == 0) == list(range(before.get(0, 0), 5))
    assert sorted(o for p, o, _ in rest if p == 1) == list(range(before.get(1, 0), 5))


MEMBER = textwrap.dedent("""
    import sys, time, json
    from confluent_kafka import Consumer
    bootstrap, topic, group, assignor = sys.argv[1:5]
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                  "session.timeout.ms": 2000, "heartbeat.interval.ms": 200,
                  "partition.assignment.strategy": assignor, "enable.auto.commit": True,
                  "auto.commit.interval.ms": 100})
    def show(consumer, partitions):
        print(json.dumps({"assigned": sorted(p.partition for p in consumer.assignment())}), flush=True)
    c.subscribe([topic], on_assign=show, on_revoke=lambda c, p: None)
    while True:
        for m in c.consume(100, timeout=0.1):
            if m.error() is None:
                print(json.dumps({"p": m.partition(), "o": m.offset()}), flush=True)
        show(c, None)
""")


class _Member:
    """A confluent-kafka group member in its own process, printing its assignment."""

    def __init__(self, bootstrap, topic, group, assignor="range"):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", MEMBER, bootstrap, topic, group, assignor],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.assigned: list[int] = []
        self.records: list[tuple[int, int]] = []
        import threading

        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            obj = json.loads(line)
            if "assigned" in obj:
                self.assigned = obj["assigned"]
            else:
                self.records.append((obj["p"], obj["o"]))

    def kill(self):
        self.proc.kill()
        self.proc.wait()


@pytest.mark.parametrize("assignor", ["range", "roundrobin", "cooperative-sticky"])
def test_members_rebalance_when_one_joins_and_when_one_dies(server, run_kq, assignor):
    run_kq("topic", "create", "rb", "--partitions", "4")
    a = _Member(server.bootstrap, "rb", "team", assignor)
    b = None
    try:
        wait_for(lambda: a.assigned == [0, 1, 2, 3], timeout=30, message="the first member to get every partition")
        b = _Member(server.bootstrap, "rb", "team", assignor)
        wait_for(
            lambda: len(a.assigned) == 2 and len(b.assigned) == 2 and not set(a.assigned) & set(b.assigned),
            timeout=30,
            message="two members to split four partitions",
        )
        b.kill()  # no LeaveGroup: the session timeout must notice
        wait_for(lambda: a.assigned == [0, 1, 2, 3], timeout=30, message="the survivor to take every partition")
    finally:
        a.kill()
        if b is not None:
            b.kill()


def test_a_partition_is_never_read_by_a_kafka_member_and_a_kq_member_at_once(server, run_kq, spawn_kq):
    run_kq("topic", "create", "ex", "--partitions", "2")
    kq_member = spawn_kq("consume", "ex", "-g", "mixed", "-f", "-F", "%p %o\n")
    kafka_member = None
    try:
        wait_for(
            lambda: (
                run_kq("group", "describe", "mixed", "--json").returncode == 0
                and "ex" in run_kq("group", "describe", "mixed", "--json").stdout.decode()
            ),
            timeout=20,
            message="the kq member to join",
        )
        kafka_member = _Member(server.bootstrap, "ex", "mixed")
        # Two live kq members (the kq process and the server): one partition each.
        wait_for(lambda: len(kafka_member.assigned) == 1, timeout=30, message="the Kafka member to get one partition")
        kafka_part = kafka_member.assigned[0]
        run_kq("produce", "ex", "-p", "0", input="".join(f"a{i}\n" for i in range(20)))
        run_kq("produce", "ex", "-p", "1", input="".join(f"b{i}\n" for i in range(20)))
        wait_for(lambda: len(kafka_member.records) >= 20, timeout=30, message="the Kafka member to read its partition")
        assert {p for p, _ in kafka_member.records} == {kafka_part}
        # The kq member goes away: its partition moves to the Kafka member.
        kq_member.send_signal(signal.SIGINT)
        kq_out, _ = kq_member.communicate(timeout=20)
        kq_parts = {int(line.split()[0]) for line in kq_out.decode().splitlines()}
        assert kq_parts == {1 - kafka_part}, "the kq member read the Kafka member's partition"
        wait_for(
            lambda: kafka_member.assigned == [0, 1], timeout=30, message="the Kafka member to take both partitions"
        )
    finally:
        if kafka_member is not None:
            kafka_member.kill()


def test_a_kq_member_waits_for_partitions_a_kafka_member_holds(server, run_kq, spawn_kq):
    run_kq("topic", "create", "ex2", "--partitions", "2")
    kafka_member = _Member(server.bootstrap, "ex2", "mixed2")
    try:
        wait_for(lambda: kafka_member.assigned == [0, 1], timeout=30, message="the Kafka member to get both partitions")
        owners = json.loads(run_kq("group", "describe", "mixed2", "--json").stdout)
        kq_member = spawn_kq("consume", "ex2", "-g", "mixed2", "-f", "-F", "%p %o\n")
        wait_for(
            lambda: len(kafka_member.assigned) == 1,
            timeout=30,
            message="the Kafka member to give a partition up to the kq member",
        )
        run_kq("produce", "ex2", "-p", "0", input="a\n")
        run_kq("produce", "ex2", "-p", "1", input="b\n")
        wait_for(lambda: len(kafka_member.records) >= 1, timeout=30, message="the Kafka member to read")
        kq_member.send_signal(signal.SIGINT)
        kq_out, _ = kq_member.communicate(timeout=20)
        kq_parts = {int(line.split()[0]) for line in kq_out.decode().splitlines()}
        assert kq_parts | {p for p, _ in kafka_member.records} == {0, 1}
        assert not kq_parts & {p for p, _ in kafka_member.records}
        assert owners  # the server showed up as a member of kq's group
    finally:
        kafka_member.kill()


def test_admin_lists_describes_and_deletes_groups(server, run_kq):
    from confluent_kafka.admin import AdminClient

    run_kq("topic", "create", "adm")
    produce("confluent", server.bootstrap, "adm", [{"value": b"x", "partition": 0}])
    _group_read("confluent", server.bootstrap, "adm", "g1", 1)
    run_kq("consume", "adm", "-g", "g2")
    admin = AdminClient({"bootstrap.servers": server.bootstrap})
    listed = admin.list_consumer_groups().result(30)
    assert {g.group_id for g in listed.valid} >= {"g1", "g2"}
    desc = admin.describe_consumer_groups(["g1"])["g1"].result(30)
    assert desc.group_id == "g1" and not desc.members
    offsets = admin.list_consumer_group_offsets([__import__("confluent_kafka").ConsumerGroupTopicPartitions("g1")])[
        "g1"
    ].result(30)
    assert [(tp.topic, tp.partition, tp.offset) for tp in offsets.topic_partitions] == [("adm", 0, 1)]
    for fut in admin.delete_consumer_groups(["g1"]).values():
        fut.result(30)
    assert "g1" not in run_kq("group", "list").stdout.decode()


def test_kafka_python_admin_lists_describes_and_deletes_groups(server, run_kq):
    from kafka.admin import KafkaAdminClient

    run_kq("topic", "create", "adm2")
    run_kq("produce", "adm2", input="x\n")
    run_kq("consume", "adm2", "-g", "kg")
    admin = KafkaAdminClient(bootstrap_servers=server.bootstrap)
    try:
        assert [(g["group_id"], g["group_state"]) for g in admin.list_groups()] == [("kg", "Empty")]
        offsets = admin.list_group_offsets("kg")["kg"]
        assert {(tp.topic, tp.partition): m.offset for tp, m in offsets.items()} == {("adm2", 0): 1}
        described = admin.describe_groups(["kg"])["kg"]
        assert (described["group_state"], described["members"]) == ("Empty", [])
        admin.delete_groups(["kg"])
    finally:
        admin.close()
    assert "kg" not in run_kq("group", "list").stdout.decode()


def test_a_group_resumes_at_its_commits_after_the_server_is_killed_and_restarted(data_dir, run_kq):
    run_kq("topic", "create", "rs", "--partitions", "2")
    first = KqServer(data_dir)
    try:
        produce("confluent", first.bootstrap, "rs", [{"value": f"a{i}".encode(), "partition": i % 2} for i in range(8)])
        assert len(_group_read("confluent", first.bootstrap, "rs", "survivor", 8)) == 8
    finally:
        first.proc.send_signal(signal.SIGKILL)
        first.kill()
    second = KqServer(data_dir)
    try:
        produce("confluent", second.bootstrap, "rs", [{"value": b"after", "partition": 1}])
        again = _group_read("kafka-python", second.bootstrap, "rs", "survivor", 1)
        assert [(p, o, v) for p, o, v in again] == [(1, 4, b"after")]
    finally:
        second.kill()
