"""The habits that keep the code easy to change: each is checked here, so it holds for everyone.

Lint, format and types; the library never loading the CLI's or Kafka's
packages; the example in kq/__init__.py running; docs/cli.md matching --help.
"""

from __future__ import annotations

import doctest
import os
import pkgutil
import shutil
import subprocess
import sys

import pytest

import kq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ["kq", "tests", "benchmarks", "completions", "docs"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.skipif(shutil.which("ruff") is None and run("ruff", "--version").returncode, reason="ruff not installed")
def test_ruff_lint_and_format_pass():
    lint = run("ruff", "check", *SOURCES)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = run("ruff", "format", "--check", *SOURCES)
    assert fmt.returncode == 0, "run `ruff format`:\n" + fmt.stdout + fmt.stderr


@pytest.mark.skipif(run("mypy", "--version").returncode, reason="mypy not installed")
def test_mypy_passes_on_the_package():
    result = run("mypy")  # files and settings: pyproject.toml
    assert result.returncode == 0, result.stdout + result.stderr


def library_modules() -> list[str]:
    """Every module of the library: all of kq but the command line (kq.cli) and the entry point."""
    names = ["kq"]
    for info in pkgutil.walk_packages(kq.__path__, "kq."):
        if info.name == "kq.__main__" or info.name == "kq.cli" or info.name.startswith("kq.cli."):
            continue
        if info.name == "kq.serve" or info.name.startswith("kq.serve."):
            continue  # kq serve is the protocol library's home (the kafka extra), checked below
        names.append(info.name)
    return names


@pytest.mark.parametrize("module", library_modules())
def test_the_library_loads_neither_the_cli_nor_kafka_packages(module):
    code = (
        f"import sys, {module}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('typer', 'rich', 'click', 'confluent_kafka', 'kafka', 'aiokafka'))\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"import {module} loads {out.stdout.strip()}"


def test_a_command_on_a_data_directory_loads_no_kafka_package(tmp_path):
    code = (
        "import sys\n"
        "from kq.cli import main\n"
        "try:\n"
        f"    main(['--data-dir', {str(tmp_path)!r}, 'topic', 'list'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('confluent_kafka', 'kafka', 'aiokafka'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_the_example_in_the_package_docstring_runs():
    failures, tried = doctest.testmod(kq, verbose=False)
    assert tried > 0 and failures == 0


def test_the_command_reference_matches_the_help():
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "docs", "cli_reference.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
