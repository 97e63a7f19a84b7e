"""Who gets into kq serve: the data directory's owner by default, SASL users, TLS.

Another local user is played by uid 65534 through ``setpriv`` (the tests run
as root, as CI does): kcat (/usr/bin, which any user can run) and ``python -m
kq -b`` from a copy of kq's dependencies that user can read.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import wait_for
from serve_support import (
    KCAT,
    KQ,
    KqServer,
    _Lines,
    closed_by_server,
    connect,
    free_port,
    needs_kcat,
    read_frame,
    send_request,
)
from test_faults import NOBODY, _other_user_site

pytestmark = [
    needs_kcat,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user (setpriv)"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)"),
]

AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
FAST = ["-X", "socket.timeout.ms=3000"]  # a refused kq -b gives up after 3 s instead of 10


def secret_dir(tmp_path) -> str:
    """A data directory like any kq makes (0700, here owned by root) holding topic 'secret'."""
    data = str(tmp_path / "data")
    subprocess.run(KQ + ["--data-dir", data, "topic", "create", "secret"], check=True, capture_output=True)
    subprocess.run(KQ + ["--data-dir", data, "produce", "secret"], input=b"one\ntwo\n", check=True)
    os.chmod(data, 0o700)
    return data


def records(data: str, topic: str = "secret") -> list[bytes]:
    out = subprocess.run(KQ + ["--data-dir", data, "consume", topic], capture_output=True, check=True)
    return out.stdout.splitlines()


def kcat(*args: str, nobody: bool, input: bytes | None = None) -> subprocess.CompletedProcess:
    assert KCAT is not None
    return subprocess.run(
        (AS_NOBODY if nobody else []) + [KCAT, *args],
        input=input,
        capture_output=True,
        timeout=60,
        cwd="/",
    )


@functools.cache
def _kafka_site() -> dict | str:
    """The env in which uid 65534 runs ``python -m kq -b`` (kq's dependencies plus the Kafka extra)."""
    site = _other_user_site()
    if isinstance(site, str):
        return site
    base, env = site
    target = os.path.join(base, "site")
    for name in ("confluent-kafka", "kafka-python", "crc32c"):
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            return f"{name} is not installed"
        for f in dist.files or []:
            src = str(f.locate())
            if str(f).startswith("..") or not os.path.isfile(src):
                continue
            dst = os.path.join(target, str(f))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(src, dst)
    for root, dirs, files in os.walk(base):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
    return env


def kq_b_as_nobody(bootstrap: str, *args: str, input: bytes = b"") -> subprocess.CompletedProcess:
    env = _kafka_site()
    if isinstance(env, str):
        pytest.skip(env)
    return subprocess.run(
        AS_NOBODY + [sys.executable, "-m", "kq", "-b", bootstrap, *FAST, *args],
        input=input,
        capture_output=True,
        env=env,
        cwd="/",
        timeout=60,
    )


def kq_b(bootstrap: str, *args: str, input: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(KQ + ["-b", bootstrap, *args], input=input, capture_output=True, timeout=60)


@pytest.fixture
def served(tmp_path):
    data = secret_dir(tmp_path)
    server = KqServer(data)
    yield data, server
    server.kill()


def test_another_local_user_is_refused_and_nothing_changes(served):
    """uid 65534 cannot list the 0700 directory; through kq serve it can neither list, read,
    write, create nor delete, and each client says it was refused."""
    data, server = served
    # The owner (root here) needs no setting: kq -b and kcat just work.
    assert kq_b(server.bootstrap, "produce", "secret", input=b"three\n").returncode == 0
    r = kq_b(server.bootstrap, "consume", "secret")
    assert r.returncode == 0 and r.stdout.splitlines() == [b"one", b"two", b"three"], r.stderr
    assert b"secret" in kcat("-b", server.bootstrap, "-L", nobody=False).stdout

    before = records(data)
    b = server.bootstrap
    refused_by_kcat = {
        "list": (["-b", b, "-L", "-m", "3"], None),
        "consume": (["-b", b, "-C", "-t", "secret", "-e", "-m", "3"], None),
        "produce": (["-b", b, "-P", "-t", "secret", "-X", "message.timeout.ms=3000"], b"evil\n"),
    }
    refused_by_kq = [
        (("topic", "list"), b""),
        (("consume", "secret"), b""),
        (("produce", "secret"), b"evil\n"),
        (("topic", "create", "intruder"), b""),
        (("topic", "delete", "secret"), b""),
    ]
    with ThreadPoolExecutor(8) as pool:  # each waits out its client's timeout: all at once
        by_kcat = {k: pool.submit(kcat, *a, nobody=True, input=i) for k, (a, i) in refused_by_kcat.items()}
        by_kq = {args: pool.submit(kq_b_as_nobody, b, *args, input=i) for args, i in refused_by_kq}
    for what, future in by_kcat.items():
        r = future.result()
        assert b"one" not in r.stdout and b"secret" not in r.stdout, what
        assert b"Cluster authorization failed" in r.stderr, (what, r.stderr)
    for args, future in by_kq.items():
        r = future.result()
        assert r.returncode == 1 and r.stdout == b"", (args, r.stderr)
        assert r.stderr.startswith(b"kq: error: ") and b"Traceback" not in r.stderr, r.stderr
        assert b"refused this client" in r.stderr and b"authorization failed" in r.stderr, r.stderr

    assert records(data) == before
    names = subprocess.run(KQ + ["--data-dir", data, "topic", "list"], capture_output=True).stdout.split()
    assert names == [b"secret"]
    server.stop()
    log = server.stderr.rest()
    assert f"uid {NOBODY}" in log and "refused" in log, log
    assert "who may connect" in "".join(server.stderr.seen)


def test_a_peer_on_ipv6_loopback_is_known_by_its_uid_too(tmp_path):
    data = secret_dir(tmp_path)
    server = KqServer(data, "--listen", "[::1]:0")
    bootstrap = f"[::1]:{server.port}"
    try:
        owner = kcat("-b", bootstrap, "-C", "-t", "secret", "-e", nobody=False)
        assert owner.returncode == 0 and owner.stdout.splitlines() == [b"one", b"two"], owner.stderr
        other = kcat("-b", bootstrap, "-C", "-t", "secret", "-e", "-m", "3", nobody=True)
        assert b"one" not in other.stdout and b"Cluster authorization failed" in other.stderr, other.stderr
    finally:
        server.kill()


def test_the_directory_mode_bits_decide_who_may_write_through_serve(tmp_path):
    """The rule is the file system's: a user whose group may only read the directory is refused,
    one whose group may write it gets in (as it could run kq on the directory itself)."""
    data = secret_dir(tmp_path)
    os.chown(data, 0, NOBODY)
    os.chmod(data, 0o750)
    server = KqServer(data)
    try:
        r = kcat("-b", server.bootstrap, "-C", "-t", "secret", "-e", "-m", "3", nobody=True)
        assert r.returncode != 0 and b"one" not in r.stdout, r.stderr
        os.chmod(data, 0o770)
        r = kcat("-b", server.bootstrap, "-C", "-t", "secret", "-e", nobody=True)
        assert r.returncode == 0 and r.stdout.splitlines() == [b"one", b"two"], r.stderr
    finally:
        server.kill()


def add_user(data: str, name: str, password: str) -> None:
    r = subprocess.run(
        KQ + ["--data-dir", data, "serve", "--add-user", name], input=password.encode() + b"\n", capture_output=True
    )
    assert r.returncode == 0, r.stderr


def sasl(mechanism: str, user: str, password: str, protocol: str = "SASL_PLAINTEXT") -> list[str]:
    out = ["-X", f"security.protocol={protocol}", "-X", f"sasl.mechanisms={mechanism}"]
    return out + ["-X", f"sasl.username={user}", "-X", f"sasl.password={password}"]


def test_users_are_kept_salted_in_a_0600_file_and_listed_and_removed(tmp_path):
    data = secret_dir(tmp_path)
    add_user(data, "alice", "correct horse")
    add_user(data, "bob", "battery staple")
    path = os.path.join(data, "serve", "users.json")
    assert os.stat(path).st_mode & 0o777 == 0o600
    with open(path, "rb") as f:
        content = f.read()
    assert b"correct horse" not in content and b"battery staple" not in content
    listed = subprocess.run(KQ + ["--data-dir", data, "serve", "--list-users"], capture_output=True)
    assert listed.stdout.split() == [b"alice", b"bob"]
    assert subprocess.run(KQ + ["--data-dir", data, "serve", "--remove-user", "bob"]).returncode == 0
    gone = subprocess.run(KQ + ["--data-dir", data, "serve", "--remove-user", "bob"], capture_output=True)
    assert gone.returncode == 1 and gone.stderr.startswith(b"kq: error: ")
    listed = subprocess.run(KQ + ["--data-dir", data, "serve", "--list-users"], capture_output=True)
    assert listed.stdout.split() == [b"alice"]


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_users_get_in_with_the_right_password_only(tmp_path, mechanism):
    data = secret_dir(tmp_path)
    add_user(data, "alice", "s3cret")
    server = KqServer(data)
    try:
        ok = kcat("-b", server.bootstrap, *sasl(mechanism, "alice", "s3cret"), "-C", "-t", "secret", "-e", nobody=True)
        assert ok.returncode == 0 and ok.stdout.splitlines() == [b"one", b"two"], ok.stderr
        with ThreadPoolExecutor(4) as pool:  # each waits out its client's timeout: all at once
            read = ("-C", "-t", "secret", "-e", "-m", "3")
            wrong = [  # the owner (root) too is judged by the login it attempts
                pool.submit(kcat, "-b", server.bootstrap, *sasl(mechanism, user, password), *read, nobody=nobody)
                for user, password, nobody in (
                    ("alice", "wrong", True),
                    ("mallory", "s3cret", True),
                    ("alice", "x", False),
                )
            ]
            plain = pool.submit(kcat, "-b", server.bootstrap, "-L", "-m", "3", nobody=True)
            kq_wrong = pool.submit(kq_b_as_nobody, server.bootstrap, *sasl(mechanism, "alice", "nope"), "topic", "list")
        for future in wrong:
            bad = future.result()
            assert bad.returncode != 0 and b"one" not in bad.stdout
            assert b"Authentication failed" in bad.stderr, bad.stderr
        # Without SASL, another user is still refused, told that SASL may be needed.
        r = plain.result()
        assert r.returncode != 0 and b"secret" not in r.stdout and b"SASL" in r.stderr, r.stderr
        r = kq_wrong.result()
        assert r.returncode == 1 and b"refused this client" in r.stderr, r.stderr
        # kafka-python logs in too (here as the owner, judged by its login).
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(
            bootstrap_servers=server.bootstrap,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism=mechanism,
            sasl_plain_username="alice",
            sasl_plain_password="s3cret",
            auto_offset_reset="earliest",
        )
        consumer.assign([TopicPartition("secret", 0)])
        values: list[bytes] = []
        wait_for(
            lambda: values.extend(m.value for batch in consumer.poll(500).values() for m in batch) or len(values) >= 2,
            timeout=30,
        )
        assert values == [b"one", b"two"]
        consumer.close()
        # kq -b reaches it through librdkafka's settings.
        r = kq_b_as_nobody(server.bootstrap, *sasl(mechanism, "alice", "s3cret"), "produce", "secret", input=b"x\n")
        assert r.returncode == 0, r.stderr
    finally:
        server.kill()
    assert records(data) == [b"one", b"two", b"x"]


def test_tls_with_scram_from_kq_b_and_kcat(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    readable = tempfile.mkdtemp(dir="/tmp")  # uid 65534 reads the CA file (the certificate itself)
    os.chmod(readable, 0o755)
    cert, key = os.path.join(readable, "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "2"]
        + ["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True,
        capture_output=True,
    )
    os.chmod(cert, 0o644)
    data = secret_dir(tmp_path)
    add_user(data, "alice", "s3cret")
    server = KqServer(data, "--tls-cert", cert, "--tls-key", key)
    try:
        settings = sasl("SCRAM-SHA-256", "alice", "s3cret", "SASL_SSL") + ["-X", f"ssl.ca.location={cert}"]
        r = kq_b_as_nobody(server.bootstrap, *settings, "consume", "secret")
        assert r.returncode == 0 and r.stdout.splitlines() == [b"one", b"two"], r.stderr
        r = kcat("-b", server.bootstrap, *settings, "-C", "-t", "secret", "-e", nobody=True)
        assert r.returncode == 0 and r.stdout.splitlines() == [b"one", b"two"], r.stderr
        # The owner's plaintext client cannot talk to a TLS port.
        plain = kcat("-b", server.bootstrap, "-L", "-m", "3", nobody=False)
        assert plain.returncode != 0
        owner = kq_b(server.bootstrap, "-X", "security.protocol=SSL", "-X", f"ssl.ca.location={cert}", "topic", "list")
        assert owner.returncode == 0 and owner.stdout.split() == [b"secret"], owner.stderr
    finally:
        server.kill()
        shutil.rmtree(readable)


def serve_on(data: str, *args: str) -> subprocess.CompletedProcess:
    """``kq serve`` that is expected to refuse to start."""
    return subprocess.run(KQ + ["--data-dir", data, "serve", *args], capture_output=True, timeout=30)


def test_listening_beyond_loopback_needs_users_or_insecure(tmp_path):
    data = secret_dir(tmp_path)
    port = free_port()
    r = serve_on(data, "--listen", f"0.0.0.0:{port}")
    assert r.returncode == 2, r.stderr
    assert b"--insecure" in r.stderr and b"--add-user" in r.stderr and b"Traceback" not in r.stderr
    # With --insecure it starts; only loopback is ever connected to here.
    server = KqServer(data, "--insecure")
    try:
        r = kcat("-b", server.bootstrap, "-C", "-t", "secret", "-e", nobody=True)
        assert r.returncode == 0 and r.stdout.splitlines() == [b"one", b"two"], r.stderr
    finally:
        server.kill()
    add_user(data, "alice", "s3cret")
    proc = subprocess.Popen(
        KQ + ["--data-dir", data, "serve", "--listen", f"0.0.0.0:{port}", "--advertise", f"127.0.0.1:{port}"],
        stderr=subprocess.PIPE,
    )
    try:
        lines = _Lines(proc.stderr)
        lines.wait_for(lambda line: line.startswith("kq: serving"), timeout=30)
        ok = kcat("-b", f"127.0.0.1:{port}", *sasl("PLAIN", "alice", "s3cret"), "-C", "-t", "secret", "-e", nobody=True)
        assert ok.returncode == 0 and ok.stdout.splitlines() == [b"one", b"two"], ok.stderr
        assert "without TLS" in "".join(lines.seen)
    finally:
        proc.kill()
        proc.wait()


def test_both_ways_of_finding_the_peer_uid_name_the_connecting_user():
    """The kernel's sock_diag answer and /proc/net/tcp's (the fallback) agree on another user's socket."""
    from kq.serve import peer

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = subprocess.Popen(
            AS_NOBODY
            + [
                "/usr/bin/python3",
                "-c",
                f"import socket,sys; s=socket.create_connection(('127.0.0.1',{port})); sys.stdin.read()",
            ],
            stdin=subprocess.PIPE,
            cwd="/",
        )
        try:
            conn, _ = listener.accept()
            with conn:
                theirs, ours = peer._endpoint(conn.getpeername()), peer._endpoint(conn.getsockname())
                assert peer._sock_diag_uid(theirs, ours) == NOBODY
                assert peer._proc_net_uid(theirs, ours) == NOBODY
                assert peer.peer_uid(conn.getpeername(), conn.getsockname()) == NOBODY
                # The server's own end is not the peer's.
                assert peer._sock_diag_uid(ours, (theirs[0], theirs[1] + 1 if theirs[1] < 65535 else 1)) is None
        finally:
            client.communicate(b"", timeout=10)


def test_a_connection_that_has_not_logged_in_may_send_only_small_requests(tmp_path):
    """Before a login succeeds a request may be at most 512 KiB (Kafka's sasl.server.max.receive.size),
    so that nobody who has not logged in makes the server hold --max-request-bytes."""
    from kafka.protocol.sasl import SaslHandshakeRequest, SaslHandshakeResponse

    data = secret_dir(tmp_path)
    add_user(data, "alice", "s3cret")
    server = KqServer(data, "-v")  # (a closed connection is logged with -v)
    try:
        with connect(server.port) as sock:
            send_request(sock, SaslHandshakeRequest(version=1, mechanism="PLAIN"))
            frame = read_frame(sock)
            assert frame is not None
            answer = SaslHandshakeResponse.decode(frame[4:], version=1)
            assert answer.error_code == 0 and "SCRAM-SHA-512" in answer.mechanisms
            sock.sendall(struct.pack(">i", 1024 * 1024))  # a SaslAuthenticate of 1 MiB announced
            assert closed_by_server(sock)
    finally:
        server.kill()
    assert "request size 1048576 is outside 8..524288 bytes" in server.stderr.rest()
