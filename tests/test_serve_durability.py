"""kq serve: long-poll fetch, topic administration, durability under kill -9, and a fuzzed request decoder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time

import pytest
from serve_support import KqServer, connect, produce, read_frame

pytest.importorskip("confluent_kafka")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from kq.serve import wire  # noqa: E402


@pytest.fixture
def server(data_dir):
    s = KqServer(data_dir)
    yield s
    s.kill()


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_waiting_consumer_gets_a_new_record_within_milliseconds_and_idling_costs_nothing(server, run_kq):
    from confluent_kafka import Consumer, Producer, TopicPartition

    run_kq("topic", "create", "lp")
    c = Consumer(
        {"bootstrap.servers": server.bootstrap, "group.id": "x", "fetch.wait.max.ms": 500, "fetch.min.bytes": 1}
    )
    c.assign([TopicPartition("lp", 0, 0)])
    p = Producer({"bootstrap.servers": server.bootstrap, "linger.ms": 0})
    try:
        assert c.poll(1.0) is None  # connected, nothing to read
        idle_from = _cpu_seconds(server.proc.pid)
        time.sleep(2.0)  # measuring idle cost: the consumer long-polls meanwhile
        idle_cpu = _cpu_seconds(server.proc.pid) - idle_from
        assert idle_cpu < 0.1, f"an idle waiting consumer cost the server {idle_cpu:.2f} s of CPU in 2 s"
        latencies = []
        for i in range(20):
            sent = time.time()
            p.produce("lp", b"%d" % i, partition=0)
            p.flush(5)
            m = c.poll(5)
            assert m is not None and m.value() == b"%d" % i
            latencies.append(time.time() - sent)
        latencies.sort()
        assert latencies[10] < 0.05, f"median produce-to-consume latency {latencies[10] * 1000:.1f} ms"
    finally:
        c.close()


def test_a_record_from_kq_produce_wakes_a_waiting_consumer(server, run_kq):
    from confluent_kafka import Consumer, TopicPartition

    run_kq("topic", "create", "ext")
    c = Consumer({"bootstrap.servers": server.bootstrap, "group.id": "x", "fetch.wait.max.ms": 5000})
    c.assign([TopicPartition("ext", 0, 0)])
    try:
        assert c.poll(0.5) is None
        run_kq("produce", "ext", input="from the cli\n")
        m = c.poll(10)
        assert m is not None and m.value() == b"from the cli"
    finally:
        c.close()


def test_topics_are_created_listed_described_and_deleted_through_the_admin_api(server, run_kq):
    from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

    admin = AdminClient({"bootstrap.servers": server.bootstrap})
    futures = admin.create_topics(
        [NewTopic("made", 3, 1, config={"retention.ms": "3600000", "cleanup.policy": "compact"})]
    )
    futures["made"].result(30)
    topic = json.loads(run_kq("topic", "describe", "made", "--json").stdout)
    assert len(topic["partitions"]) == 3
    assert (topic["config"]["retention_ms"], topic["config"]["cleanup"]) == (3_600_000, "compact")
    assert "made" in admin.list_topics(timeout=30).topics
    with pytest.raises(Exception, match="TOPIC_ALREADY_EXISTS|already exists"):
        admin.create_topics([NewTopic("made", 1, 1)])["made"].result(30)
    with pytest.raises(Exception, match="REPLICATION|replication"):
        admin.create_topics([NewTopic("copies", 1, 3)])["copies"].result(30)
    # One topic named twice: an answer the client reads (Kafka's INVALID_REQUEST), and nothing created.
    with pytest.raises(Exception, match="INVALID_REQUEST|more than once"):
        admin.create_topics([NewTopic("twice", 1, 1), NewTopic("twice", 1, 1)])["twice"].result(30)
    assert run_kq("topic", "describe", "twice").returncode == 1
    res = ConfigResource("topic", "made")
    configs = admin.describe_configs([res])[res].result(30)
    assert configs["retention.ms"].value == "3600000"
    assert configs["cleanup.policy"].value == "compact"
    assert configs["retention.bytes"].value == "-1"
    admin.delete_topics(["made"])["made"].result(30)
    assert run_kq("topic", "describe", "made").returncode != 0
    with pytest.raises(Exception, match="UNKNOWN_TOPIC|does not exist|Unknown"):
        admin.delete_topics(["made"])["made"].result(30)


def test_kafka_python_admin_creates_and_deletes_topics(server, run_kq):
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=server.bootstrap)
    try:
        admin.create_topics([NewTopic("kp", 2, 1)])
        assert "kp" in admin.list_topics()
        admin.delete_topics(["kp"])
    finally:
        admin.close()
    assert b"kp" not in run_kq("topic", "list").stdout


PRODUCER = textwrap.dedent("""
    import sys
    from confluent_kafka import Producer
    bootstrap, topic, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 2, "enable.idempotence": True,
                  "message.timeout.ms": 4000})
    def acked(err, msg):
        if err is None:
            print(msg.value().decode(), flush=True)
    for i in range(start, start + 10**7):
        while True:
            try:
                p.produce(topic, b"%d" % i, partition=0, on_delivery=acked)
                break
            except BufferError:
                p.poll(0.01)
        p.poll(0)
