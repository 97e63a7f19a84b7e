"""The `kq serve` command and its server: start, stop, ApiVersions, Metadata, limits, hostile clients."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys

import pytest
from conftest import wait_for
from serve_support import KQ, KqServer, closed_by_server, connect, read_frame, roundtrip, send_request

pytest.importorskip("kafka.protocol.metadata")
from kafka.protocol.metadata import ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse  # noqa: E402

from kq.serve import wire  # noqa: E402


@pytest.fixture
def server(data_dir):
    s = KqServer(data_dir)
    yield s
    s.kill()


def _alive(server) -> bool:
    """The server still answers a new client."""
    r = roundtrip(server.port, ApiVersionsRequest(version=0), ApiVersionsResponse)
    return r.error_code == 0


# ---------------------------------------------------------------- the command


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ready_line_then_a_clean_exit_on_a_signal(data_dir, sig):
    s = KqServer(data_dir)
    try:
        assert s.stderr.seen[-1] == f"kq: serving {os.path.abspath(data_dir)} on 127.0.0.1:{s.port}\n"
        assert _alive(s)
        assert s.stop(sig) == 0
        assert "Traceback" not in s.stderr.rest()
    finally:
        s.kill()


def test_a_port_in_use_is_a_one_line_error(run_kq):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = run_kq("serve", "--listen", f"127.0.0.1:{port}", timeout=30)
    assert out.returncode == 1
    assert out.stderr.decode() == f"kq: error: cannot listen on 127.0.0.1:{port}: the address is already in use\n"


@pytest.mark.parametrize("bad", ["9092", "host:", "127.0.0.1:99999", ":9092"])
def test_a_malformed_listen_address_is_a_usage_error(run_kq, bad):
    out = run_kq("serve", "--listen", bad)
    assert out.returncode == 2
    assert "is not HOST:PORT" in out.stderr.decode()
    assert "Traceback" not in out.stderr.decode()


def test_listening_beyond_loopback_with_insecure_warns_that_anyone_gets_in(data_dir):
    """(Without --insecure or SASL users it is a usage error: tests/test_serve_auth.py.)"""
    proc = subprocess.Popen(
        KQ + ["--data-dir", data_dir, "serve", "--listen", "0.0.0.0:0", "--insecure"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    try:
        first = proc.stderr.readline().decode()
        rest = [proc.stderr.readline().decode() for _ in range(2)]
        assert "--insecure: anyone who reaches the port" in first and first.startswith("kq: warning:")
        assert rest[0].startswith("kq: who may connect: anyone") and rest[1].startswith("kq: serving ")
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0


def test_without_the_kafka_extra_the_error_names_the_install_command(run_kq, tmp_path):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "kafka.py").write_text("raise ImportError('hidden for the test')\n")
    out = run_kq("serve", env={"PYTHONPATH": str(hide)})
    assert out.returncode == 1
    assert out.stderr.decode() == (
        "kq: error: kq serve needs kafka-python 3 (the Kafka protocol libraries): pip install 'kq-log[kafka]' (from a checkout: pip install -e '.[kafka]')\n"
    )


def test_kq_and_its_other_commands_never_import_the_protocol_libraries():
    code = (
        "import sys, kq, kq.cli, kq.engine.datadir, kq.groups.store, kq.producer, kq.consumer, kq.serve;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('kafka', 'crc32c', 'snappy', 'lz4', 'zstandard', 'asyncio')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# ---------------------------------------------------------------- ApiVersions and Metadata


@pytest.mark.parametrize("version", range(0, 5))
def test_api_versions_advertises_exactly_the_ranges_served(server, version):
    kwargs = {"client_software_name": "kq-test", "client_software_version": "1"} if version >= 3 else {}
    r = roundtrip(server.port, ApiVersionsRequest(version=version, **kwargs), ApiVersionsResponse)
    assert r.error_code == 0
    assert {(k.api_key, k.min_version, k.max_version) for k in r.api_keys} == {
        (key, api.min_version, api.max_version) for key, api in wire.APIS.items()
    }
    # Nothing a client did not ask for: no features, no tagged fields.
    assert not r.supported_features and not r.finalized_features and r.unknown_tags is None


def test_an_unknown_api_versions_version_gets_a_v0_body_with_error_35_and_the_ranges(server):
    with connect(server.port) as sock:
        frame = struct.pack(">hhih", 18, 9, 42, 1) + b"x"
        sock.sendall(struct.pack(">i", len(frame)) + frame)
        body = read_frame(sock)
    (correlation_id, error) = struct.unpack_from(">ih", body)  # a v0 response header: no tagged fields
    assert (correlation_id, error) == (42, 35)
    r = ApiVersionsResponse.decode(body[4:], version=0)
    assert {k.api_key for k in r.api_keys} == set(wire.APIS)


def test_metadata_creates_a_topic_a_client_asks_for_unless_told_not_to(data_dir, run_kq):
    s = KqServer(data_dir)
    try:
        r = roundtrip(
            s.port,
            MetadataRequest(
                version=9, topics=[MetadataRequest.MetadataRequestTopic(name="auto")], allow_auto_topic_creation=True
            ),
            MetadataResponse,
        )
        assert [(t.name, t.error_code, len(t.partitions)) for t in r.topics] == [("auto", 0, 1)]
        assert [(b.host, b.port) for b in r.brokers] == [("127.0.0.1", s.port)]
    finally:
        s.kill()
    assert "auto" in run_kq("topic", "list", "--json").stdout.decode()
    s = KqServer(data_dir, "--no-auto-create")
    try:
        r = roundtrip(
            s.port,
            MetadataRequest(
                version=9, topics=[MetadataRequest.MetadataRequestTopic(name="nope")], allow_auto_topic_creation=True
            ),
            MetadataResponse,
        )
        assert [(t.name, t.error_code) for t in r.topics] == [("nope", 3)]
        r = roundtrip(
            s.port,
            MetadataRequest(
                version=9, topics=[MetadataRequest.MetadataRequestTopic(name="../x")], allow_auto_topic_creation=True
            ),
            MetadataResponse,
        )
        assert [(t.name, t.error_code) for t in r.topics] == [("../x", 17)]  # INVALID_TOPIC_EXCEPTION
    finally:
        s.kill()


def test_advertise_is_what_metadata_tells_clients(data_dir):
    s = KqServer(data_dir, "--advertise", "kq.example:19092")
    try:
        r = roundtrip(s.port, MetadataRequest(version=1, topics=[]), MetadataResponse)
        assert [(b.host, b.port) for b in r.brokers] == [("kq.example", 19092)]
    finally:
        s.kill()


# ---------------------------------------------------------------- hostile clients


def test_a_request_over_max_request_bytes_closes_only_that_connection(data_dir):
    s = KqServer(data_dir, "--max-request-bytes", "4096")
    try:
        with connect(s.port) as sock:
            sock.sendall(struct.pack(">i", 5000) + b"\0" * 100)
            assert closed_by_server(sock)
        assert _alive(s)
    finally:
        s.kill()


HOSTILE = {
    "garbage": b"\x17\x03\x03\x00\x20" + os.urandom(64),
    "a 2 GiB frame length": struct.pack(">i", 2**31 - 1) + b"\0" * 16,
    "a negative frame length": struct.pack(">i", -5),
    "an API that is not offered": struct.pack(">ihhih", 10, 57, 0, 1, 0),
    "a version that is not offered": struct.pack(">ihhih", 10, 1, 99, 1, 0),
    "Produce v2 (advertised for librdkafka, not served)": struct.pack(">ihhih", 10, 0, 2, 1, 0),
    "a body that does not decode": struct.pack(">ihhih", 12, 3, 9, 1, 0) + b"\xff\xff",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_bytes_close_the_connection_and_the_server_goes_on(server, name):
    with connect(server.port) as sock:
        sock.sendall(HOSTILE[name])
        assert closed_by_server(sock), f"{name}: the connection stayed open"
    assert _alive(server)
    assert server.proc.poll() is None


def test_clients_that_vanish_mid_request_or_mid_response_do_not_disturb_others(server, run_kq):
    run_kq("produce", "big", input="x" * 1000 + "\n" * 1 + ("y" * 1000 + "\n") * 5000)
    from kafka.protocol.consumer import FetchRequest

    for _ in range(20):
        with connect(server.port) as sock:  # half a frame, then gone
            sock.sendall(struct.pack(">i", 100) + b"\0" * 10)
        with connect(server.port) as sock:  # a fetch of megabytes, never read
            fetch = FetchRequest(
                version=4,
                replica_id=-1,
                max_wait_ms=0,
                min_bytes=1,
                max_bytes=50_000_000,
                isolation_level=0,
                topics=[
                    FetchRequest.FetchTopic(
                        topic="big",
                        partitions=[
                            FetchRequest.FetchTopic.FetchPartition(
                                partition=0, fetch_offset=0, partition_max_bytes=10_000_000
                            )
                        ],
                    )
                ],
            )
            send_request(sock, fetch)
    assert _alive(server)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_200_idle_connections_and_a_slow_reader_cost_bounded_memory(server, run_kq):
    from kafka.protocol.consumer import FetchRequest

    run_kq("produce", "big", input=("z" * 1000 + "\n") * 20000)
    idle = [connect(server.port) for _ in range(200)]
    slow = connect(server.port)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        fetch = FetchRequest(
            version=4,
            replica_id=-1,
            max_wait_ms=0,
            min_bytes=1,
            max_bytes=50_000_000,
            isolation_level=0,
            topics=[
                FetchRequest.FetchTopic(
                    topic="big",
                    partitions=[
                        FetchRequest.FetchTopic.FetchPartition(
                            partition=0, fetch_offset=0, partition_max_bytes=20_000_000
                        )
                    ],
                )
            ],
        )
        for i in range(100):  # 100 fetches of ~20 MB each, never read
            send_request(slow, fetch, correlation_id=i)
        assert _alive(server)
        rss = _rss_mb(server.proc.pid)
        assert rss < 400, f"the server holds {rss:.0f} MB for a reader that reads nothing"
    finally:
        slow.close()
        for s in idle:
            s.close()
    assert wait_for(lambda: _alive(server), message="the server to answer after the slow reader left")
