"""The ``kq`` command: parse arguments, call the library, format the output.

No storage logic lives here. Heavy imports (rich, json) happen inside the
commands that need them, because kq is often started once per message.
"""

import os
import sys
from typing import Annotated, List, Optional

import typer
from typer.core import TyperCommand

from . import __version__
from .errors import EXIT_TIMEOUT, EXIT_USAGE, KqError, UsageError

class _Command(TyperCommand):
    """A command whose usage line names arguments as click does (``TOPIC``, ``[TOPICS]...``).

    typer 0.28 writes a required argument as ``{topic}``.
    """

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name != "argument":
                pieces += param.get_usage_pieces(ctx)
                continue
            name = param.metavar or param.name.upper()
            pieces.append((name if param.required else f"[{name}]") + ("..." if param.nargs != 1 else ""))
        return pieces


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
    help="""Create, alter, trim, list, describe and delete topics.

[bold]Examples[/bold]

  kq topic create orders --partitions 8

  kq topic alter logs --retention 3d

  kq topic trim logs --before @-30d

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


def _option_value(value):
    """``-o=X`` means X: a short option's value cannot start with '=' here (no offset, group or topic does)."""
    return value[1:] if isinstance(value, str) and value.startswith("=") else value


def _join_equals(words: list[str], current: int) -> tuple[list[str], int]:
    """Words as the command line wrote them, where bash split ``--opt=value`` at '='.

    bash breaks completion words at '=' (COMP_WORDBREAKS), so
    ``--data-dir=DIR`` arrives as ``--data-dir``, ``=``, ``DIR``; click
    needs it whole. Returns the joined words and the index of the word
    being completed in them.
    """
    out: list[str] = []
    where = None
    i = 0
    while i < len(words):
        word = words[i]
        joinable = out and (out[-1].startswith("--") or out[-1] in _EQUALS_SHORT) and "=" not in out[-1]
        if word == "=" and joinable:
            out[-1] += "="
            if i == current:
                where = len(out) - 1
            if i + 1 < len(words) and words[i + 1] != "=":
                out[-1] += words[i + 1]
                if i + 1 == current:
                    where = len(out) - 1
                i += 1
        else:
            if i == current:
                where = len(out)
            out.append(word)
        i += 1
    return out, len(out) if where is None else where


# Short options that also take ``-o=VALUE`` (see _option_value).
_EQUALS_SHORT = ("-o", "-g")


def _use_kq_completion() -> None:
    """typer's completion, fixed: bash after ``--opt=`` (and ``-o=``), zsh and fish on
    ``--opt=value`` words, zsh descriptions with quotes and backslashes."""
    from typer._click.shell_completion import add_completion_class, split_arg_string
    from typer._completion_classes import BashComplete, FishComplete, ZshComplete, _sanitize_help_text

    class Bash(BashComplete):
        def get_completion_args(self):
            words = split_arg_string(os.environ["COMP_WORDS"])
            words, current = _join_equals(words, int(os.environ["COMP_CWORD"]))
            return words[1:current], words[current] if current < len(words) else ""

    def zsh_quoted(text: str) -> str:
        # Inside zsh double quotes only these four are special.
        return text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("`", "\\`")

    class WholeWord:
        """zsh and fish complete the whole word `--offset=be`: offer `--offset=beginning`, not `beginning`."""

        value_prefix = ""

        def get_completion_args(self):
            args, incomplete = super().get_completion_args()
            if incomplete.startswith("-") and "=" in incomplete:
                self.value_prefix = incomplete.partition("=")[0] + "="
            return args, incomplete

        def get_completions(self, args, incomplete):
            items = super().get_completions(args, incomplete)
            for item in items:
                item.value = self.value_prefix + item.value
            return items

    class Zsh(WholeWord, ZshComplete):
        def format_completion(self, item) -> str:
            value = zsh_quoted(item.value).replace(":", "\\:")
            if item.help:
                return f'"{value}":"{zsh_quoted(_sanitize_help_text(item.help))}"'
            return f'"{value}"'

        def complete(self) -> str:
            args, incomplete = self.get_completion_args()
            items = [self.format_completion(item) for item in self.get_completions(args, incomplete)]
            if not items:
                return "_files"
            # The script evals this unquoted: the spec is one single-quoted word.
            spec = "*: :((" + "\n".join(items) + "))"
            return "_arguments '" + spec.replace("'", "'\\''") + "'"

    class Fish(WholeWord, FishComplete):
        pass

    add_completion_class(Bash, "bash")
    add_completion_class(Zsh, "zsh")
    add_completion_class(Fish, "fish")


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


