"""``kq metrics``: offsets, lag, sizes and share-group counts for Prometheus (kq.ops.metrics)."""

from typing import Optional

import typer

from ..errors import KqError
from .common import KqCommand, TopicsArgument, host_port, settings

app = typer.Typer(add_completion=False)


@app.command("metrics", cls=KqCommand)
def metrics(
    ctx: typer.Context,
    topics: TopicsArgument = None,
    output: Optional[str] = typer.Option(
        None,
        "--output",
        "-o",
        metavar="FILE",
        help="Write to FILE atomically (a temporary file renamed over it), for node_exporter's textfile collector.",
    ),
    listen: Optional[str] = typer.Option(
        None,
        "--listen",
        metavar="HOST:PORT",
        help="Serve /metrics over HTTP on HOST:PORT until stopped, a fresh snapshot per scrape (port 0: any free port).",
    ),
) -> None:
    """Print topics' and groups' offsets, lag and sizes in Prometheus's text format.

    The names are kafka_exporter's (kafka_topic_partition_current_offset,
    kafka_consumergroup_lag, kafka_consumergroup_members, ...), so its
    dashboards and alerts work; kq adds bytes on disk, commit times and
    share-group counts (kq_*). docs/METRICS.md lists them all. Everything
    is read from what is on disk (or from the cluster -b names) when asked.

    [bold]Examples[/bold]

      kq metrics

      kq metrics --output /var/lib/node_exporter/textfile/kq.prom     # from cron

      kq metrics --listen 127.0.0.1:9308                              # for Prometheus to scrape
    """
    import time

    from ..ops.metrics import render, snapshot_families
    from ..ops.observe import Memory, snapshot

    if output is not None and listen is not None:
        from ..errors import UsageError

        raise UsageError("--output and --listen do not go together: write a file once, or serve scrapes")
    address = host_port(listen, "--listen") if listen is not None else None
    s = settings(ctx)
    backend = s.backend
    for topic in topics or ():
        backend.partition_count(topic)  # an unknown topic is an error, not an empty answer

    problems: list[str] = []
    memory = Memory()  # scraped again and again: what did not change is not built again

    def body() -> bytes:
        started = time.perf_counter()
        snap = snapshot(backend, topics or None, memory)
        problems[:] = snap.problems
        return render(snapshot_families(snap, time.perf_counter() - started))

    if address is None:
        from .lag import warn_problems

        text = body()
        if output is None:
            import sys

            sys.stdout.buffer.write(text)
        else:
            from ..engine.fileio import atomic_write

            atomic_write(output, text)
        # The rest is written (kq_snapshot_problems counts what is not); cron hears of it.
        raise typer.Exit(warn_problems(problems))
    _serve(address, listen or "", body, s.info)


def _serve(address: tuple[str, int], shown: str, body, info) -> None:
    import errno
    import threading

    from ..ops.metrics_server import MetricsServer

    try:
        server = MetricsServer(address[0], address[1], body)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise KqError(f"cannot listen on {shown}: the address is already in use") from None
        raise KqError(f"cannot listen on {shown}: {exc.strerror or exc}") from None
    server.start()
    info(f"serving metrics on {server.url}")
    warn_if_open(address[0])
    try:
        threading.Event().wait()
    except KeyboardInterrupt:  # SIGINT or SIGTERM: the end of a server's day, not an error
        pass
    finally:
        server.close()


def warn_if_open(host: str) -> None:
    import sys

    from ..serve.auth import is_loopback

    if not is_loopback(host):
        print(
            f"kq: warning: /metrics on {host} is open to anyone who reaches the port"
            " (topic and group names, offsets): no login guards it",
            file=sys.stderr,
        )
