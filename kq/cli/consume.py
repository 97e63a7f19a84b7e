"""``kq consume``: records to stdout (kq.formats), or to a command per batch (kq.runner)."""

import sys
from typing import Optional

import typer

from ..errors import EXIT_TIMEOUT, UsageError
from .common import (
    KqCommand,
    bad_parameter,
    complete_offset,
    delimiter_option,
    duration_seconds,
    follow_option,
    group_option,
    json_option,
    null_option,
    option_value,
    partitions_option,
    settings,
    share_option,
    topic_argument,
)
from .output import quiet_stdout

app = typer.Typer(add_completion=False)  # only the top-level kq offers completion install


def _share_setting_option(flag: str, metavar: str, what: str, default: str, **limits):
    """An option that overrides one of a share group's stored settings (kq.share) for this worker
    and stores it: unset, the group's setting holds, else kq's ``default``."""
    return typer.Option(
        None,
        flag,
        metavar=metavar,
        help=f"With --share: {what} \\[default: the group's setting, else {default}].",
        show_default=False,
        **limits,
    )


@app.command("consume", cls=KqCommand)
def consume(
    ctx: typer.Context,
    topic: str = topic_argument("Topic to read."),
    offset: Optional[str] = typer.Option(
        None,
        "-o",
        "--offset",
        metavar="SPEC",
        autocompletion=complete_offset,
        callback=option_value,
        help="beginning (default), end, N, -N (N before the end), @T (timestamp: epoch ms, ISO-8601 (no zone: local time, TZ), or -1h / -30m ago), or a range A:B.",
    ),
    partition: list[int] = partitions_option("Read only this partition (repeatable)."),
    count: Optional[int] = typer.Option(None, "-n", "--count", min=0, help="Stop after N messages."),
    follow: bool = follow_option("Wait for new messages, like tail -f (until SIGINT/SIGTERM)."),
    timeout: Optional[float] = typer.Option(
        None,
        "-t",
        "--timeout",
        metavar="DURATION",
        parser=duration_seconds,
        help="Wait for new messages (like -f) but exit after DURATION (10, 1.5s, 500ms, 2m) without one: exit 0 if any message was written, 3 if none.",
    ),
    exit_at_end: bool = typer.Option(
        True, "-e", "--exit", hidden=True, help="Exit at the end of the log (the default)."
    ),
    group: Optional[str] = group_option(
        "Consume as a member of GROUP: resume at its committed offsets, share partitions with its other members, commit what was written. A group keeps each partition's order: it reads records delayed by produce --delay/--at at once, ignoring their time (with a warning); --share honours it."
    ),
    reset: str = typer.Option(
        "earliest",
        "--reset",
        metavar="earliest|latest",
        help="Where a group starts on partitions it has never committed.",
    ),
    no_commit: bool = typer.Option(
        False, "--no-commit", help="With -g: read from the group's offsets without joining it or committing."
    ),
    share: Optional[str] = share_option(
        "Consume as a worker of share group NAME (a job queue): any number of workers take different records of the same partitions, each under a lease, and settle each on its own (no per-partition order). Without --exec, prints each record after its lease id, for `kq ack` / `kq nack`."
    ),
    lease: str = typer.Option(
        "30s",
        "--lease",
        metavar="DURATION",
        help="With --share: how long a record stays with this worker unacknowledged (extended while --exec's CMD runs; at most 24h); then another worker gets it (30s, 2m, or seconds).",
    ),
    max_attempts: Optional[int] = _share_setting_option(
        "--max-attempts", "N", "deliveries of a record before it goes to the dead-letter topic", "5", min=1, max=1000
    ),
    retry_backoff: Optional[str] = _share_setting_option(
        "--retry-backoff",
        "DURATION",
        "the wait before a failed record's second attempt, doubled for each further one",
        "1s",
    ),
    retry_backoff_max: Optional[str] = _share_setting_option(
        "--retry-backoff-max", "DURATION", "the longest wait between attempts", "60s"
    ),
    dead_letter: Optional[str] = _share_setting_option(
        "--dead-letter",
        "TOPIC",
        "where records go after --max-attempts, with kq.dlq.* headers saying why",
        "TOPIC.dlq",
    ),
    exec_cmd: Optional[str] = typer.Option(
        None,
        "--exec",
        metavar="CMD",
        help="Run CMD (through the shell) for each batch of one partition's messages, on its stdin, with KQ_TOPIC, KQ_PARTITION, KQ_OFFSET and KQ_LAST_OFFSET set; with -g, commit a batch only when CMD exits 0. A failing batch stops its partition only. With --share: CMD runs per record (KQ_KEY, KQ_ATTEMPT, KQ_HEADERS, ... set too), which is acknowledged when CMD exits 0 and retried otherwise (exit 1 if one ends the run dead-lettered or waiting for a retry).",
    ),
    exec_timeout: Optional[str] = typer.Option(
        None,
        "--exec-timeout",
        metavar="DURATION",
        help="With --exec: stop a run of CMD that takes longer (SIGTERM, then SIGKILL 5 s later) and count it as failed: with -g its batch is not committed, with --share its records are retried or dead-lettered.",
    ),
    batch: Optional[int] = typer.Option(
        None,
        "--batch",
        min=1,
        metavar="N",
        help="With --exec: at most N messages per run of CMD \\[default: 1000; with --share, 1: a batch is acknowledged or retried as a whole].",
        show_default=False,
    ),
    produce_to: Optional[str] = typer.Option(
        None,
        "--produce-to",
        metavar="TOPIC",
        help="With -g and --exec: send CMD's stdout (split into messages as `kq produce` splits its input) to TOPIC, and commit the group's offset for each batch in the same transaction: exactly once, for a CMD that gives the same output for the same input, whatever is killed when (docs/GUARANTEES.md). TOPIC is created, with the input's partition count, if missing.",
    ),
    isolation: str = typer.Option(
        "read_committed",
        "--isolation",
        metavar="read_committed|read_uncommitted",
        help="read_committed (the default) shows a transaction's records once it commits, never an aborted one's; read_uncommitted shows every record as it is written (Kafka's isolation.level).",
    ),
    parallel: int = typer.Option(
        1, "--parallel", min=1, max=1024, metavar="N", help="With --share --exec: run up to N commands at once."
    ),
    fmt: Optional[str] = typer.Option(
        None,
        "-F",
        "--format",
        metavar="FMT",
        help=r"Output format: %t topic, %p partition, %o offset, %k key, %s value, %T timestamp (ms), %h headers (name=value,...; a null value as NULL, as kcat), %% and \n, \t. Nothing else is added.",
    ),
    json_output: bool = json_option(
        "One JSON object per line: topic, partition, offset, timestamp, key, value, headers (a list of \\[name, value] pairs); see docs/FORMAT.md."
    ),
    delimiter: Optional[str] = delimiter_option(r"Written after each message \[default: \n]."),
    null: bool = null_option("Write a NUL byte after each message."),
) -> None:
    """Write a topic's messages to stdout, then exit at the end of the log.

    [bold]Examples[/bold]

      kq consume demo                         [dim]# everything, then exit[/dim]

      kq consume demo -f                      [dim]# and keep waiting for more[/dim]

      kq consume logs -o @-1h -F '%T %s\\n'    [dim]# the last hour, with timestamps[/dim]

      kq consume jobs -g mailer --exec ./send.sh   [dim]# cron: at least once, commit on success[/dim]

      kq consume jobs --share mailer --exec ./send.sh --parallel 4 --timeout 60   [dim]# a job queue[/dim]

      kq consume raw -g enrich --exec ./enrich.sh --produce-to enriched   [dim]# exactly once[/dim]
    """
    from ..formats import record_writer
    from ..offsetspec import parse_range
    from .produce import delimiter_bytes

    s = settings(ctx)
    if fmt is not None and json_output:
        raise bad_parameter("use either -F/--format or --json", "--json")
    if (fmt is not None or json_output) and (delimiter is not None or null):
        # A format says everything written, and JSON lines end in newlines.
        raise bad_parameter("-D and -0 do not apply to -F or --json output", "-D/-0")
    if group is not None and (offset is not None or partition):
        raise bad_parameter("a group chooses its own offsets and partitions; use `kq offsets reset` to move them", "-g")
    if no_commit and group is None:
        raise bad_parameter("--no-commit needs -g/--group", "--no-commit")
    share_changes = share_options(
        share, group, offset, partition, no_commit, lease, max_attempts, retry_backoff, retry_backoff_max, dead_letter
    )
    if parallel != 1 and (share is None or exec_cmd is None):
        raise bad_parameter("--parallel needs --share and --exec", "--parallel")
    if reset not in ("earliest", "latest"):
        raise bad_parameter(f"{reset!r} is not earliest or latest", "--reset")
    exec_seconds = exec_timeout_seconds(exec_timeout, exec_cmd)
    if isolation not in ("read_committed", "read_uncommitted"):
        raise bad_parameter(f"{isolation!r} is not read_committed or read_uncommitted", "--isolation")
    if produce_to is not None:
        if exec_cmd is None or group is None or no_commit or share is not None:
            raise bad_parameter(
                "--produce-to needs -g GROUP and --exec CMD (and neither --no-commit nor --share)", "--produce-to"
            )
        if isolation != "read_committed":
            raise bad_parameter("--produce-to reads read_committed: exactly once needs committed input", "--isolation")
        if produce_to == topic:
            raise bad_parameter("--produce-to names the topic being read", "--produce-to")
    delim = delimiter_bytes(delimiter, null)
    spec = parse_range(offset or "beginning")
    follow = follow or timeout is not None
    try:
        write = record_writer(topic, fmt, json_output, delim)
    except UsageError as exc:
        raise bad_parameter(str(exc), "-F/--format") from None
    if group is not None and group in s.backend.share_names():
        raise bad_parameter(f"'{group}' is a share group (--share); a consumer group needs a name of its own", "-g")
    if share is not None:
        consume_share(
            s,
            topic,
            share,
            share_changes,
            reset,
            write,
            json_output,
            exec_cmd,
            batch or 1,
            parallel,
            count,
            follow,
            timeout,
            exec_seconds,
        )
        return
    batch = batch or 1000
    if produce_to is not None:
        assert group is not None and exec_cmd is not None
        run_pipeline(s, topic, group, produce_to, exec_cmd, batch, write, reset, follow, timeout, count, exec_seconds)
        return
    if group is not None and not no_commit:
        source = s.backend.group_reader(topic, group, follow=follow, reset=reset, isolation=isolation)
    elif group is not None:
        source = s.backend.group_peek(topic, group, follow=follow, reset=reset, isolation=isolation)
    else:
        source = s.backend.reader(topic, partition or None, spec, follow=follow, isolation=isolation)
    committing = group is not None and not no_commit
    delivered = 0
    try:
        if count == 0:
            return
        rounds = limited(source.rounds(timeout), count)
        if exec_cmd is not None:
            delivered = run_command(
                rounds, write, exec_cmd, batch, topic, source, group if committing else None, s.backend, exec_seconds
            )
        else:
            delivered = write_rounds(rounds, write, source)
    except KeyboardInterrupt:
        # A follow ends this way (exit 0); a consume that stops before the end
        # of what it was asked for exits 128 + the signal, so that
        # `kq consume t > dump && mv dump final` never ships a partial dump.
        # Either way what was written is committed first (finally, below).
        if not follow:
            raise
    except BrokenPipeError:
        quiet_stdout()  # the reader left (`kq consume t | head`): its job is done
    finally:
        source.close()
    if source.timed_out and delivered == 0:
        s.info(f"no message arrived within {timeout:g} s")
        raise typer.Exit(EXIT_TIMEOUT)


