"""The Kafka clients' maintainers' own tests, run unchanged against a real ``kq serve``.

kafka-python's PyPI sdist ships its integration tests; ``tests/clients/
run_kafka_python_suite.py`` downloads it at run time, adds the few lines of
harness it lacks, and runs it against ``kq serve`` (see its docstring).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

RUNNER = os.path.join(os.path.dirname(__file__), "clients", "run_kafka_python_suite.py")


def test_kafka_pythons_own_integration_suite_passes_against_kq_serve():
    pytest.importorskip("kafka.protocol")
    r = subprocess.run([sys.executable, RUNNER], capture_output=True, timeout=900)
    out = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
    if r.returncode != 0 and "Could not find a version" in out:
        pytest.skip("kafka-python's sdist could not be downloaded from PyPI")
    summary = re.findall(r"^=*\s*(\d+ passed.*?)\s*=*$", out, re.M)
    assert r.returncode == 0, out[-4000:]
    assert summary and "failed" not in summary[-1], out[-4000:]
