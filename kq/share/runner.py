"""Running a command per record of a share group (``consume --share --exec``).

Up to ``parallel`` commands run at once, each on one record (or a batch of
up to ``batch`` records of one partition) written to its stdin, with the
record's coordinates in ``KQ_*`` environment variables. While a command
runs, its leases are extended; when it exits 0 its records are
acknowledged, otherwise released for another attempt after the group's
backoff (or dead-lettered at the last attempt), with the exit status and
the last lines of the command's stderr (which is also passed through).
A command that runs longer than ``exec_timeout`` is stopped (SIGTERM, then
SIGKILL after ``KILL_GRACE_SECONDS``) and counts as failed.

One thread waits for everything (a selector over the commands' pipes and
process descriptors), so no lock is ever held while a command is forked.
"""

from __future__ import annotations

import base64
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections import deque
from typing import IO

from ..consumer import BUSY_SECONDS, IDLE_POLL_SECONDS, POLL_SECONDS, IdleClock
from ..runner import signals_held, stop_command
from .consumer import ShareConsumer
from .deliveries import Delivery, Failure

STDERR_TAIL_BYTES = 4096  # kept of each command's stderr, for the dead-letter headers
STDERR_TAIL_LINES = 10
READ_CHUNK = 65536
# Records whose command succeeded are acknowledged with the next acquisition
# (one state change for both), or after this long if no acquisition comes.
ACK_SECONDS = 0.05
# A command stopped for running too long gets this long after SIGTERM to exit before SIGKILL.
KILL_GRACE_SECONDS = 5.0


def _text(data: bytes | None) -> tuple[str, bool]:
    """``data`` as environment text: itself if it is UTF-8 without NUL, else base64 (True)."""
    if data is None:
        return "", False
    try:
        text = data.decode("utf-8")
        if "\0" not in text:
            return text, False
    except UnicodeDecodeError:
        pass
    return base64.b64encode(data).decode("ascii"), True


def record_environment(topic: str, share: str, deliveries: list[Delivery]) -> dict[str, str]:
    """The KQ_* variables a command sees for ``deliveries`` (one partition's; one record: its key, headers, ...)."""
    first = deliveries[0]
    env = {
        "KQ_TOPIC": topic,
        "KQ_SHARE": share,
        "KQ_PARTITION": str(first.partition),
        "KQ_OFFSET": str(first.offset),
        "KQ_LAST_OFFSET": str(deliveries[-1].offset),
        "KQ_COUNT": str(len(deliveries)),
        "KQ_ATTEMPT": str(max(d.attempt for d in deliveries)),
    }
    if len(deliveries) == 1:
        env["KQ_LEASE"] = first.lease
        env["KQ_TIMESTAMP"] = str(first.timestamp)
        if first.key is not None:
            env["KQ_KEY"], encoded = _text(first.key)
            if encoded:
                env["KQ_KEY_ENCODING"] = "base64"
        headers = first.headers
        texts = [_text(v) for _, v in headers]
        if any(encoded for _, encoded in texts):
            env["KQ_HEADERS"] = json.dumps(
                [[n, None if v is None else base64.b64encode(v).decode("ascii")] for n, v in headers]
            )
            env["KQ_HEADERS_ENCODING"] = "base64"
        else:
            env["KQ_HEADERS"] = json.dumps(
                [[n, None if v is None else t] for (n, v), (t, _) in zip(headers, texts)], ensure_ascii=False
            )
    return env


def in_runs(deliveries: list[Delivery], size: int) -> list[list[Delivery]]:
    """Deliveries cut into runs of at most ``size``, each of one partition."""
    out: list[list[Delivery]] = []
    for d in deliveries:
        if out and len(out[-1]) < size and out[-1][-1].partition == d.partition:
            out[-1].append(d)
        else:
            out.append([d])
    return out


