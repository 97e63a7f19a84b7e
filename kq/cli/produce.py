"""``kq produce``: messages from stdin or a file, split by kq.engine.framing, appended by the backend's producer."""

import os
import sys
from typing import Annotated, Optional

import typer

from ..errors import KqError, TopicExists, TopicNotFound, UsageError
from .common import (
    KqCommand,
    PartitionsOption,
    bad_parameter,
    complete_partition,
    delimiter_option,
    duration_seconds,
    json_option,
    null_option,
    settings,
    sync_option,
    topic_argument,
)
from .output import ProgressBars, count, noting_written

app = typer.Typer(add_completion=False)  # only the top-level kq offers completion install


def parse_headers(headers: list[str]) -> list[tuple[str, bytes | None]]:
    """NAME=VALUE pairs; NAME alone (no '=') gives a null value, as kcat's -H does."""
    from ..engine.framing import arg_bytes

    out: list[tuple[str, bytes | None]] = []
    for h in headers:
        name, sep, value = h.partition("=")
        if not name:
            raise bad_parameter(f"{h!r} is not NAME=VALUE (or NAME, for a null value)", "-H/--header")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            # Kafka's header names are text; their values are bytes.
            raise bad_parameter(f"header name {name!r} is not UTF-8 text", "-H/--header") from None
        out.append((name, arg_bytes(value) if sep else None))
    return out


def delivery_time(delay: Optional[str], at: Optional[str]):
    """What --delay or --at asks for (kq.delivery_time): a function giving the kq.deliver-at
    header for messages read now (a delay counts from when each message is read: `tail -F |
    kq produce --delay` delays each line from its own arrival), or None."""
    from ..delivery_time import MAX_DELIVER_AT, deliver_at_header, deliver_at_time, now_ms
    from ..units import parse_duration

    if delay is not None and at is not None:
        raise bad_parameter("use either --delay or --at", "--at")
    try:
        if delay is not None:
            delay_ms = parse_duration(delay)
            return lambda: deliver_at_header(min(now_ms() + delay_ms, MAX_DELIVER_AT))
        if at is not None:
            fixed = deliver_at_header(deliver_at_time(at))
            return lambda: fixed
    except UsageError as exc:
        raise bad_parameter(str(exc), "--delay" if delay is not None else "--at") from None
    return None


def delimiter_bytes(delimiter: Optional[str], null: bool, default: bytes = b"\n") -> bytes:
    """The bytes of -D STR (escapes understood) or -0."""
    from ..engine.framing import unescape

    if null and delimiter is not None:
        raise bad_parameter("use either -D/--delimiter or -0/--null", "-0")
    if null:
        return b"\0"
    if delimiter is None:
        return default
    value = unescape(delimiter)
    if not value:
        raise bad_parameter("the delimiter may not be empty", "-D")
    return value


def open_input(file: Optional[str]) -> tuple[int, str]:
    """The descriptor to read messages from and its name for errors (stdin without --file)."""
    import stat

    if file is None:
        return sys.stdin.fileno(), "stdin"
    try:
        fd = os.open(file, os.O_RDONLY)
    except OSError as exc:
        raise KqError(f"cannot read {file}: {exc.strerror}") from None
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise KqError(f"cannot read {file}: Is a directory")
    return fd, file


