"""The JSON-lines envelope of ``consume --json`` and ``produce --json``, and its reader.

One object per record: ``topic``, ``partition``, ``offset``, ``timestamp``,
``key``, ``value``, ``headers`` (a list of ``[name, value]`` pairs, in order:
Kafka headers may repeat a name). Keys, values and header values are strings
when they are valid UTF-8; otherwise base64, marked by ``key_encoding`` /
``value_encoding`` / ``headers_encoding`` = ``"base64"``. ``null`` (a missing
key, a tombstone) is distinct from ``""``. The reader also takes the older
form of ``headers``, an object of name -> value. A header value may be
``null`` (Kafka allows a header without a value).

Writing it is ``envelope_encode``. Whole batches are read by
``decode_columns``, built on msgspec (imported when first needed): the
stdlib's json made a copy through JSON lines ten times slower than one
through plain lines. msgspec reads the common line shape in C, checks
included, into objects the garbage collector does not track (orjson, used
before, left a dict a line to check in Python: a third of msgspec's speed for
produce --json). ``decode_columns`` takes the common
shape itself and hands any other line to ``decode_record``, the reference
reader, so that every line it does not take gets exactly the reference's
result or error.
"""

from __future__ import annotations

import base64
import json

from .errors import UsageError

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
    "deliver_at",  # produce only: when a share group may hand the record out (kq.delivery_time)
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


def _deliver_at_header(given, line_no: int) -> tuple[str, bytes]:
    """The kq.deliver-at header for a line's ``deliver_at``: epoch ms, or a time as ``--at`` takes it."""
    from .delivery_time import MAX_DELIVER_AT, deliver_at_header, deliver_at_time

    if isinstance(given, int) and not isinstance(given, bool) and 0 <= given <= MAX_DELIVER_AT:
        return deliver_at_header(given)
    if isinstance(given, str):
        try:
            return deliver_at_header(deliver_at_time(given))
        except UsageError as exc:
            raise UsageError(f"line {line_no}: 'deliver_at': {exc}") from None
    raise UsageError(
        f"line {line_no}: 'deliver_at' must be epoch milliseconds or an ISO-8601 time such as 2026-12-07T09:00:00Z"
    )


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
        if v is None:
            headers.append((name, None))
            continue
        if not isinstance(v, str):
            raise UsageError(f"line {line_no}: header '{name}' must have a string value or null")
        try:
            headers.append((name, base64.b64decode(v, validate=True) if b64 else _utf8(v, f"header '{name}'", line_no)))
        except ValueError:
            raise UsageError(f"line {line_no}: header '{name}' is not valid base64") from None
    if obj.get("deliver_at") is not None:
        headers.append(_deliver_at_header(obj["deliver_at"], line_no))
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


class RecordColumns:
    """Records read from envelope lines, column by column, for ``Producer.send_columns``.

    ``keys``, ``headers``, ``partitions`` and ``timestamps`` are None while no
    record has one (the common case costs no list of Nones); a record's
    headers are a list of (name, value) pairs.
    """

    __slots__ = ("count", "keys", "values", "headers", "partitions", "timestamps")

    def __init__(self) -> None:
        self.count = 0
        self.values: list = []
        self.keys: list | None = None
        self.headers: list | None = None
        self.partitions: list | None = None
        self.timestamps: list | None = None

    def add(self, keys, values: list, headers, partitions, timestamps) -> None:
        """Append records given as columns (each None if no record has one)."""
        n, before = len(values), self.count
        if not before:  # the first (often the only) columns: taken as they are, not copied
            self.count, self.keys, self.values, self.headers = n, keys, values, headers
            self.partitions, self.timestamps = partitions, timestamps
            return
        self.values += values
        self.count += n
        self.keys = _joined(self.keys, keys, before, n)
        self.headers = _joined(self.headers, headers, before, n, lists=True)
        self.partitions = _joined(self.partitions, partitions, before, n)
        self.timestamps = _joined(self.timestamps, timestamps, before, n)

    def add_records(self, records: list) -> None:
        """Append (key, value, headers, partition, timestamp) tuples, as ``decode_record`` gives them."""
        if records:
            keys, values, headers, partitions, timestamps = (list(column) for column in zip(*records))
            self.add(
                None if keys.count(None) == len(keys) else keys,
                values,
                headers if any(headers) else None,
                None if partitions.count(None) == len(partitions) else partitions,
                None if timestamps.count(None) == len(timestamps) else timestamps,
            )

    def records(self) -> list:
        """The records as (key, value, headers, partition, timestamp) tuples."""
        n = self.count
        return list(
            zip(
                self.keys or [None] * n,
                self.values,
                self.headers or [[] for _ in range(n)],
                self.partitions or [None] * n,
                self.timestamps or [None] * n,
            )
        )