class _Job:
    """One running command and the records it was given."""

    def __init__(self, proc: subprocess.Popen, deliveries: list[Delivery], stdin: bytes):
        assert proc.stdin is not None and proc.stderr is not None  # opened as pipes
        self.proc = proc
        self.stdin_pipe: IO[bytes] = proc.stdin
        self.stderr_pipe: IO[bytes] = proc.stderr
        self.deliveries = deliveries
        self.stdin: memoryview | None = memoryview(stdin)  # what is left to write; None once closed
        self.tail = bytearray()
        self.pidfd: int | None = None
        self.status: int | None = None
        self.lost = False  # its lease could not be extended: the records may be another worker's now
        self.deadline: float | None = None  # monotonic time: stopped if still running then
        self.timed_out: float | None = None  # the exec timeout it ran past (seconds), once stopped for it

    def failed(self) -> bool:
        return self.status != 0 or self.timed_out is not None

    def failure(self) -> Failure:
        lines = self.tail.decode("utf-8", "replace").splitlines()[-STDERR_TAIL_LINES:]
        status = self.status if self.status is not None else -1
        how = f"killed by signal {-status}" if status < 0 else f"exited with status {status}"
        if self.timed_out is not None:
            return Failure(
                f"command ran longer than --exec-timeout ({self.timed_out:g} s) and was {how}",
                status,
                "\n".join(lines),
            )
        return Failure(f"command {how}", status, "\n".join(lines))


