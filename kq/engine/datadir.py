"""The data directory: its format version and the topics in it.

Layout (docs/FORMAT.md)::

    DATA/kq.json                       {"format": 1}
    DATA/topics/NAME/topic.json        partitions and config
    DATA/topics/NAME/P/*.log|*.index   segments of partition P
    DATA/tmp/                          topics being created or deleted
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid

from ..errors import CorruptFile, DataDirError, TopicExists, TopicNotFound, UnsupportedFormat, UsageError
from .compression import CODEC_IDS, check_available
from .fileio import atomic_write, fsync_dir, make_dirs, read_metadata, shown
from .location import (
    GROUPS_DIR,
    MAX_PARTITIONS,
    TMP_DIR,
    TOPIC_FILE,
    TOPICS_DIR,
    default_path,
    group_names,
    topic_names,
)
from .names import check_name
from .partition import init_partition
from .topic import TOPIC_FORMAT, Topic, check_config, check_inside, stored_config

FORMAT_FILE = "kq.json"
FORMAT_VERSION = 4  # the newest format this kq reads and writes (docs/FORMAT.md)
CREATED_FORMAT = 1  # a new directory's: every kq opens it until it holds what needs more
NULL_HEADER_FORMAT = 2  # some record has a header whose value is null
COMPRESSED_FORMAT = 3  # some batch's payload is compressed (its attributes' bits 3-5)
TRANSACTION_FORMAT = 4  # transactional batches, control batches (markers), txn.open and .txnindex files


def read_format(root: str) -> int | None:
    """The format version of the data directory at ``root`` (None: not a data directory yet)."""
    path = os.path.join(root, FORMAT_FILE)
    try:
        meta = read_metadata(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise DataDirError(f"data directory {root} is not a directory") from None
    version = meta.get("format")
    if type(version) is not int or version < 1:
        raise CorruptFile(path, f"format is {shown(version)}, not a version number: not a kq format file")
    if version > FORMAT_VERSION:
        raise UnsupportedFormat(
            f"data directory {root} has format {shown(version)} ({path}), newer than this kq "
            f"understands ({FORMAT_VERSION}); upgrade kq"
        )
    return version


_raising_format = threading.Lock()  # (atomic_write's temporary file is per process, not per thread)


def require_format(root: str, version: int) -> None:
    """Raise the format of the data directory at ``root`` to ``version`` unless it is there already.

    Called before writing what an older kq would misread, so that such a kq
    refuses the whole directory ("newer than this kq understands") instead.
    A format is never lowered; two processes raising it at once write the same file.
    """
    with _raising_format:
        current = read_format(root)
        if current is not None and current < version:
            atomic_write(os.path.join(root, FORMAT_FILE), json.dumps({"format": version}).encode() + b"\n")


class DataDir:
    """A kq data directory. Reading never creates it; writing creates it (mode 0700)."""

    def __init__(self, path: str | None = None):
        self.path = os.path.abspath(path or default_path())
        self.topics_path = os.path.join(self.path, TOPICS_DIR)
        self.groups_path = os.path.join(self.path, GROUPS_DIR)
        self.tmp_path = os.path.join(self.path, TMP_DIR)
        self._format_checked = False
        self.format = 0  # the directory's format version, once exists() has read it

    def __repr__(self) -> str:
        return f"DataDir({self.path!r})"

    # ------------------------------------------------------------------ format

    def exists(self) -> bool:
        """True if the directory holds kq data (checking its format version)."""
        if self._format_checked:
            return True
        version = read_format(self.path)
        if version is None:
            return False
        self.format = version
        self._format_checked = True
        return True

    def ensure(self, sync: bool = True) -> None:
        """Create the directory and its format file if needed (for writers).

        ``sync=False``: the format file is not fsynced (a scratch directory,
        such as a test's broker's, that is removed after use).
        """
        if self.exists():
            return
        try:
            make_dirs(self.path)
            for sub in (self.topics_path, self.tmp_path):
                make_dirs(sub)
            if not os.path.exists(os.path.join(self.path, FORMAT_FILE)):
                atomic_write(
                    os.path.join(self.path, FORMAT_FILE),
                    json.dumps({"format": CREATED_FORMAT}).encode() + b"\n",
                    sync=sync,
                )
        except PermissionError as exc:
            raise DataDirError(f"cannot create data directory {self.path}: {exc.strerror}") from None
        if not os.access(self.path, os.W_OK):
            raise DataDirError(f"data directory {self.path} is not writable")
        self.exists()

    def transactions(self, commit_offset=None, sync: bool = False):
        """The directory's transaction store (kq.engine.transactions); ``commit_offset`` stores group offsets."""
        from .transactions import TransactionStore

        return TransactionStore(self.path, commit_offset=commit_offset, open_partition=self._partition_of, sync=sync)

    def _partition_of(self, topic: str, number: int):
        return self.topic(topic).partition(number)

    # ------------------------------------------------------------------ topics

    def topic_names(self) -> list[str]:
        return topic_names(self.path) if self.exists() else []

    def topic(self, name: str) -> Topic:
        check_name(name)
        if not self.exists():
            raise TopicNotFound(name)
        path = check_inside(os.path.join(self.topics_path, name), self.path)
        try:
            meta = Topic.load_meta(path)
        except FileNotFoundError:
            if not os.path.isdir(path):
                raise TopicNotFound(name) from None
            # Topics appear and go as whole directories (renamed in and out),
            # so a topic directory without its metadata is damage, not a race.
            raise CorruptFile(os.path.join(path, TOPIC_FILE), "missing (the topic directory has no metadata)") from None
        return Topic(name, path, meta, root=self.path)

    def create_topic(
        self,
        name: str,
        partitions: int = 1,
        config: dict | None = None,
        topic_id: str | None = None,
        kafka_config: dict[str, str] | None = None,
    ) -> Topic:
        """Create a topic atomically: it appears whole (all partitions) or not at all.

        Every topic gets an id (a replica keeps its source's, ``topic_id``):
        committed offsets carry it, so a group never resumes a deleted topic's
        offsets in a new topic of the same name.
        """
        check_name(name)
        if not isinstance(partitions, int) or isinstance(partitions, bool) or not 1 <= partitions <= MAX_PARTITIONS:
            raise UsageError(f"partitions must be between 1 and {MAX_PARTITIONS}, not {partitions}")
        config = check_config(config or {})
        self.ensure()
        self._allow_compression(config)
        final = os.path.join(self.topics_path, name)
        if os.path.exists(final):
            raise TopicExists(name)
        staging = os.path.join(self.tmp_path, f"create-{uuid.uuid4().hex}")
        make_dirs(staging)
        try:
            meta = {
                "format": TOPIC_FORMAT,
                "name": name,
                "id": topic_id or uuid.uuid4().hex,
                "partitions": partitions,
                "config": stored_config(config),
            }
            if kafka_config:
                meta["kafka_config"] = dict(kafka_config)
            atomic_write(
                os.path.join(staging, TOPIC_FILE), json.dumps(meta, indent=2).encode() + b"\n", sync=config["sync"]
            )
            for number in range(partitions):
                init_partition(os.path.join(staging, str(number)), sync=config["sync"])
            try:
                # rename(2) of a directory onto an existing non-empty one fails:
                # of two racing creators exactly one wins.
                os.rename(staging, final)
            except OSError as exc:
                if os.path.isdir(final):
                    raise TopicExists(name) from None
                raise exc
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_dir(self.topics_path)
        return self.topic(name)

    def alter_topic(self, name: str, changes: dict, kafka_config: dict[str, str] | None = None) -> Topic:
        """Change a topic's config (atomically replacing topic.json); ``kafka_config``, if given,
        replaces the Kafka configs kept with the topic."""
        t = self.topic(name)
        config = check_config({**t.config, **changes})
        self._allow_compression(config)
        meta = {"format": TOPIC_FORMAT, "name": name, "partitions": t.partition_count, "config": stored_config(config)}
        if t.id is not None:
            meta["id"] = t.id
        kept = t.kafka_config if kafka_config is None else kafka_config
        if kept:
            meta["kafka_config"] = dict(kept)
        atomic_write(os.path.join(t.path, TOPIC_FILE), json.dumps(meta, indent=2).encode() + b"\n")
        return self.topic(name)

    def _allow_compression(self, config: dict) -> None:
        """A topic set to compress: its codec's library must be there, and the directory format 3
        before topic.json names the setting (an older kq refuses the directory, not the topic)."""
        if config["compression"] == "none":
            return
        kind = CODEC_IDS.get(config["compression"])
        if kind is not None:
            check_available(kind)
        require_format(self.path, COMPRESSED_FORMAT)

    def add_partitions(self, topic: Topic, count: int) -> None:
        """Grow ``topic`` to ``count`` partitions (Kafka's partition increase); the new ones start empty.

        As in Kafka, keys may map to other partitions afterwards. The new
        partition directories are made before topic.json names them, so a
        crash leaves the topic as it was, with unused empty directories that
        the next growth takes over. Processes that opened the topic before
        keep its old partitions until they open it again.
        """
        if count <= topic.partition_count:
            return
        if count > MAX_PARTITIONS:
            raise UsageError(f"partitions must be between 1 and {MAX_PARTITIONS}, not {count}")
        for number in range(topic.partition_count, count):
            path = check_inside(os.path.join(topic.path, str(number)), self.path)
            try:
                init_partition(path, sync=topic.config["sync"])
            except FileExistsError:
                pass  # made by a growth that crashed before topic.json named it
        meta = {"format": TOPIC_FORMAT, "name": topic.name, "partitions": count, "config": stored_config(topic.config)}
        if topic.id is not None:
            meta["id"] = topic.id
        if topic.kafka_config:
            meta["kafka_config"] = dict(topic.kafka_config)
        atomic_write(os.path.join(topic.path, TOPIC_FILE), json.dumps(meta, indent=2).encode() + b"\n")
        topic.partition_count = count

    def get_or_create_topic(self, name: str, partitions: int = 1) -> tuple[Topic, bool]:
        """Open a topic, creating it if missing. Returns (topic, created)."""
        try:
            return self.topic(name), False
        except TopicNotFound:
            pass
        try:
            return self.create_topic(name, partitions), True
        except TopicExists:  # another process created it first
            return self.topic(name), False

    def delete_topic(self, name: str) -> None:
        check_name(name)
        path = os.path.join(self.topics_path, name)
        # Any topic directory, even one whose metadata is damaged: deleting is
        # how a user gets rid of a topic that `topic list` reports unreadable.
        if not self.exists() or name not in topic_names(self.path):
            raise TopicNotFound(name)
        # Rename first so the topic disappears at once, then remove at leisure.
        doomed = os.path.join(self.tmp_path, f"delete-{uuid.uuid4().hex}")
        make_dirs(self.tmp_path)
        try:
            os.rename(path, doomed)
        except FileNotFoundError:
            raise TopicNotFound(name) from None
        fsync_dir(self.topics_path)
        shutil.rmtree(doomed, ignore_errors=True)
        # Its groups' committed offsets go with it, as Kafka deletes a deleted
        # topic's offsets: a new topic of the same name starts afresh.
        for group in group_names(self.path):
            stale = os.path.join(self.groups_path, group, name)
            if os.path.isdir(stale) and not os.path.islink(stale):
                gone = os.path.join(self.tmp_path, f"delete-offsets-{uuid.uuid4().hex}")
                try:
                    os.rename(stale, gone)
                except OSError:
                    continue  # removed meanwhile; a member's later commit is ignored by its topic id
                shutil.rmtree(gone, ignore_errors=True)
