"""``kq serve``: the data directory as a Kafka broker on a local port (kq.serve)."""

import sys
from typing import Optional

import typer

from ..errors import KqError
from .common import KqCommand, bad_parameter, settings, sync_option

app = typer.Typer(add_completion=False)  # only the top-level kq offers completion install


def _host_port(text: str, option: str) -> tuple[str, int]:
    """Split HOST:PORT (or [IPv6]:PORT); a usage error names the option."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise bad_parameter(f"{text!r} is not HOST:PORT (for example 127.0.0.1:9092)", option)
    return host, int(port)


def _is_loopback(host: str) -> bool:
    import ipaddress
    import socket

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except (OSError, ValueError):
            return False


@app.command("serve", cls=KqCommand)
def serve(
    ctx: typer.Context,
    listen: str = typer.Option(
        "127.0.0.1:9092",
        "--listen",
        metavar="HOST:PORT",
        help="Address to accept Kafka clients on (port 0: any free port).",
    ),
    advertise: Optional[str] = typer.Option(
        None,
        "--advertise",
        metavar="HOST:PORT",
        help="Address clients are told to connect to \\[default: the --listen address].",
    ),
    no_auto_create: bool = typer.Option(
        False,
        "--no-auto-create",
        help="Do not create topics that clients ask metadata for (Kafka's auto.create.topics.enable=false).",
    ),
    default_partitions: Optional[int] = typer.Option(
        None,
        "--default-partitions",
        min=1,
        max=10_000,
        metavar="N",
        help="Partitions of a topic created without a count: on first use, or by a client that gives none "
        "(Kafka's num.partitions) \\[default: 1].",
    ),
    max_request_bytes: int = typer.Option(
        100 * 1024 * 1024,
        "--max-request-bytes",
        min=1024,
        metavar="N",
        help="Close connections that send a larger request (Kafka's socket.request.max.bytes).",
    ),
    sync: bool = sync_option("fdatasync every produced batch before acknowledging it (survives power loss)."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Log one line per connection and per error on stderr."),
) -> None:
    """Serve the data directory to Kafka clients (kcat, librdkafka, kafka-python, aiokafka) until SIGINT/SIGTERM.

    Topics, offsets and consumer groups are kq's own: `kq produce`, `kq
    consume -g` and `kq offsets` work on the same directory at the same time.
    There is no authentication: anyone who can reach the port can read and
    write every topic, so it listens on loopback unless told otherwise.
    Needs the Kafka extra: pip install 'kq-log\\[kafka]'.

    [bold]Examples[/bold]

      kq serve                                        [dim]# 127.0.0.1:9092[/dim]

      kcat -b 127.0.0.1:9092 -t demo -C -e            [dim]# in another shell[/dim]

      kq --data-dir /srv/kq serve --listen 0.0.0.0:9092 --advertise myhost:9092
    """
    import errno
    import socket

    from ..serve import INSTALL_HINT, missing_dependency

    host, port = _host_port(listen, "--listen")
    adv_host, adv_port = _host_port(advertise, "--advertise") if advertise else (host, None)
    if advertise is None and host in ("0.0.0.0", "::", ""):
        adv_host = socket.gethostname()
    missing = missing_dependency()
    if missing is not None:
        raise KqError(f"kq serve needs {missing} (the Kafka protocol libraries): {INSTALL_HINT}")
    import logging

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="kq: %(message)s", stream=sys.stderr)
    s = settings(ctx)
    data = s.data_dir("kq serve")
    if not _is_loopback(host):
        print(
            f"kq: warning: listening on {host}, not loopback: kq serve has no authentication, "
            "anyone who reaches this port can read and write every topic",
            file=sys.stderr,
        )

    def ready(server) -> None:
        shown = f"[{host}]" if ":" in host else host
        print(f"kq: serving {data.path} on {shown}:{server.port}", file=sys.stderr, flush=True)

    from ..serve import serve as run

    try:
        run(
            data.path,
            host,
            port,
            adv_host,
            adv_port if advertise else None,
            auto_create=not no_auto_create,
            default_partitions=default_partitions,
            max_request_bytes=max_request_bytes,
            sync=sync,
            ready=ready,
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise KqError(f"cannot listen on {listen}: the address is already in use") from None
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EACCES) or isinstance(exc, socket.gaierror):
            raise KqError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
        raise
    except KeyboardInterrupt:  # a second signal during shutdown
        return
