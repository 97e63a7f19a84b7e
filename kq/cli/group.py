"""``kq group list|describe|delete``."""

import time

import typer

from ..errors import GroupNotFound
from .common import KqCommand, complete_group_or_share, duration_seconds, json_option, settings
from .output import emit_rows, is_terminal, print_json, rich_table, warn

app = typer.Typer(
    add_completion=False,
    name="group",
    help="""List, describe and delete consumer groups and share groups.

[bold]Examples[/bold]

  kq group list

  kq group describe billing
""",
    no_args_is_help=True,
)

GroupArgument = typer.Argument(
    ..., autocompletion=complete_group_or_share, metavar="GROUP", help="Group name (a consumer group or a share group)."
)


@app.command("list", cls=KqCommand)
def group_list(
    ctx: typer.Context,
    json_output: bool = json_option("A JSON list of {group, type (consumer or share), topics, members}."),
) -> None:
    """List consumer groups and share groups: one name per line (a table on a terminal).

    [bold]Examples[/bold]

      kq group list

      kq group list --json | jq -r '.[] | select(.members == 0) | .group'
    """
    s = settings(ctx)
    names = s.backend.group_names()
    shares = s.backend.share_names()
    if not json_output and not is_terminal():
        for n in sorted(set(names) | set(shares)):
            print(n)
        return
    rows = [
        {"group": g, "type": "consumer", "topics": s.backend.group_topics(g), "members": len(s.backend.members(g))}
        for g in names
    ]
    for g in shares:
        described = s.backend.describe_share(g)
        topics = sorted({p["topic"] for p in described["partitions"]})
        rows.append(
            {"group": g, "type": "share", "topics": topics, "members": sum(w["live"] for w in described["workers"])}
        )
    rows.sort(key=lambda r: (r["group"], r["type"]))
    if json_output:
        print_json(rows)
    else:
        rich_table(
            "groups",
            ["group", "type", "topics", "members"],
            [[r["group"], r["type"], ", ".join(r["topics"]), r["members"]] for r in rows],
        )


@app.command("describe", cls=KqCommand)
def group_describe(
    ctx: typer.Context,
    group: str = GroupArgument,
    json_output: bool = json_option(
        "A JSON object: group, partitions (committed, lag, owner), members (what each owns, when it last made progress, whether it is stalled)."
    ),
    stalled_after: float = typer.Option(
        "30s",
        "--stalled-after",
        metavar="DURATION",
        parser=duration_seconds,
        help="Flag a member that has made no progress for this long while its partitions have lag.",
    ),
    check: bool = typer.Option(
        False,
        "--check",
        help="Print nothing and exit 0 if the group is well; else one line saying why (stalled, stopped) and exit 1."
        " Limits: kq lag --max N --max-age DURATION.",
    ),
) -> None:
    """Show a group's committed offsets, lag and live members, per topic and partition.

    For a share group: per partition, how many records are acquired (leased
    to a worker), available, waiting for a retry, dead-lettered and
    acknowledged, and each worker's leases.

    A member that holds partitions but has stopped making progress (stopped
    with SIGSTOP, stuck in an --exec command) is flagged "stalled" with its
    PID: if it is stuck, kill it and the other members take over its
    partitions within a second.

    [bold]Examples[/bold]

      kq group describe billing

      kq group describe billing --json | jq '.members[] | {member, partitions}'

      kq group describe billing --check || echo "billing is stuck"
    """
    s = settings(ctx)
    backend = s.backend
    if check:
        raise typer.Exit(_check(backend, group))
    if group not in backend.group_names():
        from ..engine.names import check_name

        check_name(group, "group")
        if group in backend.share_names():
            describe_share(backend.describe_share(group), json_output)
            return
        raise GroupNotFound(group)
    partitions = []
    for topic in backend.group_topics(group):
        if not backend.topic_exists(topic):
            continue
        owners = backend.owners(group, topic)
        for r in backend.offset_rows(topic, [group]):
            r["owner"] = owners.get(r["partition"])
            partitions.append(r)
    lags = {(r["topic"], r["partition"]): r["lag"] for r in partitions}
    members = []
    for m in backend.members(group):
        idle = None if m.get("progress_at") is None else round(max(time.time() - m["progress_at"] / 1000, 0.0), 1)
        lag = sum(lags.get((m["topic"], p), 0) for p in m["partitions"])
        members.append(
            {
                **m,
                "idle_seconds": idle,
                "stalled": bool(m["partitions"]) and lag > 0 and idle is not None and idle >= stalled_after,
            }
        )
    for m in members:
        if m["stalled"]:
            warn(
                f"member {m['member']} (pid {m['pid']} on {m['host']}) has made no progress for "
                f"{m['idle_seconds']:.0f} s while its partitions {','.join(map(str, m['partitions']))} of "
                f"'{m['topic']}' have lag; if it is stuck, kill {m['pid']} and the other members take them over"
            )
    if json_output:
        print_json({"group": group, "partitions": partitions, "members": members})
        return
    emit_rows(partitions, ["topic", "partition", "committed", "end_offset", "lag", "owner"], False, f"group {group}")

    def status(m) -> str:
        return "stalled" if m["stalled"] else "ok"

    if is_terminal():
        rich_table(
            "live members",
            ["member", "host", "pid", "topic", "partitions", "idle", "status"],
            [
                [
                    m["member"],
                    m["host"],
                    m["pid"],
                    m["topic"],
                    ",".join(map(str, m["partitions"])),
                    None if m["idle_seconds"] is None else f"{m['idle_seconds']:.0f}s",
                    status(m),
                ]
                for m in members
            ],
        )
    else:
        for m in members:
            print(
                f"member\t{m['member']}\t{m['host']}\t{'-' if m['pid'] is None else m['pid']}\t{m['topic']}"
                f"\t{','.join(map(str, m['partitions']))}"
                f"\t{'-' if m['idle_seconds'] is None else m['idle_seconds']}\t{status(m)}"
            )


