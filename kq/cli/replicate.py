"""``kq replicate``: keep another data directory a batch-exact copy of chosen topics (kq.ops.replicate),
or copy topics between a data directory and a Kafka cluster (kq.ops.bridge)."""

import sys
from typing import Optional

import typer

from ..errors import EXIT_USAGE, KqError
from .common import KqCommand, bad_parameter, complete_topic, follow_option, json_option, settings
from .output import ProgressBars, count, emit_rows, explain, human, print_json, warn

app = typer.Typer(add_completion=False)  # only the top-level kq offers completion install


@app.command("replicate", cls=KqCommand)
def replicate(
    ctx: typer.Context,
    topics: Optional[list[str]] = typer.Argument(
        None, autocompletion=complete_topic, metavar="[TOPICS]...", help="Topics to copy (or --all)."
    ),
    to: str = typer.Option(
        ...,
        "--to",
        metavar="DIR|kafka://HOST:PORT",
        help="The replica's data directory (another disk, another mount), or a Kafka cluster to copy to.",
    ),
    source: Optional[str] = typer.Option(
        None,
        "--from",
        metavar="kafka://HOST:PORT",
        help="Copy from this Kafka cluster into the data directory --to DIR \\[default: the data directory, or -b's cluster].",
    ),
    all_topics: bool = typer.Option(False, "--all", help="Copy every topic."),
    follow: bool = follow_option("Keep the copy caught up until SIGINT/SIGTERM."),
    truncate: bool = typer.Option(
        False,
        "--truncate",
        help="If the replica has records the source lacks, cut it back to the common prefix and continue.",
    ),
    groups: bool = typer.Option(
        False,
        "--groups",
        help="Between a directory and a cluster: carry the groups' committed offsets over, translated to the copy's offsets (a replica directory always gets them).",
    ),
    verify: bool = typer.Option(
        False,
        "--verify",
        help="Compare source and copy instead of copying; exit 0 only when the copy holds exactly the source's records (it may lag). Group offsets that differ are listed as warnings and do not fail the check.",
    ),
    json_output: bool = json_option("A JSON summary on stdout."),
) -> None:
    """Copy topics to a replica data directory, or between a data directory and a Kafka cluster.

    A replica holds the same batches, offsets and group offsets; a copy to or
    from a cluster the same partitions, keys, values, headers and timestamps,
    at the offsets its place gives them (--groups translates group offsets).

    Incremental and safe to interrupt, even with kill -9: a rerun copies only what is new, and a
    copy to or from a cluster holds every record exactly once. Consumers fail over by pointing
    --data-dir (or KQ_DATA_DIR) at the replica, or move to the cluster with KQ_BROKERS.

    [bold]Examples[/bold]

      kq replicate orders --to /mnt/backup/kq

      * * * * * kq -q replicate --all --to /mnt/backup/kq     [dim]# cron, every minute[/dim]

      kq replicate --all --to /mnt/backup/kq --follow

      kq replicate --verify orders --to /mnt/backup/kq

      kq replicate orders --to kafka://broker:9092 --groups   [dim]# move to a Kafka cluster[/dim]

      kq replicate orders --from kafka://broker:9092 --to ./kq-data
    """
    from ..ops.bridge import kafka_url

    s = settings(ctx)
    if all_topics and topics:
        raise bad_parameter("name topics or give --all, not both", "TOPIC")
    if not all_topics and not topics:
        raise bad_parameter("name the topics to copy, or give --all for every topic", "TOPIC")
    if verify and (follow or truncate):
        raise bad_parameter("--verify only compares; it takes no --follow or --truncate", "--verify")
    names = None if all_topics else list(dict.fromkeys(topics or []))
    if not to.strip():
        raise bad_parameter("it is empty: give a replica directory or kafka://HOST:PORT", "--to")
    try:
        to_cluster = kafka_url(to)
        from_cluster = kafka_url(source) if source is not None else None
    except KqError as exc:
        raise bad_parameter(str(exc), "--from/--to") from None
    if source is not None and from_cluster is None:
        raise bad_parameter(f"{source!r} is not kafka://HOST:PORT: --from names a Kafka cluster", "--from")
    from_cluster = from_cluster or s.brokers
    if from_cluster and to_cluster:
        raise bad_parameter(
            "kq copies between a data directory and a cluster; from cluster to cluster, use MirrorMaker", "--to"
        )
    if from_cluster or to_cluster:
        s.cluster_named = True  # -X and --kafka-config are for this cluster
        if truncate:
            raise bad_parameter(
                "--truncate is for replica directories; a copy to or from a cluster never diverges", "--truncate"
            )
        _bridge(s, names, to, from_cluster, to_cluster, follow, groups, verify, json_output)
        return
    _replicate_directory(s, names, to, follow, truncate, verify, json_output)


class TopicErrors:
    """The ``on_error`` of a copy of several topics: a topic that fails is named on stderr and
    the others go on (``--follow`` tries it again: ``exc`` None); kq exits 1 at the end."""

    def __init__(self, s):
        self.settings = s
        self.failed: list[str] = []

    def __call__(self, topic: str, exc) -> None:
        if exc is None:
            self.settings.info(f"{topic}: copying again")
            return
        if getattr(exc, "exit_code", None) == EXIT_USAGE:
            raise exc  # a bad client setting (-X) is no one topic's failure: it stops the copy, exit 2
        self.failed.append(topic)
        print(f"kq: error: {topic}: {explain(exc)}", file=sys.stderr, flush=True)


