"""The asyncio server: connections, frames, one request at a time per connection.

Kafka brokers answer a connection's requests strictly in order and read the
next one only after answering (the socket is muted meanwhile); clients rely
on the order, and it bounds what one connection can make the server hold:
one request of at most ``max_request_bytes`` plus the responses that the
client has not read yet (``WRITE_HIGH_WATER``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

from . import auth, wire
from .broker import Broker

log = logging.getLogger("kq.serve")

DEFAULT_MAX_REQUEST_BYTES = 100 * 1024 * 1024  # Kafka's socket.request.max.bytes
WRITE_HIGH_WATER = 8 * 1024 * 1024  # wait for a slow reader beyond this much unsent
IDLE_SECONDS = 600.0  # Kafka's connections.max.idle.ms
UNAUTHENTICATED_MAX_REQUEST_BYTES = 512 * 1024  # Kafka's sasl.server.max.receive.size


class Server:
    def __init__(
        self,
        broker: Broker,
        host: str,
        port: int,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        access: auth.Access | None = None,
        ssl=None,
    ):
        self.broker = broker
        self.access = access  # None: everyone is let in (a library caller's choice)
        self.ssl = ssl
        self.host = host
        self.port = port
        self.max_request_bytes = max_request_bytes
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task] = set()
        self._busy: set[asyncio.Task] = set()  # connections inside a request

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._connection, self.host, self.port, reuse_address=True, ssl=self.ssl
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def serve_until_stopped(self, ready=None) -> None:
        await self.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        self.broker.start()
        if ready is not None:
            ready(self)
        try:
            await stop.wait()
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Stop accepting, let requests in progress finish (their appends are done), close the rest."""
        if self._server is not None:
            self._server.close()
        # A request being handled finishes, so a produce that was appended is
        # also answered; idle connections are simply closed.
        for task in list(self._connections - self._busy):
            task.cancel()
        if self._busy:
            await asyncio.wait(list(self._busy), timeout=5)
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=5)
        self.broker.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # a coroutine run by the event loop
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        log.info("connection from %s", _addr(peer))
        session = None if self.access is None else self.access.session(peer, writer.get_extra_info("sockname"))
        try:
            await self._requests(reader, writer, task, peer[0] if isinstance(peer, tuple) else "", session)
        except auth.Refused as exc:
            log.warning("refused %s: %s", _addr(peer), exc)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:
            pass
        except wire.BadRequest as exc:
            log.info("closing connection from %s: %s", _addr(peer), exc)
        except Exception as exc:  # a bug: one connection ends, the server goes on
            log.exception("closing connection from %s after an internal error: %s", _addr(peer), exc)
        finally:
            self._connections.discard(task)
            self._busy.discard(task)
            writer.close()
            log.info("connection from %s closed", _addr(peer))

    async def _requests(self, reader, writer, task, host: str, session: auth.Session | None = None) -> None:
        connection = self.broker.connection(host, session)
        transport = writer.transport
        while True:
            head = await asyncio.wait_for(reader.readexactly(4), IDLE_SECONDS)
            (size,) = wire.SIZE.unpack(head)
            limit = self.max_request_bytes
            if session is not None and not session.admitted:
                limit = min(limit, UNAUTHENTICATED_MAX_REQUEST_BYTES)
            if not 8 <= size <= limit:
                raise wire.BadRequest(f"request size {size} is outside 8..{limit} bytes (--max-request-bytes)")
            frame = await reader.readexactly(size)
            self._busy.add(task)
            try:
                response = await self.broker.handle(frame, connection)
            finally:
                self._busy.discard(task)
            if response is not None:
                writer.write(response)
                if transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                    await writer.drain()
            if session is not None and session.closing:
                await writer.drain()
                raise auth.Refused(0, session.closing)


def _addr(peer) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
