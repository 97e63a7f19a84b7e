"""kq serve: the Kafka wire protocol over a kq data directory.

Any Kafka client (librdkafka and confluent-kafka, kcat, kafka-python,
aiokafka) produces to and consumes from the directory, groups included,
while ``kq produce`` / ``kq consume`` keep working on the same files.

Layout, top down:

    server.py       asyncio: connections, frames, one request at a time per connection
    broker.py       each request to its handler (after the login check); Metadata, ApiVersions,
                    FindCoordinator, ListOffsets
    produce.py      Produce and InitProducerId: batches checked, packed and appended
    fetch.py        Fetch, and the long poll (Waiters) until records come
    coordinator.py  consumer groups: JoinGroup, SyncGroup, Heartbeat, LeaveGroup, rebalance timing
    group_state.py  a group's members and its state machine (Empty, PreparingRebalance, ..., Dead)
    group_claims.py the server's seat in kq's file-lock groups: its share of partitions, held for Kafka members
    group_offsets.py OffsetCommit, OffsetFetch: kq's committed offsets, refused from outside a live group
    group_admin.py  ListGroups, DescribeGroups, DeleteGroups
    auth.py         who is let in, and each connection's login (SaslHandshake, SaslAuthenticate)
    peer.py         the uid owning a local connection's other end
    sasl.py         SASL users (DATA/serve/users.json) and PLAIN and SCRAM-SHA-256/512
    admin.py        CreateTopics, DeleteTopics, CreatePartitions, DeleteRecords
    config_admin.py DescribeConfigs, AlterConfigs, IncrementalAlterConfigs
    topic_configs.py Kafka's topic configs: names, types, defaults, valid values
    cluster_info.py a one-broker cluster's answers: log dirs, quorum, leaders, reassignments, ACLs
    producers.py    the idempotent producer's ids and sequence numbers
    transactions.py the transaction coordinator: InitProducerId with a transactional id, AddPartitionsToTxn,
                    AddOffsetsToTxn, TxnOffsetCommit, EndTxn, timeouts, Describe/ListTransactions
    records.py      Kafka record batches to kq's columns (the hot path in)
    fetch_records.py kq's batches as Kafka record batches (the hot path out)
    compression.py  the batch codecs: bounded decompression, re-compression
    wire.py         which APIs at which versions; request and response framing (kafka.protocol)
    storage.py      every call into kq's engine

The protocol libraries (kafka-python 3, crc32c and the codecs) are the
optional extra ``kafka``; nothing else in kq imports them.
"""

from __future__ import annotations

INSTALL_HINT = "pip install 'kq-log[kafka]' (from a checkout: pip install -e '.[kafka]')"
# (module, what it is for): the first missing one is named in the error.
REQUIRED = (("kafka.protocol", "kafka-python 3"), ("crc32c", "crc32c"))


def missing_dependency() -> str | None:
    """The name of a required library that is not installed, or None."""
    from importlib import import_module

    for module, name in REQUIRED:
        try:
            import_module(module)
        except ImportError:
            return name
    try:
        from kafka.protocol.metadata import ApiVersionsRequest  # noqa: F401  (kafka-python 3's layout)
    except ImportError:
        return "kafka-python 3"
    return None


def serve(
    data_dir: str | None,
    host: str,
    port: int,
    advertised_host: str,
    advertised_port: int | None,
    auto_create: bool = True,
    default_partitions: int | None = None,
    max_request_bytes: int | None = None,
    max_memory: int | None = None,
    sync: bool = False,
    ready=None,
    access=None,
    ssl=None,
    metrics: tuple[str, int] | None = None,
) -> None:
    """Serve ``data_dir`` until SIGINT/SIGTERM; ``ready(server)`` is called once listening.

    ``access`` (a ``kq.serve.auth.Access``) says who is let in (None: everyone);
    ``ssl`` is an ``ssl.SSLContext`` for TLS. ``metrics``: (host, port) to serve
    ``/metrics`` on over HTTP (kq metrics's, and each API's requests and
    latencies); its URL is ``server.metrics_url`` by the time ``ready`` is called.
    """
    import asyncio

    from .broker import Broker
    from .server import DEFAULT_MAX_MEMORY, DEFAULT_MAX_REQUEST_BYTES, Server
    from .storage import Storage

    storage = Storage(data_dir, sync=sync)
    storage.ensure()
    broker = Broker(
        storage,
        advertised_host,
        advertised_port or port,
        auto_create=auto_create,
        default_partitions=default_partitions,
        listen=(host, port),
        max_request_bytes=max_request_bytes or DEFAULT_MAX_REQUEST_BYTES,
    )
    server = Server(
        broker,
        host,
        port,
        max_request_bytes or DEFAULT_MAX_REQUEST_BYTES,
        max_memory or DEFAULT_MAX_MEMORY,
        access=access,
        ssl=ssl,
    )

    metrics_server = None if metrics is None else _metrics_server(storage.data.path, broker, metrics)
    if metrics_server is not None:
        server.metrics_url = metrics_server.url

    def on_ready(s: Server) -> None:
        broker.listen = (host, s.port)
        if advertised_port is None:  # port 0: advertise the one the system chose
            broker.port = s.port
        if ready is not None:
            ready(s)

    try:
        asyncio.run(server.serve_until_stopped(on_ready))
    finally:
        if metrics_server is not None:
            metrics_server.close()


def _metrics_server(data_path: str, broker, address: tuple[str, int]):
    """``/metrics`` on ``address``: the directory's snapshot, and the broker's requests by API."""
    import errno
    import time

    from ..backends.local import LocalBackend
    from ..errors import KqError
    from ..ops.metrics import Family, Histogram, render, snapshot_families
    from ..ops.metrics_server import MetricsServer
    from ..ops.observe import snapshot

    broker.latencies = Histogram()
    backend = LocalBackend(data_path)

    def body() -> bytes:
        started = time.perf_counter()
        snap = _with_kafka_members(snapshot(backend), broker.coordinator.groups)
        families = snapshot_families(snap, time.perf_counter() - started)
        requests = Family("kq_serve_requests_total", "counter", "Requests kq serve answered, by Kafka API")
        latency = Family("kq_serve_request_duration_seconds", "histogram", "Time to answer a request, by Kafka API")
        broker.latencies.families(requests, latency, "api")
        return render([*families, requests, latency])

    shown = f"[{address[0]}]:{address[1]}" if ":" in address[0] else f"{address[0]}:{address[1]}"
    try:
        return MetricsServer(address[0], address[1], body).start()
    except OSError as exc:
        why = "the address is already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise KqError(f"cannot serve metrics on {shown}: {why}") from None


def _with_kafka_members(snap, groups: dict):
    """``snap`` with each group's Kafka members counted among its members, in place of the server's
    seat in kq's group (one kq member, whatever number of Kafka clients it stands for)."""
    from dataclasses import replace

    for _ in range(3):
        try:  # copies taken at once, under the GIL: the event loop changes these meanwhile
            live = [(g.id, list(g.members), [m.id for m in list(g.kq_members.values())]) for g in list(groups.values())]
            break
        except RuntimeError:  # changed size while copied: look again
            continue
    else:
        return snap
    found = dict(snap.groups)
    for group_id, kafka_members, seats in live:
        state = found.get(group_id)
        if state is not None:
            members = (set(state.members) - set(seats)) | set(kafka_members)
            found[group_id] = replace(state, members=tuple(sorted(members)))
    return replace(snap, groups=found)
