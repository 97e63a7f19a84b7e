"""Every `sh` block of docs/recipes.md runs, in an empty directory with a fresh data dir."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

RECIPES = os.path.join(os.path.dirname(__file__), "..", "docs", "recipes.md")
BLOCKS = re.findall(r"^```sh\n(.*?)^```", open(RECIPES).read(), re.S | re.M)


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_recipe_runs(block, tmp_path):
    env = {**os.environ, "KQ_DATA_DIR": str(tmp_path / "data")}
    # `kq` as installed for this interpreter, first on PATH.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with open(out, "wb") as o, open(err, "wb") as e:
        # Its own session, so anything a recipe leaves in the background can be
        # cleaned up; output to files, so such a process cannot hold a pipe open.
        proc = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, stdout=o, stderr=e, start_new_session=True
        )
        try:
            code = proc.wait(timeout=60)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert code == 0, f"recipe failed ({code}):\n{block}\nstdout:\n{out.read_text()}\nstderr:\n{err.read_text()}"
    assert "Traceback" not in err.read_text()


def test_recipe_outputs(tmp_path):
    """Spot checks of what the recipes promise in their comments."""
    env = {**os.environ, "KQ_DATA_DIR": str(tmp_path / "data")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    run = lambda block: subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=tmp_path,
        env=env,  # noqa: E731
        capture_output=True,
        timeout=60,
    ).stdout.decode()
    replay = next(b for b in BLOCKS if "sensors" in b)
    assert [line for line in run(replay).splitlines() if line.startswith("reading")] == [
        "reading at 10:02",
        "reading at 10:03",
        "reading at 10:03",
        "reading at 10:04",
        "reading at 10:05",
    ]
    fanout = next(b for b in BLOCKS if "events" in b)
    assert run(fanout).split("partition")[0].split() == ["1", "2", "3", "1", "2", "3", "4", "5"]


def test_job_queue_recipe_outputs(tmp_path):
    """The share group recipes do what their comments say."""
    env = {**os.environ, "KQ_DATA_DIR": str(tmp_path / "data")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]

    def run(block: str) -> str:
        r = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True, timeout=60
        )
        assert r.returncode == 0, r.stderr
        return r.stdout.decode()

    poison = next(b for b in BLOCKS if "not-an-address" in b and "send.sh" in b)
    out = run(poison)
    assert "sent to alice@example.com" in out and "sent to bob@example.com" in out
    [dead] = [line for line in out.splitlines() if line.startswith("not-an-address: ")]
    assert (
        "kq.dlq.attempts=3" in dead and "kq.dlq.exit=65" in dead and "kq.dlq.stderr=bad address: not-an-address" in dead
    )
    replay = next(b for b in BLOCKS if "back into the queue" in b)
    env["KQ_DATA_DIR"] = str(tmp_path / "data2")
    assert run(replay).splitlines()[-1] == "not-an-address"
