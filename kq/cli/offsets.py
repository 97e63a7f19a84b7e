"""``kq offsets show|reset``: groups' committed offsets and lag, and moving them."""

from typing import Optional

import typer

from ..errors import GroupBusy, KqError
from .common import (
    KqCommand,
    complete_reset_spec,
    group_option,
    json_option,
    partitions_option,
    settings,
    topic_argument,
)
from .output import emit_rows

app = typer.Typer(
    add_completion=False,
    name="offsets",
    help="""Show and move consumer groups' committed offsets.

[bold]Examples[/bold]

  kq offsets show orders -g billing

  kq offsets reset orders -g billing --to @-1h --dry-run
""",
    no_args_is_help=True,
)


@app.command("show", cls=KqCommand)
def offsets_show(
    ctx: typer.Context,
    topic: str = topic_argument(),
    group: Optional[str] = group_option("Only this group \\[default: every group of the topic]."),
    json_output: bool = json_option(
        "A JSON list of {topic, partition, start_offset, end_offset[, group, committed, lag, metadata]};"
        " metadata: the string a Kafka client committed with the offset (null: no offset committed)."
    ),
) -> None:
    """Per partition: start and end offset, and each group's committed offset and lag.

    A share group's "committed" offset is the one before which every record
    is settled (acknowledged or dead-lettered); its lag counts the records
    after it that are not.

    [bold]Examples[/bold]

      kq offsets show orders

      kq offsets show orders -g billing --json | jq 'map(.lag) | add'
    """
    from ..engine.names import check_name

    s = settings(ctx)
    s.backend.partition_count(topic)  # an unknown topic fails before any group is listed
    if group:
        check_name(group, "group")
        shares = [group] if group in s.backend.shares_of_topic(topic) else []
        groups = [] if shares else [group]
    else:
        groups, shares = s.backend.groups_of_topic(topic), s.backend.shares_of_topic(topic)
    rows = s.backend.offset_rows(topic, groups) if groups or not shares else []
    if shares:
        rows += s.backend.share_offset_rows(topic, shares)
    columns = ["partition", "start_offset", "end_offset"] + (["group", "committed", "lag"] if groups or shares else [])
    emit_rows(rows, columns, json_output, f"offsets of {topic}")


@app.command("reset", cls=KqCommand)
def offsets_reset(
    ctx: typer.Context,
    topic: str = topic_argument(),
    group: str = group_option("The group whose offsets move.", required=True),
    to: str = typer.Option(
        ...,
        "--to",
        metavar="SPEC",
        autocompletion=complete_reset_spec,
        help="earliest, latest, N (absolute), +N / -N (shift from the committed offset), @T (timestamp, as in consume).",
    ),
    partition: list[int] = partitions_option(),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Show the before/after table and change nothing (exit 1 if a real run would refuse)."
    ),
    json_output: bool = json_option("The before/after table as JSON."),
) -> None:
    """Move a group's committed offsets (the group must have no live members on the topic).

    Results outside a partition's range are clamped to it, and said so.

    [bold]Examples[/bold]

      kq offsets reset orders -g billing --to earliest --dry-run

      kq offsets reset orders -g billing --to @2024-05-01T00:00:00Z

      kq offsets reset orders -g billing --to -100 -p 3     [dim]# replay 100 on partition 3[/dim]
    """
    from ..engine.names import check_name
    from ..offsetspec import parse_spec

    s = settings(ctx)
    check_name(group, "group")
    spec = parse_spec(to, relative=True)
    numbers = s.backend.check_partitions(topic, partition) if partition else None
    rows = s.backend.plan_reset(group, topic, spec, numbers)
    for r in rows:
        if r["clamped"]:
            s.info(
                f"partition {r['partition']}: clamped to {r['after']} (offsets {r['start_offset']}..{r['end_offset']})"
            )
    columns = ["partition", "start_offset", "end_offset", "before", "after"]
    if dry_run:
        emit_rows(rows, columns, json_output, f"would reset {group} on {topic}")
        try:
            s.backend.check_no_live_members(group, topic)
        except GroupBusy as exc:
            raise KqError(f"{exc}: a real run would refuse") from None
        return
    s.backend.apply_reset(group, topic, rows)
    emit_rows(rows, columns, json_output, f"reset {group} on {topic}")
