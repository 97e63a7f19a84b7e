"""Kafka transactions (KIP-98) through kq serve, with the real clients.

A transactional producer's records reach ``read_committed`` readers (Kafka
consumers, and `kq consume`) only once committed, never when aborted; offsets
sent with a transaction are committed with it; a second producer with the
same transactional id fences the first; a transaction open past its timeout
is aborted.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import wait_for
from serve_support import KqServer, roundtrip

ck = pytest.importorskip("confluent_kafka")
from kafka.protocol.admin import (  # noqa: E402
    DescribeTransactionsRequest,
    DescribeTransactionsResponse,
    ListTransactionsRequest,
    ListTransactionsResponse,
)
from kafka.protocol.consumer import (  # noqa: E402
    FetchRequest,
    FetchResponse,
    ListOffsetsRequest,
    ListOffsetsResponse,
    OffsetFetchRequest,
    OffsetFetchResponse,
)
from kafka.protocol.producer import (  # noqa: E402
    EndTxnRequest,
    EndTxnResponse,
    InitProducerIdRequest,
    InitProducerIdResponse,
)
from kafka.record import MemoryRecords  # noqa: E402

PRODUCER_FENCED, INVALID_TRANSACTION_TIMEOUT, TRANSACTIONAL_ID_NOT_FOUND, UNSTABLE_OFFSET_COMMIT = 90, 50, 105, 88


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One server for the module (each test uses its own topics and transactional ids)."""
    data = str(tmp_path_factory.mktemp("txn") / "data")
    subprocess.run([sys.executable, "-m", "kq", "--data-dir", data, "init"], capture_output=True)
    server = KqServer(data)
    yield server
    server.kill()


def kq(server, *args, input: bytes | None = None, timeout: float = 60):
    return subprocess.run(
        [sys.executable, "-m", "kq", "--data-dir", server.data_dir, *args],
        input=input,
        capture_output=True,
        timeout=timeout,
    )


def create(server, topic: str, partitions: int = 1) -> None:
    r = kq(server, "topic", "create", topic, "--partitions", str(partitions))
    assert r.returncode == 0, r.stderr


def producer(server, tid: str, **extra):
    p = ck.Producer({"bootstrap.servers": server.bootstrap, "transactional.id": tid, "linger.ms": 5, **extra})
    p.init_transactions(20)
    return p