def _replicate_directory(s, names, to, follow, truncate, verify, json_output) -> None:
    from ..engine.datadir import DataDir
    from ..ops.replicate import Replicator, report_dict

    source = s.data_dir("kq replicate")
    replicator = Replicator(source, DataDir(to), truncate=truncate)
    if verify:

        def group_note(g) -> str:
            replica_side = "nothing" if g["replica"] is None else g["replica"]
            source_side = "nothing" if g["source"] is None else g["source"]
            return f"committed {replica_side} in the replica, {source_side} in the source ({g['status']})"

        show_verification(
            replicator.verify(names),
            report_dict,
            ["source_end", "replica_end"],
            f"replica {to}",
            json_output,
            group_note,
        )
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

    report_error = TopicErrors(s)

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
            {
                "replica": replicator.replica.path,
                "partitions": [report_dict(r) for r in copies],
                "failed": report_error.failed,
            }
        )
    else:
        for copy in copies:
            announce(copy)
    if report_error.failed:
        raise typer.Exit(1)


def _bridge(s, names, to, from_cluster, to_cluster, follow, groups, verify, json_output) -> None:
    """A copy between the data directory and a cluster (kq.ops.bridge)."""
    import os

    from ..backends.base import Backend
    from ..backends.kafka import KafkaBackend
    from ..backends.local import LocalBackend
    from ..engine.datadir import DataDir
    from ..ops.bridge import BRIDGES_DIR, Bridge, peer_name, report_dict

    source: Backend
    target: Backend
    if to_cluster:
        data = s.data_dir("kq replicate --to kafka://")
        source, target = LocalBackend(data), KafkaBackend(to_cluster, s.client_settings())
        records = os.path.join(data.path, BRIDGES_DIR, peer_name("to", to_cluster))
        where = f"kafka://{to_cluster}"
    else:
        data = DataDir(to)
        data.ensure()
        source = s.backend if s.brokers == from_cluster else KafkaBackend(from_cluster, s.client_settings())
        target = LocalBackend(data)
        records = os.path.join(data.path, BRIDGES_DIR, peer_name("from", from_cluster))
        where = to
    bridge = Bridge(source, target, records, groups=groups)
    if verify:
        _verify_bridge(bridge, names, where, json_output)
        return

    def announce(r) -> None:
        if r.skipped_to is not None:
            warn(
                f"{r.topic}/{r.partition}: the source's retention deleted records before they were copied; "
                f"the copy goes on from offset {r.skipped_to}"
            )
        if r.recovered:
            s.info(
                f"{r.topic}/{r.partition}: {count(r.recovered, 'record')} an interrupted copy had sent were found and kept"
            )
        if r.records:
            s.info(
                f"{r.topic}/{r.partition}: copied {count(r.records, 'record')} ({human(r.bytes)}), "
                f"offsets {r.from_offset}..{r.to_offset - 1} to {r.target_from}..{r.target_to - 1}"
            )

    report_error = TopicErrors(s)

    try:
        with bridge:
            if follow:
                try:
                    bridge.follow(names, on_copy=announce, on_error=report_error)
                except KeyboardInterrupt:
                    return
            with ProgressBars(s.quiet, json_output) as bars:
                bridge.progress = lambda r: bars.update(f"{r.topic}/{r.partition}", r.bytes, None, r.records)
                reports = bridge.copy(names, on_error=report_error)
    finally:
        source.close()
        target.close()
    if json_output:
        print_json({"to": where, "partitions": [report_dict(r) for r in reports], "failed": report_error.failed})
    else:
        for r in reports:
            announce(r)
    if report_error.failed:
        raise typer.Exit(1)


def _verify_bridge(bridge, names, where: str, json_output: bool) -> None:
    from ..ops.bridge import report_dict

    def group_note(g) -> str:
        return (
            f"committed {g['source']} in the source, which is {g['translated']} in the copy, where it "
            f"committed {'nothing' if g['target'] is None else g['target']} ({g['status']})"
        )

    show_verification(
        bridge.verify(names),
        report_dict,
        ["source_records", "target_records"],
        f"the copy {where}",
        json_output,
        group_note,
    )


def show_verification(reports, as_dict, counts: list[str], what: str, json_output: bool, group_note) -> None:
    """A --verify table (or JSON), a warning per group that differs, and an error if any partition fails."""
    rows = [as_dict(r) for r in reports]
    if json_output:
        print_json(rows)
    else:
        for row in rows:
            row["groups"] = ", ".join(f"{g['group']}:{g['status']}" for g in row["groups"]) or None
        emit_rows(rows, ["topic", "partition", *counts, "status", "detail", "groups"], False, what.removeprefix("the "))
    for r in reports:
        for g in r.groups:
            if g["status"] != "same":
                warn(f"{r.topic}/{r.partition}: group '{g['group']}' {group_note(g)}")
    bad = [r for r in reports if not r.ok]
    if bad:
        failing = "; ".join(
            f"{r.topic}/{r.partition}: {r.status}" + (f" ({r.detail})" if r.detail else "") for r in bad[:3]
        )
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise KqError(f"{what} does not verify: {failing}{more}")
