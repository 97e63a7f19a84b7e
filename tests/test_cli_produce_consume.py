"""produce / consume through the real command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from conftest import KQ, wait_for


def test_text_round_trip(run_kq):
    r = run_kq("produce", "demo", input="".join(f"line {i}\n" for i in range(100)))
    assert r.returncode == 0, r.stderr
    assert b"created topic 'demo'" in r.stderr
    out = run_kq("consume", "demo")
    assert out.returncode == 0
    assert out.stdout == "".join(f"line {i}\n" for i in range(100)).encode()


def test_last_line_needs_no_newline_and_empty_lines_are_messages(run_kq):
    run_kq("produce", "t", input="a\n\nb")
    assert run_kq("consume", "t", "--json").stdout.count(b"\n") == 3
    assert run_kq("consume", "t").stdout == b"a\n\nb\n"


def test_binary_round_trip_with_nul_delimiter(run_kq):
    messages = [bytes(range(256)).replace(b"\0", b""), b"\n\n\r\xff\xfe", b"", b"plain"]
    r = run_kq("produce", "bin", "-0", input=b"\0".join(messages) + b"\0")
    assert r.returncode == 0, r.stderr
    assert run_kq("consume", "bin", "-0").stdout == b"\0".join(messages) + b"\0"
    # The same bytes survive a JSON round trip (base64 for what is not UTF-8).
    copied = run_kq("consume", "bin", "--json").stdout
    assert b'"value_encoding":"base64"' in copied
    assert run_kq("produce", "bin2", "--json", input=copied).returncode == 0
    assert run_kq("consume", "bin2", "-0").stdout == b"\0".join(messages) + b"\0"


def test_arguments_that_are_not_utf8_are_bytes(run_kq):
    # A shell passes arguments as bytes: `-k "$(printf '\xff')"` means the byte 0xff.
    r = run_kq("produce", "t", "-k", b"\xfe", "-H", b"bin=\xff", "-D", b"\xfc", input=b"a\xfcb")
    assert r.returncode == 0, r.stderr
    out = run_kq("consume", "t", "-F", b"%k|%h|%s\xfd", "-o", "0").stdout
    assert out == b"\xfe|bin=\xff|a\xfd\xfe|bin=\xff|b\xfd"
    assert run_kq("consume", "t", "-D", b"\xff").stdout == b"a\xffb\xff"
    r = run_kq("produce", "k", "-K", b"\xff", input=b"key\xffvalue\n")
    assert r.returncode == 0, r.stderr
    assert run_kq("consume", "k", "-F", r"%k=%s").stdout == b"key=value"
    # Header names are text in Kafka: a name that is not UTF-8 is refused in one line.
    r = run_kq("produce", "t", "-H", b"\xff=1", input="x\n")
    assert r.returncode == 2 and r.stderr.startswith(b"kq: error: ") and b"is not UTF-8 text" in r.stderr
    for args in (["consume", b"\xff"], ["consume", "t", "-g", b"\xff"], ["consume", "t", "-o", b"\xff"]):
        r = run_kq(*args)
        assert r.returncode == 2 and r.stderr.startswith(b"kq: error: ") and b"Traceback" not in r.stderr, r.stderr


def test_custom_delimiter_with_escape(run_kq):
    run_kq("produce", "t", "-D", r"\t", input="a\tb\tc")
    assert run_kq("consume", "t", "-D", "|").stdout == b"a|b|c|"


def test_six_megabyte_message(run_kq):
    big = os.urandom(3 * 1024 * 1024).hex().encode()  # 6 MiB, no newline inside
    assert run_kq("produce", "big", input=big + b"\nsmall\n").returncode == 0
    out = run_kq("consume", "big").stdout
    assert out == big + b"\nsmall\n"


def test_long_line_from_a_pipe_takes_linear_time(run_kq):
    # One 60 MB line arrives in many pipe-sized reads; joining the pending
    # bytes again at every read took 17 s, a linear pass well under a second.
    line = b"x" * (60 << 20)
    start = time.monotonic()
    r = run_kq("-q", "produce", "long", input=line + b"\n")
    took = time.monotonic() - start
    assert r.returncode == 0, r.stderr
    assert took < 8, f"a 60 MB line from a pipe took {took:.1f} s to produce"
    assert run_kq("consume", "long").stdout == line + b"\n"


def test_file_option(run_kq, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("x\ny\n")
    assert run_kq("produce", "t", "--file", src).returncode == 0
    assert run_kq("consume", "t").stdout == b"x\ny\n"
    r = run_kq("produce", "t", "--file", tmp_path / "missing")
    assert r.returncode == 1 and b"kq: error: cannot read" in r.stderr


def test_json_envelope_copies_keys_headers_nulls_and_partitions(run_kq):
    run_kq("topic", "create", "src", "--partitions", "3")
    run_kq("produce", "src", "-K", ":", "-H", "trace=abc", "-H", "x=1", input="k1:v1\nk2:\nk3:v3\n")
    run_kq("produce", "src", "-p", "2", "-Z", input="\n")  # a null value (tombstone)
    src = [json.loads(line) for line in run_kq("consume", "src", "--json").stdout.splitlines()]
    assert {r["key"] for r in src} == {"k1", "k2", "k3", None}
    assert all(r["headers"] == [["trace", "abc"], ["x", "1"]] for r in src if r["key"])
    assert [r["value"] for r in src if r["key"] == "k2"] == [""]
    assert [r["value"] for r in src if r["key"] is None] == [None]
    run_kq("topic", "create", "dst", "--partitions", "3")
    piped = run_kq("consume", "src", "--json").stdout
    assert run_kq("produce", "dst", "--json", input=piped).returncode == 0
    dst = [json.loads(line) for line in run_kq("consume", "dst", "--json").stdout.splitlines()]
    strip = lambda rs: sorted((r["partition"], r["offset"], r["key"], r["value"], json.dumps(r["headers"])) for r in rs)  # noqa: E731
    assert strip(dst) == strip(src)


def test_json_envelope_keeps_repeated_headers_in_order(run_kq):
    run_kq("produce", "dup", "-H", "a=1", "-H", "b=x", "-H", "a=2", input="v\n")
    line = json.loads(run_kq("consume", "dup", "--json").stdout)
    assert line["headers"] == [["a", "1"], ["b", "x"], ["a", "2"]]
    # The copy is faithful: every header, in order.
    copied = run_kq("produce", "dup-copy", "--json", input=run_kq("consume", "dup", "--json").stdout)
    assert copied.returncode == 0, copied.stderr
    assert run_kq("consume", "dup-copy", "-F", r"%h\n").stdout == b"a=1,b=x,a=2\n"
    # Header values that are not UTF-8 are base64, still in order.
    run_kq(
        "produce",
        "dup-bin",
        "--json",
        input=json.dumps({"value": "v", "headers": [["a", "/w=="], ["a", "AA=="]], "headers_encoding": "base64"})
        + "\n",
    )
    assert run_kq("consume", "dup-bin", "-F", "%h").stdout == b"a=\xff,a=\x00"
    assert json.loads(run_kq("consume", "dup-bin", "--json").stdout)["headers"] == [["a", "/w=="], ["a", "AA=="]]


def test_json_envelope_reads_the_older_headers_object(run_kq):
    r = run_kq("produce", "old", "--json", input='{"value": "v", "headers": {"trace": "abc", "x": "1"}}\n')
    assert r.returncode == 0, r.stderr
    assert run_kq("consume", "old", "-F", "%h").stdout == b"trace=abc,x=1"


@pytest.mark.parametrize(
    "line,message",
    [
        ('{"vaule": "x"}', b'line 2: unknown field "vaule"'),
        ('{"key": "k"}', b"line 2: no 'value' field"),
        ('{"value": "x", "value_encoding": "hex"}', b"line 2: 'value_encoding' must be"),
        ('{"value": "x", "headers": [["a"]]}', b"line 2: each header must be a [name, value] pair"),
        ('{"value": "x", "headers": [["a", 1]]}', b"line 2: header 'a' must have a string value or null"),
        ('{"value": "x", "headers": "a=1"}', b"line 2: 'headers' must be a list"),
        ("[" * 100_000, b"line 2: not valid JSON"),
        ('{"value": "\\udcff"}', b"line 2: 'value' is not valid Unicode text"),
        ('{"key": "\\ud800", "value": "x"}', b"line 2: 'key' is not valid Unicode text"),
        ('{"value": "x", "headers": [["\\ud800", "v"]]}', b"line 2: a header name is not valid Unicode text"),
        ('{"value": "x", "timestamp": 99999999999999999999}', b"line 2: 'timestamp' must be an integer from 0"),
        ('{"value": "x", "timestamp": -5}', b"line 2: 'timestamp' must be an integer from 0"),
    ],
)
def test_json_lines_with_unknown_or_malformed_fields_are_refused(run_kq, line, message):
    r = run_kq("-q", "produce", "t", "--json", input='{"value": "ok"}\n' + line + "\n")
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and b"Traceback" not in r.stderr
    assert r.stderr.count(b"\n") == 1, r.stderr


def envelope_rows(stdout: bytes) -> list[tuple]:
    return sorted(
        (r["partition"], r["offset"], r["timestamp"], r["key"], r["value"], json.dumps(r["headers"]))
        for r in map(json.loads, stdout.splitlines())
    )


def test_json_copy_into_a_missing_topic_keeps_every_partition(run_kq):
    run_kq("topic", "create", "src", "--partitions", "4")
    # Partitions 1-3 come last, far into the input, after many reads.
    run_kq("produce", "src", "-p", "0", input="".join(f"{i}\n" for i in range(40_000)))
    for p in range(1, 4):
        run_kq("produce", "src", "-p", p, "-K", ":", "-H", "h=1", input=f"k{p}:v{p}\n")
    source = run_kq("consume", "src", "--json").stdout
    r = run_kq("produce", "copy", "--json", input=source)
    assert r.returncode == 0, r.stderr
    ends = [p["end_offset"] for p in json.loads(run_kq("topic", "describe", "copy", "--json").stdout)["partitions"]]
    assert ends == [40_000, 1, 1, 1]
    assert envelope_rows(run_kq("consume", "copy", "--json").stdout) == envelope_rows(source)


def test_json_copy_into_a_smaller_topic_says_how_much_was_written(run_kq):
    run_kq("topic", "create", "src", "--partitions", "2")
    run_kq("produce", "src", "-p", "0", input="a\nb\nc\n")
    run_kq("produce", "src", "-p", "1", input="d\n")
    run_kq("topic", "create", "small")
    r = run_kq("produce", "small", "--json", input=run_kq("consume", "src", "--json").stdout)
    assert r.returncode == 2
    assert r.stderr == (
        b"kq: error: line 4: partition 1 does not exist in topic 'small' (it has partitions 0..0); "
        b"3 records from the lines before it were written\n"
    )
    assert run_kq("consume", "small").stdout == b"a\nb\nc\n"


def test_bad_json_line_in_the_middle_says_what_a_rerun_skips(run_kq):
    lines = [json.dumps({"value": str(i)}) for i in range(5)]
    lines[3] = '{"vaule": "3"}'
    r = run_kq("produce", "t", "--json", input="\n".join(lines) + "\n")
    assert r.returncode == 2
    assert b"line 4: unknown field" in r.stderr and b"3 records from the lines before it were written" in r.stderr
    assert run_kq("consume", "t").stdout == b"0\n1\n2\n"
    lines[3] = '{"value": "3"}'
    assert run_kq("produce", "t", "--json", input="\n".join(lines[3:]) + "\n").returncode == 0
    assert run_kq("consume", "t").stdout == b"0\n1\n2\n3\n4\n"


@pytest.mark.parametrize(
    "args,stdin,message",
    [
        (["--json"], '{"vaule": "x"}\n', b"line 1: unknown field"),
        (["--file", "{tmp}"], "", b"cannot read {tmp}: Is a directory"),
        (["--file", "{tmp}/missing"], "", b"cannot read {tmp}/missing: No such file or directory"),
        (["-p", "1"], "x\n", b"partition 1 does not exist in topic 'new'"),
        (["--json"], '{"value": "x", "partition": -1}\n', b"line 1: partition -1 is not between"),
        ([], "", None),
    ],
)
def test_a_produce_that_writes_nothing_leaves_no_topic(run_kq, tmp_path, args, stdin, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = run_kq("produce", "new", *args, input=stdin)
    if message is None:
        assert r.returncode == 0 and r.stderr == b""
    else:
        assert r.returncode in (1, 2) and b"Traceback" not in r.stderr
        assert r.stderr.startswith(b"kq: error: ") and message.replace(b"{tmp}", str(tmp_path).encode()) in r.stderr, (
            r.stderr
        )
    assert run_kq("topic", "list").stdout == b""


def test_partition_option_wins_over_the_partitions_of_json_lines(run_kq):
    run_kq("topic", "create", "src", "--partitions", "3")
    for p in range(3):
        run_kq("produce", "src", "-p", p, input=f"{p}\n")
    run_kq("topic", "create", "merged", "--partitions", "2")
    r = run_kq("produce", "merged", "--json", "-p", "1", input=run_kq("consume", "src", "--json").stdout)
    assert r.returncode == 0, r.stderr
    assert run_kq("consume", "merged", "-p", "1").stdout == b"0\n1\n2\n"


def test_key_option_sends_all_to_one_partition(run_kq):
    run_kq("topic", "create", "t", "--partitions", "4")
    run_kq("produce", "t", "-k", "user-42", input="a\nb\nc\n")
    parts = set(run_kq("consume", "t", "-F", r"%p %k\n").stdout.decode().split("\n")) - {""}
    assert len(parts) == 1 and parts.pop().endswith(" user-42")


def test_unkeyed_messages_spread_over_partitions(run_kq):
    run_kq("topic", "create", "t", "--partitions", "3")
    for _ in range(12):
        run_kq("produce", "t", input="m\n")
    d = json.loads(run_kq("topic", "describe", "t", "--json").stdout)
    assert sum(p["end_offset"] for p in d["partitions"]) == 12
    assert sum(1 for p in d["partitions"] if p["end_offset"] > 0) >= 2


def test_unkeyed_input_spreads_evenly_like_a_sticky_partitioner(run_kq):
    # One pipe's worth of small unkeyed messages (less than one 1 MiB read)
    # is spread in runs of about 16 KiB, so every partition gets its share.
    run_kq("topic", "create", "t", "--partitions", "4")
    assert run_kq("produce", "t", input="".join(f"{i}\n" for i in range(100_000))).returncode == 0
    ends = [p["end_offset"] for p in json.loads(run_kq("topic", "describe", "t", "--json").stdout)["partitions"]]
    assert sum(ends) == 100_000
    assert min(ends) > 15_000, f"unkeyed messages were not spread over the partitions: {ends}"
    # Within a partition the input order is kept.
    for p in range(4):
        values = [int(v) for v in run_kq("consume", "t", "-p", p).stdout.split()]
        assert values == sorted(values)
    # The same for --json lines without partition or key, and -K lines without the delimiter.
    for topic, args, line in (("j", ["--json"], '{{"value": "{}"}}\n'), ("k", ["-K", ":"], "{}\n")):
        run_kq("topic", "create", topic, "--partitions", "4")
        assert run_kq("produce", topic, *args, input="".join(line.format(i) for i in range(20_000))).returncode == 0
        ends = [p["end_offset"] for p in json.loads(run_kq("topic", "describe", topic, "--json").stdout)["partitions"]]
        assert min(ends) > 2_000, f"{args}: unkeyed messages were not spread over the partitions: {ends}"


def test_format_tokens(run_kq):
    run_kq("produce", "fmt", "-k", "K", "-H", "h=v", input="hello\n")
    out = run_kq("consume", "fmt", "-F", r"%t|%p|%o|%k|%s|%h|%%|\t|%T\n").stdout.decode()
    topic, part, off, key, value, headers, pct, tab, ts = out.rstrip("\n").split("|")
    assert (topic, part, off, key, value, headers, pct, tab) == ("fmt", "0", "0", "K", "hello", "h=v", "%", "\t")
    assert abs(int(ts) - time.time() * 1000) < 60_000
    # The format alone decides what is written: no delimiter is added.
    assert run_kq("consume", "fmt", "-F", "%s").stdout == b"hello"


def test_offset_specs(run_kq):
    run_kq("produce", "t", input="".join(f"{i}\n" for i in range(10)))
    c = lambda *a: run_kq("consume", "t", *a).stdout.decode().split()  # noqa: E731
    assert c("-o", "beginning") == [str(i) for i in range(10)]
    assert c("-o", "7") == ["7", "8", "9"]
    assert c("-o", "-2") == ["8", "9"]
    assert c("-o", "end") == []
    assert c("-o", "3:5") == ["3", "4"]
    assert c("-o", "-4:-2") == ["6", "7"]
    assert c("-o", "2", "-n", "3") == ["2", "3", "4"]
    assert c("-o", "-100") == [str(i) for i in range(10)]


def test_timestamp_specs(run_kq, tmp_path):
    # Fabricate timestamps through the JSON envelope rather than sleeping.
    base = 1_700_000_000_000
    lines = "".join(json.dumps({"value": str(i), "timestamp": base + i * 60_000}) + "\n" for i in range(10))
    assert run_kq("produce", "t", "--json", input=lines).returncode == 0
    c = lambda *a: run_kq("consume", "t", *a).stdout.decode().split()  # noqa: E731
    assert c("-o", f"@{base + 5 * 60_000}") == ["5", "6", "7", "8", "9"]
    assert c("-o", f"@{base + 5 * 60_000 - 1}") == ["5", "6", "7", "8", "9"]
    # ISO-8601 with 'Z': 1_700_000_000_000 is 2023-11-14T22:13:20Z
    assert c("-o", "@2023-11-14T22:15:20Z:@2023-11-14T22:17:20Z") == ["2", "3"]
    assert c("-o", "@-1h") == []  # all of it is years old
    assert c("-o", "@0:@-1h") == [str(i) for i in range(10)]


def test_partition_option(run_kq):
    run_kq("topic", "create", "t", "--partitions", "2")
    run_kq("produce", "t", "-p", "1", input="one\n")
    run_kq("produce", "t", "-p", "0", input="zero\n")
    assert run_kq("consume", "t", "-p", "1").stdout == b"one\n"
    r = run_kq("consume", "t", "-p", "5")
    assert r.returncode == 2 and b"partition 5 does not exist" in r.stderr
    r = run_kq("produce", "t", "-p", "2", input="x\n")
    assert r.returncode == 2 and b"kq: error:" in r.stderr


def test_consume_ends_at_the_end_as_it_was_at_start(run_kq, spawn_kq, data_dir):
    run_kq("produce", "busy", input="".join(f"{i}\n" for i in range(1000)))
    writer = spawn_kq("produce", "busy", stdin=subprocess.PIPE)
    try:
        writer.stdin.write(b"more\n" * 1000)
        writer.stdin.flush()
        r = run_kq("consume", "busy", timeout=30)
        assert r.returncode == 0
        assert len(r.stdout.split(b"\n")) - 1 >= 1000
    finally:
        writer.stdin.close()
        writer.wait(timeout=30)


def test_follow_sees_new_messages_and_exits_zero_on_sigterm(run_kq, spawn_kq):
    run_kq("produce", "live", input="first\n")
    follower = spawn_kq("consume", "live", "-f")
    lines = []
    os.set_blocking(follower.stdout.fileno(), False)

    def read_lines():
        chunk = follower.stdout.read()
        if chunk:
            lines.extend(chunk.decode().split())
        return lines

    wait_for(lambda: "first" in read_lines(), message="the first message")
    run_kq("produce", "live", input="second\n")
    wait_for(lambda: "second" in read_lines(), message="a message produced while following")
    follower.send_signal(signal.SIGTERM)
    assert follower.wait(timeout=10) == 0
    assert b"Traceback" not in follower.stderr.read()


def test_slow_pipe_line_is_appended_before_eof(run_kq, spawn_kq):
    producer = spawn_kq("produce", "logs", stdin=subprocess.PIPE)
    producer.stdin.write(b"alone\n")
    producer.stdin.flush()
    # The producer's stdin stays open: the line must still become visible.
    wait_for(lambda: run_kq("consume", "logs").stdout == b"alone\n", message="a line from an open pipe")
    producer.stdin.close()
    assert producer.wait(timeout=10) == 0


def test_broken_pipe_is_quiet(run_kq, data_dir):
    run_kq("produce", "t", input="".join(f"{i}\n" for i in range(200_000)))
    p = subprocess.run(
        " ".join(KQ) + f" --data-dir '{data_dir}' consume t | head -3",
        shell=True,
        capture_output=True,
        timeout=60,
    )
    assert p.stdout == b"0\n1\n2\n"
    assert p.stderr == b""


@pytest.mark.parametrize(
    "args",
    [
        ["topic", "list"],
        ["topic", "describe", "t"],
        ["topic", "describe", "t", "--json"],
        ["offsets", "show", "t"],
        ["group", "list"],
        ["group", "describe", "g"],
        ["group", "describe", "g", "--json"],
        ["consume", "t"],
    ],
)
def test_every_command_whose_reader_went_away_exits_0_quietly(run_kq, data_dir, args):
    # `set -o pipefail` scripts: a reader that stops early (head) is not kq's failure.
    run_kq("topic", "create", "t", "--partitions", "3")
    assert run_kq("produce", "t", input="a\nb\n").returncode == 0
    assert run_kq("consume", "t", "-g", "g").returncode == 0
    p = subprocess.Popen(KQ + ["--data-dir", data_dir, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # gone before kq writes a byte: its first write fails
    err = p.stderr.read()
    assert (p.wait(timeout=30), err) == (0, b"")


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["consume", "nope"], 1, b"topic 'nope' does not exist"),
        (["topic", "describe", "nope"], 1, b"topic 'nope' does not exist"),
        (["topic", "create", "bad/name"], 2, b"invalid topic name"),
        (["topic", "create", ".."], 2, b"invalid topic name"),
        (["topic", "create", "x" * 250], 2, b"invalid topic name"),
        (["produce", "a b"], 2, b"invalid topic name"),
        (["topic", "create", "t", "--partitions", "0"], 2, b"partitions must be between"),
        (["consume", "t", "-o", "soon"], 2, b"bad offset"),
        (["consume", "t", "-o", "@yesterday"], 2, b"bad timestamp"),
        (["produce", "t", "-H", "=value"], 2, b"is not NAME=VALUE"),
        (["produce", "t", "--json", "-k", "x"], 2, b"--json cannot be combined"),
        (["consume", "t", "--json", "-F", "%s"], 2, b"use either -F/--format or --json"),
        (["topic", "create", "t", "--segment-bytes", "lots"], 2, b"bad size"),
        (["consum", "t"], 2, b"Did you mean 'consume'"),
        (["consume", "t", "--bogus"], 2, b"No such option"),
        (["consume", "t", "-F", "%x"], 2, b"'%x' is not a format token"),
        (["consume", "t", "-F", "%s%"], 2, b"'%' is not a format token"),
        (["consume", "t", "-o", "5:2"], 2, b"bad range '5:2': it ends before it starts"),
        (["consume", "t", "-o", "-2:-4"], 2, b"it ends before it starts"),
        (["consume", "t", "-o", "end:beginning"], 2, b"it ends before it starts"),
        (["consume", "t", "-o", "@2000:@1000"], 2, b"it ends before it starts"),
        (["consume", "t", "-o", "soon"], 2, b"use beginning, end, N, -N, @T or a range A:B"),
        (["offsets", "reset", "t", "-g", "g", "--to", "bogus"], 2, b"use earliest, latest, N, +N, -N or @T"),
        (["topic", "trim", "t", "--before", "bogus"], 2, b"'bogus' is not an offset N or a time @T"),
        (["topic", "trim", "t", "--before", "-5"], 2, b"'-5' is not an offset N or a time @T"),
        (["replicate", "--to", "elsewhere"], 2, b"name the topics to copy, or give --all for every topic"),
        (["replicate", "t", "--all", "--to", "elsewhere"], 2, b"name topics or give --all, not both"),
        (["produce", "t", "--json", "-Z"], 2, b"--json cannot be combined with -k, -K, -D, -0 or -Z"),
        (["consume", "t", "--json", "-0"], 2, b"-D and -0 do not apply to -F or --json output"),
        (["consume", "t", "-F", "%s", "-D", ","], 2, b"-D and -0 do not apply to -F or --json output"),
    ],
)
def test_bad_input_gets_a_clear_error(run_kq, args, code, message):
    run_kq("topic", "create", "t")
    r = run_kq(*args, input="x\n")
    assert r.returncode == code, r.stderr
    assert r.stderr.startswith(b"kq: error: "), r.stderr
    assert message in r.stderr
    assert b"Traceback" not in r.stderr


def test_bad_json_line_is_reported_with_its_number(run_kq):
    r = run_kq("produce", "t", "--json", input='{"value": "ok"}\nnot json\n')
    assert r.returncode == 2 and b"line 2: not valid JSON" in r.stderr


def test_invalid_name_touches_no_file(run_kq, data_dir):
    run_kq("produce", "../escape", input="x\n")
    assert not os.path.exists(os.path.join(os.path.dirname(data_dir), "escape"))


def test_topic_commands(run_kq):
    assert run_kq("topic", "create", "b", "--partitions", "3").returncode == 0
    assert run_kq("topic", "create", "a").returncode == 0
    r = run_kq("topic", "create", "a")
    assert r.returncode == 1 and b"already exists" in r.stderr
    assert run_kq("topic", "create", "a", "--if-not-exists").returncode == 0
    assert run_kq("topic", "list").stdout == b"a\nb\n"
    assert json.loads(run_kq("topic", "list", "--json").stdout) == [
        {"name": "a", "partitions": 1},
        {"name": "b", "partitions": 3},
    ]
    run_kq("produce", "b", "-p", "1", input="x\ny\n")
    d = json.loads(run_kq("topic", "describe", "b", "--json").stdout)
    assert d["name"] == "b" and d["config"]["sync"] is False
    assert [(p["partition"], p["start_offset"], p["end_offset"]) for p in d["partitions"]] == [
        (0, 0, 0),
        (1, 0, 2),
        (2, 0, 0),
    ]
    assert d["partitions"][1]["size"] > 0
    assert run_kq("topic", "delete", "b").returncode == 0
    assert run_kq("topic", "list").stdout == b"a\n"
    assert run_kq("topic", "delete", "b").returncode == 1
    assert run_kq("topic", "delete", "b", "--if-exists").returncode == 0


def test_version_and_module_entry_point(run_kq):
    r = run_kq("--version", data=None)
    assert r.returncode == 0 and r.stdout.startswith(b"kq ")
    r = subprocess.run(["kq", "--version"], capture_output=True)
    assert r.stdout == subprocess.run(KQ + ["--version"], capture_output=True).stdout


def test_data_dir_resolution_and_mode(run_kq, tmp_path):
    env_dir = tmp_path / "from-env"
    r = run_kq("produce", "t", input="x\n", data=None, env={"KQ_DATA_DIR": str(env_dir)})
    assert r.returncode == 0 and (env_dir / "topics" / "t").is_dir()
    assert oct(env_dir.stat().st_mode & 0o777) == "0o700"
    xdg = tmp_path / "xdg"
    env = {k: v for k, v in os.environ.items() if k != "KQ_DATA_DIR"}
    env["XDG_DATA_HOME"] = str(xdg)
    r = subprocess.run(KQ + ["produce", "t"], input=b"x\n", env=env, capture_output=True)
    assert r.returncode == 0 and (xdg / "kq" / "topics" / "t").is_dir()
    env = {k: v for k, v in env.items() if k != "XDG_DATA_HOME"}
    env["HOME"] = str(tmp_path / "home")
    r = subprocess.run(KQ + ["produce", "t"], input=b"x\n", env=env, capture_output=True)
    assert r.returncode == 0 and (tmp_path / "home" / ".local" / "share" / "kq" / "topics" / "t").is_dir()
    assert oct((tmp_path / "home" / ".local").stat().st_mode & 0o777) == "0o700"


def test_reading_does_not_create_the_data_dir(run_kq, data_dir):
    assert run_kq("topic", "list").stdout == b""
    assert run_kq("consume", "t").returncode == 1
    assert not os.path.exists(data_dir)


def test_newer_format_is_refused(run_kq, data_dir):
    run_kq("produce", "t", input="x\n")
    with open(os.path.join(data_dir, "kq.json"), "w") as f:
        f.write('{"format": 99}\n')
    for args in (["consume", "t"], ["produce", "t"], ["topic", "list"]):
        r = run_kq(*args, input="y\n")
        assert r.returncode == 1 and b"newer than this kq understands" in r.stderr


@pytest.fixture
def unwritable_dir(tmp_path):
    """An existing empty directory this process cannot write to (root included)."""
    path = tmp_path / "locked"
    path.mkdir()
    if os.geteuid() == 0:
        # Root ignores permission bits; the immutable attribute stops it too.
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("running as root without chattr +i support")
        yield path
        subprocess.run(["chattr", "-i", str(path)])
    else:
        path.chmod(0o500)
        yield path
        path.chmod(0o700)


def test_unwritable_data_dir_is_a_clear_error(run_kq, unwritable_dir):
    r = run_kq("produce", "t", input="x\n", data=str(unwritable_dir))
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith(b"kq: error: ") and b"Traceback" not in r.stderr
    assert str(unwritable_dir).encode() in r.stderr


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("mode", ["plain", "group", "exec"])
def test_an_interrupted_consume_exits_128_plus_the_signal(run_kq, spawn_kq, tmp_path, sig, code, mode):
    """Before: exit 0, so `kq consume t > dump && mv dump final` shipped a truncated dump (issue #11.2)."""
    assert run_kq("produce", "t", input="".join(f"{i:07d}\n" for i in range(200_000))).returncode == 0
    started = tmp_path / "started"
    args = {"plain": [], "group": ["-g", "g"], "exec": ["-g", "g", "--exec", f"touch {started}; sleep 30"]}[mode]
    reader = spawn_kq("consume", "t", *args)  # its stdout is not read: a plain or group consume blocks writing
    if mode == "exec":
        wait_for(started.exists, message="the --exec command to start")
    else:
        first = reader.stdout.read(8)
        assert first == b"0000000\n"
    reader.send_signal(sig)
    out, err = reader.communicate(timeout=30)
    assert reader.returncode == code, err
    assert b"Traceback" not in err
    if mode == "group":
        # What was written out was committed: the next run goes on right after it, nothing twice.
        written = 1 + (len(out) // 8)
        rest = run_kq("consume", "t", "-g", "g").stdout.split()
        assert int(rest[0]) <= written and int(rest[-1]) == 199_999


@pytest.mark.parametrize("args", [["-f"], ["--timeout", "30"]], ids=["follow", "timeout"])
def test_an_interrupted_follow_still_exits_zero(run_kq, spawn_kq, args):
    run_kq("produce", "t", input="a\n")
    follower = spawn_kq("consume", "t", *args)
    assert follower.stdout.readline() == b"a\n"
    follower.send_signal(signal.SIGINT)
    _, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err


def test_deleting_a_topic_in_use_tells_its_follower_and_producer(run_kq, spawn_kq):
    """Before: `kq: error: No such file or directory: …/topics/t/0` (issues #11.14, #12.9)."""
    run_kq("produce", "t", input="a\n")
    follower = spawn_kq("consume", "t", "-f")
    producer = spawn_kq("produce", "t", stdin=subprocess.PIPE)
    producer.stdin.write(b"b\n")
    producer.stdin.flush()
    assert follower.stdout.readline() == b"a\n"
    assert follower.stdout.readline() == b"b\n"
    assert run_kq("topic", "delete", "t").returncode == 0
    _, err = follower.communicate(timeout=30)
    assert follower.returncode == 1 and err == b"kq: error: topic 't' was deleted\n", err
    _, err = producer.communicate(b"c\n", timeout=30)
    assert producer.returncode == 1 and err.startswith(b"kq: error: topic 't' was deleted"), err
    assert b"1 record was written before the error" in err and err.count(b"\n") == 1


def test_a_record_without_a_timestamp_copies_faithfully(run_kq):
    # Kafka's "no timestamp" (-1), which a client may send through kq serve, survives consume --json | produce --json.
    r = run_kq("produce", "a", "--json", input='{"value": "x", "timestamp": -1}\n')
    assert r.returncode == 0, r.stderr
    copied = run_kq("produce", "b", "--json", input=run_kq("consume", "a", "--json").stdout)
    assert copied.returncode == 0, copied.stderr
    assert json.loads(run_kq("consume", "b", "--json").stdout)["timestamp"] == -1
    r = run_kq("produce", "c", "--json", input='{"value": "x", "timestamp": -2}\n')
    assert r.returncode == 2 and b"or -1 (none)" in r.stderr


def test_every_duration_option_takes_units_and_bare_seconds(run_kq):
    """--timeout, --lease, --retry-backoff, --stalled-after and topic durations all read 1.5s, 500ms, 2m and bare seconds."""
    run_kq("topic", "create", "quiet")
    for timeout in ("300ms", "0.3s", "0.3"):
        r = run_kq("-q", "consume", "quiet", "--timeout", timeout)
        assert (r.returncode, r.stderr) == (3, b""), (timeout, r.stderr)
    r = run_kq("consume", "quiet", "--timeout", "1.5x")
    assert r.returncode == 2 and b"'--timeout': bad duration '1.5x'" in r.stderr, r.stderr
    r = run_kq(
        "-q", "consume", "quiet", "--share", "s", "--lease", "30", "--retry-backoff", "0.1", "--timeout", "100ms"
    )
    assert r.returncode == 3, r.stderr
    run_kq("topic", "create", "kept", "--retention", "3600", "--tombstone-retention", "1.5m")
    config = json.loads(run_kq("topic", "describe", "kept", "--json").stdout)["config"]
    assert (config["retention_ms"], config["tombstone_retention_ms"]) == (3_600_000, 90_000)
    run_kq("consume", "kept", "-g", "g")
    r = run_kq("group", "describe", "g", "--stalled-after", "2m")
    assert r.returncode == 0, r.stderr
