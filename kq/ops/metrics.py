"""Metrics in Prometheus's text exposition format, named as kafka_exporter names them.

docs/METRICS.md lists every metric beside kafka_exporter's. The values come
from one ``kq.ops.observe.Snapshot`` (what is on disk), never from a counter
a producer or consumer must update.

The text format (version 0.0.4) is written here rather than through
prometheus-client: it is a few lines per metric, gauges and one histogram
are all kq needs, and kq's dependencies stay as they are. What the format
asks for is kept: ``# HELP`` and ``# TYPE`` once per family, label values
escaped (backslash, double quote, newline), a histogram's buckets
cumulative up to ``+Inf`` with ``_sum`` and ``_count``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .observe import Snapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def escape_label(value: str) -> str:
    """A label value as the text format writes it between double quotes."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


@dataclass
class Family:
    """A metric family: its name, type, help, and samples (labels, value)."""

    name: str
    type: str  # gauge, counter, histogram
    help: str
    # (suffix, labels, value); labels as a dict, or as the text between the braces (``labels_text``)
    samples: list[tuple[str, dict[str, str] | str, float]] = field(default_factory=list)

    def add(self, value: float, suffix: str = "", **labels: object) -> None:
        self.samples.append((suffix, {k: str(v) for k, v in labels.items()}, value))

    def add_labelled(self, value: float, labels: dict[str, object], suffix: str = "") -> None:
        self.samples.append((suffix, {k: str(v) for k, v in labels.items()}, value))

    def add_text(self, value: float, labels: str, suffix: str = "") -> None:
        """A sample whose labels are already written (``labels_text``): a big snapshot's labels
        share their group and topic parts, written once rather than once a sample."""
        self.samples.append((suffix, labels, value))

    def lines(self) -> list[str]:
        name = self.name
        out = [f"# HELP {name} {_escape_help(self.help)}", f"# TYPE {name} {self.type}"]
        for suffix, labels, value in self.samples:
            shown = labels if isinstance(labels, str) else labels_text(labels)
            out.append(f"{name}{suffix}{{{shown}}} {_number(value)}" if shown else f"{name}{suffix} {_number(value)}")
        return out

    def render(self) -> str:
        return "\n".join(self.lines()) + "\n"


def labels_text(labels: Mapping[str, object]) -> str:
    """Labels as the text format writes them between braces: ``topic="a",partition="0"``."""
    return ",".join(f'{k}="{escape_label(str(v))}"' for k, v in labels.items())


def render(families: Iterable[Family]) -> bytes:
    """The exposition text of ``families`` (those with no samples left out), joined once."""
    lines = [line for f in families if f.samples for line in f.lines()]
    return ("\n".join(lines) + "\n").encode() if lines else b""


