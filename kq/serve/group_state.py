"""A consumer group's records: its members and the state machine of its membership.

Kafka's ``GroupMetadata``: a group is Empty (no members), PreparingRebalance
(members are (re)joining), CompletingRebalance (the generation is chosen, the
leader's assignment is awaited), Stable (everyone has an assignment) or Dead
(deleted). ``Group.transition`` is the only way the state changes, and it
refuses a move the table does not allow: a handler that would break the
protocol fails loudly instead of leaving a group in a state nobody meant.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import Counter

from ..groups.member import Member as KqMember
from . import codes


class GroupState(str, enum.Enum):
    EMPTY = "Empty"
    PREPARING_REBALANCE = "PreparingRebalance"
    COMPLETING_REBALANCE = "CompletingRebalance"
    STABLE = "Stable"
    DEAD = "Dead"


EMPTY = GroupState.EMPTY
PREPARING = GroupState.PREPARING_REBALANCE
COMPLETING = GroupState.COMPLETING_REBALANCE
STABLE = GroupState.STABLE
DEAD = GroupState.DEAD
CONSUMER = "consumer"  # the protocol type of Kafka's consumers (others only relay metadata)

# Each state and the states it may be entered from (Kafka's validPreviousStates).
# Kafka empties a group only at the end of a rebalance; kq empties it as soon as
# its last member leaves or times out, whatever the state, and a rebalance whose
# last member timed out empties it as that member goes and again as the round
# finds no one left (Empty -> Empty).
ENTERED_FROM: dict[GroupState, frozenset[GroupState]] = {
    EMPTY: frozenset({EMPTY, PREPARING, COMPLETING, STABLE}),
    PREPARING: frozenset({EMPTY, STABLE, COMPLETING}),
    COMPLETING: frozenset({PREPARING}),
    STABLE: frozenset({COMPLETING}),
    DEAD: frozenset({EMPTY, PREPARING, COMPLETING, STABLE, DEAD}),
}


class IllegalTransition(RuntimeError):
    """A group was asked to move to a state it cannot be entered from its current one."""


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

    def transition(self, target: GroupState) -> None:
        if self.state not in ENTERED_FROM[target]:
            raise IllegalTransition(f"group {self.id}: {self.state.value} -> {target.value} is not a legal transition")
        self.state = target

    def empty(self) -> None:
        """No members left: a new generation, with no leader and no protocol."""
        self.transition(EMPTY)
        self.leader = None
        self.protocol = None
        self.generation += 1

    def next_generation(self) -> str:
        """The members that rejoined are the next generation (Kafka's initNextGeneration); its assignment is awaited."""
        self.generation += 1
        self.protocol = self.choose_protocol()
        if self.leader not in self.members:
            self.leader = next(iter(self.members))
        self.transition(COMPLETING)
        return self.protocol

    def heartbeat(self, member_id: str, generation: int) -> int:
        """A member's heartbeat, and the error code it gets: it must rejoin unless its generation is current."""
        if member_id not in self.members:
            return codes.UNKNOWN_MEMBER_ID
        member = self.members[member_id]
        member.last_seen = time.monotonic()
        if self.state == PREPARING:
            return codes.REBALANCE_IN_PROGRESS
        if generation != self.generation:
            return codes.ILLEGAL_GENERATION
        return codes.NONE

    def accepts_protocols(self, member_id: str, protocols: list[tuple[str, bytes]]) -> bool:
        """Whether a member joining with ``protocols`` shares one with every member (or is the only member)."""
        if not self.members:
            return True
        common = set.intersection(*({n for n, _ in m.protocols} for m in self.members.values()))
        return bool(common & {n for n, _ in protocols}) or (len(self.members) == 1 and member_id in self.members)

    def choose_protocol(self) -> str:
        """The protocol every member supports that most members put first among those."""
        members = list(self.members.values())
        common = set.intersection(*({n for n, _ in m.protocols} for m in members))
        votes: Counter[str] = Counter()
        for m in members:  # each member votes for its first choice among the common ones
            for name, _ in m.protocols:
                if name in common:
                    votes[name] += 1
                    break
        return max(sorted(common), key=lambda n: votes[n])
