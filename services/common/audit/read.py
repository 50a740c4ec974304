"""Reading the audit topic back: every record, or the tail of one chain."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord, TopicPartition

from services.common.audit.chain import _TAIL_WINDOW, parse_key
from services.common.audit.signing import SIGNATURE_HEADER
from services.common.avro import AvroSerde
from services.common.kafka import make_consumer
from services.common.settings import Settings
from services.common.topic_names import AUDIT_TOPIC as AUDIT_TOPIC


@dataclass(frozen=True, slots=True)
class AuditMessage:
    """One message of the audit topic, undecoded."""

    offset: int
    key: str
    value: bytes
    #: The head signature, on the last record of each batch its writer sent (signing.py).
    signature: bytes | None = None


def audit_message(message: ConsumerRecord[bytes, bytes]) -> AuditMessage:
    """One consumed message as an :class:`AuditMessage` (its head signature, if any)."""
    return AuditMessage(
        offset=message.offset,
        key=message.key.decode("utf-8", "replace") if message.key else "",
        value=bytes(message.value or b""),
        signature=next((v for k, v in message.headers or () if k == SIGNATURE_HEADER), None),
    )


async def end_offsets(consumer: AIOKafkaConsumer, partition: TopicPartition) -> tuple[int, int]:
    begin = (await consumer.beginning_offsets([partition]))[partition]
    end = (await consumer.end_offsets([partition]))[partition]
    return begin, end


async def read_range(
    consumer: AIOKafkaConsumer, partition: TopicPartition, start: int, end: int
) -> list[AuditMessage]:
    messages: list[AuditMessage] = []
    if start >= end:
        return messages
    consumer.seek(partition, start)
    while True:
        batch = await consumer.getmany(partition, timeout_ms=1000, max_records=1000)
        records = batch.get(partition, [])
        for message in records:
            if message.offset >= end:
                return messages
            messages.append(audit_message(message))
        if messages and messages[-1].offset >= end - 1:
            return messages
        if not records and await consumer.position(partition) >= end:
            return messages


def audit_reader(settings: Settings, **overrides: Any) -> AIOKafkaConsumer:
    """A reader of the audit topic; ``overrides`` are consumer options (e.g. fetch sizes)."""
    # Uncommitted reads: a writer recovering its tail must see its own records even if a
    # transaction marker is pending; the audit producer is not transactional anyway.
    return make_consumer(settings, group_id=None, isolation_level="read_uncommitted", **overrides)


async def read_audit_topic(settings: Settings, topic: str) -> list[AuditMessage]:
    """Every message of the (physical) audit topic, oldest first, up to its current end."""
    consumer = audit_reader(settings)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        begin, end = await end_offsets(consumer, partition)
        return await read_range(consumer, partition, begin, end)
    finally:
        await consumer.stop()


async def read_chain_tail(
    settings: Settings, topic: str, chain: str | None
) -> dict[str, Any] | None:
    """The last record of ``chain`` on ``topic`` (decoded), or None for a new chain."""
    serde = AvroSerde()
    consumer = audit_reader(settings)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        begin, end = await end_offsets(consumer, partition)
        stop = end
        while stop > begin:
            start = max(begin, stop - _TAIL_WINDOW)
            window = await read_range(consumer, partition, start, stop)
            for message in reversed(window):
                if parse_key(message.key)[0] == chain:
                    return serde.decode(message.value, reader=serde.writer_of(message.value))
            stop = start
        return None
    finally:
        await consumer.stop()
