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
    CreatePartitionsRequest,
    CreatePartitionsResponse,
    CreateTopicsRequest,
    CreateTopicsResponse,
    DeleteGroupsRequest,
    DeleteGroupsResponse,
    DeleteRecordsRequest,
    DeleteRecordsResponse,
    DeleteTopicsRequest,
    DeleteTopicsResponse,
    DescribeConfigsRequest,
    DescribeConfigsResponse,
    DescribeGroupsRequest,
    DescribeGroupsResponse,
    IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse,
    ListGroupsRequest,
    ListGroupsResponse,
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
from kafka.protocol.producer import InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse
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
    2: Api(ListOffsetsRequest, ListOffsetsResponse, 1, 9),
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
    32: Api(DescribeConfigsRequest, DescribeConfigsResponse, 1, 4),
    42: Api(DeleteGroupsRequest, DeleteGroupsResponse, 0, 2),
    44: Api(IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, 0, 1),
    37: Api(CreatePartitionsRequest, CreatePartitionsResponse, 0, 3),
    21: Api(DeleteRecordsRequest, DeleteRecordsResponse, 0, 2),
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
    return Request(api_key, version, header.correlation_id, header.client_id, body, api)


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
