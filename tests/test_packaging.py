"""What `pip install` gets: the distribution's name, its command and its completion scripts.

.ci/run also builds the sdist and the wheel and runs the wheel's `kq` from a
fresh venv; these tests check the metadata that makes that work.
"""

from __future__ import annotations

import importlib.metadata
import os

import pytest

import kq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_distribution_is_kq_log_and_installs_the_kq_command():
    # `kq` on PyPI is another project (which also imports as kq).
    dist = importlib.metadata.distribution("kq-log")
    assert dist.version == kq.__version__
    scripts = [(e.name, e.value) for e in dist.entry_points if e.group == "console_scripts"]
    assert scripts == [("kq", "kq.cli:main")]


def test_the_wheel_ships_every_completion_script_where_shells_look():
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        data_files = tomllib.load(f)["tool"]["setuptools"]["data-files"]
    assert data_files == {
        "share/bash-completion/completions": ["completions/kq.bash"],
        "share/zsh/site-functions": ["completions/_kq"],
        "share/fish/vendor_completions.d": ["completions/kq.fish"],
    }
    for files in data_files.values():
        assert all(os.path.getsize(os.path.join(ROOT, f)) > 0 for f in files)
