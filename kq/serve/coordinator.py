"""Consumer groups: Kafka's classic group protocol, stored and fenced as kq groups.

Kafka members join, one of them (the leader) computes the assignment with
the assignor the members asked for, and the server relays it (JoinGroup,
SyncGroup); members heartbeat, commit and leave. The server only relays
protocol metadata, except in one respect:

**kq groups are the same groups.** Committed offsets are kq's
(``Groups.commit``), so ``kq offsets show`` and ``kq consume -g`` see what
Kafka members commit, and the reverse. And a partition is never consumed by
a Kafka member and a ``kq consume -g`` member at once: while a Kafka group
has members on a topic, the server is one member of kq's group on that topic
(a ``members/ID.member`` file like any other), it holds the claim locks of
the partitions kq's rule gives it, and it hands Kafka members only those —
an assignment the leader computed is filtered down to them. When kq members
come or go, the share changes: the server makes the Kafka group rebalance
(REBALANCE_IN_PROGRESS on the next heartbeat) and lets go of a partition
only once the new generation has been handed out without it.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import uuid
from collections import Counter

from kafka.protocol.admin import DeleteGroupsResponse, DescribeGroupsResponse, ListGroupsResponse
from kafka.protocol.consumer import (
    HeartbeatResponse,
    JoinGroupResponse,
    LeaveGroupResponse,
    OffsetCommitResponse,
    OffsetFetchResponse,
    SyncGroupResponse,
)
from kafka.protocol.consumer.metadata import ConsumerProtocolAssignment, ConsumerProtocolSubscription

from ..groups.member import Member as KqMember
from ..groups.store import MAX_COMMIT_METADATA
from . import codes
from .storage import GroupNotFound, InvalidName, KqError, Storage, TopicNotFound, check_name

log = logging.getLogger("kq.serve")

EMPTY, PREPARING, COMPLETING, STABLE, DEAD = "Empty", "PreparingRebalance", "CompletingRebalance", "Stable", "Dead"
MIN_SESSION_MS = 1_000  # Kafka's group.min.session.timeout.ms is 6 s; tests and laptops like shorter
MAX_SESSION_MS = 1_800_000
TICK_SECONDS = 0.1  # session expiry and rebalance deadlines
KQ_REBALANCE_SECONDS = 0.5  # as often as `kq consume -g` members look at theirs
CONSUMER = "consumer"
GROUP_KEY = 0  # FindCoordinator key_type


def _decode_versioned(cls, data: bytes):
    """A ConsumerProtocol struct (int16 version first), read at the highest version both know."""
    if data is None or len(data) < 2:
        raise ValueError("no consumer protocol data")
    (version,) = struct.unpack_from(">h", data)
    if version < 0:
        raise ValueError(f"consumer protocol version {version}")
    known = min(version, cls.valid_versions[1])
    patched = struct.pack(">h", known) + bytes(data[2:])
    return cls.decode(patched, version=known), known


def subscription_topics(metadata: bytes) -> list[str]:
    sub, _ = _decode_versioned(ConsumerProtocolSubscription, metadata)
    return list(sub.topics or ())


def filter_assignment(data: bytes, allowed: dict[str, set[int]]) -> tuple[bytes, dict[str, set[int]]]:
    """An assignment without the partitions the server does not hold; and what it assigns."""
    a, version = _decode_versioned(ConsumerProtocolAssignment, data)
    kept = []
    given: dict[str, set[int]] = {}
    for tp in a.assigned_partitions or ():
        ok = [p for p in tp.partitions if p in allowed.get(tp.topic, set())]
        given.setdefault(tp.topic, set()).update(ok)
        kept.append(ConsumerProtocolAssignment.TopicPartition(topic=tp.topic, partitions=ok))
    out = ConsumerProtocolAssignment(version=version, assigned_partitions=kept, user_data=a.user_data)
    return bytes(out.encode(version=version)), given


class Member:
    def __init__(
        self,
        member_id: str,
        instance_id,
        client_id: str,
        client_host: str,
        session_ms: int,
        rebalance_ms: int,
        protocol_type: str,
        protocols: list[tuple[str, bytes]],
    ):
        self.id = member_id
        self.instance_id = instance_id
        self.client_id = client_id
        self.client_host = client_host
        self.session_ms = session_ms
        self.rebalance_ms = rebalance_ms
        self.protocol_type = protocol_type
        self.protocols = protocols
        self.assignment = b""
        self.join: asyncio.Future | None = None
        self.sync: asyncio.Future | None = None
        self.last_seen = time.monotonic()

    def metadata(self, protocol: str) -> bytes:
        for name, data in self.protocols:
            if name == protocol:
                return data
        return b""


class Group:
    def __init__(self, group_id: str):
        self.id = group_id
        self.state = EMPTY
        self.generation = 0
        self.protocol_type: str | None = None
        self.protocol: str | None = None
        self.leader: str | None = None
        self.members: dict[str, Member] = {}
        self.pending: dict[str, float] = {}  # member ids handed out by MEMBER_ID_REQUIRED, until when
        self.rebalance_deadline = 0.0
        # kq's side: the server's kq membership per topic, and what it holds.
        self.kq_members: dict[str, KqMember] = {}
        self.given: dict[str, set[int]] = {}  # partitions handed to this generation's members
        self.next_kq_check = 0.0


class Coordinator:
    def __init__(self, storage: Storage, on_error):
        self.storage = storage
        self.on_error = on_error
        self.groups: dict[str, Group] = {}
        self.client: tuple[str, str] = ("", "")  # (client id, host) of the request being handled
        self._ticker: asyncio.Task | None = None

    def start(self) -> None:
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for group in self.groups.values():
            self._leave_kq(group)

    def check_key(self, key: str, key_type: int) -> tuple[int, str | None]:
        if key_type != GROUP_KEY:
            return codes.INVALID_REQUEST, "kq serve coordinates consumer groups only (no transactions)"
        try:
            check_name(key, "group")
        except KqError as exc:
            return codes.INVALID_GROUP_ID, str(exc)
        return codes.NONE, None

    def _group(self, group_id: str) -> Group:
        """The group, made empty if the server has not seen it yet."""
        group = self.groups.get(group_id)
        if group is None:
            group = self.groups[group_id] = Group(group_id)
        return group

    def _existing(self, group_id: str) -> Group | None:
        return self.groups.get(group_id)

    # ------------------------------------------------------------------ join / sync

    async def join_group(self, body, version: int):
        R = JoinGroupResponse

        def reply(code, member_id="", group=None, members=()):
            return R(
                version=version,
                throttle_time_ms=0,
                error_code=code,
                generation_id=group.generation if group and code == 0 else -1,
                protocol_type=group.protocol_type if group else None,
                protocol_name=group.protocol if group and code == 0 else None,
                leader=group.leader or "" if group and code == 0 else "",
                skip_assignment=False,
                member_id=member_id,
                members=list(members),
            )

        try:
            check_name(body.group_id, "group")
        except KqError:
            return reply(codes.INVALID_GROUP_ID, body.member_id)
        if not MIN_SESSION_MS <= body.session_timeout_ms <= MAX_SESSION_MS:
            return reply(codes.INVALID_SESSION_TIMEOUT, body.member_id)
        protocols = [(p.name, bytes(p.metadata or b"")) for p in body.protocols]
        group = self._group(body.group_id)
        if not protocols or (group.protocol_type not in (None, body.protocol_type) and group.members):
            return reply(codes.INCONSISTENT_GROUP_PROTOCOL, body.member_id)
        if group.members:
            common = set.intersection(*({n for n, _ in m.protocols} for m in group.members.values()))
            if not common & {n for n, _ in protocols} and not (
                len(group.members) == 1 and body.member_id in group.members
            ):
                return reply(codes.INCONSISTENT_GROUP_PROTOCOL, body.member_id)
        member_id = body.member_id
        now = time.monotonic()
        session_ms = body.session_timeout_ms
        rebalance_ms = body.rebalance_timeout_ms if version >= 1 else session_ms
        if not member_id:
            member_id = f"{body.group_instance_id or 'member'}-{uuid.uuid4()}"
            if version >= 4:
                # KIP-394: the client rejoins with this id, so that a client
                # that gives up mid-join leaves no member behind.
                group.pending[member_id] = now + session_ms / 1000
                return reply(codes.MEMBER_ID_REQUIRED, member_id, group)
        elif member_id not in group.members and member_id not in group.pending:
            return reply(codes.UNKNOWN_MEMBER_ID, member_id, group)
        group.pending.pop(member_id, None)
        member = group.members.get(member_id)
        if member is not None and group.state == STABLE and member_id != group.leader and member.protocols == protocols:
            # A follower rejoining with nothing new: hand back the current generation.
            member.last_seen = now
            return reply(codes.NONE, member_id, group)
        if member is None:
            client_id, client_host = self.client
            member = Member(
                member_id,
                body.group_instance_id if version >= 5 else None,
                client_id,
                client_host,
                session_ms,
                rebalance_ms,
                body.protocol_type,
                protocols,
            )
            group.members[member_id] = member
        else:
            member.protocols, member.session_ms, member.rebalance_ms = protocols, session_ms, rebalance_ms
        member.last_seen = now
        group.protocol_type = body.protocol_type
        if member.join is not None and not member.join.done():
            member.join.cancel()
        member.join = asyncio.get_running_loop().create_future()
        self._prepare_rebalance(group)
        self._maybe_complete_join(group)
        try:
            return R(version=version, **(await member.join))
        except asyncio.CancelledError:
            task = asyncio.current_task()
            # Task.cancelling() is Python 3.11's: on 3.10 every cancellation is the server's own.
            if task is None or getattr(task, "cancelling", lambda: 1)():
                raise
            return reply(codes.UNKNOWN_MEMBER_ID, member_id, group)

    def _prepare_rebalance(self, group: Group) -> None:
        if group.state == PREPARING:
            return
        # Members waiting for their assignment learn that it will not come.
        for m in group.members.values():
            if m.sync is not None and not m.sync.done():
                m.sync.set_result(codes.REBALANCE_IN_PROGRESS)
        group.state = PREPARING
        timeout = max((m.rebalance_ms for m in group.members.values()), default=0) / 1000
        group.rebalance_deadline = time.monotonic() + timeout

    def _maybe_complete_join(self, group: Group, force: bool = False) -> None:
        if group.state != PREPARING:
            return
        waiting = [m for m in group.members.values() if m.join is None or m.join.done()]
        if waiting and not force:
            return
        for m in waiting:  # did not rejoin in time
            self._remove(group, m.id, rebalance=False)
        if not group.members:
            self._empty(group)
            return
        group.generation += 1
        group.protocol = self._choose_protocol(group)
        if group.leader not in group.members:
            group.leader = next(iter(group.members))
        group.state = COMPLETING
        R = JoinGroupResponse
        everyone = [
            R.JoinGroupResponseMember(
                member_id=m.id, group_instance_id=m.instance_id, metadata=m.metadata(group.protocol)
            )
            for m in group.members.values()
        ]
        for m in group.members.values():
            m.last_seen = time.monotonic()
            assert m.join is not None  # every member of a join round waits on its future
            m.join.set_result(
                dict(
                    throttle_time_ms=0,
                    error_code=0,
                    generation_id=group.generation,
                    protocol_type=group.protocol_type,
                    protocol_name=group.protocol,
                    leader=group.leader,
                    skip_assignment=False,
                    member_id=m.id,
                    members=everyone if m.id == group.leader else [],
                )
            )

    @staticmethod
    def _choose_protocol(group: Group) -> str:
        members = list(group.members.values())
        common = set.intersection(*({n for n, _ in m.protocols} for m in members))
        votes: Counter[str] = Counter()
        for m in members:  # each member votes for its first choice among the common ones
            for name, _ in m.protocols:
                if name in common:
                    votes[name] += 1
                    break
        return max(sorted(common), key=lambda n: votes[n])

    async def sync_group(self, body, version: int):
        R = SyncGroupResponse

        def reply(code, group=None, assignment=b""):
            return R(
                version=version,
                throttle_time_ms=0,
                error_code=code,
                protocol_type=group.protocol_type if group else None,
                protocol_name=group.protocol if group else None,
                assignment=assignment,
            )

        group = self._existing(body.group_id)
        if group is None or body.member_id not in group.members:
            return reply(codes.UNKNOWN_MEMBER_ID)
        member = group.members[body.member_id]
        member.last_seen = time.monotonic()
        if body.generation_id != group.generation:
            return reply(codes.ILLEGAL_GENERATION, group)
        if group.state == PREPARING:
            return reply(codes.REBALANCE_IN_PROGRESS, group)
        if group.state == STABLE:
            return reply(codes.NONE, group, member.assignment)
        if body.member_id == group.leader:
            assignments = {a.member_id: bytes(a.assignment or b"") for a in body.assignments}
            self._complete_sync(group, assignments)
            return reply(codes.NONE, group, member.assignment)
        member.sync = asyncio.get_running_loop().create_future()
        code = await member.sync
        return reply(code, group, member.assignment if code == 0 else b"")

    def _complete_sync(self, group: Group, assignments: dict[str, bytes]) -> None:
        allowed = self._kq_share(group) if group.protocol_type == CONSUMER else None
        given: dict[str, set[int]] = {}
        for m in group.members.values():
            data = assignments.get(m.id, b"")
            if allowed is not None and data:
                try:
                    data, mine = filter_assignment(data, allowed)
                    for topic, parts in mine.items():
                        given.setdefault(topic, set()).update(parts)
                except Exception as exc:  # an assignment that is not ConsumerProtocol
                    log.warning("group %s: assignment of %s does not decode (%s)", group.id, m.id, exc)
            m.assignment = data
        group.given = given
        group.state = STABLE
        if allowed is not None:
            self._release_unneeded(group)
        for m in group.members.values():
            if m.sync is not None and not m.sync.done():
                m.sync.set_result(codes.NONE)

    # ------------------------------------------------------------------ kq's side of the group

    def _subscribed(self, group: Group) -> set[str]:
        topics: set[str] = set()
        for m in group.members.values():
            try:
                topics.update(subscription_topics(m.metadata(group.protocol or "")))
            except Exception:
                pass
        return topics

    def _kq_share(self, group: Group) -> dict[str, set[int]]:
        """Join kq's group on each subscribed topic and claim this server's share; what Kafka members may have."""
        held: dict[str, set[int]] = {}
        for topic in self._subscribed(group):
            try:
                check_name(topic)
                count = self.storage.topic(topic).partition_count
            except (KqError, OSError):
                continue
            member = group.kq_members.get(topic)
            try:
                if member is None:
                    member = self.storage.member(group.id, topic)
                    member.join()
                    group.kq_members[topic] = member
                share = member.assignment(count)
                for p in sorted(share - member.owned):
                    member.claim(p)
            except (KqError, OSError) as exc:
                self.on_error(exc)
                continue
            # Held partitions outside the share are kq members' now: this
            # generation goes without them, and then they are let go.
            held[topic] = member.owned & share
        for topic in [t for t in group.kq_members if t not in held]:
            group.kq_members.pop(topic).leave()
        return held

    def _release_unneeded(self, group: Group) -> None:
        """Let go of held partitions that no Kafka member was given and kq's rule takes away."""
        for topic, member in group.kq_members.items():
            try:
                count = self.storage.topic(topic).partition_count
                share = member.assignment(count)
            except (KqError, OSError):
                continue
            for p in sorted(member.owned - share - group.given.get(topic, set())):
                member.release(p)

    def _kq_check(self, group: Group) -> None:
        """Rebalance the Kafka group when kq's members change this server's share."""
        if group.state != STABLE or group.protocol_type != CONSUMER:
            return
        for topic, member in list(group.kq_members.items()):
            try:
                count = self.storage.topic(topic).partition_count
                share = member.assignment(count)
            except (KqError, OSError):
                continue
            owned = member.owned
            # Partitions to give back (a kq member now has them by kq's rule)
            # must first be taken from the Kafka members: rebalance.
            if owned - share:
                log.info("group %s: kq members joined %s, rebalancing", group.id, topic)
                self._prepare_rebalance(group)
                return
            # Partitions kq's rule gives this server that it could not claim
            # before: if they are free now, a rebalance hands them out.
            missing = share - owned
            if missing and any(member.claim(p) for p in sorted(missing)):
                log.info("group %s: partitions of %s freed by kq members, rebalancing", group.id, topic)
                self._prepare_rebalance(group)
                return

    def _leave_kq(self, group: Group) -> None:
        for member in group.kq_members.values():
            try:
                member.leave()
            except OSError:
                pass
        group.kq_members.clear()
        group.given = {}

    # ------------------------------------------------------------------ heartbeat / leave / expiry

    async def heartbeat(self, body, version: int):
        group = self._existing(body.group_id)
        code = self._heartbeat_code(group, body)
        return HeartbeatResponse(version=version, throttle_time_ms=0, error_code=code)

    @staticmethod
    def _heartbeat_code(group: Group | None, body) -> int:
        if group is None or body.member_id not in group.members:
            return codes.UNKNOWN_MEMBER_ID
        member = group.members[body.member_id]
        member.last_seen = time.monotonic()
        if group.state == PREPARING:
            return codes.REBALANCE_IN_PROGRESS
        if body.generation_id != group.generation:
            return codes.ILLEGAL_GENERATION
        return codes.NONE

    async def leave_group(self, body, version: int):
        R = LeaveGroupResponse
        group = self._existing(body.group_id)
        if version < 3:
            ids = [(body.member_id, None)]
        else:
            ids = [(m.member_id, m.group_instance_id) for m in body.members]
        results = []
        for member_id, instance in ids:
            code = codes.NONE
            if group is None:
                code = codes.UNKNOWN_MEMBER_ID
            else:
                if not member_id and instance is not None:
                    member_id = next((m.id for m in group.members.values() if m.instance_id == instance), "")
                if member_id in group.members:
                    self._remove(group, member_id)
                else:
                    code = codes.UNKNOWN_MEMBER_ID
            results.append(R.MemberResponse(member_id=member_id, group_instance_id=instance, error_code=code))
        top = results[0].error_code if version < 3 else codes.NONE
        return R(version=version, throttle_time_ms=0, error_code=top, members=results)

    def _remove(self, group: Group, member_id: str, rebalance: bool = True) -> None:
        member = group.members.pop(member_id, None)
        if member is None:
            return
        for fut in (member.join, member.sync):
            if fut is not None and not fut.done():
                fut.cancel()
        if not group.members:
            self._empty(group)
        elif rebalance:
            self._prepare_rebalance(group)
            self._maybe_complete_join(group)

    def _empty(self, group: Group) -> None:
        group.state = EMPTY
        group.leader = None
        group.protocol = None
        group.generation += 1
        self._leave_kq(group)

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                self._tick()
            except Exception as exc:  # never let the ticker die
                log.exception("group ticker: %s", exc)

    def _tick(self) -> None:
        now = time.monotonic()
        for group in list(self.groups.values()):
            for member_id, until in list(group.pending.items()):
                if now > until:
                    del group.pending[member_id]
            for m in list(group.members.values()):
                waiting_join = m.join is not None and not m.join.done()
                if not waiting_join and now - m.last_seen > m.session_ms / 1000:
                    log.info("group %s: member %s timed out", group.id, m.id)
                    self._remove(group, m.id)
            if group.state == PREPARING and now >= group.rebalance_deadline:
                self._maybe_complete_join(group, force=True)
            if now >= group.next_kq_check:
                group.next_kq_check = now + KQ_REBALANCE_SECONDS
                try:
                    self._kq_check(group)
                except (KqError, OSError) as exc:
                    self.on_error(exc)

    # ------------------------------------------------------------------ offsets

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
            group = self._existing(body.group_id)
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
                    g.group_id, g.topics, R.OffsetFetchResponseGroup.OffsetFetchResponseTopics
                )
                groups.append(R.OffsetFetchResponseGroup(group_id=g.group_id, topics=topics, error_code=code))
            return R(version=version, throttle_time_ms=0, groups=groups)
        topics, code = self._fetch_offsets(body.group_id, body.topics, R.OffsetFetchResponseTopic)
        return R(version=version, throttle_time_ms=0, topics=topics, error_code=code)

    def _fetch_offsets(self, group_id: str, wanted, TopicCls):
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
                                committed_leader_epoch=-1,
                                metadata=found[p].metadata if p in found else "",
                                error_code=0,
                            )
                            for p in partitions
                        ],
                    )
                )
        except (KqError, OSError) as exc:
            self.on_error(exc)
            return [], codes.COORDINATOR_LOAD_IN_PROGRESS
        return out, codes.NONE

    # ------------------------------------------------------------------ admin

    async def list_groups(self, body, version: int):
        R = ListGroupsResponse
        names = set(self.storage.group_names()) | {g.id for g in self.groups.values() if g.members}
        wanted_states = {s.lower() for s in (body.states_filter or ())} if version >= 4 else set()
        out = []
        for name in sorted(names):
            group = self.groups.get(name)
            state = group.state if group is not None and group.members else EMPTY
            if wanted_states and state.lower() not in wanted_states:
                continue
            out.append(
                R.ListedGroup(
                    group_id=name,
                    protocol_type=(group.protocol_type if group and group.members else CONSUMER),
                    group_state=state,
                    group_type="classic",
                )
            )
        return R(version=version, throttle_time_ms=0, error_code=0, groups=out)

    async def describe_groups(self, body, version: int):
        R = DescribeGroupsResponse
        G = R.DescribedGroup
        M = G.DescribedGroupMember
        out = []
        known = set(self.storage.group_names())
        for name in body.groups:
            try:
                check_name(name, "group")
            except KqError as exc:
                out.append(
                    G(
                        error_code=codes.INVALID_GROUP_ID,
                        error_message=str(exc),
                        group_id=name,
                        group_state="",
                        protocol_type="",
                        protocol_data="",
                        members=[],
                        authorized_operations=None,
                    )
                )
                continue
            group = self.groups.get(name)
            if group is None or not group.members:
                state = EMPTY if name in known else DEAD
                out.append(
                    G(
                        error_code=0,
                        error_message=None,
                        group_id=name,
                        group_state=state,
                        protocol_type=CONSUMER if name in known else "",
                        protocol_data="",
                        members=[],
                        authorized_operations=None,
                    )
                )
                continue
            members = [
                M(
                    member_id=m.id,
                    group_instance_id=m.instance_id,
                    client_id=m.client_id or "",
                    client_host=m.client_host or "",
                    member_metadata=m.metadata(group.protocol or ""),
                    member_assignment=m.assignment if group.state == STABLE else b"",
                )
                for m in group.members.values()
            ]
            out.append(
                G(
                    error_code=0,
                    error_message=None,
                    group_id=name,
                    group_state=group.state,
                    protocol_type=group.protocol_type or "",
                    protocol_data=group.protocol or "" if group.state == STABLE else "",
                    members=members,
                )
            )
        return R(version=version, throttle_time_ms=0, groups=out)

    async def delete_groups(self, body, version: int):
        R = DeleteGroupsResponse
        out = []
        for name in body.groups_names:
            code = codes.NONE
            try:
                check_name(name, "group")
                group = self.groups.get(name)
                if group is not None and group.members:
                    code = codes.NON_EMPTY_GROUP
                else:
                    self.storage.delete_group(name)
                    self.groups.pop(name, None)
            except GroupNotFound:
                code = codes.GROUP_ID_NOT_FOUND
            except InvalidName:
                code = codes.INVALID_GROUP_ID
            except KqError:  # live `kq consume -g` members
                code = codes.NON_EMPTY_GROUP
            out.append(R.DeletableGroupResult(group_id=name, error_code=code))
        return R(version=version, throttle_time_ms=0, results=out)
