"""What every command shares: the run's settings, option definitions, completion callbacks.

Imported by every command module, so it imports nothing heavy: typer and the
standard library only (completion reads directory entries through kq.engine.location,
or asks the Kafka cluster that -b names, within COMPLETION_TIMEOUT_MS).
"""

import os
import sys
from typing import Annotated, Optional

import typer
from typer.core import TyperCommand


class OutputClosed(Exception):
    """The reader of kq's output went away (``kq … | head``): not an error, kq stops quietly."""


class KqCommand(TyperCommand):
    """A command whose usage line names arguments as click does (``TOPIC``, ``[TOPICS]...``).

    typer 0.28 writes a required argument as ``{topic}``.
    """

    def invoke(self, ctx):
        # click answers a broken pipe with exit 1 and no message; kq exits 0, as `consume | head` does.
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise OutputClosed from None

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name != "argument":
                pieces += param.get_usage_pieces(ctx)
                continue
            if param.metavar:  # written out whole already, brackets and dots included
                pieces.append(param.metavar)
                continue
            name = (param.name or "").upper()
            pieces.append((name if param.required else f"[{name}]") + ("..." if param.nargs != 1 else ""))
        return pieces


class Settings:
    """The global options of this run, and the backend they choose (opened on first use)."""

    def __init__(
        self,
        data_dir: Optional[str],
        quiet: bool,
        brokers: Optional[str] = None,
        kafka_settings: Optional[list[str]] = None,
        kafka_config: Optional[str] = None,
    ):
        self.data_dir_path = data_dir
        self.quiet = quiet
        self.brokers = brokers or None
        self.kafka_settings = list(kafka_settings or [])
        self.kafka_config = kafka_config or None
        # A file from KQ_KAFKA_CONFIG is a default for whenever a cluster is named; --kafka-config
        # and -X on the command line are meant for one, and without one they would be ignored.
        self.kafka_config_given = self.kafka_config is not None
        self.cluster_named = False  # set by a command that names a cluster of its own (replicate's kafka://)
        self._backend = None

    def client_settings(self) -> dict:
        """The librdkafka settings of this run (--kafka-config FILE, then each -X)."""
        from ..backends.kafka_settings import client_settings

        return client_settings(self.kafka_settings, self.kafka_config, label="-X")

    @property
    def backend(self):
        if self._backend is None:
            from ..backends import open_backend

            if self.brokers:
                self._backend = open_backend(None, self.brokers, self.client_settings())
            else:
                self.check_cluster_named()
                self._backend = open_backend(self.data_dir_path)
        return self._backend

    def check_cluster_named(self) -> None:
        """Client settings with no cluster to use them are a mistake (a -b forgotten), not something to ignore."""
        if self.brokers or self.cluster_named:
            return
        given = [
            name for name, value in (("-X", self.kafka_settings), ("--kafka-config", self.kafka_config_given)) if value
        ]
        if given:
            from ..errors import UsageError

            raise UsageError(
                f"{' and '.join(given)} set{'s' if len(given) == 1 else ''} Kafka client settings, but no cluster "
                "is named: add -b HOST:PORT (or set KQ_BROKERS), or leave them out to use the data directory"
            )

    def data_dir(self, command: str):
        """The data directory, for commands only a data directory has (else a usage error)."""
        return self.backend.data_dir(command)

    def info(self, message: str) -> None:
        if not self.quiet:
            print(f"kq: {message}", file=sys.stderr)

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()


def settings(ctx: typer.Context) -> Settings:
    return ctx.find_root().obj


def bad_parameter(message: str, hint: str) -> typer.BadParameter:
    return typer.BadParameter(message, param_hint=hint)


