"""Malformed requests to every API kq serve offers: an error answer or a clean close, never an internal error.

Valid requests are built from kafka-python's own message schemas (every field
of every version kq serve offers, so APIs added to ``wire.APIS`` are covered
without a change here), then mutated: fields the schema does not let be null
sent as null, integers at their extremes (negative sizes, int64 timestamps
and offsets that overflow), record batches whose timestamps leave 64 bits,
and at the byte level flips, truncations and huge counts. Each goes to a
real ``kq serve -v`` on a connection of its own; the server must never log
an internal error, and must answer a Metadata request afterwards.

The run is seeded and brief in CI; ``KQ_FUZZ_REQUESTS=200000 KQ_FUZZ_SEED=N``
runs a long one by hand.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import time
import uuid

import pytest
from serve_support import KqServer, read_frame

pytest.importorskip("kafka.protocol.consumer")
from crc32c import crc32c  # noqa: E402
from kafka.protocol.consumer import JoinGroupResponse  # noqa: E402
from kafka.protocol.consumer.metadata import (  # noqa: E402
    ConsumerProtocolAssignment,
    ConsumerProtocolSubscription,
)
from kafka.protocol.metadata import MetadataRequest, MetadataResponse  # noqa: E402
from kafka.record.default_records import DefaultRecordBatchBuilder  # noqa: E402

from kq.serve import wire  # noqa: E402

SEED = int(os.environ.get("KQ_FUZZ_SEED", "20"))
REQUESTS = int(os.environ.get("KQ_FUZZ_REQUESTS", "3000"))
ANSWER_SECONDS = 0.2  # a request still unanswered by then (a long poll, a join) is left to the server
CHECK_EVERY = 250  # requests between checks that the server still answers

TOPICS = ["fz", "fz", "fz", "fz2", "fz-gone"]  # fz has 3 partitions; fz2 is created on first use
GROUPS = ["fzg", "fzg2"]
# Names kq refuses or that look like paths, and others of unusual size or script.
ODD_STRINGS = ["", ".", "..", "../fz", "fz/0", "a" * 300, "é\u0000", "__consumer_offsets", "fz\n"]
JOIN_GROUP, MEMBER_ID_REQUIRED = 11, 79
INT_RANGES = {"int8": 8, "int16": 16, "int32": 32, "int64": 64}
CRC_POSITION, BASE_TIMESTAMP_POSITION, RECORD_COUNT_POSITION = 17, 27, 57  # in a v2 batch header
HEADER_SIZE = 61


# ---------------------------------------------------------------- valid requests


class Draws(random.Random):
    """The run's random choices, and the group members the server has handed out so far.

    Requests that name a real member and generation reach what a made-up id
    never does: a leader's assignments, a member's commits and heartbeats.
    """

    def __init__(self, seed: int):
        super().__init__(seed)
        self.members: list[tuple[str, int]] = []  # (member id, generation), newest last

    def learn(self, key: int, version: int, answer: bytes | None) -> None:
        if key != JOIN_GROUP or answer is None:
            return
        try:
            joined = JoinGroupResponse.decode(answer, version=version, header=True)
        except Exception:
            return
        if joined.member_id and joined.error_code in (0, MEMBER_ID_REQUIRED):
            self.members = (self.members + [(joined.member_id, joined.generation_id)])[-8:]


def _record_batch(rng: Draws) -> bytes:
    producer_id = rng.choice([-1, -1, rng.randrange(0, 1 << 20)])
    b = DefaultRecordBatchBuilder(
        2,
        rng.choice([0, 0, 1, 2, 3, 4]),
        False,
        producer_id,
        0 if producer_id >= 0 else -1,
        rng.choice([-1, 0, 5]),
        2**20,
    )
    repeat = rng.choice([1, 40])  # long enough values to be sent compressed
    for i in range(rng.randint(1, 4)):
        headers = [("h", b"v")] if rng.random() < 0.3 else []
        value = b"value%d" % i * repeat
        b.append(i, rng.choice([None, 1_700_000_000_000 + i]), rng.choice([None, b"k"]), value, headers)
    return bytes(b.build())


def _consumer_protocol(field_name: str) -> bytes:
    if field_name == "assignment":
        a = ConsumerProtocolAssignment(
            version=0,
            assigned_partitions=[ConsumerProtocolAssignment.TopicPartition(topic="fz", partitions=[0])],
            user_data=None,
        )
        return bytes(a.encode(version=0))
    s = ConsumerProtocolSubscription(version=0, topics=["fz"], user_data=None)
    return bytes(s.encode(version=0))


def _int_value(field, rng: Draws) -> int:
    name = field.name
    if name.startswith("generation_id") and rng.members and rng.random() < 0.7:
        return rng.choice(rng.members)[1]
    if name in ("partition_index", "partition", "index"):
        return rng.choice([0, 0, 1, 2])
    if "timeout" in name or "wait" in name:
        return rng.choice([0, 10, 6000] if "session" in name else [0, 10, 100])
    if name == "acks":
        return rng.choice([-1, 1, 0])
    if name in ("num_partitions", "count"):
        return rng.choice([1, 2, 3])
    if name == "replication_factor":
        return rng.choice([-1, 1])
    if "bytes" in name:
        return rng.choice([1, 1 << 20])
    if "timestamp" in name:
        return rng.choice([-2, -1, 1_700_000_000_000])
    return rng.choice([-1, 0, 1, 3])


def _simple_value(field, rng: Draws):
    kind = field.type_str
    if kind in INT_RANGES or kind == "uint16":
        return _int_value(field, rng)
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "float64":
        return 0.0
    if kind == "uuid":
        return uuid.UUID(int=0)
    if kind == "string":
        entity = field._entity_type
        if field.default is None and rng.random() < (0.9 if entity == "transactionalId" else 0.5):
            return None  # a nullable string left out (a transactional id would make most requests moot)
        if entity == "topicName":
            return rng.choice(TOPICS)
        if entity == "groupId":
            return rng.choice(GROUPS)
        if field.name in ("protocol_type",):
            return "consumer"
        if field.name in ("name", "protocol_name") and field._entity_type is None:
            return rng.choice(["range", "retention.ms", "cleanup.policy", "x"])
        if field.name == "member_id" and rng.members and rng.random() < 0.7:
            return rng.choice(rng.members)[0]
        if field.name == "value":
            return rng.choice(["1000", "compact", "x"])
        return rng.choice(["", "x", "member-1"])
    if kind == "records":
        return b"".join(_record_batch(rng) for _ in range(rng.choice([1, 1, 2])))
    if kind == "bytes":
        if field.name in ("metadata", "assignment"):
            return _consumer_protocol(field.name)
        return b"x"
    return field.default


def _struct_value(data_class, fields, version: int, rng: Draws, depth: int):
    values = {}
    for field in fields:
        if not field.for_version_q(version) or field.tagged_field_q(version):
            continue
        values[field.name] = _value(field, version, rng, depth + 1)
    return data_class(**values)


def _value(field, version: int, rng: Draws, depth: int):
    if field.is_struct_array():
        count = rng.choice([1, 1, 2]) if depth < 4 else 1
        return [_struct_value(field.data_class, field.array_of._fields, version, rng, depth) for _ in range(count)]
    if field.is_struct():
        return _struct_value(field.data_class, field._fields, version, rng, depth)
    if field.is_array():
        return [_simple_value(field.array_of, rng) for _ in range(rng.choice([1, 2]))]
    return _simple_value(field, rng)


def valid_request(api: wire.Api, version: int, rng: Draws):
    cls = api.request
    values = {}
    for field in cls._struct._fields:
        if field.for_version_q(version) and not field.tagged_field_q(version):
            values[field.name] = _value(field, version, rng, 0)
    return cls(version=version, **values)


# ---------------------------------------------------------------- mutations


def _slots(obj, version: int, path=()):
    """(container, field) for every field set in a request, depth first."""
    for field in obj._struct._fields:
        if not field.for_version_q(version) or field.tagged_field_q(version):
            continue
        value = getattr(obj, field.name)
        yield obj, field
        if field.is_struct_array() and value:
            for item in value:
                yield from _slots(item, version)
        elif field.is_struct() and value is not None:
            yield from _slots(value, version)


def _extreme_int(kind: str, rng: Draws) -> int:
    bits = INT_RANGES.get(kind, 16)
    top = (1 << (bits - 1)) - 1 if kind != "uint16" else 0xFFFF
    low = -(1 << (bits - 1)) if kind != "uint16" else 0
    return rng.choice([top, low, -1, -2, top - 1, low + 1])


def _bad_batch(rng: Draws) -> bytes:
    """A batch with a valid CRC whose contents are wrong: timestamps past 64 bits, odd counts."""
    batch = bytearray(_record_batch(rng))
    how = rng.choice(["timestamp", "timestamp", "count", "count_negative", "body", "body"])
    if how == "timestamp":
        b = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 2**20)
        b.append(0, 0, None, b"x", [])
        b.append(1, rng.choice([1, 2**62, 2**63 - 1]), None, b"y", [])
        batch = bytearray(b.build())
        base = rng.choice([2**63 - 1, 2**63 - 10, -(2**63)])
        struct.pack_into(">qq", batch, BASE_TIMESTAMP_POSITION, base, base)
    elif how == "count":
        # Moderate claims only: a claim of 2**31 - 1 records is the memory budget's
        # business (a separate test), and would cost this one gigabytes until then.
        struct.pack_into(">i", batch, RECORD_COUNT_POSITION, rng.choice([0, 2, 1000, 100_000]))
    elif how == "count_negative":
        struct.pack_into(">i", batch, RECORD_COUNT_POSITION, rng.choice([-1, -(2**31)]))
    else:  # damaged records (or compressed bytes) under a checksum that matches them
        for _ in range(rng.randint(1, 3)):
            batch[rng.randrange(HEADER_SIZE, len(batch))] ^= 1 << rng.randrange(8)
    struct.pack_into(">I", batch, CRC_POSITION, crc32c(bytes(batch[CRC_POSITION + 4 :])))
    return bytes(batch)


def mutate_fields(request, version: int, rng: Draws) -> str:
    """Change one to three fields of ``request`` to what the schema forbids or what overflows; what was done."""
    slots = list(_slots(request, version))
    done = []
    if not slots:
        return "no fields"
    batches = [slot for slot in slots if slot[1].type_str == "records"]
    for _ in range(rng.choice([1, 1, 2, 3])):
        # Record batches are where most of a request's meaning is: their turn comes often.
        obj, field = rng.choice(batches if batches and rng.random() < 0.5 else slots)
        kind = field.type_str
        if kind == "string" and rng.random() < 0.5:
            value = rng.choice(ODD_STRINGS)
            setattr(obj, field.name, value)
            done.append(f"{field.name}={value[:20]!r}")
        elif field.is_struct_array() and getattr(obj, field.name) and rng.random() < 0.5:
            items = getattr(obj, field.name)
            setattr(obj, field.name, items + items)  # the same topic, partition or member twice
            done.append(f"{field.name} repeated")
        elif field.is_array() or field.is_struct() or kind in ("string", "bytes"):
            setattr(obj, field.name, None)
            done.append(f"{field.name}=null")
        elif kind == "records":
            bad = _bad_batch(rng)
            setattr(obj, field.name, rng.choice([None, bad, _record_batch(rng) + bad]))
            done.append(f"{field.name}=bad batch")
        elif kind in INT_RANGES or kind == "uint16":
            value = _extreme_int(kind, rng)
            setattr(obj, field.name, value)
            done.append(f"{field.name}={value}")
    return ", ".join(done)


def mutate_bytes(frame: bytes, rng: Draws) -> tuple[bytes, str]:
    """Byte-level damage after the request header's fixed part (api key, version, correlation id)."""
    data = bytearray(frame)
    how = rng.choice(["flip", "flip", "truncate", "count", "varint"])
    if len(data) <= 9:
        return bytes(data), "none"
    at = rng.randrange(8, len(data))
    if how == "flip":
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(8, len(data))] ^= 1 << rng.randrange(8)
    elif how == "truncate":
        del data[at:]
    elif how == "count":
        data[at : at + 4] = struct.pack(">i", rng.choice([2**31 - 1, -2, -(2**31), 1 << 24]))
    else:
        data[at : at + 1] = rng.choice([b"\xff\xff\xff\xff\x0f", b"\x80\x80\x80\x80\x80", b"\x00"])
    return bytes(data), f"{how} at {at}"


