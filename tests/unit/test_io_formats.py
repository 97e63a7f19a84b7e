"""Input framing, the JSON envelope and the output formats, in-process."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kq.engine import batch as batchfmt
from kq.engine.framing import arg_bytes, read_messages, split_keys, unescape
from kq.envelope import decode_lines, decode_record
from kq.envelope_encode import _record_object, encode_batch, encode_record
from kq.errors import MessageTooLarge, UsageError
from kq.formats import format_writer, json_writer, record_writer, values_writer


def one_batch(values, **columns):
    data = batchfmt.encode(5, values, **columns)
    return batchfmt.decode(data, 0, batchfmt.check(data, 0, len(data))[1])


# ---------------------------------------------------------------- framing (kcat's input.c)


def messages_from(data: bytes, delimiter: bytes = b"\n") -> list[bytes]:
    import tempfile

    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.seek(0)
        return [m for messages, _ in read_messages(f.fileno(), delimiter) for m in messages]


@pytest.mark.parametrize(
    "data, delimiter, messages",
    [
        (b"a\nb\nc\n", b"\n", [b"a", b"b", b"c"]),
        (b"a\nb", b"\n", [b"a", b"b"]),  # the last message needs no delimiter
        (b"a\n\nb\n", b"\n", [b"a", b"", b"b"]),  # empty lines are messages
        (b"a\0b\0", b"\0", [b"a", b"b"]),
        (b"a--b--c", b"--", [b"a", b"b", b"c"]),
        (b"", b"\n", []),
    ],
)
def test_read_messages(data, delimiter, messages):
    assert messages_from(data, delimiter) == messages


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([b"a", b"b", b"\n", b"-", b"--", b"xyz"]), max_size=30).map(b"".join),
    st.sampled_from([b"\n", b"--"]),
    st.integers(1, 5),
)
def test_messages_read_in_small_pieces_are_the_input_split(data, delimiter, read_size):
    """However the reads cut the input (a message or a delimiter across reads), the messages are the
    input split at the delimiter, and each yield's size counts what it covers."""
    import os

    import kq.engine.framing

    read, write = os.pipe()
    os.write(write, data)
    os.close(write)
    got, covered = [], 0
    kept, kq.engine.framing.READ_SIZE = kq.engine.framing.READ_SIZE, read_size
    try:
        for messages, size in read_messages(read, delimiter, batch_bytes=read_size):
            got += messages
            covered += size
    finally:
        kq.engine.framing.READ_SIZE = kept
        os.close(read)
    expected = data.split(delimiter)
    if expected[-1] == b"":
        expected.pop()
    assert got == expected
    assert covered >= sum(map(len, expected))


def test_a_message_longer_than_a_batch_is_refused():
    with pytest.raises(MessageTooLarge):
        messages_from(b"x" * (batchfmt.MAX_BATCH_BYTES + 10))


def test_split_keys_at_the_first_delimiter():
    keys, values = split_keys([b"k:v", b"nokey", b"k2:v:2", b":empty"], b":")
    assert keys == [b"k", None, b"k2", b""]
    assert values == [b"v", b"nokey", b"v:2", b"empty"]


@pytest.mark.parametrize(
    "text, data", [(r"\n", b"\n"), (r"\t|\0", b"\t|\0"), (r"\x41\\", b"A\\"), ("plain", b"plain"), ("\udcff", b"\xff")]
)
def test_unescape(text, data):
    assert unescape(text) == data


def test_arguments_are_the_shells_bytes():
    assert arg_bytes("caf\udcc3\udca9") == b"caf\xc3\xa9"


# ---------------------------------------------------------------- envelope


def test_envelope_round_trip_with_binary_and_repeated_headers():
    line = encode_record("t", 2, 9, 1234, b"\xff key", None, [("a", b"1"), ("a", b"\xfe")])
    obj = json.loads(line)
    assert obj["key_encoding"] == "base64" and obj["value"] is None and obj["headers_encoding"] == "base64"
    key, value, headers, partition, timestamp = decode_record(line.encode(), 1)
    assert (key, value, headers, partition, timestamp) == (b"\xff key", None, [("a", b"1"), ("a", b"\xfe")], 2, 1234)


def test_the_older_headers_object_is_still_read():
    assert decode_record(b'{"value": "v", "headers": {"a": "1"}}', 1)[2] == [("a", b"1")]


@pytest.mark.parametrize(
    "line, message",
    [
        (b'{"vaule": "x"}', "line 3"),
        (b"[1, 2]", "line 3"),
        (b"{not json", "line 3"),
        (b'{"value": "x", "partition": "0"}', "line 3"),
        (b'{"value": "x", "timestamp": true}', "line 3"),
    ],
)
def test_bad_envelopes_name_their_line(line, message):
    with pytest.raises(UsageError, match=message):
        decode_record(line, 3)


