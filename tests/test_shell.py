"""Shell ergonomics: completion, help, terminal vs piped output, colour, exit codes, timeouts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import KQ

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPLETIONS = os.path.join(ROOT, "completions")
KQ_BIN = os.path.join(os.path.dirname(sys.executable), "kq")


def complete_bash(words: str, env: dict | None = None, data: str | None = None):
    """Candidates as bash asks for them: COMP_WORDS / COMP_CWORD and _KQ_COMPLETE."""
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    full_env = {**os.environ, "_KQ_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    if data is not None:
        full_env["KQ_DATA_DIR"] = data
    full_env.update(env or {})
    r = subprocess.run(KQ, env=full_env, capture_output=True, timeout=30)
    assert r.stderr == b"", r.stderr  # completion never prints into the shell
    return r.stdout.decode().split()


@pytest.fixture
def populated(run_kq, data_dir):
    run_kq("topic", "create", "orders", "--partitions", "3")
    run_kq("topic", "create", "logs")
    run_kq("produce", "orders", input="x\n")
    run_kq("consume", "orders", "-g", "billing")
    run_kq("consume", "orders", "-g", "audit")
    return data_dir


def tree_state(path):
    return sorted((d, f, os.stat(os.path.join(d, f)).st_mtime_ns) for d, _, fs in os.walk(path) for f in fs)


def test_completion_candidates(populated):
    data = populated
    before = tree_state(data)
    assert "consume" in complete_bash("kq con", data=data)
    assert set(complete_bash("kq ", data=data)) >= {"produce", "consume", "topic", "offsets", "group", "replicate"}
    assert complete_bash("kq consume ", data=data) == ["logs", "orders"]
    assert complete_bash("kq consume or", data=data) == ["orders"]
    assert complete_bash("kq consume orders -p ", data=data) == ["0", "1", "2"]
    assert complete_bash("kq consume orders -g ", data=data) == ["audit", "billing"]
    assert complete_bash("kq consume orders -o ", data=data) == ["beginning", "end"]
    assert complete_bash("kq offsets reset orders -g billing --to ", data=data) == ["earliest", "latest"]
    assert complete_bash("kq group describe b", data=data) == ["billing"]
    assert complete_bash("kq topic describe ", data=data) == ["logs", "orders"]
    assert "--json" in complete_bash("kq consume orders --j", data=data)
    # --data-dir on the line wins over KQ_DATA_DIR.
    assert complete_bash(f"kq --data-dir {data} consume ", data="/nonexistent") == ["logs", "orders"]
    # Completing never writes to the data directory.
    assert tree_state(data) == before


def test_completion_in_an_empty_or_missing_data_dir_is_quiet(tmp_path):
    missing = str(tmp_path / "nothing-here")
    assert complete_bash("kq consume ", data=missing) == []
    assert complete_bash("kq consume t -p ", data=missing) == []
    assert not os.path.exists(missing)


def test_completion_over_hostile_files_is_quick_and_quiet(populated):
    """Tab completion reads topic.json on every key press: a FIFO there (which a plain
    open() waits on forever), a partition count of a billion or deep nesting gives no
    candidates, at once, and no output on stderr."""
    data = populated
    meta = os.path.join(data, "topics", "orders", "topic.json")
    for plant in (
        "fifo",
        b'{"format": 1, "partitions": 1000000000, "config": {}}',
        b"[" * 100_000,
        b'{"partitions": -3}',
    ):
        os.unlink(meta)
        if plant == "fifo":
            os.mkfifo(meta)
        else:
            with open(meta, "wb") as f:
                f.write(plant)
        assert complete_bash("kq consume orders -p ", data=data) == []
        assert complete_bash("kq consume ", data=data) == ["logs", "orders"]


def test_zsh_and_fish_protocols(populated):
    env = {**os.environ, "KQ_DATA_DIR": populated}
    zsh = subprocess.run(
        KQ, env={**env, "_KQ_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": "kq consume "}, capture_output=True
    ).stdout.decode()
    assert '"orders"' in zsh and '"logs"' in zsh
    fish = subprocess.run(
        KQ,
        env={
            **env,
            "_KQ_COMPLETE": "complete_fish",
            "_TYPER_COMPLETE_FISH_ACTION": "get-args",
            "_TYPER_COMPLETE_ARGS": "kq consume orders -g ",
        },
        capture_output=True,
    ).stdout.decode()
    assert set(fish.split()) == {"audit", "billing"}


def test_static_bash_script_completes_in_a_real_bash(populated):
    script = f"""
        source {COMPLETIONS}/kq.bash
        COMP_WORDS=(kq consume orders -g "")
        COMP_CWORD=4
        _kq_completion kq
        printf '%s\\n' "${{COMPREPLY[@]}}"
    """
    env = {**os.environ, "KQ_DATA_DIR": populated, "PATH": os.path.dirname(KQ_BIN) + os.pathsep + os.environ["PATH"]}
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, timeout=30)
    assert out.stdout.decode().split() == ["audit", "billing"], out.stderr


def typed_in_bash(line: str, expected: str, env: dict) -> None:
    """Type ``line`` and Tab into an interactive bash with kq's script; wait until it shows ``expected``.

    Only a real readline splits words the way a user's bash does (at '=',
    for one), so this drives one through a pseudo-terminal.
    """
    import pty
    import select
    import time

    pid, fd = pty.fork()
    if pid == 0:
        os.execvpe("bash", ["bash", "--norc", "--noprofile", "-i"], env)
    shown = b""

    def wait_for_output(text: bytes, timeout: float = 15) -> None:
        nonlocal shown
        deadline = time.monotonic() + timeout
        while text not in shown:
            left = deadline - time.monotonic()
            assert left > 0, f"bash did not complete {line!r} to {expected!r}; the terminal showed {shown!r}"
            if select.select([fd], [], [], min(left, 0.1))[0]:
                shown += os.read(fd, 65536)

    try:
        os.write(fd, f"source {COMPLETIONS}/kq.bash; echo READY\n".encode())
        wait_for_output(b"READY\r\n")
        os.write(fd, line.encode() + b"\t")
        wait_for_output(expected.encode())
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


@pytest.mark.parametrize(
    "line,expected",
    [
        ("kq --data-dir {data} consume ", "consume orders "),
        ("kq --data-dir={data} consume ", "consume orders "),
        ("kq --data-dir={data} consume orders -o=b", "-o=beginning "),
        ("kq --data-dir={data} consume orders --offset=e", "--offset=end "),
        ("kq --data-dir={data} consume orders -g=", "-g=billing "),
        ("kq --data-dir={data} offsets show orders --group=b", "--group=billing "),
        ("kq --data-dir={data} offsets reset orders -g billing --to=e", "--to=earliest "),
    ],
)
def test_completion_after_option_equals_value_in_a_real_bash(run_kq, data_dir, line, expected):
    run_kq("topic", "create", "orders")
    run_kq("consume", "orders", "-g", "billing")
    env = {
        **os.environ,
        "PS1": "$ ",
        "TERM": "dumb",
        "INPUTRC": "/dev/null",
        "KQ_DATA_DIR": "/nonexistent",
        "PATH": os.path.dirname(KQ_BIN) + os.pathsep + os.environ["PATH"],
    }
    typed_in_bash(line.format(data=data_dir), expected, env)


ZSH_ARGUMENTS_STUB = r"""
# What _arguments would offer: the words of its '((value:description ...))' spec, unquoted.
_arguments() {
  local items=${${1#\*: :\(\(}%\)\)}
  local w
  for w in ${(Q)${(z)items}}; do print -r -- "$w"; done
}
compdef() { : }
"""


def complete_zsh(line: str, data: str) -> list[str]:
    """Candidates of the static zsh script for ``line``, as value:description."""
    words = line.split(" ")
    script = (
        ZSH_ARGUMENTS_STUB
        + f"words=({' '.join(repr(w) for w in words)}); CURRENT={len(words)}\nsource {COMPLETIONS}/_kq\n"
    )
    env = {**os.environ, "KQ_DATA_DIR": data, "PATH": os.path.dirname(KQ_BIN) + os.pathsep + os.environ["PATH"]}
    r = subprocess.run(["zsh", "-f", "-c", script], env=env, capture_output=True, timeout=30)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    return r.stdout.decode().splitlines()


@pytest.mark.skipif(not shutil.which("zsh"), reason="needs zsh")
def test_zsh_keeps_quotes_and_backslashes_and_completes_option_equals_value(populated):
    topic = complete_zsh("kq topic ", populated)
    assert "alter:Change a topic's settings; `kq maintain`..." in topic
    options = complete_zsh("kq produce t -", populated)
    assert r"-D:Message separator [default: \n]; \t, \0, \xHH understood." in options
    assert complete_zsh("kq consume orders --offset=be", populated) == ["--offset=beginning"]
    assert complete_zsh("kq consume orders -g=b", populated) == ["-g=billing"]
    assert complete_zsh(f"kq --data-dir={populated} consume o", "/nonexistent") == ["orders"]


@pytest.mark.skipif(not shutil.which("fish"), reason="needs fish")
def test_fish_completes_option_equals_value(populated):
    def complete_fish(line):
        env = {
            **os.environ,
            "KQ_DATA_DIR": populated,
            "PATH": os.path.dirname(KQ_BIN) + os.pathsep + os.environ["PATH"],
        }
        r = subprocess.run(
            ["fish", "--no-config", "-c", f"source {COMPLETIONS}/kq.fish; complete -C '{line}'"],
            env=env,
            capture_output=True,
            timeout=30,
        )
        return r.stdout.decode().splitlines()

    assert complete_fish("kq consume orders --offset=be") == ["--offset=beginning"]
    assert complete_fish("kq consume orders -o=") == ["-o=beginning", "-o=end"]
    assert complete_fish("kq consume orders -g ") == ["audit", "billing"]
    assert "alter\tChange a topic's settings; `kq maintain`..." in complete_fish("kq topic al")


def test_short_options_take_equals_values(run_kq):
    run_kq("produce", "t", input="a\nb\n")
    assert run_kq("consume", "t", "-o=1").stdout == b"b\n"
    assert run_kq("consume", "t", "-g=billing").stdout == b"a\nb\n"
    assert run_kq("offsets", "show", "t", "-g=billing").stdout.splitlines()[1].split(b"\t")[3:] == [
        b"billing",
        b"2",
        b"0",
    ]


def test_completion_scripts_are_up_to_date():
    r = subprocess.run([sys.executable, os.path.join(COMPLETIONS, "generate.py"), "--check"], capture_output=True)
    assert r.returncode == 0, r.stderr.decode()


def test_show_and_install_completion(tmp_path):
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "PATH": os.path.dirname(KQ_BIN) + os.pathsep + os.environ["PATH"],
        "PYTHONPATH": ROOT,  # the installed `kq` command, running the kq of this checkout
    }
    shown = subprocess.run(["bash", "-c", "kq --show-completion"], env=env, capture_output=True)
    assert shown.returncode == 0
    assert shown.stdout.decode() == open(os.path.join(COMPLETIONS, "kq.bash")).read()
    # A shell named gets its own script, whatever shell runs kq: the file the wheel ships, byte for byte.
    for shell, name in (("bash", "kq.bash"), ("zsh", "_kq"), ("fish", "kq.fish")):
        shown = subprocess.run(["bash", "-c", f"kq --show-completion {shell}"], env=env, capture_output=True)
        assert (shown.returncode, shown.stdout.decode()) == (0, open(os.path.join(COMPLETIONS, name)).read()), shell
    shown = subprocess.run(["bash", "-c", "kq --show-completion tcsh"], env=env, capture_output=True)
    assert shown.returncode == 2 and b"'tcsh' is not one of bash, zsh, fish" in shown.stderr
    installed = subprocess.run(["bash", "-c", "kq --install-completion"], env=env, capture_output=True)
    assert installed.returncode == 0, installed.stderr
    assert "_KQ_COMPLETE" in (tmp_path / ".bash_completions" / "kq.sh").read_text()


def all_commands():
    from typer.main import get_command

    from kq.cli.app import app

    root = get_command(app)
    out = []
    for name, cmd in root.commands.items():
        out.append([name])
        for sub in getattr(cmd, "commands", {}):
            out.append([name, sub])
    return out


def test_every_help_has_examples(run_kq):
    r = run_kq(data=None)
    assert r.returncode == 0 and b"Examples" in r.stdout and b"Usage: kq" in r.stdout
    for path in all_commands():
        r = run_kq(*path, "--help", data=None)
        assert r.returncode == 0, path
        assert b"Examples" in r.stdout, f"kq {' '.join(path)} --help shows no examples"
        assert f"Usage: kq {' '.join(path)}".encode() in r.stdout
        usage = next(line for line in r.stdout.decode().splitlines() if "Usage:" in line)
        assert "{" not in usage and not re.search(r"\b[a-z]+\]?\.*\s*$", usage.split("[OPTIONS]")[-1]), usage
    # Each group's help names all its commands.
    topic_help = run_kq("topic", "--help", data=None).stdout.decode()
    assert "Create, alter, trim, list, describe and delete topics." in topic_help
    assert "kq topic alter" in topic_help and "kq topic trim" in topic_help


def test_misspellings_get_suggestions(run_kq):
    r = run_kq("consme", "t")
    assert r.returncode == 2 and b"Did you mean 'consume'" in r.stderr
    r = run_kq("topic", "lst")
    assert r.returncode == 2 and b"Did you mean 'list'" in r.stderr
    r = run_kq("consume", "t", "--jsn")
    assert r.returncode == 2 and b"Possible options: --json" in r.stderr


def in_terminal(args: list[str], env: dict) -> str:
    """Run kq under a pseudo-terminal (util-linux `script`) and return what it showed."""
    cmd = " ".join(["'" + a + "'" for a in [KQ_BIN, *args]])
    r = subprocess.run(
        ["script", "-qec", cmd, "/dev/null"],
        env={**env, "COLUMNS": "100"},
        capture_output=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    return r.stdout.decode(errors="replace")


COLOR = re.compile(r"\x1b\[[0-9;]*3[0-7]m|\x1b\[[0-9;]*38;")


@pytest.mark.skipif(not os.path.exists("/usr/bin/script"), reason="needs util-linux script")
def test_tables_on_a_terminal_plain_text_in_a_pipe(populated, run_kq):
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env["KQ_DATA_DIR"] = populated
    shown = in_terminal(["topic", "list"], env)
    assert "┃" in shown or "│" in shown, shown
    assert run_kq("topic", "list").stdout == b"logs\norders\n"
    shown = in_terminal(["offsets", "show", "orders"], env)
    assert "billing" in shown and "│" in shown
    piped = run_kq("offsets", "show", "orders").stdout.decode()
    assert "\x1b" not in piped and piped.startswith("partition\t")
    # Colour on a terminal, none with NO_COLOR or --no-color, none in a pipe.
    assert COLOR.search(in_terminal(["--help"], env))
    assert not COLOR.search(in_terminal(["--help"], {**env, "NO_COLOR": "1"}))
    assert not COLOR.search(in_terminal(["--no-color", "--help"], env))
    assert "\x1b" not in run_kq("--help", data=None).stdout.decode()


@pytest.mark.skipif(not os.path.exists("/usr/bin/script"), reason="needs util-linux script")
def test_settings_and_tables_read_as_people_write_them(run_kq, data_dir):
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env["KQ_DATA_DIR"] = data_dir
    run_kq("topic", "create", "t", "--retention", "7d", "--retention-bytes", "1536M")
    shown = in_terminal(["--no-color", "topic", "describe", "t"], env)
    for setting, value in (
        ("segment_bytes", "64M"),
        ("retention_ms", "7d"),
        ("retention_bytes", "1536M"),
        ("tombstone_retention_ms", "1d"),
        ("sync", "false"),
        ("cleanup", "delete"),
    ):
        assert re.search(rf"│ {setting} +│ {value} +│", shown), f"{setting} is not shown as {value}:\n{shown}"
    # In a pipe: the raw numbers, and none/true/false rather than Python's None/True/False.
    piped = run_kq("topic", "describe", "t").stdout.decode()
    assert "config\tsync\tfalse\n" in piped and "config\tretention_ms\t604800000\n" in piped
    run_kq("topic", "alter", "t", "--retention", "none")
    assert "config\tretention_ms\tnone\n" in run_kq("topic", "describe", "t").stdout.decode()
    # Words on the left, numbers on the right.
    run_kq("produce", "t", input="x\n")
    run_kq("consume", "t", "-g", "g")
    shown = in_terminal(["--no-color", "offsets", "show", "t"], env)
    assert re.search(r"│ +0 │ +0 │ +1 │ g +│ +1 │ +0 │", shown), shown
    # A group without live members says so instead of drawing an empty table.
    shown = in_terminal(["--no-color", "group", "describe", "g"], env)
    assert "live members: none" in shown and "member " not in shown, shown


def test_timeout_exit_codes(run_kq):
    run_kq("topic", "create", "quiet")
    r = run_kq("consume", "quiet", "--timeout", "0.3")
    assert r.returncode == 3 and r.stdout == b""
    assert b"no message arrived within 0.3 s" in r.stderr
    assert run_kq("-q", "consume", "quiet", "-t", "0.3").stderr == b""
    run_kq("produce", "quiet", input="hello\n")
    r = run_kq("consume", "quiet", "--timeout", "0.3")
    assert r.returncode == 0 and r.stdout == b"hello\n"
    assert run_kq("consume", "quiet", "-g", "g", "-t", "0.3").returncode == 0
    assert run_kq("consume", "quiet", "-g", "g", "-t", "0.3").returncode == 3  # nothing new for the group


def test_quiet_silences_information(run_kq):
    r = run_kq("-q", "produce", "new-topic", input="x\n")
    assert r.returncode == 0 and r.stderr == b""
    r = run_kq("produce", "other-topic", input="x\n")
    assert b"created topic" in r.stderr