# ---------------------------------------------------------------- the run


def _frame(request, correlation_id: int) -> bytes:
    request.with_header(correlation_id=correlation_id, client_id="fuzz")
    return bytes(request.encode(header=True, framed=False))


def _send(port: int, frame: bytes) -> tuple[int, bytes | None]:
    """Send one framed request on a new connection, wait briefly for its answer: (local port, answer)."""
    answer = None
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        local = sock.getsockname()[1]
        sock.sendall(struct.pack(">i", len(frame)) + frame)
        sock.settimeout(ANSWER_SECONDS)
        try:
            answer = read_frame(sock)
        except (TimeoutError, OSError):
            pass
    return local, answer


def _metadata_answers(port: int) -> bool:
    request = MetadataRequest(version=1, topics=None)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.settimeout(10)
            sock.sendall(struct.pack(">i", len(_frame(request, 7))) + _frame(request, 7))
            answer = read_frame(sock)
    except OSError:
        return False
    return answer is not None and MetadataResponse.decode(answer, version=1, header=True).header.correlation_id == 7


def _cases(rng: Draws):
    """(api key, version) pairs cycled through: every API at its lowest, highest and a middle version."""
    pairs = []
    for key, api in sorted(wire.APIS.items()):
        low = api.min_version if api.lowest_served is None else api.lowest_served
        pairs += [(key, v) for v in sorted({low, (low + api.max_version) // 2, api.max_version})]
    while True:
        rng.shuffle(pairs)
        yield from pairs


def _internal_errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if "internal error" in line or line.startswith("Traceback")]


def test_malformed_requests_get_an_error_or_a_close_never_an_internal_error(data_dir, run_kq):
    run_kq("topic", "create", "fz", "--partitions", "3")
    server = KqServer(data_dir, "-v")
    rng = Draws(SEED)
    sent: dict[int, str] = {}  # client port -> what was sent, to name the request behind an error
    started = time.monotonic()
    try:
        for n, (key, version) in zip(range(REQUESTS), _cases(rng)):
            api = wire.APIS[key]
            request = valid_request(api, version, rng)
            what = f"{api.request.__name__} v{version}"
            roll = rng.random()
            if roll < 0.6:
                what += ": " + mutate_fields(request, version, rng)
            frame = _frame(request, n)
            if roll >= 0.45:
                frame, how = mutate_bytes(frame, rng)
                what += f"; bytes: {how}"
            port, answer = _send(server.port, frame)
            rng.learn(key, version, answer)
            sent[port] = f"{what}: {frame.hex()}"
            if n % CHECK_EVERY == CHECK_EVERY - 1:
                assert _metadata_answers(server.port), f"no answer to Metadata after request {n} ({what})"
        assert _metadata_answers(server.port), "no answer to Metadata after the last request"
    finally:
        server.stop()
        log = server.stderr.rest()
    errors = _internal_errors(log)
    culprits = []
    for line in errors:
        if "closing connection from 127.0.0.1:" in line:
            client_port = int(line.split("closing connection from 127.0.0.1:")[1].split()[0].rstrip(":"))
            culprits.append(sent.get(client_port, "?"))
    assert not errors, f"{len(errors)} internal errors, e.g. {errors[:3]} from {culprits[:3]}"
    print(f"{REQUESTS} requests in {time.monotonic() - started:.1f} s")