class ProduceTarget:
    """The topic a produce appends to, and its producer, made when the first records are ready.

    An existing topic is used as it is; a missing one is created only when
    there is something to write, so a produce that fails first (a bad first
    line, an unreadable file) leaves no empty topic behind. A topic created
    here for --json input grows to the partitions the records name, so that
    `consume a --json | produce b --json` copies any number of partitions.
    """

    def __init__(
        self,
        s,
        name: str,
        partitions: int,
        pinned: Optional[int],
        sync: bool,
        dedup_window_ms: Optional[int] = None,
        dedup_header: Optional[str] = None,
        transactional_id: Optional[str] = None,
        transaction_timeout_ms: Optional[int] = None,
    ):
        from ..errors import PartitionNotFound

        # --transactional: every record goes into one transaction, committed by ``finish``.
        self.transactional_id = transactional_id
        self.transaction_timeout_ms = transaction_timeout_ms
        self.transaction = None
        self.committed = False
        self.ephemeral = False  # the transactional id was made for this run

        self.settings, self.backend, self.name, self.pinned, self.sync = s, s.backend, name, pinned, sync
        self.dedup_window_ms, self.dedup_header = dedup_window_ms, dedup_header
        self.duplicates: list = []  # ids of the records dropped as duplicates, for --json
        self.partitions = partitions  # for a topic created here: at least this many
        self.created = False
        try:
            self.count: Optional[int] = self.backend.partition_count(name)
        except TopicNotFound:
            self.count = None
        count_now = partitions if self.count is None else self.count
        if pinned is not None and not 0 <= pinned < count_now:
            raise PartitionNotFound(name, pinned, count_now)
        self._producer = None

    def need_partition(self, number: int, line_no: int) -> None:
        """Check that a record may go to partition ``number``, growing a topic created here."""
        from ..engine.datadir import MAX_PARTITIONS

        if self.count is not None and not self.created:
            if not 0 <= number < self.count:
                raise UsageError(
                    f"line {line_no}: partition {number} does not exist in topic '{self.name}' "
                    f"(it has partitions 0..{self.count - 1})"
                )
        elif not 0 <= number < MAX_PARTITIONS:
            raise UsageError(f"line {line_no}: partition {number} is not between 0 and {MAX_PARTITIONS - 1}")
        else:
            self.partitions = max(self.partitions, number + 1)

    def producer(self):
        if self.count is None:
            try:
                self.count = len(self.backend.create_topic(self.name, self.partitions).partitions)
                self.created = True
                self.settings.info(f"created topic '{self.name}' with {count(self.count, 'partition')}")
            except TopicExists:  # another process created it first
                self.count = self.backend.partition_count(self.name)
                if self.partitions > self.count:
                    raise UsageError(
                        f"topic '{self.name}' was created meanwhile with {count(self.count, 'partition')}, "
                        f"but the input names partition {self.partitions - 1}"
                    ) from None
        if self.created and self.partitions > self.count:
            self.backend.add_partitions(self.name, self.partitions)
            self.count = self.partitions
            self.settings.info(f"grew topic '{self.name}' to {count(self.count, 'partition')}, as its input names them")
        if self._producer is None:
            if self.transactional_id is not None:
                self.transaction = self.backend.transaction(
                    self.transactional_id, self.transaction_timeout_ms, sync=self.sync, ephemeral=self.ephemeral
                )
                self._producer = self.transaction.producer(self.name, self.pinned)
            else:
                self._producer = self.backend.producer(
                    self.name,
                    self.pinned,
                    sync=self.sync,
                    dedup_window_ms=self.dedup_window_ms,
                    dedup_header=self.dedup_header,
                )
            if getattr(self._producer, "dedup", None) is not None:
                self._producer.on_duplicates = self.duplicates.extend
        return self._producer

    @property
    def window(self):
        """The producer's deduplication window (kq.engine.dedup.DedupWindow), or None."""
        return None if self._producer is None else getattr(self._producer, "dedup", None)

    @property
    def sent(self) -> int:
        return 0 if self._producer is None else self._producer.sent

    @property
    def written(self) -> int:
        if self.transaction is not None and not self.committed:
            return 0  # aborted, or not yet committed: nothing landed
        return 0 if self._producer is None else self._producer.written

    def flush(self) -> None:
        if self._producer is not None:
            self._producer.flush()

    def close(self) -> None:
        """Append every record sent (or raise the error that stopped it)."""
        if self._producer is not None:
            self._producer.close()

    def finish(self, ok: bool) -> None:
        """Close the producer; with --transactional, commit if ``ok`` and the producer closed cleanly, else abort."""
        if self.transaction is None:
            self.close()
            return
        try:
            try:
                self.close()
            except BaseException:
                self.transaction.abort()
                raise
            if ok:
                self.transaction.commit()
                self.committed = True
            else:
                self.transaction.abort()
        finally:
            self.transaction.close()


