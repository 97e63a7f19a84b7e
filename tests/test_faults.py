"""Fault injection: kill -9 at random moments, a full disk, failed fsyncs, permissions,
a read-only data directory, stale locks, odd paths and a clock that goes backwards.

The kill -9 tests follow Jepsen's checks for a history of produces, commits
and kills: no acknowledged message lost (a produce that exited 0 acknowledged
every message it read), none duplicated, offsets dense, each producer's order
kept, and ``kq verify`` clean once the next writer has recovered the log.
Kill delays come from ``random.Random(seed)``, so a failure replays.
"""

from __future__ import annotations

import fcntl
import functools
import importlib.metadata
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter, defaultdict

import pytest
from conftest import KQ, wait_for

import kq

# How many times each operation is killed with SIGKILL (the figures for the closing note).
KILLS = {
    "produce": 15,
    "concurrent produce": 8,  # rounds of three producers, each killed at its own moment
    "group commit": 8,
    "replicate": 6,
    "maintain": 6,
}
# What the kills hit: filled in as the tests run, printed with -s.
KILLS_LANDED: Counter = Counter()


# ---------------------------------------------------------------- helpers


_verify = {"available": None, "skipped": 0}


def assert_verify_clean(run_kq, *topics, data: str | None = None) -> bool:
    """`kq verify` finds nothing wrong (exit 0).

    ``kq verify`` is being written alongside these tests: while this kq has no
    such command, the step is skipped (with a warning), never faked. Returns
    whether verify ran.
    """
    if _verify["available"] is False:
        _verify["skipped"] += 1
        return False
    kwargs = {} if data is None else {"data": data}
    r = run_kq("verify", *topics, **kwargs)
    if r.returncode == 2 and b"No such command" in r.stderr:
        _verify["available"] = False
        _verify["skipped"] += 1
        warnings.warn("this kq has no `kq verify` yet: the fault tests skipped their verify step", stacklevel=2)
        return False
    _verify["available"] = True
    assert r.returncode == 0, f"kq verify found damage after recovery:\n{r.stdout.decode()}{r.stderr.decode()}"
    return True


def kq_command(data_dir: str, *args) -> list[str]:
    return KQ + ["--data-dir", data_dir] + [str(a) for a in args]


def log_of(data_dir: str, topic: str) -> dict[int, list]:
    """Every partition's records, read through the library as any reader does (no lock)."""
    t = kq.DataDir(data_dir).topic(topic)
    try:
        out = {}
        for n in range(t.partition_count):
            p = t.partition(n)
            out[n] = list(p.read(p.start_offset()))
        return out
    finally:
        t.close()


def end_offsets(data_dir: str, topic: str) -> list[int]:
    try:
        t = kq.DataDir(data_dir).topic(topic)
    except kq.KqError:
        return []
    try:
        return [t.partition(n).end_offset() for n in range(t.partition_count)]
    finally:
        t.close()


def kill_at_random_moment(proc, rng: random.Random, max_delay: float, under_way=None, what: str = "") -> bool:
    """SIGKILL ``proc`` a random delay after ``under_way()`` first holds (or after now).

    Returns True if the kill hit a running process, False if it had exited first.
    """
    if under_way is not None:
        wait_for(
            lambda: proc.poll() is not None or under_way(),
            timeout=30,
            interval=0.002,
            message=f"{what} to be under way",
        )
    time.sleep(rng.uniform(0, max_delay))  # the random moment itself, not synchronisation
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode == -signal.SIGKILL


class Pump(threading.Thread):
    """Feeds a producer's stdin numbered lines in paced chunks until stopped (or ``total``).

    ``sent`` counts the lines handed to the pipe (a chunk counts before its
    write, which a dying reader may have taken in part); a producer that
    exits 0 read them all, since stdin is closed only after the last one.
    """

    def __init__(self, proc, line, chunk: int = 200, pause: float = 0.004, total: int | None = None):
        super().__init__(daemon=True)
        self.proc, self.line, self.chunk, self.pause, self.total = proc, line, chunk, pause, total
        self.sent = 0
        self.halt = threading.Event()

    def run(self):
        try:
            while not self.halt.is_set() and (self.total is None or self.sent < self.total):
                n = self.chunk if self.total is None else min(self.chunk, self.total - self.sent)
                data = b"".join(self.line(self.sent + j) for j in range(n))
                self.sent += n
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
                self.halt.wait(self.pause)
            if self.total is not None and self.sent >= self.total:
                self.proc.stdin.close()
        except (BrokenPipeError, ValueError, OSError):
            pass

    def finish(self):
        self.halt.set()
        self.join()
        try:
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass


def stream_and_seq(value: bytes) -> tuple[bytes, int]:
    stream, _, seq = value.rpartition(b"-")
    return stream, int(seq)


def assert_dense(records_by_partition: dict[int, list]) -> None:
    for p, recs in records_by_partition.items():
        offsets = [r.offset for r in recs]
        first = offsets[0] if offsets else 0
        assert offsets == list(range(first, first + len(offsets))), f"partition {p}: offsets are not dense"


def assert_acknowledged_exactly_once(values: list[bytes], acked) -> None:
    counts = Counter(values)
    duplicated = [v for v, c in counts.items() if c > 1]
    assert not duplicated, f"{len(duplicated)} message(s) were stored twice, e.g. {duplicated[:3]}"
    lost = [v for v in acked if v not in counts]
    assert not lost, f"{len(lost)} acknowledged message(s) were lost, e.g. {lost[:3]}"


def report_kills(name: str, landed: int, planned: int) -> None:
    KILLS_LANDED[name] += landed
    print(
        f"\n[kill -9] {name}: {planned} kills, {landed} hit a running process; "
        f"verify {'ran' if _verify['available'] else 'skipped (no kq verify yet)'}"
    )


# ---------------------------------------------------------------- kill -9 during produce


