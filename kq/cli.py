"""The ``kq`` command: parse arguments, call the library, format the output.

No storage logic lives here. Heavy imports (rich, json) happen inside the
commands that need them, because kq is often started once per message.
"""

import os
import sys
from typing import Annotated, List, Optional

import typer

from . import __version__
from .errors import EXIT_TIMEOUT, EXIT_USAGE, KqError

app = typer.Typer(
    name="kq",
    add_completion=True,
    no_args_is_help=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
    help="""Kafka's model (topics, partitions, an append-only log, offsets) over a local directory.

[bold]Examples[/bold]

  seq 10 | kq produce demo            [dim]# one message per line[/dim]

  kq consume demo -o -3               [dim]# the last 3 messages of each partition[/dim]

  tail -F app.log | kq produce logs   [dim]# ship a log as it grows[/dim]

  kq consume logs -f --json | jq .value

  kq consume jobs -g mailer --exec ./send.sh   [dim]# cron: commit only on success[/dim]
""",
)
topic_app = typer.Typer(
    help="""Create, list, describe and delete topics.

[bold]Examples[/bold]

  kq topic create orders --partitions 8

  kq topic list

  kq topic describe orders --json
""",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
)
app.add_typer(topic_app, name="topic")
offsets_app = typer.Typer(
    help="""Show and move consumer groups' committed offsets.

[bold]Examples[/bold]

  kq offsets show orders -g billing

  kq offsets reset orders -g billing --to @-1h --dry-run
""",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
)
app.add_typer(offsets_app, name="offsets")
group_app = typer.Typer(
    help="""List, describe and delete consumer groups.

[bold]Examples[/bold]

  kq group list

  kq group describe billing
""",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
)
app.add_typer(group_app, name="group")


class Settings:
    def __init__(self, data_dir: str | None, quiet: bool):
        self.data_dir_path = data_dir
        self.quiet = quiet
        self._data = None

    @property
    def data(self):
        if self._data is None:
            from .datadir import DataDir

            self._data = DataDir(self.data_dir_path)
        return self._data

    def info(self, message: str) -> None:
        if not self.quiet:
            print(f"kq: {message}", file=sys.stderr)


def _settings(ctx: typer.Context) -> Settings:
    return ctx.find_root().obj


def _data_path(ctx: typer.Context) -> str:
    from .location import default_path

    return os.path.abspath(ctx.find_root().params.get("data_dir") or default_path())


def _completer(candidates):
    """A completion callback that filters by prefix and never fails into the shell.

    Completion runs on every Tab press: it only reads directory entries (see
    kq.location) and must never print an error or write to the data directory.
    """

    def complete(ctx: typer.Context, incomplete: str) -> list[str]:
        try:
            return [c for c in candidates(ctx) if c.startswith(incomplete)]
        except Exception:
            return []

    return complete


def _topic_candidates(ctx):
    from .location import topic_names

    return topic_names(_data_path(ctx))


def _group_candidates(ctx):
    from .location import group_names

    return group_names(_data_path(ctx))


def _partition_candidates(ctx):
    from .location import partition_count

    # While an option's value is being completed, click leaves the positional
    # arguments unparsed in ctx.args.
    topic = ctx.params.get("topic") or ctx.params.get("name") or (ctx.args[0] if ctx.args else "")
    return [str(p) for p in range(partition_count(_data_path(ctx), topic))]


complete_topic = _completer(_topic_candidates)
complete_group = _completer(_group_candidates)
complete_partition = _completer(_partition_candidates)
complete_offset = _completer(lambda ctx: ["beginning", "end"])
complete_reset_spec = _completer(lambda ctx: ["earliest", "latest"])


def _no_color(value: bool) -> None:
    # Eager, so that `kq --no-color --help` is colourless too: rich honours
    # NO_COLOR wherever a console is made.
    if value:
        os.environ["NO_COLOR"] = "1"


