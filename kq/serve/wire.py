"""Kafka's request and response framing, through kafka-python 3's ``kafka.protocol``.

The library encodes and decodes every message body and header from Kafka's
own message definitions; this module only says which APIs kq serve speaks,
at which versions, and puts a request's header and body together.
"""

from __future__ import annotations

import io
import struct
from typing import NamedTuple

from kafka.protocol.admin import (
    AlterConfigsRequest,
    AlterConfigsResponse,
    AlterPartitionReassignmentsRequest,
    AlterPartitionReassignmentsResponse,
    AlterReplicaLogDirsRequest,
    AlterReplicaLogDirsResponse,
    CreateAclsRequest,
    CreateAclsResponse,
    CreatePartitionsRequest,
    CreatePartitionsResponse,
    CreateTopicsRequest,
    CreateTopicsResponse,
    DeleteAclsRequest,
    DeleteAclsResponse,
    DeleteGroupsRequest,
    DeleteGroupsResponse,
    DeleteRecordsRequest,
    DeleteRecordsResponse,
    DeleteTopicsRequest,
    DeleteTopicsResponse,
    DescribeAclsRequest,
    DescribeAclsResponse,
    DescribeConfigsRequest,
    DescribeConfigsResponse,
    DescribeGroupsRequest,
    DescribeGroupsResponse,
    DescribeLogDirsRequest,
    DescribeLogDirsResponse,
    DescribeQuorumRequest,
    DescribeQuorumResponse,
    DescribeTopicPartitionsRequest,
    DescribeTopicPartitionsResponse,
    DescribeTransactionsRequest,
    DescribeTransactionsResponse,
    ElectLeadersRequest,
    ElectLeadersResponse,
    IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse,
    ListConfigResourcesRequest,
    ListConfigResourcesResponse,
    ListGroupsRequest,
    ListGroupsResponse,
    ListPartitionReassignmentsRequest,
    ListPartitionReassignmentsResponse,
    ListTransactionsRequest,
    ListTransactionsResponse,
)
from kafka.protocol.api_header import RequestHeader
from kafka.protocol.consumer import (
    FetchRequest,
    FetchResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    JoinGroupRequest,
    JoinGroupResponse,
    LeaveGroupRequest,
    LeaveGroupResponse,
    ListOffsetsRequest,
    ListOffsetsResponse,
    OffsetCommitRequest,
    OffsetCommitResponse,
    OffsetFetchRequest,
    OffsetFetchResponse,
    SyncGroupRequest,
    SyncGroupResponse,
)
from kafka.protocol.metadata import (
    ApiVersionsRequest,
    ApiVersionsResponse,
    FindCoordinatorRequest,
    FindCoordinatorResponse,
    MetadataRequest,
    MetadataResponse,
)
from kafka.protocol.producer import (
    AddOffsetsToTxnRequest,
    AddOffsetsToTxnResponse,
    AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse,
    EndTxnRequest,
    EndTxnResponse,
    InitProducerIdRequest,
    InitProducerIdResponse,
    ProduceRequest,
    ProduceResponse,
    TxnOffsetCommitRequest,
    TxnOffsetCommitResponse,
)
from kafka.protocol.sasl import (
    SaslAuthenticateRequest,
    SaslAuthenticateResponse,
    SaslHandshakeRequest,
    SaslHandshakeResponse,
)

SIZE = struct.Struct(">i")
API_VERSIONS_KEY = 18
UNSUPPORTED_VERSION = 35


class Api(NamedTuple):
    request: type
    response: type
    min_version: int
    max_version: int
    # Versions below this are advertised but answered by closing the
    # connection: Kafka 4 does the same for Produce v0-2 (KAFKA-18659:
    # librdkafka wants to see v0 in the range).
    lowest_served: int | None = None


