"""The server's seat in kq's file-lock groups, on behalf of a Kafka group's members.

While a Kafka group has members on a topic, the server is one member of kq's
group on that topic (a ``members/ID.member`` file like any other) and holds the
claim locks of the partitions kq's rule gives it; the leader's assignment is
filtered down to those. When kq members come or go the share changes, and
``needs_rebalance`` says so; a partition is let go only once the new generation
has been handed out without it (``release_unneeded``).
"""

from __future__ import annotations

import logging
import struct

from kafka.protocol.consumer.metadata import ConsumerProtocolAssignment, ConsumerProtocolSubscription

from .group_state import CONSUMER, STABLE, Group
from .storage import KqError, Storage, check_name

log = logging.getLogger("kq.serve")


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


def subscribed_topics(group: Group) -> set[str]:
    topics: set[str] = set()
    for m in group.members.values():
        try:
            topics.update(subscription_topics(m.metadata(group.protocol or "")))
        except Exception:
            pass
    return topics


class KqClaims:
    def __init__(self, storage: Storage, on_error):
        self.storage = storage
        self.on_error = on_error

    def share(self, group: Group) -> dict[str, set[int]]:
        """Join kq's group on each subscribed topic and claim this server's share; what Kafka members may have."""
        held: dict[str, set[int]] = {}
        for topic in subscribed_topics(group):
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

    def release_unneeded(self, group: Group) -> None:
        """Let go of held partitions that no Kafka member was given and kq's rule takes away."""
        for topic, member in group.kq_members.items():
            try:
                count = self.storage.topic(topic).partition_count
                share = member.assignment(count)
            except (KqError, OSError):
                continue
            for p in sorted(member.owned - share - group.given.get(topic, set())):
                member.release(p)

    def needs_rebalance(self, group: Group) -> bool:
        """Whether kq's members changed this server's share, so that the Kafka group must rebalance."""
        if group.state != STABLE or group.protocol_type != CONSUMER:
            return False
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
                return True
            # Partitions kq's rule gives this server that it could not claim
            # before: if they are free now, a rebalance hands them out.
            missing = share - owned
            if missing and any(member.claim(p) for p in sorted(missing)):
                log.info("group %s: partitions of %s freed by kq members, rebalancing", group.id, topic)
                return True
        return False

    def leave(self, group: Group) -> None:
        for member in group.kq_members.values():
            try:
                member.leave()
            except OSError:
                pass
        group.kq_members.clear()
        group.given = {}