def produce_killed_in_a_loop(run_kq, data_dir, topic: str, rng: random.Random, kills: int, every_kill_under_way=False):
    """Producers of ``topic`` killed with SIGKILL at random moments, ``kills`` times, each followed by a
    produce that must recover the tail; after each, every acknowledged message is in the log exactly
    once, each producer's messages are a prefix of its input, and verify is clean. Returns the kills
    that landed while the producer was writing (without ``every_kill_under_way``, every fourth kill
    may land at any moment, before the first write too)."""
    acked: list[bytes] = []
    landed = 0
    for i in range(kills):
        proc = subprocess.Popen(
            kq_command(data_dir, "produce", topic),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Every third producer gets a short input and may finish before its kill.
        total = 3000 if i % 3 == 2 else None
        pump = Pump(proc, lambda n, i=i: b"k%d-%07d\n" % (i, n), chunk=50, total=total)
        pump.start()
        before = end_offsets(data_dir, topic)[0]
        if i % 4 == 3 and not every_kill_under_way:
            under_way = None
        else:
            under_way = lambda: end_offsets(data_dir, topic)[0] > before  # noqa: E731
        landed += kill_at_random_moment(proc, rng, 0.3, under_way, "the producer")
        pump.finish()
        proc.wait()
        if proc.returncode == 0:
            acked += [b"k%d-%07d" % (i, n) for n in range(pump.sent)]
        # Recovery: the next produce truncates any torn tail and carries on.
        lines = [b"a%d-%07d" % (i, n) for n in range(50)]
        r = run_kq("produce", topic, input=b"\n".join(lines) + b"\n")
        assert r.returncode == 0, f"the produce after kill {i} failed: {r.stderr}"
        acked += lines

        log = log_of(data_dir, topic)
        assert_dense(log)
        values = [r.value for r in log[0]]
        assert_acknowledged_exactly_once(values, acked)
        by_stream = defaultdict(list)
        for v in values:
            stream, seq = stream_and_seq(v)
            by_stream[stream].append(seq)
        for stream, seqs in by_stream.items():
            # A killed producer's messages are a prefix of its input, in order.
            assert seqs == list(range(len(seqs))), f"producer {stream!r} lost a message mid-stream or reordered"
        assert_verify_clean(run_kq, topic)
    return landed


def test_kill_9_during_produce_loses_no_acknowledged_message(run_kq, data_dir):
    assert run_kq("topic", "create", "t", "--segment-bytes", "64K").returncode == 0
    landed = produce_killed_in_a_loop(run_kq, data_dir, "t", random.Random(8), KILLS["produce"])
    report_kills("produce", landed, KILLS["produce"])
    assert landed >= KILLS["produce"] // 2


def test_kill_9_during_concurrent_produce_loses_no_acknowledged_message(run_kq, data_dir):
    rng = random.Random(9)
    assert run_kq("topic", "create", "c", "--partitions", "2", "--segment-bytes", "64K").returncode == 0
    acked: list[bytes] = []
    sent_by_stream: dict[bytes, int] = {}
    keyed_streams: set[bytes] = set()
    landed = 0
    for i in range(KILLS["concurrent produce"]):
        producers = []
        # Unkeyed (round robin per batch; every other round with a short input
        # that may finish before its kill), pinned to partition 1, and keyed (murmur2).
        for name, args, total in (
            (b"u%d" % i, [], 1500 if i % 2 else None),
            (b"p%d" % i, ["-p", "1"], None),
            (b"k%d" % i, ["-K", ":"], None),
        ):
            proc = subprocess.Popen(
                kq_command(data_dir, "produce", "c", *args),
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if name.startswith(b"k"):
                keyed_streams.add(name)
                line = lambda n, name=name: b"key%d:%s-%07d\n" % (n % 5, name, n)
            else:
                line = lambda n, name=name: b"%s-%07d\n" % (name, n)
            pump = Pump(proc, line, chunk=40, total=total)
            pump.start()
            producers.append((name, proc, pump))
        before = sum(end_offsets(data_dir, "c"))
        wait_for(
            lambda: sum(end_offsets(data_dir, "c")) > before or all(p.poll() is not None for _, p, _ in producers),
            timeout=30,
            message="the producers to append",
        )
        # Each one dies at its own random moment.
        deadlines = sorted((rng.uniform(0, 0.4), n) for n in range(len(producers)))
        started = time.monotonic()
        for at, n in deadlines:
            time.sleep(max(0.0, started + at - time.monotonic()))
            name, proc, pump = producers[n]
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        for name, proc, pump in producers:
            pump.finish()
            proc.wait()
            landed += proc.returncode == -signal.SIGKILL
            sent_by_stream[name] = pump.sent
            if proc.returncode == 0:
                acked += [b"%s-%07d" % (name, n) for n in range(pump.sent)]
        # Recovery, through the library this time (the next round's producers
        # recover too): an append returns once the batch is written.
        lines = [b"a%d-%07d" % (i, n) for n in range(50)]
        t = kq.DataDir(data_dir).topic("c")
        t.partition(i % 2).append(lines)
        t.close()
        acked += lines

        log = log_of(data_dir, "c")
        assert_dense(log)
        values = [r.value for recs in log.values() for r in recs]
        assert_acknowledged_exactly_once(values, acked)
        seqs = defaultdict(lambda: defaultdict(list))  # stream -> partition -> seqs in offset order
        for p, recs in log.items():
            for r in recs:
                stream, seq = stream_and_seq(r.value)
                seqs[stream][p].append(seq)
                if stream in keyed_streams:
                    assert p == kq.partition_for_key(b"key%d" % (seq % 5), 2), "a key left its partition"
        for stream, per_partition in seqs.items():
            for p, s in per_partition.items():
                assert s == sorted(s), f"producer {stream!r} lost its order in partition {p}"
            if stream in keyed_streams:
                # Per partition, a prefix of what the producer sent there.
                for p, s in per_partition.items():
                    sent_here = [
                        n for n in range(sent_by_stream[stream]) if kq.partition_for_key(b"key%d" % (n % 5), 2) == p
                    ]
                    assert s == sent_here[: len(s)], f"producer {stream!r} skipped a message in partition {p}"
            elif not stream.startswith(b"a"):
                union = sorted(x for s in per_partition.values() for x in s)
                assert union == list(range(len(union))), f"producer {stream!r} skipped a message"
        assert_verify_clean(run_kq, "c")
    report_kills("concurrent produce", landed, KILLS["concurrent produce"] * 3)
    assert landed >= KILLS["concurrent produce"]


# ---------------------------------------------------------------- kill -9 during group commits


def read_deliveries(path: str) -> list[tuple[int, int, bytes]]:
    """(partition, offset, value) of each whole JSON line a consumer wrote before it died."""
    with open(path, "rb") as f:
        data = f.read()
    data = data[: data.rfind(b"\n") + 1]
    out = []
    for line in data.splitlines():
        obj = json.loads(line)
        out.append((obj["partition"], obj["offset"], obj["value"].encode()))
    return out


def test_kill_9_during_group_commits_never_skips_a_message(run_kq, data_dir, tmp_path):
    """A member killed at random moments while it commits: committed offsets stay readable,
    never go backwards or past the end, and every message below them was delivered."""
    rng = random.Random(10)
    assert run_kq("topic", "create", "g", "--partitions", "2").returncode == 0
    seed = [b"s-%07d" % n for n in range(500)]
    assert run_kq("produce", "g", input=b"\n".join(seed) + b"\n").returncode == 0
    acked = list(seed)
    feeder = subprocess.Popen(
        kq_command(data_dir, "produce", "g"), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    pump = Pump(feeder, lambda n: b"f-%07d\n" % n, chunk=20, pause=0.01)
    pump.start()
    delivered: set[tuple[int, int]] = set()
    delivered_values: Counter = Counter()
    previous = {0: 0, 1: 0}
    landed = 0
    groups = kq.Groups(kq.DataDir(data_dir))
    for i in range(KILLS["group commit"]):
        out_path = str(tmp_path / f"member{i}.jsonl")
        with open(out_path, "wb") as out:
            member = subprocess.Popen(
                kq_command(data_dir, "consume", "g", "-g", "grp", "-f", "--json"), stdout=out, stderr=subprocess.DEVNULL
            )
        landed += kill_at_random_moment(member, rng, 0.4, lambda: os.path.getsize(out_path) > 0, "the member")
        log = log_of(data_dir, "g")
        for p, offset, value in read_deliveries(out_path):
            assert log[p][offset].value == value, "a member delivered a value that is not in the log"
            delivered.add((p, offset))
            delivered_values[value] += 1
        committed = groups.committed("grp", "g")  # parses every offsets file: none is torn
        for p in (0, 1):
            c = committed.get(p, 0)
            assert c <= len(log[p]), f"partition {p}: committed offset {c} is past the end"
            assert c >= previous[p], f"partition {p}: the committed offset went back from {previous[p]} to {c}"
            skipped = [o for o in range(c) if (p, o) not in delivered]
            assert not skipped, (
                f"partition {p}: offsets {skipped[:5]} are below the commit point but were never delivered"
            )
            previous[p] = c
        assert_verify_clean(run_kq, "g")
    pump.finish()
    assert feeder.wait(timeout=30) == 0, feeder.stderr.read()
    acked += [b"f-%07d" % n for n in range(pump.sent)]
    # A member that runs to the end takes over from the last commit; with it,
    # every acknowledged message was delivered at least once.
    r = run_kq("consume", "g", "-g", "grp", "--json")
    assert r.returncode == 0, r.stderr
    last = tmp_path / "last.jsonl"
    last.write_bytes(r.stdout)
    for p, offset, value in read_deliveries(str(last)):
        delivered_values[value] += 1
    never = [v for v in acked if not delivered_values[v]]
    assert not never, f"{len(never)} acknowledged message(s) were never delivered, e.g. {never[:3]}"
    assert groups.committed("grp", "g") == dict(enumerate(end_offsets(data_dir, "g")))
    report_kills("group commit", landed, KILLS["group commit"])
    assert landed >= KILLS["group commit"] // 2


# ---------------------------------------------------------------- kill -9 during replicate


def test_kill_9_during_replicate_leaves_a_readable_prefix_the_next_run_completes(run_kq, data_dir, tmp_path):
    rng = random.Random(11)
    assert run_kq("topic", "create", "r", "--partitions", "2", "--segment-bytes", "512K").returncode == 0
    lines = b"".join(b"k%d:%08d-%s\n" % (k % 7, k, b"x" * 90) for k in range(30_000))
    assert run_kq("produce", "r", "-K", ":", input=lines).returncode == 0
    groups = kq.Groups(kq.DataDir(data_dir))
    landed = 0
    for i in range(KILLS["replicate"]):
        t = kq.DataDir(data_dir).topic("r")
        for p in (0, 1):
            t.partition(p).append([b"more-%d-%d-%s" % (i, n, b"y" * 90) for n in range(1500)], keys=[b"m"] * 1500)
        t.close()
        ends = end_offsets(data_dir, "r")
        for p, end in enumerate(ends):
            groups.commit("grp", "r", p, rng.randrange(end + 1))
        # Four fresh replicas copy everything; then two reused ones copy what is new.
        replica = str(tmp_path / f"replica{i % 4}")
        proc = subprocess.Popen(
            kq_command(data_dir, "replicate", "r", "--to", replica),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # The replica's topic appears (whole) just before the first batch is copied;
        # a full copy takes some 50 ms, an incremental one a few.
        landed += kill_at_random_moment(
            proc, rng, 0.05, lambda: os.path.isdir(os.path.join(replica, "topics", "r", "1")), "the copy"
        )
        src = log_of(data_dir, "r")
        if os.path.exists(os.path.join(replica, "topics", "r", "topic.json")):
            # What the killed copy left is readable and an exact prefix of the source.
            rep = log_of(replica, "r")
            for p, recs in rep.items():
                assert [(r.offset, r.value, r.timestamp) for r in recs] == [
                    (r.offset, r.value, r.timestamp) for r in src[p][: len(recs)]
                ], f"replica partition {p} is not a prefix"
            for p, offset in kq.Groups(kq.DataDir(replica)).committed("grp", "r").items():
                assert offset <= len(rep[p]), "a replica's group offset points past its data"
        r = run_kq("replicate", "r", "--to", replica)
        assert r.returncode == 0, f"the rerun after kill {i} failed: {r.stderr}"
        # The rerun completes it: every batch identical to the source's.
        assert end_offsets(replica, "r") == end_offsets(data_dir, "r")
        assert run_kq("replicate", "--verify", "r", "--to", replica).returncode == 0
        assert kq.Groups(kq.DataDir(replica)).committed("grp", "r") == groups.committed("grp", "r")
        assert_verify_clean(run_kq, "r", data=replica)
    assert_verify_clean(run_kq, "r")
    report_kills("replicate", landed, KILLS["replicate"])
    assert landed >= 1


# ---------------------------------------------------------------- kill -9 during maintain


def test_kill_9_during_maintain_keeps_latest_values_and_every_record_retention_keeps(run_kq, data_dir):
    """Compaction and retention killed at random moments, with a producer appending meanwhile:
    each key keeps its latest value, unkeyed and recent records stay exactly once."""
    rng = random.Random(12)
    data = kq.DataDir(data_dir)
    cmp_topic = data.create_topic("cmp", 1, {"segment_bytes": 4096, "cleanup": "compact"})
    ret_topic = data.create_topic("ret", 1, {"segment_bytes": 8192, "retention_ms": 86_400_000})
    cmp_topic.close()
    ret_topic.close()
    latest: dict[bytes, bytes] = {}
    unkeyed: list[bytes] = []
    retained: list[bytes] = []  # everything appended to ret, in order
    recent: set[bytes] = set()
    pdir = os.path.join(data_dir, "topics", "cmp", "0")
    landed = 0

    def write_round(i):
        t = kq.DataDir(data_dir).topic("cmp")
        p = t.partition(0)
        for r in range(60):
            keys = [b"k%d" % rng.randrange(40) for _ in range(40)]
            values = [b"v%d-%d-%d" % (i, r, n) for n in range(40)]
            p.append(values, keys=keys)
            latest.update(zip(keys, values))
            loose = [b"u%d-%d" % (i, r)]
            p.append(loose)
            unkeyed.extend(loose)
        t.close()
        t = kq.DataDir(data_dir).topic("ret")
        p = t.partition(0)
        now = int(time.time() * 1000)
        for r in range(6):
            old = [b"old%d-%d-%d" % (i, r, n) + b"." * 100 for n in range(20)]
            p.append(old, timestamp=now - 10 * 86_400_000)
            retained.extend(old)
        new = [b"new%d-%d" % (i, n) for n in range(20)]
        p.append(new, timestamp=now)
        retained.extend(new)
        recent.update(new)
        t.close()

    for i in range(KILLS["maintain"]):
        write_round(i)
        proc = subprocess.Popen(kq_command(data_dir, "maintain"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        producer = None
        if i % 2:
            # Producers are never blocked by maintenance.
            lines = [b"k%d:p%d-%d" % (n % 40, i, n) for n in range(300)]
            producer = subprocess.Popen(
                kq_command(data_dir, "produce", "cmp", "-K", ":"),
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            producer.stdin.write(b"\n".join(lines) + b"\n")
            producer.stdin.close()
        if i % 3 == 2:
            hit = kill_at_random_moment(proc, rng, 0.6, None, "maintain")
        else:
            hit = kill_at_random_moment(
                proc, rng, 0.02, lambda: any(f.endswith(".compact") for f in os.listdir(pdir)), "compaction"
            )
        landed += hit
        if producer is not None:
            assert producer.wait(timeout=30) == 0, producer.stderr.read()
            for line in lines:
                k, _, v = line.partition(b":")
                latest[k] = v

        rows = log_of(data_dir, "cmp")[0]
        offsets = [r.offset for r in rows]
        assert offsets == sorted(set(offsets)), "compaction duplicated or reordered offsets"
        values = [r.value for r in rows]
        assert_acknowledged_exactly_once(values, unkeyed + list(latest.values()))
        last_by_key = {}
        for r in rows:
            if r.key is not None:
                last_by_key[r.key] = r.value
        assert last_by_key == latest, f"a key's latest value changed after kill {i}"

        rows = log_of(data_dir, "ret")[0]
        assert_dense({0: rows})
        values = [r.value for r in rows]
        assert_acknowledged_exactly_once(values, recent)
        # Retention removes whole segments from the front: what is left is a suffix.
        assert values == retained[len(retained) - len(values) :], "retention left a hole in the log"
        assert_verify_clean(run_kq)
    assert run_kq("maintain").returncode == 0
    assert not [f for f in os.listdir(pdir) if f.endswith(".compact")]
    assert {r.key: r.value for r in log_of(data_dir, "cmp")[0] if r.key is not None} == latest
    report_kills("maintain", landed, KILLS["maintain"])
    assert landed >= 1


# ---------------------------------------------------------------- a full disk, a failed fsync

# Runs kq with its log writes (kq.engine.fileio.write_all) and fdatasync failing on demand:
# KQ_FAULT_WRITE_BUDGET bytes go through, then a short write and ENOSPC;
# KQ_FAULT_FDATASYNC_EIO makes every fdatasync fail with EIO.
FAULTY_KQ = r"""
import errno, os, sys
import kq.engine.fileio as fileio

budget = int(os.environ.get("KQ_FAULT_WRITE_BUDGET", "-1"))
real_write_all = fileio.write_all
failures = []

def write_all(fd, *chunks):
    global budget
    if fd == sys.stdout.fileno():
        return real_write_all(fd, *chunks)  # the data directory's disk fills, not the output's
    size = sum(memoryview(c).nbytes for c in chunks)
    if budget >= 0 and size > budget:
        data = b"".join(bytes(c) for c in chunks)
        if budget:
            os.write(fd, data[:budget])  # a short write first, as a filling disk gives
        budget = 0
        failures.append(fd)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if budget >= 0:
        budget -= size
    real_write_all(fd, *chunks)

fileio.write_all = write_all
if os.environ.get("KQ_FAULT_FDATASYNC_EIO"):
    def fdatasync(fd):
        failures.append(fd)
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    os.fdatasync = fdatasync
import kq.engine.partition, kq.groups.store  # bind the patched functions where they are imported by name
from kq.cli import main
sys.argv[0] = "kq"
try:
    main()
finally:
    if not failures:
        print("FAULT-NOT-INJECTED", file=sys.stderr)
"""


def faulty_kq_command(data_dir, *args) -> list[str]:
    return [sys.executable, "-c", FAULTY_KQ, "--data-dir", data_dir, *map(str, args)]


def produce_paced(
    command, lines: list[bytes], chunk: int, pause: float, ready=None, **popen
) -> subprocess.CompletedProcess:
    """Feed ``lines`` to a producer ``chunk`` at a time, ``pause`` apart, so they form several batches.

    With ``ready``, the first line goes alone and the rest only once
    ``ready()`` (it was appended), so that lines piling up in the pipe while
    the producer starts do not all land in its first batch.
    """
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **popen)
    first = 0
    if ready is not None:
        proc.stdin.write(lines[0] + b"\n")
        proc.stdin.flush()
        wait_for(lambda: proc.poll() is not None or ready(), timeout=30, message="the producer's first batch")
        first = 1
    pump = Pump(proc, lambda n: lines[n + first] + b"\n", chunk=chunk, pause=pause, total=len(lines) - first)
    pump.start()
    stderr = proc.stderr.read()
    proc.wait(timeout=60)
    pump.finish()
    return subprocess.CompletedProcess(command, proc.returncode, b"", stderr)


def assert_clear_failure(r) -> None:
    """Exit 1 with one `kq: error:` line (no traceback), after the injected fault happened."""
    assert b"FAULT-NOT-INJECTED" not in r.stderr, "the injected fault never happened"
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = r.stderr.decode(errors="replace").splitlines()
    assert len(lines) == 1 and lines[0].startswith("kq: error: "), r.stderr


def written_note(records: int) -> bytes:
    """How a failed produce says how much of its input it appended (so that a rerun can skip it)."""
    if records == 0:
        return b"; nothing was written"
    return f"; {records:,} record{'' if records == 1 else 's'} {'was' if records == 1 else 'were'} written before the error".encode()


def lines_of(prefix: str, n: int, width: int = 60) -> list[bytes]:
    return [f"{prefix}-{k:07d}-".encode().ljust(width, b".") for k in range(n)]


def check_after_a_failed_produce(run_kq, data_dir, before: list[bytes], failed: list[bytes]) -> int:
    """The log is readable, earlier messages are there once, the failed run left whole
    batches only (a prefix of its input), and a later produce succeeds.

    Returns how many of the failed run's messages were kept (whole batches written
    before the failure; never acknowledged, since the run exited 1).
    """
    rows = log_of(data_dir, "t")[0]
    assert [r.offset for r in rows] == list(range(len(rows)))
    values = [r.value for r in rows]
    assert values[: len(before)] == before, "a message acknowledged before the disk filled was lost"
    rest = values[len(before) :]
    assert rest == failed[: len(rest)], "the failed produce left something other than whole batches of its input"
    after = lines_of("after", 100)
    r = run_kq("produce", "t", input=b"\n".join(after) + b"\n")
    assert r.returncode == 0, r.stderr
    r = run_kq("consume", "t")
    assert r.returncode == 0 and r.stdout.split(b"\n")[:-1] == values + after, r.stderr
    assert_verify_clean(run_kq, "t")
    return len(rest)


@pytest.mark.parametrize("room", [20_000, 0], ids=["fills-mid-produce", "already-full"])
def test_disk_full_fails_the_produce_clearly_and_loses_nothing_acknowledged(run_kq, data_dir, room):
    """RLIMIT_FSIZE in the producer: writes past the limit fail with EFBIG after a short write."""
    before = lines_of("before", 200)
    assert run_kq("produce", "t", input=b"\n".join(before) + b"\n").returncode == 0
    segment = os.path.join(data_dir, "topics", "t", "0", f"{0:020d}.log")
    limit = os.path.getsize(segment) + room

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    failed = lines_of("failed", 2000)
    r = produce_paced(
        kq_command(data_dir, "produce", "t"),
        failed,
        chunk=100,
        pause=0.06,
        ready=(lambda: end_offsets(data_dir, "t")[0] > len(before)) if room else None,
        preexec_fn=small_disk,
    )
    assert_clear_failure(r)
    assert os.path.getsize(segment) <= limit
    kept = check_after_a_failed_produce(run_kq, data_dir, before, failed)
    assert (kept > 0) == (room > 0), "expected the disk to fill after some batches (or at once)"
    assert written_note(kept) in r.stderr, f"the error does not say that {kept} records were written: {r.stderr!r}"


@pytest.mark.parametrize("budget", [0, 7_000], ids=["first-write", "after-some-batches"])
def test_enospc_mid_write_truncates_the_torn_batch_and_keeps_acknowledged_messages(run_kq, data_dir, budget):
    """An injected ENOSPC after a short write: the partial batch is cut off, not left as a torn tail."""
    before = lines_of("before", 200)
    assert run_kq("produce", "t", input=b"\n".join(before) + b"\n").returncode == 0
    segment = os.path.join(data_dir, "topics", "t", "0", f"{0:020d}.log")
    size = os.path.getsize(segment)
    failed = lines_of("failed", 300)
    r = produce_paced(
        faulty_kq_command(data_dir, "produce", "t"),
        failed,
        chunk=20,
        pause=0.06,
        ready=(lambda: end_offsets(data_dir, "t")[0] > len(before)) if budget else None,
        env={**os.environ, "KQ_FAULT_WRITE_BUDGET": str(budget)},
    )
    assert_clear_failure(r)
    assert b"No space left on device" in r.stderr
    # What is in the file is whole batches: the short write was truncated away.
    assert kq.DataDir(data_dir).topic("t").partition(0).damaged_tail() is None
    assert os.path.getsize(segment) <= size + budget
    kept = check_after_a_failed_produce(run_kq, data_dir, before, failed)
    assert (kept > 0) == (budget > 0), "expected the disk to fill after some batches (or at once)"
    assert written_note(kept) in r.stderr, f"the error does not say that {kept} records were written: {r.stderr!r}"


def test_failed_fsync_is_never_acknowledged(run_kq, data_dir):
    before = lines_of("before", 50)
    assert run_kq("produce", "t", input=b"\n".join(before) + b"\n").returncode == 0
    failed = lines_of("synced", 50)
    r = subprocess.run(
        faulty_kq_command(data_dir, "produce", "t", "--sync"),
        input=b"\n".join(failed) + b"\n",
        capture_output=True,
        env={**os.environ, "KQ_FAULT_FDATASYNC_EIO": "1"},
        timeout=60,
    )
    assert_clear_failure(r)
    assert b"Input/output error" in r.stderr
    rows = run_kq("consume", "t").stdout.split(b"\n")[:-1]
    assert rows == before, "a batch whose fsync failed is visible"
    check_after_a_failed_produce(run_kq, data_dir, before, [])


def test_disk_full_during_a_group_commit_keeps_the_previous_commit(run_kq, data_dir):
    assert run_kq("produce", "t", input="a\nb\n").returncode == 0
    assert run_kq("consume", "t", "-g", "g").stdout == b"a\nb\n"
    assert run_kq("produce", "t", input="c\nd\n").returncode == 0
    r = subprocess.run(
        faulty_kq_command(data_dir, "consume", "t", "-g", "g"),
        capture_output=True,
        env={**os.environ, "KQ_FAULT_WRITE_BUDGET": "0"},
        timeout=60,
    )
    assert_clear_failure(r)
    assert b"No space left on device" in r.stderr
    assert os.path.join("groups", "g", "t", "0.offset").encode() in r.stderr, "the error does not name the file"
    assert r.stdout == b"c\nd\n"  # written out, but not committed
    offsets_dir = os.path.join(data_dir, "groups", "g", "t")
    assert not [n for n in os.listdir(offsets_dir) if ".tmp-" in n], "a failed commit left its temporary file"
    assert kq.Groups(kq.DataDir(data_dir)).committed("g", "t") == {0: 2}
    # At least once: the next member gets the uncommitted messages again.
    assert run_kq("consume", "t", "-g", "g").stdout == b"c\nd\n"


# ---------------------------------------------------------------- another user: read-only, one partition denied

NOBODY = 65534


@functools.cache
def _other_user_site() -> tuple[str, dict] | str:
    """A copy of kq's dependencies that another user can import, and the env to use it.

    The test interpreter's site-packages may sit under a home directory other
    users cannot enter; kq itself is imported from its source tree.
    Returns (base directory, env) or a reason to skip.
    """
    if os.geteuid() != 0:
        return "needs root to run kq as another user"
    if shutil.which("setpriv") is None:
        return "needs setpriv (util-linux) to run kq as another user"
    import atexit

    base = tempfile.mkdtemp(prefix="kq-other-user-", dir="/tmp")
    atexit.register(shutil.rmtree, base, True)
    os.chmod(base, 0o755)
    site = os.path.join(base, "site")
    wanted, todo = {}, ["kq-log"]  # the distribution's name (the package is kq)
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in wanted:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        wanted[key] = dist
        todo += [re.match(r"[A-Za-z0-9._-]+", req).group(0) for req in dist.requires or [] if "extra ==" not in req]
    for key, dist in wanted.items():
        if key == "kq-log":
            continue
        for f in dist.files or []:
            src = str(f.locate())
            if str(f).startswith("..") or not os.path.isfile(src):
                continue
            dst = os.path.join(site, str(f))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(src, dst)
    for root, dirs, files in os.walk(base):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
    source_tree = os.path.dirname(os.path.dirname(os.path.abspath(kq.__file__)))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([site, source_tree]),
        "HOME": "/nonexistent",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.pop("KQ_DATA_DIR", None)
    probe = subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            sys.executable,
            "-m",
            "kq",
            "--version",
        ],
        env=env,
        cwd="/",
        capture_output=True,
    )
    if probe.returncode != 0:
        return f"kq does not start as uid {NOBODY}: {probe.stderr.decode(errors='replace')[-300:]}"
    return base, env


def run_as(
    uid: int, data: str, *args, input: bytes | str = b"", umask: int | None = None
) -> subprocess.CompletedProcess:
    """Run ``kq --data-dir DATA ARGS`` as ``uid`` (and the same gid, no other groups)."""
    site = _other_user_site()
    if isinstance(site, str):
        pytest.skip(site)
    _, env = site
    if isinstance(input, str):
        input = input.encode()
    return subprocess.run(
        [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            sys.executable,
            "-m",
            "kq",
            "--data-dir",
            data,
            *map(str, args),
        ],
        input=input,
        capture_output=True,
        env=env,
        cwd="/",
        timeout=60,
        preexec_fn=None if umask is None else (lambda: os.umask(umask)),
    )


def snapshot(path: str) -> dict:
    """Every file and directory under ``path``: mode, owner, size and content."""
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(root, name)
            st = os.lstat(full)
            content = None
            if os.path.isfile(full) and not os.path.islink(full):
                with open(full, "rb") as f:
                    content = f.read()
            out[os.path.relpath(full, path)] = (st.st_mode, st.st_uid, st.st_size, content)
    return out


def chown_tree(path: str, uid: int) -> None:
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, uid)
    os.lchown(path, uid, uid)


def assert_refused(r, why: bytes = b"Permission denied") -> None:
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert r.stderr.startswith(b"kq: error: ") and b"Traceback" not in r.stderr, r.stderr
    assert why in r.stderr, r.stderr


def test_read_only_data_directory_serves_readers_and_refuses_writers_clearly(run_kq, shared_tmp):
    data = os.path.join(shared_tmp, "data")
    assert run_kq("topic", "create", "t", "--partitions", "2", data=data).returncode == 0
    assert run_kq("produce", "t", "-K", ":", input="a:1\nb:2\nc:3\n", data=data).returncode == 0
    assert run_kq("consume", "t", "-g", "g", data=data).returncode == 0
    expected = run_kq("consume", "t", "--json", data=data).stdout
    chown_tree(data, NOBODY)
    for root, dirs, files in os.walk(data):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o500)
        for f in files:
            os.chmod(os.path.join(root, f), 0o400)
    os.chmod(data, 0o500)
    before = snapshot(data)

    r = run_as(NOBODY, data, "consume", "t", "--json")
    assert (r.returncode, r.stdout) == (0, expected), r.stderr
    assert run_as(NOBODY, data, "topic", "describe", "t").returncode == 0
    assert run_as(NOBODY, data, "consume", "t", "-g", "g", "--no-commit").returncode == 0
    for args in (
        ["produce", "t"],
        ["topic", "create", "x"],
        ["consume", "t", "-g", "g2"],
        ["offsets", "reset", "t", "-g", "g", "--to", "beginning"],
    ):
        assert_refused(run_as(NOBODY, data, *args, input="z\n"))
    # Checking a read-only copy (a backup mount) works; repairing it is refused (issue #11.13).
    r = run_as(NOBODY, data, "verify")
    assert r.returncode == 0 and b"clean" in r.stderr, r.stderr
    assert_refused(run_as(NOBODY, data, "verify", "--repair"))
    assert snapshot(data) == before, "a refused command changed the read-only data directory"


def test_permission_denied_on_one_partition_fails_only_what_needs_it(run_kq, shared_tmp):
    data = os.path.join(shared_tmp, "data")
    assert run_kq("topic", "create", "t", "--partitions", "2", data=data).returncode == 0
    assert run_kq("produce", "t", "-p", "0", input="a\nb\n", data=data).returncode == 0
    assert run_kq("produce", "t", "-p", "1", input="c\n", data=data).returncode == 0
    chown_tree(data, NOBODY)
    locked = os.path.join(data, "topics", "t", "1")
    chown_tree(locked, 0)
    os.chmod(locked, 0o700)
    before = snapshot(locked)

    assert run_as(NOBODY, data, "produce", "t", "-p", "0", input="d\n").returncode == 0
    r = run_as(NOBODY, data, "consume", "t", "-p", "0")
    assert (r.returncode, r.stdout) == (0, b"a\nb\nd\n"), r.stderr
    assert_refused(run_as(NOBODY, data, "produce", "t", "-p", "1", input="e\n"))
    assert_refused(run_as(NOBODY, data, "consume", "t", "-p", "1"))
    assert_refused(run_as(NOBODY, data, "consume", "t"))
    assert_refused(run_as(NOBODY, data, "maintain"))
    assert snapshot(locked) == before
    assert run_kq("consume", "t", data=data).stdout.split() == [b"a", b"b", b"d", b"c"]


# ---------------------------------------------------------------- stale locks and leftovers

LOCK_HOLDER = r"""
import os, sys, time
import portalocker
import kq
from kq.groups.member import Member
from kq.groups.store import Groups

data_dir, replica = sys.argv[1], sys.argv[2]
held = []
def hold(path):
    fh = open(os.open(path, os.O_RDWR | os.O_CREAT, 0o600), "r+")
    portalocker.lock(fh, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)
    held.append(fh)
part = os.path.join(data_dir, "topics", "t", "0")
hold(os.path.join(part, "writer.lock"))        # a producer that died mid-append
hold(os.path.join(part, "maintain.lock"))      # a maintain that died mid-compaction
member = Member(Groups(kq.DataDir(data_dir)), "g", "t")
member.join()                                  # a consumer that died in its group
member.claim(0)
os.makedirs(replica, exist_ok=True)
hold(os.path.join(replica, "replicate.lock"))  # a replicate that died mid-copy
print("holding", flush=True)
time.sleep(120)
"""


def test_stale_locks_and_leftovers_of_a_dead_process_block_nothing(run_kq, data_dir, tmp_path):
    """Locks are flocks, which the kernel drops when their holder dies: the lock files a
    kill -9'd process leaves behind (and its temporary files) stop no one."""
    assert run_kq("produce", "t", input="a\nb\n").returncode == 0
    replica = str(tmp_path / "replica")
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, data_dir, replica], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"holding\n"
        # While it lives, its lock really is held: a producer waits.
        with pytest.raises(subprocess.TimeoutExpired):
            run_kq("produce", "t", input="blocked\n", timeout=1.0)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # Leftovers of other crashes: a commit's temporary file, a half-joined member,
    # a half-created topic, a compacted segment never swapped in.
    gdir = os.path.join(data_dir, "groups", "g", "t")
    pdir = os.path.join(data_dir, "topics", "t", "0")
    with open(os.path.join(gdir, "0.offset.tmp-999999"), "wb") as f:
        f.write(b'{"format": 1, "off')
    open(os.path.join(gdir, "members", ".00000000000000000001-999999-abcdef.joining"), "wb").close()
    os.makedirs(os.path.join(data_dir, "tmp", "create-deadbeef", "0"))
    with open(os.path.join(pdir, f"{0:020d}.log.compact"), "wb") as f:
        f.write(b"half a compaction")
    assert {os.path.basename(p) for p in os.listdir(pdir)} >= {"writer.lock", "maintain.lock"}

    started = time.monotonic()
    assert run_kq("produce", "t", input="c\n", timeout=20).returncode == 0
    r = run_kq("consume", "t", "-g", "g", timeout=20)
    assert (r.returncode, r.stdout) == (0, b"a\nb\nc\n"), r.stderr
    describe = run_kq("group", "describe", "g", "--json")
    assert describe.returncode == 0 and b"-%d-" % holder.pid not in describe.stdout, describe
    assert run_kq("offsets", "reset", "t", "-g", "g", "--to", "beginning").returncode == 0
    assert run_kq("maintain", timeout=20).returncode == 0
    assert run_kq("replicate", "t", "--to", replica, timeout=20).returncode == 0
    assert run_kq("topic", "list").stdout == b"t\n"  # not the half-created one
    assert time.monotonic() - started < 20, "something waited on a dead process's lock"
    assert run_kq("consume", "t", "-g", "g").stdout == b"a\nb\nc\n"
    assert_verify_clean(run_kq)


# ---------------------------------------------------------------- odd paths

ODD_NAMES = [
    pytest.param(["dir with spaces", "dätä ✓ ünï", "kq data"], id="spaces-and-non-ascii"),
    pytest.param([os.fsdecode(b"not-utf8-\xff\xfe"), "-leading dash", "tab\there"], id="non-utf8-bytes"),
]


@pytest.mark.parametrize("parts", ODD_NAMES)
def test_data_directory_on_an_odd_path_works_end_to_end(run_kq, tmp_path, parts):
    data = str(tmp_path.joinpath(*parts))
    replica = str(tmp_path.joinpath(*parts[:-1], "réplica ☃"))
    assert run_kq("produce", "t", "-K", ":", "--partitions", "2", input="a:1\nb:2\nc:3\n", data=data).returncode == 0
    r = run_kq("consume", "t", "-g", "g", data=data)
    assert r.returncode == 0 and sorted(r.stdout.split()) == [b"1", b"2", b"3"], r.stderr
    for args in (
        ["topic", "describe", "t"],
        ["offsets", "show", "t"],
        ["maintain"],
        ["replicate", "t", "--to", replica],
        ["replicate", "--verify", "t", "--to", replica],
    ):
        r = run_kq(*args, data=data)
        assert r.returncode == 0, (args, r.stderr)
    r = run_kq("consume", "t", data=None, env={"KQ_DATA_DIR": replica})
    assert sorted(r.stdout.split()) == [b"1", b"2", b"3"], r.stderr
    r = run_kq("consume", "nope", data=data)
    assert r.returncode == 1 and r.stderr.startswith(b"kq: error: ") and b"Traceback" not in r.stderr
    assert_verify_clean(run_kq, data=data)


# ---------------------------------------------------------------- a clock that goes backwards

# kq with its wall clock fixed at KQ_FAKE_NOW_MS: a produce stamps records with it.
CLOCK_KQ = r"""
import os, sys, time
now_ns = int(os.environ["KQ_FAKE_NOW_MS"]) * 1_000_000
time.time_ns = lambda: now_ns
time.time = lambda: now_ns / 1e9
from kq.cli import main
sys.argv[0] = "kq"
main()
"""


def test_clock_going_backwards_keeps_offsets_ordered_and_timestamp_seeks_right(run_kq, data_dir):
    """Records stamped by a wall clock that jumps back between (and within) produces:
    offsets stay dense and in order, and `-o @T` starts at the first record in
    offset order whose timestamp is >= T."""
    assert run_kq("topic", "create", "t", "--segment-bytes", "4K").returncode == 0
    stamps = []
    pad = "." * 90
    for round_, clock in enumerate([50_000, 80_000, 20_000, 90_000, 10_000]):
        # Records stamped by the (fake) clock, then explicit timestamps going back
        # within the batch too.
        lines = [{"value": f"r{round_}-{n}{pad}"} for n in range(30)]
        lines += [{"value": f"j{round_}-{n}{pad}", "timestamp": clock + 5_000 - n * 400} for n in range(20)]
        r = subprocess.run(
            [sys.executable, "-c", CLOCK_KQ, "--data-dir", data_dir, "produce", "t", "--json"],
            input="".join(json.dumps(x) + "\n" for x in lines).encode(),
            capture_output=True,
            env={**os.environ, "KQ_FAKE_NOW_MS": str(clock)},
        )
        assert r.returncode == 0, r.stderr
        stamps += [x.get("timestamp", clock) for x in lines]
    rows = [json.loads(line) for line in run_kq("consume", "t", "--json").stdout.splitlines()]
    assert [row["offset"] for row in rows] == list(range(len(stamps)))
    assert [row["timestamp"] for row in rows] == stamps
    assert len(kq.DataDir(data_dir).topic("t").partition(0).segments()) > 3, "expected several segments"

    part = kq.DataDir(data_dir).topic("t").partition(0)
    for target in sorted(set(stamps) | {0, 15_000, 55_555, 84_999, 94_999, 95_000, 10**12}):
        want = next((o for o, ts in enumerate(stamps) if ts >= target), len(stamps))
        assert part.offset_for_timestamp(target) == want, target
    for target in (55_555, 94_600, 10**12):
        want = next((o for o, ts in enumerate(stamps) if ts >= target), len(stamps))
        r = run_kq("consume", "t", "-o", f"@{target}", "-n", "1", "-F", "%o")
        assert r.returncode == 0 and r.stdout == (str(want).encode() if want < len(stamps) else b""), (target, r)


def test_a_failed_write_ends_the_produce_without_waiting_for_more_input(run_kq, data_dir):
    assert run_kq("produce", "t", input="before\n").returncode == 0
    limit = os.path.getsize(os.path.join(data_dir, "topics", "t", "0", f"{0:020d}.log"))

    def full_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.Popen(
        kq_command(data_dir, "produce", "t"),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=full_disk,
    )
    try:
        proc.stdin.write(b"lost\n")  # and no more for now, as from tail -F
        proc.stdin.flush()
        try:
            code = proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            code = None
        assert code == 1, "the produce is still waiting for input after its write failed"
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stderr.close()


def test_a_topic_trimmed_mid_batch_still_replicates(run_kq, data_dir, tmp_path):
    assert run_kq("produce", "t", input="".join(f"{n}\n" for n in range(10))).returncode == 0
    assert run_kq("topic", "trim", "t", "--before", "3").returncode == 0
    replica = str(tmp_path / "replica")
    r = run_kq("replicate", "t", "--to", replica)
    assert r.returncode == 0, r.stderr
    assert run_kq("consume", "t", data=replica).stdout == run_kq("consume", "t").stdout


# ---------------------------------------------------------------- something else where kq keeps a file

# Where each file lives (relative to the data directory), and the commands that
# read or write it: each must fail with one `kq: error:` line naming it, at
# once, whatever stands there instead of a regular file. `verify` must name it
# too (exit 1) and never call the data directory clean. Commands that do not
# need the file may succeed; none may hang.
PARTITION = "topics/t/0"
SEGMENT = f"{PARTITION}/{0:020d}.log"
HOSTILE_PLACES = {
    "segment": (
        SEGMENT,
        [
            ["consume", "t"],
            ["consume", "t", "-g", "g"],
            ["produce", "t"],
            ["topic", "describe", "t"],
            ["offsets", "show", "t"],
            ["replicate", "t", "--to", "REPLICA"],
            ["verify", "--repair"],
        ],
    ),
    "index": (
        f"{PARTITION}/{0:020d}.index",
        [
            ["consume", "t"],
            ["produce", "t"],
            ["topic", "describe", "t"],
            ["consume", "t", "-o", "@1500"],
            ["verify", "--repair"],
        ],
    ),
    "start.offset": (
        f"{PARTITION}/start.offset",
        [
            ["consume", "t"],
            ["consume", "t", "-g", "g2"],
            ["topic", "describe", "t"],
            ["offsets", "show", "t"],
            ["topic", "trim", "t", "--before", "3"],
            ["verify", "--repair"],
        ],
    ),
    "topic.json": (
        "topics/t/topic.json",
        [
            ["consume", "t"],
            ["produce", "t"],
            ["topic", "describe", "t"],
            ["topic", "list"],
            ["topic", "list", "--json"],
            ["maintain"],
            ["topic", "alter", "t", "--retention", "2d"],
            ["group", "describe", "g"],
            ["replicate", "--all", "--to", "REPLICA"],
            ["verify", "--repair"],
        ],
    ),
    "kq.json": (
        "kq.json",
        [
            ["consume", "t"],
            ["produce", "t"],
            ["topic", "list"],
            ["group", "list"],
            ["topic", "create", "u"],
            ["verify"],
        ],
    ),
    "writer.lock": (f"{PARTITION}/writer.lock", [["produce", "t"], ["verify", "--repair"]]),
    "maintain.lock": (
        f"{PARTITION}/maintain.lock",
        [["maintain"], ["topic", "trim", "t", "--before", "3"], ["verify", "--repair"]],
    ),
    "P.offset": (
        "groups/g/t/0.offset",
        [
            ["consume", "t", "-g", "g"],
            ["offsets", "show", "t"],
            ["offsets", "reset", "t", "-g", "g", "--to", "0"],
            ["group", "describe", "g"],
            ["replicate", "t", "--to", "REPLICA"],
        ],
    ),
    "P.lock": ("groups/g/t/0.lock", [["consume", "t", "-g", "g"], ["group", "describe", "g"], ["verify", "--repair"]]),
    "member": (
        "groups/g/t/members/00000000000000000001-1-abcdef.member",
        [
            ["consume", "t", "-g", "g"],
            ["group", "describe", "g"],
            ["group", "delete", "g"],
            ["offsets", "reset", "t", "-g", "g", "--to", "0"],
            ["verify", "--repair"],
        ],
    ),
    "partition directory": (
        PARTITION,
        [["consume", "t"], ["produce", "t"], ["topic", "describe", "t"], ["verify", "--repair"]],
    ),
}


def plant(path: str, kind: str) -> None:
    """Put a ``kind`` of non-regular file at ``path`` (moving aside what is there)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    elif kind == "directory":
        os.mkdir(path, 0o700)
        open(os.path.join(path, "x"), "wb").close()  # not empty: nothing may remove it
    elif kind == "socket":
        import socket

        short = tempfile.mkdtemp(prefix="kq-sock-")  # a socket's path has at most 107 bytes
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(os.path.join(short, "s"))  # the socket file stays after close
        os.rename(os.path.join(short, "s"), path)
        os.rmdir(short)
    else:
        raise ValueError(kind)


@pytest.fixture(scope="module")
def hostile_template(tmp_path_factory):
    """A data directory with every kind of file: segments and an index, a start
    offset, retention, a group's committed offset; copied fresh for each run."""
    path = str(tmp_path_factory.mktemp("hostile") / "data")
    data = kq.DataDir(path)
    t = data.create_topic("t", 1, {"retention_ms": 86_400_000})
    for i in range(4):
        t.partition(0).append([b"%d-a" % i + b"x" * 1000, b"%d-b" % i + b"x" * 1000], timestamp=1000 + i * 1000)
    t.close()
    kq.Groups(data).commit("g", "t", 0, 2)
    kq.DataDir(path).topic("t").partition(0).set_start_offset(1)  # inside the first batch
    part = os.path.join(path, PARTITION)
    assert {f"{0:020d}.index", "start.offset", "writer.lock"} <= set(os.listdir(part))
    return path


def run_on_hostile_copy(template: str, workdir: str, place: str, kind: str, args: list[str]):
    data = os.path.join(workdir, "data")
    shutil.copytree(template, data)
    plant(os.path.join(data, place), kind)
    args = [os.path.join(workdir, "replica") if a == "REPLICA" else a for a in args]
    try:
        r = subprocess.run(kq_command(data, *args), input=b"x\n", capture_output=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"kq {' '.join(args)} hung on a {kind} at {place}") from None
    return data, r


@pytest.mark.parametrize("what", sorted(HOSTILE_PLACES))
def test_a_fifo_directory_or_socket_where_a_file_belongs_is_a_clear_error(hostile_template, tmp_path, what):
    """Never a hang (a FIFO blocks open() until a writer comes), a traceback or
    "Is a directory" without a name: each command that needs the file fails
    naming it, and verify reports it rather than skipping it."""
    import concurrent.futures

    place, commands = HOSTILE_PLACES[what]
    kinds = ("fifo", "socket") if what == "partition directory" else ("fifo", "directory", "socket")
    runs = [(kind, args) for kind in kinds for args in commands]
    if ["verify", "--repair"] in commands:
        runs += [(kind, ["verify"]) for kind in kinds[:2]]

    def one(i_run):
        i, (kind, args) = i_run
        return kind, args, run_on_hostile_copy(hostile_template, str(tmp_path / str(i)), place, kind, args)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(one, enumerate(runs)))
    for kind, args, (data, r) in results:
        where = f"kq {' '.join(args)} with a {kind} at {place}"
        full = os.path.join(data, place)
        assert b"Traceback" not in r.stderr, f"{where}: {r.stderr.decode()}"
        assert r.returncode == 1, f"{where}: exit {r.returncode}\n{r.stdout.decode()}{r.stderr.decode()}"
        if args[0] == "verify":
            assert full.encode() in r.stdout + r.stderr, (
                f"{where} did not name it:\n{r.stdout.decode()}{r.stderr.decode()}"
            )
            assert b": clean" not in r.stderr
        else:
            lines = r.stderr.decode().splitlines()  # informational "kq: ..." lines may come first
            assert lines and all(line.startswith("kq: ") for line in lines), f"{where}: {r.stderr}"
            errors = [line for line in lines if line.startswith("kq: error: ")]
            assert errors and all(full in line for line in errors), (
                f"{where} did not name the file: {r.stderr.decode()}"
            )
        # Nothing kq did not write was removed or replaced.
        assert os.path.lexists(full) and not os.path.isfile(full), f"{where} removed or replaced it"


