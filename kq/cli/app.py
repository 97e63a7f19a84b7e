"""The root ``kq`` command: global options, and subcommands loaded when named.

Each subcommand lives in its own module (kq/cli/produce.py, topic.py, ...) and
is imported only when the command line names it (click's LazyGroup pattern),
so a run pays for one command's options, not fifteen. ``kq --help`` and tab
completion of command names import them all.
"""

import importlib
import os
from typing import Optional

import typer
from typer._click import core as click_core
from typer.core import TyperGroup

from .. import __version__
from .common import Settings

# Command name -> module of kq.cli, in the order `kq --help` lists them.
COMMANDS = {
    "produce": "produce",
    "consume": "consume",
    "ack": "ack",
    "nack": "nack",
    "topic": "topic",
    "offsets": "offsets",
    "group": "group",
    "top": "top",
    "lag": "lag",
    "metrics": "metrics",
    "replicate": "replicate",
    "maintain": "maintain",
    "verify": "verify",
    "bench": "bench",
    "serve": "serve",
}


class LazyGroup(TyperGroup):
    """A group whose subcommands are built from their modules on first use."""

    def list_commands(self, ctx) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx, name: str):
        module = COMMANDS.get(name)
        if module is None:
            return None
        module, _, attribute = module.partition(":")
        command = typer.main.get_command(
            getattr(importlib.import_module(f"{__package__}.{module}"), attribute or "app")
        )
        command.name = name
        return command

    def resolve_command(self, ctx, args):
        from difflib import get_close_matches

        from typer._click.exceptions import UsageError

        try:
            return super().resolve_command(ctx, args)
        except UsageError as exc:
            matches = get_close_matches(args[0], list(COMMANDS)) if args else []
            if matches and "Did you mean" not in exc.message:
                exc.message = f"{exc.message.rstrip('.')}. Did you mean {', '.join(map(repr, matches))}?"
            raise


def _no_color(value: bool) -> None:
    # Eager, so that `kq --no-color --help` is colourless too: rich honours
    # NO_COLOR wherever a console is made.
    if value:
        os.environ["NO_COLOR"] = "1"


def _version(value: bool) -> None:
    if value:
        print(f"kq {__version__}")
        raise typer.Exit()


app = typer.Typer(
    name="kq",
    cls=LazyGroup,
    add_completion=True,
    no_args_is_help=False,
    # Set once here: every subcommand's context inherits it.
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
    help="""Kafka's model (topics, partitions, an append-only log, offsets) over a local directory.

[bold]Examples[/bold]

  seq 10 | kq produce demo            [dim]# one message per line[/dim]

  kq consume demo -o -3               [dim]# the last 3 messages of each partition[/dim]

  tail -F app.log | kq produce logs   [dim]# ship a log as it grows[/dim]

  kq consume logs -f --json | jq .value

  kq consume jobs -g mailer --exec ./send.sh   [dim]# cron: commit only on success[/dim]

  kq consume jobs --share mailer --exec ./send.sh --parallel 4   [dim]# a job queue: retries, dead letters[/dim]
""",
)


@app.callback(invoke_without_command=True)
def root(
    ctx: typer.Context,
    data_dir: Optional[str] = typer.Option(
        None,
        "--data-dir",
        metavar="DIR",
        envvar="KQ_DATA_DIR",
        help="Data directory \\[default: $KQ_DATA_DIR, else $XDG_DATA_HOME/kq, else ~/.local/share/kq].",
        show_default=False,
    ),
    brokers: Optional[str] = typer.Option(
        None,
        "-b",
        "--brokers",
        metavar="HOST:PORT[,...]",
        envvar="KQ_BROKERS",
        help="Work on this Kafka cluster instead of the data directory. Needs pip install 'kq-log\\[kafka]'.",
        show_default=False,
    ),
    kafka_settings: list[str] = typer.Option(
        [],
        "-X",
        metavar="KEY=VALUE",
        help="A librdkafka client setting for the cluster (repeatable), e.g. -X security.protocol=SASL_SSL.",
        show_default=False,
    ),
    kafka_config: Optional[str] = typer.Option(
        None,
        "--kafka-config",
        metavar="FILE",
        envvar="KQ_KAFKA_CONFIG",
        help="Read librdkafka client settings from FILE, one KEY=VALUE a line; -X wins.",
        show_default=False,
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No informational messages on stderr."),
    no_color: bool = typer.Option(
        False,
        "--no-color",
        callback=_no_color,
        is_eager=True,
        help="No colour in tables, help and messages (also: NO_COLOR=1).",
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    settings = ctx.obj = Settings(data_dir, quiet, brokers, kafka_settings, kafka_config)
    settings.kafka_config_given = (
        settings.kafka_config is not None
        and ctx.get_parameter_source("kafka_config") != click_core.ParameterSource.ENVIRONMENT
    )
    ctx.call_on_close(settings.close)
    if ctx.invoked_subcommand is None:
        print(ctx.get_help())
        raise typer.Exit()
