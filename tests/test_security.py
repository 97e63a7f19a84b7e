"""A shared machine: file modes, symbolic links, names that must not become paths,
nothing evaluated from the data, and another user's data directory.

kq has no users or permissions of its own: it relies on the file system's.
These tests check that its files get modes that make that reliance safe, and
that it does not let links or names lead it outside its data directory.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import stat
import struct
import subprocess
import zlib
from collections import Counter

import msgpack
import pytest
from conftest import KQ
from hypothesis import given, settings
from hypothesis import strategies as st
from test_faults import NOBODY, run_as, snapshot

import kq
from kq.engine import batch as batchfmt
from kq.engine.names import check_name
from kq.errors import CorruptLog, InvalidName, PartitionNotFound

NAME_CASES = 500  # hypothesis examples of arbitrary text tried as topic and group names


def run_with_umask(data: str, umask: int, *args, input: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(
        KQ + ["--data-dir", data, *map(str, args)],
        input=input,
        capture_output=True,
        preexec_fn=lambda: os.umask(umask),
        timeout=60,
    )


def modes(path: str) -> Counter:
    """(kind, permission bits) of everything under ``path``, ``path`` included."""
    out = Counter()
    out[("dir", stat.S_IMODE(os.stat(path).st_mode))] += 1
    for root, dirs, files in os.walk(path):
        for d in dirs:
            out[("dir", stat.S_IMODE(os.lstat(os.path.join(root, d)).st_mode))] += 1
        for f in files:
            out[("file", stat.S_IMODE(os.lstat(os.path.join(root, f)).st_mode))] += 1
    return out


# ---------------------------------------------------------------- modes


@pytest.mark.parametrize("umask", [0o000, 0o027, 0o277], ids=lambda u: f"umask-{u:03o}")
def test_new_directories_are_0700_and_files_0600_less_a_stricter_umask(tmp_path, umask):
    """Every directory and file kq creates, whatever the umask allows: the data
    directory, topics, segments, indexes, locks, offsets, members, a replica."""
    if umask & 0o200 and os.geteuid() != 0:
        pytest.skip("a umask that removes the owner's write bit leaves kq unable to write, except as root")
    data, replica = str(tmp_path / "data"), str(tmp_path / "replica")
    lines = b"".join(b"k%d:%d-%s\n" % (n % 9, n, b"x" * 100) for n in range(400))
    for args, stdin in (
        (["topic", "create", "t", "--partitions", "2", "--segment-bytes", "4K"], b""),
        (["topic", "create", "c", "--cleanup", "compact", "--segment-bytes", "4K"], b""),
        (["produce", "t", "-K", ":"], lines),
        (["produce", "c", "-K", ":"], lines),
        (["produce", "auto"], b"created by produce\n"),
        (["consume", "t", "-g", "g"], b""),
        (["topic", "alter", "t", "--retention", "7d"], b""),
        (["maintain"], b""),
        (["topic", "trim", "t", "--before", "3"], b""),
        (["replicate", "--all", "--to", replica], b""),  # writes the replica's start.offset too
    ):
        r = run_with_umask(data, umask, *args, input=stdin)
        assert r.returncode == 0, (args, r.stderr)
    want_dir, want_file = 0o700 & ~umask, 0o600 & ~umask
    for where in (data, replica):
        found = modes(where)
        wrong = {k: n for k, n in found.items() if k not in (("dir", want_dir), ("file", want_file))}
        assert not wrong, f"under {where}: expected dirs {want_dir:o} and files {want_file:o}, found {wrong}"
        assert found[("file", want_file)] > 10


# ---------------------------------------------------------------- symbolic links


@pytest.fixture
def linked(run_kq, tmp_path):
    """A data directory, and another one outside it whose topic a link will point at."""
    data, outside = str(tmp_path / "data"), str(tmp_path / "outside")
    for d in (data, outside):
        assert (
            run_kq("produce", "t", "-K", ":", input="a:inside\n" if d == data else "a:outside\n", data=d).returncode
            == 0
        )
    return data, outside


REFUSED_COMMANDS = [
    ["produce", "t"],
    ["consume", "t"],
    ["consume", "t", "-g", "g"],
    ["topic", "describe", "t"],
    ["topic", "alter", "t", "--retention", "1d"],
    ["maintain"],
    ["replicate", "t", "--to", "REPLICA"],
]


def assert_refused_everywhere(run_kq, data, outside, tmp_path, commands=REFUSED_COMMANDS) -> None:
    before = snapshot(outside)
    for args in commands:
        args = [str(tmp_path / "replica") if a == "REPLICA" else a for a in args]
        r = run_kq(*args, input="evil\n", data=data)
        assert r.returncode == 1, (args, r.returncode, r.stdout, r.stderr)
        assert r.stderr.startswith(b"kq: error: ") and b"symbolic link" in r.stderr, (args, r.stderr)
        assert b"outside" not in r.stdout, f"{args} served data from outside the data directory"
    assert snapshot(outside) == before, "kq changed files outside its data directory"


def test_a_topic_directory_linked_outside_the_data_directory_is_refused(run_kq, linked, tmp_path):
    data, outside = linked
    topic = os.path.join(data, "topics", "t")
    shutil.rmtree(topic)
    os.symlink(os.path.join(outside, "topics", "t"), topic)
    assert_refused_everywhere(run_kq, data, outside, tmp_path)


def test_a_partition_directory_linked_outside_the_data_directory_is_refused(run_kq, linked, tmp_path):
    data, outside = linked
    partition = os.path.join(data, "topics", "t", "0")
    shutil.rmtree(partition)
    os.symlink(os.path.join(outside, "topics", "t", "0"), partition)
    # `topic alter` only rewrites topic.json, which is inside: it may go ahead.
    assert_refused_everywhere(
        run_kq, data, outside, tmp_path, [c for c in REFUSED_COMMANDS if c[:2] != ["topic", "alter"]]
    )


def test_a_group_directory_linked_outside_the_data_directory_is_refused(run_kq, linked):
    data, outside = linked
    elsewhere = os.path.join(outside, "groups")
    os.makedirs(elsewhere)
    os.symlink(elsewhere, os.path.join(data, "groups"))
    for args in (["consume", "t", "-g", "g"], ["offsets", "reset", "t", "-g", "g", "--to", "end"]):
        r = run_kq(*args, data=data)
        assert r.returncode == 1 and b"symbolic link" in r.stderr, (args, r.stderr)
    assert os.listdir(elsewhere) == [], "kq wrote group files outside its data directory"


def test_a_segment_file_linked_outside_the_data_directory_is_never_written(run_kq, linked, tmp_path):
    data, _ = linked
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"someone else's file\n")
    segment = os.path.join(data, "topics", "t", "0", f"{0:020d}.log")
    os.unlink(segment)
    os.symlink(victim, segment)
    r = run_kq("produce", "t", input="evil\n", data=data)
    assert victim.read_bytes() == b"someone else's file\n", "kq truncated and wrote a file outside its data directory"
    assert r.returncode == 1 and b"symbolic link" in r.stderr


def test_a_data_directory_reached_through_a_link_and_links_inside_it_work(run_kq, tmp_path):
    """What the refusal must not break: ~/.local/share/kq -> /mnt/disk/kq, say."""
    real = tmp_path / "disk" / "kq"
    assert run_kq("produce", "t", input="x\n", data=str(real)).returncode == 0
    os.symlink(real, tmp_path / "kq-link")
    link = str(tmp_path / "kq-link")
    assert run_kq("produce", "t", input="y\n", data=link).returncode == 0
    assert run_kq("consume", "t", "-g", "g", data=link).stdout == b"x\ny\n"
    # A partition moved elsewhere inside the same data directory, and linked back.
    moved = real / "tmp" / "moved-partition"
    os.rename(real / "topics" / "t" / "0", moved)
    os.symlink(moved, real / "topics" / "t" / "0")
    assert run_kq("produce", "t", input="z\n", data=link).returncode == 0
    assert run_kq("consume", "t", data=link).stdout == b"x\ny\nz\n"


# ---------------------------------------------------------------- names


BAD_NAMES = [
    "../escape",
    "../../escape",
    "/tmp/kq-absolute-escape",
    "a/b",
    ".",
    "..",
    "",
    "x" * 250,
    "with space",
    "ünï",
    "tab\tname",
    "new\nline",
    "semi;colon",
    "star*",
    "$(touch escape)",
]


def test_bad_topic_and_group_names_are_refused_before_they_touch_a_path(run_kq, data_dir, tmp_path):
    assert run_kq("produce", "t", input="x\n").returncode == 0
    before = snapshot(data_dir)
    around = set(os.listdir(tmp_path.parent))
    commands = [
        lambda n: ["produce", n],
        lambda n: ["consume", n],
        lambda n: ["topic", "create", n],
        lambda n: ["topic", "delete", n],
        lambda n: ["maintain", n],
        lambda n: ["replicate", n, "--to", str(tmp_path / "replica")],
        lambda n: ["consume", "t", "-g", n],
        lambda n: ["offsets", "reset", "t", "-g", n, "--to", "end"],
        lambda n: ["group", "delete", n],
    ]
    # Every command sees a few bad names (the library check below sees all of them).
    for i, command in enumerate(commands):
        for name in (BAD_NAMES[i % len(BAD_NAMES)], BAD_NAMES[(i + 5) % len(BAD_NAMES)]):
            args = command(name)
            r = run_kq(*args, input="x\n")
            assert r.returncode == 2, (args, r.returncode, r.stderr)
            assert b"invalid topic name" in r.stderr or b"invalid group name" in r.stderr, (args, r.stderr)
    assert snapshot(data_dir) == before, "a refused name created or changed a file"
    assert set(os.listdir(tmp_path.parent)) == around and not os.path.exists("/tmp/kq-absolute-escape")
    escaped = [os.path.join(r, n) for r, ds, fs in os.walk(tmp_path) for n in ds + fs if "escape" in n]
    assert not escaped, escaped


def test_the_library_refuses_every_bad_name_and_partition_number(data_dir):
    data = kq.DataDir(data_dir)
    t = data.create_topic("t", 2)
    groups = kq.Groups(data)
    for name in BAD_NAMES:
        for attempt in (
            lambda: data.topic(name),
            lambda: data.create_topic(name),
            lambda: data.get_or_create_topic(name),
            lambda: data.delete_topic(name),
            lambda: groups.commit(name, "t", 0, 0),
            lambda: groups.committed(name, "t"),
            lambda: groups.commit("g", name, 0, 0),
            lambda: groups.delete(name),
        ):
            with pytest.raises(InvalidName):
                attempt()
    for number in (-1, 2, True, "0", 1.0, None, 10**20):
        with pytest.raises(PartitionNotFound):
            t.partition(number)
    groups_dir = os.path.join(data_dir, "groups")
    assert not os.path.exists(groups_dir) or os.listdir(groups_dir) == [], "a refused group name created a directory"
    assert data.topic_names() == ["t"]


def test_partition_numbers_must_be_in_range_integers(run_kq):
    assert run_kq("produce", "t", "--partitions", "2", input="x\n").returncode == 0
    for args in (
        ["produce", "t", "-p", "-1"],
        ["produce", "t", "-p", "2"],
        ["consume", "t", "-p", "1.5"],
        ["consume", "t", "-p", "0x1"],
    ):
        r = run_kq(*args, input="y\n")
        assert r.returncode == 2 and r.stderr.startswith(b"kq: error: "), (args, r.stderr)
    assert run_kq("consume", "t").stdout == b"x\n"


def test_any_text_as_a_name_is_refused_or_stays_one_directory_below(tmp_path):
    """Hypothesis: whatever string arrives as a name, either InvalidName, or it names
    exactly one directory entry directly inside its parent (never a path)."""
    base = str(tmp_path)
    counts = Counter()

    @settings(max_examples=NAME_CASES, deadline=None)
    @given(st.one_of(st.text(), st.text(alphabet="./-_\\\x00 aZ9\n", max_size=260), st.sampled_from(BAD_NAMES)))
    def run(name):
        try:
            check_name(name)
        except InvalidName:
            counts["refused"] += 1
            return
        counts["accepted"] += 1
        joined = os.path.join(base, name)
        assert os.path.dirname(joined) == base and os.path.basename(joined) == name
        assert name not in (".", "..") and "/" not in name and "\x00" not in name and len(name) <= 249

    run()
    print(f"\n[names] {counts['refused']} refused, {counts['accepted']} accepted")
    assert counts["refused"] > NAME_CASES // 4


# ---------------------------------------------------------------- nothing unpickled or evaluated

FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "jsonpickle", "yaml"}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "input"}


def test_nothing_in_the_format_is_ever_unpickled_or_evaluated():
    """No module of kq imports a deserialiser that can run code or calls eval/exec; every
    msgpack decode rejects extension types; JSON files are parsed as data only."""
    root = os.path.dirname(kq.__file__)
    problems = []
    for name in sorted(os.listdir(root)):
        if not name.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(root, name), encoding="utf-8").read(), name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                problems += [
                    f"{name}: import {a.name}" for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES
                ]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in FORBIDDEN_MODULES:
                problems.append(f"{name}: from {node.module} import ...")
            elif isinstance(node, ast.Call):
                func = node.func
                called = (
                    func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
                )
                if isinstance(func, ast.Name) and called in FORBIDDEN_CALLS:
                    problems.append(f"{name}:{node.lineno}: {called}()")
                if called in ("unpackb", "Unpacker") and not any(k.arg == "ext_hook" for k in node.keywords):
                    problems.append(
                        f"{name}:{node.lineno}: msgpack {called}() without an ext_hook that rejects extensions"
                    )
                if called == "load" and isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "yaml":
                    problems.append(f"{name}:{node.lineno}: yaml.load")
    assert not problems, "\n".join(problems)
    # And at run time: an extension type inside a checksummed batch is corruption.
    payload = msgpack.packb([[msgpack.ExtType(1, b"\x80\x04N.")], None, None, None, None])
    length = batchfmt.HEADER_SIZE - batchfmt.PREFIX_SIZE + len(payload)
    body = struct.pack(">IqIIqqH", length, 0, 0, 1, 0, 0, 0) + payload
    data = batchfmt.MAGIC + struct.pack(">I", zlib.crc32(body)) + body
    status, header = batchfmt.check(data, 0, len(data))
    assert status == batchfmt.OK
    with pytest.raises(CorruptLog, match="extension"):
        batchfmt.decode(data, 0, header)


# ---------------------------------------------------------------- another user

INTRUDER = 65533


def test_another_users_data_directory_is_not_writable_through_kq(shared_tmp):
    """Owner and intruder are two unprivileged users. The owner's data directory,
    created by kq even under umask 000, is private: every command the intruder
    tries fails with a clear error and changes nothing. (kq has no access control
    of its own: this is the file permissions kq sets, doing their job.)"""
    home, theirs = os.path.join(shared_tmp, "owner"), os.path.join(shared_tmp, "intruder")
    for d, uid in ((home, NOBODY), (theirs, INTRUDER)):
        os.mkdir(d, 0o755)
        os.chown(d, uid, uid)
    data = os.path.join(home, "kq")
    for args, stdin in ((["produce", "t", "-K", ":"], "a:1\nb:2\n"), (["consume", "t", "-g", "g"], "")):
        r = run_as(NOBODY, data, *args, input=stdin, umask=0)
        assert r.returncode == 0, (args, r.stderr)
    mine = os.path.join(theirs, "kq")
    assert run_as(INTRUDER, mine, "produce", "t", input="planted\n").returncode == 0
    before = snapshot(data)

    for args in (
        ["produce", "t"],
        ["consume", "t"],
        ["consume", "t", "-g", "g"],
        ["topic", "create", "x"],
        ["topic", "delete", "t"],
        ["topic", "alter", "t", "--retention", "1s"],
        ["maintain"],
        ["offsets", "reset", "t", "-g", "g", "--to", "beginning"],
        ["group", "delete", "g"],
        ["replicate", "t", "--to", os.path.join(theirs, "copy")],
        ["verify", "--repair"],
    ):
        r = run_as(INTRUDER, data, *args, input="intruder\n")
        assert r.returncode != 0, (args, r.stdout, r.stderr)
        assert r.stderr.startswith(b"kq: error: ") and b"Traceback" not in r.stderr, (args, r.stderr)
    # Nor can the intruder make the owner's directory the replica of its own data.
    r = run_as(INTRUDER, mine, "replicate", "t", "--to", data)
    assert r.returncode == 1 and r.stderr.startswith(b"kq: error: "), r.stderr
    assert snapshot(data) == before, "the intruder changed the owner's data directory"
    r = run_as(NOBODY, data, "consume", "t")
    assert (r.returncode, sorted(r.stdout.split())) == (0, [b"1", b"2"]), r.stderr


def test_a_topic_another_user_owns_is_reported_never_skipped(run_kq, shared_tmp):
    """A topic directory the user cannot enter (another user's, mode 0700) is not left
    out silently: `verify` reports it as an error (exit 1, never "clean"), and
    `topic list` lists the rest, names it on stderr and exits 1."""
    from test_faults import chown_tree

    data = os.path.join(shared_tmp, "data")
    assert run_kq("produce", "mine", input="a\n", data=data).returncode == 0
    assert run_kq("produce", "theirs", input="b\n", data=data).returncode == 0
    chown_tree(data, NOBODY)
    theirs = os.path.join(data, "topics", "theirs")
    chown_tree(theirs, 0)
    os.chmod(theirs, 0o700)

    r = run_as(NOBODY, data, "verify")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"{theirs}/topic.json: error: topic unreadable: Permission denied".encode() in r.stdout, r.stdout
    assert b"clean" not in r.stderr and b"verified 2 topic(s)" in r.stderr, r.stderr
    r = run_as(NOBODY, data, "topic", "list")
    assert (r.returncode, r.stdout) == (1, b"mine\n"), r.stderr
    assert (
        r.stderr.startswith(b"kq: error: cannot read topic 'theirs': Permission denied: ")
        and theirs.encode() in r.stderr
    )
    r = run_as(NOBODY, data, "topic", "list", "--json")
    assert r.returncode == 1 and [t["name"] for t in json.loads(r.stdout)] == ["mine"], r.stderr
    # What it can read still works.
    assert run_as(NOBODY, data, "verify", "mine").returncode == 0
    assert run_as(NOBODY, data, "consume", "mine").stdout == b"a\n"