def host_port(text: str, option: str) -> tuple[str, int]:
    """Split HOST:PORT (or [IPv6]:PORT); a usage error names the option."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise bad_parameter(f"{text!r} is not HOST:PORT (for example 127.0.0.1:9092)", option)
    return host, int(port)


def duration_seconds(text) -> float:
    """A duration option's seconds, from what every duration takes: 1.5s, 500ms, 2m, 1h, or bare seconds.

    A typer ``parser``: its error becomes click's usage error naming the option.
    """
    from ..errors import UsageError
    from ..units import parse_duration

    if isinstance(text, (int, float)):  # a default
        return float(text)
    try:
        return parse_duration(text) / 1000
    except UsageError as exc:
        raise typer.BadParameter(str(exc)) from None


# --------------------------------------------------------------------- completion


def _data_path(ctx: typer.Context) -> str:
    from ..engine.location import default_path

    return os.path.abspath(ctx.find_root().params.get("data_dir") or default_path())


def _completer(candidates):
    """A completion callback that filters by prefix and never fails into the shell.

    Completion runs on every Tab press: it only reads directory entries (see
    kq.engine.location), or asks a cluster with a short timeout, and must never
    print an error or write to the data directory.
    """

    def complete(ctx: typer.Context, incomplete: str) -> list[str]:
        try:
            return [c for c in candidates(ctx) if c.startswith(incomplete)]
        except Exception:
            return []

    return complete


# A Tab press waits at most this long for a Kafka cluster (a dead one offers nothing).
COMPLETION_TIMEOUT_MS = 1000


def _cluster(ctx: typer.Context):
    """The Kafka cluster the command line names (-b or KQ_BROKERS), or None for a data directory."""
    params = ctx.find_root().params
    if not params.get("brokers"):
        return None
    from ..backends.kafka import KafkaBackend
    from ..backends.kafka_settings import client_settings

    settings = client_settings(params.get("kafka_settings"), params.get("kafka_config"), label="-X")
    settings["socket.timeout.ms"] = str(COMPLETION_TIMEOUT_MS)
    return KafkaBackend(params["brokers"], settings)


def _topic_candidates(ctx):
    from ..engine.location import topic_names

    cluster = _cluster(ctx)
    return cluster.topic_names() if cluster is not None else topic_names(_data_path(ctx))


def _group_candidates(ctx):
    from ..engine.location import group_names

    cluster = _cluster(ctx)
    return cluster.group_names() if cluster is not None else group_names(_data_path(ctx))


def _partition_candidates(ctx):
    from ..engine.location import partition_count

    # While an option's value is being completed, click leaves the positional
    # arguments unparsed in ctx.args.
    topic = ctx.params.get("topic") or ctx.params.get("name") or (ctx.args[0] if ctx.args else "")
    cluster = _cluster(ctx)
    count = cluster.partition_count(topic) if cluster is not None else partition_count(_data_path(ctx), topic)
    return [str(p) for p in range(count)]


def _share_candidates(ctx):
    from ..engine.location import share_names

    return share_names(_data_path(ctx))


def _group_or_share_candidates(ctx):
    return sorted(set(_group_candidates(ctx)) | set(_share_candidates(ctx)))


complete_topic = _completer(_topic_candidates)
complete_group = _completer(_group_candidates)
complete_share = _completer(_share_candidates)
complete_group_or_share = _completer(_group_or_share_candidates)
complete_partition = _completer(_partition_candidates)
complete_offset = _completer(lambda ctx: ["beginning", "end"])
complete_reset_spec = _completer(lambda ctx: ["earliest", "latest"])


def option_value(value):
    """``-o=X`` means X: a short option's value cannot start with '=' here (no offset, group or topic does)."""
    return value[1:] if isinstance(value, str) and value.startswith("=") else value


# --------------------------------------------------------------------- shared options
# One definition each; the help that differs per command is the argument.


def json_option(what: str):
    """``--json``: ``what`` says what the JSON holds."""
    return typer.Option(False, "--json", help=what)


def follow_option(help: str):
    """``-f/--follow``: keep going until SIGINT/SIGTERM; ``help`` says what goes on."""
    return typer.Option(False, "-f", "--follow", help=help)


def sync_option(help: str):
    """``--sync``: each batch reaches the disk (fsync) before it counts as written."""
    return typer.Option(False, "--sync", help=help)


def delimiter_option(help: str):
    """``-D/--delimiter STR``: what separates messages in a stream of them (kq.framing)."""
    return typer.Option(None, "-D", "--delimiter", metavar="STR", help=help)


def null_option(help: str):
    """``-0/--null``: messages separated by NUL bytes (``find -print0``)."""
    return typer.Option(False, "-0", "--null", help=help)


def topic_argument(help: str = "Topic name.", complete: bool = True):
    return typer.Argument(
        ..., help=help, autocompletion=complete_topic if complete else None, metavar="TOPIC", show_default=False
    )


TopicsArgument = Annotated[
    Optional[list[str]],
    typer.Argument(
        autocompletion=complete_topic, metavar="[TOPICS]...", help="Topics \\[default: all].", show_default=False
    ),
]


def partitions_option(help: str = "Only this partition (repeatable) \\[default: all]."):
    """``-p/--partition`` taken several times: the partitions a command works on."""
    return typer.Option([], "-p", "--partition", autocompletion=complete_partition, help=help)


def group_option(help: str, required: bool = False):
    return typer.Option(
        ... if required else None,
        "-g",
        "--group",
        autocompletion=complete_group,
        callback=option_value,
        help=help,
        show_default=False,
    )


def share_option(help: str, required: bool = False):
    return typer.Option(
        ... if required else None,
        "--share",
        metavar="NAME",
        autocompletion=complete_share,
        help=help,
        show_default=False,
    )


def leases_argument(help: str):
    return typer.Argument(None, metavar="[LEASE]...", help=help, show_default=False)


PartitionsOption = Annotated[
    int, typer.Option("--partitions", min=1, help="Number of partitions (of a topic created here).")
]
