"""``kq lag``: every consumer group's lag and status, and a health check for cron (kq.ops.observe)."""

from typing import Optional

import typer

from .common import KqCommand, TopicsArgument, duration_seconds, json_option, settings
from .output import emit_rows

app = typer.Typer(add_completion=False)


@app.command("lag", cls=KqCommand)
def lag(
    ctx: typer.Context,
    topics: TopicsArgument = None,
    max_lag: Optional[int] = typer.Option(
        None, "--max", metavar="N", min=0, help="Check: a group with more than N records left to read in all fails."
    ),
    max_age: Optional[float] = typer.Option(
        None,
        "--max-age",
        metavar="DURATION",
        parser=duration_seconds,
        help="Check: a group whose committed offset has not moved for this long while it has lag fails"
        " (stalled, or stopped without members) \\[default with --check: 5m].",
    ),
    check: bool = typer.Option(
        False, "--check", help="Print a line per group that is stalled, stopped or over a limit; exit 1 if any is."
    ),
    json_output: bool = json_option(
        "A JSON list of {group, topics, members, lag, last_commit_at (ms or null), status}."
    ),
) -> None:
    """Every consumer group's lag, members, last commit and status.

    The status is Burrow's: OK; "stalled" (its committed offset has not
    moved for --max-age while there is lag); "stopped" (the same, with no
    live member). Commit times are known in a data directory and under
    kq serve, not on a Kafka cluster (-b): there only --max checks.

    With --check, --max or --max-age it is a check for cron or a script:
    one line per group that is stalled, stopped or over --max, and exit 1;
    nothing and exit 0 when all is well (README, "Exit codes").

    [bold]Examples[/bold]

      kq lag

      kq lag --max 10000 --max-age 5m || mail -s "kq lag" ops@example.com
    """
    from ..ops import observe

    s = settings(ctx)
    for topic in topics or ():
        s.backend.partition_count(topic)  # an unknown topic is an error, not an empty answer
    snap = observe.snapshot(s.backend, topics or None)
    stall_after = observe.DEFAULT_STALL_AFTER if max_age is None else max_age
    if check or max_lag is not None or max_age is not None:
        # What could not be read cannot be vouched for: the check fails, naming it.
        raise typer.Exit(max(report(observe.check(snap, max_lag, stall_after)), warn_problems(snap.problems)))
    rows: list[dict] = []
    for group in snap.groups.values():
        status, _ = observe.group_status(group, snap.taken_at, stall_after)
        rows.append(
            {
                "group": group.name,
                "topics": group.topics,
                "members": len(group.members),
                "lag": group.lag,
                "last_commit_at": group.last_commit_at,
                "status": status,
            }
        )
    if json_output:
        emit_rows(rows, [], True, "")
        raise typer.Exit(warn_problems(snap.problems))
    for r in rows:
        r["topics"] = ",".join(r["topics"])
        r["last_commit_at"] = _ago(snap.taken_at, r["last_commit_at"])
    emit_rows(rows, ["group", "topics", "members", "lag", "last_commit_at", "status"], False, "consumer groups")
    raise typer.Exit(warn_problems(snap.problems))


def warn_problems(problems) -> int:
    """Name on stderr each topic or group a snapshot could not read; 1 if there was one (the rest was shown)."""
    from .output import warn

    for problem in problems:
        warn(problem)
    return 1 if problems else 0


def report(lines: list[str]) -> int:
    """Print a check's lines; its exit code (1 if there are any)."""
    for line in lines:
        print(line)
    return 1 if lines else 0


def _ago(now: float, at_ms) -> str:
    if at_ms is None:
        return "-"
    seconds = max(int(now - at_ms / 1000), 0)
    return f"{seconds}s ago" if seconds < 120 else f"{seconds // 60}m ago"