@app.command("delete", cls=KqCommand)
def group_delete(
    ctx: typer.Context,
    group: str = GroupArgument,
) -> None:
    """Delete a group and its committed offsets, or a share group and its state (it must have no live members).

    [bold]Examples[/bold]

      kq group delete old-billing

      kq group list | grep '^test-' | xargs -n1 kq group delete
    """
    s = settings(ctx)
    if group not in s.backend.group_names() and group in s.backend.share_names():
        s.backend.delete_share(group)
        s.info(f"deleted share group '{group}'")
        return
    s.backend.delete_group(group)
    s.info(f"deleted group '{group}'")


SHARE_COLUMNS = ["topic", "partition", "acquired", "available", "retrying", "dead_lettered", "acknowledged", "lag"]


def describe_share(described: dict, json_output: bool) -> None:
    """A share group's counts per partition, then its workers and their leases."""
    if json_output:
        print_json(described)
        return
    emit_rows(described["partitions"], SHARE_COLUMNS, False, f"share group {described['share_group']}")
    workers = described["workers"]

    def leases(w) -> str:
        return " ".join(
            f"{x['partition']}:{x['first']}" + (f"..{x['last']}" if x["last"] != x["first"] else "")
            for x in w["leases"]
        )

    if is_terminal():
        rich_table(
            "workers",
            ["member", "host", "pid", "live", "leases"],
            [[w["member"], w["host"], w["pid"], "yes" if w["live"] else "no", leases(w)] for w in workers],
        )
    else:
        for w in workers:
            print(
                f"worker\t{w['member']}\t{w['host'] or '-'}\t{w['pid'] or '-'}\t{'live' if w['live'] else 'gone'}\t{leases(w) or '-'}"
            )


def _check(backend, group: str) -> int:
    """``--check``: the group's line from kq.ops.observe.check, if it has one."""
    from ..engine.names import check_name
    from ..ops import observe
    from .lag import report

    check_name(group, "group")
    if group not in backend.group_names():
        raise GroupNotFound(group)
    snap = observe.snapshot(backend)
    found = snap.groups.get(group)
    if found is None:  # no offsets or members on a topic that exists: nothing to fall behind on
        return 0
    return report(observe.check(observe.Snapshot(snap.taken_at, snap.topics, {group: found})))
