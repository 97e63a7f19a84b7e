"""A hypothesis state machine drives the engine against a plain in-memory model.

Steps: append batches (small ones, and big ones that roll segments), read
from any offset, poll long-lived cursors, seek by timestamp (clocks go
backwards), commit and reset group offsets, consume as a group member, and
crash: drop every open file and reopen the data directory, sometimes with a
torn write of an unacknowledged batch, a torn index entry or a stale
temporary offsets file left behind. After every step the log must say
exactly what the model says.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import kq
from kq.backends.local import LocalBackend
from kq.engine import batch as batchfmt
from kq.groups.consumer import GroupConsumer
from kq.groups.store import Groups
from kq.offsetspec import ABSOLUTE, BEGINNING, END, FROM_END, RELATIVE, TIMESTAMP, OffsetSpec

PARTITIONS = 2
SEGMENT_BYTES = 4096  # the smallest allowed: segments roll every few steps
GROUPS = ["g1", "g2"]
MAX_EXAMPLES = 60  # state machine runs
STEPS = 50  # at most this many steps each
STEPS_RUN: Counter = Counter()  # per rule, over the whole test (printed with -s)

partition_st = st.integers(0, PARTITIONS - 1)
record_st = st.tuples(
    st.binary(max_size=120),  # value
    st.one_of(st.none(), st.binary(min_size=1, max_size=8)),  # key
    st.lists(st.tuples(st.text(max_size=4), st.binary(max_size=4)), max_size=2),  # headers
    st.integers(0, 10_000),  # timestamp: no order at all
)


def valid_end(data: bytes) -> int:
    """Where the valid batches of a segment's bytes end."""
    pos = 0
    while True:
        status, header = batchfmt.check(data, pos, len(data))
        if status != batchfmt.OK:
            return pos
        pos += header.size


