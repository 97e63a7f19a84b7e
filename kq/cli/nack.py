"""``kq nack``: reject records a share group's worker printed (``consume --share``)."""

from typing import Optional

import typer

from .ack import LEASES_HELP, settle
from .common import KqCommand, json_option, leases_argument, share_option, topic_argument

app = typer.Typer(add_completion=False)  # only the top-level kq offers completion install


@app.command("nack", cls=KqCommand)
def nack(
    ctx: typer.Context,
    topic: str = topic_argument("The topic the records are in."),
    share: str = share_option("The share group that leased them.", required=True),
    leases: Optional[list[str]] = leases_argument(LEASES_HELP),
    dead_letter: bool = typer.Option(
        False, "--dead-letter", help="Send them to the group's dead-letter topic now, without further attempts."
    ),
    reason: str = typer.Option(
        "rejected by kq nack",
        "--reason",
        metavar="TEXT",
        help="Why (kept in the kq.dlq.reason header if they are dead-lettered).",
    ),
    json_output: bool = json_option(
        "A JSON object: acknowledged, released, dead_lettered (counts), not_held (the lease ids that were not held)."
    ),
) -> None:
    """Reject leased records of a share group: deliver them again after the group's
    backoff, or dead-letter them (with --dead-letter, or at their last attempt).

    [bold]Examples[/bold]

      kq nack jobs --share s 0:41:3fa9c2d1e0b4

      kq nack jobs --share s --dead-letter --reason 'bad address' 0:41:3fa9c2d1e0b4
    """
    from ..share.deliveries import Failure

    settle(ctx, topic, share, leases, "dead" if dead_letter else "nack", json_output, Failure(reason))
