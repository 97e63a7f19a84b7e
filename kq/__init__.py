"""kq: Kafka's model as a library and a command over a local data directory.

    >>> import kq
    >>> data = kq.DataDir("/tmp/kq-demo")
    >>> topic, _ = data.get_or_create_topic("demo")
    >>> topic.partition(0).append([b"hello", b"world"])
    (0, 1)
    >>> [r.value for r in topic.partition(0).read()]
    [b'hello', b'world']

The library imports neither typer nor rich; the ``kq`` command (kq.cli) is a
thin layer over it.
"""

__version__ = "0.1.0"

from .batch import Record, RecordBatch
from .datadir import DataDir, default_path
from .errors import (
    CorruptLog,
    DataDirError,
    InvalidName,
    InvalidOffsetSpec,
    KqError,
    MessageTooLarge,
    PartitionNotFound,
    TopicExists,
    TopicNotFound,
    UnsupportedFormat,
    UsageError,
)
from .murmur2 import murmur2, partition_for_key
from .partition import Cursor, Partition
from .topic import Topic

__all__ = [
    "CorruptLog", "Cursor", "DataDir", "DataDirError", "InvalidName", "InvalidOffsetSpec",
    "KqError", "MessageTooLarge", "Partition", "PartitionNotFound", "Record", "RecordBatch",
    "Topic", "TopicExists", "TopicNotFound", "UnsupportedFormat", "UsageError",
    "default_path", "murmur2", "partition_for_key",
]
