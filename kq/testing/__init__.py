"""kq as the Kafka of a test suite: a real broker per test, in the test's own process.

    with KafkaBroker() as broker:            # or: async with KafkaBroker() as broker:
        broker.create_topic("orders", partitions=3)
        ...  # any Kafka client, bootstrap servers broker.bootstrap_servers
        assert [r.value for r in broker.records("orders")] == [b"..."]

``broker``: ``KafkaBroker``, kq serve's event loop in a thread over a fresh
temporary directory; ``contents``: what a broker's topics hold, read
straight from that directory; ``pytest_plugin``: the fixtures ``kq_broker``
and ``kq_broker_session`` (registered through the ``pytest11`` entry point).

Importing this package (or the plugin) loads no protocol library, no Kafka
client and no part of kq serve: the names below are imported on first use,
and the server when a broker starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy_exports import lazy_exports

if TYPE_CHECKING:
    from .broker import KafkaBroker
    from .contents import TopicRecord

__all__ = ["KafkaBroker", "TopicRecord"]

_EXPORTS = {"KafkaBroker": "broker", "TopicRecord": "contents"}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
