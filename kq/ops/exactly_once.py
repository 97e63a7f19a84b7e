"""``consume -g G --exec CMD --produce-to OUT``: a command between two topics, exactly once.

Per batch of one partition's records (as ``--exec`` cuts them), CMD runs
with the records on its stdin; if it exits 0, its stdout, split into
messages as ``kq produce`` splits its input, is sent to OUT and the group's
offset after the batch is committed, both in one transaction
(kq.backends.base.Transaction). A transaction may hold several batches
(COMMIT_SECONDS), which are then done again together after a crash. If it fails, nothing of the batch is
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
import time
import uuid
from typing import Any

from ..runner import CommandFailed, Failure, batches_of, signals_held, stop_command

# A transaction holds the batches of at most this long (and ends with each round of the reader).
COMMIT_SECONDS = 0.1


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
        self._offsets: dict[int, int] = {}  # partition -> offset after its last batch sent, not yet committed
        self._pending = self._pending_out = 0  # input and output records sent, not yet committed
        self._commit_due = time.monotonic() + COMMIT_SECONDS

    def run(self, rounds) -> None:
        failed: set[int] = set()
        try:
            for slices in rounds:
                for run in batches_of(slices, self.size):
                    partition = run[0].partition
                    if partition in failed:
                        continue
                    status, timed_out, output = self._run(run)
                    if status == 0 and not timed_out:
                        self._send(partition, run, output)
                        if time.monotonic() >= self._commit_due:
                            self.commit()
                        continue
                    failed.add(partition)
                    first, last = run[0].batch.offsets()[run[0].start], run[-1].batch.offsets()[run[-1].stop - 1]
                    self.failures.append(
                        Failure(self.in_topic, partition, first, last, status, self.timeout if timed_out else None)
                    )
                    self.reader.stop_partition(partition)
                # The end of a round: what the reader had is done; commit before waiting for more.
                self.commit()
        except BaseException:
            # An interrupt (or an error) part way through sending a batch: nothing of the open
            # transaction may stay; the next run does its batches again.
            self._abort()
            raise
        if self.failures:
            raise CommandFailed(self.command, self.failures)

    def _send(self, partition: int, run, output: bytes) -> None:
        """A batch the command accepted: its output and its offset join the open transaction."""
        messages = split_messages(output, self.delimiter)
        if messages:
            self.producer.send_values(messages, size=len(output))
        self._offsets[partition] = run[-1].offset_after()
        self._pending += sum(sl.stop - sl.start for sl in run)
        self._pending_out += len(messages)

    def commit(self) -> None:
        """Commit the batches sent since the last commit: their output and the group's offsets, at once.

        Several batches share a transaction (one at least every COMMIT_SECONDS, as Kafka Streams
        commits every commit.interval.ms): what a crash undoes is redone whole by the next run.
        """
        self._commit_due = time.monotonic() + COMMIT_SECONDS
        if not self._pending:
            return
        offsets, self._offsets = self._offsets, {}
        passed = getattr(self.reader, "passed", None)  # a directory's group reader moves past markers
        if passed is not None:
            offsets = {p: passed(p, o) for p, o in offsets.items()}
        self.transaction.send_offsets(self.group, self.in_topic, offsets)
        try:
            self.transaction.commit()
        except BaseException:
            self._abort()
            raise
        self.done += self._pending
        self.produced += self._pending_out
        self._pending = self._pending_out = 0

    def _abort(self) -> None:
        self._offsets, self._pending, self._pending_out = {}, 0, 0
        try:
            self.transaction.abort()
        except Exception:  # noqa: S110 (the error that led here is the one to raise)
            pass

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