def test_a_fifo_as_the_replicas_lock_file_is_a_clear_error(run_kq, data_dir, tmp_path):
    assert run_kq("produce", "t", input="a\n").returncode == 0
    replica = tmp_path / "replica"
    replica.mkdir()
    os.mkfifo(replica / "replicate.lock")
    r = run_kq("replicate", "t", "--to", replica, timeout=30)
    assert_refused(r, str(replica / "replicate.lock").encode())


@pytest.mark.parametrize("limit", [1_500_000, 2_600_000])
def test_a_consumer_whose_output_fills_commits_only_what_reached_it(run_kq, data_dir, tmp_path, limit):
    """`kq consume t -g g >> archive` on a disk that fills: the group's position never passes the
    records the file holds (a short write used to pass for a whole one)."""
    lines = [f"{n:06d}".encode() + b"x" * 1000 for n in range(5000)]
    assert run_kq("produce", "t", input=b"\n".join(lines) + b"\n").returncode == 0
    archive = tmp_path / "archive"

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    with open(archive, "wb") as out:
        r = subprocess.run(
            kq_command(data_dir, "consume", "t", "-g", "g"), stdout=out, stderr=subprocess.PIPE, preexec_fn=small_disk
        )
    assert r.returncode == 1 and r.stderr.startswith(b"kq: error: ") and b"File too large" in r.stderr
    whole = archive.read_bytes().count(b"\n")
    [row] = json.loads(run_kq("offsets", "show", "t", "-g", "g", "--json").stdout)
    assert (row["committed"] or 0) <= whole
    # The rerun (with room) resumes there: every record reaches the archive, none is skipped.
    with open(archive, "ab") as out:
        out.truncate(archive.stat().st_size - len(archive.read_bytes().rpartition(b"\n")[2]))
        assert subprocess.run(kq_command(data_dir, "consume", "t", "-g", "g"), stdout=out).returncode == 0
    got = archive.read_bytes().splitlines()
    assert sorted(set(got)) == lines


def test_a_group_reader_that_leaves_mid_round_commits_nothing_that_never_entered_the_pipe(run_kq, data_dir):
    """A reader that stops (`kq consume t -g g | head -c 8K`) in the middle of a large write: the
    write was short without an error, and the whole round used to be committed."""
    size = 300_000  # each record's write is larger than the pipe
    lines = [f"{n:06d}".encode() + b"x" * (size - 7) for n in range(20)]
    assert run_kq("produce", "t", input=b"\n".join(lines) + b"\n").returncode == 0
    p = subprocess.Popen(
        kq_command(data_dir, "consume", "t", "-g", "g", "-n", "3"), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    pipe_room = fcntl.fcntl(p.stdout.fileno(), fcntl.F_GETPIPE_SZ)  # what the pipe held beyond what was read
    p.stdout.read(8192)
    p.stdout.close()
    assert (p.wait(timeout=30), p.stderr.read()) == (0, b"")
    [row] = json.loads(run_kq("offsets", "show", "t", "-g", "g", "--json").stdout)
    assert (row["committed"] or 0) * size <= 8192 + pipe_room
