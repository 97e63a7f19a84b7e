"""kq.serve.group_state in-process: a consumer group's states move only as Kafka's table allows."""

from __future__ import annotations

import itertools

import pytest

from kq.serve import codes
from kq.serve.group_state import (
    COMPLETING,
    DEAD,
    EMPTY,
    PREPARING,
    STABLE,
    Group,
    GroupState,
    IllegalTransition,
    Member,
)

# (from, to) pairs Kafka's GroupMetadata allows, and the ones kq adds: it empties a
# group as soon as its last member goes, whatever the state.
KAFKA = {
    (PREPARING, EMPTY),
    (EMPTY, PREPARING),
    (STABLE, PREPARING),
    (COMPLETING, PREPARING),
    (PREPARING, COMPLETING),
    (COMPLETING, STABLE),
    *((state, DEAD) for state in GroupState),
}
KQ_ADDS = {(EMPTY, EMPTY), (COMPLETING, EMPTY), (STABLE, EMPTY)}


def group_in(state: GroupState) -> Group:
    group = Group("g")
    group.state = state
    return group


def member(member_id: str, *protocols: str) -> Member:
    return Member(member_id, None, "client", "host", 10_000, 10_000, "consumer", [(p, b"") for p in protocols])


@pytest.mark.parametrize("source, target", list(itertools.product(GroupState, GroupState)))
def test_each_move_is_allowed_exactly_when_the_table_says(source, target):
    group = group_in(source)
    if (source, target) in KAFKA | KQ_ADDS:
        group.transition(target)
        assert group.state is target
    else:
        with pytest.raises(IllegalTransition, match=f"{source.value} -> {target.value}"):
            group.transition(target)
        assert group.state is source


def test_a_group_lives_through_two_generations_and_dies():
    group = Group("g")
    assert group.state is EMPTY and group.generation == 0
    group.members = {"a": member("a", "range", "roundrobin"), "b": member("b", "roundrobin", "range")}
    group.transition(PREPARING)
    assert group.next_generation() in ("range", "roundrobin")
    assert (group.state, group.generation, group.leader) == (COMPLETING, 1, "a")
    group.transition(STABLE)
    group.transition(PREPARING)
    del group.members["a"]
    assert group.next_generation() == "roundrobin"
    assert (group.state, group.generation, group.leader) == (COMPLETING, 2, "b")
    group.transition(STABLE)
    group.empty()
    assert (group.state, group.generation, group.leader, group.protocol) == (EMPTY, 3, None, None)
    group.transition(DEAD)
    with pytest.raises(IllegalTransition):
        group.transition(PREPARING)


def test_a_new_generation_is_chosen_only_while_members_rejoin():
    group = group_in(STABLE)
    group.members = {"a": member("a", "range")}
    with pytest.raises(IllegalTransition):
        group.next_generation()


def test_heartbeats_tell_members_to_rejoin():
    group = Group("g")
    group.members = {"a": member("a", "range")}
    group.transition(PREPARING)
    assert group.heartbeat("a", 0) == codes.REBALANCE_IN_PROGRESS
    group.next_generation()
    group.transition(STABLE)
    assert group.heartbeat("a", 1) == codes.NONE
    assert group.heartbeat("a", 0) == codes.ILLEGAL_GENERATION
    assert group.heartbeat("b", 1) == codes.UNKNOWN_MEMBER_ID
