"""``kq topic create|alter|trim|list|describe|delete``."""

from typing import Annotated, Optional

import typer

from ..errors import TopicExists, TopicNotFound, UsageError
from .common import KqCommand, bad_parameter, json_option, partitions_option, settings, topic_argument
from .output import count, emit_rows, human, is_terminal, print_json, rich_table, setting_text, utc_time

app = typer.Typer(
    add_completion=False,
    name="topic",
    help="""Create, alter, trim, list, describe and delete topics.

[bold]Examples[/bold]

  kq topic create orders --partitions 8

  kq topic alter logs --retention 3d

  kq topic trim logs --before @-30d

  kq topic list

  kq topic describe orders --json
""",
    no_args_is_help=True,
)

# The settings that `topic create` and `topic alter` share, one definition each.
SegmentBytesOption = Annotated[
    Optional[str],
    typer.Option(
        "--segment-bytes", metavar="SIZE", help="Roll segments at this size, e.g. 64M (a new topic's default)."
    ),
]
SyncOption = Annotated[
    Optional[bool],
    typer.Option(
        "--sync/--no-sync", help="fsync every batch (survives power loss); a new topic's default is --no-sync."
    ),
]
RetentionOption = Annotated[
    Optional[str],
    typer.Option(
        "--retention",
        metavar="DURATION",
        help="Delete closed segments whose records are all older than this (7d, 12h, none).",
    ),
]
RetentionBytesOption = Annotated[
    Optional[str],
    typer.Option(
        "--retention-bytes",
        metavar="SIZE",
        help="Keep about this much per partition, deleting the oldest closed segments (1G, none).",
    ),
]
CleanupOption = Annotated[
    Optional[str],
    typer.Option(
        "--cleanup",
        metavar="delete|compact",
        help="delete: retention only; compact: also keep just the latest record per key.",
    ),
]
TombstoneOption = Annotated[
    Optional[str],
    typer.Option(
        "--tombstone-retention",
        metavar="DURATION",
        help="With compact: how long a tombstone (null value) survives compaction \\[default: 1d].",
    ),
]
DedupWindowOption = Annotated[
    Optional[str],
    typer.Option(
        "--dedup-window",
        metavar="DURATION",
        help="Every producer drops a message whose id (its key, or --dedup-header) was produced to the topic "
        "within DURATION (10m, 1h; none: no window), Kafka clients through `kq serve` too.",
    ),
]
DedupHeaderOption = Annotated[
    Optional[str],
    typer.Option(
        "--dedup-header",
        metavar="NAME",
        help="With --dedup-window: a message's id is the value of its header NAME (as NATS's Nats-Msg-Id) "
        "rather than its key (none: the key).",
    ),
]


def dedup_changes(s, command: str, window: Optional[str], header: Optional[str]) -> dict:
    """The topic settings --dedup-window and --dedup-header give (a data directory's only)."""
    from ..units import parse_duration, parse_limit

    changes: dict[str, object] = {}
    if window is None and header is None:
        return changes
    s.data_dir(f"kq topic {command} --dedup-window")  # a cluster has no deduplication window
    if window is not None:
        try:
            changes["dedup_window_ms"] = parse_limit(window, parse_duration)
        except UsageError as exc:
            raise bad_parameter(str(exc), "--dedup-window") from None
        if changes["dedup_window_ms"] == 0:
            raise bad_parameter("the deduplication window must be longer than 0 (or none)", "--dedup-window")
    if header is not None:
        if not header:
            raise bad_parameter("the header name may not be empty (none: the key)", "--dedup-header")
        changes["dedup_header"] = None if header.lower() == "none" else header
    return changes


CompressionOption = Annotated[
    Optional[str],
    typer.Option(
        "--compression",
        metavar="none|zstd|lz4|gzip|snappy|producer",
        help="Store new batches compressed with this codec (producer: a Kafka client's own, through kq serve); "
        "batches already written stay as they are \\[default: none].",
    ),
]


def config_changes(
    segment_bytes, sync, retention, retention_bytes, cleanup, tombstone_retention, compression=None
) -> dict:
    from ..units import parse_duration, parse_limit, parse_size

    changes: dict[str, object] = {}
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
    if compression is not None:
        changes["compression"] = compression
    return changes


