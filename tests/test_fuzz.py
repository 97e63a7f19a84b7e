"""Fuzzing the batch and index decoders with random and mutated bytes.

Whatever bytes a segment or index holds, reading them has two possible
outcomes: well-formed records, or kq's own ``CorruptLog``. Never another
exception, a hang, or an allocation sized by a damaged length field.

Each test runs a fixed number of hypothesis examples (the ``*_CASES``
constants) and counts what it tried; run with ``-s`` to see the figures.
"""

from __future__ import annotations

import json
import os
import random
import struct
import time
import tracemalloc
import zlib
from collections import Counter

import msgpack
import portalocker
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kq
from kq.engine import batch as batchfmt
from kq.engine.batch import MAX_OFFSET
from kq.engine.index import ENTRY, ENTRY_SIZE, Index
from kq.engine.location import MAX_PARTITIONS
from kq.engine.segment import DAMAGED, BatchReader, classify_damage
from kq.engine.topic import check_config
from kq.errors import CorruptLog, KqError

# Hypothesis examples per test; each example also tries EXTRA_PER_CASE more inputs
# made with a PRNG seeded by the example (cheap volume on top of shrinkable cases).
ROUND_TRIP_CASES = 150
MUTATED_BATCH_CASES = 300
CRAFTED_PAYLOAD_CASES = 200
RANDOM_BYTES_CASES = 200
INDEX_CASES = 150
EXTRA_PER_CASE = 20
# A hang shows up as an example over this; a normal one takes milliseconds.
EXAMPLE_DEADLINE_MS = 2000

FUZZ = settings(
    deadline=EXAMPLE_DEADLINE_MS,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)


def fuzz(cases: int) -> settings:
    return settings(FUZZ, max_examples=cases)


INT64 = st.integers(-(2**63), 2**63 - 1)
UINT32 = st.integers(0, 2**32 - 1)


def report(name: str, counts: Counter) -> None:
    print(f"\n[fuzz] {name}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))


# ---------------------------------------------------------------- what "valid" means


def assert_well_formed(b: batchfmt.RecordBatch) -> None:
    """What every reader of a decoded batch relies on (FORMAT.md, "Payload")."""
    records = list(b.records())
    assert len(records) == b.count >= 1
    offsets = [r.offset for r in records]
    assert offsets == sorted(set(offsets)), "offsets within a batch must rise"
    assert offsets[0] >= b.base_offset and offsets[-1] == b.last_offset
    assert max(r.timestamp for r in records) == b.max_timestamp
    for r in records:
        assert type(r.offset) is int and type(r.timestamp) is int
        assert r.key is None or type(r.key) is bytes
        assert r.value is None or type(r.value) is bytes
        assert type(r.headers) is list
        for pair in r.headers:
            assert len(pair) == 2 and type(pair[0]) is str and (pair[1] is None or type(pair[1]) is bytes)
    # The columns used directly by consume's fast path hold the same.
    assert all(v is None or type(v) is bytes for v in b.values)
    assert [b.offset_at(i) for i in range(b.count)] == offsets
    assert all(b.index_of(o) == i for i, o in enumerate(offsets))


def outcome_of(buf: bytes) -> str:
    """Classify ``buf`` as a batch: decoded well-formed, or rejected by kq; nothing else."""
    status, info = batchfmt.check(buf, 0, len(buf))
    if status == batchfmt.INCOMPLETE:
        return "incomplete"
    if status in (batchfmt.INVALID, batchfmt.DAMAGED):
        assert isinstance(info, str)
        return "invalid"
    try:
        b = batchfmt.decode(buf, 0, info, "<fuzz>")
    except CorruptLog:
        return "corrupt"
    assert_well_formed(b)
    return "records"


def with_crc(buf: bytearray) -> bytes:
    """Recompute the checksum over what the length field says is the batch."""
    if len(buf) >= batchfmt.PREFIX_SIZE:
        length = int.from_bytes(buf[8:12], "big")
        end = min(len(buf), batchfmt.PREFIX_SIZE + length)
        buf[4:8] = struct.pack(">I", zlib.crc32(bytes(buf[batchfmt.CRC_START : end])))
    return bytes(buf)


def craft(payload: bytes, base=0, last_delta=0, count=1, base_ts=0, max_ts=0, attrs=0) -> bytes:
    """A batch with a correct checksum around any payload and header fields."""
    length = batchfmt.HEADER_SIZE - batchfmt.PREFIX_SIZE + len(payload)
    body = struct.pack(">IqIIqqH", length, base, last_delta, count, base_ts, max_ts, attrs) + payload
    return batchfmt.MAGIC + struct.pack(">I", zlib.crc32(body)) + body


# ---------------------------------------------------------------- strategies

record_st = st.tuples(
    st.one_of(st.none(), st.binary(max_size=40)),  # value (None: a tombstone)
    st.one_of(st.none(), st.binary(max_size=12)),  # key
    st.lists(st.tuples(st.text(max_size=6), st.one_of(st.none(), st.binary(max_size=6))), max_size=2),  # headers
    st.integers(-(2**40), 2**40),  # timestamp: any order, the clock may go backwards
)


@st.composite
def valid_batches(draw):
    records = draw(st.lists(record_st, min_size=1, max_size=12))
    base = draw(st.integers(0, 2**40))
    deltas = None
    if draw(st.booleans()):  # a compacted batch: offsets with gaps
        steps = draw(st.lists(st.integers(1, 1000), min_size=len(records) - 1, max_size=len(records) - 1))
        deltas = [0]
        for s in steps:
            deltas.append(deltas[-1] + s)
    values, keys, headers, stamps = (list(c) for c in zip(*records))
    data = batchfmt.encode(
        base,
        values,
        keys=keys,
        headers=[[tuple(h) for h in hs] for hs in headers],
        timestamps=stamps,
        offset_deltas=deltas,
    )
    return data, base, records, deltas


mutation_st = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000)),
    st.tuples(st.just("length"), st.one_of(UINT32, st.integers(-64, 64))),
    st.tuples(st.just("overwrite"), st.integers(0, 10_000), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 16)),
    st.tuples(st.just("header"), st.integers(12, 45), st.binary(min_size=1, max_size=8)),
)


