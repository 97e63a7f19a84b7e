"""The ``kq`` command: parse arguments, call the library, format the output.

No storage logic lives here. Heavy imports (rich, json) happen inside the
commands that need them, because kq is often started once per message.
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional

import typer

from . import __version__
from .errors import EXIT_USAGE, KqError

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
""",
)
topic_app = typer.Typer(
    help="Create, list, describe and delete topics.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
)
app.add_typer(topic_app, name="topic")


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


def _version(value: bool) -> None:
    if value:
        print(f"kq {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def root(
    ctx: typer.Context,
    data_dir: Optional[str] = typer.Option(
        None, "--data-dir", metavar="DIR", envvar="KQ_DATA_DIR",
        help="Data directory [default: $KQ_DATA_DIR, else $XDG_DATA_HOME/kq, else ~/.local/share/kq].",
        show_default=False,
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No informational messages on stderr."),
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
    topic: str = typer.Argument(..., help="Topic to append to (created with 1 partition if missing)."),
    file: Optional[str] = typer.Option(None, "--file", metavar="PATH", help="Read from PATH instead of stdin."),
    delimiter: Optional[str] = typer.Option(None, "-D", "--delimiter", metavar="STR", help=r"Message separator [default: \n]; \t, \0, \xHH understood."),
    null: bool = typer.Option(False, "-0", "--null", help="Messages are separated by NUL bytes."),
    key: Optional[str] = typer.Option(None, "-k", "--key", help="Give every message this key."),
    key_delimiter: Optional[str] = typer.Option(None, "-K", "--key-delimiter", metavar="STR", help="Split each message at the first STR into key and value."),
    header: List[str] = typer.Option([], "-H", "--header", metavar="NAME=VALUE", help="Add a header to every message (repeatable)."),
    partition: Optional[int] = typer.Option(None, "-p", "--partition", help="Append to this partition only."),
    json_input: bool = typer.Option(False, "--json", help="Read JSON lines as written by `consume --json`."),
    null_empty: bool = typer.Option(False, "-Z", "--null-empty", help="Turn empty values into null (tombstones)."),
    sync: bool = typer.Option(False, "--sync", help="fsync every batch (survives power loss)."),
    partitions: int = typer.Option(1, "--partitions", min=1, help="Partitions of the topic if it is created here."),
) -> None:
    """Append messages from stdin (one per line) or a file to a topic.

    [bold]Examples[/bold]

      seq 5 | kq produce demo

      printf 'user1:hello\\nuser2:hi\\n' | kq produce chat -K :

      find . -print0 | kq produce files -0

      kq consume a --json | kq produce b --json     [dim]# copy a topic[/dim]
    """
    from .framing import read_messages
    from .producer import Producer

    s = _settings(ctx)
    delim = _delimiter(delimiter, null)
    headers = _parse_headers(header)
    if json_input and (key is not None or key_delimiter is not None or null or delimiter is not None):
        raise typer.BadParameter("--json cannot be combined with -k, -K, -D or -0", param_hint="--json")
    if key is not None and key_delimiter is not None:
        raise typer.BadParameter("use either -k/--key or -K/--key-delimiter", param_hint="-K")
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
    producer = Producer(t, partition)
    key_bytes = None if key is None else key.encode("utf-8")
    line_no = 0
    try:
        for messages in read_messages(fd, delim):
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
                records = []
                for m in messages:
                    k, sep, v = m.partition(key_delim)
                    if not sep:
                        k, v = None, m
                    records.append((k, None if null_empty and not v else v, headers, None, None))
                producer.send_records(records)
            else:
                if null_empty:
                    messages = [m or None for m in messages]
                producer.send_values(messages, key=key_bytes, headers=headers)
    finally:
        t.close()
        if file is not None:
            os.close(fd)


# --------------------------------------------------------------------- consume


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def consume(
    ctx: typer.Context,
    topic: str = typer.Argument(..., help="Topic to read."),
    offset: str = typer.Option("beginning", "-o", "--offset", metavar="SPEC", help="beginning, end, N, -N (N before the end), @T (timestamp: epoch ms, ISO-8601, or -1h / -30m ago), or a range A:B."),
    partition: List[int] = typer.Option([], "-p", "--partition", help="Read only this partition (repeatable)."),
    count: Optional[int] = typer.Option(None, "-n", "--count", min=0, help="Stop after N messages."),
    follow: bool = typer.Option(False, "-f", "--follow", help="Wait for new messages, like tail -f (until SIGINT/SIGTERM)."),
    exit_at_end: bool = typer.Option(True, "-e", "--exit", hidden=True, help="Exit at the end of the log (the default)."),
    fmt: Optional[str] = typer.Option(None, "-F", "--format", metavar="FMT", help=r"Output format: %t topic, %p partition, %o offset, %k key, %s value, %T timestamp (ms), %h headers, %% and \n, \t. Nothing else is added."),
    json_output: bool = typer.Option(False, "--json", help="One JSON object per line (topic, partition, offset, timestamp, key, value, headers)."),
    delimiter: Optional[str] = typer.Option(None, "-D", "--delimiter", metavar="STR", help=r"Written after each message [default: \n]."),
    null: bool = typer.Option(False, "-0", "--null", help="Write a NUL byte after each message."),
) -> None:
    """Write a topic's messages to stdout, then exit at the end of the log.

    [bold]Examples[/bold]

      kq consume demo                         [dim]# everything, then exit[/dim]

      kq consume demo -f                      [dim]# and keep waiting for more[/dim]

      kq consume logs -o @-1h -F '%T %s\\n'    [dim]# the last hour, with timestamps[/dim]

      kq consume demo --json | jq -r .value
    """
    from .consumer import Consumer
    from .offsetspec import parse_range

    s = _settings(ctx)
    if fmt is not None and json_output:
        raise typer.BadParameter("use either -F/--format or --json", param_hint="--json")
    delim = _delimiter(delimiter, null)
    spec = parse_range(offset)
    t = s.data.topic(topic)
    numbers = None
    if partition:
        numbers = sorted({t.partition(p).number for p in partition})
    consumer = Consumer(t, numbers, spec, follow=follow)
    write = _record_writer(t.name, fmt, json_output, delim)
    out = sys.stdout.buffer
    remaining = count
    try:
        if remaining == 0:
            return
        for sl in consumer:
            stop = sl.stop
            if remaining is not None and stop - sl.start > remaining:
                stop = sl.start + remaining
            out.write(write(sl.partition, sl.batch, sl.start, stop))
            out.flush()
            if remaining is not None:
                remaining -= stop - sl.start
                if remaining <= 0:
                    break
    except KeyboardInterrupt:
        pass  # SIGINT/SIGTERM end a follow quietly
    except BrokenPipeError:
        _quiet_stdout()  # the reader left (`kq consume t | head`): its job is done
    finally:
        consumer.close()
        t.close()


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
        values = b.values if (lo, hi) == (0, b.count) else b.values[lo:hi]
        try:
            return delim.join(values) + delim
        except TypeError:  # tombstones print as empty values
            return delim.join(v or b"" for v in values) + delim

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


@topic_app.command("create")
def topic_create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Topic name: 1-249 of [A-Za-z0-9._-]."),
    partitions: int = typer.Option(1, "--partitions", help="Number of partitions."),
    if_not_exists: bool = typer.Option(False, "--if-not-exists", help="Succeed if the topic already exists."),
    segment_bytes: Optional[str] = typer.Option(None, "--segment-bytes", metavar="SIZE", help="Roll segments at this size (e.g. 64M) [default: 64M]."),
    sync: Optional[bool] = typer.Option(None, "--sync/--no-sync", help="fsync every batch (survives power loss) [default: no-sync]."),
) -> None:
    """Create a topic.

    [bold]Examples[/bold]

      kq topic create orders --partitions 8

      kq topic create audit --sync --if-not-exists
    """
    from .errors import TopicExists
    from .units import parse_size

    s = _settings(ctx)
    config = {}
    if segment_bytes is not None:
        config["segment_bytes"] = parse_size(segment_bytes)
    if sync is not None:
        config["sync"] = sync
    try:
        t = s.data.create_topic(name, partitions, config)
    except TopicExists:
        if if_not_exists:
            return
        raise
    s.info(f"created topic '{t.name}' with {t.partition_count} partition{'s' if t.partition_count != 1 else ''}")


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
    """List topics: one name per line (a table on a terminal)."""
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
    name: str = typer.Argument(..., help="Topic name."),
    json_output: bool = typer.Option(False, "--json", help="A JSON object: name, partitions (start/end offset, size), config."),
) -> None:
    """Show a topic's partitions (start and end offsets, size) and config."""
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
    name: str = typer.Argument(..., help="Topic name."),
    if_exists: bool = typer.Option(False, "--if-exists", help="Succeed if the topic does not exist."),
) -> None:
    """Delete a topic and all its messages."""
    from .errors import TopicNotFound

    s = _settings(ctx)
    try:
        s.data.delete_topic(name)
    except TopicNotFound:
        if if_exists:
            return
        raise
    s.info(f"deleted topic '{name}'")


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


def main(argv: list[str] | None = None) -> None:
    import signal

    from typer._click import exceptions as click_exc
    from typer.main import get_command

    # SIGTERM ends kq the way SIGINT does: a follow exits 0, a produce stops cleanly.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    command = get_command(app)
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
