"""The stores kq is compared with, behind one interface, and a worker command that runs them as processes.

Every store keeps ``partitions`` independent FIFO logs and offers
``put(partition, values)`` (one batch, in the store's best documented bulk
form) and ``take(partition, limit)`` (the next values in order, an empty list
when there are none yet). Partitions let the several-process workload give
each consumer its own logs, the way kq's group members own partitions, so a
peer is never asked to arbitrate competing consumers it was not built for.

    python -m peers produce STORE DIR PARTITIONS         # stdin lines, round robin per batch
    python -m peers consume STORE DIR PARTITIONS [MEMBER MEMBERS [follow]]
    python -m peers seek sqlite DIR offset|timestamp VALUE   # the SQLite table only: queues cannot seek

The worker parses its arguments by hand and imports only the store it runs,
so that its start-up is as lean as the store allows (workload 4 times it).
"""

from __future__ import annotations

import os
import sys
import time

# Messages per put: the "1,000-row transactions" the SQLite figure was measured with.
BATCH = 1000
# The interval `kq consume -f` polls at, so follow latency compares stores, not poll intervals.
POLL_SECONDS = 0.005


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class SqliteTable:
    """A plain SQLite table per partition in WAL mode, appended in one transaction per batch.

    synchronous=NORMAL matches kq, which does not fsync unless asked; the
    reader keeps its position in memory, like a consumer without a group.
    """

    label = "SQLite WAL table"
    package = "sqlite3"

    def __init__(self, path: str, partitions: int = 1):
        import sqlite3

        os.makedirs(path, exist_ok=True)
        self.conn = sqlite3.connect(os.path.join(path, "log.db"), isolation_level=None, timeout=60)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        for n in range(partitions):
            # No index on timestamp: it would slow every append; a seek by time scans instead.
            self.conn.execute(
                f"CREATE TABLE IF NOT EXISTS p{n} "
                "(id INTEGER PRIMARY KEY, timestamp INTEGER NOT NULL, value BLOB NOT NULL)"
            )
        self.last_id = [0] * partitions

    def put(self, partition: int, values: list[bytes]) -> None:
        stamp = now_ms()
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany(
            f"INSERT INTO p{partition} (timestamp, value) VALUES (?, ?)", [(stamp, v) for v in values]
        )
        self.conn.execute("COMMIT")

    def take(self, partition: int, limit: int) -> list[bytes]:
        rows = self.conn.execute(
            f"SELECT id, value FROM p{partition} WHERE id > ? ORDER BY id LIMIT ?",
            (self.last_id[partition], limit),
        ).fetchall()
        if rows:
            self.last_id[partition] = rows[-1][0]
        return [value for _, value in rows]

    def seek(self, how: str, value: int) -> tuple[int, int, bytes] | None:
        """(offset, timestamp, value) of the first row at offset >= value or timestamp >= value."""
        where = "id > ?" if how == "offset" else "timestamp >= ?"
        row = self.conn.execute(
            f"SELECT id - 1, timestamp, value FROM p0 WHERE {where} ORDER BY id LIMIT 1", (value,)
        ).fetchone()
        return tuple(row) if row else None

    def close(self) -> None:
        self.conn.close()


class PersistQueueSqlite:
    """persist-queue's SQLiteQueue with auto_commit=False: gets are persisted by one task_done per batch.

    Its put commits on every call whatever auto_commit says; the library has no batched put.
    """

    label = "persist-queue SQLite"
    package = "persist-queue"

    def __init__(self, path: str, partitions: int = 1):
        import persistqueue

        self.empty = persistqueue.Empty
        self.queues = [self.open_queue(persistqueue, os.path.join(path, f"p{n}")) for n in range(partitions)]

    @staticmethod
    def open_queue(persistqueue, path: str):
        return persistqueue.SQLiteQueue(path, auto_commit=False)

    def put(self, partition: int, values: list[bytes]) -> None:
        queue = self.queues[partition]
        for value in values:
            queue.put(value)

    def take(self, partition: int, limit: int) -> list[bytes]:
        queue, out = self.queues[partition], []
        try:
            while len(out) < limit:
                out.append(queue.get(block=False))
        except self.empty:
            pass
        if out:
            queue.task_done()
        return out

    def close(self) -> None:
        for queue in self.queues:
            queue.close()