def mutate(data: bytes, mutations) -> bytearray:
    buf = bytearray(data)
    for m in mutations:
        kind = m[0]
        if kind == "flip" and buf:
            buf[m[1] % len(buf)] ^= 1 << m[2]
        elif kind == "truncate":
            del buf[m[1] % (len(buf) + 1) :]
        elif kind == "length" and len(buf) >= 12:
            old = int.from_bytes(buf[8:12], "big")
            new = m[1] if m[1] > 64 else max(0, min(2**32 - 1, old + m[1]))
            buf[8:12] = new.to_bytes(4, "big")
        elif kind == "overwrite" and buf:
            at = m[1] % len(buf)
            buf[at : at + len(m[2])] = m[2]
        elif kind == "insert":
            at = m[1] % (len(buf) + 1)
            buf[at:at] = m[2]
        elif kind == "delete" and buf:
            at = m[1] % len(buf)
            del buf[at : at + m[2]]
        elif kind == "header" and len(buf) >= 46:
            buf[m[1] : m[1] + len(m[2])] = m[2][: 46 - m[1]]
    return buf


def random_mutations(rng: random.Random) -> list:
    """One to three mutations in the form ``mutation_st`` draws, from a seeded PRNG."""
    out = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["flip", "flip", "truncate", "length", "overwrite", "insert", "delete", "header"])
        if kind == "flip":
            out.append((kind, rng.randrange(10_000), rng.randrange(8)))
        elif kind == "truncate":
            out.append((kind, rng.randrange(10_000)))
        elif kind == "length":
            out.append((kind, rng.choice([rng.randrange(2**32), rng.randint(-64, 64)])))
        elif kind in ("overwrite", "insert"):
            out.append((kind, rng.randrange(10_000), rng.randbytes(rng.randint(1, 16))))
        elif kind == "delete":
            out.append((kind, rng.randrange(10_000), rng.randint(1, 16)))
        else:
            out.append((kind, rng.randint(12, 45), rng.randbytes(rng.randint(1, 8))))
    return out


# Anything msgpack can hold (no ext types: kq rejects them), nested a little.
msgpack_st = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(),
        st.text(max_size=8),
        st.binary(max_size=8),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=4), st.integers(0, 9)), inner, max_size=3),
    ),
    max_leaves=12,
)


@st.composite
def crafted_payloads(draw):
    """Payloads that are plausible enough to reach the column checks.

    Half the time the header agrees with the columns (count, last offset
    delta, timestamps), so that one wrong element is all that stands
    between the batch and its records.
    """
    count = draw(st.integers(1, 4))

    def column(good, nullable=True):
        options = [good, st.lists(msgpack_st, min_size=count, max_size=count)]
        if nullable:
            options.append(st.none())
        return draw(st.one_of(*options))

    values = column(st.lists(st.one_of(st.none(), st.binary(max_size=6)), min_size=count, max_size=count), False)
    keys = column(st.lists(st.one_of(st.none(), st.binary(max_size=6)), min_size=count, max_size=count))
    headers = column(
        st.lists(
            st.one_of(st.none(), st.lists(st.tuples(st.text(max_size=3), st.binary(max_size=3)), max_size=2)),
            min_size=count,
            max_size=count,
        )
    )
    ts = column(st.lists(st.integers(-(2**63), 2**63), min_size=count, max_size=count))
    offs = column(st.lists(st.integers(-2, 2**32), min_size=count, max_size=count).map(sorted))
    shape = draw(st.sampled_from(["columns", "columns", "anything", "raw"]))
    if shape == "columns":
        payload = msgpack.packb([values, keys, headers, ts, offs], use_bin_type=True)
    elif shape == "anything":
        payload = msgpack.packb(draw(msgpack_st), use_bin_type=True)
    else:  # raw msgpack bytes, including ext types and length fields that lie
        payload = draw(st.binary(min_size=1, max_size=64))
    if draw(st.booleans()):
        last = offs[-1] if isinstance(offs, list) and isinstance(offs[-1], int) and 0 <= offs[-1] < 2**32 else count - 1
        good_ts = isinstance(ts, list) and all(isinstance(t, int) for t in ts)
        base_ts = draw(st.integers(-(2**40), 2**40))
        max_ts = base_ts + max(ts) if good_ts else base_ts
        header = dict(
            base=draw(st.integers(0, 2**40)),
            last_delta=last,
            count=count,
            base_ts=base_ts,
            max_ts=max(min(max_ts, 2**63 - 1), -(2**63)),
        )
    else:
        header = dict(
            base=draw(INT64),
            last_delta=draw(UINT32),
            count=draw(st.one_of(st.just(count), UINT32)),
            base_ts=draw(INT64),
            max_ts=draw(INT64),
        )
    return craft(payload, **header)


# ---------------------------------------------------------------- batches


