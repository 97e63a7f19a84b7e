"""Where things live in a data directory, readable without importing the engine.

Tab completion lists topics, groups and partitions on every key press, so
these functions only read directory entries and one small file: they never
create, lock or write anything, never block on what they find, and import
nothing heavy.
"""

from __future__ import annotations

import os

from ..errors import InvalidName, KqError
from .names import check_name

TOPICS_DIR = "topics"
GROUPS_DIR = "groups"
SHARES_DIR = "shares"
TMP_DIR = "tmp"
TOPIC_FILE = "topic.json"
# Partition directories are 0 .. partitions-1. The cap keeps a damaged or
# crafted topic.json from making kq build a list the size of its number.
MAX_PARTITIONS = 10_000


def default_path() -> str:
    """``$KQ_DATA_DIR``, else ``$XDG_DATA_HOME/kq``, else ``~/.local/share/kq``."""
    env = os.environ.get("KQ_DATA_DIR")
    if env:
        return env
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, "kq")
    return os.path.join(os.path.expanduser("~"), ".local", "share", "kq")


def is_name(name: str, kind: str) -> bool:
    """Whether ``name`` is a valid name of a ``kind`` (topic, group, share group)."""
    try:
        check_name(name, kind)
    except InvalidName:
        return False
    return True


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a link kq may not follow to its end: listed, and opening it says why
        return True


def named_directories(parent: str, kind: str) -> list[str]:
    """Names of the directories in ``parent`` that could be kq's (valid names), sorted."""
    try:
        with os.scandir(parent) as entries:
            return sorted(e.name for e in entries if is_name(e.name, kind) and _is_dir(e))
    except (FileNotFoundError, NotADirectoryError):
        return []


def topic_names(data_path: str) -> list[str]:
    """Every topic directory, readable or not (opening one reports what is wrong with it)."""
    return named_directories(os.path.join(data_path, TOPICS_DIR), "topic")


def group_names(data_path: str) -> list[str]:
    return named_directories(os.path.join(data_path, GROUPS_DIR), "group")


def share_names(data_path: str) -> list[str]:
    return named_directories(os.path.join(data_path, SHARES_DIR), "share group")


def partition_count(data_path: str, topic: str) -> int:
    """A topic's partition count from its metadata, or 0 if it cannot be read."""
    from .fileio import read_metadata

    if not is_name(topic, "topic"):
        return 0
    try:
        count = read_metadata(os.path.join(data_path, TOPICS_DIR, topic, TOPIC_FILE))["partitions"]
    except (OSError, KqError, KeyError):
        return 0
    return count if type(count) is int and 0 < count <= MAX_PARTITIONS else 0
