"""``kq maintain``: retention and compaction now (kq.engine.maintain)."""

import sys

import typer

from ..engine.names import check_name
from ..errors import KqError
from .common import KqCommand, TopicsArgument, json_option, settings
from .output import ProgressBars, count, emit_rows, error_text, human, is_terminal, print_json, setting_text

app = typer.Typer(add_completion=False)  # only the top-level kq offers completion install


@app.command("maintain", cls=KqCommand)
def maintain(
    ctx: typer.Context,
    topics: TopicsArgument = None,
    json_output: bool = json_option("A JSON list with a summary per partition."),
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

    from ..engine.maintain import maintain_topic

    s = settings(ctx)
    data = s.data_dir("kq maintain")
    names = [check_name(name) for name in dict.fromkeys(topics)] if topics else data.topic_names()
    from ..backends.local import settle_transactions

    for done in settle_transactions(data):  # abandoned or timed-out transactions: before retention looks
        s.info(done)
    rows = []
    with ProgressBars(s.quiet, json_output) as bars:

        def progress(part, done, total):
            bars.update(f"compacting {part.topic}/{part.number}", done * bars.THRESHOLD, total * bars.THRESHOLD, done)

        uncompacted = {}  # compacted topic -> records its active segments hold
        failed = []  # a topic that cannot be maintained never stops the others
        for name in names:
            try:
                t = data.topic(name)
                try:
                    rows += [asdict(r) for r in maintain_topic(t, progress=progress)]
                    if t.config["cleanup"] == "compact":
                        uncompacted[name] = (
                            sum(active_segment_records(p) for p in t.partitions()),
                            t.config["segment_bytes"],
                        )
                finally:
                    t.close()
            except (KqError, OSError) as exc:
                failed.append(name)
                print(f"kq: error: {name}: {error_text(exc)}", file=sys.stderr, flush=True)
    if json_output:
        print_json(rows)
    elif len(failed) < len(names):
        totals = {
            k: sum(r[k] for r in rows)
            for k in ("segments_deleted", "bytes_reclaimed", "records_removed", "tombstones_removed")
        }
        s.info(
            f"{len(names) - len(failed)} topic(s): {totals['segments_deleted']:,} segment(s) deleted, {human(totals['bytes_reclaimed'])} reclaimed, "
            f"{totals['records_removed']:,} superseded record(s) and {totals['tombstones_removed']:,} tombstone(s) compacted away"
        )
    for name, (records, segment_bytes) in uncompacted.items():
        if records:
            s.info(
                f"{name}: {count(records, 'record')} in active segments not compacted: like Kafka, compaction "
                f"leaves each partition's last segment alone until it rolls at {setting_text('segment_bytes', segment_bytes, True)} "
                f"(a smaller --segment-bytes rolls sooner: kq topic alter {name} --segment-bytes {smaller_size(segment_bytes)})"
            )
    if not json_output and is_terminal() and rows:
        emit_rows(
            rows,
            [
                "topic",
                "partition",
                "start_offset",
                "segments_deleted",
                "bytes_reclaimed",
                "records_removed",
                "tombstones_removed",
            ],
            False,
            "maintenance",
        )
    if failed:
        raise typer.Exit(1)


def active_segment_records(part) -> int:
    """About how many records the partition's last segment, which compaction skips, holds."""
    segments = part.segments()
    return max(0, part.end_offset() - max(segments[-1], part.start_offset())) if segments else 0


def smaller_size(segment_bytes: int) -> str:
    """A segment size an eighth of ``segment_bytes`` (at least 4K), written as --segment-bytes takes it."""
    smaller = max(segment_bytes // 8, 4096)
    return f"{smaller >> 20}M" if smaller >= 1 << 20 else f"{smaller >> 10}K"