# Exactly the ranges kq serve implements. Versions that address topics by id
# (Fetch 13+, Produce 13, OffsetCommit/OffsetFetch 10, Metadata 13) are left
# out: kq topics have names only.
APIS: dict[int, Api] = {
    0: Api(ProduceRequest, ProduceResponse, 0, 11, lowest_served=3),
    1: Api(FetchRequest, FetchResponse, 4, 12),
    # v11 (Kafka 4.2) only adds the timestamp -6, "earliest pending upload" of tiered storage
    2: Api(ListOffsetsRequest, ListOffsetsResponse, 1, 11),
    3: Api(MetadataRequest, MetadataResponse, 0, 12),
    8: Api(OffsetCommitRequest, OffsetCommitResponse, 2, 9),
    9: Api(OffsetFetchRequest, OffsetFetchResponse, 1, 9),
    10: Api(FindCoordinatorRequest, FindCoordinatorResponse, 0, 5),
    11: Api(JoinGroupRequest, JoinGroupResponse, 0, 9),
    12: Api(HeartbeatRequest, HeartbeatResponse, 0, 4),
    13: Api(LeaveGroupRequest, LeaveGroupResponse, 0, 5),
    14: Api(SyncGroupRequest, SyncGroupResponse, 0, 5),
    15: Api(DescribeGroupsRequest, DescribeGroupsResponse, 0, 5),
    16: Api(ListGroupsRequest, ListGroupsResponse, 0, 5),
    18: Api(ApiVersionsRequest, ApiVersionsResponse, 0, 4),
    19: Api(CreateTopicsRequest, CreateTopicsResponse, 2, 7),
    20: Api(DeleteTopicsRequest, DeleteTopicsResponse, 1, 6),
    22: Api(InitProducerIdRequest, InitProducerIdResponse, 0, 4),
    # Transactions (KIP-98), up to the versions before KIP-890's server-side changes
    # (AddPartitionsToTxn 4+ is broker to broker; EndTxn 5 bumps the epoch at every end).
    24: Api(AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, 0, 3),
    25: Api(AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, 0, 3),
    26: Api(EndTxnRequest, EndTxnResponse, 0, 4),
    28: Api(TxnOffsetCommitRequest, TxnOffsetCommitResponse, 0, 3),
    65: Api(DescribeTransactionsRequest, DescribeTransactionsResponse, 0, 0),
    66: Api(ListTransactionsRequest, ListTransactionsResponse, 0, 2),
    32: Api(DescribeConfigsRequest, DescribeConfigsResponse, 1, 4),
    42: Api(DeleteGroupsRequest, DeleteGroupsResponse, 0, 2),
    44: Api(IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, 0, 1),
    37: Api(CreatePartitionsRequest, CreatePartitionsResponse, 0, 3),
    21: Api(DeleteRecordsRequest, DeleteRecordsResponse, 0, 2),
    # Cluster administration (cluster_info): a one-broker cluster's answers, at Kafka 4.2's ranges.
    29: Api(DescribeAclsRequest, DescribeAclsResponse, 1, 3),
    30: Api(CreateAclsRequest, CreateAclsResponse, 1, 3),
    31: Api(DeleteAclsRequest, DeleteAclsResponse, 1, 3),
    33: Api(AlterConfigsRequest, AlterConfigsResponse, 0, 2),
    34: Api(AlterReplicaLogDirsRequest, AlterReplicaLogDirsResponse, 1, 2),
    35: Api(DescribeLogDirsRequest, DescribeLogDirsResponse, 1, 4),
    43: Api(ElectLeadersRequest, ElectLeadersResponse, 0, 2),
    45: Api(AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, 0, 1),
    46: Api(ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, 0, 0),
    55: Api(DescribeQuorumRequest, DescribeQuorumResponse, 0, 2),
    74: Api(ListConfigResourcesRequest, ListConfigResourcesResponse, 0, 1),
    75: Api(DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse, 0, 0),
    # SaslHandshake v0 (raw SASL bytes without Kafka framing follow) is advertised,
    # as librdkafka looks for it, but only v1 is served.
    17: Api(SaslHandshakeRequest, SaslHandshakeResponse, 0, 1, lowest_served=1),
    36: Api(SaslAuthenticateRequest, SaslAuthenticateResponse, 0, 2),
}


class BadRequest(Exception):
    """A frame that cannot be answered: the connection is closed."""


class Request(NamedTuple):
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    body: object  # the library's request object
    api: Api


def peek_header(frame: bytes) -> tuple[int, int, int]:
    """(api key, api version, correlation id) of a frame, before any decoding."""
    if len(frame) < 8:
        raise BadRequest(f"a request of {len(frame)} bytes has no header")
    return struct.unpack_from(">hhi", frame)


