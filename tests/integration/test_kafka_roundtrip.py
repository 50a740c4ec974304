"""The foundation through the real broker: catalogue → topics → producer → consumer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from services.common.avro import AvroSerde, SchemaStore, load_example
from services.common.kafka import EventPublisher, consume_events, make_consumer, make_producer
from services.common.settings import Settings
from services.common.topics import ProvisionReport, TopicSpec, load_catalogue, provision

pytestmark = pytest.mark.kafka

CREDIT_RECORD = "creditlink.v1.CreditRecord"


async def provision_until(
    bootstrap: str,
    catalogue: list[TopicSpec],
    prefix: str,
    settled: Callable[[ProvisionReport], bool],
    **options: bool,
) -> ProvisionReport:
    """Config changes reach the broker's metadata a moment after AlterConfigs returns."""
    for _ in range(50):
        report = await provision(bootstrap, catalogue, prefix=prefix, **options)
        if settled(report):
            return report
        await asyncio.sleep(0.2)
    return report


async def test_provisioning_is_idempotent_and_reports_drift(node_settings: Settings) -> None:
    catalogue = load_catalogue()
    prefix = node_settings.topic_prefix
    first = await provision(node_settings.kafka_bootstrap, catalogue, prefix=prefix)
    assert sorted(first.created) == sorted(prefix + spec.name for spec in catalogue)
    assert first.drift == []

    second = await provision(node_settings.kafka_bootstrap, catalogue, prefix=prefix)
    assert second.created == []
    assert sorted(second.unchanged) == sorted(first.created)

    # An operator changes a topic by hand: the next apply names the drift, and can fix it.
    records = prefix + "credit.records.v1"
    admin = AIOKafkaAdminClient(bootstrap_servers=node_settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, records, {"retention.ms": "1000"})]
        )
    finally:
        await admin.close()
    drifted = await provision_until(
        node_settings.kafka_bootstrap, catalogue, prefix, lambda r: bool(r.drift)
    )
    assert [(d.topic, d.setting, d.actual) for d in drifted.drift] == [
        (records, "retention.ms", "1000")
    ]
    fixed = await provision(
        node_settings.kafka_bootstrap, catalogue, prefix=prefix, fix_config=True
    )
    assert [d.topic for d in fixed.fixed] == [records]
    clean = await provision_until(
        node_settings.kafka_bootstrap, catalogue, prefix, lambda r: not r.drift
    )
    assert clean.drift == []


async def test_credit_record_round_trip_with_headers(provisioned: Settings) -> None:
    serde = AvroSerde(SchemaStore.load())
    record = load_example(CREDIT_RECORD.rsplit(".", 1)[1])
    key = record["subject"]["subject_key"] if "subject" in record else "L:test"

    producer = make_producer(provisioned, client_id="test")
    await producer.start()
    try:
        publisher = EventPublisher(producer, serde, provisioned, service="intake")
        sent = await publisher.publish(
            "credit.records.v1",
            CREDIT_RECORD,
            record,
            key=key,
            event_type="cn.creditlink.credit.record.accepted.v1",
        )
    finally:
        await producer.stop()
    assert sent.topic == provisioned.topic("credit.records.v1")

    consumer = make_consumer(provisioned, "credit.records.v1", group_id="roundtrip")
    await consumer.start()
    try:
        events = consume_events(consumer, serde)
        event = await asyncio.wait_for(anext(events), timeout=30)
        await consumer.commit()
    finally:
        await consumer.stop()

    assert event.key == key
    assert event.record == record
    assert event.envelope.type == "cn.creditlink.credit.record.accepted.v1"
    assert event.envelope.source == "/cities/320500/intake"
    assert event.envelope.subject == key
    assert event.envelope.content_type == "application/avro"
    assert CREDIT_RECORD in (event.envelope.data_schema or "")
    assert (event.partition, event.offset) == (sent.partition, sent.offset)
