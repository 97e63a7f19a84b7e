"""Running a command per record of a share group (``consume --share --exec``).

Up to ``parallel`` commands run at once, each on one record (or a batch of
up to ``batch`` records of one partition) written to its stdin, with the
record's coordinates in ``KQ_*`` environment variables. While a command
runs, its leases are extended; when it exits 0 its records are
acknowledged, otherwise released for another attempt after the group's
backoff (or dead-lettered at the last attempt), with the exit status and
the last lines of the command's stderr (which is also passed through).
A command that runs longer than ``exec_timeout`` is stopped (SIGTERM, then
SIGKILL after ``kq.share.commands.KILL_GRACE_SECONDS``) and counts as failed.

One thread waits for everything (a selector over the commands' pipes and
process descriptors), so no lock is ever held while a command is forked.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from collections import deque

from ..consumer import BUSY_SECONDS, IDLE_POLL_SECONDS, POLL_SECONDS, IdleClock
from ..runner import signals_held, stop_command
from .commands import Commands, Job
from .consumer import ShareConsumer
from .deliveries import Delivery

# Records whose command succeeded are acknowledged with the next acquisition
# (one state change for both), or after this long if no acquisition comes.
ACK_SECONDS = 0.05


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
        self._commands = Commands(command, stderr if stderr is not None else sys.stderr.buffer, exec_timeout)
        self._jobs = self._commands.jobs  # running, by pid
        self._queue: deque[list[Delivery]] = deque()  # runs acquired, waiting for a free slot
        self._to_ack: list[Delivery] = []  # succeeded, acknowledged with the next acquisition
        self._ack_since = 0.0
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
            self._commands.close()
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
        env = record_environment(self.consumer.topic.name, self.consumer.share, deliveries)
        stdin = b"".join(self.write(d.partition, d.batch, d.index, d.index + 1) for d in deliveries)
        self._commands.spawn(deliveries, env, stdin)

    def _wait(self) -> None:
        now = time.monotonic()
        timeout = self._next_extend - now
        if len(self._jobs) < self.parallel and not self._done_acquiring():
            timeout = min(timeout, max(self._next_poll - now, POLL_SECONDS))
        finished = self._commands.wait(timeout)
        if finished:
            self._finish(finished)
        self._commands.stop_overdue()

    def _finish(self, jobs: list[Job]) -> None:
        with signals_held():  # each job's records are settled or still to acknowledge when an interrupt comes
            self._settle_finished(jobs)

    def _settle_finished(self, jobs: list[Job]) -> None:
        ok: list[Delivery] = []
        for job in jobs:
            self._commands.reap(job)
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
                self._commands.close_job(job)
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
