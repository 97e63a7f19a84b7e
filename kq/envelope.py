"""The JSON-lines envelope of ``consume --json`` and ``produce --json``.

One object per record: ``topic``, ``partition``, ``offset``, ``timestamp``,
``key``, ``value``, ``headers`` (a list of ``[name, value]`` pairs, in order:
Kafka headers may repeat a name). Keys, values and header values are strings
when they are valid UTF-8; otherwise base64, marked by ``key_encoding`` /
``value_encoding`` / ``headers_encoding`` = ``"base64"``. ``null`` (a missing
key, a tombstone, a null header value) is distinct from ``""``. The reader also takes the older
form of ``headers``, an object of name -> value.
"""

from __future__ import annotations

import base64
import json

from .errors import UsageError


def _text_or_base64(data: bytes | None) -> tuple[str | None, bool]:
    if data is None:
        return None, False
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), True


def encode_record(topic: str, partition: int, offset: int, timestamp: int, key, value, headers) -> str:
    obj = {"topic": topic, "partition": partition, "offset": offset, "timestamp": timestamp}
    obj["key"], key_b64 = _text_or_base64(key)
    obj["value"], value_b64 = _text_or_base64(value)
    decoded = [(name, _text_or_base64(v)) for name, v in headers or ()]
    if any(b64 for _, (_, b64) in decoded):
        obj["headers"] = [[name, None if v is None else base64.b64encode(v).decode("ascii")] for name, v in headers]
        obj["headers_encoding"] = "base64"
    else:
        obj["headers"] = [[name, text] for name, (text, _) in decoded]
    if key_b64:
        obj["key_encoding"] = "base64"
    if value_b64:
        obj["value_encoding"] = "base64"
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


MAX_TIMESTAMP = 2**63 - 1  # a batch header's signed 64-bit field

FIELDS = (
    "topic",
    "partition",
    "offset",
    "timestamp",
    "key",
    "value",
    "headers",
    "key_encoding",
    "value_encoding",
    "headers_encoding",
)


def _is_base64(obj: dict, name: str, line_no: int) -> bool:
    encoding = obj.get(f"{name}_encoding")
    if encoding not in (None, "base64"):
        raise UsageError(
            f"line {line_no}: '{name}_encoding' must be \"base64\" or left out, not {json.dumps(encoding)}"
        )
    return encoding == "base64"


def _field_bytes(obj: dict, name: str, line_no: int) -> bytes | None:
    raw = obj.get(name)
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise UsageError(f"line {line_no}: '{name}' must be a string or null")
    if _is_base64(obj, name, line_no):
        try:
            return base64.b64decode(raw, validate=True)
        except ValueError:
            raise UsageError(f"line {line_no}: '{name}' is not valid base64") from None
    return _utf8(raw, f"'{name}'", line_no)


def _utf8(text: str, what: str, line_no: int) -> bytes:
    # JSON can escape a lone surrogate ("\udcff"), which no UTF-8 encodes.
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"line {line_no}: {what} is not valid Unicode text (a lone surrogate); use base64") from None


def _header_pairs(raw, line_no: int) -> list:
    """(name, value) pairs from a list of [name, value] pairs, or from an object (the older form)."""
    if raw is None:
        return []
    if isinstance(raw, dict):
        return list(raw.items())
    if isinstance(raw, list):
        pairs = []
        for pair in raw:
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
                raise UsageError(f"line {line_no}: each header must be a [name, value] pair, not {json.dumps(pair)}")
            pairs.append((pair[0], pair[1]))
        return pairs
    raise UsageError(f"line {line_no}: 'headers' must be a list of [name, value] pairs")


def decode_record(line: bytes, line_no: int) -> tuple:
    """Parse one envelope line into (key, value, headers, partition, timestamp)."""
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise UsageError(f"line {line_no}: not valid JSON ({exc})") from None
    except RecursionError:
        raise UsageError(f"line {line_no}: not valid JSON (nested too deeply)") from None
    if not isinstance(obj, dict):
        raise UsageError(f"line {line_no}: expected a JSON object")
    unknown = [name for name in obj if name not in FIELDS]
    if unknown:
        raise UsageError(
            f"line {line_no}: unknown field{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(json.dumps, unknown))} (known: {', '.join(FIELDS)})"
        )
    if "value" not in obj:
        raise UsageError(f"line {line_no}: no 'value' field (a tombstone is \"value\": null)")
    key = _field_bytes(obj, "key", line_no)
    value = _field_bytes(obj, "value", line_no)
    b64 = _is_base64(obj, "headers", line_no)
    headers: list[tuple[str, bytes | None]] = []
    for name, v in _header_pairs(obj.get("headers"), line_no):
        _utf8(name, "a header name", line_no)
        if v is None:  # a null value, as Kafka allows: not ""
            headers.append((name, None))
            continue
        if not isinstance(v, str):
            raise UsageError(f"line {line_no}: header '{name}' must have a string value or null")
        try:
            headers.append((name, base64.b64decode(v, validate=True) if b64 else _utf8(v, f"header '{name}'", line_no)))
        except ValueError:
            raise UsageError(f"line {line_no}: header '{name}' is not valid base64") from None
    partition = obj.get("partition")
    if partition is not None and (not isinstance(partition, int) or isinstance(partition, bool)):
        raise UsageError(f"line {line_no}: 'partition' must be an integer")
    timestamp = obj.get("timestamp")
    if timestamp is not None and (
        not isinstance(timestamp, int) or isinstance(timestamp, bool) or not -1 <= timestamp <= MAX_TIMESTAMP
    ):
        # -1 is Kafka's "no timestamp", which a Kafka client may send through kq serve: a copy keeps it.
        raise UsageError(
            f"line {line_no}: 'timestamp' must be an integer from 0 to {MAX_TIMESTAMP} (epoch ms), or -1 (none)"
        )
    return key, value, headers, partition, timestamp