def test_valid_batches_round_trip_exactly():
    counts = Counter()

    @fuzz(ROUND_TRIP_CASES)
    @given(valid_batches())
    def run(case):
        data, base, records, deltas = case
        status, header = batchfmt.check(data, 0, len(data))
        assert status == batchfmt.OK
        b = batchfmt.decode(data, 0, header)
        assert_well_formed(b)
        offsets = [base + d for d in deltas] if deltas else list(range(base, base + len(records)))
        got = [(r.offset, r.value, r.key, [tuple(h) for h in r.headers], r.timestamp) for r in b.records()]
        want = [(o, v, k, [tuple(h) for h in hs], ts) for o, (v, k, hs, ts) in zip(offsets, records)]
        assert got == want
        counts["cases"] += 1

    run()
    report("round trip", counts)
    assert counts["cases"] >= ROUND_TRIP_CASES // 2


def test_mutated_batches_give_valid_records_or_a_corruption_error():
    """Bit flips, truncations, length-field changes, inserted and deleted bytes, header
    damage; half the time with the checksum recomputed so the damage reaches the decoder."""
    counts = Counter()

    @fuzz(MUTATED_BATCH_CASES)
    @given(
        valid_batches(), st.lists(mutation_st, min_size=1, max_size=4), st.booleans(), st.randoms(use_true_random=False)
    )
    def run(case, mutations, fix_crc, rng):
        attempts = [(mutations, fix_crc)] + [(random_mutations(rng), rng.random() < 0.5) for _ in range(EXTRA_PER_CASE)]
        for muts, fix in attempts:
            buf = mutate(case[0], muts)
            data = with_crc(buf) if fix else bytes(buf)
            started = time.monotonic()
            counts[outcome_of(data)] += 1
            counts["inputs"] += 1
            assert time.monotonic() - started < 1.0
        counts["cases"] += 1

    run()
    report("mutated batches", counts)
    assert counts["cases"] >= MUTATED_BATCH_CASES // 2
    assert counts["corrupt"] > 0 and counts["invalid"] > 0  # both kinds of damage were reached


def test_crafted_payloads_with_valid_checksums_give_valid_records_or_a_corruption_error():
    """The decoder's own checks: any msgpack (or not-quite-msgpack) under a correct checksum."""
    counts = Counter()

    @fuzz(CRAFTED_PAYLOAD_CASES)
    @given(crafted_payloads(), st.randoms(use_true_random=False))
    def run(data, rng):
        counts[outcome_of(data)] += 1
        counts["inputs"] += 1
        for _ in range(EXTRA_PER_CASE):
            # The same payload under other header fields, or with its bytes
            # changed: the checksum is always recomputed, so the decoder sees it.
            buf = bytearray(data)
            if rng.random() < 0.5:
                field = rng.choice([(12, 8), (20, 4), (24, 4), (28, 8), (36, 8)])
                buf[field[0] : field[0] + field[1]] = rng.randbytes(field[1])
            else:
                at = rng.randrange(batchfmt.HEADER_SIZE, len(buf))
                buf[at] = rng.randrange(256)
            counts[outcome_of(with_crc(buf))] += 1
            counts["inputs"] += 1
        counts["cases"] += 1

    run()
    report("crafted payloads", counts)
    assert counts["cases"] >= CRAFTED_PAYLOAD_CASES // 2
    assert counts["corrupt"] > CRAFTED_PAYLOAD_CASES // 4 and counts["records"] > 0


WRONG_COLUMNS = {
    "int-values": [[1, 2], None, None, None, None],
    "str-values": [["a", "b"], None, None, None, None],
    "int-key": [[b"a", b"b"], [1, None], None, None, None],
    "header-not-a-pair": [[b"a", b"b"], None, [[1], None], None, None],
    "header-value-str": [[b"a", b"b"], None, [[["n", "v"]], None], None, None],
    "str-timestamp-delta": [[b"a", b"b"], None, None, ["x", 0], None],
    "timestamp-past-max": [[b"a", b"b"], None, None, [0, 99], None],
    "offsets-not-rising": [[b"a", b"b"], None, None, None, [1, 1]],
    "offsets-backwards": [[b"a", b"b"], None, None, None, [1, 0]],
    "str-offset-deltas": [[b"a", b"b"], None, None, None, ["0", "1"]],
}


def wrong_batch(columns, base=1) -> bytes:
    last = columns[4][-1] if columns[4] and isinstance(columns[4][-1], int) else 1
    return craft(msgpack.packb(columns, use_bin_type=True), base=base, last_delta=last, count=2)


@pytest.mark.parametrize("name", sorted(WRONG_COLUMNS))
def test_checksummed_columns_of_the_wrong_type_are_corruption(name):
    """A batch with a correct checksum but columns FORMAT.md forbids is corruption."""
    assert outcome_of(wrong_batch(WRONG_COLUMNS[name])) == "corrupt"


def test_consume_reports_a_checksummed_wrong_type_batch_as_corruption_not_a_traceback(run_kq, data_dir):
    assert run_kq("produce", "t", input="ok\n").returncode == 0
    with open(os.path.join(data_dir, "topics", "t", "0", f"{0:020d}.log"), "ab") as f:
        f.write(wrong_batch(WRONG_COLUMNS["int-values"]))
    for args in (["consume", "t"], ["consume", "t", "--json"], ["consume", "t", "-F", "%k %h %T %s\n"]):
        r = run_kq(*args)
        assert r.returncode == 1, (args, r.stderr)
        assert r.stderr.startswith(b"kq: error: corrupt log") and b"Traceback" not in r.stderr, r.stderr