def decode_request(frame: bytes) -> Request:
    """Decode a request frame (without its size prefix); BadRequest if it cannot be served."""
    api_key, version, _ = peek_header(frame)
    api = APIS.get(api_key)
    if api is None:
        raise BadRequest(f"API key {api_key} is not offered")
    lowest = api.min_version if api.lowest_served is None else api.lowest_served
    if not lowest <= version <= api.max_version:
        raise BadRequest(f"{api.request.__name__} v{version} is not offered ({api.min_version}-{api.max_version})")
    flexible = api.request.flexible_version_q(version)  # type: ignore[attr-defined]  # (the library's classes)
    stream = io.BytesIO(frame)  # shares the bytes, no copy
    try:
        header = RequestHeader.decode(stream, flexible=flexible)
        body = api.request.decode(memoryview(frame)[stream.tell() :], version=version)  # type: ignore[attr-defined]
    except Exception as exc:  # the library raises many kinds on malformed bytes
        raise BadRequest(f"{api.request.__name__} v{version} does not decode ({type(exc).__name__}: {exc})") from None
    null = _first_null(body, _null_plan(api.request, version))
    if null is not None:
        # As Kafka's own parsers: a request that does not follow the schema is not answered.
        raise BadRequest(f"{api.request.__name__} v{version} has a null {null}, which the schema does not allow")
    return Request(api_key, version, header.correlation_id, header.client_id, body, api)


# What may not be null, per (request class, version): (field, kind, nested plan), where kind
# is "value" (a string or bytes), "array", "items" (an array of strings that may not hold a
# null), "structs" (an array of structs) or "struct". The library decodes a null (length -1)
# wherever the bytes have one; the handlers rely on the schema's promise instead.
_NULL_PLANS: dict[tuple[type, int], tuple] = {}
_KINDS_WITH_NULL = ("string", "bytes", "records")


def _null_plan(cls, version: int) -> tuple:
    plan = _NULL_PLANS.get((cls, version))
    if plan is None:
        plan = _NULL_PLANS[(cls, version)] = _plan_fields(cls._struct._fields, version)
    return plan


def _plan_fields(fields, version: int) -> tuple:
    plan = []
    for field in fields:
        if not field.for_version_q(version) or field.tagged_field_q(version):
            continue
        nullable = field.nullable_for_version_q(version)
        if field.is_struct_array():
            plan.append((field.name, nullable, "structs", _plan_fields(field.array_of._fields, version)))
        elif field.is_struct():
            plan.append((field.name, nullable, "struct", _plan_fields(field._fields, version)))
        elif field.is_array():
            items_may_be_null = field.array_of.type_str not in _KINDS_WITH_NULL or nullable
            plan.append((field.name, nullable, "array" if items_may_be_null else "items", ()))
        elif field.type_str in _KINDS_WITH_NULL and not nullable:
            plan.append((field.name, False, "value", ()))
    return tuple(plan)


def _first_null(obj, plan: tuple) -> str | None:
    """The name of the first field in ``obj`` that is null where ``plan`` says it may not be."""
    for name, nullable, kind, nested in plan:
        value = getattr(obj, name)
        if value is None:
            if not nullable:
                return name
            continue
        if kind == "items":
            if any(item is None for item in value):
                return f"item of {name}"
        elif kind == "structs" and nested:
            for item in value:
                found = _first_null(item, nested)
                if found is not None:
                    return f"{name}.{found}"
        elif kind == "struct" and nested:
            found = _first_null(value, nested)
            if found is not None:
                return f"{name}.{found}"
    return None


def encode_response(request: Request, response) -> bytes:
    """The framed response to ``request`` (the library picks the header version).

    ``response`` must have been made with ``version=request.api_version``.
    """
    response.with_header(correlation_id=request.correlation_id)
    return bytes(response.encode(header=True, framed=True))


def unsupported_api_versions(correlation_id: int) -> bytes:
    """Kafka's answer to an ApiVersions request of a version it does not know.

    A v0 body with UNSUPPORTED_VERSION and the ranges offered, so that the
    client retries with a version both sides speak.
    """
    response = ApiVersionsResponse(version=0, error_code=UNSUPPORTED_VERSION, api_keys=api_version_list(0))
    response.with_header(correlation_id=correlation_id)
    return bytes(response.encode(header=True, framed=True))


def api_version_list(version: int) -> list:
    Key = ApiVersionsResponse.ApiVersion
    return [
        Key(version=version, api_key=k, min_version=a.min_version, max_version=a.max_version)
        for k, a in sorted(APIS.items())
    ]