@app.command("create", cls=KqCommand)
def topic_create(
    ctx: typer.Context,
    name: str = topic_argument("Topic name: 1-249 of [A-Za-z0-9._-].", complete=False),
    partitions: int = typer.Option(1, "--partitions", help="Number of partitions."),
    if_not_exists: bool = typer.Option(False, "--if-not-exists", help="Succeed if the topic already exists."),
    segment_bytes: SegmentBytesOption = None,
    sync: SyncOption = None,
    retention: RetentionOption = None,
    retention_bytes: RetentionBytesOption = None,
    cleanup: CleanupOption = None,
    tombstone_retention: TombstoneOption = None,
    dedup_window: DedupWindowOption = None,
    dedup_header: DedupHeaderOption = None,
    compression: CompressionOption = None,
) -> None:
    """Create a topic.

    [bold]Examples[/bold]

      kq topic create orders --partitions 8

      kq topic create logs --retention 7d --retention-bytes 1G

      kq topic create users --cleanup compact     [dim]# a table: latest value per key[/dim]

      kq topic create jobs --dedup-window 1h     [dim]# a key produced twice within 1h: stored once[/dim]

      kq topic create logs --compression zstd     [dim]# text takes a fifth of the disk or less[/dim]
    """
    s = settings(ctx)
    config = config_changes(segment_bytes, sync, retention, retention_bytes, cleanup, tombstone_retention, compression)
    config.update(dedup_changes(s, "create", dedup_window, dedup_header))
    try:
        info = s.backend.create_topic(name, partitions, config)
    except TopicExists:
        if if_not_exists:
            return
        raise
    s.info(f"created topic '{info.name}' with {count(len(info.partitions), 'partition')}")


@app.command("alter", cls=KqCommand)
def topic_alter(
    ctx: typer.Context,
    name: str = topic_argument(),
    segment_bytes: SegmentBytesOption = None,
    sync: SyncOption = None,
    retention: RetentionOption = None,
    retention_bytes: RetentionBytesOption = None,
    cleanup: CleanupOption = None,
    tombstone_retention: TombstoneOption = None,
    dedup_window: DedupWindowOption = None,
    dedup_header: DedupHeaderOption = None,
    compression: CompressionOption = None,
) -> None:
    """Change a topic's settings; `kq maintain` applies new limits to existing data.

    [bold]Examples[/bold]

      kq topic alter logs --retention 3d

      kq topic alter logs --retention none --retention-bytes 500M

      kq topic alter jobs --dedup-window 10m --dedup-header Nats-Msg-Id

      kq topic alter logs --compression lz4     [dim]# batches written from now on[/dim]
    """
    s = settings(ctx)
    changes = config_changes(segment_bytes, sync, retention, retention_bytes, cleanup, tombstone_retention, compression)
    changes.update(dedup_changes(s, "alter", dedup_window, dedup_header))
    if not changes:
        raise bad_parameter("give at least one setting to change", "TOPIC")
    config = s.backend.alter_topic(name, changes)
    s.info(f"altered topic '{name}': " + ", ".join(f"{k}={setting_text(k, config[k], True)}" for k in changes))


@app.command("trim", cls=KqCommand)
def topic_trim(
    ctx: typer.Context,
    name: str = topic_argument(),
    before: str = typer.Option(
        ...,
        "--before",
        metavar="OFFSET|@T",
        help="Delete records before this offset, or before the first record at or after time T.",
    ),
    partition: list[int] = partitions_option(),
    json_output: bool = json_option("A JSON list of {partition, start_offset, segments_deleted, bytes_reclaimed}."),
) -> None:
    """Delete records before a point (like kafka-delete-records): the start offset moves there.

    [bold]Examples[/bold]

      kq topic trim logs --before 1000000 -p 0

      kq topic trim logs --before @-30d
    """
    from ..offsetspec import ABSOLUTE, TIMESTAMP, parse_spec

    s = settings(ctx)
    if not (before.startswith("@") or before.strip().isdigit()):
        raise bad_parameter(f"{before!r} is not an offset N or a time @T", "--before")
    spec = parse_spec(before)
    if spec.kind not in (ABSOLUTE, TIMESTAMP):
        raise bad_parameter(f"{before!r} is not an offset N or a time @T", "--before")
    rows = s.backend.trim(name, spec, partition or None)
    emit_rows(
        rows, ["partition", "start_offset", "segments_deleted", "bytes_reclaimed"], json_output, f"trimmed {name}"
    )


@app.command("list", cls=KqCommand)
def topic_list(
    ctx: typer.Context,
    json_output: bool = json_option("A JSON list of {name, partitions}."),
) -> None:
    """List topics: one name per line (a table on a terminal).

    A topic kq cannot read (damaged metadata, another user's directory, a
    FIFO where a file belongs) is left out of the list and named on stderr,
    one `kq: error:` line each, and the exit code is 1.

    [bold]Examples[/bold]

      kq topic list

      kq topic list --json | jq -r '.[] | select(.partitions > 1) | .name'
    """
    import sys

    from ..errors import KqError
    from .output import error_text

    s = settings(ctx)
    table = is_terminal() and not json_output
    listed, unreadable = [], []
    for n in s.backend.topic_names():
        try:
            if table:
                info = s.backend.describe_topic(n)
                sizes = [p.size for p in info.partitions if p.size is not None]
                listed.append(
                    [
                        n,
                        len(info.partitions),
                        sum(p.messages for p in info.partitions),
                        human(sum(sizes)) if sizes else None,
                    ]
                )
            else:
                listed.append([n, s.backend.partition_count(n)])
        except (KqError, OSError) as exc:
            unreadable.append(f"cannot read topic '{n}': {error_text(exc)}")
    if json_output:
        print_json([{"name": r[0], "partitions": r[1]} for r in listed])
    elif table:
        rich_table(f"topics in {s.backend.description}", ["name", "partitions", "messages", "size"], listed)
    else:
        for r in listed:
            print(r[0])
    if unreadable:
        sys.stdout.flush()
        for message in unreadable:
            print(f"kq: error: {message}", file=sys.stderr)
        raise typer.Exit(1)


