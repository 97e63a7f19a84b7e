import json

import pytest

import kq

# Apache Kafka's own vectors (clients/src/test/.../utils/UtilsTest.java, testMurmur2).
KAFKA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
    b"": 275646681,
}


@pytest.mark.parametrize("key,expected", KAFKA_VECTORS.items())
def test_murmur2_matches_kafka(key, expected):
    assert kq.murmur2(key) == expected


def test_partition_is_to_positive_modulo():
    # toPositive(-790332482) = 1357151166; 1357151166 % 50 = 16
    assert kq.partition_for_key(b"foobar", 50) == 16
    assert all(0 <= kq.partition_for_key(k, 7) < 7 for k in KAFKA_VECTORS)


def test_keyed_produce_lands_in_kafkas_partition(run_kq):
    keys = [k.decode() for k in KAFKA_VECTORS if k and b":" not in k]
    lines = "".join(f"{k}:v\n" for k in keys)
    assert run_kq("produce", "keyed", "--partitions", "12", "-K", ":", input=lines).returncode == 0
    out = run_kq("consume", "keyed", "-F", r"%k %p\n").stdout.decode().split("\n")
    placed = dict(line.split(" ") for line in out if line)
    assert placed == {k: str(kq.partition_for_key(k.encode(), 12)) for k in keys}


def test_key_delimiter_splits_at_the_first_and_lines_without_it_have_no_key(run_kq):
    # Enough lines for several batches, mixing the fast path (one delimiter a
    # line) with lines that have none or several.
    lines = [f"user{i % 37}:value {i}" for i in range(30_000)]
    lines[5] = "no delimiter here"
    lines[20_001] = "k:v:with:colons"
    assert run_kq("produce", "t", "--partitions", "8", "-K", ":", input="\n".join(lines) + "\n").returncode == 0
    rows = [json.loads(line) for line in run_kq("consume", "t", "--json").stdout.splitlines()]
    assert len(rows) == len(lines)
    got = {(r["key"], r["value"]) for r in rows}
    want = {(None, line) if ":" not in line else tuple(line.split(":", 1)) for line in lines}
    assert got == want
    for r in rows:
        if r["key"] is not None:
            assert r["partition"] == kq.partition_for_key(r["key"].encode(), 8), r
    # A longer delimiter that a join could fake (messages ending and starting with ':').
    run_kq("produce", "u", "-K", "::", input="a::x:\n:y::z\n")
    rows = [json.loads(line) for line in run_kq("consume", "u", "--json").stdout.splitlines()]
    assert [(r["key"], r["value"]) for r in rows] == [("a", "x:"), (":y", "z")]