def _arg_bytes(text: str) -> bytes:
    """The bytes the shell passed for an argument, valid UTF-8 or not.

    Python decodes arguments with surrogateescape; encoding them back the
    same way gives a shell user's bytes (`-k "$(printf '\\xff')"`) unchanged.
    """
    return text.encode("utf-8", "surrogateescape")


def _unescape(text: str) -> bytes:
    r"""Bytes of a delimiter or format given on the command line: \n \t \r \0 \\ \xHH."""
    import re

    out = bytearray()
    for i, piece in enumerate(re.split(r"(\\x[0-9a-fA-F]{2}|\\[ntr0\\])", text)):
        if i % 2 == 0:
            out += _arg_bytes(piece)
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
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            # Kafka's header names are text; their values are bytes.
            raise typer.BadParameter(f"header name {name!r} is not UTF-8 text", param_hint="-H/--header") from None
        out.append((name, _arg_bytes(value)))
    return out


def _warn(message: str) -> None:
    print(f"kq: warning: {message}", file=sys.stderr, flush=True)


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

    console = Console()
    if not rows:
        console.print(f"{title}: none", style="dim")
        return
    table = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        # Numbers (and sizes such as 1.2 MiB) line up on the right, words on the left.
        cells = [r[i] for r in rows if r[i] is not None and r[i] != ""]
        table.add_column(c, justify="right" if cells and all(map(_looks_numeric, cells)) else "left")
    for r in rows:
        table.add_row(*[("" if v is None else str(v)) for v in r])
    console.print(table)


def _looks_numeric(value) -> bool:
    import re

    if isinstance(value, bool):
        return False
    return isinstance(value, (int, float)) or bool(re.fullmatch(r"-?[\d,.]+(?: [KMGT]?i?B)?", str(value)))


# --------------------------------------------------------------------- produce


def _open_input(file: Optional[str]) -> tuple[int, str]:
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


class _ProduceTarget:
    """The topic a produce appends to, and its producer, made when the first records are ready.

    An existing topic is opened at once; a missing one is created only when
    there is something to write, so a produce that fails first (a bad first
    line, an unreadable file) leaves no empty topic behind. A topic created
    here for --json input grows to the partitions the records name, so that
    `consume a --json | produce b --json` copies any number of partitions.
    """

    def __init__(self, settings: Settings, name: str, partitions: int, pinned: Optional[int], sync: bool):
        from .errors import PartitionNotFound, TopicNotFound

        self.settings, self.name, self.pinned, self.sync = settings, name, pinned, sync
        self.partitions = partitions  # for a topic created here: at least this many
        self.created = False
        self._producer = None
        try:
            self.topic = settings.data.topic(name)
        except TopicNotFound:
            self.topic = None
        count = partitions if self.topic is None else self.topic.partition_count
        if pinned is not None and not 0 <= pinned < count:
            raise PartitionNotFound(name, pinned, count)

    def need_partition(self, number: int, line_no: int) -> None:
        """Check that a record may go to partition ``number``, growing a topic created here."""
        from .datadir import MAX_PARTITIONS

        if self.topic is not None and not self.created:
            count = self.topic.partition_count
            if not 0 <= number < count:
                raise UsageError(
                    f"line {line_no}: partition {number} does not exist in topic '{self.name}' "
                    f"(it has partitions 0..{count - 1})"
                )
        elif not 0 <= number < MAX_PARTITIONS:
            raise UsageError(f"line {line_no}: partition {number} is not between 0 and {MAX_PARTITIONS - 1}")
        else:
            self.partitions = max(self.partitions, number + 1)

    def producer(self):
        from .producer import Producer

        if self.topic is None:
            self.topic, self.created = self.settings.data.get_or_create_topic(self.name, self.partitions)
            if self.created:
                self.settings.info(f"created topic '{self.name}' with {_count(self.topic.partition_count, 'partition')}")
            elif self.partitions > self.topic.partition_count:
                raise UsageError(
                    f"topic '{self.name}' was created meanwhile with {_count(self.topic.partition_count, 'partition')}, "
                    f"but the input names partition {self.partitions - 1}"
                )
        if self.created and self.partitions > self.topic.partition_count:
            self.settings.data.add_partitions(self.topic, self.partitions)
            self.settings.info(f"grew topic '{self.name}' to {_count(self.topic.partition_count, 'partition')}, as its input names them")
        if self._producer is None:
            if self.sync:
                self.topic.config["sync"] = True
            # In the background: the next batch is read and packed while one is written.
            self._producer = Producer(self.topic, self.pinned, background=True)
        return self._producer

    @property
    def sent(self) -> int:
        return 0 if self._producer is None else self._producer.sent

    @property
    def written(self) -> int:
        return 0 if self._producer is None else self._producer.written

    def flush(self) -> None:
        if self._producer is not None:
            self._producer.flush()

    def close(self) -> None:
        """Append every record sent (or raise the error that stopped it), then close the topic."""
        try:
            if self._producer is not None:
                self._producer.close()
        finally:
            if self.topic is not None:
                self.topic.close()


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _noting_written(exc: BaseException, written: int, bad_line: Optional[int]) -> KqError:
    """The error that stopped a produce, saying how much was appended before it (for a rerun)."""
    if bad_line is not None:
        note = f"{_count(written, 'record')} from the lines before it {'was' if written == 1 else 'were'} written" if written else "nothing was written"
    else:
        note = f"{_count(written, 'record')} {'was' if written == 1 else 'were'} written before the error" if written else "nothing was written"
    if isinstance(exc, KqError):
        exc.args = (f"{exc}; {note}",)
        return exc
    where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
    return KqError(f"{getattr(exc, 'strerror', None) or exc}{where}; {note}")




