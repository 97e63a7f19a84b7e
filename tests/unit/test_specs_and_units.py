"""Offset specs and human units, in-process."""

from __future__ import annotations

import pytest

from kq.errors import InvalidOffsetSpec, UsageError
from kq.offsetspec import (
    ABSOLUTE,
    BEGINNING,
    END,
    FROM_END,
    RELATIVE,
    TIMESTAMP,
    OffsetSpec,
    parse_range,
    parse_spec,
    parse_timestamp,
)
from kq.units import parse_duration, parse_limit, parse_size


@pytest.mark.parametrize(
    "text, spec",
    [
        ("beginning", OffsetSpec(BEGINNING)),
        ("earliest", OffsetSpec(BEGINNING)),
        ("end", OffsetSpec(END)),
        ("latest", OffsetSpec(END)),
        ("42", OffsetSpec(ABSOLUTE, 42)),
        ("-3", OffsetSpec(FROM_END, 3)),
        ("@1700000000000", OffsetSpec(TIMESTAMP, 1700000000000)),
        ("@2024-05-01T00:00:00Z", OffsetSpec(TIMESTAMP, 1714521600000)),
    ],
)
def test_offset_specs(text, spec):
    assert parse_spec(text) == spec


def test_relative_specs_only_where_asked():
    assert parse_spec("+5", relative=True) == OffsetSpec(RELATIVE, 5)
    assert parse_spec("-5", relative=True) == OffsetSpec(RELATIVE, -5)
    with pytest.raises(InvalidOffsetSpec):
        parse_spec("+5")


@pytest.mark.parametrize(
    "text, start, stop",
    [
        ("2:5", OffsetSpec(ABSOLUTE, 2), OffsetSpec(ABSOLUTE, 5)),
        (":5", OffsetSpec(BEGINNING), OffsetSpec(ABSOLUTE, 5)),
        ("2:", OffsetSpec(ABSOLUTE, 2), OffsetSpec(END)),
        (
            "@2024-05-01T00:00:00Z:@2024-05-02T00:00:00Z",
            OffsetSpec(TIMESTAMP, 1714521600000),
            OffsetSpec(TIMESTAMP, 1714608000000),
        ),
    ],
)
def test_ranges_including_iso_times_with_colons(text, start, stop):
    r = parse_range(text)
    assert (r.start, r.stop) == (start, stop)


@pytest.mark.parametrize("text", ["5:2", "bogus", "@yesterday", "1.5", ""])
def test_bad_specs_are_usage_errors(text):
    with pytest.raises(InvalidOffsetSpec):
        parse_range(text)
    assert issubclass(InvalidOffsetSpec, UsageError)


def test_durations_ago_are_from_now():
    assert parse_timestamp("-1h", now_ms=10_000_000) == 10_000_000 - 3_600_000
    assert parse_timestamp("-30m", now_ms=10_000_000) == 10_000_000 - 1_800_000


class _Partition:
    """What OffsetSpec.resolve asks of a partition: its range and its offset for a time."""

    def start_offset(self):
        return 10

    def end_offset(self):
        return 50

    def offset_for_timestamp(self, timestamp):
        return 30 if timestamp <= 1000 else 50


@pytest.mark.parametrize(
    "spec, committed, offset",
    [
        (OffsetSpec(BEGINNING), None, 10),
        (OffsetSpec(END), None, 50),
        (OffsetSpec(ABSOLUTE, 7), None, 7),
        (OffsetSpec(FROM_END, 5), None, 45),
        (OffsetSpec(FROM_END, 500), None, 10),
        (OffsetSpec(RELATIVE, -3), 20, 17),
        (OffsetSpec(RELATIVE, 3), None, 13),
        (OffsetSpec(TIMESTAMP, 999), None, 30),
    ],
)
def test_resolve(spec, committed, offset):
    assert spec.resolve(_Partition(), committed=committed) == offset


@pytest.mark.parametrize(
    "text, size", [("4096", 4096), ("64K", 65536), ("64M", 64 * 2**20), ("1G", 2**30), ("1GiB", 2**30), ("1.5k", 1536)]
)
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text, ms",
    [
        ("500ms", 500),
        ("30s", 30_000),
        ("15m", 900_000),
        ("12h", 43_200_000),
        ("7d", 604_800_000),
        ("2w", 1_209_600_000),
    ],
)
def test_durations(text, ms):
    assert parse_duration(text) == ms


@pytest.mark.parametrize("text", ["none", "unlimited", "forever", " None "])
def test_no_limit(text):
    assert parse_limit(text, parse_size) is None


@pytest.mark.parametrize("bad", ["", "-1", "1X", "M"])
def test_bad_units_are_usage_errors(bad):
    with pytest.raises(UsageError):
        parse_size(bad)
    with pytest.raises(UsageError):
        parse_duration(bad)


@pytest.mark.parametrize(
    "text,secret,expected",
    [
        ("SASL auth failed for 'hunter2-long-secret'", "hunter2-long-secret", "SASL auth failed for '[redacted]'"),
        ("glued:xhunter2-long-secretx", "hunter2-long-secret", "glued:x[redacted]x"),  # a long one, anywhere
        ("password=pw1 rejected", "pw1", "password=[redacted] rejected"),
        ("Broker transport failure", "e", "Broker transport failure"),  # a letter is not a secret in a word
    ],
)
def test_secrets_are_blanked_out_of_error_text_without_wrecking_it(text, secret, expected):
    from kq.backends.kafka_settings import redact

    assert redact(text, {"sasl.password": secret, "client.id": "e"}) == expected
