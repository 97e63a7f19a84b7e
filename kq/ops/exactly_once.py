"""``consume -g G --exec CMD --produce-to OUT``: a command between two topics, exactly once.

Per batch of one partition's records (as ``--exec`` cuts them), CMD runs
with the records on its stdin; if it exits 0, its stdout, split into
messages as ``kq produce`` splits its input, is sent to OUT and the group's
offset after the batch is committed, both in one transaction
(kq.backends.base.Transaction). If it fails, nothing of the batch is
written or committed and its partition stops for this run, as ``--exec``
does. A kill -9 of kq or of CMD at any moment leaves either the whole
batch's output and its offset, or neither: the next run does the batch
again. So OUT holds each output once, provided CMD gives the same output
for the same input (a deterministic CMD: docs/GUARANTEES.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Any

from ..runner import CommandFailed, Failure, batches_of, signals_held, stop_command


class ExactlyOncePipeline:
    """Runs ``command`` per batch of ``reader``'s records and sends its output to ``out_topic`` in one
    transaction with the group's offsets.

    ``reader`` is a group reader made with ``commits=False`` (the transaction commits its offsets);
    ``transaction`` a kq.backends.base.Transaction; ``write(partition, batch, start, stop)`` renders
    records for the command's stdin; ``delimiter`` splits its stdout into messages.
    """

    def __init__(
        self,
        reader,
        transaction,
        group: str,
        in_topic: str,
        out_topic: str,
        command: str,
        size: int,
        write,
        delimiter: bytes = b"\n",
        timeout: float | None = None,
    ):
        self.reader = reader
        self.transaction = transaction
        self.group = group
        self.in_topic = in_topic
        self.command = command
        self.size = size
        self.write = write
        self.delimiter = delimiter
        self.timeout = timeout
        self.producer = transaction.producer(out_topic)
        self.done = 0  # input records whose batch committed
        self.produced = 0  # output records committed
        self.failures: list[Failure] = []

    def run(self, rounds) -> None:
        failed: set[int] = set()
        for slices in rounds:
            for run in batches_of(slices, self.size):
                partition = run[0].partition
                if partition in failed:
                    continue
                status, timed_out, output = self._run(run)
                if status == 0 and not timed_out:
                    self._commit(partition, run, output)
                    continue
                failed.add(partition)
                first, last = run[0].batch.offsets()[run[0].start], run[-1].batch.offsets()[run[-1].stop - 1]
                self.failures.append(
                    Failure(self.in_topic, partition, first, last, status, self.timeout if timed_out else None)
                )
                self.reader.stop_partition(partition)
        if self.failures:
            raise CommandFailed(self.command, self.failures)

    def _commit(self, partition: int, run, output: bytes) -> None:
        messages = split_messages(output, self.delimiter)
        if messages:
            self.producer.send_values(messages, size=len(output))
        self.transaction.send_offsets(self.group, self.in_topic, {partition: run[-1].offset_after()})
        try:
            self.transaction.commit()
        except BaseException:
            try:
                self.transaction.abort()
            except Exception:  # noqa: S110 (the commit's error is the one to raise)
                pass
            raise
        self.done += sum(sl.stop - sl.start for sl in run)
        self.produced += len(messages)

    def _run(self, run) -> tuple[int, bool, bytes]:
        """Run the command on ``run``: its exit status, whether it ran too long, and its stdout."""
        sl = run[0]
        env = {
            **os.environ,
            "KQ_TOPIC": self.in_topic,
            "KQ_PARTITION": str(sl.partition),
            "KQ_OFFSET": str(sl.batch.offsets()[sl.start]),
            "KQ_LAST_OFFSET": str(run[-1].batch.offsets()[run[-1].stop - 1]),
        }
        group: dict[str, Any] = {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
        proc: subprocess.Popen[bytes] | None = None
        try:
            with signals_held():
                proc = subprocess.Popen(
                    self.command, shell=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, **group
                )
            data = b"".join(self.write(s.partition, s.batch, s.start, s.stop) for s in run)
            try:
                out, _ = proc.communicate(data, timeout=self.timeout)
            except subprocess.TimeoutExpired:
                stop_command(proc)
                return proc.wait(), True, b""
            return proc.wait(), False, out or b""
        except BaseException:
            if proc is not None:
                stop_command(proc)
            raise


def split_messages(output: bytes, delimiter: bytes) -> list[bytes]:
    """The messages of a command's output, split as ``kq produce`` splits its input (the last needs no delimiter)."""
    if not output:
        return []
    messages = output.split(delimiter)
    if not messages[-1]:
        messages.pop()
    return messages


def pipeline_transactional_id(group: str) -> str:
    """A transactional id for one run of a pipeline of ``group`` (each run fences nobody but itself)."""
    return f"kq-exec-{group}-{uuid.uuid4().hex[:16]}"