def _joined(mine: list | None, column: list | None, before: int, n: int, lists: bool = False) -> list | None:
    """``mine`` (of ``before`` records) followed by ``column`` (of ``n``); None stands for all None,
    or all empty lists if ``lists``."""
    if mine is None and column is None:
        return None
    if mine is None:
        mine = [[] for _ in range(before)] if lists else [None] * before
    mine += column if column is not None else [[] for _ in range(n)] if lists else [None] * n
    return mine


def _line_decoder():
    """msgspec's decoder of one line of the common shape, made (and msgspec imported) on first use.

    The common shape: a JSON object with only the fields consume --json
    writes, text or null key and value (no ``*_encoding``), headers as
    [name, text or null] pairs, integer partition and timestamp (the latter
    in the range decode_record takes). msgspec checks all of it in C while
    parsing, into objects the garbage collector does not track, so a line
    costs a third of a dict from orjson and checks in Python. Any line of
    another shape fails to decode and goes to the reference reader.
    """
    global _decode_line, _not_common
    if _decode_line is None:
        from typing import Annotated, Optional

        import msgspec

        text, number = Optional[str], Optional[int]
        timestamp = Optional[Annotated[int, msgspec.Meta(ge=-1, le=MAX_TIMESTAMP)]]
        headers = Optional[tuple[tuple[str, text], ...]]  # () for []: no list to make a line
        line = msgspec.defstruct(
            "CommonLine",
            [
                ("value", text),
                ("key", text, None),
                ("topic", text, None),
                ("partition", number, None),
                ("offset", number, None),
                ("timestamp", timestamp, None),
                ("headers", headers, None),
            ],
            forbid_unknown_fields=True,
            gc=False,
        )
        _decode_line = msgspec.json.Decoder(line).decode
        # A line of another shape; ValueError: text msgspec let through that is not UTF-8 after all.
        _not_common = (msgspec.MsgspecError, ValueError)
    return _decode_line


_decode_line = None
_not_common: tuple = ()


def _plain_columns(lines: list) -> tuple:
    """The records of lines that all have the common shape (see ``_line_decoder``), as columns
    (keys, values, headers, partitions, timestamps; each of the others None if no record has one).

    Raises (msgspec's errors, ValueError) if any line is of another shape.
    One decode call a line: a JSON array of the lines would let a line such
    as ``{"value":"a"},{"value":"b"}`` pass as two records (and reads no faster).
    """
    rows = list(map(_line_decoder(), lines))
    n = len(rows)
    return (
        _utf8_column([row.key for row in rows], n),
        _utf8_column([row.value for row in rows]),
        _header_column([row.headers for row in rows], n),
        _none_if_all_none([row.partition for row in rows], n),
        _none_if_all_none([row.timestamp for row in rows], n),
    )


def _utf8_column(texts: list, n: int | None = None) -> list | None:
    """The UTF-8 of each text (None stays None); with ``n``, None if all ``n`` are None."""
    if n is not None and texts.count(None) == n:
        return None
    try:
        return list(map(str.encode, texts))  # (msgspec refuses lone surrogates: no text fails to encode)
    except TypeError:  # some are None
        return [None if text is None else text.encode("utf-8") for text in texts]