def run_pipeline(s, topic, group, out, command, batch, write, reset, follow, timeout, count, exec_timeout) -> None:
    """--produce-to: CMD per batch, its output and the group's offsets in one transaction (kq.ops.exactly_once)."""
    from ..errors import TopicExists, TopicNotFound
    from ..ops.exactly_once import ExactlyOncePipeline, pipeline_transactional_id
    from ..runner import CommandFailed

    backend = s.backend
    partitions = backend.partition_count(topic)
    try:
        backend.partition_count(out)
    except TopicNotFound:
        try:
            backend.create_topic(out, partitions)
            s.info(f"created topic '{out}' with {partitions} partition(s)")
        except TopicExists:
            pass
    # 15 minutes (Kafka's largest): a transaction stays open while the command runs on the next batch.
    transaction = backend.transaction(pipeline_transactional_id(group), 15 * 60 * 1000, ephemeral=True)
    source = None
    pipeline = None
    try:
        source = backend.transactional_group_reader(topic, group, transaction, follow=follow, reset=reset)
        pipeline = ExactlyOncePipeline(
            source, transaction, group, topic, out, command, batch, write, timeout=exec_timeout
        )
        if count == 0:
            return
        try:
            pipeline.run(limited(source.rounds(timeout), count))
        except KeyboardInterrupt:
            if not follow:
                raise
        except CommandFailed as failed:
            fate = f"those batches were neither committed nor sent to '{out}'; the next run of group '{group}' does them again"
            if partitions > len({f.partition for f in failed.failures}):
                fate += "; the other partitions went on"
            failed.args = (f"{failed}: {fate}",)
            raise
    finally:
        try:
            if source is not None:
                source.close()
        finally:
            transaction.close()
        if pipeline is not None:
            s.info(f"{pipeline.done} record(s) processed, {pipeline.produced} sent to '{out}'")
    if source is not None and source.timed_out and pipeline is not None and pipeline.done == 0:
        s.info(f"no message arrived within {timeout:g} s")
        raise typer.Exit(EXIT_TIMEOUT)


