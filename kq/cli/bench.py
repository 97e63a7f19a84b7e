"""``kq bench``: produce and consume speed of this disk, like kafka-producer-perf-test (kq.ops.bench)."""

import typer

from .common import KqCommand, json_option, settings, sync_option
from .output import emit_rows

app = typer.Typer(add_completion=False)  # only the top-level kq offers completion install


@app.command("bench", cls=KqCommand)
def bench(
    ctx: typer.Context,
    messages: int = typer.Option(
        1_000_000, "-n", "--messages", min=1, help="How many messages to produce and consume."
    ),
    size: int = typer.Option(100, "-s", "--size", min=0, metavar="BYTES", help="Bytes per message."),
    partitions: int = typer.Option(1, "--partitions", min=1, help="Partitions of the scratch topic."),
    keys: int = typer.Option(
        0,
        "--keys",
        min=0,
        metavar="N",
        show_default=False,
        help="Spread the messages over N keys (murmur2 partitioning) \\[default: no keys].",
    ),
    sync: bool = sync_option("fsync every batch, as `produce --sync` does."),
    json_output: bool = json_option("A JSON list: phase, messages, bytes, seconds, msg_per_s, mb_per_s."),
) -> None:
    """Measure produce and consume speed on this machine's disk (like kafka-producer-perf-test).

    Writes a scratch topic in the data directory, reads it back, deletes it.
    Produce cuts batches as `kq produce` does from a fast pipe; consume reads
    and decodes as `kq consume` does, without writing the messages out.

    [bold]Examples[/bold]

      kq bench

      kq bench -n 200000 --size 1000 --sync       [dim]# durable writes of 1 KB messages[/dim]

      kq --data-dir /mnt/fast bench --partitions 8 --keys 10000 --json
    """
    from ..ops.bench import run

    s = settings(ctx)
    phases = run(s.data_dir("kq bench"), messages, size, partitions, keys, sync)
    rows = [
        {
            "phase": p.name,
            "messages": p.messages,
            "bytes": p.bytes,
            "seconds": round(p.seconds, 4),
            "msg_per_s": round(p.messages_per_second),
            "mb_per_s": round(p.megabytes_per_second, 1),
        }
        for p in phases
    ]
    emit_rows(rows, ["phase", "messages", "bytes", "seconds", "msg_per_s", "mb_per_s"], json_output, "kq bench")