class PersistQueueFile(PersistQueueSqlite):
    """persist-queue's file Queue, with the same put and get/task_done protocol as its SQLiteQueue.

    Documented as thread-safe, not process-safe: each instance caches the
    queue's head and tail, so it is left out of the several-process workload.
    """

    label = "persist-queue file"
    several_processes = "n/a: not process-safe"

    @staticmethod
    def open_queue(persistqueue, path: str):
        return persistqueue.Queue(path)

    def close(self) -> None:
        for queue in self.queues:
            queue.headf.close()
            queue.tailf.close()


class LiteQueueStore:
    """litequeue, one database file per partition (as its docs advise), puts in one transaction per batch.

    A pop is its own transaction by design (it locks the message); the
    batch's done() marks go in one transaction. litequeue stores text.
    """

    label = "litequeue"
    package = "litequeue"

    def __init__(self, path: str, partitions: int = 1):
        from litequeue import LiteQueue

        os.makedirs(path, exist_ok=True)
        self.queues = [LiteQueue(os.path.join(path, f"p{n}.db"), timeout=60) for n in range(partitions)]

    def put(self, partition: int, values: list[bytes]) -> None:
        queue = self.queues[partition]
        with queue.transaction():
            for value in values:
                queue.put(value.decode())

    def take(self, partition: int, limit: int) -> list[bytes]:
        queue, messages = self.queues[partition], []
        while len(messages) < limit:
            message = queue.pop()
            if message is None:
                break
            messages.append(message)
        if messages:
            with queue.transaction():
                for message in messages:
                    queue.done(message.message_id)
        return [m.data.encode() for m in messages]

    def close(self) -> None:
        for queue in self.queues:
            queue.close()


class DiskcacheDeque:
    """diskcache's Deque, extended and popped inside one transact() per batch."""

    label = "diskcache Deque"
    package = "diskcache"

    def __init__(self, path: str, partitions: int = 1):
        from diskcache import Deque

        self.deques = [Deque(directory=os.path.join(path, f"p{n}")) for n in range(partitions)]

    def put(self, partition: int, values: list[bytes]) -> None:
        deque = self.deques[partition]
        with deque.transact():
            deque.extend(values)

    def take(self, partition: int, limit: int) -> list[bytes]:
        deque, out = self.deques[partition], []
        with deque.transact():
            try:
                while len(out) < limit:
                    out.append(deque.popleft())
            except IndexError:
                pass
        return out

    def close(self) -> None:
        for deque in self.deques:
            deque.cache.close()


STORES = {
    "sqlite": SqliteTable,
    "persistqueue-sqlite": PersistQueueSqlite,
    "persistqueue-file": PersistQueueFile,
    "litequeue": LiteQueueStore,
    "diskcache": DiskcacheDeque,
}


def stdin_batches(fd: int = 0):
    """Lists of at most BATCH lines, handed on as soon as they are read (so a lone line is not held back)."""
    pending = b""
    while True:
        data = os.read(fd, 1 << 20)
        if not data:
            break
        lines = (pending + data).split(b"\n")
        pending = lines.pop()
        for i in range(0, len(lines), BATCH):
            yield lines[i : i + BATCH]
    if pending:
        yield [pending]


def produce(store, partitions: int) -> None:
    # Round robin one batch at a time, like kq's (and Kafka's) sticky partitioner.
    for number, batch in enumerate(stdin_batches()):
        store.put(number % partitions, batch)


def consume(store, owned: list[int], follow: bool) -> None:
    out = sys.stdout.buffer
    while True:
        wrote = False
        for partition in owned:
            values = store.take(partition, BATCH)
            if values:
                out.write(b"\n".join(values) + b"\n")
                wrote = True
        if wrote:
            out.flush()
        elif follow:
            time.sleep(POLL_SECONDS)
        else:
            return


def main(argv: list[str]) -> int:
    command, name, path = argv[:3]
    if command == "seek":
        how, value = argv[3], int(argv[4])
        row = SqliteTable(path).seek(how, value)
        print("\t".join(map(str, row[:2])) if row else "-")
        return 0
    partitions = int(argv[3])
    store = STORES[name](path, partitions)
    if command == "produce":
        produce(store, partitions)
    elif command == "consume":
        member, members = (int(argv[4]), int(argv[5])) if len(argv) > 5 else (0, 1)
        consume(store, list(range(member, partitions, members)), follow=argv[6:] == ["follow"])
    else:
        print(f"unknown command {command}", file=sys.stderr)
        return 2
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
