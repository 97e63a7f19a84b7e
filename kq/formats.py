"""How records are written out: values with a delimiter, kcat-style ``-F`` formats, JSON lines.

Each writer is a function (partition, batch, start, stop) -> bytes for the
records ``start:stop`` of one batch, so that a round of batches becomes a
few large writes. (kcat keeps the same job in its format.c.)
"""

from __future__ import annotations

import re

from .engine.framing import unescape
from .errors import UsageError

FORMAT_TOKENS = "%t topic, %p partition, %o offset, %k key, %s value, %T timestamp (ms), %h headers, %% a '%'"
_TOKEN = re.compile(r"(%[tpoksTh%])")


def record_writer(topic: str, fmt: str | None = None, as_json: bool = False, delimiter: bytes = b"\n"):
    """The writer for ``fmt`` (a -F format), JSON lines, or else values followed by ``delimiter``."""
    if as_json:
        return json_writer(topic)
    if fmt is not None:
        return format_writer(topic, fmt)
    return values_writer(delimiter)


def values_writer(delimiter: bytes):
    def write_values(p, b, lo, hi):
        # Joined with a last empty value, so the final delimiter is not added
        # by copying the whole round once more.
        values = [*(b.values if (lo, hi) == (0, b.count) else b.values[lo:hi]), b""]
        try:
            return delimiter.join(values)
        except TypeError:  # tombstones print as empty values
            return delimiter.join([v or b"" for v in values])

    return write_values


def json_writer(topic: str):
    from .engine.batch import RecordBatch
    from .envelope_encode import encode_batch

    def write_json(p, b, lo, hi):
        if isinstance(b, RecordBatch):  # its columns as they are, not a Record per record
            if (lo, hi) == (0, b.count):
                return encode_batch(topic, p, b.offsets(), b.timestamps(), b.keys, b.values, b.headers)
            keys, headers = b.keys, b.headers
            return encode_batch(
                topic,
                p,
                b.offsets()[lo:hi],
                b.timestamps()[lo:hi],
                None if keys is None else keys[lo:hi],
                b.values[lo:hi],
                None if headers is None else headers[lo:hi],
            )
        records = list(b.records(lo, hi))
        return encode_batch(
            topic,
            p,
            [r.offset for r in records],
            [r.timestamp for r in records],
            [r.key for r in records],
            [r.value for r in records],
            [r.headers for r in records],
        )

    return write_json


def format_writer(topic: str, fmt: str):
    """kcat's -F: tokens for the record's fields, everything else (with \\n, \\t, \\xHH) as written."""
    unknown = re.search(r"%([^tpoksTh%]|$)", fmt.replace("%%", ""))
    if unknown:
        raise UsageError(f"{unknown.group(0)!r} is not a format token: use {FORMAT_TOKENS}")
    pieces = _TOKEN.split(fmt)
    literal = {i: unescape(p) for i, p in enumerate(pieces) if i % 2 == 0}
    topic_b = topic.encode("utf-8")

    def field(token, p, r):
        if token == "%s":
            return r.value or b""
        if token == "%k":
            return r.key or b""
        if token == "%o":
            return str(r.offset).encode()
        if token == "%p":
            return str(p).encode()
        if token == "%T":
            return str(r.timestamp).encode()
        if token == "%t":
            return topic_b
        if token == "%h":
            # A null value prints as NULL, as kcat's %h does (--json tells it from the text "NULL").
            return b",".join(name.encode("utf-8") + b"=" + (b"NULL" if v is None else v) for name, v in r.headers)
        return b"%"

    def write_format(p, b, lo, hi):
        out = []
        for r in b.records(lo, hi):
            for i, piece in enumerate(pieces):
                out.append(literal[i] if i % 2 == 0 else field(piece, p, r))
        return b"".join(out)

    return write_format
