"""Where things live in a data directory, readable without importing the engine.

Tab completion lists topics, groups and partitions on every key press, so
these functions only read directory entries: they never create, lock or
write anything, and they import nothing heavy.
"""

from __future__ import annotations

import json
import os

TOPICS_DIR = "topics"
GROUPS_DIR = "groups"
TMP_DIR = "tmp"
TOPIC_FILE = "topic.json"


def default_path() -> str:
    """``$KQ_DATA_DIR``, else ``$XDG_DATA_HOME/kq``, else ``~/.local/share/kq``."""
    env = os.environ.get("KQ_DATA_DIR")
    if env:
        return env
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, "kq")
    return os.path.join(os.path.expanduser("~"), ".local", "share", "kq")


def topic_names(data_path: str) -> list[str]:
    topics = os.path.join(data_path, TOPICS_DIR)
    try:
        names = os.listdir(topics)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if os.path.isfile(os.path.join(topics, n, TOPIC_FILE)))


def group_names(data_path: str) -> list[str]:
    groups = os.path.join(data_path, GROUPS_DIR)
    try:
        return sorted(n for n in os.listdir(groups) if os.path.isdir(os.path.join(groups, n)))
    except (FileNotFoundError, NotADirectoryError):
        return []


def partition_count(data_path: str, topic: str) -> int:
    """A topic's partition count from its metadata, or 0 if it cannot be read."""
    if "/" in topic or topic in ("", ".", ".."):
        return 0
    try:
        with open(os.path.join(data_path, TOPICS_DIR, topic, TOPIC_FILE), "rb") as f:
            count = json.loads(f.read())["partitions"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    return count if isinstance(count, int) else 0