def _version(value: bool) -> None:
    if value:
        print(f"kq {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def root(
    ctx: typer.Context,
    data_dir: Optional[str] = typer.Option(
        None, "--data-dir", metavar="DIR", envvar="KQ_DATA_DIR",
        help="Data directory \\[default: $KQ_DATA_DIR, else $XDG_DATA_HOME/kq, else ~/.local/share/kq].",
        show_default=False,
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No informational messages on stderr."),
    no_color: bool = typer.Option(False, "--no-color", callback=_no_color, is_eager=True, help="No colour in tables, help and messages (also: NO_COLOR=1)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    ctx.obj = Settings(data_dir, quiet)
    if ctx.invoked_subcommand is None:
        print(ctx.get_help())
        raise typer.Exit()


# --------------------------------------------------------------------- helpers


_ESCAPES = {"n": b"\n", "t": b"\t", "r": b"\r", "0": b"\0", "\\": b"\\"}


def _unescape(text: str) -> bytes:
    r"""Bytes of a delimiter or format given on the command line: \n \t \r \0 \\ \xHH."""
    import re

    out = bytearray()
    for i, piece in enumerate(re.split(r"(\\x[0-9a-fA-F]{2}|\\[ntr0\\])", text)):
        if i % 2 == 0:
            out += piece.encode("utf-8")
        elif piece[1] == "x":
            out.append(int(piece[2:], 16))
        else:
            out += _ESCAPES[piece[1]]
    return bytes(out)


def _delimiter(delimiter: Optional[str], null: bool, default: bytes = b"\n") -> bytes:
    if null and delimiter is not None:
        raise typer.BadParameter("use either -D/--delimiter or -0/--null", param_hint="-0")
    if null:
        return b"\0"
    if delimiter is None:
        return default
    value = _unescape(delimiter)
    if not value:
        raise typer.BadParameter("the delimiter may not be empty", param_hint="-D")
    return value


def _parse_headers(headers: List[str]) -> list[tuple[str, bytes]]:
    out = []
    for h in headers:
        name, sep, value = h.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{h!r} is not NAME=VALUE", param_hint="-H/--header")
        out.append((name, value.encode("utf-8")))
    return out


def _is_terminal(stream=None) -> bool:
    stream = stream or sys.stdout
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _print_json(obj) -> None:
    import json

    print(json.dumps(obj, indent=2 if _is_terminal() else None))


def _rich_table(title: str, columns: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c, justify="right" if c not in ("name", "topic", "setting") else "left")
    for r in rows:
        table.add_row(*[("" if v is None else str(v)) for v in r])
    Console().print(table)


# --------------------------------------------------------------------- produce


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def produce(
    ctx: typer.Context,
    topic: str = typer.Argument(..., autocompletion=complete_topic, help="Topic to append to (created with 1 partition if missing)."),
    file: Optional[str] = typer.Option(None, "--file", metavar="PATH", help="Read from PATH instead of stdin."),
    delimiter: Optional[str] = typer.Option(None, "-D", "--delimiter", metavar="STR", help=r"Message separator \[default: \n]; \t, \0, \xHH understood."),
    null: bool = typer.Option(False, "-0", "--null", help="Messages are separated by NUL bytes."),
    key: Optional[str] = typer.Option(None, "-k", "--key", help="Give every message this key."),
    key_delimiter: Optional[str] = typer.Option(None, "-K", "--key-delimiter", metavar="STR", help="Split each message at the first STR into key and value."),
    header: List[str] = typer.Option([], "-H", "--header", metavar="NAME=VALUE", help="Add a header to every message (repeatable)."),
    partition: Optional[int] = typer.Option(None, "-p", "--partition", autocompletion=complete_partition, help="Append to this partition only."),
    json_input: bool = typer.Option(False, "--json", help="Read JSON lines as written by `consume --json`."),
    null_empty: bool = typer.Option(False, "-Z", "--null-empty", help="Turn empty values into null (tombstones)."),
    sync: bool = typer.Option(False, "--sync", help="fsync every batch (survives power loss)."),
    tombstone: bool = typer.Option(False, "--tombstone", help="Send tombstones (null values) that delete keys in a compacted topic: each input message is a key, or just -k KEY."),
    partitions: int = typer.Option(1, "--partitions", min=1, help="Partitions of the topic if it is created here."),
) -> None:
    """Append messages from stdin (one per line) or a file to a topic.

    [bold]Examples[/bold]

      seq 5 | kq produce demo

      printf 'user1:hello\\nuser2:hi\\n' | kq produce chat -K :

      find . -print0 | kq produce files -0

      kq consume a --json | kq produce b --json     [dim]# copy a topic[/dim]
    """
    from .framing import input_waiting, read_messages, split_keys
    from .producer import Producer

    s = _settings(ctx)
    delim = _delimiter(delimiter, null)
    headers = _parse_headers(header)
    if json_input and (key is not None or key_delimiter is not None or null or delimiter is not None):
        raise typer.BadParameter("--json cannot be combined with -k, -K, -D or -0", param_hint="--json")
    if key is not None and key_delimiter is not None:
        raise typer.BadParameter("use either -k/--key or -K/--key-delimiter", param_hint="-K")
    if tombstone and (json_input or key_delimiter is not None):
        raise typer.BadParameter("--tombstone takes keys, one per message, or -k KEY", param_hint="--tombstone")
    key_delim = None if key_delimiter is None else _unescape(key_delimiter)
    if key_delim == b"":
        raise typer.BadParameter("the key delimiter may not be empty", param_hint="-K")

    if file is not None:
        try:
            fd = os.open(file, os.O_RDONLY)
        except OSError as exc:
            raise KqError(f"cannot read {file}: {exc.strerror}") from None
    else:
        fd = sys.stdin.fileno()

    data = s.data
    t, created = data.get_or_create_topic(topic, partitions)
    if created:
        s.info(f"created topic '{topic}' with {t.partition_count} partition{'s' if t.partition_count != 1 else ''}")
    if sync:
        t.config["sync"] = True
    # In the background: the next batch is read and packed while one is written.
    producer = Producer(t, partition, background=True)
    key_bytes = None if key is None else key.encode("utf-8")
    if tombstone:
        try:
            if key_bytes is not None:
                producer.send_values([None], key=key_bytes)
            else:
                for messages, _ in read_messages(fd, delim):
                    producer.send_records([(m, None, headers, None, None) for m in messages])
        finally:
            producer.close()
            t.close()
        return
    line_no = 0
    bars = _ProgressBars(s)
    total = os.fstat(fd).st_size if file is not None else 0
    try:
        for messages, size in read_messages(fd, delim):
            if total:
                bars.update(file, os.lseek(fd, 0, os.SEEK_CUR), total, producer.sent)
            if json_input:
                from .envelope import decode_record

                records = []
                for m in messages:
                    line_no += 1
                    if m.strip():
                        k, v, h, p, ts = decode_record(m, line_no)
                        records.append((k, v, headers + h if headers else h, p, ts))
                producer.send_records(records)
            elif key_delim is not None:
                keys, values = split_keys(messages, key_delim)
                if null_empty:
                    values = [v or None for v in values]
                producer.send_keyed(keys, values, headers=headers, size=size)
            else:
                if null_empty:
                    messages = [m or None for m in messages]
                producer.send_values(messages, key=key_bytes, headers=headers, size=size)
            if not input_waiting(fd):
                # About to wait for input (tail -F): finish writing first, so a
                # failed append ends the produce now, not at the next line.
                producer.flush()
    finally:
        try:
            producer.close()  # every batch appended (or its error raised) before exit
        finally:
            bars.__exit__()
            t.close()
        if file is not None:
            os.close(fd)


# --------------------------------------------------------------------- consume


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def consume(
    ctx: typer.Context,
    topic: str = typer.Argument(..., autocompletion=complete_topic, help="Topic to read."),
    offset: Optional[str] = typer.Option(None, "-o", "--offset", metavar="SPEC", autocompletion=complete_offset, help="beginning (default), end, N, -N (N before the end), @T (timestamp: epoch ms, ISO-8601, or -1h / -30m ago), or a range A:B."),
    partition: List[int] = typer.Option([], "-p", "--partition", autocompletion=complete_partition, help="Read only this partition (repeatable)."),
    count: Optional[int] = typer.Option(None, "-n", "--count", min=0, help="Stop after N messages."),
    follow: bool = typer.Option(False, "-f", "--follow", help="Wait for new messages, like tail -f (until SIGINT/SIGTERM)."),
    timeout: Optional[float] = typer.Option(None, "-t", "--timeout", metavar="S", min=0, help="Wait for new messages (like -f) but exit after S seconds without one: exit 0 if any message was written, 3 if none."),
    exit_at_end: bool = typer.Option(True, "-e", "--exit", hidden=True, help="Exit at the end of the log (the default)."),
    group: Optional[str] = typer.Option(None, "-g", "--group", autocompletion=complete_group, help="Consume as a member of GROUP: resume at its committed offsets, share partitions with its other members, commit what was written."),
    reset: str = typer.Option("earliest", "--reset", metavar="earliest|latest", help="Where a group starts on partitions it has never committed."),
    no_commit: bool = typer.Option(False, "--no-commit", help="With -g: read from the group's offsets without joining it or committing."),
    exec_cmd: Optional[str] = typer.Option(None, "--exec", metavar="CMD", help="Run CMD (through the shell) for each batch, the messages on its stdin; with -g, commit a batch only when CMD exits 0."),
    batch: int = typer.Option(1000, "--batch", min=1, metavar="N", help="With --exec: at most N messages per run of CMD."),
    fmt: Optional[str] = typer.Option(None, "-F", "--format", metavar="FMT", help=r"Output format: %t topic, %p partition, %o offset, %k key, %s value, %T timestamp (ms), %h headers, %% and \n, \t. Nothing else is added."),
    json_output: bool = typer.Option(False, "--json", help="One JSON object per line (topic, partition, offset, timestamp, key, value, headers)."),
    delimiter: Optional[str] = typer.Option(None, "-D", "--delimiter", metavar="STR", help=r"Written after each message \[default: \n]."),
    null: bool = typer.Option(False, "-0", "--null", help="Write a NUL byte after each message."),
) -> None:
    """Write a topic's messages to stdout, then exit at the end of the log.

    [bold]Examples[/bold]

      kq consume demo                         [dim]# everything, then exit[/dim]

      kq consume demo -f                      [dim]# and keep waiting for more[/dim]

      kq consume logs -o @-1h -F '%T %s\\n'    [dim]# the last hour, with timestamps[/dim]

      kq consume jobs -g mailer --exec ./send.sh   [dim]# cron: at least once, commit on success[/dim]
    """
    from .consumer import Consumer
    from .offsetspec import parse_range

    s = _settings(ctx)
    if fmt is not None and json_output:
        raise typer.BadParameter("use either -F/--format or --json", param_hint="--json")
    if group is not None and (offset is not None or partition):
        raise typer.BadParameter("a group chooses its own offsets and partitions; use `kq offsets reset` to move them", param_hint="-g")
    if no_commit and group is None:
        raise typer.BadParameter("--no-commit needs -g/--group", param_hint="--no-commit")
    if reset not in ("earliest", "latest"):
        raise typer.BadParameter(f"{reset!r} is not earliest or latest", param_hint="--reset")
    delim = _delimiter(delimiter, null)
    spec = parse_range(offset or "beginning")
    follow = follow or timeout is not None
    t = s.data.topic(topic)
    write = _record_writer(t.name, fmt, json_output, delim)
    member = None
    if group is not None and not no_commit:
        from .group import GroupConsumer

        member = GroupConsumer(s.data, t, group, follow=follow, reset=reset,
                               warn=lambda message: print(f"kq: warning: {message}", file=sys.stderr))
        source, rounds = member, member.rounds(timeout)
    elif group is not None:
        from .group import group_start_offsets

        source = Consumer(t, follow=follow)
        for p, start in group_start_offsets(s.data, t, group, reset).items():
            source.add(p, start)
        rounds = source.rounds(timeout)
    else:
        numbers = sorted({t.partition(p).number for p in partition}) if partition else None
        source = Consumer.from_spec(t, numbers, spec, follow=follow)
        rounds = source.rounds(timeout)
    delivered = 0
    try:
        if count == 0:
            return
        rounds = _limited(rounds, count)
        if exec_cmd is not None:
            delivered = _run_exec(rounds, write, exec_cmd, batch, member)
        else:
            delivered = _write_rounds(rounds, write, member)
    except KeyboardInterrupt:
        pass  # SIGINT/SIGTERM end a consume quietly, after committing what was written
    except BrokenPipeError:
        _quiet_stdout()  # the reader left (`kq consume t | head`): its job is done
    finally:
        source.close()
        t.close()
    if source.timed_out and delivered == 0:
        s.info(f"no message arrived within {timeout:g} s")
        raise typer.Exit(EXIT_TIMEOUT)


def _limited(rounds, count: Optional[int]):
    """The rounds, cut short after ``count`` records in all."""
    if count is None:
        yield from rounds
        return
    remaining = count
    for slices in rounds:
        taken = []
        for sl in slices:
            if sl.stop - sl.start >= remaining:
                taken.append(sl._replace(stop=sl.start + remaining))
                remaining = 0
                break
            taken.append(sl)
            remaining -= sl.stop - sl.start
        yield taken
        if remaining == 0:
            return


def _write_rounds(rounds, write, member) -> int:
    """Write each round, flush, then mark it written (so a group may commit it).

    Returns how many records were written.
    """
    out = sys.stdout.buffer
    written = 0
    for slices in rounds:
        for sl in slices:
            out.write(write(sl.partition, sl.batch, sl.start, sl.stop))
        out.flush()
        written += sum(sl.stop - sl.start for sl in slices)
        if member is not None:
            for sl in slices:
                member.mark(sl.partition, sl.offset_after())
    return written


def _exec_batches(slices, size: int):
    """Cut a round of slices into runs of at most ``size`` records."""
    chunk, room = [], size
    for sl in slices:
        start = sl.start
        while start < sl.stop:
            stop = min(sl.stop, start + room)
            chunk.append(sl._replace(start=start, stop=stop))
            room -= stop - start
            start = stop
            if room == 0:
                yield chunk
                chunk, room = [], size
    if chunk:
        yield chunk


def _run_exec(rounds, write, command: str, size: int, member) -> int:
    """Run ``command`` per batch; commit a batch only after the command succeeded.

    Returns how many records the command accepted.
    """
    import subprocess

    done = 0
    for slices in rounds:
        for chunk in _exec_batches(slices, size):
            data = b"".join(write(sl.partition, sl.batch, sl.start, sl.stop) for sl in chunk)
            status = subprocess.run(command, shell=True, input=data).returncode
            if status != 0:
                how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
                raise KqError(f"command {command!r} {how}; its batch was not committed and will be delivered again")
            done += sum(sl.stop - sl.start for sl in chunk)
            if member is not None:
                for sl in chunk:
                    member.mark(sl.partition, sl.offset_after())
                member.commit()
    return done


def _record_writer(topic: str, fmt: Optional[str], as_json: bool, delim: bytes):
    """A function (partition, batch, start, stop) -> bytes for the chosen output."""
    if as_json:
        from .envelope import encode_record

        def write_json(p, b, lo, hi):
            lines = [
                encode_record(topic, p, r.offset, r.timestamp, r.key, r.value, r.headers)
                for r in b.records(lo, hi)
            ]
            lines.append("")
            return "\n".join(lines).encode("utf-8")

        return write_json
    if fmt is not None:
        return _format_writer(topic, fmt)

    def write_values(p, b, lo, hi):
        # Joined with a last empty value, so the final delimiter is not added
        # by copying the whole round once more.
        values = [*(b.values if (lo, hi) == (0, b.count) else b.values[lo:hi]), b""]
        try:
            return delim.join(values)
        except TypeError:  # tombstones print as empty values
            return delim.join([v or b"" for v in values])

    return write_values


def _format_writer(topic: str, fmt: str):
    import re

    pieces = re.split(r"(%[tpoksTh%])", fmt)
    literal = {i: _unescape(p) for i, p in enumerate(pieces) if i % 2 == 0}
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
            return b",".join(name.encode("utf-8") + b"=" + v for name, v in r.headers)
        return b"%"

    def write_format(p, b, lo, hi):
        out = []
        for r in b.records(lo, hi):
            for i, piece in enumerate(pieces):
                out.append(literal[i] if i % 2 == 0 else field(piece, p, r))
        return b"".join(out)

    return write_format


# --------------------------------------------------------------------- topics


_RETENTION_HELP = "Delete closed segments whose records are all older than this (7d, 12h, none)."
_RETENTION_BYTES_HELP = "Keep about this much per partition, deleting the oldest closed segments (1G, none)."
_CLEANUP_HELP = "delete: retention only; compact: also keep just the latest record per key."
_TOMBSTONE_HELP = "With compact: how long a tombstone (null value) survives compaction \\[default: 1d]."

# The settings that `topic create` and `topic alter` share.
RetentionOption = Annotated[Optional[str], typer.Option("--retention", metavar="DURATION", help=_RETENTION_HELP)]
RetentionBytesOption = Annotated[Optional[str], typer.Option("--retention-bytes", metavar="SIZE", help=_RETENTION_BYTES_HELP)]
CleanupOption = Annotated[Optional[str], typer.Option("--cleanup", metavar="delete|compact", help=_CLEANUP_HELP)]
TombstoneOption = Annotated[Optional[str], typer.Option("--tombstone-retention", metavar="DURATION", help=_TOMBSTONE_HELP)]


def _config_changes(segment_bytes, sync, retention, retention_bytes, cleanup, tombstone_retention) -> dict:
    from .units import parse_duration, parse_limit, parse_size

    changes = {}
    if segment_bytes is not None:
        changes["segment_bytes"] = parse_size(segment_bytes)
    if sync is not None:
        changes["sync"] = sync
    if retention is not None:
        changes["retention_ms"] = parse_limit(retention, parse_duration)
    if retention_bytes is not None:
        changes["retention_bytes"] = parse_limit(retention_bytes, parse_size)
    if cleanup is not None:
        changes["cleanup"] = cleanup
    if tombstone_retention is not None:
        changes["tombstone_retention_ms"] = parse_duration(tombstone_retention)
    return changes


@topic_app.command("create")
def topic_create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Topic name: 1-249 of [A-Za-z0-9._-]."),
    partitions: int = typer.Option(1, "--partitions", help="Number of partitions."),
    if_not_exists: bool = typer.Option(False, "--if-not-exists", help="Succeed if the topic already exists."),
    segment_bytes: Optional[str] = typer.Option(None, "--segment-bytes", metavar="SIZE", help="Roll segments at this size (e.g. 64M) \\[default: 64M]."),
    sync: Optional[bool] = typer.Option(None, "--sync/--no-sync", help="fsync every batch (survives power loss) \\[default: no-sync]."),
    retention: RetentionOption = None,
    retention_bytes: RetentionBytesOption = None,
    cleanup: CleanupOption = None,
    tombstone_retention: TombstoneOption = None,
) -> None:
    """Create a topic.

    [bold]Examples[/bold]

      kq topic create orders --partitions 8

      kq topic create logs --retention 7d --retention-bytes 1G

      kq topic create users --cleanup compact     [dim]# a table: latest value per key[/dim]
    """
    from .errors import TopicExists

    s = _settings(ctx)
    config = _config_changes(segment_bytes, sync, retention, retention_bytes, cleanup, tombstone_retention)
    try:
        t = s.data.create_topic(name, partitions, config)
    except TopicExists:
        if if_not_exists:
            return
        raise
    s.info(f"created topic '{t.name}' with {t.partition_count} partition{'s' if t.partition_count != 1 else ''}")


@topic_app.command("alter")
def topic_alter(
    ctx: typer.Context,
    name: str = typer.Argument(..., autocompletion=complete_topic, help="Topic name."),
    segment_bytes: Optional[str] = typer.Option(None, "--segment-bytes", metavar="SIZE", help="Roll segments at this size (e.g. 64M)."),
    sync: Optional[bool] = typer.Option(None, "--sync/--no-sync", help="fsync every batch (survives power loss)."),
    retention: RetentionOption = None,
    retention_bytes: RetentionBytesOption = None,
    cleanup: CleanupOption = None,
    tombstone_retention: TombstoneOption = None,
) -> None:
    """Change a topic's settings; `kq maintain` applies new limits to existing data.

    [bold]Examples[/bold]

      kq topic alter logs --retention 3d

      kq topic alter logs --retention none --retention-bytes 500M
    """
    s = _settings(ctx)
    changes = _config_changes(segment_bytes, sync, retention, retention_bytes, cleanup, tombstone_retention)
    if not changes:
        raise typer.BadParameter("give at least one setting to change", param_hint="NAME")
    t = s.data.alter_topic(name, changes)
    s.info(f"altered topic '{t.name}': " + ", ".join(f"{k}={t.config[k]}" for k in changes))


@topic_app.command("trim")
def topic_trim(
    ctx: typer.Context,
    name: str = typer.Argument(..., autocompletion=complete_topic, help="Topic name."),
    before: str = typer.Option(..., "--before", metavar="OFFSET|@T", help="Delete records before this offset, or before the first record at or after time T."),
    partition: List[int] = typer.Option([], "-p", "--partition", autocompletion=complete_partition, help="Only this partition (repeatable) \\[default: all]."),
    json_output: bool = typer.Option(False, "--json", help="A JSON list of {partition, start_offset, segments_deleted, bytes_reclaimed}."),
) -> None:
    """Delete records before a point (like kafka-delete-records): the start offset moves there.

    [bold]Examples[/bold]

      kq topic trim logs --before 1000000 -p 0

      kq topic trim logs --before @-30d
    """
    from .maintain import trim
    from .offsetspec import ABSOLUTE, TIMESTAMP, parse_spec

    s = _settings(ctx)
    spec = parse_spec(before)
    if spec.kind not in (ABSOLUTE, TIMESTAMP):
        raise typer.BadParameter("use an offset N or a time @T", param_hint="--before")
    t = s.data.topic(name)
    numbers = sorted({t.partition(p).number for p in partition}) if partition else range(t.partition_count)
    rows = []
    for n in numbers:
        part = t.partition(n)
        r = trim(part, spec.resolve(part))
        rows.append({"partition": n, "start_offset": r.start_offset, "segments_deleted": r.segments_deleted,
                     "bytes_reclaimed": r.bytes_reclaimed})
    _emit_rows(rows, ["partition", "start_offset", "segments_deleted", "bytes_reclaimed"], json_output, f"trimmed {t.name}")


def _partition_rows(t) -> list[dict]:
    rows = []
    for p in t.partitions():
        rows.append({
            "partition": p.number,
            "start_offset": p.start_offset(),
            "end_offset": p.end_offset(),
            "size": p.size(),
        })
    return rows


@topic_app.command("list")
def topic_list(
    ctx: typer.Context,
    json_output: bool = typer.Option(False, "--json", help="A JSON list of {name, partitions}."),
) -> None:
    """List topics: one name per line (a table on a terminal).

    [bold]Examples[/bold]

      kq topic list

      kq topic list --json | jq -r '.[] | select(.partitions > 1) | .name'
    """
    s = _settings(ctx)
    names = s.data.topic_names()
    if json_output:
        _print_json([{"name": n, "partitions": s.data.topic(n).partition_count} for n in names])
    elif _is_terminal():
        rows = []
        for n in names:
            t = s.data.topic(n)
            parts = _partition_rows(t)
            rows.append([n, t.partition_count, sum(r["end_offset"] - r["start_offset"] for r in parts), _human(sum(r["size"] for r in parts))])
        _rich_table(f"topics in {s.data.path}", ["name", "partitions", "messages", "size"], rows)
    else:
        for n in names:
            print(n)


def _human(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


@topic_app.command("describe")
def topic_describe(
    ctx: typer.Context,
    name: str = typer.Argument(..., autocompletion=complete_topic, help="Topic name."),
    json_output: bool = typer.Option(False, "--json", help="A JSON object: name, partitions (start/end offset, size), config."),
) -> None:
    """Show a topic's partitions (start and end offsets, size) and config.

    [bold]Examples[/bold]

      kq topic describe orders

      kq topic describe orders --json | jq '[.partitions[].end_offset] | add'
    """
    s = _settings(ctx)
    t = s.data.topic(name)
    rows = _partition_rows(t)
    if json_output:
        _print_json({"name": t.name, "partitions": rows, "config": t.config})
    elif _is_terminal():
        _rich_table(
            f"topic {t.name}",
            ["partition", "start_offset", "end_offset", "messages", "size"],
            [[r["partition"], r["start_offset"], r["end_offset"], r["end_offset"] - r["start_offset"], _human(r["size"])] for r in rows],
        )
        _rich_table("config", ["setting", "value"], [[k, v] for k, v in t.config.items()])
    else:
        print(f"topic\t{t.name}")
        for k, v in t.config.items():
            print(f"config\t{k}\t{v}")
        print("partition\tstart_offset\tend_offset\tsize")
        for r in rows:
            print(f"{r['partition']}\t{r['start_offset']}\t{r['end_offset']}\t{r['size']}")


@topic_app.command("delete")
def topic_delete(
    ctx: typer.Context,
    name: str = typer.Argument(..., autocompletion=complete_topic, help="Topic name."),
    if_exists: bool = typer.Option(False, "--if-exists", help="Succeed if the topic does not exist."),
) -> None:
    """Delete a topic and all its messages.

    [bold]Examples[/bold]

      kq topic delete scratch

      kq topic delete scratch --if-exists     [dim]# in scripts: no error if it is gone[/dim]
    """
    from .errors import TopicNotFound

    s = _settings(ctx)
    try:
        s.data.delete_topic(name)
    except TopicNotFound:
        if if_exists:
            return
        raise
    s.info(f"deleted topic '{name}'")


# --------------------------------------------------------------------- offsets and groups


def _emit_rows(rows: list[dict], columns: list[str], json_output: bool, title: str) -> None:
    """Rows as JSON (scripts), a rich table (terminal) or tab-separated text (pipes)."""
    if json_output:
        _print_json(rows)
    elif _is_terminal():
        _rich_table(title, columns, [[r.get(c) for c in columns] for r in rows])
    else:
        print("\t".join(columns))
        for r in rows:
            print("\t".join("-" if r.get(c) is None else str(r.get(c)) for c in columns))


def _offset_rows(data, t, groups: list[str] | None) -> list[dict]:
    from .group import Groups

    store = Groups(data)
    ends = []
    for p in t.partitions():
        ends.append((p.number, p.start_offset(), p.end_offset()))
    if not groups:
        return [{"topic": t.name, "partition": n, "start_offset": lo, "end_offset": hi} for n, lo, hi in ends]
    rows = []
    for g in groups:
        committed = store.committed(g, t.name)
        for n, lo, hi in ends:
            c = committed.get(n)
            rows.append({
                "topic": t.name, "partition": n, "start_offset": lo, "end_offset": hi,
                "group": g, "committed": c, "lag": hi - (lo if c is None else max(c, lo)),
            })
    return rows


@offsets_app.command("show")
def offsets_show(
    ctx: typer.Context,
    topic: str = typer.Argument(..., autocompletion=complete_topic, help="Topic name."),
    group: Optional[str] = typer.Option(None, "-g", "--group", autocompletion=complete_group, help="Only this group \\[default: every group of the topic]."),
    json_output: bool = typer.Option(False, "--json", help="A JSON list of {topic, partition, start_offset, end_offset[, group, committed, lag]}."),
) -> None:
    """Per partition: start and end offset, and each group's committed offset and lag.

    [bold]Examples[/bold]

      kq offsets show orders

      kq offsets show orders -g billing --json | jq 'map(.lag) | add'
    """
    from .group import Groups
    from .names import check_name

    s = _settings(ctx)
    t = s.data.topic(topic)
    groups = [check_name(group, "group")] if group else Groups(s.data).groups_of_topic(t.name)
    rows = _offset_rows(s.data, t, groups)
    columns = ["partition", "start_offset", "end_offset"] + (["group", "committed", "lag"] if groups else [])
    _emit_rows(rows, columns, json_output, f"offsets of {t.name}")


@offsets_app.command("reset")
def offsets_reset(
    ctx: typer.Context,
    topic: str = typer.Argument(..., autocompletion=complete_topic, help="Topic name."),
    group: str = typer.Option(..., "-g", "--group", autocompletion=complete_group, help="The group whose offsets move."),
    to: str = typer.Option(..., "--to", metavar="SPEC", autocompletion=complete_reset_spec, help="earliest, latest, N (absolute), +N / -N (shift from the committed offset), @T (timestamp, as in consume)."),
    partition: List[int] = typer.Option([], "-p", "--partition", autocompletion=complete_partition, help="Only this partition (repeatable) \\[default: all]."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the before/after table and change nothing."),
    json_output: bool = typer.Option(False, "--json", help="The before/after table as JSON."),
) -> None:
    """Move a group's committed offsets (the group must have no live members on the topic).

    Results outside a partition's range are clamped to it, and said so.

    [bold]Examples[/bold]

      kq offsets reset orders -g billing --to earliest --dry-run

      kq offsets reset orders -g billing --to @2024-05-01T00:00:00Z

      kq offsets reset orders -g billing --to -100 -p 3     [dim]# replay 100 on partition 3[/dim]
    """
    from .group import Groups
    from .offsetspec import parse_spec

    s = _settings(ctx)
    spec = parse_spec(to, relative=True)
    t = s.data.topic(topic)
    numbers = sorted({t.partition(p).number for p in partition}) if partition else None
    store = Groups(s.data)
    rows = store.plan_reset(group, t, spec, numbers)
    for r in rows:
        if r["clamped"]:
            s.info(f"partition {r['partition']}: clamped to {r['after']} (offsets {r['start_offset']}..{r['end_offset']})")
    if not dry_run:
        store.apply_reset(group, t.name, rows)
    _emit_rows(rows, ["partition", "start_offset", "end_offset", "before", "after"], json_output,
               f"{'would reset' if dry_run else 'reset'} {group} on {t.name}")


@group_app.command("list")
def group_list(
    ctx: typer.Context,
    json_output: bool = typer.Option(False, "--json", help="A JSON list of {group, topics, members}."),
) -> None:
    """List consumer groups: one name per line (a table on a terminal).

    [bold]Examples[/bold]

      kq group list

      kq group list --json | jq -r '.[] | select(.members == 0) | .group'
    """
    from .group import Groups

    s = _settings(ctx)
    store = Groups(s.data)
    names = store.names()
    if not json_output and not _is_terminal():
        for n in names:
            print(n)
        return
    rows = [{"group": g, "topics": store.topics(g), "members": store.live_member_count(g)} for g in names]
    if json_output:
        _print_json(rows)
    else:
        _rich_table("consumer groups", ["group", "topics", "members"],
                    [[r["group"], ", ".join(r["topics"]), r["members"]] for r in rows])


@group_app.command("describe")
def group_describe(
    ctx: typer.Context,
    group: str = typer.Argument(..., autocompletion=complete_group, help="Group name."),
    json_output: bool = typer.Option(False, "--json", help="A JSON object: group, partitions (committed, lag, owner), members (and what each owns)."),
) -> None:
    """Show a group's committed offsets, lag and live members, per topic and partition.

    [bold]Examples[/bold]

      kq group describe billing

      kq group describe billing --json | jq '.members[] | {member, partitions}'
    """
    from .errors import GroupNotFound, TopicNotFound
    from .group import Groups

    s = _settings(ctx)
    store = Groups(s.data)
    if not store.exists(group):
        raise GroupNotFound(group)
    partitions, members = [], []
    for topic in store.topics(group):
        try:
            t = s.data.topic(topic)
        except TopicNotFound:
            continue
        owners = store.owners(group, topic)
        for r in _offset_rows(s.data, t, [group]):
            r["owner"] = owners.get(r["partition"])
            partitions.append(r)
        for m in store.members(group, topic):
            members.append({**m, "partitions": sorted(p for p, o in owners.items() if o == m["member"])})
    if json_output:
        _print_json({"group": group, "partitions": partitions, "members": members})
        return
    _emit_rows(partitions, ["topic", "partition", "committed", "end_offset", "lag", "owner"], False, f"group {group}")
    if _is_terminal():
        _rich_table("members", ["member", "host", "pid", "topic", "partitions"],
                    [[m["member"], m["host"], m["pid"], m["topic"], ",".join(map(str, m["partitions"]))] for m in members])
    else:
        for m in members:
            print(f"member\t{m['member']}\t{m['host']}\t{m['pid']}\t{m['topic']}\t{','.join(map(str, m['partitions']))}")


@group_app.command("delete")
def group_delete(
    ctx: typer.Context,
    group: str = typer.Argument(..., autocompletion=complete_group, help="Group name."),
) -> None:
    """Delete a group and its committed offsets (it must have no live members).

    [bold]Examples[/bold]

      kq group delete old-billing

      kq group list | grep '^test-' | xargs -n1 kq group delete
    """
    from .group import Groups

    s = _settings(ctx)
    Groups(s.data).delete(group)
    s.info(f"deleted group '{group}'")


# --------------------------------------------------------------------- replicate


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def replicate(
    ctx: typer.Context,
    topics: Optional[List[str]] = typer.Argument(None, autocompletion=complete_topic, help="Topics to copy (or --all)."),
    to: str = typer.Option(..., "--to", metavar="DIR", help="The replica's data directory (another disk, another mount)."),
    all_topics: bool = typer.Option(False, "--all", help="Copy every topic."),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep the replica caught up until SIGINT/SIGTERM."),
    truncate: bool = typer.Option(False, "--truncate", help="If the replica has records the source lacks, cut it back to the common prefix and continue."),
    verify: bool = typer.Option(False, "--verify", help="Compare source and replica instead of copying; exit 0 only when the replica holds exactly the source's batches (it may lag)."),
    json_output: bool = typer.Option(False, "--json", help="A JSON summary on stdout."),
) -> None:
    """Copy topics to a replica data directory: same batches, same offsets, same group offsets.

    Incremental and safe to interrupt: a rerun copies only what is new.
    Consumers fail over by pointing --data-dir (or KQ_DATA_DIR) at the replica.

    [bold]Examples[/bold]

      kq replicate orders --to /mnt/backup/kq

      * * * * * kq -q replicate --all --to /mnt/backup/kq     [dim]# cron, every minute[/dim]

      kq replicate --all --to /mnt/backup/kq --follow

      kq replicate --verify orders --to /mnt/backup/kq
    """
    from .datadir import DataDir
    from .replicate import Replicator, report_dict

    s = _settings(ctx)
    if all_topics == bool(topics):
        raise typer.BadParameter("name topics or give --all (not both)", param_hint="TOPIC")
    if verify and (follow or truncate):
        raise typer.BadParameter("--verify only compares; it takes no --follow or --truncate", param_hint="--verify")
    names = None if all_topics else list(dict.fromkeys(topics))
    replicator = Replicator(s.data, DataDir(to), truncate=truncate)
    if verify:
        reports = replicator.verify(names)
        rows = [report_dict(r) for r in reports]
        if json_output:
            _print_json(rows)
        else:
            for r in rows:
                r["groups"] = ", ".join(f"{g['group']}:{g['status']}" for g in r["groups"]) or None
            _emit_rows(rows, ["topic", "partition", "source_end", "replica_end", "status", "detail", "groups"], False, f"replica {to}")
        if not all(r.ok for r in reports):
            raise typer.Exit(1)
        return

    def announce(r) -> None:
        if r.truncated_at is not None:
            s.info(f"{r.topic}/{r.partition}: replica truncated to offset {r.truncated_at}")
        if r.records:
            s.info(f"{r.topic}/{r.partition}: copied {r.records} records ({r.bytes} bytes), offsets {r.from_offset}..{r.to_offset - 1}")

    with replicator:
        if follow:
            try:
                replicator.follow(names, on_copy=announce)
            except KeyboardInterrupt:
                return
        with _ProgressBars(s, json_output) as bars:
            replicator.progress = lambda r, total: bars.update(f"{r.topic}/{r.partition}", r.bytes, total, r.records)
            reports = replicator.replicate(names)
    if json_output:
        _print_json({"replica": replicator.replica.path, "partitions": [report_dict(r) for r in reports]})
    else:
        for r in reports:
            announce(r)


class _ProgressBars:
    """Rich progress bars on stderr, one per task, for work of more than a few MB.

    Only on a terminal (never into a pipe or a log), and not with -q or --json.
    """

    THRESHOLD = 16 * 1024 * 1024

    def __init__(self, settings: Settings, json_output: bool = False):
        self.enabled = not (settings.quiet or json_output) and _is_terminal(sys.stderr)
        self.bar = None
        self.tasks = {}

    def __enter__(self) -> "_ProgressBars":
        return self

    def update(self, key, completed: int, total: int, records: int) -> None:
        if not self.enabled or total < self.THRESHOLD:
            return
        if self.bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                TransferSpeedColumn(), TextColumn("{task.fields[records]:,} msgs"),
                                console=Console(stderr=True), transient=True)
            self.bar.start()
        if key not in self.tasks:
            self.tasks[key] = self.bar.add_task(str(key), total=total, records=0)
        self.bar.update(self.tasks[key], completed=completed, records=records)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


# --------------------------------------------------------------------- maintain


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def maintain(
    ctx: typer.Context,
    topics: Optional[List[str]] = typer.Argument(None, autocompletion=complete_topic, help="Topics \\[default: all]."),
    json_output: bool = typer.Option(False, "--json", help="A JSON list with a summary per partition."),
) -> None:
    """Apply retention and compaction now: safe to run from cron, idempotent.

    Deletes closed segments past the topic's time or size limit and compacts
    topics created with --cleanup compact, while producers and consumers go on.

    [bold]Examples[/bold]

      kq maintain

      0 * * * * kq -q maintain          [dim]# hourly, from cron[/dim]

      kq maintain logs --json
    """
    from dataclasses import asdict

    from .maintain import maintain_topic

    s = _settings(ctx)
    names = list(dict.fromkeys(topics)) if topics else s.data.topic_names()
    rows = []
    with _ProgressBars(s, json_output) as bars:
        def progress(part, done, total):
            bars.update(f"compacting {part.topic}/{part.number}", done * bars.THRESHOLD, total * bars.THRESHOLD, done)

        for name in names:
            t = s.data.topic(name)
            rows += [asdict(r) for r in maintain_topic(t, progress=progress)]
            t.close()
    if json_output:
        _print_json(rows)
        return
    totals = {k: sum(r[k] for r in rows) for k in ("segments_deleted", "bytes_reclaimed", "records_removed", "tombstones_removed")}
    s.info(
        f"{len(names)} topic(s): {totals['segments_deleted']} segment(s) deleted, {_human(totals['bytes_reclaimed'])} reclaimed, "
        f"{totals['records_removed']} superseded record(s) and {totals['tombstones_removed']} tombstone(s) compacted away"
    )
    if _is_terminal() and rows:
        _emit_rows(rows, ["topic", "partition", "start_offset", "segments_deleted", "bytes_reclaimed", "records_removed", "tombstones_removed"], False, "maintenance")


# --------------------------------------------------------------------- verify


@app.command("verify", context_settings={"help_option_names": ["-h", "--help"]})
def verify_command(
    ctx: typer.Context,
    topics: Optional[List[str]] = typer.Argument(None, autocompletion=complete_topic, help="Topics \\[default: all]."),
    repair: bool = typer.Option(False, "--repair", help="Fix what can be fixed: rebuild indexes, truncate torn tails, move damaged bytes and unreadable offsets files to quarantine files; print each action."),
    json_output: bool = typer.Option(False, "--json", help="A JSON list of problems: topic, partition, file, position, problem, severity (with --repair also action, repaired)."),
) -> None:
    """Check every segment, index and offsets file; exit 0 only when no error is left.

    One line per problem on stdout: FILE: position N: SEVERITY: WHAT. Warnings
    (a group behind the start offset) and info lines never fail the check.
    --repair holds each partition's writer and maintenance locks while it
    works, and never deletes data silently: see docs/FORMAT.md, "kq verify".

    [bold]Examples[/bold]

      kq verify

      kq verify orders --repair

      kq verify --json | jq -r '.[] | select(.severity == "error") | .file'
    """
    from .verify import ERROR, WARNING, Verifier

    s = _settings(ctx)
    verifier = Verifier(s.data, repair=repair)
    problems = []
    for p in verifier.run(list(dict.fromkeys(topics)) if topics else None):
        problems.append(p)
        if not json_output:
            print(p.line(), flush=True)
    if json_output:
        _print_json([p.as_dict(with_action=repair) for p in problems])
    counts = verifier.counts
    outcome = "clean" if not counts[ERROR] + counts[WARNING] else f"{counts[ERROR]} error(s), {counts[WARNING]} warning(s)"
    if repair and counts[ERROR]:
        outcome += f"; {verifier.repaired} repaired, {verifier.unrepaired} not"
    s.info(
        f"verified {verifier.topics} topic(s), {verifier.partitions} partition(s), {verifier.segments} segment(s) "
        f"({_human(verifier.bytes)}): {outcome}"
    )
    if not verifier.clean:
        raise typer.Exit(1)


# --------------------------------------------------------------------- bench


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def bench(
    ctx: typer.Context,
    messages: int = typer.Option(1_000_000, "-n", "--messages", min=1, help="How many messages to produce and consume."),
    size: int = typer.Option(100, "-s", "--size", min=0, metavar="BYTES", help="Bytes per message."),
    partitions: int = typer.Option(1, "--partitions", min=1, help="Partitions of the scratch topic."),
    keys: int = typer.Option(0, "--keys", min=0, metavar="N", show_default=False, help="Spread the messages over N keys (murmur2 partitioning) \\[default: no keys]."),
    sync: bool = typer.Option(False, "--sync", help="fsync every batch, as `produce --sync` does."),
    json_output: bool = typer.Option(False, "--json", help="A JSON list: phase, messages, bytes, seconds, msg_per_s, mb_per_s."),
) -> None:
    """Measure produce and consume speed on this machine's disk (like kafka-producer-perf-test).

    Writes a scratch topic in the data directory, reads it back, deletes it.
    Produce cuts batches as `kq produce` does from a fast pipe; consume reads
    and decodes as `kq consume` does, without writing the messages out.

    [bold]Examples[/bold]

      kq bench

      kq bench -n 200000 --size 1000 --sync       [dim]# durable writes of 1 KB messages[/dim]

      kq --data-dir /mnt/fast bench --partitions 8 --keys 10000 --json
    """
    from .bench import run

    s = _settings(ctx)
    phases = run(s.data, messages, size, partitions, keys, sync)
    rows = [
        {"phase": p.name, "messages": p.messages, "bytes": p.bytes, "seconds": round(p.seconds, 4),
         "msg_per_s": round(p.messages_per_second), "mb_per_s": round(p.megabytes_per_second, 1)}
        for p in phases
    ]
    _emit_rows(rows, ["phase", "messages", "bytes", "seconds", "msg_per_s", "mb_per_s"], json_output, "kq bench")


# --------------------------------------------------------------------- serve


def _host_port(text: str, option: str) -> tuple[str, int]:
    """Split HOST:PORT (or [IPv6]:PORT); a usage error names the option."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise typer.BadParameter(f"{text!r} is not HOST:PORT (for example 127.0.0.1:9092)", param_hint=option)
    return host, int(port)


def _is_loopback(host: str) -> bool:
    import ipaddress
    import socket

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except (OSError, ValueError):
            return False


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def serve(
    ctx: typer.Context,
    listen: str = typer.Option("127.0.0.1:9092", "--listen", metavar="HOST:PORT", help="Address to accept Kafka clients on (port 0: any free port)."),
    advertise: Optional[str] = typer.Option(None, "--advertise", metavar="HOST:PORT", help="Address clients are told to connect to \\[default: the --listen address]."),
    no_auto_create: bool = typer.Option(False, "--no-auto-create", help="Do not create topics that clients ask metadata for (Kafka's auto.create.topics.enable=false)."),
    max_request_bytes: int = typer.Option(100 * 1024 * 1024, "--max-request-bytes", min=1024, metavar="N", help="Close connections that send a larger request (Kafka's socket.request.max.bytes)."),
    sync: bool = typer.Option(False, "--sync", help="fdatasync every produced batch before acknowledging it (survives power loss)."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Log one line per connection and per error on stderr."),
) -> None:
    """Serve the data directory to Kafka clients (kcat, librdkafka, kafka-python, aiokafka) until SIGINT/SIGTERM.

    Topics, offsets and consumer groups are kq's own: `kq produce`, `kq
    consume -g` and `kq offsets` work on the same directory at the same time.
    There is no authentication: anyone who can reach the port can read and
    write every topic, so it listens on loopback unless told otherwise.
    Needs the Kafka extra: pip install 'kq\\[kafka]'.

    [bold]Examples[/bold]

      kq serve                                        [dim]# 127.0.0.1:9092[/dim]

      kcat -b 127.0.0.1:9092 -t demo -C -e            [dim]# in another shell[/dim]

      kq --data-dir /srv/kq serve --listen 0.0.0.0:9092 --advertise myhost:9092
    """
    import errno
    import socket

    from .serve import INSTALL_HINT, missing_dependency

    host, port = _host_port(listen, "--listen")
    adv_host, adv_port = _host_port(advertise, "--advertise") if advertise else (host, None)
    if advertise is None and host in ("0.0.0.0", "::", ""):
        adv_host = socket.gethostname()
    missing = missing_dependency()
    if missing is not None:
        raise KqError(f"kq serve needs {missing} (the Kafka protocol libraries): {INSTALL_HINT}")
    import logging

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="kq: %(message)s", stream=sys.stderr)
    s = _settings(ctx)
    if not _is_loopback(host):
        print(f"kq: warning: listening on {host}, not loopback: kq serve has no authentication, "
              "anyone who reaches this port can read and write every topic", file=sys.stderr)

    def ready(server) -> None:
        shown = f"[{host}]" if ":" in host else host
        print(f"kq: serving {s.data.path} on {shown}:{server.port}", file=sys.stderr, flush=True)

    from .serve import serve as run

    try:
        run(s.data.path, host, port, adv_host, adv_port if advertise else None, auto_create=not no_auto_create,
            max_request_bytes=max_request_bytes, sync=sync, ready=ready)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise KqError(f"cannot listen on {listen}: the address is already in use") from None
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EACCES) or isinstance(exc, socket.gaierror):
            raise KqError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
        raise
    except KeyboardInterrupt:  # a second signal during shutdown
        return


# --------------------------------------------------------------------- entry point


def _error(message: str, code: int) -> int:
    print(f"kq: error: {message}", file=sys.stderr)
    return code


def _quiet_stdout() -> None:
    """After a broken pipe, send further output to /dev/null so exit stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _invoked_name(args: list[str]) -> str | None:
    """The command named on the line, after the global options; None if there is none."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--data-dir":
            i += 2
        elif arg.startswith("--data-dir=") or arg in ("-q", "--quiet", "--no-color"):
            i += 1
        else:
            return None if arg.startswith("-") else arg
    return None


def _command_tree(args: list[str], get_command):
    """The click command for this run, built only for the command it names.

    typer converts every command's signature into click parameters at each
    start; building just the invoked command saves most of kq's own start-up
    (kq is often run once per message). Help, completion and misspelt
    commands get the whole tree.
    """
    from typer.main import get_command_name

    name = None if "_KQ_COMPLETE" in os.environ else _invoked_name(args)
    commands = [c for c in app.registered_commands if (c.name or get_command_name(c.callback.__name__)) == name]
    groups = [g for g in app.registered_groups if g.name == name]
    if not (commands or groups):
        return get_command(app)
    everything = app.registered_commands, app.registered_groups
    app.registered_commands, app.registered_groups = commands, groups
    try:
        return get_command(app)
    finally:
        app.registered_commands, app.registered_groups = everything


def main(argv: list[str] | None = None) -> None:
    import signal

    from typer._click import exceptions as click_exc
    from typer.main import get_command

    # SIGTERM ends kq the way SIGINT does: a follow exits 0, a produce stops cleanly.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    command = _command_tree(sys.argv[1:] if argv is None else argv, get_command)
    try:
        code = command.main(args=argv, prog_name="kq", standalone_mode=False)
        code = code if isinstance(code, int) else 0
    except click_exc.UsageError as exc:
        hint = ""
        if exc.ctx is not None:
            hint = f"\nTry '{exc.ctx.command_path} --help' for help."
        code = _error(exc.format_message() + hint, EXIT_USAGE)
    except click_exc.ClickException as exc:
        code = _error(exc.format_message(), exc.exit_code)
    except KqError as exc:
        code = _error(str(exc), exc.exit_code)
    except BrokenPipeError:
        _quiet_stdout()
        code = 0
    except KeyboardInterrupt:
        code = 130
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        code = _error(f"{exc.strerror or exc}{where}", 1)
    except (typer.Abort, EOFError):
        code = 130
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()
    sys.exit(code)
