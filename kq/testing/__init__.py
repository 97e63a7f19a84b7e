"""kq as the Kafka of a test suite: a real broker per test, in the test's own process.

    >>> from kq.testing import KafkaBroker
    >>> with KafkaBroker() as broker:                 # doctest: +SKIP
    ...     broker.create_topic("orders", partitions=3)
    ...     produce_with_any_client(broker.bootstrap_servers)
    ...     [r.value for r in broker.records("orders")]

``KafkaBroker`` (``broker``) runs kq serve's event loop in a thread over a
fresh temporary directory; ``contents`` reads what a broker's topics hold
straight from that directory; ``pytest_plugin`` offers both as the fixtures
``kq_broker`` and ``kq_broker_session`` (the ``pytest11`` entry point).

Importing this package loads no protocol library and no Kafka client: the
server is imported when a broker starts.
"""

from __future__ import annotations

from .broker import KafkaBroker
from .contents import TopicRecord

__all__ = ["KafkaBroker", "TopicRecord"]
