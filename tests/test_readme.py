"""Every ```python block of README.md runs as written: in a fresh empty directory, in its own process."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
BLOCKS = re.findall(r"^```python\n(.*?)^```", open(README).read(), re.S | re.M)
README_BROKER = "127.0.0.1:9092"  # what the README's `kq serve` listens on


def run_python(code: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT}  # the kq of this checkout
    env.pop("KQ_DATA_DIR", None)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, timeout=120)


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_a_readme_python_block_runs_as_written(block, tmp_path):
    server = None
    if README_BROKER in block:
        # A Kafka client's block runs against `kq serve`, as the README starts it; only the port
        # differs (any free one here, where the README's 9092 may be taken).
        pytest.importorskip("confluent_kafka")
        from serve_support import KqServer

        server = KqServer(str(tmp_path / "served"))
        block = block.replace(README_BROKER, server.bootstrap)
    work = tmp_path / "work"
    work.mkdir()
    try:
        r = run_python(block, work)
    finally:
        if server is not None:
            server.kill()
    assert r.returncode == 0, f"README block failed:\n{block}\nstderr:\n{r.stderr.decode()}"
    assert b"Traceback" not in r.stderr
