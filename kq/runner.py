"""Running a command per batch of records (``consume --exec``).

Each batch holds records of one partition, written to the command's stdin in
the consumer's output format. A batch that the command accepts (exit 0) is
marked for the group to commit; one it rejects stops that partition only:
its records stay uncommitted for the next run, and the other partitions go on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .errors import KqError


@dataclass
class Failure:
    topic: str
    partition: int
    first: int  # offsets of the batch the command rejected
    last: int
    status: int  # the command's exit status; negative: killed by that signal
    timed_out: float | None = None  # seconds: the command ran longer than --exec-timeout and was killed

    def describe(self) -> str:
        how = f"was killed by signal {-self.status}" if self.status < 0 else f"exited with status {self.status}"
        if self.timed_out is not None:
            how = f"ran longer than --exec-timeout ({self.timed_out:g} s) and {how}"
        return f"{how} on {self.topic}/{self.partition} offsets {self.first}..{self.last}"


class CommandFailed(KqError):
    """The command rejected at least one batch (each stopped its partition; the others went on)."""

    def __init__(self, command: str, failures: list[Failure]):
        super().__init__(f"command {command!r} " + "; ".join(f.describe() for f in failures))
        self.command = command
        self.failures = failures


def batches_of(slices, size: int):
    """Cut a round of slices into runs of at most ``size`` records, each of one partition.

    A run is a list of slices: the records of one partition in a round go together whatever
    batches they were stored in (a producer run per record stores a batch per record).
    """
    by_partition: dict[int, list] = {}
    for sl in slices:
        by_partition.setdefault(sl.partition, []).append(sl)
    for parts in by_partition.values():
        run: list = []
        room = size
        for sl in parts:
            start = sl.start
            while start < sl.stop:
                stop = min(sl.stop, start + room)
                run.append(sl._replace(start=start, stop=stop))
                room -= stop - start
                start = stop
                if room == 0:
                    yield run
                    run, room = [], size
        if run:
            yield run


class CommandRunner:
    """Feeds rounds of slices to ``command``, one partition's batch at a time.

    ``write(partition, batch, start, stop)`` renders records as bytes;
    ``accepted(partition, offset_after)`` is called after each batch the
    command accepted; ``stop_partition(partition)`` after one it rejected.
    ``timeout``: seconds a command may run before it is stopped (SIGTERM, then
    SIGKILL) and its batch counts as rejected.
    """

    def __init__(self, command: str, size: int, write, topic: str, accepted=None, stop_partition=None, timeout=None):
        self.command = command
        self.size = size
        self.write = write
        self.topic = topic
        self.accepted = accepted
        self.stop_partition = stop_partition
        self.timeout = timeout
        self.done = 0  # records the command accepted
        self.failures: list[Failure] = []

    def run(self, rounds) -> None:
        failed: set[int] = set()
        for slices in rounds:
            for run in batches_of(slices, self.size):
                partition = run[0].partition
                if partition in failed:
                    continue
                status, timed_out = self._run(run)
                if status == 0 and not timed_out:
                    self.done += sum(sl.stop - sl.start for sl in run)
                    if self.accepted is not None:
                        self.accepted(partition, run[-1].offset_after())
                    continue
                failed.add(partition)
                first, last = _first_offset(run[0]), _last_offset(run[-1])
                self.failures.append(
                    Failure(self.topic, partition, first, last, status, self.timeout if timed_out else None)
                )
                if self.stop_partition is not None:
                    self.stop_partition(partition)

    def _run(self, run) -> tuple[int, bool]:
        """Run the command on ``run``: its exit status, and whether it was stopped for running too long."""
        env = {
            **os.environ,
            "KQ_TOPIC": self.topic,
            "KQ_PARTITION": str(run[0].partition),
            "KQ_OFFSET": str(_first_offset(run[0])),
            "KQ_LAST_OFFSET": str(_last_offset(run[-1])),
        }
        # Its own process group, so that when kq is interrupted the whole
        # command (a shell and what it started) is stopped with it.
        group: dict[str, Any] = {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
        proc: subprocess.Popen[bytes] | None = None
        try:
            with signals_held():
                proc = subprocess.Popen(self.command, shell=True, stdin=subprocess.PIPE, env=env, **group)
            data = b"".join(self.write(sl.partition, sl.batch, sl.start, sl.stop) for sl in run)
            try:
                # With a timeout, communicate writes stdin and waits by polling, so that a
                # command that neither reads nor exits is stopped all the same.
                proc.communicate(data, timeout=self.timeout)
            except subprocess.TimeoutExpired:
                stop_command(proc)
                return proc.wait(), True
            finally:
                if proc.stdin is not None and not proc.stdin.closed:
                    try:
                        proc.stdin.close()
                    except BrokenPipeError:
                        pass
            return proc.wait(), False
        except BaseException:
            if proc is not None:
                stop_command(proc)
            raise


def _first_offset(sl) -> int:
    return sl.batch.offsets()[sl.start]


def _last_offset(sl) -> int:
    return sl.batch.offsets()[sl.stop - 1]


INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def signals_held():
    """Hold SIGINT and SIGTERM until the block ends, then hand them to the handlers in place.

    For starting a command: an interrupt raised inside ``subprocess.Popen``,
    after its fork, leaves the command running with its stdin closed, and
    nobody holds it to stop it. Held, the interrupt comes once the caller
    holds the process. (Blocking the signals instead would block them in the
    command too: a child inherits the signal mask.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread receives signals
        return
    held: list[int] = []
    previous = {}
    for sig in INTERRUPTS:
        handler = signal.getsignal(sig)
        if handler is not None:  # None: a handler Python did not install, which it could not put back
            previous[sig] = signal.signal(sig, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if held:
            _deliver(held[0], previous[held[0]])


def _deliver(signum: int, handler) -> None:
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        os.kill(os.getpid(), signum)  # what the signal would have done


def stop_command(proc: subprocess.Popen) -> None:
    """Stop the command's process group: SIGTERM, then SIGKILL if it lingers."""
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue
