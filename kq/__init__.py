"""kq: Kafka's model as a library and a command over a local data directory.

    >>> import kq, tempfile
    >>> data = kq.DataDir(tempfile.mkdtemp())
    >>> topic, _ = data.get_or_create_topic("demo")
    >>> topic.partition(0).append([b"hello", b"world"])
    (0, 1)
    >>> [r.value for r in topic.partition(0).read()]
    [b'hello', b'world']

The ``kq`` command talks to a backend (kq.backends): the same calls serve a
data directory and, with brokers, a Kafka cluster (``kq.open_backend(brokers=
"HOST:PORT")``, with the ``kafka`` extra).

    >>> from kq.backends import open_backend
    >>> with open_backend(data.path) as backend:
    ...     [(p.partition, p.start_offset, p.end_offset) for p in backend.describe_topic("demo").partitions]
    [(0, 0, 2)]

The library imports neither typer nor rich; the ``kq`` command (kq.cli) is a
thin layer over it. Names are imported on first use, so that ``import kq``
(and the command's start-up) stays cheap.
"""

from .lazy_exports import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "Record": "engine.batch",
    "RecordBatch": "engine.batch",
    "DataDir": "engine.datadir",
    "default_path": "engine.location",
    "CorruptFile": "errors",
    "CorruptLog": "errors",
    "DataDirError": "errors",
    "GroupNotFound": "errors",
    "InvalidName": "errors",
    "InvalidOffsetSpec": "errors",
    "KqError": "errors",
    "MessageTooLarge": "errors",
    "PartitionNotFound": "errors",
    "TopicExists": "errors",
    "TopicNotFound": "errors",
    "UnsupportedFormat": "errors",
    "UsageError": "errors",
    "Consumer": "consumer",
    "GroupConsumer": "groups.consumer",
    "Groups": "groups.store",
    "ShareConsumer": "share.consumer",
    "ShareNotFound": "errors",
    "LeaseNotHeld": "errors",
    "murmur2": "engine.partitioner",
    "partition_for_key": "engine.partitioner",
    "Cursor": "engine.cursor",
    "Partition": "engine.partition",
    "Producer": "producer",
    "Replicator": "ops.replicate",
    "Topic": "engine.topic",
    "open_backend": "backends",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