class ShareRunner:
    """Feeds a share group's records to ``command`` (see the module docstring).

    ``write(partition, batch, start, stop)`` renders records as the bytes on
    a command's stdin. ``follow`` waits for new records (forever, or until
    ``idle_timeout`` seconds pass without one); otherwise the run ends when
    no record can be had and no command runs. ``count`` stops acquiring
    after that many records.
    """

    def __init__(
        self,
        consumer: ShareConsumer,
        command: str,
        write,
        batch: int = 1,
        parallel: int = 1,
        count: int | None = None,
        follow: bool = False,
        idle_timeout: float | None = None,
        stderr=None,
        exec_timeout: float | None = None,
    ):
        self.consumer = consumer
        self.exec_timeout = exec_timeout
        self.command = command
        self.write = write
        self.batch = batch
        self.parallel = parallel
        self.count = count
        self.follow = follow or idle_timeout is not None
        self.idle = IdleClock(idle_timeout)
        self.stderr = stderr if stderr is not None else sys.stderr.buffer
        self.acquired = 0
        self.acked = 0  # records acknowledged
        self.failed = 0  # command runs that failed
        self.dead = 0  # records dead-lettered
        self.lost = 0  # records whose lease was lost while their command ran
        self.timed_out = False
        # Records whose command failed in this run and that this worker has not acknowledged
        # since (dead-lettered, or waiting for a retry): a run that leaves any has failed.
        self._failed_records: set[tuple[int, int]] = set()
        self._jobs: dict[int, _Job] = {}
        self._queue: deque[list[Delivery]] = deque()  # runs acquired, waiting for a free slot
        self._to_ack: list[Delivery] = []  # succeeded, acknowledged with the next acquisition
        self._ack_since = 0.0
        self._selector = selectors.DefaultSelector()
        # Encoded once: Popen would encode every variable again for every record.
        self._base_env = {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()}
        self._next_poll = 0.0
        self._extend_every = max(consumer.lease_ms / 3000, 0.05)
        self._next_extend = time.monotonic() + self._extend_every

    @property
    def failed_records(self) -> int:
        """Records whose command failed in this run and were not acknowledged after a retry in it."""
        return len(self._failed_records)

    # ------------------------------------------------------------ the loop

    def run(self) -> None:
        try:
            while True:
                got = self._refill()
                self._start_queued()
                if not self._jobs:
                    self._flush_acks()
                    if got:
                        continue
                    if self._done_acquiring() or not self.follow:
                        return
                    if self.idle.expired():
                        self.timed_out = True
                        return
                    time.sleep(max(self._next_poll - time.monotonic(), 0))
                    continue
                self._wait()
                if self._to_ack and time.monotonic() - self._ack_since >= ACK_SECONDS:
                    self._flush_acks()
                self._extend()
        except BaseException:
            self._stop_all()
            raise
        finally:
            self._selector.close()
        # (the acknowledgements left are flushed above before every return)

    def _done_acquiring(self) -> bool:
        return self.count is not None and self.acquired >= self.count

    def _refill(self) -> int:
        """Acquire records for the commands to come (acknowledging those that succeeded, in the
        same change), when fewer runs wait than commands may run; returns how many."""
        waiting = sum(len(run) for run in self._queue)
        now = time.monotonic()
        if len(self._queue) >= self.parallel or self._done_acquiring() or now < self._next_poll:
            return 0
        # Up to twice what runs at once: the next commands start without waiting for a state change.
        want = 2 * self.parallel * self.batch - waiting
        if self.count is not None:
            want = min(want, self.count - self.acquired)
        # Held: an interrupt comes once what was acquired is queued, so that it is given back at once.
        with signals_held():
            acks, self._to_ack = self._to_ack, []
            deliveries = self.consumer.acquire(want, ack=acks)
            self._queue.extend(in_runs(deliveries, self.batch))
        self._count_acks(self.consumer.last_ack)
        if not deliveries:
            quiet = now - self.idle.since
            self._next_poll = now + (POLL_SECONDS if quiet < BUSY_SECONDS else IDLE_POLL_SECONDS)
            return 0
        self.idle.reset()
        self._next_poll = 0.0
        self.acquired += len(deliveries)
        return len(deliveries)

    def _start_queued(self) -> None:
        while self._queue and len(self._jobs) < self.parallel:
            # Held: an interrupt comes once the run is among the jobs, so that its command is
            # stopped and its records given back (inside Popen it would leave the command
            # running, its stdin closed, held by nobody).
            with signals_held():
                self._spawn(self._queue.popleft())

    def _flush_acks(self) -> None:
        if self._to_ack:
            with signals_held():  # acknowledged, or still to acknowledge: never dropped between
                acks, self._to_ack = self._to_ack, []
                out = self.consumer.ack(acks)
            self._count_acks(out)

    def _count_acks(self, out) -> None:
        self.acked += out.acked
        self.lost += len(out.not_held)

    def _spawn(self, deliveries: list[Delivery]) -> None:
        env = dict(self._base_env)
        for k, v in record_environment(self.consumer.topic.name, self.consumer.share, deliveries).items():
            env[k.encode()] = v.encode("utf-8", "surrogateescape")
        stdin = b"".join(self.write(d.partition, d.batch, d.index, d.index + 1) for d in deliveries)
        # Its own process group, so that stopping kq stops the whole command.
        group = {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
        proc = subprocess.Popen(
            self.command, shell=True, stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env, **group
        )
        job = _Job(proc, deliveries, stdin)
        if self.exec_timeout is not None:
            job.deadline = time.monotonic() + self.exec_timeout
        self._jobs[proc.pid] = job
        os.set_blocking(job.stderr_pipe.fileno(), False)
        self._selector.register(job.stderr_pipe, selectors.EVENT_READ, ("stderr", job))
        try:
            job.pidfd = os.pidfd_open(proc.pid)
            self._selector.register(job.pidfd, selectors.EVENT_READ, ("exit", job))
        except (AttributeError, OSError):
            job.pidfd = None  # no pidfd (old kernel): exits are polled
        self._feed(job)
        if job.stdin is not None:
            os.set_blocking(job.stdin_pipe.fileno(), False)
            self._selector.register(job.stdin_pipe, selectors.EVENT_WRITE, ("stdin", job))

    def _feed(self, job: _Job) -> None:
        """Write what the command's stdin takes now; close it when all is written (or it stopped reading)."""
        try:
            while job.stdin:
                written = os.write(job.stdin_pipe.fileno(), job.stdin)
                job.stdin = job.stdin[written:]
        except BlockingIOError:
            return
        except BrokenPipeError:
            pass  # it stopped reading: its exit status says whether it succeeded
        if self._registered(job.stdin_pipe):
            self._selector.unregister(job.stdin_pipe)
        job.stdin_pipe.close()
        job.stdin = None

    def _registered(self, fileobj) -> bool:
        try:
            self._selector.get_key(fileobj)
            return True
        except (KeyError, ValueError):
            return False

    def _wait(self) -> None:
        now = time.monotonic()
        timeout = self._next_extend - now
        if len(self._jobs) < self.parallel and not self._done_acquiring():
            timeout = min(timeout, max(self._next_poll - now, POLL_SECONDS))
        if any(job.pidfd is None for job in self._jobs.values()):
            timeout = min(timeout, 0.01)
        deadlines = [job.deadline for job in self._jobs.values() if job.deadline is not None]
        if deadlines:
            timeout = min(timeout, min(deadlines) - now)
        finished = []
        for key, _ in self._selector.select(max(timeout, 0)):
            what, job = key.data
            if what == "stdin":
                self._feed(job)
            elif what == "stderr":
                self._read_stderr(job)
            elif what == "exit":
                finished.append(job)
        for job in self._jobs.values():
            if job.pidfd is None and job.proc.poll() is not None:
                finished.append(job)
        if finished:
            self._finish(finished)
        self._stop_overdue()

    def _stop_overdue(self) -> None:
        """SIGTERM to the process group of each command past --exec-timeout; SIGKILL to one that
        is still there ``KILL_GRACE_SECONDS`` later. Its exit comes through the selector."""
        now = time.monotonic()
        for job in self._jobs.values():
            if job.deadline is None or now < job.deadline:
                continue
            if job.timed_out is None:
                job.timed_out = self.exec_timeout
                job.deadline = now + KILL_GRACE_SECONDS
                sig = signal.SIGTERM
            else:
                job.deadline = None
                sig = signal.SIGKILL
            try:
                os.killpg(job.proc.pid, sig)
            except ProcessLookupError:
                pass

    def _read_stderr(self, job: _Job) -> bool | None:
        """Pass on what the command wrote to stderr, keeping its tail: True if it read some,
        None if there is none now, False at its end."""
        try:
            chunk = os.read(job.stderr_pipe.fileno(), READ_CHUNK)
        except BlockingIOError:
            return None
        if not chunk:
            self._selector.unregister(job.stderr_pipe)
            return False
        job.tail += chunk
        del job.tail[:-STDERR_TAIL_BYTES]
        try:
            self.stderr.write(chunk)
            self.stderr.flush()
        except (OSError, ValueError):
            pass
        return True

    def _close(self, job: _Job) -> None:
        if job.stdin is not None:
            if self._registered(job.stdin_pipe):
                self._selector.unregister(job.stdin_pipe)
            job.stdin_pipe.close()
            job.stdin = None
        # What it wrote before it exited (a child that outlives it is not waited for).
        while self._registered(job.stderr_pipe) and self._read_stderr(job):
            pass
        if self._registered(job.stderr_pipe):
            self._selector.unregister(job.stderr_pipe)
        job.stderr_pipe.close()
        if job.pidfd is not None:
            self._selector.unregister(job.pidfd)
            os.close(job.pidfd)
            job.pidfd = None

    def _finish(self, jobs: list[_Job]) -> None:
        with signals_held():  # each job's records are settled or still to acknowledge when an interrupt comes
            self._settle_finished(jobs)

    def _settle_finished(self, jobs: list[_Job]) -> None:
        ok: list[Delivery] = []
        for job in jobs:
            job.status = job.proc.wait()
            self._close(job)
            del self._jobs[job.proc.pid]
            if job.lost:
                continue
            if not job.failed():
                ok += job.deliveries
                self._failed_records.difference_update((d.partition, d.offset) for d in job.deliveries)
            else:
                self.failed += 1
                self._failed_records.update((d.partition, d.offset) for d in job.deliveries)
                out = self.consumer.nack(job.deliveries, job.failure())
                self.dead += out.dead
                self.lost += len(out.not_held)
        if ok:
            if not self._to_ack:
                self._ack_since = time.monotonic()
            self._to_ack += ok

    def _extend(self) -> None:
        now = time.monotonic()
        if now < self._next_extend:
            return
        self._next_extend = now + self._extend_every
        running = [d for job in self._jobs.values() if not job.lost for d in job.deliveries]
        running += [d for run in self._queue for d in run]
        if not running:
            return
        out = self.consumer.extend(running)
        if out.not_held:
            lost = set(out.not_held)
            for job in self._jobs.values():
                if any(d.lease in lost for d in job.deliveries) and not job.lost:
                    # Another worker may hold these records now: stop the command
                    # rather than run it beside theirs.
                    job.lost = True
                    self.lost += len(job.deliveries)
                    stop_command(job.proc)
            kept = [run for run in self._queue if not any(d.lease in lost for d in run)]
            self.lost += sum(len(run) for run in self._queue) - sum(len(run) for run in kept)
            self._queue = deque(kept)  # not started: never started now

    def _stop_all(self) -> None:
        """Interrupted: stop every command, and give its records (and those not started) back for
        another worker at once; acknowledge what succeeded."""
        # A command that had already exited 0 when the signal came succeeded,
        # even if the loop had not yet seen its exit: it counts as done.
        finished = [job for job in self._jobs.values() if job.proc.poll() == 0]
        try:
            self._finish(finished)
        except BaseException:
            pass
        try:
            self._flush_acks()
        except BaseException:  # redelivered once their leases run out
            pass
        jobs = list(self._jobs.values())
        for job in jobs:
            stop_command(job.proc)
        for job in jobs:
            try:
                self._close(job)
            except OSError:
                pass
        self._jobs.clear()
        mine = [d for job in jobs if not job.lost for d in job.deliveries] + [d for run in self._queue for d in run]
        self._queue.clear()
        if mine:
            try:
                self.consumer.release(mine)
            except BaseException:  # their leases run out instead
                pass