def test_empty_batch_with_offset_deltas_is_corruption():
    data = craft(msgpack.packb([[], None, None, None, []]), last_delta=0, count=0)
    assert outcome_of(data) == "corrupt"


def test_random_bytes_give_valid_records_or_a_corruption_error(tmp_path):
    """Random bytes as a batch, and as a segment read by BatchReader with damage classified."""
    counts = Counter()
    path = str(tmp_path / "seg.log")
    good = batchfmt.encode(0, [b"first"], timestamp=1)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    @fuzz(RANDOM_BYTES_CASES)
    @given(
        st.binary(max_size=400),
        st.sampled_from([b"", batchfmt.MAGIC]),
        st.booleans(),
        st.randoms(use_true_random=False),
    )
    def run(noise, prefix, after_a_good_batch, rng):
        blobs = [prefix + noise] + [
            rng.choice([b"", batchfmt.MAGIC]) + rng.randbytes(rng.randint(0, 400)) for _ in range(EXTRA_PER_CASE)
        ]
        for blob in blobs:
            counts[outcome_of(blob)] += 1
            counts["inputs"] += 1
        # The same bytes in a segment, after a valid batch or alone.
        content = (good if after_a_good_batch else b"") + blobs[0]
        os.ftruncate(fd, 0)
        os.pwrite(fd, content, 0)
        read_segment(fd, path, counts)
        counts["cases"] += 1

    try:
        run()
    finally:
        os.close(fd)
    report("random bytes", counts)
    assert counts["cases"] >= RANDOM_BYTES_CASES // 2


def read_segment(fd: int, path: str, counts: Counter) -> None:
    """Read a segment as kq's readers do: records, then a clean end, a torn tail or CorruptLog."""
    reader = BatchReader(fd, path, 0)
    try:
        for pos, header, buf, rel in reader.headers():
            assert_well_formed(batchfmt.decode(buf, rel, header, path))
            counts["segment batches"] += 1
        if reader.stop == DAMAGED:
            classify_damage(fd, path, reader.stop_position, False, reader.reason)
            counts["segment torn tails"] += 1
    except CorruptLog:
        counts["segment corrupt"] += 1


def test_a_huge_length_prefix_allocates_nothing_big(tmp_path):
    """Length fields up to 4 GiB, in a file of a few bytes: no allocation near that size."""
    path = str(tmp_path / "seg.log")
    lengths = [batchfmt.MAX_BATCH_BYTES, batchfmt.MAX_BATCH_BYTES + 1, 2**32 - 1, 2**31, 0, batchfmt.MIN_LENGTH - 1]
    for length in lengths:
        with open(path, "wb") as f:
            f.write(batchfmt.MAGIC + struct.pack(">II", 0, length) + b"\x00" * 100 + batchfmt.MAGIC)
        fd = os.open(path, os.O_RDONLY)
        tracemalloc.start()
        try:
            reader = BatchReader(fd, path, 0)
            assert list(reader.headers()) == []
            assert reader.stop == DAMAGED
            classify_damage(fd, path, 0, False, reader.reason)  # a torn tail: nothing valid follows
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            os.close(fd)
        assert peak < 1024 * 1024, f"reading a {length}-byte length prefix allocated {peak} bytes"
    # msgpack lengths inside a checksummed payload: an array, bin, str and map claiming ~4 G
    # elements or bytes in a few bytes of payload are refused without allocating them.
    for payload in (
        b"\xdd\xff\xff\xff\xff",
        b"\xc6\xff\xff\xff\xff",
        b"\xdb\xff\xff\xff\xff",
        b"\xdf\xff\xff\xff\xff",
        b"\x95\xdd\xff\xff\xff\xff\xc0\xc0\xc0\xc0",
        b"\x91" * 5000,
    ):
        data = craft(payload)
        tracemalloc.start()
        try:
            assert outcome_of(data) == "corrupt"
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 1024 * 1024, f"decoding {payload[:6]!r} allocated {peak} bytes"


# ---------------------------------------------------------------- the sparse index


@pytest.fixture(scope="module")
def indexed_partition(tmp_path_factory):
    """A partition with several index entries and timestamps that go backwards."""
    path = str(tmp_path_factory.mktemp("idx") / "data")
    t = kq.DataDir(path).create_topic("t", 1, {"segment_bytes": 1 << 20})
    p = t.partition(0)
    expected = []
    for i in range(120):
        stamps = [1000 + ((i * 37) % 100) * 10 + j for j in range(3)]  # not monotonic
        values = [b"%03d-%d-" % (i, j) + b"x" * 300 for j in range(3)]
        p.append(values, timestamps=stamps)
        expected += list(zip(values, stamps))
    t.close()
    log = os.path.join(path, "topics", "t", "0", f"{0:020d}.log")
    index = os.path.join(path, "topics", "t", "0", f"{0:020d}.index")
    with open(log, "rb") as f:
        log_bytes = f.read()
    with open(index, "rb") as f:
        index_bytes = f.read()
    assert len(index_bytes) // ENTRY_SIZE >= 10
    return path, log, index, log_bytes, index_bytes, expected


index_damage_st = st.one_of(
    st.tuples(st.just("random"), st.binary(max_size=400)),
    st.tuples(st.just("truncate"), st.integers(0, 2000)),
    st.tuples(st.just("flip-offset-or-position"), st.integers(0, 100), st.integers(0, 127)),
    st.tuples(st.just("flip-timestamp"), st.integers(0, 100), st.integers(0, 63)),
    st.tuples(
        st.just("entries"), st.lists(st.tuples(st.integers(-5, 500), st.integers(-5, 60_000), INT64), max_size=20)
    ),
    st.tuples(
        st.just("reverse"),
    ),
)


