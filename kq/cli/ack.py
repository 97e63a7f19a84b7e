"""``kq ack``: acknowledge records a share group's worker printed (``consume --share``); ``settle`` serves ``kq nack`` too."""

import sys
from typing import Optional

import typer

from ..errors import LeaseNotHeld, UsageError
from .common import KqCommand, json_option, leases_argument, settings, share_option, topic_argument
from .output import print_json

app = typer.Typer(add_completion=False)  # only the top-level kq offers completion install

LEASES_HELP = (
    "Lease ids as `kq consume --share` printed them (PARTITION:OFFSET:TOKEN). Without any (or with -), "
    "they are read from stdin, one a line; what follows a tab is ignored, so that lines of "
    "`consume --share` can be piped in as they are. An empty stdin settles nothing."
)


def lease_ids(leases: Optional[list[str]]) -> list[str]:
    """The lease ids given, or read from stdin (one a line, up to a tab) when there are none or one is '-'."""
    given = list(leases or [])
    if not given or "-" in given:
        if sys.stdin is None or sys.stdin.isatty():
            raise typer.BadParameter("give lease ids, or pipe them in one a line", param_hint="LEASE")
        read = (line.partition("\t")[0].strip() for line in sys.stdin)
        given = [g for g in given if g != "-"] + [lease for lease in read if lease]
    return given


def settle(ctx, topic: str, share: str, leases, how: str, json_output: bool, failure=None) -> None:
    from ..engine.names import check_name
    from ..share.deliveries import parse_lease

    s = settings(ctx)
    check_name(share, "share group")
    ids = lease_ids(leases)
    try:
        for lease in ids:
            parse_lease(lease)
    except UsageError as exc:
        raise typer.BadParameter(str(exc), param_hint="LEASE") from None
    if ids:
        outcome = s.backend.share_settle(topic, share, ids, how, failure)
    else:  # `jq -r .lease batch.json | kq ack …` of an empty batch: nothing to settle
        from ..share.deliveries import Outcome

        outcome = Outcome()
    if json_output:
        print_json(
            {
                "acknowledged": outcome.acked,
                "released": outcome.released,
                "dead_lettered": outcome.dead,
                "not_held": outcome.not_held,
            }
        )
    else:
        done = {
            "ack": f"acknowledged {outcome.acked} record(s)",
            "nack": f"released {outcome.released} record(s) for another attempt",
            "dead": "",
        }[how]
        if outcome.dead or how == "dead":
            done = (done + ", " if done else "") + f"dead-lettered {outcome.dead} record(s)"
        s.info(done)
    if outcome.not_held:
        raise LeaseNotHeld(share, outcome.not_held)


@app.command("ack", cls=KqCommand)
def ack(
    ctx: typer.Context,
    topic: str = topic_argument("The topic the records are in."),
    share: str = share_option("The share group that leased them.", required=True),
    leases: Optional[list[str]] = leases_argument(LEASES_HELP),
    json_output: bool = json_option(
        "A JSON object: acknowledged, released, dead_lettered (counts), not_held (the lease ids that were not held)."
    ),
) -> None:
    """Acknowledge leased records of a share group: done, never delivered again.

    A lease that is not held (settled already, or expired and taken by
    another worker) is named on stderr and the exit status is 1; the others
    are acknowledged.

    [bold]Examples[/bold]

      kq consume jobs --share s -n 1 --json | jq -r .lease | kq ack jobs --share s

      kq ack jobs --share s 0:41:3fa9c2d1e0b4
    """
    settle(ctx, topic, share, leases, "ack", json_output)