@app.command("produce", cls=KqCommand)
def produce(
    ctx: typer.Context,
    topic: str = topic_argument(
        "Topic to append to; created with the first record if missing, with --partitions (or, for --json input, the partitions the input names)."
    ),
    file: Optional[str] = typer.Option(None, "--file", metavar="PATH", help="Read from PATH instead of stdin."),
    delimiter: Optional[str] = delimiter_option(r"Message separator \[default: \n]; \t, \0, \xHH understood."),
    null: bool = null_option("Messages are separated by NUL bytes."),
    key: Optional[str] = typer.Option(None, "-k", "--key", help="Give every message this key."),
    key_delimiter: Optional[str] = typer.Option(
        None, "-K", "--key-delimiter", metavar="STR", help="Split each message at the first STR into key and value."
    ),
    header: list[str] = typer.Option(
        [],
        "-H",
        "--header",
        metavar="NAME=VALUE",
        help="Add a header to every message (repeatable); NAME alone gives it a null value, as kcat's -H.",
    ),
    partition: Annotated[
        Optional[int],
        typer.Option("-p", "--partition", autocompletion=complete_partition, help="Append to this partition only."),
    ] = None,
    json_input: bool = json_option("Read JSON lines as written by `consume --json`."),
    null_empty: bool = typer.Option(False, "-Z", "--null-empty", help="Turn empty values into null (tombstones)."),
    sync: bool = sync_option("fsync every batch (survives power loss)."),
    tombstone: bool = typer.Option(
        False,
        "--tombstone",
        help="Send tombstones (null values) that delete keys in a compacted topic: each input message is a key, or just -k KEY.",
    ),
    delay: Optional[str] = typer.Option(
        None,
        "--delay",
        metavar="DURATION",
        help="Delay the messages (a job queue's 'run it later'): share groups (consume --share) hand each out only DURATION after it was read (10m, 1.5s, 2d). They are written at once, with a kq.deliver-at header; consumer groups (-g) and plain consumers read them in order, at once.",
    ),
    at: Optional[str] = typer.Option(
        None,
        "--at",
        metavar="TIME",
        help="As --delay, until TIME: ISO-8601 (2026-12-07T09:00:00Z) or epoch ms, as -o @T takes it; a time past is now. With --json, a line's own deliver_at wins.",
    ),
    partitions: PartitionsOption = 1,
    dedup_window: Optional[str] = typer.Option(
        None,
        "--dedup-window",
        metavar="DURATION",
        help="Drop a message whose id (its key, or --dedup-header) was produced to the topic within DURATION "
        "(10m, 1h), by any producer; say how many were dropped (--json: which). The default is the topic's "
        "setting (`kq topic create --dedup-window`).",
    ),
    dedup_header: Optional[str] = typer.Option(
        None,
        "--dedup-header",
        metavar="NAME",
        help="With a deduplication window: a message's id is the value of its header NAME (as NATS's Nats-Msg-Id), "
        "not its key; messages without it are never dropped.",
    ),
    transactional: bool = typer.Option(
        False,
        "--transactional",
        "--atomic",
        help="All of the input lands, or none of it: read_committed readers (kq consume's default) see the records only once the input has ended and every one was written; an error, a signal or kill -9 leaves none visible.",
    ),
    transactional_id: Optional[str] = typer.Option(
        None,
        "--transactional-id",
        metavar="ID",
        help="With --transactional: the transactional id (a new one per run by default); a run with the same id fences and aborts an earlier one still open.",
    ),
    transaction_timeout: Optional[float] = typer.Option(
        None,
        "--transaction-timeout",
        metavar="DURATION",
        parser=duration_seconds,
        help="With --transactional: abort the transaction if it is still open after DURATION \\[default: 15m].",
    ),
) -> None:
    """Append messages from stdin (one per line) or a file to a topic.

    [bold]Examples[/bold]

      seq 5 | kq produce demo

      printf 'user1:hello\\nuser2:hi\\n' | kq produce chat -K :

      find . -print0 | kq produce files -0

      kq consume a --json | kq produce b --json     [dim]# copy a topic[/dim]

      echo 'send reminder 42' | kq produce jobs --delay 24h   [dim]# a share group hands it out tomorrow[/dim]

      kq produce jobs -K : --dedup-window 1h < jobs.txt     [dim]# run twice, each key once[/dim]

      kq produce orders --transactional < batch.txt   [dim]# all lines land, or none[/dim]
    """
    from ..engine.framing import arg_bytes, input_waiting, read_messages, split_keys, unescape

    s = settings(ctx)
    delim = delimiter_bytes(delimiter, null)
    given_headers = parse_headers(header)
    delayed = delivery_time(delay, at)
    headers = given_headers if delayed is None else given_headers + [delayed()]
    if json_input and (key is not None or key_delimiter is not None or null or delimiter is not None or null_empty):
        raise bad_parameter("--json cannot be combined with -k, -K, -D, -0 or -Z", "--json")
    if key is not None and key_delimiter is not None:
        raise bad_parameter("use either -k/--key or -K/--key-delimiter", "-K")
    if tombstone and (json_input or key_delimiter is not None):
        raise bad_parameter("--tombstone takes keys, one per message, or -k KEY", "--tombstone")
    key_delim = None if key_delimiter is None else unescape(key_delimiter)
    if key_delim == b"":
        raise bad_parameter("the key delimiter may not be empty", "-K")
    key_bytes = None if key is None else arg_bytes(key)
    window_ms = dedup_window_ms(s, topic, dedup_window, dedup_header)
    if (transactional_id is not None or transaction_timeout is not None) and not transactional:
        raise bad_parameter("--transactional-id and --transaction-timeout need --transactional", "--transactional")
    txn_id = None
    timeout_ms = None
    if transactional:
        import uuid

        if window_ms is not None or topic_deduplicates(s, topic):
            raise bad_parameter(
                f"a transactional produce does not deduplicate yet, and topic '{topic}' asks it to "
                "(--dedup-window, or the topic's setting)",
                "--transactional",
            )
        txn_id = transactional_id or f"kq-produce-{topic}-{uuid.uuid4().hex[:16]}"
        timeout_ms = int((transaction_timeout or 15 * 60) * 1000)
        if not 1 <= timeout_ms <= 15 * 60 * 1000:
            raise bad_parameter("a transaction lasts 1 ms to 15m", "--transaction-timeout")

    target = ProduceTarget(s, topic, partitions, partition, sync, window_ms, dedup_header, txn_id, timeout_ms)
    target.ephemeral = transactional and transactional_id is None
    if tombstone and key_bytes is not None:
        sent = False
        try:
            target.producer().send_values([None], key=key_bytes)
            sent = True
        finally:
            target.finish(sent)
        return
    fd, source = open_input(file)
    interrupted = False  # a signal (KeyboardInterrupt): a transaction is aborted
    line_no = 0
    bad_line = None  # the --json line that stopped the produce
    failure = None
    bars = ProgressBars(s.quiet)
    total = os.fstat(fd).st_size if file is not None else 0
    try:
        for messages, size in read_messages(fd, delim, name=source):
            if delayed is not None:
                headers = given_headers + [delayed()]
            if total:
                bars.update(file, os.lseek(fd, 0, os.SEEK_CUR), total, target.sent)
            if tombstone:
                target.producer().send_records([(m, None, headers, None, None) for m in messages])
            elif json_input:
                from ..envelope import RecordColumns, decode_columns

                records = RecordColumns()
                # -p puts every record in one partition, whatever the lines say.
                line_no, line_error = decode_columns(
                    messages, line_no, records, target.need_partition if partition is None else None
                )
                if partition is not None:
                    records.partitions = None
                if headers:
                    records.headers = [headers + h for h in records.headers or [[]] * records.count]
                # The lines before a bad one are written, so that a rerun can skip them.
                if records.count:
                    target.producer().send_columns(
                        records.keys, records.values, records.headers, records.partitions, records.timestamps
                    )
                if line_error is not None:
                    bad_line = line_no
                    raise line_error
            elif key_delim is not None:
                keys, values = split_keys(messages, key_delim)
                target.producer().send_keyed(
                    keys, [v or None for v in values] if null_empty else values, headers=headers, size=size
                )
            else:
                if null_empty:
                    messages = [m or None for m in messages]
                target.producer().send_values(messages, key=key_bytes, headers=headers, size=size)
            if not input_waiting(fd):
                # About to wait for input (tail -F): finish writing first, so a
                # failed append ends the produce now, not at the next line.
                target.flush()
    except (KqError, OSError) as exc:
        failure = exc
    except BaseException:
        interrupted = True
        raise
    finally:
        try:
            target.finish(failure is None and not interrupted)  # every batch appended (or its error raised) before exit
        except (KqError, OSError) as exc:
            failure = failure or exc
        finally:
            bars.__exit__()
            if file is not None:
                os.close(fd)
    report_duplicates(s, target, json_input)
    if failure is not None:
        raise noting_written(failure, target.written, bad_line)


