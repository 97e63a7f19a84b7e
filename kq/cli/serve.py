"""``kq serve``: the data directory as a Kafka broker on a local port (kq.serve)."""

import sys
from typing import Optional

import typer

from ..errors import KqError, UsageError
from .common import KqCommand, bad_parameter, host_port, settings, sync_option

app = typer.Typer(add_completion=False)  # only the top-level kq offers completion install


def _password(name: str) -> bytes:
    """The new password of ``name``: prompted twice on a terminal, else the first line of stdin."""
    if sys.stdin.isatty():
        import getpass

        first = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != first:
            raise UsageError("the two passwords differ")
        return first.encode()
    line = sys.stdin.buffer.readline()
    return line.rstrip(b"\r\n")


def _manage_users(data, add: Optional[str], remove: Optional[str], show: bool) -> None:
    from ..serve.sasl import Users

    users = Users(data.path)
    if add is not None:
        data.ensure()
        new = users.add(add, _password(add))
        print(f"kq: {'added' if new else 'changed the password of'} {add} in {users.path}", file=sys.stderr)
    if remove is not None and not users.remove(remove):
        raise KqError(f"no user {remove!r} in {users.path}")
    if show:
        for name in users.names():
            print(name)


def _tls_context(cert: Optional[str], key: Optional[str]):
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise bad_parameter("give both --tls-cert and --tls-key", "--tls-cert" if cert is None else "--tls-key")
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise bad_parameter(f"cannot load {cert} and {key}: {exc}", "--tls-cert") from None
    return context


@app.command("serve", cls=KqCommand)
def serve(
    ctx: typer.Context,
    listen: str = typer.Option(
        "127.0.0.1:9092",
        "--listen",
        metavar="HOST:PORT",
        help="Address to accept Kafka clients on (port 0: any free port).",
    ),
    metrics: Optional[str] = typer.Option(
        None,
        "--metrics",
        metavar="HOST:PORT",
        help="Also serve Prometheus metrics at http://HOST:PORT/metrics: kq metrics's, and requests and"
        " latencies per Kafka API (docs/METRICS.md).",
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
    max_memory: int = typer.Option(
        256,
        "--max-memory",
        min=16,
        metavar="MIB",
        help="MiB held at most, across all connections, for requests being read and responses not yet sent:"
        " beyond it the server stops reading from the connections that hold most.",
    ),
    sync: bool = sync_option("fdatasync every produced batch before acknowledging it (survives power loss)."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Log one line per connection and per error on stderr."),
    insecure: bool = typer.Option(
        False,
        "--insecure",
        help="Let in anyone who reaches the port, with no login (needed to listen beyond loopback without SASL users).",
    ),
    tls_cert: Optional[str] = typer.Option(
        None, "--tls-cert", metavar="FILE", help="Speak TLS with this certificate chain (PEM; with --tls-key)."
    ),
    tls_key: Optional[str] = typer.Option(
        None, "--tls-key", metavar="FILE", help="The private key of --tls-cert (PEM)."
    ),
    add_user: Optional[str] = typer.Option(
        None,
        "--add-user",
        metavar="NAME",
        help="Add a SASL user (or change its password: prompted, or the first line of stdin) and exit.",
    ),
    remove_user: Optional[str] = typer.Option(
        None, "--remove-user", metavar="NAME", help="Remove a SASL user and exit."
    ),
    list_users: bool = typer.Option(False, "--list-users", help="Print the SASL users' names and exit."),
) -> None:
    """Serve the data directory to Kafka clients (kcat, librdkafka, kafka-python, aiokafka) until SIGINT/SIGTERM.

    Topics, offsets and consumer groups are kq's own: `kq produce`, `kq
    consume -g` and `kq offsets` work on the same directory at the same time.

    Who gets in: local processes of root, of the user running kq serve, and
    of any user who could write the data directory itself (its owner), found
    by the connection's peer uid; every other connection is refused. SASL
    users (--add-user; PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, kept salted in
    DATA/serve/users.json, mode 0600) may log in from anywhere. Listening
    beyond loopback needs SASL users (and should use --tls-cert/--tls-key),
    or --insecure. Needs the Kafka extra: pip install 'kq-log\\[kafka]'.

    [bold]Examples[/bold]

      kq serve                                        [dim]# 127.0.0.1:9092[/dim]

      kcat -b 127.0.0.1:9092 -t demo -C -e            [dim]# in another shell[/dim]

      kq serve --add-user alice                       [dim]# asks for a password[/dim]

      kq serve --metrics 127.0.0.1:9308               [dim]# and /metrics for Prometheus[/dim]

      kq --data-dir /srv/kq serve --listen 0.0.0.0:9093 --advertise myhost:9093 --tls-cert cert.pem --tls-key key.pem

      kq -b myhost:9093 -X security.protocol=SASL_SSL -X sasl.mechanisms=SCRAM-SHA-256 -X sasl.username=alice -X sasl.password=... -X ssl.ca.location=ca.pem topic list
    """
    import errno
    import socket

    from ..serve import INSTALL_HINT, missing_dependency

    s = settings(ctx)
    if add_user is not None or remove_user is not None or list_users:
        _manage_users(s.data_dir("kq serve"), add_user, remove_user, list_users)
        return
    host, port = host_port(listen, "--listen")
    metrics_address = host_port(metrics, "--metrics") if metrics is not None else None
    if metrics_address is not None:
        from .metrics import warn_if_open

        warn_if_open(metrics_address[0])
    ssl_context = _tls_context(tls_cert, tls_key)
    adv_host, adv_port = host_port(advertise, "--advertise") if advertise else (host, None)
    if advertise is None and host in ("0.0.0.0", "::", ""):
        adv_host = socket.gethostname()
    missing = missing_dependency()
    if missing is not None:
        raise KqError(f"kq serve needs {missing} (the Kafka protocol libraries): {INSTALL_HINT}")
    import logging

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="kq: %(message)s", stream=sys.stderr)
    from ..serve.auth import Access, is_loopback

    data = s.data_dir("kq serve")
    access = Access(data.path, insecure=insecure)
    if not is_loopback(host) and not insecure:
        if not access.sasl_enabled():
            raise bad_parameter(
                f"listening on {host}, beyond loopback, needs SASL users (kq serve --add-user NAME) "
                "or --insecure (anyone who reaches the port reads and writes every topic)",
                "--listen",
            )
        if ssl_context is None:
            print(
                f"kq: warning: listening on {host} without TLS: records (and PLAIN passwords) cross the "
                "network in the clear; give --tls-cert and --tls-key",
                file=sys.stderr,
            )

    if insecure:
        print(
            "kq: warning: --insecure: anyone who reaches the port can read and write every topic",
            file=sys.stderr,
        )

    def ready(server) -> None:
        shown = f"[{host}]" if ":" in host else host
        print(f"kq: who may connect: {access.describe()}", file=sys.stderr)
        tls = " (TLS)" if ssl_context is not None else ""
        if server.metrics_url is not None:
            print(f"kq: metrics on {server.metrics_url}", file=sys.stderr)
        print(f"kq: serving {data.path}{tls} on {shown}:{server.port}", file=sys.stderr, flush=True)

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
            max_memory=max_memory * 1024 * 1024,
            sync=sync,
            ready=ready,
            access=access,
            ssl=ssl_context,
            metrics=metrics_address,
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise KqError(f"cannot listen on {listen}: the address is already in use") from None
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EACCES) or isinstance(exc, socket.gaierror):
            raise KqError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
        raise
    except KeyboardInterrupt:  # a second signal during shutdown
        return
