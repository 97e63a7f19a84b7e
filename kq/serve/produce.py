"""Produce and InitProducerId: produced batches checked, packed and appended to kq's log."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from kafka.protocol.producer import InitProducerIdResponse, ProduceResponse

from . import codes, records
from .fetch import Waiters
from .producers import ProducerState, SequenceError
from .storage import KqError, MessageTooLarge, Payload, ProducerFenced, Storage, TopicNotFound, check_name
from .transactions import Transactions

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # a record timestamp is a signed 64-bit field


class InvalidTimestamp(ValueError):
    """A record timestamp that does not fit Kafka's (and kq's) signed 64-bit field."""


def _pack(storage: Storage, batch, config: dict) -> Payload:
    """A produced batch packed for kq's log; InvalidTimestamp if a timestamp leaves 64 bits.

    A batch's base timestamp plus a record's 64-bit delta can leave the
    range; packing finds the smallest and largest timestamps anyway.
    """
    try:
        served, stored = storage.stored_codec(config, batch.codec)
        producer = (batch.producer_id, batch.producer_epoch) if batch.transactional else None
        payload = storage.pack(batch.values, batch.keys, batch.headers, batch.timestamps, served, stored, producer)
    except OverflowError:  # two timestamps further apart than 64 bits hold
        raise InvalidTimestamp("record timestamps do not fit a signed 64-bit field") from None
    for timestamp in (payload.base_timestamp, payload.max_timestamp):
        if not INT64_MIN <= timestamp <= INT64_MAX:
            raise InvalidTimestamp(f"record timestamp {timestamp} does not fit a signed 64-bit field")
    return payload


def _decode_batch(raw):
    """records.decode_produced, with the compression libraries' own errors as InvalidBatch.

    Each codec raises its own kinds (gzip an OSError, which is no storage
    error; lz4 a RuntimeError; zstd and snappy theirs) on damaged bytes
    that carry a valid checksum.
    """
    try:
        return records.decode_produced(raw)
    except (records.InvalidBatch, records.UnsupportedBatch):
        raise
    except Exception as exc:
        raise records.InvalidBatch(f"a batch does not decode ({type(exc).__name__}: {exc})") from None


ATTRIBUTES_LOW_BYTE = 22  # of a v2 batch: the low byte of its attributes, which holds the codec


def _decode_all(raws) -> list | BaseException:
    """Every batch decoded, or the error that stopped it (raised later, where the partition is answered)."""
    try:
        return [_decode_batch(raw) for raw in raws]
    except Exception as exc:
        return exc


async def _decode_partition_data(data) -> list | BaseException:
    """A partition's batches decoded (``_decode_all``), the compressed ones in a worker thread.

    Inflating (up to the batch limit) takes a core for a while; zlib, lz4 and
    zstd let go of the GIL meanwhile, so other clients are answered (issue 20).
    """
    try:
        raws = records.split_batches(data)
    except Exception as exc:
        return exc
    if any(raw[ATTRIBUTES_LOW_BYTE] & records.CODEC_MASK for raw in raws):
        return await asyncio.to_thread(_decode_all, raws)
    return _decode_all(raws)


class ProduceHandler:
    """Produce and InitProducerId, over the storage adapter; appends wake the Fetch ``waiters``."""

    def __init__(self, storage: Storage, waiters: Waiters, storage_error: Callable[[BaseException], None]):
        self.storage = storage
        self.waiters = waiters
        self.storage_error = storage_error
        self.producers = ProducerState()
        self.transactions: Transactions | None = None  # the broker's transaction coordinator

    async def init_producer_id(self, body, version: int):
        if body.transactional_id is not None:
            return InitProducerIdResponse(
                version=version,
                throttle_time_ms=0,
                error_code=codes.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                producer_id=-1,
                producer_epoch=-1,
            )
        pid, epoch = self.producers.init(getattr(body, "producer_id", -1), getattr(body, "producer_epoch", -1))
        return InitProducerIdResponse(
            version=version, throttle_time_ms=0, error_code=0, producer_id=pid, producer_epoch=epoch
        )

    async def produce(self, body, version: int):
        R = ProduceResponse
        TR = R.TopicProduceResponse
        PR = TR.PartitionProduceResponse
        acks = body.acks
        if acks not in (0, 1, -1):
            error = codes.INVALID_REQUIRED_ACKS
        else:
            error = None
        out = []
        for t in body.topic_data:
            parts = []
            for p in t.partition_data:
                if error is not None:
                    parts.append(
                        PR(
                            index=p.index,
                            error_code=error,
                            base_offset=-1,
                            log_append_time_ms=-1,
                            log_start_offset=-1,
                            record_errors=[],
                            error_message=None,
                        )
                    )
                    continue
                decoded = await _decode_partition_data(p.records) if p.records else []
                code, base, message = self._produce_partition(t.name, p.index, p.records, decoded)
                parts.append(
                    PR(
                        index=p.index,
                        error_code=code,
                        base_offset=base,
                        log_append_time_ms=-1,
                        log_start_offset=-1 if code else 0,
                        record_errors=[],
                        error_message=message,
                    )
                )
            out.append(TR(name=t.name, partition_responses=parts))
        if acks == 0:
            return None
        return R(version=version, responses=out, throttle_time_ms=0)

    def _produce_partition(
        self, topic: str, partition: int, data, decoded: list | BaseException
    ) -> tuple[int, int | None, str | None]:
        """Append a partition's batches: (error code, base offset, message).

        ``decoded``: ``data``'s batches, decoded by ``_decode_partition_data``.
        """
        try:
            check_name(topic)
            t = self.storage.topic(topic)
            if not 0 <= partition < t.partition_count:
                return codes.UNKNOWN_TOPIC_OR_PARTITION, -1, None
        except TopicNotFound:
            return codes.UNKNOWN_TOPIC_OR_PARTITION, -1, None
        except KqError as exc:
            return codes.INVALID_TOPIC_EXCEPTION, -1, str(exc)
        if not data:
            return codes.CORRUPT_MESSAGE, -1, "no records"
        first_base = None
        try:
            # Every batch is checked (decoded, its sequence, its timestamps, packed) before any is
            # kept, as Kafka does: an error answer means nothing was stored, so a client that
            # retries stores nothing twice.
            if isinstance(decoded, BaseException):
                raise decoded
            batches = decoded
            duplicates = self.producers.check_all(topic, partition, batches)
            for batch, duplicate in zip(batches, duplicates):
                if batch.transactional and duplicate is None:
                    code = self._transaction_code(topic, partition, batch)
                    if code:
                        return code, -1, None
            packed: list[Payload | None] = []
            for batch, duplicate in zip(batches, duplicates):
                packed.append(_pack(self.storage, batch, t.config) if duplicate is None else None)
            for batch, duplicate, payload in zip(batches, duplicates, packed):
                if payload is None:
                    base = duplicate
                else:
                    base, last = self.storage.append_packed(topic, partition, payload, batch)
                if payload is not None and base is not None:
                    self.producers.appended(topic, partition, batch, base, last)
                    self.waiters.appended(topic, partition)
                if first_base is None:
                    first_base = base
        except records.UnsupportedBatch as exc:
            return codes.UNSUPPORTED_FOR_MESSAGE_FORMAT, -1, str(exc)
        except records.InvalidBatch as exc:
            return codes.CORRUPT_MESSAGE, -1, str(exc)
        except InvalidTimestamp as exc:
            return codes.INVALID_TIMESTAMP, -1, str(exc)
        except SequenceError as exc:
            return exc.code, -1, str(exc)
        except MessageTooLarge as exc:
            return codes.MESSAGE_TOO_LARGE, -1, str(exc)
        except ProducerFenced as exc:  # its transaction was ended here under it (a timeout, a newer epoch)
            return codes.INVALID_PRODUCER_EPOCH, -1, str(exc)
        except KqError as exc:  # a corrupt log, an unreadable topic
            self.storage_error(exc)
            return codes.KAFKA_STORAGE_ERROR, -1, str(exc)
        except OSError as exc:
            self.storage_error(exc)
            return codes.KAFKA_STORAGE_ERROR, -1, f"{exc.strerror or exc}"
        return codes.NONE, first_base, None

    def _transaction_code(self, topic: str, partition: int, batch) -> int:
        if self.transactions is None:
            return codes.INVALID_TXN_STATE
        return self.transactions.for_batch(topic, partition, batch.producer_id, batch.producer_epoch)