def topic_deduplicates(s, topic: str) -> bool:
    """Whether the topic (a data directory's) has a deduplication window of its own."""
    if s.brokers:
        return False  # a cluster has none
    try:
        return s.data_dir("kq produce").topic(topic).config["dedup_window_ms"] is not None
    except TopicNotFound:
        return False


def dedup_window_ms(s, topic: str, window: Optional[str], header: Optional[str]) -> Optional[int]:
    """The --dedup-window given, in ms (None: the topic's setting), after checking it and --dedup-header."""
    from ..units import parse_duration

    if window is None and header is None:
        return None
    data = s.data_dir("kq produce --dedup-window")  # a cluster has no deduplication window
    if header is not None and not header:
        raise bad_parameter("the header name may not be empty", "--dedup-header")
    if window is None:
        try:
            has_window = data.topic(topic).config["dedup_window_ms"] is not None
        except TopicNotFound:
            has_window = False
        if not has_window:
            raise bad_parameter(
                f"topic '{topic}' has no deduplication window: give one with --dedup-window", "--dedup-header"
            )
        return None
    try:
        ms = parse_duration(window)
    except UsageError as exc:
        raise bad_parameter(str(exc), "--dedup-window") from None
    if ms <= 0:
        raise bad_parameter(f"the deduplication window must be longer than 0, not {window!r}", "--dedup-window")
    return ms


def report_duplicates(s, target: ProduceTarget, json_output: bool) -> None:
    """Say how many records were dropped as duplicates (stderr), and with --json which (stdout)."""
    window = target.window
    if window is None:
        return
    from .output import print_json, setting_text

    if json_output:
        import base64

        dropped = []
        for record_id in target.duplicates:
            try:
                dropped.append({"id": record_id.decode("utf-8")})
            except UnicodeDecodeError:  # as consume --json writes a key that is not text
                dropped.append({"id": base64.b64encode(record_id).decode("ascii"), "id_encoding": "base64"})
        print_json(
            {
                "topic": target.name,
                "written": target.written,
                "duplicates": window.dropped,
                "dedup_window_ms": window.window_ms,
                "dropped": dropped,
            }
        )
    if window.dropped:
        s.info(
            f"dropped {count(window.dropped, 'duplicate record')} (ids produced to '{target.name}' within "
            f"{setting_text('dedup_window_ms', window.window_ms, True)}); wrote {target.written}"
        )
