"""The asyncio server: connections, frames, one request at a time per connection.

Kafka brokers answer a connection's requests strictly in order, one at a
time; clients rely on the order. Requests a client pipelines (librdkafka
keeps many produce requests in flight) are still handled one after another,
and the answers to those that had already arrived are written together.
What the server holds is bounded twice: per connection, one
request of at most ``max_request_bytes`` plus the responses that the client
has not read yet (``WRITE_HIGH_WATER``); across connections, by one
``MemoryBudget`` (``--max-memory``) that requests being read and responses
not yet sent are counted against. A request larger than ``SMALL_REQUEST``
waits for room before its body is read, a connection with a response beyond
``WRITE_HIGH_WATER`` unsent reads nothing more until the client takes it,
and a Fetch answers with less the fuller the budget (``response_room``), so
that clients that send big frames slowly or never read hold the budget, not
more, and a small request from anyone else is still answered at once.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import signal
import socket
import sys
import termios

from . import auth, wire
from .broker import Broker

log = logging.getLogger("kq.serve")

DEFAULT_MAX_REQUEST_BYTES = 100 * 1024 * 1024  # Kafka's socket.request.max.bytes
DEFAULT_MAX_MEMORY = 256 * 1024 * 1024  # --max-memory
WRITE_HIGH_WATER = 1024 * 1024  # wait for a slow reader beyond this much unsent
SMALL_REQUEST = 1024 * 1024  # read at once, whatever the budget: no client is kept waiting by others' bulk
# A Fetch response is read from the log, decoded, built from pieces, joined
# and encoded, each a copy: while it is made, it briefly takes about this many
# times its size.
RESPONSE_COPIES = 8
RESPONSES_AT_ONCE = 32
TRIM_AFTER = 4 * 1024 * 1024  # a request or response this large: give freed memory back after it
MAX_ANSWERS_AT_ONCE = 32  # responses to pipelined requests written together
MAX_ANSWER_DELAY = 0.002  # seconds an answer may wait for the next ones (the producer waits for it)
FETCH_KEY = 1
METADATA_KEY = 3
# Requests that may wait long for their answer (a long poll, a rebalance): answers held back to
# go out with the next ones must not wait behind them.
MAY_WAIT_KEYS = (FETCH_KEY, 11, 14)  # Fetch, JoinGroup, SyncGroup
FIRST_METADATA_WAIT = 0.001  # seconds (see _requests: librdkafka's FindCoordinator beside its first Metadata)
IDLE_SECONDS = 600.0  # Kafka's connections.max.idle.ms
UNAUTHENTICATED_MAX_REQUEST_BYTES = 512 * 1024  # Kafka's sasl.server.max.receive.size


class MemoryBudget:
    """Bytes held across connections for requests being read and responses not yet sent."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._waiting: list[asyncio.Future] = []

    async def reserve(self, size: int) -> None:
        """Count ``size`` bytes, first waiting for room unless nothing else is held."""
        while self.used and self.used + size > self.limit:
            fut = asyncio.get_running_loop().create_future()
            self._waiting.append(fut)
            try:
                await fut
            finally:
                if fut in self._waiting:
                    self._waiting.remove(fut)
        self.used += size

    def take(self, size: int) -> None:
        """Count ``size`` bytes without waiting (small requests, responses already made)."""
        self.used += size

    def release(self, size: int) -> None:
        self.used -= size
        if not self._waiting:
            return
        waiting, self._waiting = self._waiting, []
        for fut in waiting:
            if not fut.done():
                fut.set_result(None)

    def response_room(self) -> int:
        """How large a response may be built now, its copies included, and stay within the limit.

        Never more than ``1 / RESPONSES_AT_ONCE`` of the limit: one client's
        response leaves room for others'.
        """
        return min(max(self.limit - self.used, 0) // RESPONSE_COPIES, self.limit // RESPONSES_AT_ONCE)


class Turns:
    """Bulk requests (fetches, frames over ``SMALL_REQUEST``) start one per pass of the event loop.

    Requests that arrived together are handled one after another in the same
    pass, before the loop looks at its sockets again; without turns, a small
    request (another client's Metadata, a heartbeat) would wait for every
    bulk request ready before it, not for one.
    """

    def __init__(self) -> None:
        self._taken = False
        self._waiting: list[asyncio.Future] = []

    async def take(self) -> None:
        loop = asyncio.get_running_loop()
        while self._taken:
            fut = loop.create_future()
            self._waiting.append(fut)
            await fut
        self._taken = True
        loop.call_soon(self._next)  # runs in the loop's next pass, after it has polled the sockets

    def _next(self) -> None:
        self._taken = False
        waiting, self._waiting = self._waiting, []
        for fut in waiting:
            if not fut.done():
                fut.set_result(None)


class Server:
    def __init__(
        self,
        broker: Broker,
        host: str,
        port: int,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_memory: int = DEFAULT_MAX_MEMORY,
        access: auth.Access | None = None,
        ssl=None,
    ):
        self.broker = broker
        self.access = access  # None: everyone is let in (a library caller's choice)
        self.ssl = ssl
        self.host = host
        self.port = port
        self.max_request_bytes = max_request_bytes
        self.budget = MemoryBudget(max_memory)
        self.turns = Turns()
        broker.response_room = self.budget.response_room
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task] = set()
        self._busy: set[asyncio.Task] = set()  # connections inside a request
        self.metrics_url: str | None = None  # where /metrics is served, with --metrics
        self._stopping = False  # connections answer the request in hand and read no more

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
        self._stopping = True
        if self._server is not None:
            self._server.close()
        # A request being handled finishes, so a produce that was appended is
        # also answered; idle connections are simply closed. Requests that
        # wait on time (a Fetch for records, up to the client's
        # fetch.wait.max.ms; a JoinGroup for a rebalance) answer now instead
        # of holding the stop.
        self.broker.release_waiting()
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
        budget = self.budget
        unsent = 0  # of this connection's responses, as counted in the budget
        answers: list[bytes] = []  # responses not yet written, in order
        first_answer_at = 0.0
        loop = asyncio.get_running_loop()
        sock = writer.get_extra_info("socket")
        sock_fd = sock.fileno() if sock is not None else -1
        waited_for_company = False  # the connection's first Metadata answer waited for a request sent beside it
        try:
            while not self._stopping:
                head = await _read(reader, 4)
                (size,) = wire.SIZE.unpack(head)
                limit = self.max_request_bytes
                if session is not None and not session.admitted:
                    limit = min(limit, UNAUTHENTICATED_MAX_REQUEST_BYTES)
                if not 8 <= size <= limit:
                    raise wire.BadRequest(f"request size {size} is outside 8..{limit} bytes (--max-request-bytes)")
                # StreamReader.readexactly buffers the whole frame: count it before reading it.
                if size <= SMALL_REQUEST:
                    budget.take(size)
                else:
                    await budget.reserve(size)
                try:
                    frame = await _read(reader, size)
                    api_key = int.from_bytes(frame[:2], "big")
                    if answers and (size > SMALL_REQUEST or api_key in MAY_WAIT_KEYS):
                        writer.writelines(answers)
                        answers.clear()
                    if size > SMALL_REQUEST or api_key == FETCH_KEY:
                        await self.turns.take()
                    self._busy.add(task)
                    try:
                        response = await self.broker.handle(frame, connection)
                    finally:
                        self._busy.discard(task)
                    del frame
                finally:
                    budget.release(size)
                big = size > TRIM_AFTER
                if response is not None:
                    big = big or len(response) > TRIM_AFTER
                    if not answers:
                        first_answer_at = loop.time()
                    answers.append(response)
                    del response
                    if not big and not _frame_waiting(reader):
                        # librdkafka sends FindCoordinator beside its first Metadata on the bootstrap
                        # connection, drops that connection once the Metadata answer is in, and so
                        # loses a FindCoordinator answer that arrives after it: it asks again 500 ms
                        # later (half of the transactional producers' init_transactions took 0.5 s).
                        # So an answer goes out with the next one when that one is already in the
                        # socket, and the first Metadata answer of a connection waits a moment for it.
                        if _unread_bytes(sock_fd) > 0:
                            await asyncio.sleep(0)  # the transport's read runs in the loop's next turn,
                            await asyncio.sleep(0)  # after this task's first step is back
                        elif api_key == METADATA_KEY and not waited_for_company:
                            waited_for_company = True
                            await asyncio.sleep(FIRST_METADATA_WAIT)
                            first_answer_at = loop.time()
                # A client that pipelines (librdkafka keeps many produce requests in
                # flight) gets the answers to the requests that had already arrived
                # in one write: one system call instead of one per request.
                if answers and (
                    big
                    or len(answers) >= MAX_ANSWERS_AT_ONCE
                    or loop.time() - first_answer_at >= MAX_ANSWER_DELAY
                    or not _frame_waiting(reader)
                ):
                    writer.writelines(answers)
                    answers.clear()
                if big:
                    _give_back_freed_memory()
                if transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                    unsent = _recount(budget, transport, unsent)
                    await writer.drain()
                unsent = _recount(budget, transport, unsent)
                if session is not None and session.closing:
                    # A refused client gets its answer, then the connection ends.
                    if answers:
                        writer.writelines(answers)
                        answers.clear()
                    await writer.drain()
                    raise auth.Refused(0, session.closing)
            if answers:  # stopping: what was answered still goes out
                writer.writelines(answers)
        finally:
            budget.release(unsent)


