"""kq serve: the Kafka wire protocol over a kq data directory.

Any Kafka client (librdkafka and confluent-kafka, kcat, kafka-python,
aiokafka) produces to and consumes from the directory, groups included,
while ``kq produce`` / ``kq consume`` keep working on the same files.

Layout, top down:

    server.py       asyncio: connections, frames, one request at a time per connection
    broker.py       one handler per API for the data path (Produce, Fetch, ListOffsets, Metadata)
    coordinator.py  consumer groups, stored and fenced as kq groups
    admin.py        CreateTopics, DeleteTopics, DescribeConfigs
    producers.py    the idempotent producer's ids and sequence numbers
    records.py      Kafka record batches to and from kq's columns (the hot paths)
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
    max_request_bytes: int | None = None,
    max_memory: int | None = None,
    sync: bool = False,
    ready=None,
) -> None:
    """Serve ``data_dir`` until SIGINT/SIGTERM; ``ready(server)`` is called once listening."""
    import asyncio

    from .broker import Broker
    from .server import DEFAULT_MAX_MEMORY, DEFAULT_MAX_REQUEST_BYTES, Server
    from .storage import Storage

    storage = Storage(data_dir, sync=sync)
    storage.ensure()
    broker = Broker(storage, advertised_host, advertised_port or port, auto_create=auto_create)
    server = Server(
        broker, host, port, max_request_bytes or DEFAULT_MAX_REQUEST_BYTES, max_memory or DEFAULT_MAX_MEMORY
    )

    def on_ready(s: Server) -> None:
        if advertised_port is None:  # port 0: advertise the one the system chose
            broker.port = s.port
        if ready is not None:
            ready(s)

    asyncio.run(server.serve_until_stopped(on_ready))