def limited(rounds, count: Optional[int]):
    """The rounds, cut short after ``count`` records in all."""
    if count is None:
        yield from rounds
        return
    remaining = count
    for slices in rounds:
        taken = []
        for sl in slices:
            if sl.stop - sl.start >= remaining:
                taken.append(sl._replace(stop=sl.start + remaining))
                remaining = 0
                break
            taken.append(sl)
            remaining -= sl.stop - sl.start
        yield taken
        if remaining == 0:
            return


def write_rounds(rounds, write, source) -> int:
    """Write each round, flush, then mark it written (so a group may commit it).

    Returns how many records were written.
    """
    from ..engine.fileio import write_all

    # Straight to the file descriptor, every byte or an error: sys.stdout.buffer's write returns a
    # short count without raising (a disk that filled, a file size limit, a reader that left), and
    # the group would then commit records that never reached the output.
    sys.stdout.buffer.flush()
    fd = sys.stdout.fileno()
    written = 0
    for slices in rounds:
        for sl in slices:
            write_all(fd, write(sl.partition, sl.batch, sl.start, sl.stop))  # each while its bytes are in cache
        written += sum(sl.stop - sl.start for sl in slices)
        for sl in slices:
            source.mark(sl.partition, sl.offset_after())
    return written


def exec_timeout_seconds(exec_timeout: Optional[str], exec_cmd: Optional[str]) -> Optional[float]:
    """--exec-timeout in seconds (None: commands run as long as they take)."""
    from ..units import parse_duration

    if exec_timeout is None:
        return None
    if exec_cmd is None:
        raise bad_parameter("--exec-timeout needs --exec", "--exec-timeout")
    try:
        ms = parse_duration(exec_timeout)
    except UsageError as exc:
        raise bad_parameter(str(exc), "--exec-timeout") from None
    if ms < 1:
        raise bad_parameter("a command gets at least 1 ms", "--exec-timeout")
    return ms / 1000