async def _read(reader: asyncio.StreamReader, size: int) -> bytes:
    """``size`` bytes, at once if they are already buffered (no timer for those)."""
    if _buffered(reader) >= size:
        return await reader.readexactly(size)
    return await asyncio.wait_for(reader.readexactly(size), IDLE_SECONDS)


def _buffered(reader: asyncio.StreamReader) -> int:
    """Bytes received and not yet read (StreamReader does not say: its buffer is looked at)."""
    buffer = getattr(reader, "_buffer", None)
    return len(buffer) if buffer is not None else 0


def _unread_bytes(fd: int) -> int:
    """Bytes received on the socket ``fd`` that the transport has not read yet (0 if unknown)."""
    if fd < 0:
        return 0
    try:
        return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), sys.byteorder)
    except OSError:
        return 0


def _frame_waiting(reader: asyncio.StreamReader) -> bool:
    """Has the next request already arrived whole?"""
    buffer = getattr(reader, "_buffer", None)
    if buffer is None or len(buffer) < 4:
        return False
    return 4 + int.from_bytes(buffer[:4], "big", signed=True) <= len(buffer)


def _give_back_freed_memory() -> None:
    """Return the pages of freed large objects to the system (glibc keeps them otherwise).

    Building a big response frees several copies of it; glibc keeps such
    freed memory in its heap, so without this the server's resident size
    would grow with each big request by what it no longer holds.
    """
    if _malloc_trim is not None:
        _malloc_trim(0)


def _load_malloc_trim():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_malloc_trim = _load_malloc_trim()


def _recount(budget: MemoryBudget, transport, counted: int) -> int:
    """Count a connection's unsent bytes as they are now; returns the new count."""
    now = transport.get_write_buffer_size()
    if now > counted:
        budget.take(now - counted)
    elif now < counted:
        budget.release(counted - now)
    return now


def _addr(peer) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
