"""kq's one exception hierarchy.

The CLI turns every ``KqError`` into ``kq: error: <message>`` and exits with
the error's ``exit_code``; library users catch ``KqError`` (or a subclass).
"""

from __future__ import annotations

import warnings

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3  # consume --timeout ended without delivering a message


class KqError(Exception):
    """Base class of every error kq raises on purpose."""

    exit_code = EXIT_ERROR


class UsageError(KqError):
    """The caller asked for something malformed (bad name, bad spec, bad range)."""

    exit_code = EXIT_USAGE


class UnsupportedByBackend(UsageError):
    """A command that only a data directory has (maintain, verify, ...) run against another backend."""

    def __init__(self, command: str, backend: str):
        super().__init__(f"{command} works on a kq data directory; it has no meaning on {backend}")
        self.command = command
        self.backend = backend


class InvalidName(UsageError):
    """A topic or group name that may not become a path."""


class InvalidOffsetSpec(UsageError):
    """An offset, timestamp or range specification that does not parse."""


class TopicNotFound(KqError):
    def __init__(self, topic: str):
        super().__init__(f"topic '{topic}' does not exist")
        self.topic = topic


class TopicDeleted(TopicNotFound):
    """The topic was deleted while this process was using it."""

    def __init__(self, topic: str):
        KqError.__init__(self, f"topic '{topic}' was deleted")
        self.topic = topic


class TopicExists(KqError):
    def __init__(self, topic: str):
        super().__init__(f"topic '{topic}' already exists")
        self.topic = topic


class PartitionNotFound(UsageError):
    def __init__(self, topic: str, partition: int, count: int):
        super().__init__(f"partition {partition} does not exist in topic '{topic}' (it has partitions 0..{count - 1})")


class GroupNotFound(KqError):
    def __init__(self, group: str):
        super().__init__(f"group '{group}' does not exist")
        self.group = group


class ShareNotFound(KqError):
    def __init__(self, share: str):
        super().__init__(f"share group '{share}' does not exist")
        self.share = share


class LeaseNotHeld(KqError):
    """Leases that cannot be settled: they expired and another worker took the records, or were settled."""

    def __init__(self, share: str, leases: list[str]):
        shown = ", ".join(leases[:5]) + (f" and {len(leases) - 5} more" if len(leases) > 5 else "")
        super().__init__(
            f"share group '{share}' does not hold {len(leases)} lease(s) ({shown}): "
            "they were settled already, or they expired and the records went to another worker"
        )
        self.share = share
        self.leases = leases


class GroupBusy(KqError):
    """A change that needs a group's members stopped (reset, delete) while some are live."""

    def __init__(self, group: str, topic: str | None, live: int):
        on = f" consuming '{topic}'" if topic else ""
        super().__init__(f"group '{group}' has {live} live member(s){on}; stop them first")
        self.group = group
        self.topic = topic
        self.live = live


class Diverged(KqError):
    """A replica holds records its source does not (replicate refuses to overwrite them)."""

    def __init__(self, replica: str, topic: str, partition: int, offset: int):
        super().__init__(
            f"replica {replica} diverges from the source in {topic}/{partition} at offset {offset}: "
            "it holds records the source does not"
        )
        self.replica = replica
        self.topic = topic
        self.partition = partition
        self.offset = offset


class ReplicaBusy(KqError):
    """Another replicate is writing to the same replica."""

    def __init__(self, replica: str):
        super().__init__(f"another kq replicate is writing to {replica}; try again when it ends")
        self.replica = replica


class NotAtBatchBoundary(KqError):
    """A log can only be cut where a batch starts (or at its end)."""

    def __init__(self, topic: str, partition: int, offset: int, end: int):
        super().__init__(f"{topic}/{partition}: offset {offset} is not at a batch boundary (end is {end})")
        self.topic = topic
        self.partition = partition
        self.offset = offset


class MessageTooLarge(KqError):
    """A single record that cannot fit in one batch."""


class CorruptLog(KqError):
    """Bytes on disk that fail their checksum or do not parse.

    Never raised for a torn tail (an incomplete last batch), which is the normal
    result of a crash and is skipped or truncated instead.
    """

    def __init__(self, path: str, position: int, reason: str):
        super().__init__(f"corrupt log {path} at byte {position}: {reason}")
        self.path = path
        self.position = position
        self.reason = reason


class CorruptFile(KqError):
    """A file kq reads that is not what kq writes there: metadata that does not
    parse, has the wrong shape or holds a number out of range; a name out of range."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"corrupt file {path}: {reason}")
        self.path = path
        self.reason = reason


class NotRegularFile(CorruptFile):
    """Something other than a regular file (a FIFO, a directory, a device, a
    symbolic link) where kq keeps a file: never opened for reading, which could hang."""

    def __init__(self, path: str, kind: str):
        KqError.__init__(self, f"{path} is a {kind}, not a regular file: kq keeps a file there")
        self.path = path
        self.kind = kind
        self.reason = f"a {kind}, not a regular file"


class ClusterError(KqError):
    """A Kafka cluster refused a request, or could not be reached; ``reason`` is the cluster's or the client's."""

    def __init__(self, cluster: str, reason: str):
        super().__init__(f"Kafka cluster {cluster}: {reason}")
        self.cluster = cluster
        self.reason = reason


class MissingDependency(KqError):
    """An optional library that a feature needs is not installed."""

    def __init__(self, feature: str, library: str, extra: str):
        super().__init__(
            f"{feature} needs {library}: pip install 'kq-log[{extra}]' (from a checkout: pip install -e '.[{extra}]')"
        )
        self.library = library


class TransactionError(KqError):
    """A transaction cannot go on: it was ended, aborted by a timeout, or its state is not what the call needs."""


class ProducerFenced(TransactionError):
    """A newer producer (a higher epoch) took over this transactional id, or the transaction was aborted
    under this one (a timeout, its lock found free): this producer may write nothing more."""


class TransactionalIdBusy(TransactionError):
    """Another live process holds the transactional id's lock."""


class UnsupportedFormat(KqError):
    """A data directory or file written by a newer kq."""


class DataDirError(KqError):
    """The data directory cannot be created, read or written."""


class KqWarning(UserWarning):
    """Something a user should hear about that does not stop the work (a skip, a repair).

    The library issues these through Python's ``warnings``; the ``kq`` command
    prints each one as ``kq: warning: …`` on stderr.
    """


def warn(message: str) -> None:
    warnings.warn(message, KqWarning, stacklevel=3)


class CodecUnavailable(KqError):
    """A compression codec whose Python library is not installed."""

    def __init__(self, codec: str, package: str):
        super().__init__(
            f"the {codec} codec needs the Python package {package}, which is not installed: "
            f"pip install 'kq-log[compression]' (or: pip install {package})"
        )
        self.codec = codec
        self.package = package
