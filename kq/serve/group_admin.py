"""ListGroups, DescribeGroups, DeleteGroups: the groups kq's directory and the coordinator know.

A group kq has offsets or members for is listed, Empty unless Kafka members
are in it here; a group with Kafka members here, or live `kq consume -g`
members, is not deleted.
"""

from __future__ import annotations

from kafka.protocol.admin import DeleteGroupsResponse, DescribeGroupsResponse, ListGroupsResponse

from . import codes
from .group_state import CONSUMER, DEAD, EMPTY, STABLE, Group
from .storage import GroupNotFound, InvalidName, KqError, Storage, check_name


class GroupAdmin:
    def __init__(self, storage: Storage, groups: dict[str, Group]):
        self.storage = storage
        self.groups = groups  # the coordinator's, by group id

    async def list_groups(self, body, version: int):
        R = ListGroupsResponse
        names = set(self.storage.group_names()) | {g.id for g in self.groups.values() if g.members}
        wanted_states = {s.lower() for s in (body.states_filter or ())} if version >= 4 else set()
        # Every group kq serve keeps is a classic one (JoinGroup/SyncGroup): a client asking only
        # for groups of the consumer or share protocols (KIP-848, KIP-932) gets none.
        wanted_types = {t.lower() for t in (body.types_filter or ())} if version >= 5 else set()
        if wanted_types and "classic" not in wanted_types:
            return R(version=version, throttle_time_ms=0, error_code=0, groups=[])
        out = []
        for name in sorted(names):
            group = self.groups.get(name)
            state = (group.state if group is not None and group.members else EMPTY).value
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
                state = (EMPTY if name in known else DEAD).value
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
                    group_state=group.state.value,
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
                    deleted = self.groups.pop(name, None)
                    if deleted is not None:
                        deleted.transition(DEAD)
            except GroupNotFound:
                code = codes.GROUP_ID_NOT_FOUND
            except InvalidName:
                code = codes.INVALID_GROUP_ID
            except KqError:  # live `kq consume -g` members
                code = codes.NON_EMPTY_GROUP
            out.append(R.DeletableGroupResult(group_id=name, error_code=code))
        return R(version=version, throttle_time_ms=0, results=out)
