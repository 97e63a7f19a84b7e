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

Here: the membership requests and the rebalance's timing. A group's records
and the state machine they move through are in ``group_state``, the server's
kq membership in ``group_claims``, offsets in ``group_offsets``, listing and
deleting groups in ``group_admin``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from kafka.protocol.consumer import HeartbeatResponse, JoinGroupResponse, LeaveGroupResponse, SyncGroupResponse

from . import codes
from .group_admin import GroupAdmin
from .group_claims import KqClaims, filter_assignment
from .group_offsets import GroupOffsets
from .group_state import CONSUMER, PREPARING, STABLE, Group, Member
from .storage import KqError, Storage, check_name

log = logging.getLogger("kq.serve")

MIN_SESSION_MS = 1_000  # Kafka's group.min.session.timeout.ms is 6 s; tests and laptops like shorter
MAX_SESSION_MS = 1_800_000
TICK_SECONDS = 0.1  # session expiry and rebalance deadlines
KQ_REBALANCE_SECONDS = 0.5  # as often as `kq consume -g` members look at theirs
GROUP_KEY = 0  # FindCoordinator key_type


class Coordinator:
    def __init__(self, storage: Storage, on_error):
        self.storage = storage
        self.on_error = on_error
        self.groups: dict[str, Group] = {}
        self.client: tuple[str, str] = ("", "")  # (client id, host) of the request being handled
        self._ticker: asyncio.Task | None = None
        self.claims = KqClaims(storage, on_error)
        self.offsets = GroupOffsets(storage, self.groups, on_error)
        self.admin = GroupAdmin(storage, self.groups)
        # The broker's handler table finds every group API on the coordinator.
        self.offset_commit, self.offset_fetch = self.offsets.offset_commit, self.offsets.offset_fetch
        self.list_groups, self.describe_groups = self.admin.list_groups, self.admin.describe_groups
        self.delete_groups = self.admin.delete_groups

    def start(self) -> None:
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())

    def release_waiting(self) -> None:
        """The server is stopping: members waiting in JoinGroup or SyncGroup for a rebalance to end
        are let go now (as when a member is removed), instead of holding the stop for the rebalance."""
        for group in self.groups.values():
            for member in group.members.values():
                for fut in (member.join, member.sync):
                    if fut is not None and not fut.done():
                        fut.cancel()

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for group in self.groups.values():
            self.claims.leave(group)

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
        if not group.accepts_protocols(body.member_id, protocols):
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
        group.transition(PREPARING)
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
        protocol = group.next_generation()
        R = JoinGroupResponse
        everyone = [
            R.JoinGroupResponseMember(member_id=m.id, group_instance_id=m.instance_id, metadata=m.metadata(protocol))
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

        group = self.groups.get(body.group_id)
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
        allowed = self.claims.share(group) if group.protocol_type == CONSUMER else None
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
        group.transition(STABLE)
        if allowed is not None:
            self.claims.release_unneeded(group)
        for m in group.members.values():
            if m.sync is not None and not m.sync.done():
                m.sync.set_result(codes.NONE)

    # ------------------------------------------------------------------ heartbeat / leave / expiry

    async def heartbeat(self, body, version: int):
        group = self.groups.get(body.group_id)
        code = codes.UNKNOWN_MEMBER_ID if group is None else group.heartbeat(body.member_id, body.generation_id)
        return HeartbeatResponse(version=version, throttle_time_ms=0, error_code=code)

    async def leave_group(self, body, version: int):
        R = LeaveGroupResponse
        group = self.groups.get(body.group_id)
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
        group.empty()
        self.claims.leave(group)

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
                    if self.claims.needs_rebalance(group):
                        self._prepare_rebalance(group)
                except (KqError, OSError) as exc:
                    self.on_error(exc)
