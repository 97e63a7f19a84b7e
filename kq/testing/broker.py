"""``KafkaBroker``: kq serve's event loop in a thread of the test process, over a temporary directory.

In the test's own process because that is what makes a broker per test
cheap: starting takes a few milliseconds (a socket bound, two tasks made),
where a process costs the interpreter's start and kq serve's imports each
time (docs/BENCHMARKS.md, "kq as the Kafka for tests"). Clients written in
Python share the GIL with it, which costs them little: the broker's work per
request is small next to the client's own.

It listens on 127.0.0.1, port 0 (the system picks a free one, so parallel
workers never clash), and lets in what kq serve lets in by default: local
processes of the user running it, so the test's own clients need no setting.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

from . import contents

READY_SECONDS = 30.0  # a start that has not finished by then has failed


class KafkaBroker:
    """A Kafka broker on a fresh, empty data directory, from ``start()`` (or ``with``) to ``stop()``.

    ``data_dir``: serve that directory, and keep it afterwards (default: a new
    temporary directory, removed by ``stop()``). ``auto_create``: topics
    that clients name are created (as Kafka's ``auto.create.topics.enable``);
    ``partitions``: how many such a topic gets.
    """

    def __init__(self, data_dir: str | None = None, auto_create: bool = True, partitions: int = 1):
        self._given_dir = data_dir
        self.auto_create = auto_create
        self.partitions = partitions
        self.data_dir: str = ""
        self.host = "127.0.0.1"
        self.port = 0
        self._thread: threading.Thread | None = None
        self._loop: Any = None
        self._stop: Any = None  # asyncio.Event of the broker's loop
        self._server: Any = None
        self._failure: BaseException | None = None

    # ------------------------------------------------------------------ life

    @property
    def bootstrap_servers(self) -> str:
        """For ``bootstrap.servers`` (librdkafka) or ``bootstrap_servers`` (kafka-python, aiokafka)."""
        if self._thread is None:
            raise RuntimeError("the broker is not running (start() it, or use it in a with block)")
        return f"{self.host}:{self.port}"

    def start(self) -> KafkaBroker:
        """Listen, and return once clients can connect."""
        if self._thread is not None:
            raise RuntimeError("the broker is already running")
        _import_the_server()
        if self._given_dir is None:
            self.data_dir = tempfile.mkdtemp(prefix="kq-broker-")
        else:
            self.data_dir = os.path.abspath(self._given_dir)
        ready = threading.Event()
        self._failure = None
        self._thread = threading.Thread(target=self._run, args=(ready,), name="kq-broker", daemon=True)
        self._thread.start()
        if not ready.wait(READY_SECONDS) or self._failure is not None:
            failure = self._failure
            self.stop()
            if failure is not None:
                raise failure
            raise RuntimeError(f"the broker was not ready within {READY_SECONDS:.0f} s")
        return self

    def stop(self) -> None:
        """Close every connection, stop the thread, and remove the directory if it was made for this broker."""
        thread, self._thread = self._thread, None
        if thread is not None:
            loop, stop = self._loop, self._stop
            if loop is not None and stop is not None and thread.is_alive():
                try:
                    loop.call_soon_threadsafe(stop.set)
                except RuntimeError:  # the loop has already closed
                    pass
            thread.join()
            self._loop = self._stop = self._server = None
        if self._given_dir is None and self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # Starting and stopping take milliseconds: an event loop can afford to wait for them.
    async def __aenter__(self) -> KafkaBroker:
        return self.start()

    async def __aexit__(self, *exc) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        import asyncio

        try:
            asyncio.run(self._serve(ready))
        except BaseException as exc:  # told to start(), which raises it in the test
            self._failure = exc
        finally:
            ready.set()

    async def _serve(self, ready: threading.Event) -> None:
        import asyncio

        from ..serve.auth import Access
        from ..serve.broker import Broker
        from ..serve.server import Server
        from ..serve.storage import Storage

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        storage = Storage(self.data_dir)
        # A directory made for this broker is removed when it stops: nothing in it needs to reach the disk.
        storage.data.ensure(sync=self._given_dir is not None)
        broker = Broker(storage, self.host, 0, auto_create=self.auto_create, default_partitions=self.partitions)
        # Linux tells the peer's uid: the test's own clients get in, other users' processes do not.
        # Elsewhere no peer is known, and kq serve's rule would refuse everyone: a loopback port
        # that lives for one test is left open to local processes, as `kq serve --insecure` would.
        access = Access(storage.path) if sys.platform.startswith("linux") else None
        self._server = server = Server(broker, self.host, 0, access=access)
        await server.start()
        broker.port = self.port = server.port
        broker.listen = (self.host, server.port)
        broker.start()
        ready.set()
        try:
            await self._stop.wait()
        finally:
            await server.stop()

    # ------------------------------------------------------------------ topics

    def create_topic(self, name: str, partitions: int = 1, **config: Any) -> None:
        """Create a topic, with Kafka topic configs written with ``_`` for ``.``: ``retention_ms=60000``."""
        from ..engine.topic import check_config
        from ..serve import topic_configs

        given = {key.replace("_", "."): _config_text(value) for key, value in config.items()}
        settings, kept = topic_configs.split(given.items())
        self._in_loop(lambda: self._server.broker.storage.create_topic(name, partitions, check_config(settings), kept))

    def records(self, topic: str) -> Iterator[contents.TopicRecord]:
        """Every record of ``topic`` (partition, offset, key, value, headers, timestamp), read from the directory."""
        return contents.records(self.data_dir, topic)

    def topics(self) -> list[str]:
        from ..engine.datadir import DataDir

        return DataDir(self.data_dir).topic_names()

    def _in_loop(self, call):
        """Run ``call`` in the broker's thread (its storage is not shared across threads) and return its result."""
        import asyncio

        if self._thread is None:
            raise RuntimeError("the broker is not running (start() it, or use it in a with block)")

        async def run():
            return call()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(READY_SECONDS)

    def __repr__(self) -> str:
        state = f"{self.host}:{self.port}" if self._thread is not None else "stopped"
        return f"KafkaBroker({state}, data_dir={self.data_dir!r})"


def _import_the_server() -> None:
    """Import kq serve here, in the caller's thread, with kafka-python's import-time warnings silenced.

    kafka-python 3 reads its protocol schemas with a deprecated importlib
    call: a hundred DeprecationWarnings that say nothing about the user's
    code would otherwise end up in their test report.
    """
    import warnings

    from ..serve import INSTALL_HINT, missing_dependency

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        missing = missing_dependency()
        if missing is not None:
            raise RuntimeError(f"a kq broker needs {missing}, of kq's kafka extra: {INSTALL_HINT}")
        from ..serve import auth, broker, server, storage  # noqa: F401


def _config_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
