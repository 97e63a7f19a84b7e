"""Torn tails, corruption and index damage, on real segment files."""

from __future__ import annotations

import json
import os
import struct

import pytest

import kq
from kq.engine import batch as batchfmt
from kq.engine.index import ENTRY_SIZE


def segment_path(data_dir, topic="t", partition=0, base=0):
    return os.path.join(data_dir, "topics", topic, str(partition), f"{base:020d}.log")


def batch_positions(path):
    """Byte positions of the batches in a healthy segment."""
    data = open(path, "rb").read()
    pos, out = 0, []
    while pos < len(data):
        status, header = batchfmt.check(data, pos, len(data))
        assert status == batchfmt.OK
        out.append(pos)
        pos += batchfmt.batch_size(header)
    return out


def produce_batches(run_kq, n, topic="t"):
    for i in range(n):
        assert run_kq("produce", topic, input=f"b{i}-x\nb{i}-y\n").returncode == 0


def offsets(run_kq, topic="t"):
    return [json.loads(line)["offset"] for line in run_kq("consume", topic, "--json").stdout.splitlines()]


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(lambda good: good[: len(good) // 2], id="half-a-batch"),
        pytest.param(lambda good: good[:10], id="part-of-the-prefix"),
        pytest.param(lambda good: os.urandom(300), id="garbage"),
        pytest.param(lambda good: b"\0" * 4096, id="zeros-from-a-size-extended-file"),
    ],
)
def test_torn_tail_is_invisible_then_truncated_by_the_next_writer(run_kq, data_dir, tail):
    produce_batches(run_kq, 3)
    path = segment_path(data_dir)
    healthy_size = os.path.getsize(path)
    good = batchfmt.encode(6, [b"torn-1", b"torn-2"], timestamp=1)
    with open(path, "ab") as f:
        f.write(tail(good))
    # Readers stop quietly before the torn tail.
    r = run_kq("consume", "t")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [b"b0-x", b"b0-y", b"b1-x", b"b1-y", b"b2-x", b"b2-y"]
    # The next writer truncates it and continues with dense offsets.
    assert run_kq("produce", "t", input="after\n").returncode == 0
    assert offsets(run_kq) == list(range(7))
    assert run_kq("consume", "t", "-o", "6").stdout == b"after\n"
    assert len(batch_positions(path)) == 4
    assert os.path.getsize(path) > healthy_size


def test_flipped_byte_mid_log_is_reported_not_served(run_kq, data_dir):
    produce_batches(run_kq, 5)
    path = segment_path(data_dir)
    positions = batch_positions(path)
    victim = positions[2] + batchfmt.HEADER_SIZE + 2  # inside the third batch's payload
    data = bytearray(open(path, "rb").read())
    data[victim] ^= 0x01
    open(path, "wb").write(data)
    r = run_kq("consume", "t")
    assert r.returncode == 1
    assert r.stdout.split() == [b"b0-x", b"b0-y", b"b1-x", b"b1-y"]  # nothing from the bad batch
    assert f"corrupt log {path} at byte {positions[2]}".encode() in r.stderr
    assert b"checksum mismatch" in r.stderr and b"Traceback" not in r.stderr


@pytest.mark.parametrize("new_length", [2**31, 40, 0], ids=["huge", "small", "zero"])
def test_damaged_length_field_is_not_mistaken_for_a_torn_tail(run_kq, data_dir, new_length):
    produce_batches(run_kq, 4)
    path = segment_path(data_dir)
    positions = batch_positions(path)
    before = open(path, "rb").read()
    data = bytearray(before)
    struct.pack_into(">I", data, positions[1] + 8, new_length)
    open(path, "wb").write(data)
    # A writer must not cut off the valid batches after the damage ...
    r = run_kq("produce", "t", input="more\n")
    assert r.returncode == 1 and b"corrupt log" in r.stderr
    assert open(path, "rb").read() == bytes(data)
    # ... and a reader reports it.
    r = run_kq("consume", "t")
    assert r.returncode == 1 and f"at byte {positions[1]}".encode() in r.stderr
    assert b"followed by a valid batch" in r.stderr


def test_damage_in_a_closed_segment_is_corruption(data_dir):
    data = kq.DataDir(data_dir)
    t = data.create_topic("t", 1, {"segment_bytes": 4096})
    p = t.partition(0)
    for i in range(60):
        p.append([b"%03d" % i + b"x" * 200])
    bases = p.segments()
    assert len(bases) > 2
    first = segment_path(data_dir)
    size = os.path.getsize(first)
    with open(first, "r+b") as f:
        f.truncate(size - 5)  # the last batch of a closed segment loses its end
    with pytest.raises(kq.CorruptLog, match="closed segment"):
        list(p.read())