def run_command(
    rounds,
    write,
    command: str,
    size: int,
    topic: str,
    source,
    group: Optional[str],
    backend,
    exec_timeout: Optional[float] = None,
) -> int:
    """--exec: run ``command`` per batch; a group commits a batch once the command accepted it."""
    from ..runner import CommandFailed, CommandRunner

    def accepted(p: int, offset: int) -> None:
        source.mark(p, offset)
        source.commit()

    runner = CommandRunner(command, size, write, topic, accepted, source.stop_partition, exec_timeout)
    try:
        runner.run(rounds)
    finally:
        done = runner.done
    if runner.failures:
        failed = CommandFailed(command, runner.failures)
        if group is not None:
            fate = f"those batches were not committed and the next run of group '{group}' delivers them again"
        else:
            fate = (
                "without a group nothing is committed: rerun with -p and -o from the offsets above to process "
                "them again"
            )
        if backend.partition_count(topic) > len({f.partition for f in runner.failures}):
            fate += "; the other partitions went on"
        failed.args = (f"{failed}: {fate}",)
        raise failed
    return done


def share_options(
    share, group, offset, partition, no_commit, lease, max_attempts, retry_backoff, retry_backoff_max, dead_letter
) -> dict:
    """The share group's settings a command line changes (lease_ms aside), after checking the options go together."""
    from ..units import parse_duration

    if share is None:
        given = [
            name
            for name, value in (
                ("--max-attempts", max_attempts),
                ("--retry-backoff", retry_backoff),
                ("--retry-backoff-max", retry_backoff_max),
                ("--dead-letter", dead_letter),
            )
            if value is not None
        ]
        if lease != "30s":
            given.append("--lease")
        if given:
            raise bad_parameter(f"{', '.join(given)} need(s) --share", given[0])
        return {}
    if group is not None:
        raise bad_parameter("use either -g/--group (ordered, per partition) or --share (a job queue)", "--share")
    if offset is not None or partition:
        raise bad_parameter("a share group chooses its own records; it has no -o or -p", "--share")
    if no_commit:
        raise bad_parameter("--no-commit needs -g/--group", "--no-commit")
    changes: dict = {}
    try:
        changes["lease_ms"] = parse_duration(lease)
        if changes["lease_ms"] < 1:
            raise UsageError("a lease lasts at least 1 ms")
        if changes["lease_ms"] > 24 * 3600 * 1000:  # kq.share.state.MAX_LEASE_MS
            raise UsageError("a lease lasts at most 24h")
    except UsageError as exc:
        raise bad_parameter(str(exc), "--lease") from None
    for option, key, value in (
        ("--retry-backoff", "backoff_ms", retry_backoff),
        ("--retry-backoff-max", "backoff_max_ms", retry_backoff_max),
    ):
        if value is not None:
            try:
                changes[key] = parse_duration(value)
            except UsageError as exc:
                raise bad_parameter(str(exc), option) from None
    if max_attempts is not None:
        changes["max_attempts"] = max_attempts
    if dead_letter is not None:
        from ..engine.names import check_name

        try:
            changes["dead_letter"] = check_name(dead_letter)
        except UsageError as exc:
            raise bad_parameter(str(exc), "--dead-letter") from None
    return changes


