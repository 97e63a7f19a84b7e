"""What `pip install` gets: the distribution's name, its command and its completion scripts.

.ci/run also builds the sdist and the wheel and runs the wheel's `kq` from a
fresh venv; these tests check the metadata that makes that work.
"""

from __future__ import annotations

import importlib.metadata
import os
import re

import pytest

import kq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_distribution_is_kq_log_and_installs_the_kq_command():
    # `kq` on PyPI is another project (which also imports as kq).
    dist = importlib.metadata.distribution("kq-log")
    assert dist.version == kq.__version__
    scripts = [(e.name, e.value) for e in dist.entry_points if e.group == "console_scripts"]
    assert scripts == [("kq", "kq.cli:main")]


def test_pytest_finds_kqs_fixtures_through_a_pytest11_entry_point():
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        entry_points = tomllib.load(f)["project"]["entry-points"]
    assert entry_points == {"pytest11": {"kq": "kq.testing.pytest_plugin"}}
    assert os.path.exists(os.path.join(ROOT, "kq", "testing", "pytest_plugin.py"))


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


def _sh_blocks(markdown: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", markdown, re.S)


def test_the_readmes_install_steps_in_order_then_its_completion_step_work(tmp_path):
    """README: `pip install .`, then `pip install -e '.[test]'` (no data files), then the completion step.

    Run as written, in a fresh venv (its dependencies from this environment, as
    .ci/run's pip finds setuptools to build with) on a copy of the checkout,
    with HOME a temp dir. The scripts written must be the ones the wheel ships.
    """
    import shutil
    import subprocess
    import sys

    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    checkout = tmp_path / "checkout"
    for name in files:
        if os.path.exists(os.path.join(ROOT, name)):
            os.makedirs(checkout / os.path.dirname(name), exist_ok=True)
            shutil.copy(os.path.join(ROOT, name), checkout / name)
    venv, home = tmp_path / "venv", tmp_path / "home"
    home.mkdir()
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    env = {
        **os.environ,
        "HOME": str(home),
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "PIP_NO_DEPS": "1",  # kq's dependencies come from this environment (--system-site-packages)
        "PIP_QUIET": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PYTHONPATH": "",
    }
    env.pop("KQ_DATA_DIR", None)
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    install, editable = _sh_blocks(readme)[:2]
    assert install.startswith("pip install . ") and editable.startswith("pip install -e '.[test]' ")
    steps = [
        install.strip(),
        editable.split("&&")[0].strip(),  # not the test run that follows it
        _sh_blocks(readme.split("## Output and tab completion", 1)[1])[0],
    ]
    for step in steps:
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", step], cwd=checkout, env=env, capture_output=True)
        assert r.returncode == 0, f"{step}\n{r.stdout.decode()}{r.stderr.decode()}"
    for written, shipped in (
        (".local/share/bash-completion/completions/kq", "kq.bash"),
        (".zfunc/_kq", "_kq"),
        (".config/fish/completions/kq.fish", "kq.fish"),
    ):
        assert (home / written).read_text() == (checkout / "completions" / shipped).read_text(), written