""")


def test_kill_9_during_acks_all_produce_loses_nothing_acknowledged(data_dir, run_kq):
    run_kq("topic", "create", "dur")
    acked: set[int] = set()
    start = 0
    for _ in range(3):
        server = KqServer(data_dir)
        producer = subprocess.Popen(
            [sys.executable, "-c", PRODUCER, server.bootstrap, "dur", str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            seen = []
            while len(seen) < 2000:  # acknowledged records are flowing
                line = producer.stdout.readline()
                assert line, "the producer stopped"
                seen.append(int(line))
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait()
            producer.kill()
            out, _ = producer.communicate()
            seen += [int(x) for x in out.split()]
        finally:
            server.kill()
            if producer.poll() is None:
                producer.kill()
        acked.update(seen)
        start = max(seen) + 1
    stored = {int(v) for v in run_kq("consume", "dur").stdout.split()}
    lost = acked - stored
    assert not lost, f"{len(lost)} acknowledged records are gone, e.g. {sorted(lost)[:5]}"
    # Whether the last kill tore an append depends on timing: either way no error, at most a torn
    # tail named as crash debris, and nothing at all once the next writer has recovered the partition.
    r = run_kq("verify", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    for row in json.loads(r.stdout):
        assert row["severity"] == "warning" and "crash debris" in row["problem"], row
    assert run_kq("-q", "produce", "dur", input="after\n").returncode == 0
    r = run_kq("verify", "--json")
    assert (r.returncode, json.loads(r.stdout)) == (0, []), r.stderr


def test_sigterm_during_produce_exits_0_with_every_acknowledged_record_stored(data_dir, run_kq):
    run_kq("topic", "create", "term")
    server = KqServer(data_dir)
    producer = subprocess.Popen(
        [sys.executable, "-c", PRODUCER, server.bootstrap, "term", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        seen = [int(producer.stdout.readline()) for _ in range(1000)]
        assert server.stop(signal.SIGTERM) == 0
        producer.kill()
        out, _ = producer.communicate()
        seen += [int(x) for x in out.split()]
    finally:
        server.kill()
        if producer.poll() is None:
            producer.kill()
    stored = {int(v) for v in run_kq("consume", "term").stdout.split()}
    assert set(seen) <= stored


# ---------------------------------------------------------------- fuzzing the request decoder


def _valid_frames() -> list[bytes]:
    from kafka.protocol.consumer import FetchRequest
    from kafka.protocol.metadata import ApiVersionsRequest, MetadataRequest
    from kafka.protocol.producer import ProduceRequest

    frames = []
    for req in (
        ApiVersionsRequest(version=3, client_software_name="f", client_software_version="1"),
        MetadataRequest(
            version=9, topics=[MetadataRequest.MetadataRequestTopic(name="t")], allow_auto_topic_creation=False
        ),
        ProduceRequest(
            version=9,
            transactional_id=None,
            acks=1,
            timeout_ms=100,
            topic_data=[
                ProduceRequest.TopicProduceData(
                    name="t",
                    partition_data=[ProduceRequest.TopicProduceData.PartitionProduceData(index=0, records=b"\0" * 70)],
                )
            ],
        ),
        FetchRequest(
            version=12,
            replica_id=-1,
            max_wait_ms=0,
            min_bytes=1,
            max_bytes=1000,
            isolation_level=0,
            session_id=0,
            session_epoch=-1,
            topics=[],
            forgotten_topics_data=[],
            rack_id="",
        ),
    ):
        req.with_header(correlation_id=1, client_id="fuzz")
        frames.append(bytes(req.encode(header=True)))
    return frames


VALID = _valid_frames()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
    st.integers(0, 400),
)
def test_the_request_decoder_rejects_or_decodes_mutated_frames(frame, flips, cut):
    data = bytearray(frame)
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    data = bytes(data[: max(cut, 8)] if cut < len(data) else data)
    try:
        request = wire.decode_request(data)
    except wire.BadRequest:
        return
    assert request.api_key in wire.APIS


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_the_request_decoder_rejects_or_decodes_random_bytes(data):
    try:
        wire.decode_request(data)
    except wire.BadRequest:
        pass


def test_a_running_server_survives_a_stream_of_mutated_requests(server):
    import random

    rng = random.Random(1234)
    for i in range(300):
        frame = bytearray(rng.choice(VALID))
        for _ in range(rng.randint(1, 4)):
            frame[rng.randrange(len(frame))] = rng.randrange(256)
        with connect(server.port, timeout=5) as sock:
            sock.sendall(struct.pack(">i", len(frame)) + bytes(frame))
            sock.settimeout(2)
            try:
                read_frame(sock)
            except OSError:
                pass
    produce("confluent", server.bootstrap, "after-fuzz", [{"value": b"still here"}])
    assert server.proc.poll() is None
    assert "Traceback" not in "".join(server.stderr.seen)


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed (Debian: apt-get install strace)")
@pytest.mark.parametrize("sync", ["no", "kq serve --sync", "kq topic create --sync"])
def test_sync_fdatasyncs_every_produced_batch_before_acknowledging_it(data_dir, run_kq, tmp_path, sync):
    run_kq("topic", "create", "synced", *(["--sync"] if sync == "kq topic create --sync" else []))
    trace = tmp_path / "trace"
    server = KqServer(
        data_dir,
        *(["--sync"] if sync == "kq serve --sync" else []),
        wrapper=["strace", "-f", "-qq", "-e", "trace=fdatasync", "-o", str(trace)],
    )
    # kq serve itself is strace's child: it is the one to stop (strace ends with it).
    child = int(open(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read().split()[0])
    try:
        for i in range(5):  # five requests, one batch each
            produce("confluent", server.bootstrap, "synced", [{"value": b"v%d" % i, "partition": 0}], acks="all")
        os.kill(child, signal.SIGTERM)
        assert server.proc.wait(20) == 0
    finally:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.kill()
    calls = [line for line in trace.read_text().splitlines() if "fdatasync(" in line]
    assert len(calls) >= 5 if sync != "no" else not calls, calls
