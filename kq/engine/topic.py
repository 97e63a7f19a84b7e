"""A topic: its configuration and its partitions."""

from __future__ import annotations

import os
import random
import stat

from ..errors import CorruptFile, DataDirError, PartitionNotFound, UnsupportedFormat, UsageError
from .fileio import integer_field, read_metadata, shown
from .location import MAX_PARTITIONS, TOPIC_FILE
from .partition import DEFAULT_SEGMENT_BYTES, Partition
from .partitioner import partition_for_key

TOPIC_FORMAT = 1
MIN_SEGMENT_BYTES = 4096
MAX_HEADER_NAME = 1024  # characters of a deduplication header's name
MAX_TOPIC_ID = 64  # characters: kq writes 32 hex digits (a uuid4)
LARGEST = 2**63 - 1  # sizes and durations are signed 64-bit in Kafka; kq keeps them in that range

DEFAULT_CONFIG = {
    "segment_bytes": DEFAULT_SEGMENT_BYTES,
    "sync": False,
    "retention_ms": None,  # None: keep forever
    "retention_bytes": None,  # per partition; None: no size limit
    "cleanup": "delete",  # or "compact": keep the latest record per key
    "tombstone_retention_ms": 86_400_000,  # how long compaction keeps tombstones
    # Every producer drops a record whose id was produced within this long (kq.engine.dedup); None: none do.
    "dedup_window_ms": None,
    "dedup_header": None,  # the header whose value is a record's id; None: its key
    # The codec new batches are stored compressed with; "producer": a Kafka producer's (kq serve).
    # Absent from topic.json when "none", so that a topic without compression reads in any kq.
    "compression": "none",
}
COMPRESSION_CHOICES = ("none", "zstd", "lz4", "gzip", "snappy", "producer")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_config(config: dict) -> dict:
    """Return a complete, validated config (defaults filled in)."""
    unknown = set(config) - set(DEFAULT_CONFIG)
    if unknown:
        listing = ", ".join(sorted(map(str, unknown)))
        raise UsageError(f"unknown topic setting(s): {listing if len(listing) <= 80 else listing[:77] + '...'}")
    merged = {**DEFAULT_CONFIG, **config}
    seg = merged["segment_bytes"]
    if not _is_int(seg) or not MIN_SEGMENT_BYTES <= seg <= LARGEST:
        raise UsageError(f"segment size must be at least {MIN_SEGMENT_BYTES} bytes, not {shown(seg)}")
    if not isinstance(merged["sync"], bool):
        raise UsageError("sync must be true or false")
    for key, what in (
        ("retention_ms", "retention"),
        ("retention_bytes", "retention size"),
        ("tombstone_retention_ms", "tombstone retention"),
    ):
        value = merged[key]
        if value is not None and (not _is_int(value) or not 0 <= value <= LARGEST):
            raise UsageError(f"{what} must be a positive amount up to {LARGEST} or none, not {shown(value)}")
    window = merged["dedup_window_ms"]
    if window is not None and (not _is_int(window) or not 0 < window <= LARGEST):
        raise UsageError(
            f"deduplication window must be a positive duration up to {LARGEST} ms or none, not {shown(window)}"
        )
    header = merged["dedup_header"]
    if header is not None and (not isinstance(header, str) or not 0 < len(header) <= MAX_HEADER_NAME):
        raise UsageError(f"deduplication header must be a header name or none, not {shown(header)}")
    if merged["tombstone_retention_ms"] is None:
        raise UsageError("tombstone retention needs a duration (0 removes tombstones at the next compaction)")
    if merged["cleanup"] not in ("delete", "compact"):
        raise UsageError(f"cleanup must be delete or compact, not {shown(merged['cleanup'])}")
    if merged["compression"] not in COMPRESSION_CHOICES:
        raise UsageError(
            f"compression must be one of {', '.join(COMPRESSION_CHOICES)}, not {shown(merged['compression'])}"
        )
    return merged


# Settings newer kqs added, written to topic.json only when set: an older kq refuses a
# topic.json with a setting it does not know, which is right for a topic that has one
# (it would produce without deduplicating, or misread compressed batches) and wrong for
# every other topic.
OMITTED_WHEN_UNSET = {"dedup_window_ms": None, "dedup_header": None, "compression": "none"}


def stored_config(config: dict) -> dict:
    """The config as topic.json keeps it: the settings of OMITTED_WHEN_UNSET only if set."""
    return {k: v for k, v in config.items() if not (k in OMITTED_WHEN_UNSET and v == OMITTED_WHEN_UNSET[k])}


def check_inside(path: str, root: str) -> str:
    """Return ``path`` if it resolves inside the data directory ``root``; raise if a link leads out.

    Someone who can write in a shared data directory could replace a topic,
    partition or group directory with a symbolic link, so that kq reads,
    truncates or appends to files elsewhere (another user's, say). Links that
    stay inside the data directory, and a data directory that is itself
    reached through a link, are fine.
    """
    if _plainly_inside(path, root):
        return path
    real, top = os.path.realpath(path), os.path.realpath(root)
    if os.path.commonpath([real, top]) != top:
        raise DataDirError(
            f"{path} leads out of the data directory {root} through a symbolic link "
            f"(to {real}); kq does not follow links out of its data directory"
        )
    return path