def snapshot_families(snap: Snapshot, seconds: float | None = None) -> list[Family]:
    """The metrics of one snapshot; ``seconds``: how long it took (kq_snapshot_duration_seconds)."""
    partitions = Family("kafka_topic_partitions", "gauge", "Number of partitions for this Topic")
    current = Family("kafka_topic_partition_current_offset", "gauge", "Current Offset of a Broker at Topic/Partition")
    oldest = Family("kafka_topic_partition_oldest_offset", "gauge", "Oldest Offset of a Broker at Topic/Partition")
    size = Family("kq_topic_partition_bytes", "gauge", "Bytes on disk of a topic's partition (its segment files)")
    for topic in snap.topics.values():
        named = f'topic="{escape_label(topic.name)}"'
        partitions.add_text(topic.partition_count, named)
        for p in topic.partitions:
            shown = f'{named},partition="{p.partition}"'
            current.add_text(p.current, shown)
            oldest.add_text(p.oldest, shown)
            if p.size is not None:
                size.add_text(p.size, shown)

    group_offset = Family(
        "kafka_consumergroup_current_offset", "gauge", "Current Offset of a ConsumerGroup at Topic/Partition"
    )
    group_offset_sum = Family(
        "kafka_consumergroup_current_offset_sum",
        "gauge",
        "Current Offset of a ConsumerGroup at Topic for all partitions",
    )
    lag = Family("kafka_consumergroup_lag", "gauge", "Current Approximate Lag of a ConsumerGroup at Topic/Partition")
    lag_sum = Family(
        "kafka_consumergroup_lag_sum", "gauge", "Current Approximate Lag of a ConsumerGroup at Topic for all partitions"
    )
    members = Family("kafka_consumergroup_members", "gauge", "Amount of members in a consumer group")
    committed_at = Family(
        "kq_consumergroup_last_commit_timestamp_seconds",
        "gauge",
        "When a ConsumerGroup last committed its offset at Topic/Partition (seconds since the epoch)",
    )
    topic_labels = {name: f'topic="{escape_label(name)}"' for name in snap.topics}
    for group in snap.groups.values():
        named = f'consumergroup="{escape_label(group.name)}"'
        members.add_text(len(group.members), named)
        sums: dict[str, list] = {}  # topic -> [offsets, lag, partitions committed, its labels]
        for gp in group.partitions:
            total = sums.get(gp.topic)
            if total is None:
                shown_topic = topic_labels.get(gp.topic) or f'topic="{escape_label(gp.topic)}"'
                total = sums[gp.topic] = [0, 0, 0, f"{named},{shown_topic}"]
            shown = f'{total[3]},partition="{gp.partition}"'
            if gp.committed is not None:
                group_offset.add_text(gp.committed, shown)
                total[0] += gp.committed
                total[2] += 1
            lag.add_text(gp.lag, shown)
            total[1] += gp.lag
            if gp.committed_at is not None:
                committed_at.add_text(gp.committed_at / 1000, shown)
        for offset_total, lag_total, committed_count, shown in sums.values():
            if committed_count:
                group_offset_sum.add_text(offset_total, shown)
            lag_sum.add_text(lag_total, shown)

    counts = {
        name: Family(f"kq_sharegroup_{name}", "gauge", text)
        for name, text in (
            ("acquired", "Records of a share group under a live lease at Topic/Partition"),
            ("retrying", "Records of a share group waiting for another attempt at Topic/Partition"),
            ("dead_lettered", "Records of a share group that failed for good at Topic/Partition"),
            ("available", "Records of a share group waiting for a worker at Topic/Partition"),
            ("lag", "Records of a share group not yet settled at Topic/Partition"),
        )
    }
    share_members = Family("kq_sharegroup_members", "gauge", "Live workers of a share group")
    for share in snap.shares.values():
        share_members.add(share.members, sharegroup=share.name)
        for sp in share.partitions:
            for name, family in counts.items():
                family.add(getattr(sp, name), sharegroup=share.name, topic=sp.topic, partition=sp.partition)

    own = Family("kq_snapshot_problems", "gauge", "Topics and groups kq could not read in this snapshot")
    own.add(len(snap.problems))
    families = [partitions, current, oldest, size, group_offset, group_offset_sum, lag, lag_sum, members]
    families += [committed_at, *counts.values(), share_members, own]
    if seconds is not None:
        took = Family("kq_snapshot_duration_seconds", "gauge", "How long reading this snapshot took")
        took.add(round(seconds, 6))
        families.append(took)
    return families


class Histogram:
    """Counts of durations in fixed buckets, per label value (kq serve's request latencies).

    ``observe`` is a few list operations, for a hot path; buckets are kept
    as plain counts and made cumulative when rendered, so ``_count`` always
    equals the ``+Inf`` bucket of the same rendering.
    """

    BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

    def __init__(self) -> None:
        self._counts: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}

    def observe(self, label: str, seconds: float) -> None:
        counts = self._counts.get(label)
        if counts is None:
            counts = self._counts[label] = [0] * (len(self.BUCKETS) + 1)
            self._sums[label] = 0.0
        index = 0
        for bound in self.BUCKETS:  # most requests take well under a millisecond: the loop ends early
            if seconds <= bound:
                break
            index += 1
        counts[index] += 1
        self._sums[label] += seconds

    def families(self, counter: Family, histogram: Family, label_name: str) -> None:
        """Add the totals to ``counter`` and the buckets to ``histogram``."""
        for label in sorted(self._counts):
            counts = list(self._counts[label])  # a copy: the hot path goes on meanwhile
            running = 0
            for bound, n in zip((*self.BUCKETS, math.inf), counts):
                running += n
                histogram.add_labelled(running, {label_name: label, "le": _number(bound)}, "_bucket")
            histogram.add_labelled(self._sums[label], {label_name: label}, "_sum")
            histogram.add_labelled(running, {label_name: label}, "_count")
            counter.add_labelled(running, {label_name: label})
