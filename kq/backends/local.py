"""The backend over a kq data directory: the storage engine and the file-lock groups."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..consumer import Consumer
from ..engine.datadir import DataDir
from ..engine.topic import Topic
from ..errors import KqError, TopicNotFound, warn
from ..groups.consumer import GroupConsumer, group_start_offsets
from ..groups.store import Groups
from ..offsetspec import BEGINNING, OffsetRange, OffsetSpec
from ..producer import Producer
from .base import Backend, GroupTopicOffsets, PartitionInfo, TopicInfo

if TYPE_CHECKING:
    from .local_describe import TopicDescriber


def settle_transactions(data: DataDir) -> list[str]:
    """Finish the transactions whose producer is gone or that ran past their timeout (a line for each).

    Until then read_committed readers wait at their first offsets. Any kq
    process that opens a directory's topics does this once (kq maintain too);
    a directory it may not write is left as it is.
    """
    from ..engine.transactions import has_transactions

    if not has_transactions(data.path):
        return []
    try:
        return data.transactions(commit_offset=Groups(data).transaction_committer()).resolve_abandoned()
    except (OSError, KqError) as exc:
        warn(f"could not finish abandoned transactions in {data.path}: {exc}")
        return []


class LocalBackend(Backend):
    """Topics, records and groups of one data directory (``DataDir``, or its path)."""

    def __init__(self, data: DataDir | str | None = None):
        self.data = data if isinstance(data, DataDir) else DataDir(data)
        self.groups = Groups(self.data)
        self.description = f"data directory {self.data.path}"
        self._topics: dict[str, Topic] = {}
        self._describer: TopicDescriber | None = None
        self._offsets_seen: dict = {}  # Groups.overview's memory: what each group's directories held
        self._settled = False

    def __repr__(self) -> str:
        return f"LocalBackend({self.data.path!r})"

    def topic(self, name: str) -> Topic:
        """The engine's Topic, opened once per backend (its partitions keep their files open)."""
        t = self._topics.get(name)
        if t is None:
            if not self._settled:
                self._settled = True
                settle_transactions(self.data)
            t = self._topics[name] = self.data.topic(name)
        return t

    def _forget(self, name: str) -> None:
        t = self._topics.pop(name, None)
        if t is not None:
            t.close()

    def close(self) -> None:
        for name in list(self._topics):
            self._forget(name)
        if self._describer is not None:
            self._describer.close()

    def data_dir(self, command: str) -> DataDir:
        return self.data

    # ------------------------------------------------------------------ topics

    def topic_names(self) -> list[str]:
        return self.data.topic_names()

    def partition_count(self, topic: str) -> int:
        return self.topic(topic).partition_count

    def topic_id(self, topic: str) -> str | None:
        return self.topic(topic).id

    def describe_topic(self, topic: str) -> TopicInfo:
        return _described(self.topic(topic), uncompressed=True)

    def describe_topics(self, topics: list[str]) -> tuple[list[TopicInfo], list[str]]:
        # Every topic as it is now: another process may have added partitions or re-created it
        # since this backend opened it. kq top asks every second, so partitions whose files have
        # not changed since the last call are not read again (kq.backends.local_describe).
        if self._describer is None:
            from .local_describe import TopicDescriber

            self._describer = TopicDescriber(self.data)
        return self._describer.describe(topics)

    def create_topic(self, topic: str, partitions: int = 1, config: dict | None = None) -> TopicInfo:
        t = self.data.create_topic(topic, partitions, config)
        self._topics[topic] = t
        return TopicInfo(t.name, [PartitionInfo(n, 0, 0, 0) for n in range(t.partition_count)], dict(t.config))

    def alter_topic(self, topic: str, changes: dict) -> dict:
        self._forget(topic)
        return dict(self.data.alter_topic(topic, changes).config)

    def add_partitions(self, topic: str, count: int) -> None:
        self.data.add_partitions(self.topic(topic), count)

    def delete_topic(self, topic: str) -> None:
        self._forget(topic)
        self.data.delete_topic(topic)

    def trim(self, topic: str, before: OffsetSpec, partitions: list[int] | None = None) -> list[dict]:
        from ..engine.maintain import trim

        t = self.topic(topic)
        rows = []
        for n in sorted({t.partition(p).number for p in partitions}) if partitions else range(t.partition_count):
            part = t.partition(n)
            r = trim(part, before.resolve(part))
            rows.append(
                {
                    "partition": n,
                    "start_offset": r.start_offset,
                    "segments_deleted": r.segments_deleted,
                    "bytes_reclaimed": r.bytes_reclaimed,
                }
            )
        return rows

    # ------------------------------------------------------------------ records

    def offset_for_timestamp(self, topic: str, partition: int, timestamp: int) -> int:
        return self.topic(topic).partition(partition).offset_for_timestamp(timestamp)

    def producer(
        self,
        topic: str,
        partition: int | None = None,
        sync: bool = False,
        idempotent: bool = False,
        dedup_window_ms: int | None = None,
        dedup_header: str | None = None,
    ) -> Producer:
        t = self.topic(topic)  # appends never repeat or reorder a record: ``idempotent`` holds as is
        if sync:
            t.sync_every_batch()
        window = dedup_window_ms if dedup_window_ms is not None else t.config["dedup_window_ms"]
        dedup = None
        if window is not None:
            from ..engine.dedup import DedupWindow

            dedup = DedupWindow(t, window, dedup_header if dedup_header is not None else t.config["dedup_header"])
        # In the background: the next batch is read and packed while one is written.
        return Producer(t, partition, background=True, dedup=dedup)

    def transaction(
        self, transactional_id: str, timeout_ms: int | None = None, sync: bool = False, ephemeral: bool = False
    ):
        from ..engine.transactions import DEFAULT_TIMEOUT_MS
        from .local_transaction import LocalTransaction

        return LocalTransaction(self, transactional_id, timeout_ms or DEFAULT_TIMEOUT_MS, sync, ephemeral)

    def reader(
        self,
        topic: str,
        partitions: list[int] | None = None,
        offsets: OffsetRange = OffsetRange(OffsetSpec(BEGINNING)),
        follow: bool = False,
        isolation: str = "read_committed",
    ) -> Consumer:
        t = self.topic(topic)
        numbers = sorted({t.partition(p).number for p in partitions}) if partitions else None
        return self._settling(Consumer.from_spec(t, numbers, offsets, follow=follow, isolation=isolation))

    def reader_from(
        self, topic: str, starts: dict[int, int], follow: bool = False, isolation: str = "read_committed"
    ) -> Consumer:
        t = self.topic(topic)
        reader = Consumer(t, follow=follow, isolation=isolation)
        for p, start in sorted(starts.items()):
            reader.add(t.partition(p).number, start)
        return self._settling(reader)

    # ------------------------------------------------------------------ groups

    def group_reader(
        self, topic: str, group: str, follow: bool = False, reset: str = "earliest", isolation: str = "read_committed"
    ) -> GroupConsumer:
        reader = GroupConsumer(self.data, self.topic(topic), group, follow=follow, reset=reset, isolation=isolation)
        self._settling(reader.consumer)
        return reader

    def _settling(self, reader: Consumer) -> Consumer:
        """A follower finishes the transactions of dead producers that hold it at a last stable offset."""
        reader.settle = lambda: settle_transactions(self.data)
        return reader

    def transactional_group_reader(
        self, topic: str, group: str, transaction, follow: bool = False, reset: str = "earliest"
    ) -> GroupConsumer:
        reader = GroupConsumer(
            self.data,
            self.topic(topic),
            group,
            follow=follow,
            reset=reset,
            commits=False,
            before_resume=transaction.resolve_abandoned,
        )
        self._settling(reader.consumer)
        return reader

    def group_peek(
        self, topic: str, group: str, follow: bool = False, reset: str = "earliest", isolation: str = "read_committed"
    ) -> Consumer:
        t = self.topic(topic)
        reader = Consumer(t, follow=follow, isolation=isolation)
        for p, start in group_start_offsets(self.data, t, group, reset).items():
            reader.add(p, start)
        return self._settling(reader)

    def group_names(self) -> list[str]:
        return self.groups.names()

    def group_topics(self, group: str) -> list[str]:
        return self.groups.topics(group)

    def groups_of_topic(self, topic: str) -> list[str]:
        return self.groups.groups_of_topic(topic)

    def committed(self, group: str, topic: str) -> dict[int, int]:
        return self.groups.committed(group, self.topic(topic))

    def committed_with_metadata(self, group: str, topic: str) -> dict[int, tuple[int, str]]:
        found = self.groups.committed_offsets(group, self.topic(topic))
        return {p: (c.offset, c.metadata) for p, c in found.items()}

    def members(self, group: str) -> list[dict]:
        if not self.groups.exists(group):
            from ..errors import GroupNotFound

            raise GroupNotFound(group)
        out = []
        for topic in self.groups.topics(group):
            try:
                self.topic(topic)
            except TopicNotFound:
                continue
            owners = self.groups.owners(group, topic)
            for m in self.groups.members(group, topic):
                owned = sorted(p for p, o in owners.items() if o == m["member"])
                out.append({"client_id": None, **m, "partitions": owned})  # a kq member has no client id
        return out

    def group_overview(self, group: str, topic_ids: dict[str, str | None] | None = None) -> list[GroupTopicOffsets]:
        out = []
        for found in self.groups.overview(group, self._offsets_seen):
            topic_id = (topic_ids or {}).get(found.topic)
            offsets = {p: c for p, c in found.offsets.items() if topic_id is None or c.topic_id in (None, topic_id)}
            out.append(
                GroupTopicOffsets(
                    found.topic,
                    {p: c.offset for p, c in offsets.items()},
                    {p: c.committed_at for p, c in offsets.items() if c.committed_at is not None},
                    sorted(m["member"] for m in found.members),
                )
            )
        return out

    def owners(self, group: str, topic: str) -> dict[int, str]:
        """Partition -> the member id that holds it."""
        return self.groups.owners(group, topic)

    def delete_group(self, group: str) -> None:
        self.groups.delete(group)

    def check_no_live_members(self, group: str, topic: str) -> None:
        self.groups.check_no_live_members(group, topic)

    def commit_offsets(
        self, group: str, topic: str, offsets: dict[int, int], metadata: dict[int, str] | None = None
    ) -> None:
        t = self.topic(topic)
        for partition, offset in sorted(offsets.items()):
            self.groups.commit(group, t, t.partition(partition).number, offset, (metadata or {}).get(partition, ""))

    # ------------------------------------------------------------------ share groups

    def share_reader(
        self,
        topic: str,
        share: str,
        changes: dict | None = None,
        lease_ms: int = 30_000,
        reset: str = "earliest",
        detach: bool = False,
    ):
        from ..share.consumer import ShareConsumer

        return ShareConsumer(
            self.data, self.topic(topic), share, changes, lease_ms=lease_ms, reset=reset, detach=detach
        )

    def share_settle(self, topic: str, share: str, leases: list[str], how: str, failure=None):
        from ..share.consumer import ShareConsumer

        with ShareConsumer(self.data, self.topic(topic), share, join=False, create=False) as consumer:
            return consumer.settle_leases(leases, how, failure)

    def share_names(self) -> list[str]:
        from ..share.shares import Shares

        return Shares(self.data).names()

    def shares_of_topic(self, topic: str) -> list[str]:
        from ..share.shares import Shares

        return Shares(self.data).shares_of_topic(topic)

    def describe_share(self, share: str) -> dict:
        from ..share.describe import describe_share

        return describe_share(self.data, share)

    def delete_share(self, share: str) -> None:
        from ..share.shares import Shares

        Shares(self.data).delete(share)

    def share_offset_rows(self, topic: str, shares: list[str]) -> list[dict]:
        from ..share.describe import share_offset_rows

        return share_offset_rows(self.data, self.topic(topic), shares)


def _described(t: Topic, uncompressed: bool = False) -> TopicInfo:
    # The uncompressed size reads every batch's header: for `kq topic describe`, not for the
    # snapshots kq top and kq metrics take of thousands of topics.
    return TopicInfo(
        t.name,
        [PartitionInfo(p.number, *p.extent(), p.uncompressed_size() if uncompressed else None) for p in t.partitions()],
        dict(t.config),
        t.id,
    )