@app.command(context_settings={"help_option_names": ["-h", "--help"]}, cls=_Command)
def produce(
    ctx: typer.Context,
    topic: str = typer.Argument(..., autocompletion=complete_topic, help="Topic to append to; created if missing, with --partitions (or, for --json input, the partitions the input names)."),
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

    s = _settings(ctx)
    delim = _delimiter(delimiter, null)
    headers = _parse_headers(header)
    if json_input and (key is not None or key_delimiter is not None or null or delimiter is not None or null_empty):
        raise typer.BadParameter("--json cannot be combined with -k, -K, -D, -0 or -Z", param_hint="--json")
    if key is not None and key_delimiter is not None:
        raise typer.BadParameter("use either -k/--key or -K/--key-delimiter", param_hint="-K")
    if tombstone and (json_input or key_delimiter is not None):
        raise typer.BadParameter("--tombstone takes keys, one per message, or -k KEY", param_hint="--tombstone")
    key_delim = None if key_delimiter is None else _unescape(key_delimiter)
    if key_delim == b"":
        raise typer.BadParameter("the key delimiter may not be empty", param_hint="-K")
    key_bytes = None if key is None else _arg_bytes(key)

    target = _ProduceTarget(s, topic, partitions, partition, sync)
    if tombstone and key_bytes is not None:
        try:
            target.producer().send_values([None], key=key_bytes)
        finally:
            target.close()
        return
    fd, source = _open_input(file)
    line_no = 0
    bad_line = None  # the --json line that stopped the produce
    failure = None
    bars = _ProgressBars(s)
    total = os.fstat(fd).st_size if file is not None else 0
    try:
        for messages, size in read_messages(fd, delim, name=source):
            if total:
                bars.update(file, os.lseek(fd, 0, os.SEEK_CUR), total, target.sent)
            if tombstone:
                target.producer().send_records([(m, None, headers, None, None) for m in messages])
            elif json_input:
                from .envelope import decode_record

                records, line_error = [], None
                for m in messages:
                    line_no += 1
                    if not m.strip():
                        continue
                    try:
                        k, v, h, p, ts = decode_record(m, line_no)
                        if partition is not None:
                            p = None  # -p puts every record in one partition
                        elif p is not None:
                            target.need_partition(p, line_no)
                    except KqError as exc:
                        line_error, bad_line = exc, line_no
                        break
                    records.append((k, v, headers + h if headers else h, p, ts))
                # The lines before a bad one are written, so that a rerun can skip them.
                if records:
                    target.producer().send_records(records)
                if line_error is not None:
                    raise line_error
            elif key_delim is not None:
                keys, values = split_keys(messages, key_delim)
                if null_empty:
                    values = [v or None for v in values]
                target.producer().send_keyed(keys, values, headers=headers, size=size)
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
    finally:
        try:
            target.close()  # every batch appended (or its error raised) before exit
        except (KqError, OSError) as exc:
            failure = failure or exc
        finally:
            bars.__exit__()
            if file is not None:
                os.close(fd)
    if failure is not None:
        raise _noting_written(failure, target.written, bad_line)


# --------------------------------------------------------------------- consume


@app.command(context_settings={"help_option_names": ["-h", "--help"]}, cls=_Command)
def consume(
    ctx: typer.Context,
    topic: str = typer.Argument(..., autocompletion=complete_topic, help="Topic to read."),
    offset: Optional[str] = typer.Option(None, "-o", "--offset", metavar="SPEC", autocompletion=complete_offset, callback=_option_value, help="beginning (default), end, N, -N (N before the end), @T (timestamp: epoch ms, ISO-8601, or -1h / -30m ago), or a range A:B."),
    partition: List[int] = typer.Option([], "-p", "--partition", autocompletion=complete_partition, help="Read only this partition (repeatable)."),
    count: Optional[int] = typer.Option(None, "-n", "--count", min=0, help="Stop after N messages."),
    follow: bool = typer.Option(False, "-f", "--follow", help="Wait for new messages, like tail -f (until SIGINT/SIGTERM)."),
    timeout: Optional[float] = typer.Option(None, "-t", "--timeout", metavar="S", min=0, help="Wait for new messages (like -f) but exit after S seconds without one: exit 0 if any message was written, 3 if none."),
    exit_at_end: bool = typer.Option(True, "-e", "--exit", hidden=True, help="Exit at the end of the log (the default)."),
    group: Optional[str] = typer.Option(None, "-g", "--group", autocompletion=complete_group, callback=_option_value, help="Consume as a member of GROUP: resume at its committed offsets, share partitions with its other members, commit what was written."),
    reset: str = typer.Option("earliest", "--reset", metavar="earliest|latest", help="Where a group starts on partitions it has never committed."),
    no_commit: bool = typer.Option(False, "--no-commit", help="With -g: read from the group's offsets without joining it or committing."),
    exec_cmd: Optional[str] = typer.Option(None, "--exec", metavar="CMD", help="Run CMD (through the shell) for each batch, the messages on its stdin; with -g, commit a batch only when CMD exits 0."),
    batch: int = typer.Option(1000, "--batch", min=1, metavar="N", help="With --exec: at most N messages per run of CMD."),
    fmt: Optional[str] = typer.Option(None, "-F", "--format", metavar="FMT", help=r"Output format: %t topic, %p partition, %o offset, %k key, %s value, %T timestamp (ms), %h headers, %% and \n, \t. Nothing else is added."),
    json_output: bool = typer.Option(False, "--json", help="One JSON object per line: topic, partition, offset, timestamp, key, value, headers (a list of [name, value] pairs); see docs/FORMAT.md."),
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
    if (fmt is not None or json_output) and (delimiter is not None or null):
        # A format says everything written, and JSON lines end in newlines.
        raise typer.BadParameter("-D and -0 do not apply to -F or --json output", param_hint="-D/-0")
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

        member = GroupConsumer(s.data, t, group, follow=follow, reset=reset)
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
            from .runner import CommandFailed, CommandRunner

            def accepted(p: int, offset: int) -> None:
                if member is not None:
                    member.mark(p, offset)
                    member.commit()

            stop_partition = (member.consumer if member is not None else source).remove
            runner = CommandRunner(exec_cmd, batch, write, t.name, accepted, stop_partition)
            try:
                runner.run(rounds)
            finally:
                delivered = runner.done
            if runner.failures:
                raise CommandFailed(exec_cmd, runner.failures, group if member is not None else None)
        else:
            delivered = _write_rounds(rounds, write, member)
    except KeyboardInterrupt:
        # A follow ends this way (exit 0); a consume that stops before the end
        # of what it was asked for exits 128 + the signal, so that
        # `kq consume t > dump && mv dump final` never ships a partial dump.
        # Either way what was written is committed first (finally, below).
        if not follow:
            raise
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

    unknown = re.search(r"%([^tpoksTh%]|$)", fmt.replace("%%", ""))
    if unknown:
        raise typer.BadParameter(
            f"{unknown.group(0)!r} is not a format token: use %t %p %o %k %s %T %h, or %% for a '%'",
            param_hint="-F/--format",
        )
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


@topic_app.command("create", cls=_Command)
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


@topic_app.command("alter", cls=_Command)
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
    s.info(f"altered topic '{t.name}': " + ", ".join(f"{k}={_setting_text(k, t.config[k], True)}" for k in changes))


@topic_app.command("trim", cls=_Command)
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
    if not (before.startswith("@") or before.strip().isdigit()):
        raise typer.BadParameter(f"{before!r} is not an offset N or a time @T", param_hint="--before")
    spec = parse_spec(before)
    if spec.kind not in (ABSOLUTE, TIMESTAMP):
        raise typer.BadParameter(f"{before!r} is not an offset N or a time @T", param_hint="--before")
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


@topic_app.command("list", cls=_Command)
def topic_list(
    ctx: typer.Context,
    json_output: bool = typer.Option(False, "--json", help="A JSON list of {name, partitions}."),
) -> None:
    """List topics: one name per line (a table on a terminal).

    A topic kq cannot read (damaged metadata, another user's directory, a
    FIFO where a file belongs) is left out of the list and named on stderr,
    one `kq: error:` line each, and the exit code is 1.

    [bold]Examples[/bold]

      kq topic list

      kq topic list --json | jq -r '.[] | select(.partitions > 1) | .name'
    """
    s = _settings(ctx)
    table = _is_terminal() and not json_output
    listed, unreadable = [], []
    for n in s.data.topic_names():
        try:
            t = s.data.topic(n)
            try:
                parts = _partition_rows(t) if table else []
            finally:
                t.close()
        except (KqError, OSError) as exc:
            unreadable.append(f"cannot read topic '{n}': {_error_text(exc)}")
            continue
        listed.append({"name": n, "partitions": t.partition_count,
                       "messages": sum(r["end_offset"] - r["start_offset"] for r in parts),
                       "size": sum(r["size"] for r in parts)})
    if json_output:
        _print_json([{"name": r["name"], "partitions": r["partitions"]} for r in listed])
    elif table:
        _rich_table(f"topics in {s.data.path}", ["name", "partitions", "messages", "size"],
                    [[r["name"], r["partitions"], r["messages"], _human(r["size"])] for r in listed])
    else:
        for r in listed:
            print(r["name"])
    if unreadable:
        sys.stdout.flush()
        for message in unreadable:
            _error(message, 1)
        raise typer.Exit(1)


def _setting_text(name: str, value, human: bool) -> str:
    """A topic setting as `topic create` takes it: none, true/false, and (for people) 64M or 7d."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if human and isinstance(value, int) and value > 0:
        units = _DURATION_UNITS if name.endswith("_ms") else _SIZE_UNITS if name.endswith("_bytes") else ()
        for suffix, unit in units:
            if value % unit == 0:
                return f"{value // unit}{suffix}"
    return str(value)


# The largest unit that divides a setting exactly names it (7d, not 1w; 1536M, not 1.5G).
_DURATION_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1))
_SIZE_UNITS = (("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("K", 1024))


def _human(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


@topic_app.command("describe", cls=_Command)
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
        _rich_table("config", ["setting", "value"], [[k, _setting_text(k, v, True)] for k, v in t.config.items()])
    else:
        print(f"topic\t{t.name}")
        for k, v in t.config.items():
            print(f"config\t{k}\t{_setting_text(k, v, False)}")
        print("partition\tstart_offset\tend_offset\tsize")
        for r in rows:
            print(f"{r['partition']}\t{r['start_offset']}\t{r['end_offset']}\t{r['size']}")


@topic_app.command("delete", cls=_Command)
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
        committed = store.committed(g, t)
        for n, lo, hi in ends:
            c = committed.get(n)
            rows.append({
                "topic": t.name, "partition": n, "start_offset": lo, "end_offset": hi,
                "group": g, "committed": c, "lag": hi - (lo if c is None else max(c, lo)),
            })
    return rows


@offsets_app.command("show", cls=_Command)
def offsets_show(
    ctx: typer.Context,
    topic: str = typer.Argument(..., autocompletion=complete_topic, help="Topic name."),
    group: Optional[str] = typer.Option(None, "-g", "--group", autocompletion=complete_group, callback=_option_value, help="Only this group \\[default: every group of the topic]."),
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


@offsets_app.command("reset", cls=_Command)
def offsets_reset(
    ctx: typer.Context,
    topic: str = typer.Argument(..., autocompletion=complete_topic, help="Topic name."),
    group: str = typer.Option(..., "-g", "--group", autocompletion=complete_group, callback=_option_value, help="The group whose offsets move."),
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
    from .errors import GroupBusy
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
    if dry_run:
        _emit_rows(rows, ["partition", "start_offset", "end_offset", "before", "after"], json_output,
                   f"would reset {group} on {t.name}")
        try:
            store.check_no_live_members(group, t.name)
        except GroupBusy as exc:
            raise KqError(f"{exc}: a real run would refuse") from None
        return
    store.apply_reset(group, t, rows)
    _emit_rows(rows, ["partition", "start_offset", "end_offset", "before", "after"], json_output,
               f"reset {group} on {t.name}")


@group_app.command("list", cls=_Command)
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


@group_app.command("describe", cls=_Command)
def group_describe(
    ctx: typer.Context,
    group: str = typer.Argument(..., autocompletion=complete_group, help="Group name."),
    json_output: bool = typer.Option(False, "--json", help="A JSON object: group, partitions (committed, lag, owner), members (what each owns, when it last made progress, whether it is stalled)."),
    stalled_after: float = typer.Option(30.0, "--stalled-after", metavar="SECONDS", min=0, help="Flag a member that has made no progress for this long while its partitions have lag."),
) -> None:
    """Show a group's committed offsets, lag and live members, per topic and partition.

    A member that holds partitions but has stopped making progress (stopped
    with SIGSTOP, stuck in an --exec command) is flagged "stalled" with its
    PID: if it is stuck, kill it and the other members take over its
    partitions within a second.

    [bold]Examples[/bold]

      kq group describe billing

      kq group describe billing --json | jq '.members[] | {member, partitions}'
    """
    import time

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
        lags = {r["partition"]: r["lag"] for r in partitions if r["topic"] == topic}
        for m in store.members(group, topic):
            owned = sorted(p for p, o in owners.items() if o == m["member"])
            idle = max(time.time() - m["progress_at"] / 1000, 0.0)
            lag = sum(lags.get(p, 0) for p in owned)
            members.append({**m, "partitions": owned, "idle_seconds": round(idle, 1),
                            "stalled": bool(owned) and lag > 0 and idle >= stalled_after})
    for m in members:
        if m["stalled"]:
            _warn(f"member {m['member']} (pid {m['pid']} on {m['host']}) has made no progress for "
                  f"{m['idle_seconds']:.0f} s while its partitions {','.join(map(str, m['partitions']))} of "
                  f"'{m['topic']}' have lag; if it is stuck, kill {m['pid']} and the other members take them over")
    if json_output:
        _print_json({"group": group, "partitions": partitions, "members": members})
        return
    _emit_rows(partitions, ["topic", "partition", "committed", "end_offset", "lag", "owner"], False, f"group {group}")
    status = lambda m: "stalled" if m["stalled"] else "ok"  # noqa: E731
    if _is_terminal():
        _rich_table("live members", ["member", "host", "pid", "topic", "partitions", "idle", "status"],
                    [[m["member"], m["host"], m["pid"], m["topic"], ",".join(map(str, m["partitions"])),
                      f"{m['idle_seconds']:.0f}s", status(m)] for m in members])
    else:
        for m in members:
            print(f"member\t{m['member']}\t{m['host']}\t{m['pid']}\t{m['topic']}\t{','.join(map(str, m['partitions']))}"
                  f"\t{m['idle_seconds']}\t{status(m)}")


@group_app.command("delete", cls=_Command)
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


@app.command(context_settings={"help_option_names": ["-h", "--help"]}, cls=_Command)
def replicate(
    ctx: typer.Context,
    topics: Optional[List[str]] = typer.Argument(None, autocompletion=complete_topic, help="Topics to copy (or --all)."),
    to: str = typer.Option(..., "--to", metavar="DIR", help="The replica's data directory (another disk, another mount)."),
    all_topics: bool = typer.Option(False, "--all", help="Copy every topic."),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep the replica caught up until SIGINT/SIGTERM."),
    truncate: bool = typer.Option(False, "--truncate", help="If the replica has records the source lacks, cut it back to the common prefix and continue."),
    verify: bool = typer.Option(False, "--verify", help="Compare source and replica instead of copying; exit 0 only when the replica holds exactly the source's batches (it may lag). Group offsets that differ are listed as warnings and do not fail the check."),
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
    if all_topics and topics:
        raise typer.BadParameter("name topics or give --all, not both", param_hint="TOPIC")
    if not all_topics and not topics:
        raise typer.BadParameter("name the topics to copy, or give --all for every topic", param_hint="TOPIC")
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
        for r in reports:
            for g in r.groups:
                if g["status"] != "same":
                    replica_side = "nothing" if g["replica"] is None else g["replica"]
                    source_side = "nothing" if g["source"] is None else g["source"]
                    _warn(f"{r.topic}/{r.partition}: group '{g['group']}' committed {replica_side} in the replica, "
                          f"{source_side} in the source ({g['status']})")
        bad = [r for r in reports if not r.ok]
        if bad:
            what = "; ".join(f"{r.topic}/{r.partition}: {r.status}" + (f" ({r.detail})" if r.detail else "") for r in bad[:3])
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise KqError(f"replica {to} does not verify: {what}{more}")
        return

    def announce(r) -> None:
        if r.truncated_at is not None:
            s.info(f"{r.topic}/{r.partition}: replica truncated to offset {r.truncated_at}")
        if r.restarted_at is not None:
            _warn(f"{r.topic}/{r.partition}: the source's retention deleted what the replica lacked; "
                  f"the replica starts over at offset {r.restarted_at}")
        if r.records:
            s.info(f"{r.topic}/{r.partition}: copied {_count(r.records, 'record')} ({_human(r.bytes)}), offsets {r.from_offset}..{r.to_offset - 1}")

    failed: list[str] = []

    def report_error(topic: str, exc) -> None:
        if exc is None:
            s.info(f"{topic}: copying again")
            return
        failed.append(topic)
        print(f"kq: error: {topic}: {exc}", file=sys.stderr, flush=True)

    with replicator:
        if follow:
            try:
                replicator.follow(names, on_copy=announce, on_error=report_error)
            except KeyboardInterrupt:
                return
        with _ProgressBars(s, json_output) as bars:
            replicator.progress = lambda r, total: bars.update(f"{r.topic}/{r.partition}", r.bytes, total, r.records)
            reports = replicator.replicate(names, on_error=report_error)
    if json_output:
        _print_json({"replica": replicator.replica.path, "partitions": [report_dict(r) for r in reports],
                     "failed": failed})
    else:
        for r in reports:
            announce(r)
    if failed:
        raise typer.Exit(1)


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


@app.command(context_settings={"help_option_names": ["-h", "--help"]}, cls=_Command)
def maintain(
    ctx: typer.Context,
    topics: Optional[List[str]] = typer.Argument(None, autocompletion=complete_topic, help="Topics \\[default: all]."),
    json_output: bool = typer.Option(False, "--json", help="A JSON list with a summary per partition."),
) -> None:
    """Apply retention and compaction now: safe to run from cron, idempotent.

    Deletes closed segments past the topic's time or size limit and compacts
    topics created with --cleanup compact, while producers and consumers go on.
    Like Kafka, it never touches a partition's last (active) segment: records
    there are compacted once it rolls (--segment-bytes, default 64M).

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

        uncompacted = {}  # compacted topic -> records its active segments hold
        for name in names:
            t = s.data.topic(name)
            rows += [asdict(r) for r in maintain_topic(t, progress=progress)]
            if t.config["cleanup"] == "compact":
                uncompacted[name] = (sum(_active_segment_records(p) for p in t.partitions()), t.config["segment_bytes"])
            t.close()
    if json_output:
        _print_json(rows)
    else:
        totals = {k: sum(r[k] for r in rows) for k in ("segments_deleted", "bytes_reclaimed", "records_removed", "tombstones_removed")}
        s.info(
            f"{len(names)} topic(s): {totals['segments_deleted']:,} segment(s) deleted, {_human(totals['bytes_reclaimed'])} reclaimed, "
            f"{totals['records_removed']:,} superseded record(s) and {totals['tombstones_removed']:,} tombstone(s) compacted away"
        )
    for name, (records, segment_bytes) in uncompacted.items():
        if records:
            s.info(
                f"{name}: {_count(records, 'record')} in active segments not compacted: like Kafka, compaction "
                f"leaves each partition's last segment alone until it rolls at {_setting_text('segment_bytes', segment_bytes, True)} "
                f"(a smaller --segment-bytes rolls sooner: kq topic alter {name} --segment-bytes 1M)"
            )
    if json_output:
        return
    if _is_terminal() and rows:
        _emit_rows(rows, ["topic", "partition", "start_offset", "segments_deleted", "bytes_reclaimed", "records_removed", "tombstones_removed"], False, "maintenance")


def _active_segment_records(part) -> int:
    """About how many records the partition's last segment, which compaction skips, holds."""
    segments = part.segments()
    return max(0, part.end_offset() - max(segments[-1], part.start_offset())) if segments else 0


# --------------------------------------------------------------------- verify


@app.command("verify", context_settings={"help_option_names": ["-h", "--help"]}, cls=_Command)
def verify_command(
    ctx: typer.Context,
    topics: Optional[List[str]] = typer.Argument(None, autocompletion=complete_topic, help="Topics \\[default: all]."),
    repair: bool = typer.Option(False, "--repair", help="Fix what can be fixed: rebuild indexes, truncate torn tails, move damaged bytes and unreadable offsets files to quarantine files; print each action."),
    json_output: bool = typer.Option(False, "--json", help="A JSON list of problems: topic, partition, file, position, problem, severity (with --repair also action, repaired)."),
) -> None:
    """Check every segment, index and offsets file; exit 0 only when no error is left.

    One line per problem on stdout: FILE: position N: SEVERITY: WHAT. Warnings
    (a group behind the start offset) and info lines never fail the check.
    Nothing is skipped: a topic, partition or file verify cannot read (another
    user's directory, a FIFO where a file belongs) is an error line naming it.
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


@app.command(context_settings={"help_option_names": ["-h", "--help"]}, cls=_Command)
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


# --------------------------------------------------------------------- entry point


def _error(message: str, code: int) -> int:
    print(f"kq: error: {message}", file=sys.stderr)
    return code


def _error_text(exc: BaseException) -> str:
    """An error as one line: a KqError's message, an OSError's reason and file."""
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        if exc.filename2:  # a rename names both ends: either may be the cause
            where += f" -> {exc.filename2}"
        return f"{exc.strerror or exc}{where}"
    return str(exc)


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


_signal_received: list[int | None] = [None]  # the signal that interrupted this run, if one did


def _interrupted(signum, frame) -> None:
    _signal_received[0] = signum
    raise KeyboardInterrupt


def _print_warnings() -> None:
    """Show the library's KqWarnings as ``kq: warning: …`` lines, every time they happen."""
    import warnings

    from .errors import KqWarning

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, KqWarning):
            print(f"kq: warning: {message}", file=sys.stderr, flush=True)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.simplefilter("always", KqWarning)
    warnings.showwarning = show


def main(argv: list[str] | None = None) -> None:
    import signal

    from typer._click import exceptions as click_exc
    from typer.main import get_command

    # SIGTERM ends kq the way SIGINT does: a follow exits 0, anything else
    # stops cleanly and exits 128 + the signal's number.
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, _interrupted)
    _print_warnings()
    command = _command_tree(sys.argv[1:] if argv is None else argv, get_command)
    if "_KQ_COMPLETE" in os.environ:
        _use_kq_completion()
    try:
        code = command.main(args=argv, prog_name="kq", standalone_mode=False)
        code = code if isinstance(code, int) else 0
        if code == 130 and _signal_received[0] is not None:  # typer's answer to KeyboardInterrupt
            code = 128 + _signal_received[0]
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
        code = 128 + (_signal_received[0] or 2)
    except OSError as exc:
        code = _error(_error_text(exc), 1)
    except (typer.Abort, EOFError):
        code = 128 + (_signal_received[0] or 2)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()
    sys.exit(code)
