"""Read-side questions operators ask of intake: a day's 双公示 figure, overdue records."""

from __future__ import annotations

import time
from datetime import date
from typing import Any

from aiokafka import TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from services.common.avro import AvroSerde
from services.common.kafka import make_consumer
from services.common.settings import Settings
from services.common.workdays import WorkdayCalendar
from services.intake.classify.ledger_sync import load_ledger, partition_counts
from services.intake.encode.events import QUALITY_TOPIC
from services.intake.figures.quality import OverdueRecord, overdue_records


async def query_quality(
    settings: Settings, serde: AvroSerde, department_code: str, day: date
) -> dict[str, Any] | None:
    """The latest published ``DisclosureQuality`` of a department and decision day.

    Reads only the partition the key hashes to (murmur2, as every Kafka client partitions).
    """
    topic = settings.topic(QUALITY_TOPIC)
    key = f"{department_code}:{day.isoformat()}".encode()
    count = (await partition_counts(settings, [topic]))[topic]
    partition = DefaultPartitioner()(key, list(range(count)), list(range(count)))
    tp = TopicPartition(topic, partition)
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        latest: bytes | None = None
        deadline = time.monotonic() + 60
        while await consumer.position(tp) < end and time.monotonic() < deadline:
            for messages in (await consumer.getmany(tp, timeout_ms=500)).values():
                for message in messages:
                    if message.key == key:
                        latest = message.value
    finally:
        await consumer.stop()
    return serde.decode(latest) if latest is not None else None


async def list_overdue(
    settings: Settings,
    serde: AvroSerde,
    department_code: str,
    *,
    today: date,
    calendar: WorkdayCalendar,
) -> list[OverdueRecord]:
    """Every overdue record of a department, from the topics."""
    ledger = await load_ledger(settings, serde)
    return overdue_records(ledger, department_code, today=today, calendar=calendar)