def damage_index(blob: bytes, damage) -> tuple[bytes, bool]:
    """The damaged index, and whether timestamp answers may change (see below)."""
    kind = damage[0]
    if kind == "random":
        return damage[1], False
    if kind == "truncate":
        return blob[: damage[1] % (len(blob) + 1)], False
    if kind == "entries":
        return b"".join(ENTRY.pack(*e) for e in damage[1]), True
    if kind == "reverse":
        entries = [blob[i : i + ENTRY_SIZE] for i in range(0, len(blob), ENTRY_SIZE)]
        return b"".join(reversed(entries)), False
    buf = bytearray(blob)
    entry = damage[1] % (len(buf) // ENTRY_SIZE)
    if kind == "flip-offset-or-position":
        bit = damage[2]
        buf[entry * ENTRY_SIZE + bit // 8] ^= 1 << (bit % 8)
        return bytes(buf), False
    bit = damage[2]
    buf[entry * ENTRY_SIZE + 16 + bit // 8] ^= 1 << (bit % 8)
    return bytes(buf), True


def test_any_index_bytes_leave_offset_reads_exact(indexed_partition):
    """The index is derived data: whatever it holds, reads by offset return exactly the
    log's records, the end offset is right, and a writer appends in the right place.

    A timestamp seek is exact unless an entry's max-timestamp field itself was
    changed to a plausible lie (the index has no checksum): then it may start
    late, but still only returns a record whose timestamp is >= T.
    """
    path, log, index_path, log_bytes, index_bytes, expected = indexed_partition
    counts = Counter()
    data = kq.DataDir(path)

    @fuzz(INDEX_CASES)
    @given(
        index_damage_st,
        st.lists(st.integers(0, len(expected)), min_size=1, max_size=3),
        st.lists(st.integers(900, 2100), min_size=1, max_size=3),
        st.booleans(),
    )
    def run(damage, starts, targets, append):
        blob, timestamps_may_lie = damage_index(index_bytes, damage)
        with open(log, "wb") as f:
            f.write(log_bytes)
        with open(index_path, "wb") as f:
            f.write(blob)
        # Index.load and its lookups never raise on any bytes.
        idx = Index.load(index_path)
        for i in range(len(idx)):
            assert all(type(x) is int for x in idx.entry(i))
        idx.floor_offset(starts[0]), idx.floor_timestamp(targets[0]), idx.entries_before(starts[0] * 100)
        t = data.topic("t")
        p = t.partition(0)
        try:
            assert p.end_offset() == len(expected)
            for start in starts:
                got = [(r.offset, r.value) for r in p.read(start)]
                assert got == [(o, v) for o, (v, _) in enumerate(expected)][start:]
            for target in targets:
                want = next((o for o, (_, ts) in enumerate(expected) if ts >= target), len(expected))
                got = p.offset_for_timestamp(target)
                if timestamps_may_lie:
                    assert want <= got <= len(expected)
                    assert got == len(expected) or expected[got][1] >= target
                else:
                    assert got == want, (damage, target)
            if append:
                assert p.append([b"new"], timestamp=5000) == (len(expected), len(expected))
                assert [r.value for r in p.read(len(expected) - 2)] == [expected[-2][0], expected[-1][0], b"new"]
                counts["appends"] += 1
        finally:
            t.close()
        counts["cases"] += 1

    run()
    report("index", counts)
    assert counts["cases"] >= INDEX_CASES // 2


@pytest.mark.parametrize("position", [-1, 2**63 - 1])
def test_an_index_entry_with_an_impossible_position_is_ignored(run_kq, data_dir, position):
    assert run_kq("produce", "t", input="a\n").returncode == 0
    with open(os.path.join(data_dir, "topics", "t", "0", f"{0:020d}.index"), "wb") as f:
        f.write(ENTRY.pack(0, position, 0))
    r = run_kq("consume", "t")
    assert (r.returncode, r.stdout) == (0, b"a\n"), r.stderr
    assert run_kq("produce", "t", input="b\n").returncode == 0
    assert run_kq("consume", "t").stdout == b"a\nb\n"


TAIL_ROT_CASES = 150


@pytest.mark.filterwarnings("ignore::kq.errors.KqWarning")  # the writer's quarantine notice, expected here
@settings(max_examples=TAIL_ROT_CASES, deadline=None, suppress_health_check=list(HealthCheck))
@given(batches=st.integers(1, 4), where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7), data=st.data())
def test_bit_rot_anywhere_in_the_last_batch_never_lets_a_writer_reuse_its_offsets(
    tmp_path_factory, batches, where, bit, data
):
    """One flipped bit anywhere in a whole last batch (header or payload): the next append either
    refuses with kq's corruption error or lands after every offset the log had; readers return only
    records that were written, at their offsets, or kq's corruption error (issue #12.4)."""
    path = str(tmp_path_factory.mktemp("rot") / "data")
    part = kq.DataDir(path).create_topic("t", 1).partition(0)
    written = {}
    for b in range(batches):
        values = [f"{b}-{i}".encode() for i in range(data.draw(st.integers(1, 5), label="records"))]
        first, _ = part.append(values, timestamp=1)
        written.update({first + i: v for i, v in enumerate(values)})
    end = part.end_offset()
    last = part.last_batch()
    victim = last.position + batchfmt.PREFIX_SIZE - 8 + int(where * (last.size - 4))  # past the magic
    with open(part.log_path(0), "r+b") as f:
        f.seek(victim)
        byte = f.read(1)[0]
        f.seek(victim)
        f.write(bytes([byte ^ (1 << bit)]))
        f.seek(0)
        rotten = f.read()
    part.close()
    part = kq.DataDir(path).topic("t").partition(0)
    try:
        first, _ = part.append([b"new"], timestamp=2)
    except CorruptLog:
        pass
    else:
        # One case cannot be told from a torn write (docs/GUARANTEES.md): a
        # length field damaged to claim more bytes than the file holds.
        length = int.from_bytes(bytes(rotten[last.position + 8 : last.position + 12]), "big")
        looks_torn = last.position + batchfmt.PREFIX_SIZE + length > len(rotten)
        assert first >= end or looks_torn, (
            f"the new record got offset {first}, which the log had given before (end {end})"
        )
        written[first] = b"new"
    try:
        for r in part.read(0):
            assert written.get(r.offset) == r.value, f"offset {r.offset} holds {r.value!r}, never written there"
    except CorruptLog:
        pass
    part.close()


# ---------------------------------------------------------------- small metadata files

METADATA_CASES = 300
# The JSON files kq reads, and the fields it reads from each.
METADATA_FIELDS = {
    "kq.json": ["format"],
    "topic.json": ["format", "name", "id", "partitions", "config"],
    "start.offset": ["format", "start_offset"],
    "P.offset": ["format", "offset", "committed_at", "topic_id"],
    "member": ["member", "pid", "host", "topic", "joined_at"],
}
MEMBER_ID = "00000000000000000001-1-abcdef"

json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(),
    st.text(max_size=12),
    st.integers(-(2**65), 2**65),
    st.sampled_from([0, -1, 1, 2, 2**63 - 1, 2**63, 10_000, 10_001, 10**9, MEMBER_ID]),
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
config_values = st.dictionaries(
    st.sampled_from(
        [
            "segment_bytes",
            "sync",
            "retention_ms",
            "retention_bytes",
            "cleanup",
            "tombstone_retention_ms",
            "dedup_window_ms",
            "dedup_header",
            "unknown",
        ]
    ),
    json_values | st.sampled_from(["delete", "compact"]),
    max_size=4,
)


@st.composite
def metadata_bytes(draw, which: str):
    """Bytes for a metadata file: objects with its own fields (so the checks past "is it
    an object" run), any JSON, nesting deep enough to exhaust a recursive parser,
    numbers too long to convert, or random bytes."""
    fields = METADATA_FIELDS[which]
    kind = draw(st.sampled_from(["valid", "fields", "fields", "fields", "json", "deep", "long number", "bytes"]))
    if kind == "valid":  # what kq writes, with numbers anywhere in range
        big = st.integers(0, MAX_OFFSET)
        return json.dumps(
            draw(
                st.fixed_dictionaries(
                    {
                        "kq.json": {"format": st.just(1)},
                        "topic.json": {
                            "format": st.just(1),
                            "partitions": st.integers(1, MAX_PARTITIONS),
                            "config": st.just({}),
                        },
                        "start.offset": {"format": st.just(1), "start_offset": big},
                        "P.offset": {"format": st.just(1), "offset": big, "committed_at": big},
                        "member": {
                            "member": st.just(MEMBER_ID),
                            "pid": big,
                            "host": st.text(),
                            "topic": st.just("t"),
                            "joined_at": big,
                        },
                    }[which]
                )
            )
        ).encode()
    if kind == "fields":
        value = draw(st.dictionaries(st.sampled_from(fields), json_values | config_values, min_size=1))
        return json.dumps(value).encode()
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "deep":
        depth = draw(st.integers(500, 30_000))
        return draw(st.sampled_from([b"[", b'{"a":', b'[{"partitions":'])) * depth
    if kind == "long number":
        field = draw(st.sampled_from(fields))
        return b'{"%s": %s}' % (field.encode(), b"9" * draw(st.integers(19, 60_000)))
    return draw(st.binary(max_size=200))


def read_through_kq(data_dir: str, which: str):
    """What a kq reader makes of ``which``: the value it uses, checked."""
    data = kq.DataDir(data_dir)
    if which == "kq.json":
        assert data.exists() is True
        return "ok"
    if which == "topic.json":
        t = data.topic("t")
        assert type(t.partition_count) is int and 1 <= t.partition_count <= MAX_PARTITIONS
        assert check_config(dict(t.config)) == t.config
        t.close()
        return "ok"
    if which == "start.offset":
        start = data.topic("t").partition(0).trimmed_to()
        assert type(start) is int and 0 <= start <= MAX_OFFSET
        return "ok"
    if which == "P.offset":
        committed = kq.Groups(data).committed("g", "t")
        assert all(type(o) is int and 0 <= o <= MAX_OFFSET for o in committed.values())
        return "ok"
    members = kq.Groups(data).members("g", "t")
    assert [m["member"] for m in members] == [MEMBER_ID]
    assert all(type(m["pid"]) is int and type(m["host"]) is str for m in members)
    return "ok"


def test_any_bytes_in_a_metadata_file_give_checked_values_or_a_corrupt_file_error(tmp_path):
    """kq.json, topic.json, start.offset, committed offsets and member files hold anything:
    wrong shapes, wrong types, numbers out of range, 30,000 levels of nesting, 60,000
    digits. A reader gets values of the right type and range, or kq's error naming the
    file; never RecursionError, AttributeError, ValueError or a gigabyte list."""
    data_dir = str(tmp_path / "data")
    data = kq.DataDir(data_dir)
    data.create_topic("t", 2).close()
    groups = kq.Groups(data)
    groups.commit("g", "t", 0, 1)
    members = os.path.join(data_dir, "groups", "g", "t", "members")
    os.makedirs(members)
    paths = {
        "kq.json": os.path.join(data_dir, "kq.json"),
        "topic.json": os.path.join(data_dir, "topics", "t", "topic.json"),
        "start.offset": os.path.join(data_dir, "topics", "t", "0", "start.offset"),
        "P.offset": os.path.join(data_dir, "groups", "g", "t", "0.offset"),
        "member": os.path.join(members, MEMBER_ID + ".member"),
    }
    originals = {w: open(p, "rb").read() if os.path.exists(p) else None for w, p in paths.items()}
    member_lock = open(paths["member"], "wb")  # a live member holds its file's lock
    portalocker.lock(member_lock, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)
    counts = Counter()

    @fuzz(METADATA_CASES)
    @given(st.sampled_from(sorted(paths)).flatmap(lambda w: st.tuples(st.just(w), metadata_bytes(w))))
    def run(case):
        which, raw = case
        path = paths[which]
        with open(path, "r+b" if which == "member" else "wb") as f:
            f.truncate(0)
            f.write(raw)
        try:
            counts[f"{which} {read_through_kq(data_dir, which)}"] += 1
        except KqError as exc:
            assert path in str(exc), f"the error does not name {path}: {exc}"
            counts[f"{which} refused"] += 1
        finally:
            original = originals[which]
            if original is not None:
                with open(path, "wb") as f:
                    f.write(original)
        counts["cases"] += 1

    try:
        run()
    finally:
        member_lock.close()
    report("metadata files", counts)
    assert counts["cases"] >= METADATA_CASES // 2
    assert sum(n for k, n in counts.items() if k.endswith("refused")) > METADATA_CASES // 4


def _case(name, place, content, *commands):
    return pytest.param(place, content, list(commands), id=name)


OUT_OF_RANGE = [
    # The file, what is put there, and commands that read it. The examples first.
    _case("topic-a-list", "topics/t/topic.json", b"[1,2]", ["consume", "t"], ["topic", "describe", "t"]),
    _case(
        "partitions--1",
        "topics/t/topic.json",
        b'{"format": 1, "partitions": -1, "config": {}}',
        ["consume", "t"],
        ["topic", "list", "--json"],
    ),
    _case("partitions-str", "topics/t/topic.json", b'{"format": 1, "partitions": "3", "config": {}}', ["produce", "t"]),
    _case(
        "partitions-1e9",
        "topics/t/topic.json",
        b'{"format": 1, "partitions": 1000000000, "config": {}}',
        ["consume", "t"],
        ["maintain"],
    ),
    _case("partitions-0", "topics/t/topic.json", b'{"format": 1, "partitions": 0, "config": {}}', ["consume", "t"]),
    _case(
        "partitions-float", "topics/t/topic.json", b'{"format": 1, "partitions": 1.0, "config": {}}', ["consume", "t"]
    ),
    _case(
        "partitions-bool", "topics/t/topic.json", b'{"format": 1, "partitions": true, "config": {}}', ["consume", "t"]
    ),
    _case(
        "topic-format-str", "topics/t/topic.json", b'{"format": "1", "partitions": 1, "config": {}}', ["consume", "t"]
    ),
    _case("config-list", "topics/t/topic.json", b'{"format": 1, "partitions": 1, "config": []}', ["consume", "t"]),
    _case(
        "segment-bytes-inf",
        "topics/t/topic.json",
        b'{"format": 1, "partitions": 1, "config": {"segment_bytes": 1e400}}',
        ["produce", "t"],
    ),
    _case(
        "retention--5",
        "topics/t/topic.json",
        b'{"format": 1, "partitions": 1, "config": {"retention_ms": -5}}',
        ["maintain"],
    ),
    _case(
        "cleanup-list",
        "topics/t/topic.json",
        b'{"format": 1, "partitions": 1, "config": {"cleanup": ["compact"]}}',
        ["maintain"],
    ),
    _case("topic-deep", "topics/t/topic.json", b'{"partitions":' * 10_000, ["consume", "t"]),
    _case(
        "start--1",
        "topics/t/0/start.offset",
        b'{"format": 1, "start_offset": -1}',
        ["consume", "t"],
        ["topic", "describe", "t"],
    ),
    _case(
        "start-2^63", "topics/t/0/start.offset", b'{"format": 1, "start_offset": 9223372036854775808}', ["consume", "t"]
    ),
    _case("start-str", "topics/t/0/start.offset", b'{"format": 1, "start_offset": "5"}', ["offsets", "show", "t"]),
    _case("start-list", "topics/t/0/start.offset", b'["start_offset", 5]', ["consume", "t"]),
    _case("start-deep", "topics/t/0/start.offset", b"[" * 50_000, ["consume", "t"]),
    _case(
        "offset--1",
        "groups/g/t/0.offset",
        b'{"format": 1, "offset": -1}',
        ["consume", "t", "-g", "g"],
        ["offsets", "show", "t"],
    ),
    _case(
        "offset-2^63",
        "groups/g/t/0.offset",
        b'{"format": 1, "offset": 9223372036854775808}',
        ["consume", "t", "-g", "g"],
    ),
    _case("offset-float", "groups/g/t/0.offset", b'{"format": 1, "offset": 1.5}', ["offsets", "show", "t"]),
    _case(
        "offset-100k-brackets",
        "groups/g/t/0.offset",
        b"[" * 100_000,
        ["consume", "t", "-g", "g"],
        ["offsets", "show", "t"],
    ),
    _case("offset-deep", "groups/g/t/0.offset", b"[" * 30_000, ["consume", "t", "-g", "g"]),
    _case("format-deep", "kq.json", b'{"a":' * 10_000, ["consume", "t"], ["topic", "list"]),
    _case("format-str", "kq.json", b'{"format": "1"}', ["consume", "t"]),
    _case("format-0", "kq.json", b'{"format": 0}', ["produce", "t"]),
    _case("format-list", "kq.json", b"[1]", ["topic", "list"]),
    _case(
        "segment-10^20",
        "topics/t/0/99999999999999999999.log",
        b"",
        ["produce", "t"],
        ["consume", "t"],
        ["topic", "describe", "t"],
    ),
    _case("segment-2^63", "topics/t/0/09223372036854775808.log", b"", ["produce", "t"], ["consume", "t"]),
]


@pytest.mark.parametrize("place, content, commands", OUT_OF_RANGE)
def test_a_crafted_number_or_shape_in_any_file_is_a_one_line_error_naming_it(
    run_kq, data_dir, place, content, commands
):
    """Each command that reads the file fails with one `kq: error:` line naming it
    (never a traceback), and `kq verify` names it and exits 1."""
    assert run_kq("produce", "t", input="a\nb\n").returncode == 0
    assert run_kq("consume", "t", "-g", "g").returncode == 0
    path = os.path.join(data_dir, place)
    with open(path, "wb") as f:
        f.write(content)
    for args in commands + [["verify"], ["verify", "--repair"]]:
        r = run_kq(*args, input="x\n", timeout=30)
        where = f"kq {' '.join(args)} with {content[:40]!r} in {place}"
        assert b"Traceback" not in r.stderr, f"{where}:\n{r.stderr.decode()}"
        if args[0] == "verify":
            if place.endswith(".offset") and "groups" in place and args == ["verify", "--repair"]:
                assert r.returncode == 0 and f"moved it to {path}.quarantine".encode() in r.stdout, where
                continue
            assert r.returncode == 1 and path.encode() in r.stdout + r.stderr, (
                f"{where}:\n{r.stdout.decode()}{r.stderr.decode()}"
            )
            continue
        assert r.returncode == 1, f"{where}: exit {r.returncode}"
        errors = r.stderr.decode().splitlines()
        assert errors and all(e.startswith("kq: error: ") and path in e for e in errors), (
            f"{where}: {r.stderr.decode()}"
        )


def test_a_valid_batch_at_the_largest_offsets_fills_the_partition_without_a_crash(run_kq, data_dir):
    """Offsets are signed 64-bit. A (crafted) batch that ends at offset 2^63-2 leaves the
    partition full: produce refuses clearly, readers serve it, verify warns. One that
    passes it is corruption, refused by readers and named by verify."""
    assert run_kq("topic", "create", "t").returncode == 0
    segment = os.path.join(data_dir, "topics", "t", "0", f"{0:020d}.log")
    with open(segment, "wb") as f:
        f.write(batchfmt.encode(2**63 - 2, [b"last"]))
    r = run_kq("produce", "t", input="more\n")
    assert r.returncode == 1 and r.stderr.startswith(b"kq: error: partition t/0 is full"), r.stderr
    r = run_kq("consume", "t", "-F", "%o %s\n")
    assert (r.returncode, r.stdout) == (0, b"9223372036854775806 last\n"), r.stderr
    r = run_kq("consume", "t", "-g", "g")
    assert (r.returncode, r.stdout) == (0, b"last\n"), r.stderr
    assert kq.Groups(kq.DataDir(data_dir)).committed("g", "t") == {0: 2**63 - 1}
    r = run_kq("verify")
    assert r.returncode == 0 and b"warning: the partition is full" in r.stdout, r.stdout + r.stderr
    with open(segment, "wb") as f:
        f.write(batchfmt.encode(2**63 - 1, [b"past", b"the end"]))
    for args in (["consume", "t"], ["consume", "t", "-g", "g2"], ["produce", "t"]):
        r = run_kq(*args, input="more\n")
        assert r.returncode == 1 and r.stderr.startswith(b"kq: error: ") and b"Traceback" not in r.stderr, (
            args,
            r.stderr,
        )
    r = run_kq("verify")
    assert r.returncode == 1 and b"impossible offsets 9223372036854775807..9223372036854775808" in r.stdout, r.stdout


def test_segment_names_in_other_scripts_digits_are_not_segments(run_kq, data_dir):
    """str.isdigit() accepts '٠' (Arabic-Indic zero) and '²'; int() reads the first as 0.
    Files so named are not kq's segments: no traceback, no second segment 0."""
    assert run_kq("produce", "t", input="a\n").returncode == 0
    partition = os.path.join(data_dir, "topics", "t", "0")
    for name in ("٠" * 20 + ".log", "²" * 20 + ".log", "٠" * 20 + ".index"):
        with open(os.path.join(partition, name), "wb") as f:
            f.write(batchfmt.encode(0, [b"planted"]))
    for args in (["consume", "t"], ["topic", "describe", "t"], ["verify"]):
        r = run_kq(*args)
        assert r.returncode == 0 and b"Traceback" not in r.stderr and b"planted" not in r.stdout, (args, r.stderr)
    assert run_kq("produce", "t", input="b\n").returncode == 0
    assert run_kq("consume", "t").stdout == b"a\nb\n"