def _header_column(given: list, n: int) -> list | None:
    """Each record's (name, bytes or None) pairs; None if no record has a header."""
    if given.count(()) + given.count(None) == n:
        return None
    return [[] if pairs is None else _text_pairs(pairs) for pairs in given]


def _none_if_all_none(column: list, n: int) -> list | None:
    return None if column.count(None) == n else column


def _text_pairs(pairs: tuple) -> list:
    """(name, bytes or None) from (name, text or None) pairs."""
    out = []
    for name, value in pairs:
        name.encode("utf-8")  # raises for a lone surrogate
        out.append((name, None if value is None else value.encode("utf-8")))
    return out


def decode_lines(
    lines: list, line_no: int, records: list, check_partition=None, piece: int = 64
) -> tuple[int, UsageError | None]:
    """Parse envelope lines, appending each record as ``decode_record`` gives it to ``records``.

    The same as ``decode_columns``, with the records as tuples.
    """
    columns = RecordColumns()
    last, error = decode_columns(lines, line_no, columns, check_partition, piece)
    records += columns.records()
    return last, error


def decode_columns(
    lines: list, line_no: int, columns: RecordColumns, check_partition=None, piece: int = 64
) -> tuple[int, UsageError | None]:
    """Parse envelope lines into ``columns``, each record as ``decode_record`` gives it.

    ``line_no`` is the number of the line before the first; blank lines are
    skipped (and counted). ``check_partition(partition, line_no)``, if given,
    is called for the first record that names each partition, and may raise a
    UsageError. Returns the number of the last line read and the error that
    stopped there (None: every line was read), the records of the lines
    before it being in ``columns``.

    Lines of the common shape are read a whole list at a time; a list with
    another line in it is tried again in pieces of ``piece`` lines, so that
    one base64 value or blank line sends only its piece to the reference
    reader, line by line.
    """
    _line_decoder()
    try:
        found = _plain_columns(lines)
    except _not_common:
        found = None
    if found is not None:
        return _checked(found, line_no, columns, check_partition)
    if len(lines) <= piece:
        return _decode_each(lines, line_no, columns, check_partition)
    for start in range(0, len(lines), piece):
        last, error = decode_columns(lines[start : start + piece], line_no + start, columns, check_partition, piece)
        if error is not None:
            return last, error
    return line_no + len(lines), None


def _checked(found: tuple, line_no: int, columns: RecordColumns, check_partition) -> tuple[int, UsageError | None]:
    """``decode_columns``' end for the records of all its lines (none blank): their partitions checked."""
    keys, values, headers, partitions, timestamps = found
    if check_partition is not None and partitions is not None:
        named = dict.fromkeys(partitions)
        named.pop(None, None)
        for partition in named:
            index = partitions.index(partition)
            try:
                check_partition(partition, line_no + index + 1)
            except UsageError as exc:
                if index:  # the records before it
                    columns.add(
                        None if keys is None else keys[:index],
                        values[:index],
                        None if headers is None else headers[:index],
                        partitions[:index],
                        None if timestamps is None else timestamps[:index],
                    )
                return line_no + index + 1, exc
    columns.add(keys, values, headers, partitions, timestamps)
    return line_no + len(values), None


def _decode_each(lines, line_no: int, columns: RecordColumns, check_partition) -> tuple[int, UsageError | None]:
    checked: set = set()  # partitions check_partition passed
    records: list = []
    for line in lines:
        line_no += 1
        if not line.strip():
            continue
        try:
            record = decode_record(line, line_no)
            if check_partition is not None and record[3] is not None and record[3] not in checked:
                check_partition(record[3], line_no)
                checked.add(record[3])
        except UsageError as exc:
            columns.add_records(records)
            return line_no, exc
        records.append(record)
    columns.add_records(records)
    return line_no, None