def test_index_is_used_and_a_wrong_index_is_harmless(data_dir):
    data = kq.DataDir(data_dir)
    t = data.create_topic("t", 1, {"segment_bytes": 1024 * 1024})
    p = t.partition(0)
    for i in range(2000):
        p.append([b"v%05d" % i + b"." * 100], timestamp=1_000_000 + i)
    index_path = os.path.join(p.path, "00000000000000000000.index")
    assert os.path.getsize(index_path) >= 10 * ENTRY_SIZE
    assert [r.value[:6] for r in p.read(1234, 1237)] == [b"v01234", b"v01235", b"v01236"]
    assert p.offset_for_timestamp(1_001_500) == 1500
    # Scramble the index: lookups must still be right (it is derived data).
    blob = bytearray(open(index_path, "rb").read())
    for i in range(0, len(blob), ENTRY_SIZE):
        struct.pack_into(">q", blob, i + 8, (i * 7919) % 100_000)
    open(index_path, "wb").write(blob[:-5])  # and a torn last entry
    p2 = kq.DataDir(data_dir).topic("t").partition(0)
    assert [r.value[:6] for r in p2.read(1234, 1237)] == [b"v01234", b"v01235", b"v01236"]
    assert p2.end_offset() == 2000
    p2.append([b"next"])
    assert p2.end_offset() == 2001
    os.unlink(index_path)
    assert [r.offset for r in p2.read(1999)] == [1999, 2000]
    assert p2.offset_for_timestamp(1_001_500) == 1500


def test_segments_roll_and_reads_cross_them(data_dir):
    t = kq.DataDir(data_dir).create_topic("t", 1, {"segment_bytes": 8192})
    p = t.partition(0)
    expected = []
    for i in range(300):
        values = [b"%d-%d" % (i, j) for j in range(5)]
        expected += values
        p.append(values, timestamp=i * 10)
    assert len(p.segments()) >= 3
    assert [r.value for r in p.read()] == expected
    assert [r.offset for r in p.read(997, 1003)] == list(range(997, 1003))
    assert p.end_offset() == 1500
    assert p.offset_for_timestamp(1500) == 750  # batch i=150 holds offsets 750..754
    assert p.offset_for_timestamp(10**12) == 1500


def test_timestamp_seek_with_a_clock_that_went_backwards(data_dir):
    t = kq.DataDir(data_dir).create_topic("t", 1, {"segment_bytes": 4096})
    p = t.partition(0)
    stamps = [100, 200, 300, 150, 160, 400, 50, 500]
    for i, ts in enumerate(stamps):
        p.append([b"x" * 700 + b"%d" % i], timestamp=ts)
    # Offsets stay dense and ordered; the first record (in offset order) with ts >= T wins.
    assert [r.offset for r in p.read()] == list(range(len(stamps)))
    for target in (0, 100, 150, 160, 250, 350, 450, 500, 501):
        want = next((i for i, ts in enumerate(stamps) if ts >= target), len(stamps))
        assert p.offset_for_timestamp(target) == want, target