@app.command("describe", cls=KqCommand)
def topic_describe(
    ctx: typer.Context,
    name: str = topic_argument(),
    json_output: bool = json_option(
        "A JSON object: name, partitions (start/end offset, size, uncompressed_size), size, "
        "uncompressed_size, compression_ratio, config, share_groups (scheduled, next_due)."
    ),
) -> None:
    """Show a topic's partitions (start and end offsets, size) and config, and how many records
    each share group on it holds scheduled (produce --delay/--at) and when the next falls due.

    With compression, the bytes on disk are shown beside what they would be
    uncompressed, and their ratio.

    [bold]Examples[/bold]

      kq topic describe orders

      kq topic describe orders --json | jq '[.partitions[].end_offset] | add'
    """
    s = settings(ctx)
    info = s.backend.describe_topic(name)
    rows = [
        {
            "partition": p.partition,
            "start_offset": p.start_offset,
            "end_offset": p.end_offset,
            "size": p.size,
            "uncompressed_size": p.uncompressed_size,
        }
        for p in info.partitions
    ]
    shares = scheduled_by_share(s.backend, name)
    sizes = [p.size for p in info.partitions]
    plain_sizes = [p.uncompressed_size for p in info.partitions]
    size = None if None in sizes else sum(s for s in sizes if s is not None)
    plain = None if None in plain_sizes else sum(s for s in plain_sizes if s is not None)
    ratio = round(plain / size, 2) if plain is not None and size else None
    if json_output:
        print_json(
            {
                "name": info.name,
                "partitions": rows,
                "size": size,
                "uncompressed_size": plain,
                "compression_ratio": ratio,
                "config": info.config,
                "share_groups": shares,
            }
        )
    elif is_terminal():
        rich_table(
            f"topic {info.name}",
            ["partition", "start_offset", "end_offset", "messages", "size"],
            [
                [p.partition, p.start_offset, p.end_offset, p.messages, None if p.size is None else human(p.size)]
                for p in info.partitions
            ],
        )
        rich_table("config", ["setting", "value"], [[k, setting_text(k, v, True)] for k, v in info.config.items()])
        if shares:
            rich_table(
                "share groups",
                ["share_group", "scheduled", "next_due"],
                [[g["share_group"], g["scheduled"], utc_time(g["next_due"])] for g in shares],
            )
        if size is not None and plain is not None:
            print(f"{human(size)} on disk, {human(plain)} uncompressed (ratio {ratio or 1.0:g})")
    else:
        print(f"topic\t{info.name}")
        for k, v in info.config.items():
            print(f"config\t{k}\t{setting_text(k, v, False)}")
        for g in shares:
            print(f"share_group\t{g['share_group']}\tscheduled\t{g['scheduled']}\t{utc_time(g['next_due']) or '-'}")
        if size is not None and plain is not None:
            print(f"size\t{size}\tuncompressed\t{plain}\tratio\t{ratio or 1.0:g}")
        print("partition\tstart_offset\tend_offset\tsize")
        for r in rows:
            print(
                f"{r['partition']}\t{r['start_offset']}\t{r['end_offset']}\t{'-' if r['size'] is None else r['size']}"
            )


def scheduled_by_share(backend, topic: str) -> list[dict]:
    """Per share group on ``topic``: its scheduled records there and the earliest due time (epoch ms)."""
    from ..errors import KqError
    from .output import warn

    out = []
    for share in backend.shares_of_topic(topic):
        try:
            rows = [r for r in backend.describe_share(share)["partitions"] if r["topic"] == topic]
        except KqError as exc:  # a damaged share state: the topic is still described
            warn(f"share group '{share}': {exc}")
            continue
        times = [r["next_due"] for r in rows if r.get("next_due") is not None]
        out.append(
            {
                "share_group": share,
                "scheduled": sum(r.get("scheduled", 0) for r in rows),
                "next_due": min(times, default=None),
            }
        )
    return out


@app.command("delete", cls=KqCommand)
def topic_delete(
    ctx: typer.Context,
    name: str = topic_argument(),
    if_exists: bool = typer.Option(False, "--if-exists", help="Succeed if the topic does not exist."),
) -> None:
    """Delete a topic and all its messages.

    [bold]Examples[/bold]

      kq topic delete scratch

      kq topic delete scratch --if-exists     [dim]# in scripts: no error if it is gone[/dim]
    """
    s = settings(ctx)
    try:
        s.backend.delete_topic(name)
    except TopicNotFound:
        if if_exists:
            return
        raise
    s.info(f"deleted topic '{name}'")