def consume_all(server, topics: list[str], isolation: str, expect: int, group: str | None = None) -> list[tuple]:
    """(topic, partition, value) of every record a consumer reads from the start, polled until ``expect`` came."""
    c = ck.Consumer(
        {
            "bootstrap.servers": server.bootstrap,
            "group.id": group or f"reader-{isolation}-{'-'.join(topics)}",
            "isolation.level": isolation,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    got: list[tuple] = []
    try:
        c.subscribe(topics)

        def enough():
            got.extend((m.topic(), m.partition(), m.value()) for m in c.consume(1000, 0.2) if not m.error())
            return len(got) >= expect

        wait_for(enough, timeout=20, message=f"{expect} records ({isolation})")
    finally:
        c.close()
    return got


def fetch(server, topic: str, isolation: int, offset: int = 0, partition: int = 0):
    """One Fetch of a partition at an isolation level: (partition data, [(offset, value, producer id, control)])."""
    Topic = FetchRequest.FetchTopic
    request = FetchRequest(
        version=11,
        replica_id=-1,
        max_wait_ms=0,
        min_bytes=1,
        max_bytes=10_000_000,
        isolation_level=isolation,
        session_id=0,
        session_epoch=-1,
        topics=[
            Topic(
                topic=topic,
                partitions=[
                    Topic.FetchPartition(
                        partition=partition,
                        current_leader_epoch=-1,
                        fetch_offset=offset,
                        log_start_offset=-1,
                        partition_max_bytes=10_000_000,
                    )
                ],
            )
        ],
        forgotten_topics_data=[],
        rack_id="",
    )
    [data] = roundtrip(server.port, request, FetchResponse).responses[0].partitions
    assert data.error_code == 0
    records = MemoryRecords(bytes(data.records or b""))
    out = []
    while records.has_next():
        batch = records.next_batch()
        for r in batch:
            out.append((r.offset, r.value, batch.producer_id, batch.is_control_batch))
    return data, out


def latest(server, topic: str, isolation: int) -> int:
    P = ListOffsetsRequest.ListOffsetsTopic.ListOffsetsPartition
    request = ListOffsetsRequest(
        version=7,
        replica_id=-1,
        isolation_level=isolation,
        topics=[
            ListOffsetsRequest.ListOffsetsTopic(
                name=topic, partitions=[P(partition_index=0, current_leader_epoch=-1, timestamp=-1)]
            )
        ],
    )
    [p] = roundtrip(server.port, request, ListOffsetsResponse).topics[0].partitions
    assert p.error_code == 0
    return p.offset


def describe(server, tid: str):
    r = roundtrip(
        server.port, DescribeTransactionsRequest(version=0, transactional_ids=[tid]), DescribeTransactionsResponse
    )
    return r.transaction_states[0]


def test_committed_transactions_are_read_once_and_aborted_ones_never_with_their_offsets(served):
    """Two topics, three partitions, offsets sent with the transaction: all of a commit, nothing of an abort."""
    create(served, "tx-a", 2)
    create(served, "tx-b")
    create(served, "tx-in")
    c = ck.Consumer({"bootstrap.servers": served.bootstrap, "group.id": "tx-pipeline"})
    p = producer(served, "tx-pipeline-1")
    for round, outcome in enumerate(["commit", "abort", "commit"]):
        p.begin_transaction()
        for i in range(4):
            p.produce("tx-a", f"{outcome}-{round}-{i}".encode(), partition=i % 2)
        p.produce("tx-b", f"{outcome}-{round}-b".encode())
        p.send_offsets_to_transaction(
            [ck.TopicPartition("tx-in", 0, 10 * (round + 1))], c.consumer_group_metadata(), 20
        )
        if outcome == "commit":
            p.commit_transaction(20)
        else:
            p.flush(20)
            p.abort_transaction(20)

    committed = consume_all(served, ["tx-a", "tx-b"], "read_committed", 10)
    assert sorted(v for _, _, v in committed) == sorted(
        [f"commit-{r}-{i}".encode() for r in (0, 2) for i in range(4)] + [b"commit-0-b", b"commit-2-b"]
    )
    assert {(t, part) for t, part, _ in committed} == {("tx-a", 0), ("tx-a", 1), ("tx-b", 0)}
    # The aborted records are in the log all the same: read_uncommitted sees them.
    everything = consume_all(served, ["tx-a", "tx-b"], "read_uncommitted", 15)
    assert len([v for _, _, v in everything if v.startswith(b"abort-")]) == 5
    # The group's offset is the last committed transaction's, not the aborted one's.
    [tp] = c.committed([ck.TopicPartition("tx-in", 0)], 10)
    assert tp.offset == 30
    c.close()
    # `kq consume` (read_committed by default) shows the same records as the Kafka consumer.
    r = kq(served, "consume", "tx-a", "--json")
    assert r.returncode == 0, r.stderr
    values = [json.loads(line)["value"] for line in r.stdout.decode().splitlines()]
    assert sorted(values) == sorted(f"commit-{r}-{i}" for r in (0, 2) for i in range(4))


def test_an_open_transaction_is_withheld_from_read_committed_readers_until_it_commits(served):
    create(served, "tx-open")
    p = producer(served, "tx-open-1")
    p.begin_transaction()
    for i in range(3):
        p.produce("tx-open", f"pending-{i}".encode())
    p.flush(20)
    # In the log: a read_uncommitted fetch returns the records ...
    data, rows = fetch(served, "tx-open", isolation=0)
    assert [v for _, v, _, _ in rows] == [b"pending-0", b"pending-1", b"pending-2"]
    assert data.last_stable_offset == 0 and data.high_watermark == 3
    # ... but read_committed readers stop at the last stable offset.
    data, rows = fetch(served, "tx-open", isolation=1)
    assert rows == [] and data.last_stable_offset == 0
    assert latest(served, "tx-open", isolation=1) == 0
    assert latest(served, "tx-open", isolation=0) == 3
    r = kq(served, "consume", "tx-open")
    assert r.returncode == 0 and r.stdout == b"", (r.stdout, r.stderr)
    assert describe(served, "tx-open-1").transaction_state == "Ongoing"

    p.commit_transaction(20)
    data, rows = fetch(served, "tx-open", isolation=1)
    values = [v for _, v, _, control in rows if not control]
    assert values == [b"pending-0", b"pending-1", b"pending-2"]
    assert any(control for *_, control in rows), "the commit marker is sent, for the client to step over"
    assert data.last_stable_offset == data.high_watermark == 4  # three records and a marker
    assert latest(served, "tx-open", isolation=1) == 4
    r = kq(served, "consume", "tx-open")
    assert r.stdout.splitlines() == [b"pending-0", b"pending-1", b"pending-2"]
    assert describe(served, "tx-open-1").transaction_state == "CompleteCommit"


def test_an_aborted_transaction_is_listed_for_read_committed_fetches(served):
    create(served, "tx-abort")
    p = producer(served, "tx-abort-1")
    p.begin_transaction()
    p.produce("tx-abort", b"gone")
    p.flush(20)
    p.abort_transaction(20)
    p.begin_transaction()
    p.produce("tx-abort", b"kept")
    p.commit_transaction(20)
    data, rows = fetch(served, "tx-abort", isolation=1)
    pid = rows[0][2]
    assert [(a.producer_id, a.first_offset) for a in data.aborted_transactions] == [(pid, 0)]
    assert consume_all(served, ["tx-abort"], "read_committed", 1) == [("tx-abort", 0, b"kept")]
    assert kq(served, "consume", "tx-abort").stdout == b"kept\n"


def test_offsets_sent_with_an_open_transaction_are_unstable_for_consumers_that_ask_for_stable_ones(served):
    """KIP-447: OffsetFetch with require_stable is told to retry while a transaction holds the group's offset."""
    create(served, "tx-stable")
    c = ck.Consumer({"bootstrap.servers": served.bootstrap, "group.id": "tx-stable-group"})
    p = producer(served, "tx-stable-1")
    p.begin_transaction()
    p.send_offsets_to_transaction([ck.TopicPartition("tx-stable", 0, 7)], c.consumer_group_metadata(), 20)

    def offset_fetch(require_stable: bool):
        request = OffsetFetchRequest(
            version=7,
            group_id="tx-stable-group",
            topics=[OffsetFetchRequest.OffsetFetchRequestTopic(name="tx-stable", partition_indexes=[0])],
            require_stable=require_stable,
        )
        [part] = roundtrip(served.port, request, OffsetFetchResponse).topics[0].partitions
        return part.error_code, part.committed_offset

    assert offset_fetch(True) == (UNSTABLE_OFFSET_COMMIT, -1)
    assert offset_fetch(False) == (0, -1)  # nothing committed yet
    p.commit_transaction(20)
    assert offset_fetch(True) == (0, 7)
    c.close()


def test_a_second_producer_with_the_same_transactional_id_fences_the_first(served):
    create(served, "tx-zombie")
    zombie = producer(served, "tx-zombie-1")
    zombie.begin_transaction()
    zombie.produce("tx-zombie", b"from the zombie")
    zombie.flush(20)

    successor = producer(served, "tx-zombie-1")  # aborts the zombie's open transaction
    with pytest.raises(ck.KafkaException) as raised:
        zombie.produce("tx-zombie", b"zombie again")
        zombie.commit_transaction(20)
    error = raised.value.args[0]
    assert error.fatal() or error.code() in (ck.KafkaError._FENCED, ck.KafkaError.PRODUCER_FENCED), error

    successor.begin_transaction()
    successor.produce("tx-zombie", b"from the successor")
    successor.commit_transaction(20)
    assert consume_all(served, ["tx-zombie"], "read_committed", 1) == [("tx-zombie", 0, b"from the successor")]


def test_a_new_producer_after_a_committed_transaction_gets_the_next_epoch_and_the_transaction_stays_once(served):
    """The server records a transaction's end with the id's next change; a new producer of the id is one."""
    create(served, "tx-next")
    first = producer(served, "tx-next-1")
    epoch = describe(served, "tx-next-1").producer_epoch
    first.begin_transaction()
    first.produce("tx-next", b"committed once")
    first.commit_transaction(20)
    second = producer(served, "tx-next-1")
    state = describe(served, "tx-next-1")
    assert (state.producer_epoch, state.transaction_state) == (epoch + 1, "Empty")
    second.begin_transaction()
    second.produce("tx-next", b"and the next")
    second.commit_transaction(20)
    assert describe(served, "tx-next-1").transaction_state == "CompleteCommit"
    assert sorted(v for _, _, v in consume_all(served, ["tx-next"], "read_committed", 2)) == [
        b"and the next",
        b"committed once",
    ]
    data, records = fetch(served, "tx-next", isolation=0)
    assert [control for *_, control in records].count(True) == 2  # one marker each, none written again


def test_init_producer_id_checks_the_timeout_and_the_epoch_it_is_given(served):
    def init(version=4, timeout=10_000, pid=-1, epoch=-1, tid="tx-raw-1"):
        return roundtrip(
            served.port,
            InitProducerIdRequest(
                version=version,
                transactional_id=tid,
                transaction_timeout_ms=timeout,
                producer_id=pid,
                producer_epoch=epoch,
            ),
            InitProducerIdResponse,
        )

    assert init(timeout=0).error_code == INVALID_TRANSACTION_TIMEOUT
    assert init(timeout=3_600_000).error_code == INVALID_TRANSACTION_TIMEOUT
    first = init()
    assert first.error_code == 0 and first.producer_epoch == 0
    second = init(pid=first.producer_id, epoch=first.producer_epoch)  # KIP-360: the holder bumps its own epoch
    assert (second.error_code, second.producer_id, second.producer_epoch) == (0, first.producer_id, 1)
    assert init(pid=first.producer_id, epoch=0).error_code == PRODUCER_FENCED  # no longer its epoch
    end = roundtrip(
        served.port,
        EndTxnRequest(
            version=3, transactional_id="tx-raw-1", producer_id=first.producer_id, producer_epoch=0, committed=True
        ),
        EndTxnResponse,
    )
    assert end.error_code == PRODUCER_FENCED
    assert describe(served, "tx-raw-unknown").error_code == TRANSACTIONAL_ID_NOT_FOUND
    listed = roundtrip(
        served.port,
        ListTransactionsRequest(
            version=1, state_filters=[], producer_id_filters=[first.producer_id], duration_filter=-1
        ),
        ListTransactionsResponse,
    )
    assert [(t.transactional_id, t.transaction_state) for t in listed.transaction_states] == [("tx-raw-1", "Empty")]


def test_a_transaction_open_past_its_timeout_is_aborted_and_its_producer_fenced(served):
    create(served, "tx-slow")
    p = producer(served, "tx-slow-1", **{"transaction.timeout.ms": 1000, "message.timeout.ms": 1000})
    p.begin_transaction()
    p.produce("tx-slow", b"too slow")
    p.flush(20)
    wait_for(lambda: describe(served, "tx-slow-1").transaction_state == "CompleteAbort", timeout=10)
    with pytest.raises(ck.KafkaException):
        p.commit_transaction(20)
    data, rows = fetch(served, "tx-slow", isolation=1)
    assert data.last_stable_offset == data.high_watermark == 2  # the record and the abort marker
    pid = rows[0][2]
    assert [(a.producer_id, a.first_offset) for a in data.aborted_transactions] == [(pid, 0)]
    assert kq(served, "consume", "tx-slow").stdout == b""


def test_a_kq_produce_transactional_input_reaches_kafka_read_committed_consumers_only_once_it_has_landed(served):
    create(served, "tx-cli")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kq", "--data-dir", served.data_dir, "produce", "tx-cli", "--transactional"],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"first\nsecond\n")
        proc.stdin.flush()
        # Written (a read_uncommitted fetch sees it) but not landed: read_committed sees nothing.
        wait_for(lambda: len(fetch(served, "tx-cli", isolation=0)[1]) == 2, message="the input in the log")
        data, rows = fetch(served, "tx-cli", isolation=1)
        assert rows == [] and data.last_stable_offset == 0
        assert latest(served, "tx-cli", isolation=1) == 0
        proc.stdin.write(b"third\n")
        proc.stdin.close()
        assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    got = consume_all(served, ["tx-cli"], "read_committed", 3)
    assert [v for _, _, v in got] == [b"first", b"second", b"third"]


# A transactional producer that commits transactions of TXN_SIZE records
# ("RUN-TXN-I"), writing each transaction's number to stdout once committed.
KILLED_PRODUCER = """
import sys
from confluent_kafka import Producer
bootstrap, topic, run, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
p = Producer({"bootstrap.servers": bootstrap, "transactional.id": "tx-kill", "linger.ms": 2,
              "transaction.timeout.ms": 5000, "message.timeout.ms": 5000, "socket.timeout.ms": 2000})
p.init_transactions(10)
for txn in range(10**6):
    p.begin_transaction()
    for i in range(size):
        p.produce(topic, f"{run}-{txn}-{i}".encode(), partition=i % 2)
    p.commit_transaction(10)
    print(txn, flush=True)
"""


def test_serve_killed_during_transactions_keeps_each_committed_one_whole_and_once(tmp_path):
    """kill -9 of kq serve at random moments: a read_committed reader sees whole committed transactions, once each."""
    import random
    import select
    import time

    data = str(tmp_path / "data")
    subprocess.run([sys.executable, "-m", "kq", "--data-dir", data, "topic", "create", "tx-kill", "--partitions", "2"])
    size = 50
    acknowledged: dict[str, int] = {}  # run -> how many transactions were acknowledged
    rng = random.Random(25)
    for run in ("r0", "r1", "r2", "r3"):
        server = KqServer(data)
        producer = subprocess.Popen(
            [sys.executable, "-c", KILLED_PRODUCER, server.bootstrap, "tx-kill", run, str(size)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert producer.stdout is not None
        readable, _, _ = select.select([producer.stdout], [], [], 30)
        first = producer.stdout.readline() if readable else ""  # one transaction through, then kill at random
        assert first.strip() == "0", f"the producer stopped before its first commit ({producer.wait()})"
        time.sleep(rng.uniform(0, 0.3))  # where the kill lands is the point: a random moment, not a wait
        server.kill()
        producer.kill()
        out, _ = producer.communicate()
        acknowledged[run] = 1 + len(out.split())
    server = KqServer(data)
    try:
        c = ck.Consumer(
            {
                "bootstrap.servers": server.bootstrap,
                "group.id": "tx-kill-check",
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                "enable.partition.eof": True,
            }
        )
        c.assign([ck.TopicPartition("tx-kill", p, 0) for p in (0, 1)])
        values: list[str] = []
        eof: set[int] = set()

        def done():
            for m in c.consume(1000, 0.2):
                if m.error():
                    if m.error().code() == ck.KafkaError._PARTITION_EOF:
                        eof.add(m.partition())
                else:
                    values.append(m.value().decode())
            return len(eof) == 2

        wait_for(done, timeout=30, message="both partitions read to their end")
        c.close()
    finally:
        server.kill()
    assert len(values) == len(set(values)), "a record was read twice"
    transactions: dict[tuple[str, int], int] = {}
    for v in values:
        run, txn, _ = v.split("-")
        transactions[(run, int(txn))] = transactions.get((run, int(txn)), 0) + 1
    assert all(n == size for n in transactions.values()), "a transaction is visible in part"
    for run, count in acknowledged.items():
        seen = sorted(t for r, t in transactions if r == run)
        # every acknowledged commit is there; past them at most the one whose commit was in flight
        assert seen[:count] == list(range(count)) and len(seen) <= count + 1, (run, count, seen)
