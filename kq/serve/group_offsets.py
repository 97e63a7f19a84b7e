"""OffsetCommit and OffsetFetch: a group's committed offsets are kq's (``Groups.commit``).

``kq offsets show`` and ``kq consume -g`` see what Kafka members commit, and
the reverse. A commit is refused from a member outside the group's live
generation, and from outside any group (``assign()``, an admin tool) while the
group has members: Kafka members here, or `kq consume -g` processes (or another
server's Kafka members) in kq's file-lock group on the topic.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from kafka.protocol.consumer import OffsetCommitResponse, OffsetFetchResponse

from ..groups.store import MAX_COMMIT_METADATA
from . import codes
from .group_state import COMPLETING, Group
from .storage import KqError, Storage, TopicNotFound, check_name

if TYPE_CHECKING:
    from .transactions import Transactions


class GroupOffsets:
    def __init__(self, storage: Storage, groups: dict[str, Group], on_error):
        self.storage = storage
        self.groups = groups  # the coordinator's, by group id
        self.on_error = on_error
        self.transactions: Transactions | None = None  # the broker's Transactions: offsets staged by open transactions

    def _commit_code(self, group: Group | None, generation: int, member_id: str) -> int:
        if generation < 0 and (group is None or not group.members):
            # A consumer without a group membership (assign(), an admin
            # tool): allowed while the group is empty, as in Kafka; kq's own
            # members are looked at per topic (_kq_members_live).
            return codes.NONE
        if group is None or member_id not in group.members:
            return codes.UNKNOWN_MEMBER_ID
        if generation != group.generation:
            return codes.ILLEGAL_GENERATION
        if group.state == COMPLETING:
            return codes.REBALANCE_IN_PROGRESS
        group.members[member_id].last_seen = time.monotonic()
        return codes.NONE

    async def offset_commit(self, body, version: int):
        R = OffsetCommitResponse
        TR = R.OffsetCommitResponseTopic
        PR = TR.OffsetCommitResponsePartition
        generation = body.generation_id_or_member_epoch if version >= 1 else -1
        try:
            check_name(body.group_id, "group")
            group = self.groups.get(body.group_id)
            code = self._commit_code(group, generation, body.member_id if version >= 1 else "")
        except KqError:
            code = codes.INVALID_GROUP_ID
        out = []
        for t in body.topics:
            tcode = code
            if tcode == codes.NONE and generation < 0 and self._kq_members_live(body.group_id, t.name):
                tcode = codes.UNKNOWN_MEMBER_ID
            parts = []
            for p in t.partitions:
                pcode = tcode
                if pcode == codes.NONE:
                    pcode = self._commit_one(
                        body.group_id, t.name, p.partition_index, p.committed_offset, p.committed_metadata or ""
                    )
                parts.append(PR(partition_index=p.partition_index, error_code=pcode))
            out.append(TR(name=t.name, partitions=parts))
        return R(version=version, throttle_time_ms=0, topics=out)

    def _kq_members_live(self, group_id: str, topic: str) -> bool:
        """Whether `kq consume -g` processes (or another server's Kafka members) hold ``group_id`` on ``topic``.

        kq's membership is per topic, as `kq offsets reset` checks it: a commit
        from outside the group must not move offsets under a live member.
        """
        try:
            return bool(self.storage.kq_members(group_id, check_name(topic)))
        except KqError:
            return False  # a bad topic name: _commit_one answers for it
        except OSError as exc:
            self.on_error(exc)
            return True

    def _commit_one(self, group_id: str, topic: str, partition: int, offset: int, metadata: str = "") -> int:
        try:
            check_name(topic)
            if not 0 <= partition < self.storage.topic(topic).partition_count:
                return codes.UNKNOWN_TOPIC_OR_PARTITION
            if offset < 0:
                return codes.NONE  # Kafka stores -1 as "no offset"; kq simply keeps none
            if len(metadata) > MAX_COMMIT_METADATA:
                return codes.OFFSET_METADATA_TOO_LARGE
            self.storage.commit(group_id, topic, partition, offset, metadata)
        except TopicNotFound:
            return codes.UNKNOWN_TOPIC_OR_PARTITION
        except KqError:
            return codes.UNKNOWN_TOPIC_OR_PARTITION
        except OSError as exc:
            self.on_error(exc)
            return codes.KAFKA_STORAGE_ERROR
        return codes.NONE

    async def offset_fetch(self, body, version: int):
        R = OffsetFetchResponse
        if version >= 8:
            groups = []
            for g in body.groups:
                topics, code = self._fetch_offsets(
                    g.group_id, g.topics, R.OffsetFetchResponseGroup.OffsetFetchResponseTopics, body.require_stable
                )
                groups.append(R.OffsetFetchResponseGroup(group_id=g.group_id, topics=topics, error_code=code))
            return R(version=version, throttle_time_ms=0, groups=groups)
        topics, code = self._fetch_offsets(
            body.group_id, body.topics, R.OffsetFetchResponseTopic, version >= 7 and body.require_stable
        )
        return R(version=version, throttle_time_ms=0, topics=topics, error_code=code)

    def _fetch_offsets(self, group_id: str, wanted, TopicCls, require_stable: bool = False):
        PartCls = TopicCls.fields["partitions"].data_class
        try:
            check_name(group_id, "group")
        except KqError:
            return [], codes.INVALID_GROUP_ID
        try:
            if wanted is None:
                names = self.storage.group_topics(group_id)
                requests = []
                for name in names:
                    committed = self.storage.committed(group_id, name)
                    if committed:
                        requests.append((name, sorted(committed)))
            else:
                requests = [(t.name, list(t.partition_indexes)) for t in wanted]
            # KIP-447: a consumer that wants stable offsets is told to retry while a
            # transaction has offsets of the group staged (they may be about to change).
            unstable: set[tuple[str, int]] = (
                self.transactions.pending_offsets(group_id)
                if require_stable and self.transactions is not None
                else set()
            )
            out = []
            for name, partitions in requests:
                try:
                    found = self.storage.committed_offsets(group_id, check_name(name))
                except KqError:
                    found = {}
                out.append(
                    TopicCls(
                        name=name,
                        partitions=[
                            PartCls(
                                partition_index=p,
                                committed_offset=found[p].offset if p in found else -1,
                                # kq's partitions have one leader, of epoch 0 (as Metadata says)
                                committed_leader_epoch=0 if p in found else -1,
                                metadata=found[p].metadata if p in found else "",
                                error_code=codes.UNSTABLE_OFFSET_COMMIT if (name, p) in unstable else 0,
                            )
                            for p in partitions
                        ],
                    )
                )
        except (KqError, OSError) as exc:
            self.on_error(exc)
            return [], codes.COORDINATOR_LOAD_IN_PROGRESS
        return out, codes.NONE
