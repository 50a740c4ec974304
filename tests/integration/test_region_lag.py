"""`region status` reports true consumer lag: a group that has read every record of a
transactional topic is 0 behind, though the partition's end offset counts the commit markers."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from deploy.ops import consumer_lag

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


async def _produce_in_transactions(bootstrap: str, topic: str, sizes: list[int]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=f"lag-{uuid.uuid4().hex}"
    )
    await producer.start()
    try:
        for size in sizes:
            async with producer.transaction():
                for n in range(size):
                    await producer.send(topic, f"record {n}".encode(), partition=0)
    finally:
        await producer.stop()


async def _read_and_commit(bootstrap: str, topic: str, group: str, records: int) -> None:
    """Read ``records`` records as a service does and commit the offset after the last one."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        seen = []
        while len(seen) < records:
            batches = await consumer.getmany(tp, timeout_ms=1000, max_records=records - len(seen))
            seen.extend(batches.get(tp, []))
        await consumer.commit({tp: seen[-1].offset + 1})
    finally:
        await consumer.stop()


async def _lag_of(bootstrap: str, group: str) -> int:
    return dict(await consumer_lag(bootstrap))[group]


async def test_commit_markers_are_not_lag_but_unread_records_are(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    topic, group = f"{topic_prefix}lag", f"{topic_prefix}group"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()

    await _produce_in_transactions(kafka_bootstrap, topic, [3, 2])
    await _read_and_commit(kafka_bootstrap, topic, group, 5)
    # Five records and two commit markers: the end offset is 7, the group committed 5.
    assert await _lag_of(kafka_bootstrap, group) == 0

    await _produce_in_transactions(kafka_bootstrap, topic, [4])
    assert await _lag_of(kafka_bootstrap, group) == 4

    await _read_and_commit(kafka_bootstrap, topic, group, 4)
    assert await _lag_of(kafka_bootstrap, group) == 0
