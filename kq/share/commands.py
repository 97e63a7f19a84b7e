"""The commands of ``consume --share --exec`` as processes: started, fed their stdin as their pipe
drains, their stderr passed on (its tail kept for the dead-letter headers), waited for with one
selector over their pipes and process descriptors, stopped past ``--exec-timeout``.

What a command's records are and what comes of them (acquired, extended, acknowledged, retried)
is kq.share.runner's.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from typing import IO

from .deliveries import Delivery, Failure

STDERR_TAIL_BYTES = 4096  # kept of each command's stderr, for the dead-letter headers
STDERR_TAIL_LINES = 10
READ_CHUNK = 65536
# A command stopped for running too long gets this long after SIGTERM to exit before SIGKILL.
KILL_GRACE_SECONDS = 5.0


class Job:
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


class Commands:
    """The commands running at once (``jobs``, by pid), and the selector that waits for all of them."""

    def __init__(self, command: str, stderr, exec_timeout: float | None):
        self.command = command
        self.stderr = stderr
        self.exec_timeout = exec_timeout
        self.jobs: dict[int, Job] = {}
        self._selector = selectors.DefaultSelector()
        # Encoded once: Popen would encode every variable again for every record.
        self._base_env = {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()}

    def spawn(self, deliveries: list[Delivery], env: dict[str, str], stdin: bytes) -> Job:
        """Start the command on ``deliveries`` with ``env`` (beside kq's environment) and ``stdin``."""
        full = dict(self._base_env)
        for k, v in env.items():
            full[k.encode()] = v.encode("utf-8", "surrogateescape")
        # Its own process group, so that stopping kq stops the whole command.
        group = {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
        proc = subprocess.Popen(
            self.command, shell=True, stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=full, **group
        )
        job = Job(proc, deliveries, stdin)
        if self.exec_timeout is not None:
            job.deadline = time.monotonic() + self.exec_timeout
        self.jobs[proc.pid] = job
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
        return job

    def _feed(self, job: Job) -> None:
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

    def wait(self, timeout: float) -> list[Job]:
        """Wait up to ``timeout`` seconds for the commands (feeding stdin, passing on stderr); the jobs that exited."""
        now = time.monotonic()
        if any(job.pidfd is None for job in self.jobs.values()):
            timeout = min(timeout, 0.01)
        deadlines = [job.deadline for job in self.jobs.values() if job.deadline is not None]
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
        for job in self.jobs.values():
            if job.pidfd is None and job.proc.poll() is not None:
                finished.append(job)
        return finished

    def stop_overdue(self) -> None:
        """SIGTERM to the process group of each command past --exec-timeout; SIGKILL to one that
        is still there ``KILL_GRACE_SECONDS`` later. Its exit comes through the selector."""
        now = time.monotonic()
        for job in self.jobs.values():
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

    def _read_stderr(self, job: Job) -> bool | None:
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

    def close_job(self, job: Job) -> None:
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

    def reap(self, job: Job) -> None:
        """The exited ``job``'s status, what it last wrote to stderr; it is no longer running."""
        job.status = job.proc.wait()
        self.close_job(job)
        del self.jobs[job.proc.pid]

    def close(self) -> None:
        self._selector.close()
