"""Run kafka-python's own integration tests, unchanged, against a real ``kq serve``.

kafka-python's source distribution on PyPI ships its integration tests
(``test/integration``), which run against an existing broker through the
suite's own switch, ``KAFKA_URI=PLAINTEXT://HOST:PORT KAFKA_VERSION=...``.
The sdist leaves out ``test/__init__.py`` and ``test/service.py``, and the
fixtures want a Kafka install directory (``KAFKA_ROOT``) even for an
external broker; this script adds those few lines of harness, never a
change to a test.

Usage: python tests/clients/run_kafka_python_suite.py [PYTEST ARGS...]

The sdist of the installed kafka-python is downloaded at run time into a
temporary directory (pip download), a ``kq serve`` is started on a free port
over an empty data directory, and the script exits with pytest's status.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time

SUITE = [
    "test/integration/test_admin_integration.py",
    "test/integration/test_consumer_integration.py",
    "test/integration/test_producer_integration.py",
]
# Out of scope: kq serve has no authorizer (ACLs).
OUT_OF_SCOPE = [
    "test/integration/test_admin_integration.py::test_create_describe_delete_acls",
]
KAFKA_VERSION = "4.2.0"  # the broker version the suite is told it talks to
# The suite imports ExternalService and SpawnedService from test.service,
# which its sdist does not ship; an external broker needs only the first.
SERVICE_PY = '''\
"""Harness for an external broker (kafka-python's sdist does not ship test/service.py)."""


class ExternalService:
    def __init__(self, host, port):
        self.host = host
        self.port = port

    def start(self):
        pass

    def stop(self):
        pass

    def dump_logs(self):
        pass

    def wait_for(self, pattern, timeout=30):
        return True


class SpawnedService:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("this harness runs the suite against an external broker only (KAFKA_URI)")
'''
SERVING = re.compile(r"kq: serving .* on (\S+):(\d+)$")


def unpack_sdist(work: str) -> str:
    version = importlib.metadata.version("kafka-python")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        + ["--dest", work, f"kafka-python=={version}"],
        check=True,
    )
    archive = next(os.path.join(work, f) for f in os.listdir(work) if f.endswith(".tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(work)
    source = next(
        os.path.join(work, d) for d in os.listdir(work) if os.path.isdir(os.path.join(work, d, "test", "integration"))
    )
    test_dir = os.path.join(source, "test")
    if not os.path.exists(os.path.join(test_dir, "__init__.py")):
        open(os.path.join(test_dir, "__init__.py"), "w").close()
    if not os.path.exists(os.path.join(test_dir, "service.py")):
        with open(os.path.join(test_dir, "service.py"), "w") as f:
            f.write(SERVICE_PY)
    return source


def start_kq_serve(data: str) -> tuple[subprocess.Popen, str, int]:
    server = subprocess.Popen(
        # num.partitions 4: the broker the suite's fixtures spawn has it (KafkaFixture's partitions=4),
        # and test_transactional_producer_offsets commits to partition 1 of an auto-created topic.
        [
            sys.executable,
            "-m",
            "kq",
            "--data-dir",
            data,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--default-partitions",
            "4",
        ],
        stderr=subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    assert server.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = server.stderr.readline().decode(errors="replace").strip()
        if not line and server.poll() is not None:
            break
        m = SERVING.search(line)
        if m:
            return server, m.group(1), int(m.group(2))
    server.kill()
    raise SystemExit("kq serve did not start")


def main(args: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="kq-kafka-python-suite-") as work:
        source = unpack_sdist(work)
        kafka_root = os.path.join(work, "kafka-root")  # the fixtures insist that it exists
        os.mkdir(kafka_root)
        server, host, port = start_kq_serve(os.path.join(work, "data"))
        try:
            env = {
                **os.environ,
                "KAFKA_URI": f"PLAINTEXT://{host}:{port}",
                "KAFKA_VERSION": KAFKA_VERSION,
                "KAFKA_ROOT": kafka_root,
            }
            deselect = [a for test in OUT_OF_SCOPE for a in ("--deselect", test)]
            command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *SUITE, *deselect, *args]
            return subprocess.run(command, cwd=source, env=env).returncode
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