def test_a_batch_finished_while_the_reader_looked_further_is_not_damage(data_dir):
    # A reader finds a half-written batch; before it searches the rest of the
    # file for valid batches, the writer finishes that batch and appends the
    # next. The later valid batch must not make the finished one "corruption".
    from kq.engine.segment import classify_damage

    part = kq.DataDir(data_dir).get_or_create_topic("t")[0].partition(0)
    part.append([b"a"] * 10)
    path = segment_path(data_dir)
    position = os.path.getsize(path)
    second = batchfmt.encode(10, [b"b" * 5000] * 10)
    with open(path, "ab") as f:
        f.write(second[: len(second) // 2])  # what the reader saw
    fd = os.open(path, os.O_RDONLY)
    try:
        with open(path, "ab") as f:  # the writer goes on meanwhile
            f.write(second[len(second) // 2 :] + batchfmt.encode(20, [b"c"]))
        classify_damage(fd, path, position, False, "incomplete batch at end of file")  # no error
        # Real damage followed by a valid batch is still reported.
        with open(path, "r+b") as f:
            f.seek(position + 30)
            f.write(b"\xff")
        with pytest.raises(kq.CorruptLog):
            classify_damage(fd, path, position, False, "checksum mismatch")
    finally:
        os.close(fd)


def test_a_cursor_at_the_end_sees_an_append_into_a_new_segment_at_once(data_dir):
    # Found by the stateful test: a poll right after an append that rolled the
    # log must return it (no grace period for listing new segments).
    part = kq.DataDir(data_dir).create_topic("t", 1, {"segment_bytes": 4096}).partition(0)
    part.append([b"x" * 5000])  # fills the first segment
    cursor = part.cursor(1)
    try:
        assert cursor.poll() == []
        part.append([b"after the roll"])
        assert len(part.segments()) == 2
        assert [v for b in cursor.poll() for v in b.values] == [b"after the roll"]
    finally:
        cursor.close()


def quarantined(data_dir, topic="t", partition=0):
    directory = os.path.join(data_dir, "topics", topic, str(partition))
    return sorted(n for n in os.listdir(directory) if ".quarantine" in n)


def test_bit_rot_in_the_last_batch_is_quarantined_and_its_offsets_never_reused(run_kq, data_dir):
    """A whole last batch that fails its checksum is damage, not a torn write (issue #12.4).

    Before: the next producer cut it off as a torn tail and gave its offsets
    to new records, so a group that had read past them skipped the new ones.
    """
    produce_batches(run_kq, 3)  # offsets 0..5
    assert run_kq("consume", "t", "-g", "g").stdout.split()[-1] == b"b2-y"  # committed 6
    path = segment_path(data_dir)
    last = batch_positions(path)[-1]
    data = bytearray(open(path, "rb").read())
    data[last + batchfmt.HEADER_SIZE + 3] ^= 0x40  # inside the last batch's payload: its length is intact
    open(path, "wb").write(data)
    # Readers report it rather than stopping quietly before it.
    r = run_kq("consume", "t")
    assert r.returncode == 1 and f"corrupt log {path} at byte {last}".encode() in r.stderr, r.stderr
    assert b"whole batch" in r.stderr and b"Traceback" not in r.stderr
    # The next writer moves it aside, says so, and goes on after its offsets.
    r = run_kq("produce", "t", input="new\n")
    assert r.returncode == 0, r.stderr
    assert b"kq: warning:" in r.stderr and path.encode() in r.stderr and b"offsets 4..5" in r.stderr, r.stderr
    assert quarantined(data_dir) == [f"{0:020d}.log.quarantine-{last}"]
    assert open(os.path.join(os.path.dirname(path), quarantined(data_dir)[0]), "rb").read() == bytes(data[last:])
    assert offsets(run_kq) == [0, 1, 2, 3, 6]
    assert run_kq("consume", "t", "-g", "g").stdout == b"new\n"  # the group reads on from 6: nothing skipped
    # Another writer later finds the log as the first one left it.
    assert run_kq("produce", "t", input="newer\n").returncode == 0
    assert offsets(run_kq) == [0, 1, 2, 3, 6, 7]
    r = run_kq("verify", "t")
    assert r.returncode == 0, r.stdout + r.stderr
    assert b"records 4..5 are missing" in r.stdout


def test_verify_repair_quarantines_a_damaged_last_batch_as_a_writer_would(run_kq, data_dir):
    produce_batches(run_kq, 2)
    path = segment_path(data_dir)
    last = batch_positions(path)[-1]
    data = bytearray(open(path, "rb").read())
    data[last + batchfmt.HEADER_SIZE + 3] ^= 0x40
    open(path, "wb").write(data)
    r = run_kq("verify", "t")
    assert r.returncode == 1 and b"whole" in r.stdout and b"offsets 2..3" in r.stdout, r.stdout
    r = run_kq("verify", "t", "--repair")
    assert r.returncode == 0, r.stdout + r.stderr
    assert b"goes on at offset 4" in r.stdout
    assert quarantined(data_dir) == [f"{0:020d}.log.quarantine-{last}"]
    assert run_kq("produce", "t", input="after\n").returncode == 0
    assert offsets(run_kq) == [0, 1, 4]


@pytest.mark.parametrize(
    "base, what",
    [(-5, b"impossible offsets -5..-5"), (2, b"offsets go backwards")],
    ids=["negative-base-offset", "overlapping-offsets"],
)
def test_a_crafted_batch_with_a_valid_checksum_is_damage_for_readers_and_writers(run_kq, data_dir, base, what):
    """Before: consume skipped it silently and a producer appended after it,
    giving an acknowledged record an offset no reader ever returned (issue #12.7)."""
    assert run_kq("produce", "t", input="1\n2\n3\n4\n5\n").returncode == 0  # offsets 0..4
    path = segment_path(data_dir)
    end = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(batchfmt.encode(base, [b"crafted"], timestamp=1))
    for args in (["consume", "t"], ["produce", "t"], ["topic", "describe", "t"], ["offsets", "show", "t"]):
        r = run_kq(*args, input="new\n")
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert f"corrupt log {path} at byte {end}".encode() in r.stderr and what in r.stderr, (args, r.stderr)
        assert b"Traceback" not in r.stderr
    r = run_kq("verify", "t")
    assert r.returncode == 1 and what in r.stdout, r.stdout
    # Repair moves the crafted batch aside; the records before it stay and writers go on.
    assert run_kq("verify", "t", "--repair").returncode == 0
    assert run_kq("produce", "t", input="6\n").returncode == 0
    assert run_kq("consume", "t").stdout.split() == [b"1", b"2", b"3", b"4", b"5", b"6"]


def test_verify_flags_offset_gaps_inside_a_batch_of_a_topic_that_is_not_compacted(run_kq, data_dir):
    assert run_kq("produce", "t", input="1\n").returncode == 0
    path = segment_path(data_dir)
    with open(path, "ab") as f:
        f.write(batchfmt.encode(1, [b"a", b"b"], timestamps=[1, 2], offset_deltas=[0, 2**32 - 1]))
    r = run_kq("verify", "t")
    assert b"offsets inside the batch skip" in r.stdout and b"warning" in r.stdout, r.stdout