def consume_share(
    s, topic, share, changes, reset, write, json_output, command, batch, parallel, count, follow, timeout, exec_timeout
) -> None:
    """--share: run CMD per record (kq.share.runner), or print records with their lease ids."""
    lease_ms = changes.pop("lease_ms")
    # Without a command, the leases printed are a script's to settle after this worker exits.
    source = s.backend.share_reader(topic, share, changes, lease_ms=lease_ms, reset=reset, detach=command is None)
    try:
        if count == 0:
            return
        if command is not None:
            from ..share.runner import ShareRunner

            runner = ShareRunner(
                source, command, write, batch, parallel, count, follow, timeout, exec_timeout=exec_timeout
            )
            try:
                runner.run()
            except KeyboardInterrupt:
                if not follow:
                    raise
            finally:
                report_share_run(s, runner, source)
            delivered, timed_out = runner.acquired, runner.timed_out
            if runner.failed_records:
                raise share_command_failed(command, runner, source)
        else:
            delivered = 0
            rounds = source.rounds(count, follow, timeout)
            deliveries = []
            try:
                for deliveries in rounds:
                    print_leased(deliveries, write, json_output)
                    delivered += len(deliveries)
            except KeyboardInterrupt:
                if not follow:
                    raise
            except BrokenPipeError:
                # The reader left (`| head -n 3`) while this round was being written: give its records
                # back now, uncounted, rather than leave them leased to nobody until the lease runs out
                # (which counts an attempt, and enough of those dead-letter records nobody processed).
                # The few it did read come again: at least once.
                quiet_stdout()
                source.release(deliveries)
            timed_out = source.timed_out
    finally:
        source.close()
    if timed_out and delivered == 0:
        s.info(f"no message arrived within {timeout:g} s")
        raise typer.Exit(EXIT_TIMEOUT)


def share_command_failed(command: str, runner, source):
    """Exit 1 for a --share --exec run that leaves records its command failed on unacknowledged."""
    from ..errors import KqError

    left = runner.failed_records
    fate = f"{min(runner.dead, left)} dead-lettered to '{source.settings.dead_letter}'"
    if left > runner.dead:
        fate += f", {left - runner.dead} waiting for a retry"
    return KqError(f"command {command!r} failed on {left} record(s) that this run left unacknowledged ({fate})")


def print_leased(deliveries, write, json_output: bool) -> None:
    """Records after their lease ids (a tab between), or as JSON lines with ``lease`` and ``attempt``."""
    import json

    out = []
    for d in deliveries:
        rendered = write(d.partition, d.batch, d.index, d.index + 1)
        if json_output:
            obj = json.loads(rendered)
            obj["lease"], obj["attempt"] = d.lease, d.attempt
            out.append(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n")
        else:
            out.append(d.lease.encode("ascii") + b"\t" + rendered)
    from ..engine.fileio import write_all

    sys.stdout.buffer.flush()
    write_all(sys.stdout.fileno(), *out)  # every byte or an error (see write_rounds)


def report_share_run(s, runner, source) -> None:
    """What a --share --exec run did, on stderr (not with -q)."""
    parts = [f"{runner.acked} record(s) acknowledged"]
    if runner.failed:
        parts.append(f"{runner.failed} command run(s) failed")
    if runner.dead:
        parts.append(f"{runner.dead} record(s) dead-lettered to '{source.settings.dead_letter}'")
    if runner.lost:
        parts.append(f"{runner.lost} record(s) lost their lease while their command ran (another worker gets them)")
    s.info(", ".join(parts))