def _plainly_inside(path: str, root: str) -> bool:
    """Whether ``path`` names ``root``'s entries down from it with no link among them (nor ``..``):
    then it is inside, told by an ``lstat`` a step rather than by resolving both in full
    (``kq metrics`` asks for every topic and group of a large directory)."""
    prefix = root.rstrip(os.sep) + os.sep
    if not path.startswith(prefix):
        return False
    parts = path[len(prefix) :].split(os.sep)
    if any(part in ("", ".", "..") for part in parts):
        return False
    here = prefix[:-1]
    for part in parts:
        here = here + os.sep + part
        try:
            if stat.S_ISLNK(os.lstat(here).st_mode):
                return False
        except FileNotFoundError:
            return True  # what is not there yet is made below the last step found, inside
        except OSError:
            return False
    return True


def _retention_on_roll(partition: Partition) -> None:
    """Retention is cheap to apply as a segment closes; skipped if `kq maintain` is busy with the partition."""
    from .maintain import apply_retention

    apply_retention(partition, blocking=False)


class Topic:
    def __init__(self, name: str, path: str, meta: dict, root: str | None = None):
        self.name = name
        self.path = path
        self.root = root  # the data directory: partition directories must resolve inside it
        self.id: str | None = meta.get("id")  # None: a topic made by a kq that gave no ids
        self.partition_count: int = meta["partitions"]
        self.config: dict = meta["config"]
        # Kafka topic configs kq keeps for Kafka clients without acting on them (kq serve's
        # CreateTopics and AlterConfigs: compression.type, min.insync.replicas, ...)
        self.kafka_config: dict[str, str] = meta.get("kafka_config", {})
        self._partitions: dict[int, Partition] = {}
        # Start at a random partition so that many short-lived producers spread out.
        self._next_partition = random.randrange(self.partition_count)

    @staticmethod
    def load_meta(path: str) -> dict:
        """The checked contents of a topic's ``topic.json`` (FileNotFoundError if it has none).

        Every field is checked for type and range before use: a partition
        count decides how many directories kq opens and how long a list it
        builds, and the config is what ``topic create`` would accept.
        """
        file = os.path.join(path, TOPIC_FILE)
        meta = read_metadata(file)
        version = meta.get("format", TOPIC_FORMAT)
        if type(version) is not int or version < 1:
            raise CorruptFile(file, f"format is {shown(version)}, not a version number")
        if version > TOPIC_FORMAT:
            raise UnsupportedFormat(
                f"topic at {path} has format {shown(version)} ({file}), newer than this kq "
                f"understands ({TOPIC_FORMAT}); upgrade kq"
            )
        count = integer_field(meta, "partitions", file, 1, MAX_PARTITIONS)
        topic_id = meta.get("id")
        if topic_id is not None and not (isinstance(topic_id, str) and 0 < len(topic_id) <= MAX_TOPIC_ID):
            raise CorruptFile(file, f"id is {shown(topic_id)}, not a topic id")
        config = meta.get("config", {})
        if not isinstance(config, dict):
            raise CorruptFile(file, f"config is {shown(config)}, not an object")
        try:
            config = check_config(config)
        except UsageError as exc:
            raise CorruptFile(file, str(exc)) from None
        kafka_config = meta.get("kafka_config", {})
        if not (
            isinstance(kafka_config, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in kafka_config.items())
        ):
            raise CorruptFile(file, f"kafka_config is {shown(kafka_config)}, not an object of strings")
        return {**meta, "format": version, "partitions": count, "config": config, "kafka_config": kafka_config}

    def __repr__(self) -> str:
        return f"Topic({self.name!r}, partitions={self.partition_count})"

    def partition(self, number: int) -> Partition:
        if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number < self.partition_count:
            raise PartitionNotFound(self.name, number, self.partition_count)
        p = self._partitions.get(number)
        if p is None:
            path = os.path.join(self.path, str(number))
            if self.root is not None:
                check_inside(path, self.root)
            p = Partition(
                self.name,
                number,
                path,
                segment_bytes=self.config["segment_bytes"],
                sync=self.config["sync"],
                config=self.config,
                on_roll=_retention_on_roll if self.has_retention else None,
            )
            self._partitions[number] = p
        return p

    @property
    def has_retention(self) -> bool:
        return self.config["retention_ms"] is not None or self.config["retention_bytes"] is not None

    def sync_every_batch(self) -> None:
        """fsync every batch appended through this object (``produce --sync``), whatever the topic's setting."""
        self.config["sync"] = True
        for p in self._partitions.values():
            p.sync = True

    def partitions(self) -> list[Partition]:
        return [self.partition(i) for i in range(self.partition_count)]

    def partition_for_key(self, key: bytes) -> int:
        """Kafka's default partitioner: murmur2 of the key."""
        return partition_for_key(key, self.partition_count)

    def next_partition(self) -> int:
        """The partition after the last one this returned, round robin (it may grow meanwhile)."""
        number = self._next_partition % self.partition_count
        self._next_partition = number + 1
        return number

    def close(self) -> None:
        for p in self._partitions.values():
            p.close()
