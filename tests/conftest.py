"""Fixtures: a temporary data directory and ``run_kq``, the real command in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

# The brokers (kq serve, Tansu) and the `place` fixture of the suites that run one command line at three places.
from cluster_support import kq_serve_cluster, place, tansu_cluster  # noqa: F401

KQ = [sys.executable, "-m", "kq"]

# A user's own test project (no conftest.py, kq's pytest plugin), run by test_pytest_plugin.py in a subprocess.
collect_ignore = ["user_project"]


@pytest.fixture
def data_dir(tmp_path):
    return str(tmp_path / "data")


@pytest.fixture
def run_kq(data_dir):
    """Run ``kq --data-dir DATA ARGS...``; returns the CompletedProcess (bytes)."""

    def run(
        *args,
        input: bytes | str | None = None,
        env: dict | None = None,
        timeout: float = 60,
        data: str | None = data_dir,
    ):
        if isinstance(input, str):
            input = input.encode()
        full_env = {**os.environ, **(env or {})}
        prefix = ["--data-dir", data] if data is not None else []
        return subprocess.run(
            KQ + prefix + [a if isinstance(a, bytes) else str(a) for a in args],
            input=input,
            capture_output=True,
            env=full_env,
            timeout=timeout,
        )

    return run


@pytest.fixture
def spawn_kq(data_dir):
    """Start ``kq --data-dir DATA ARGS...`` in the background; the caller ends it."""
    procs = []

    def spawn(*args, **kwargs):
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        p = subprocess.Popen(KQ + ["--data-dir", data_dir] + [str(a) for a in args], **kwargs)
        procs.append(p)
        return p

    yield spawn
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def wait_for(condition, timeout: float = 10.0, interval: float = 0.02, message: str = "condition"):
    """Poll ``condition()`` until it returns a true value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@pytest.fixture
def shared_tmp():
    """A directory other users can enter (pytest's own tmp_path is private to root)."""
    base = tempfile.mkdtemp(prefix="kq-shared-", dir="/tmp")
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def pytest_collection_modifyitems(items):
    """The fast in-process tests (tests/unit) run first, so that a failure there shows in seconds."""
    unit = os.sep + os.path.join("tests", "unit") + os.sep
    items.sort(key=lambda item: 0 if unit in str(item.path) else 1)  # stable: the rest keep their order