class Engine(RuleBasedStateMachine):
    @initialize()
    def open(self):
        self.dir = tempfile.mkdtemp(prefix="kq-stateful-")
        self.path = os.path.join(self.dir, "data")
        self.data = kq.DataDir(self.path)
        self.topic = self.data.create_topic("t", PARTITIONS, {"segment_bytes": SEGMENT_BYTES})
        self.model: dict[int, list[tuple]] = {p: [] for p in range(PARTITIONS)}  # (value, key, headers, ts)
        self.committed: dict[tuple[str, int], int] = {}
        self.cursors: list[list] = []  # [cursor, partition, next offset expected]

    def teardown(self):
        if hasattr(self, "dir"):
            self._close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def _close(self):
        for cursor, _, _ in self.cursors:
            cursor.close()
        self.cursors = []
        self.topic.close()

    def _records(self, p: int, start: int) -> list[tuple]:
        """The model's records from ``start`` as (offset, value, key, headers, ts)."""
        return [(o, *r) for o, r in enumerate(self.model[p]) if o >= start]

    @staticmethod
    def _as_model(records) -> list[tuple]:
        return [(r.offset, r.value, r.key, [tuple(h) for h in r.headers], r.timestamp) for r in records]

    # ------------------------------------------------------------ writing

    @rule(p=partition_st, records=st.lists(record_st, min_size=1, max_size=8))
    def append(self, p, records):
        STEPS_RUN["append"] += 1
        values, keys, headers, stamps = (list(c) for c in zip(*records))
        first, last = self.topic.partition(p).append(values, keys=keys, headers=headers, timestamps=stamps)
        assert (first, last) == (len(self.model[p]), len(self.model[p]) + len(records) - 1)
        self.model[p] += [(v, k, [tuple(h) for h in hs], ts) for v, k, hs, ts in records]

    @rule(p=partition_st, ts=st.integers(0, 10_000), size=st.integers(1000, 3000))
    def append_big_batch_that_rolls(self, p, ts, size):
        STEPS_RUN["append_big_batch_that_rolls"] += 1
        part = self.topic.partition(p)
        before = len(part.segments())
        values = [b"R" * size, b"S" * size]
        first, _ = part.append(values, timestamp=ts)
        assert first == len(self.model[p])
        self.model[p] += [(v, None, [], ts) for v in values]
        STEPS_RUN["segment rolls seen"] += len(part.segments()) > before

    # ------------------------------------------------------------ reading

    @rule(p=partition_st, data=st.data())
    def read_from_any_offset(self, p, data):
        STEPS_RUN["read_from_any_offset"] += 1
        start = data.draw(st.integers(0, len(self.model[p]) + 2), label="start")
        assert self._as_model(self.topic.partition(p).read(start)) == self._records(p, start)

    @rule()
    def consume_everything(self):
        STEPS_RUN["consume_everything"] += 1
        consumer = kq.Consumer(self.topic)
        for p in range(PARTITIONS):
            consumer.add(p, 0)
        seen = {p: [] for p in range(PARTITIONS)}
        for round_ in consumer.rounds():
            for sl in round_:
                seen[sl.partition] += self._as_model(sl.batch.records(sl.start, sl.stop))
        consumer.close()
        for p in range(PARTITIONS):
            assert seen[p] == self._records(p, 0)

    @precondition(lambda self: len(self.cursors) < 3)
    @rule(p=partition_st, data=st.data())
    def open_cursor(self, p, data):
        STEPS_RUN["open_cursor"] += 1
        start = data.draw(st.integers(0, len(self.model[p])), label="start")
        self.cursors.append([self.topic.partition(p).cursor(start), p, start])

    @invariant()
    def open_cursors_see_every_append_once(self):
        """A cursor opened earlier sees every later append once, in order, across rolls."""
        for entry in getattr(self, "cursors", []):
            STEPS_RUN["cursor polls"] += 1
            cursor, p, expected = entry
            got = []
            while True:
                batches = cursor.poll()
                if not batches:
                    break
                for b in batches:
                    got += [r for r in self._as_model(b.records()) if r[0] >= expected]
                    expected = max(expected, b.next_offset)
            assert got == self._records(p, entry[2])
            entry[2] = len(self.model[p])

    @rule(p=partition_st, when=st.integers(-1, 10_001))
    def seek_by_timestamp(self, p, when):
        STEPS_RUN["seek_by_timestamp"] += 1
        want = next((o for o, r in enumerate(self.model[p]) if r[3] >= when), len(self.model[p]))
        assert self.topic.partition(p).offset_for_timestamp(when) == want

    # ------------------------------------------------------------ groups

    @rule(group=st.sampled_from(GROUPS), p=partition_st, data=st.data())
    def commit(self, group, p, data):
        STEPS_RUN["commit"] += 1
        offset = data.draw(st.integers(0, len(self.model[p])), label="offset")
        Groups(self.data).commit(group, "t", p, offset)
        self.committed[(group, p)] = offset

    @rule(group=st.sampled_from(GROUPS))
    def consume_as_a_group_member(self, group):
        """A member resumes at the committed offsets, gets the rest once, and commits to the end."""
        STEPS_RUN["consume_as_a_group_member"] += 1
        member = GroupConsumer(self.data, self.topic, group)
        seen = {p: [] for p in range(PARTITIONS)}
        try:
            for round_ in member.rounds():
                for sl in round_:
                    seen[sl.partition] += self._as_model(sl.batch.records(sl.start, sl.stop))
                    member.mark(sl.partition, sl.offset_after())
        finally:
            member.close()
        for p in range(PARTITIONS):
            assert seen[p] == self._records(p, self.committed.get((group, p), 0))
            self.committed[(group, p)] = len(self.model[p])

    @rule(
        group=st.sampled_from(GROUPS),
        spec=st.one_of(
            st.builds(OffsetSpec, st.sampled_from([BEGINNING, END])),
            st.builds(OffsetSpec, st.sampled_from([ABSOLUTE, FROM_END]), st.integers(0, 60)),
            st.builds(OffsetSpec, st.just(RELATIVE), st.integers(-30, 30)),
            st.builds(OffsetSpec, st.just(TIMESTAMP), st.integers(0, 10_001)),
        ),
    )
    def reset_offsets(self, group, spec):
        STEPS_RUN["reset_offsets"] += 1
        backend = LocalBackend(self.data)
        rows = backend.plan_reset(group, "t", spec)
        for row in rows:
            p = row["partition"]
            end = len(self.model[p])
            before = self.committed.get((group, p))
            wanted = {
                BEGINNING: 0,
                END: end,
                ABSOLUTE: spec.value,
                FROM_END: max(0, end - spec.value),
                RELATIVE: (before or 0) + spec.value,
                TIMESTAMP: next((o for o, r in enumerate(self.model[p]) if r[3] >= spec.value), end),
            }[spec.kind]
            assert (row["before"], row["after"]) == (before, min(max(wanted, 0), end)), (spec, row)
        backend.apply_reset(group, "t", rows)
        backend.close()
        for row in rows:
            self.committed[(group, row["partition"])] = row["after"]

    # ------------------------------------------------------------ crashes

    @rule(
        p=partition_st,
        torn=st.one_of(st.none(), st.integers(1, 10_000)),
        torn_index=st.integers(0, 23),
        stale_commit=st.booleans(),
        records=st.lists(record_st, min_size=1, max_size=4),
    )
    def crash_and_reopen(self, p, torn, torn_index, stale_commit, records):
        """Everything this process had open is gone; what a crashed writer left is on disk.

        ``torn``: that writer was killed mid-append, so part of a batch nobody
        acknowledged is at the end of the last segment (and maybe part of an
        index entry). ``stale_commit``: a committer died before its rename.
        """
        STEPS_RUN["crash_and_reopen"] += 1
        self._close()
        part_dir = os.path.join(self.path, "topics", "t", str(p))
        if torn is not None:
            STEPS_RUN["crash_and_reopen with a torn batch"] += 1
            last = max(int(n[:20]) for n in os.listdir(part_dir) if n.endswith(".log"))
            values, keys, headers, stamps = (list(c) for c in zip(*records))
            batch = batchfmt.encode(len(self.model[p]), values, keys=keys, headers=headers, timestamps=stamps)
            log = os.path.join(part_dir, f"{last:020d}.log")
            # A crashed writer had recovered the tail before it wrote: an
            # earlier torn batch no writer cut off since is gone first.
            with open(log, "r+b") as f:
                f.truncate(valid_end(f.read()))
                f.write(batch[: 1 + torn % (len(batch) - 1)])
            if torn_index:
                with open(os.path.join(part_dir, f"{last:020d}.index"), "ab") as f:
                    f.write(b"\x7f" * torn_index)
        if stale_commit:
            gdir = os.path.join(self.path, "groups", "g1", "t")
            os.makedirs(gdir, exist_ok=True)
            with open(os.path.join(gdir, f"{p}.offset.tmp-424242"), "wb") as f:
                f.write(b'{"format": 1, "offset": 99')
        self.data = kq.DataDir(self.path)
        self.topic = self.data.topic("t")

    # ------------------------------------------------------------ always

    @invariant()
    def ends_and_commits_match_the_model(self):
        if not hasattr(self, "topic"):
            return
        for p in range(PARTITIONS):
            part = self.topic.partition(p)
            assert part.start_offset() == 0
            assert part.end_offset() == len(self.model[p])
        groups = Groups(self.data)
        for group in GROUPS:
            want = {p: o for (g, p), o in self.committed.items() if g == group}
            assert groups.committed(group, "t") == want


def test_the_engine_matches_an_in_memory_model_through_rolls_resets_and_crashes():
    STEPS_RUN.clear()
    run_state_machine_as_test(
        Engine,
        settings=settings(
            max_examples=MAX_EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
            print_blob=True,
        ),
    )
    print("\n[stateful] " + ", ".join(f"{k}={v}" for k, v in sorted(STEPS_RUN.items())))
    assert STEPS_RUN["crash_and_reopen with a torn batch"] > 0 and STEPS_RUN["segment rolls seen"] > 0
