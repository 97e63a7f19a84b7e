"""`kq verify [--repair]` on real files: what it reports, what it repairs, and
that a repair never loses a valid record or serves a damaged one.

Logs are written with the library (fast, and batch by batch); everything
under test runs through the command."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import threading

import portalocker
from conftest import wait_for

import kq
from kq.engine import batch as batchfmt
from kq.engine.index import ENTRY_SIZE
from kq.engine.segment import BatchReader

ROW_KEYS = {"topic", "partition", "file", "position", "problem", "severity"}
GAP_NOTE = "(only compaction, or a repair that quarantined them, leaves gaps)"


def segment_path(data_dir, base=0, suffix=".log"):
    return os.path.join(data_dir, "topics", "t", "0", f"{base:020d}{suffix}")


def offsets_path(data_dir, group="g"):
    directory = os.path.join(data_dir, "groups", group, "t")
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, "0.offset")


def batch_positions(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        return [pos for pos, _, _, _ in BatchReader(fd, path, 0).headers()]
    finally:
        os.close(fd)


def small_batches(data_dir, n):
    """n batches of two records each: b0-x b0-y b1-x ..."""
    t = kq.DataDir(data_dir).create_topic("t", 1)
    for i in range(n):
        t.partition(0).append([b"b%d-x" % i, b"b%d-y" % i])
    t.close()


def many_segments(data_dir, records=1500, segment_bytes=64 * 1024):
    """Several segments with indexes: one record per batch, timestamp 1_000_000 + offset."""
    t = kq.DataDir(data_dir).create_topic("t", 1, {"segment_bytes": segment_bytes})
    p = t.partition(0)
    for i in range(records):
        p.append([b"v%05d" % i + b"." * 100], timestamp=1_000_000 + i)
    t.close()
    return p.segments()


def lines(result):
    return result.stdout.decode().splitlines()


def test_a_clean_data_directory_verifies_with_exit_0(run_kq, data_dir):
    many_segments(data_dir, records=600)
    assert run_kq("produce", "other", "--partitions", "3", input="a\nb\nc\nd\n").returncode == 0
    assert run_kq("consume", "t", "-g", "g", "-n", "10").returncode == 0
    r = run_kq("verify")
    assert (r.returncode, r.stdout) == (0, b""), r.stdout + r.stderr
    assert b"verified 2 topic(s), 4 partition(s), 5 segment(s)" in r.stderr and r.stderr.endswith(b": clean\n")
    r = run_kq("-q", "verify", "t", "--json")
    assert (r.returncode, json.loads(r.stdout), r.stderr) == (0, [], b"")


def test_torn_tail_is_reported_then_truncated(run_kq, data_dir):
    # The state a kill -9 mid-append leaves: crash debris (a warning, exit 0), not corruption.
    small_batches(data_dir, 3)
    path = segment_path(data_dir)
    healthy = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(batchfmt.encode(6, [b"torn-1", b"torn-2"], timestamp=1)[:30])
    r = run_kq("verify")
    assert r.returncode == 0, r.stdout + r.stderr
    assert lines(r) == [
        f"{path}: position {healthy}: warning: torn tail: 30 byte(s) after the last valid batch "
        "(incomplete batch at end of file): crash debris of an append never acknowledged, which the next writer cuts"
    ]
    assert r.stderr.endswith(b": 0 error(s), 1 warning(s)\n")
    assert os.path.getsize(path) == healthy + 30  # verify only looks
    r = run_kq("verify", "--repair")
    assert r.returncode == 0, r.stdout + r.stderr
    assert lines(r)[0].endswith(
        f" -> truncated the segment to {healthy} bytes: dropped 30 byte(s) of an "
        "incomplete write, as the next producer would"
    )
    assert os.path.getsize(path) == healthy
    assert run_kq("consume", "t").stdout == b"b0-x\nb0-y\nb1-x\nb1-y\nb2-x\nb2-y\n"


def test_flipped_byte_mid_log_is_quarantined_and_every_other_record_served(run_kq, data_dir):
    small_batches(data_dir, 5)
    path = segment_path(data_dir)
    positions = batch_positions(path)
    data = bytearray(open(path, "rb").read())
    data[positions[2] + batchfmt.HEADER_SIZE + 2] ^= 0x01  # inside the third batch's payload
    open(path, "wb").write(data)
    damaged = bytes(data[positions[2] : positions[3]])
    r = run_kq("verify")
    assert r.returncode == 1
    assert lines(r) == [
        f"{path}: position {positions[2]}: error: checksum mismatch: {len(damaged)} damaged "
        f"byte(s) before the valid batch at byte {positions[3]}"
    ]
    r = run_kq("verify", "--repair")
    assert r.returncode == 0, r.stdout + r.stderr
    quarantine = f"{path}.quarantine-{positions[2]}"
    assert (
        f" -> moved bytes {positions[2]}..{positions[3] - 1} ({len(damaged)} bytes) to {quarantine}; "
        "the batches after them stay in the segment" in r.stdout.decode()
    )
    assert open(quarantine, "rb").read() == damaged  # exactly the damaged batch, nothing else
    assert run_kq("produce", "t", input="after\n").returncode == 0  # the writer carries on at the end
    r = run_kq("consume", "t", "-F", "%o %s\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == [
        "0 b0-x",
        "1 b0-y",
        "2 b1-x",
        "3 b1-y",
        "6 b3-x",
        "7 b3-y",
        "8 b4-x",
        "9 b4-y",
        "10 after",
    ]
    # What is left is said, and is no error: the gap, and where its bytes went.
    r = run_kq("verify")
    assert r.returncode == 0
    assert lines(r) == [
        f"{path}: position {positions[2]}: warning: offsets skip from 4 to 6: records 4..5 are missing {GAP_NOTE}",
        f"{quarantine}: info: {len(damaged)} byte(s) quarantined by an earlier repair: not served; inspect, then remove",
    ]


def test_damage_at_the_end_of_a_closed_segment_is_quarantined(run_kq, data_dir):
    bases = many_segments(data_dir)
    first = segment_path(data_dir, bases[0])
    size = os.path.getsize(first)
    last_batch = batch_positions(first)[-1]
    original = open(first, "rb").read()
    os.truncate(first, size - 5)  # the last batch of a closed segment loses its end
    r = run_kq("verify")
    assert r.returncode == 1
    assert lines(r) == [
        f"{first}: position {last_batch}: error: incomplete batch at end of file in a closed "
        f"segment: its last {size - 5 - last_batch} byte(s) are damaged"
    ]
    assert run_kq("consume", "t").returncode == 1  # readers refuse to pass it
    r = run_kq("verify", "--repair")
    assert r.returncode == 0, r.stdout + r.stderr
    assert open(f"{first}.quarantine-{last_batch}", "rb").read() == original[last_batch : size - 5]
    offsets = [int(x) for x in run_kq("consume", "t", "-F", "%o\n").stdout.split()]
    assert offsets == [o for o in range(1500) if o != bases[1] - 1]


# Offsets and timestamps in closed and active segments, and what consume -o
# returns for them: the records themselves, offset and timestamp.
LOOKUPS = {
    "700:703": range(700, 703),
    "1400:1403": range(1400, 1403),
    "@1000500": range(500, 503),
    "@1001300": range(1300, 1303),
}


def assert_lookups_right(run_kq, specs=LOOKUPS):
    for spec in specs:
        r = run_kq("consume", "t", "-o", spec, "-n", "3", "-F", "%o %T\n")
        assert (r.returncode, r.stdout.decode()) == (0, "".join(f"{o} {1_000_000 + o}\n" for o in LOOKUPS[spec])), spec


def test_missing_or_garbled_indexes_change_no_lookup_and_are_rebuilt(run_kq, data_dir):
    bases = many_segments(data_dir)
    assert len(bases) == 4
    paths = [segment_path(data_dir, base, ".index") for base in bases]
    originals = [open(path, "rb").read() for path in paths]
    os.unlink(paths[0])
    open(paths[1], "wb").write(os.urandom(len(originals[1])))
    open(paths[2], "wb").write(originals[2][ENTRY_SIZE:])  # every entry names the wrong batch
    open(paths[3], "wb").write(originals[3][:-5])  # the active segment's, torn by a crash
    assert_lookups_right(run_kq)  # derived data: a lookup only starts earlier
    r = run_kq("verify")
    assert r.returncode == 1
    found = lines(r)
    assert (
        found[0]
        == f"{paths[0]}: error: index out of date: missing (the segment needs {len(originals[0]) // ENTRY_SIZE} entries)"
    )
    assert found[1].startswith(f"{paths[1]}: position 0: error: index out of date: entry 0 says offset ")
    assert found[2].startswith(
        f"{paths[2]}: position 0: error: index out of date: entry 0 says offset {bases[2] + 52} at byte 8320"
    )
    assert (
        found[3]
        == f"{paths[3]}: position {len(originals[3]) - ENTRY_SIZE}: error: index out of date: a partial 19-byte entry at the end"
    )
    r = run_kq("verify", "--repair")
    assert r.returncode == 0, r.stdout + r.stderr
    assert [line.rsplit(" -> ", 1)[1] for line in lines(r)] == [
        f"rebuilt the index ({len(o) // ENTRY_SIZE} entries)" for o in originals
    ]
    assert [open(path, "rb").read() for path in paths] == originals
    assert_lookups_right(run_kq)


def test_a_wrong_timestamp_in_an_index_is_found_and_rebuilt(run_kq, data_dir):
    # Readers trust an entry's running maximum (an index has no checksum), so
    # a wrong one can misdirect `-o @T`: finding it is what verify is for.
    bases = many_segments(data_dir)
    path = segment_path(data_dir, bases[1], ".index")
    original = open(path, "rb").read()
    offset, position, running_max = struct.unpack_from(">qqq", original, 2 * ENTRY_SIZE)
    blob = bytearray(original)
    struct.pack_into(">q", blob, 2 * ENTRY_SIZE + 16, 0)
    open(path, "wb").write(blob)
    r = run_kq("verify")
    assert r.returncode == 1
    assert lines(r) == [
        f"{path}: position {2 * ENTRY_SIZE}: error: index out of date: entry 2 says offset {offset} "
        f"at byte {position} after timestamps up to 0; the segment has offset {offset} at byte "
        f"{position} after timestamps up to {running_max}"
    ]
    assert run_kq("verify", "--repair").returncode == 0
    assert open(path, "rb").read() == original
    assert_lookups_right(run_kq, ["@1000500"])


def test_a_producer_rebuilds_a_deleted_index_of_the_active_segment(run_kq, data_dir):
    many_segments(data_dir, records=300)
    index = segment_path(data_dir, suffix=".index")
    original = open(index, "rb").read()
    assert len(original) >= 5 * ENTRY_SIZE
    os.unlink(index)
    assert run_kq("produce", "t", input="one more\n").returncode == 0
    assert open(index, "rb").read() == original  # the one new batch needs no entry of its own
    r = run_kq("verify")
    assert (r.returncode, r.stdout) == (0, b"")


def test_unreadable_offsets_file_is_moved_aside_and_the_group_restarts(run_kq, data_dir):
    assert run_kq("produce", "t", input="a\nb\nc\n").returncode == 0
    assert run_kq("consume", "t", "-g", "g").stdout == b"a\nb\nc\n"
    path = offsets_path(data_dir)
    open(path, "wb").write(b'{"format": 1, "offs')  # torn by a tool that wrote it in place
    assert b"corrupt file" in run_kq("consume", "t", "-g", "g").stderr
    r = run_kq("verify")
    assert r.returncode == 1
    assert lines(r) == [f"{path}: error: offsets file of group 'g' unreadable: not JSON"]
    r = run_kq("verify", "--repair")
    assert r.returncode == 0, r.stdout + r.stderr
    assert lines(r) == [
        f"{path}: error: offsets file of group 'g' unreadable: not JSON -> moved it to {path}.quarantine; "
        "group 'g' will restart partition 0 from its reset policy (earliest by default)"
    ]
    assert open(f"{path}.quarantine", "rb").read() == b'{"format": 1, "offs'
    assert run_kq("consume", "t", "-g", "g").stdout == b"a\nb\nc\n"


def test_a_group_offset_outside_the_partition_is_a_warning(run_kq, data_dir):
    small_batches(data_dir, 1)
    path = offsets_path(data_dir)
    open(path, "w").write(json.dumps({"format": 1, "offset": 99, "committed_at": 0}))
    r = run_kq("verify")
    assert r.returncode == 0
    assert lines(r) == [f"{path}: warning: group 'g' committed offset 99, past the end offset 2"]


def test_json_gives_one_object_per_problem(run_kq, data_dir):
    small_batches(data_dir, 2)
    log, offsets = segment_path(data_dir), offsets_path(data_dir)
    healthy = os.path.getsize(log)
    with open(log, "ab") as f:
        f.write(b"\0" * 100)  # a file that grew before its data landed
    open(offsets, "wb").write(b"not json")
    r = run_kq("verify", "--json")
    assert r.returncode == 1
    rows = json.loads(r.stdout)
    assert all(set(row) == ROW_KEYS for row in rows)
    assert [(row["topic"], row["partition"], row["file"], row["position"], row["severity"]) for row in rows] == [
        ("t", 0, log, healthy, "warning"),
        ("t", 0, offsets, None, "error"),
    ]
    assert rows[0]["problem"].startswith("torn tail: 100 byte(s) after the last valid batch (bad magic): crash debris")
    r = run_kq("verify", "--repair", "--json")
    assert r.returncode == 0
    rows = json.loads(r.stdout)
    assert all(set(row) == ROW_KEYS | {"action", "repaired"} and row["repaired"] for row in rows)
    assert rows[0]["action"].startswith(f"truncated the segment to {healthy} bytes")


def test_unknown_topic_is_an_error(run_kq, data_dir):
    small_batches(data_dir, 1)
    r = run_kq("verify", "t", "nope")
    assert (r.returncode, r.stdout, r.stderr) == (1, b"", b"kq: error: topic 'nope' does not exist\n")


def test_an_append_in_progress_is_never_reported_and_repair_loses_nothing(run_kq, data_dir, spawn_kq):
    kq.DataDir(data_dir).create_topic("t", 1, {"segment_bytes": 16 * 1024})
    producer = spawn_kq("produce", "t", stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    stop = threading.Event()
    sent = [0]

    def feed():
        while not stop.is_set():
            n = sent[-1]
            producer.stdin.write("".join(f"m{i:06d}-{'x' * 50}\n" for i in range(n, n + 20)).encode())
            producer.stdin.flush()
            sent.append(n + 20)
            stop.wait(0.002)  # pace, not synchronise: keeps the log small enough to check quickly

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        for args in ("verify",), ("verify", "--repair"), ("verify",):
            r = run_kq(*args)
            assert (r.returncode, r.stdout) == (0, b""), r.stdout + r.stderr
    finally:
        stop.set()
        feeder.join()
        producer.stdin.close()
    assert producer.wait(timeout=30) == 0
    got = run_kq("consume", "t", "-F", "%o %s\n").stdout.decode().splitlines()
    assert got == [f"{i} m{i:06d}-{'x' * 50}" for i in range(sent[-1])]


def waits_for_lock(path):
    """Is some process blocked in flock() on ``path``? (Linux: a '->' line in /proc/locks)."""
    inode = f":{os.stat(path).st_ino} "
    with open("/proc/locks") as f:
        return any("->" in line and inode in line for line in f)


def test_a_half_written_append_is_checked_again_under_the_writer_lock(data_dir, spawn_kq):
    small_batches(data_dir, 2)
    path = segment_path(data_dir)
    late = batchfmt.encode(4, [b"late"], timestamp=1)
    lock_path = os.path.join(os.path.dirname(path), "writer.lock")
    with open(lock_path, "a+") as writer_lock:
        portalocker.lock(writer_lock, portalocker.LockFlags.EXCLUSIVE)  # a producer mid-append
        with open(path, "ab") as f:
            f.write(late[:20])
        verify = spawn_kq("verify")
        wait_for(lambda: waits_for_lock(lock_path), message="verify to wait for the writer lock")
        with open(path, "ab") as f:
            f.write(late[20:])  # the append completes; the producer lets go
    out, err = verify.communicate(timeout=30)
    assert (verify.returncode, out) == (0, b""), out + err


def test_a_start_offset_past_the_end_is_an_error(run_kq, data_dir):
    """A trim never moves the start past the end: a start.offset that does would make
    readers skip records appended below it. verify names the file."""
    small_batches(data_dir, 2)
    path = os.path.join(data_dir, "topics", "t", "0", "start.offset")
    kq.DataDir(data_dir).topic("t").partition(0).set_start_offset(4)  # the end: fine
    assert run_kq("verify").returncode == 0
    kq.DataDir(data_dir).topic("t").partition(0).set_start_offset(2**63 - 1)
    r = run_kq("verify")
    assert r.returncode == 1
    assert lines(r) == [
        f"{path}: error: start offset 9223372036854775807 is past the end offset 4: "
        "records appended below 9223372036854775807 would never be served"
    ]
