"""Measuring processes: wall time with peak RSS, CPU time, and lines as they arrive on pipes."""

from __future__ import annotations

import math
import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TIME = "/usr/bin/time"  # GNU time, for peak RSS


@dataclass
class Run:
    seconds: float
    output: bytes
    peak_rss_mb: float | None = None


def run(cmd: list[str], stdin: Path | None = None, capture: bool = False, peak_rss: bool = False) -> Run:
    """Run ``cmd`` to completion and time it.

    Output is captured through a file, not a pipe, so the parent never takes
    part in the timed work (and cannot deadlock on a full pipe). ``peak_rss``
    runs the command under GNU time: a child forked from this large process
    would report this process's RSS as its own peak, while time is small.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile() as rss:
        if peak_rss:
            cmd = [TIME, "-f", "%M", "-o", rss.name, *cmd]
        with open(stdin, "rb") if stdin else open(os.devnull, "rb") as stdin_file:
            start = time.perf_counter()
            status = subprocess.run(
                cmd, stdin=stdin_file, stdout=out if capture else subprocess.DEVNULL, stderr=err
            ).returncode
            seconds = time.perf_counter() - start
        if status != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} exited {status}: {err.read().decode(errors='replace')}")
        out.seek(0)
        return Run(
            seconds, out.read() if capture else b"", int(Path(rss.name).read_text()) / 1024 if peak_rss else None
        )  # time's %M is in KiB


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces; the fields after its closing parenthesis do not.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


class LineCollector:
    """Reads lines from several pipes on threads, noting when each chunk arrived."""

    def __init__(self):
        self.arrivals: list[tuple[int, list[bytes]]] = []  # (time_ns at arrival, its lines)
        self.count = 0
        self._changed = threading.Condition()
        self._threads: list[threading.Thread] = []

    def attach(self, stream) -> None:
        thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _read(self, stream) -> None:
        pending = b""
        fd = stream.fileno()
        while chunk := os.read(fd, 1 << 20):
            arrived = time.time_ns()
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            if lines:
                with self._changed:
                    self.arrivals.append((arrived, lines))
                    self.count += len(lines)
                    self._changed.notify_all()

    def wait_for(self, count: int, timeout: float) -> bool:
        """True once ``count`` lines have arrived in all, False if ``timeout`` seconds pass first."""
        with self._changed:
            return self._changed.wait_for(lambda: self.count >= count, timeout)

    def lines(self) -> list[bytes]:
        with self._changed:
            return [line for _, lines in self.arrivals for line in lines]

    def join(self, timeout: float = 5.0) -> None:
        for thread in self._threads:
            thread.join(timeout)


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM a process we started and reap it (SIGKILL if it lingers)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]