_maybe_bytes = st.none() | st.binary(max_size=8) | st.text(max_size=8).map(str.encode)
_headers = st.lists(st.tuples(st.text(max_size=4), _maybe_bytes), max_size=3)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_maybe_bytes, _maybe_bytes, _headers), min_size=1, max_size=6))
def test_a_batch_encodes_to_the_bytes_the_stdlib_writes_per_record(records):
    """The msgspec fast path writes, byte for byte, what json.dumps(ensure_ascii=False) writes."""
    keys, values, headers = (list(column) for column in zip(*records))
    expected = b"".join(
        json.dumps(_record_object("t", 1, 10 + i, 99, k, v, h), ensure_ascii=False, separators=(",", ":")).encode(
            "utf-8"
        )
        + b"\n"
        for i, (k, v, h) in enumerate(records)
    )
    assert encode_batch("t", 1, range(10, 10 + len(records)), [99] * len(records), keys, values, headers) == expected
    assert b"".join(encode_record("t", 1, 10 + i, 99, *r).encode() + b"\n" for i, r in enumerate(records)) == expected


_json_scalar = st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.text(max_size=4) | st.floats()
_field_value = st.recursive(_json_scalar, lambda inner: st.lists(inner, max_size=3), max_leaves=6)
_field_names = st.sampled_from(
    ["topic", "partition", "offset", "timestamp", "key", "value", "headers", "key_encoding", "vaule"]
)
_kq_line = st.builds(  # as consume --json writes them: the shape decode_lines reads by one regex
    lambda p, t, k, v: encode_record("t", p, 7, t, k, v, []).encode(),
    st.integers(-2, 3),
    st.integers(-3, 3) | st.integers(2**63 - 2, 2**64 - 1),
    _maybe_bytes,
    _maybe_bytes,
)
_envelope_line = (
    _kq_line
    | st.dictionaries(_field_names, _field_value, max_size=5).map(lambda o: json.dumps(o).encode())
    | st.sampled_from([b"", b"  ", b"{", b"[1]", b'{"value": "\\udcff"}', b'{"value": "x", "headers": {"a": "1"}}'])
    | st.builds(
        lambda v, k: json.dumps({"value": v, "key": k, "headers": [["h", v]]}).encode(),
        st.text(max_size=4),
        st.none() | st.text(max_size=4),
    )
)

# Lines a fast reader could get wrong where the reference reader (json.loads, then checks) does not:
# two objects on a line, one object over two lines, bytes that are not UTF-8 (or encode a surrogate),
# a BOM, repeated fields, numbers of the wrong kind or range, NaN, the older headers object.
_odd_line = st.sampled_from(
    [
        b'{"value":"a"},{"value":"b"}',
        b'{"value":"a"} {"value":"b"}',
        b'{"value":"v","headers":[["a"',
        b'"b"]]}',
        b'{"topic":"}',
        b'{","value":"v"}',
        b'{"value":"\xff"}',
        b'{"value":"a","topic":"\xff"}',
        b'{"value":"\xed\xa0\x80"}',
        b'\xef\xbb\xbf{"value":"a"}',
        b'{"value":"a","value":null}',
        b'{"value":null,"value":"a"}',
        b'{"value":"a","partition":1.0}',
        b'{"value":"a","partition":true}',
        b'{"value":"a","partition":18446744073709551616}',
        b'{"value":"a","timestamp":-2}',
        b'{"value":"a","timestamp":9223372036854775808}',
        b'{"value":"a","offset":1e400}',
        b'{"value":"a","offset":-0,"topic":NaN}',
        b'{"value":"a"}\r',
        b' {"value":"a"} ',
        b'{"value":"a","headers":{"x":"1","x":"2"}}',
        b'{"value":"a","headers":[["x",null],["x","\\u00e9"]]}',
        b'{"value":"a","headers":[["\\ud800","v"]]}',
        b'{"value":"a","key_encoding":null}',
        b'{"value":"\\u0000\x7f","key":""}',
        b'{"value":"a\x1f"}',
        b'[{"value":"a"}]',
        b"null",
    ]
)


def _mutated(line: bytes, at: int, cut: int, insert: bytes) -> bytes:
    at %= len(line) + 1
    return line[:at] + insert + line[at + cut :]


_broken_kq_line = st.builds(_mutated, _kq_line, st.integers(0, 200), st.integers(0, 2), st.binary(max_size=2))


