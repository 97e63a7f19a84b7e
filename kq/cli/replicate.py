"""``kq replicate``: keep another data directory a batch-exact copy of chosen topics (kq.replicate)."""

import sys
from typing import Optional

import typer

from ..errors import KqError
from .common import KqCommand, bad_parameter, complete_topic, settings
from .output import ProgressBars, count, emit_rows, explain, human, print_json, warn

app = typer.Typer()


@app.command("replicate", cls=KqCommand)
def replicate(
    ctx: typer.Context,
    topics: Optional[list[str]] = typer.Argument(
        None, autocompletion=complete_topic, metavar="[TOPICS]...", help="Topics to copy (or --all)."
    ),
    to: str = typer.Option(
        ..., "--to", metavar="DIR", help="The replica's data directory (another disk, another mount)."
    ),
    all_topics: bool = typer.Option(False, "--all", help="Copy every topic."),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep the replica caught up until SIGINT/SIGTERM."),
    truncate: bool = typer.Option(
        False,
        "--truncate",
        help="If the replica has records the source lacks, cut it back to the common prefix and continue.",
    ),
    verify: bool = typer.Option(
        False,
        "--verify",
        help="Compare source and replica instead of copying; exit 0 only when the replica holds exactly the source's batches (it may lag). Group offsets that differ are listed as warnings and do not fail the check.",
    ),
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
    from ..datadir import DataDir
    from ..replicate import Replicator, report_dict

    s = settings(ctx)
    source = s.data_dir("kq replicate")
    if all_topics and topics:
        raise bad_parameter("name topics or give --all, not both", "TOPIC")
    if not all_topics and not topics:
        raise bad_parameter("name the topics to copy, or give --all for every topic", "TOPIC")
    if verify and (follow or truncate):
        raise bad_parameter("--verify only compares; it takes no --follow or --truncate", "--verify")
    names = None if all_topics else list(dict.fromkeys(topics or []))
    replicator = Replicator(source, DataDir(to), truncate=truncate)
    if verify:
        reports = replicator.verify(names)
        rows = [report_dict(r) for r in reports]
        if json_output:
            print_json(rows)
        else:
            for row in rows:
                row["groups"] = ", ".join(f"{g['group']}:{g['status']}" for g in row["groups"]) or None
            emit_rows(
                rows,
                ["topic", "partition", "source_end", "replica_end", "status", "detail", "groups"],
                False,
                f"replica {to}",
            )
        for r in reports:
            for g in r.groups:
                if g["status"] != "same":
                    replica_side = "nothing" if g["replica"] is None else g["replica"]
                    source_side = "nothing" if g["source"] is None else g["source"]
                    warn(
                        f"{r.topic}/{r.partition}: group '{g['group']}' committed {replica_side} in the replica, "
                        f"{source_side} in the source ({g['status']})"
                    )
        bad = [r for r in reports if not r.ok]
        if bad:
            what = "; ".join(
                f"{r.topic}/{r.partition}: {r.status}" + (f" ({r.detail})" if r.detail else "") for r in bad[:3]
            )
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise KqError(f"replica {to} does not verify: {what}{more}")
        return

    def announce(r) -> None:
        if r.truncated_at is not None:
            s.info(f"{r.topic}/{r.partition}: replica truncated to offset {r.truncated_at}")
        if r.restarted_at is not None:
            warn(
                f"{r.topic}/{r.partition}: the source's retention deleted what the replica lacked; "
                f"the replica starts over at offset {r.restarted_at}"
            )
        if r.records:
            s.info(
                f"{r.topic}/{r.partition}: copied {count(r.records, 'record')} ({human(r.bytes)}), offsets {r.from_offset}..{r.to_offset - 1}"
            )

    failed: list[str] = []

    def report_error(topic: str, exc) -> None:
        if exc is None:
            s.info(f"{topic}: copying again")
            return
        failed.append(topic)
        print(f"kq: error: {topic}: {explain(exc)}", file=sys.stderr, flush=True)

    with replicator:
        if follow:
            try:
                replicator.follow(names, on_copy=announce, on_error=report_error)
            except KeyboardInterrupt:
                return
        with ProgressBars(s.quiet, json_output) as bars:
            replicator.progress = lambda r, total: bars.update(f"{r.topic}/{r.partition}", r.bytes, total, r.records)
            copies = replicator.replicate(names, on_error=report_error)
    if json_output:
        print_json(
            {"replica": replicator.replica.path, "partitions": [report_dict(r) for r in copies], "failed": failed}
        )
    else:
        for copy in copies:
            announce(copy)
    if failed:
        raise typer.Exit(1)