def _partition_0_or_1(partition: int, line_no: int) -> None:
    if partition not in (0, 1):
        raise UsageError(f"line {line_no}: partition {partition} does not exist")


def _decodes_as_the_reference_reader(lines: list[bytes], piece: int = 256) -> None:
    """decode_lines (msgspec, by columns) gives decode_record's records line by line, and its
    error (or the partition check's) at the same line."""
    expected, error = [], None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = decode_record(line, number)
            if record[3] is not None:
                _partition_0_or_1(record[3], number)
        except UsageError as exc:
            error = (number, str(exc))
            break
        expected.append(record)
    records: list = []
    last, got_error = decode_lines(lines, 0, records, _partition_0_or_1, piece)
    assert records == expected
    assert (None if got_error is None else (last, str(got_error))) == error


@settings(max_examples=500, deadline=None)
@given(st.lists(_envelope_line, min_size=1, max_size=5))
def test_lines_decode_as_the_reference_reader_decodes_each(lines):
    _decodes_as_the_reference_reader(lines)


@settings(max_examples=300, deadline=None)
@given(st.lists(_kq_line | _envelope_line, min_size=1, max_size=12), st.integers(1, 4))
def test_lines_decode_in_pieces_as_the_reference_reader_decodes_each(lines, piece):
    """A list with an odd line in it is read again in pieces: the same records, errors and line numbers."""
    _decodes_as_the_reference_reader(lines, piece)


@settings(max_examples=300, deadline=None)
@given(st.lists(_kq_line, min_size=1, max_size=8))
def test_lines_as_consume_writes_them_decode_as_the_reference_reader_decodes_each(lines):
    _decodes_as_the_reference_reader(lines)


@settings(max_examples=500, deadline=None)
@given(st.lists(_kq_line | _odd_line | _broken_kq_line, min_size=1, max_size=8), st.integers(1, 4))
# As many objects as lines, but not one a line: read as a JSON array, these pass for good records.
@example([b'{"value":"a"},{"value":"b"}', b'{"value":"v","headers":[["a"', b'"b"]]}'], 4)
@example([b'{"value":"a"} {"value":"b"}', b'{"topic":"}', b'{","value":"v"}'], 4)
def test_odd_and_damaged_lines_decode_as_the_reference_reader_decodes_each(lines, piece):
    _decodes_as_the_reference_reader(lines, piece)


def test_lines_as_consume_writes_them_never_go_to_the_reference_reader(monkeypatch):
    """The common shape is read whole lists at a time (the speed of produce --json rests on it)."""
    import kq.envelope

    def refuse(line, line_no):
        raise AssertionError(f"line {line_no} went to the reference reader: {line!r}")

    records = [
        (None, b"v", [], 0, 5),
        (b"k", 'é\t"x'.encode(), [("h", b"1"), ("h", None)], 1, -1),
        (b"", None, [], 0, 7),
    ]
    lines = [encode_record("t", p, i, ts, k, v, h).encode() for i, (k, v, h, p, ts) in enumerate(records)]
    monkeypatch.setattr(kq.envelope, "decode_record", refuse)
    got: list = []
    assert decode_lines(lines, 0, got) == (3, None)
    assert got == records


# ---------------------------------------------------------------- output formats (kcat's format.c)


def test_values_with_a_delimiter_and_tombstones_as_empty():
    b = one_batch([b"a", None, b"c"])
    assert values_writer(b"\n")(0, b, 0, 3) == b"a\n\nc\n"
    assert values_writer(b"\0")(0, b, 1, 3) == b"\0c\0"


def test_format_tokens():
    b = one_batch([b"v"], keys=[b"k"], headers=[[("h", b"1"), ("h", b"2")]], timestamps=[77])
    assert format_writer("t", r"%t %p %o %k %s %T %h %%\n")(3, b, 0, 1) == b"t 3 5 k v 77 h=1,h=2 %\n"


@pytest.mark.parametrize("fmt", ["%x", "50%", "%"])
def test_unknown_format_tokens_are_usage_errors(fmt):
    with pytest.raises(UsageError, match="not a format token"):
        format_writer("t", fmt)


def test_json_lines_read_back_as_the_same_records():
    b = one_batch([b"v", None], keys=[None, b"\x00"])
    lines = json_writer("t")(1, b, 0, 2).decode().splitlines()
    assert [decode_record(line.encode(), i)[:2] for i, line in enumerate(lines)] == [(None, b"v"), (b"\x00", None)]
    assert record_writer("t", as_json=True)(1, b, 0, 2) == json_writer("t")(1, b, 0, 2)
