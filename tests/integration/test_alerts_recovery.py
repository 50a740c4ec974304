"""The alerts node's state comes back from Kafka: a node whose store is lost rebuilds alerts,
statuses and rule state from its topics without raising anything twice, and events produced
but not applied before a crash are applied at the next start."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.broker import free_port
from services.alerts.config import parse_rules
from services.alerts.model import STATUS_SCHEMA, STATUS_TOPIC, Status, StatusChange, now_ms
from services.alerts.node import AlertsNode, NodeOptions
from services.common.avro import AvroSerde
from services.common.kafka import EventPublisher, make_consumer, make_producer
from services.common.peer import PeerSecurity
from services.common.policy import load_policy
from services.common.region import Region, load_region
from services.common.settings import REPO_ROOT, Settings, load_settings
from services.common.topics import load_catalogue, provision
from tests.kit.alerts import org_key, penalty_record
from tests.peer_kit import make_consent_kit, make_pki

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

CZ = "320400"


@dataclasses.dataclass
class Fixture:
    settings: Settings
    region: Region
    options: NodeOptions
    publisher: EventPublisher

    def node(self) -> AlertsNode:
        return AlertsNode(self.settings, self.region, self.options)


@pytest.fixture
async def changzhou(kafka_bootstrap: str, tmp_path: Path) -> AsyncIterator[Fixture]:
    base = load_region(REPO_ROOT / "deploy" / "config" / "region.yaml")
    cities = dict(base.cities)
    # Suzhou is a target but never answers here: deliveries stay in the outbox.
    for key in ("changzhou", "suzhou"):
        cities[key] = dataclasses.replace(
            cities[key], endpoints={"alerts": f"127.0.0.1:{free_port()}"}
        )
    region = Region(id=base.id, name=base.name, cities=cities)
    settings = load_settings(
        {
            "CREDITLINK_CITY": "changzhou",
            "KAFKA_BOOTSTRAP": kafka_bootstrap,
            "CREDITLINK_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:8]}cz.",
            "CREDITLINK_DATA_DIR": str(tmp_path / "data"),
        }
    )
    await provision(kafka_bootstrap, load_catalogue(), prefix=settings.topic_prefix)
    doc = yaml.safe_load((REPO_ROOT / "deploy/config/alert-rules.yaml").read_text("utf-8"))
    doc["delivery"] = {"retry_initial": "5s", "retry_max": "5s"}
    pki = make_pki(tmp_path / "pki", cities=("changzhou", "suzhou"))
    options = NodeOptions(
        bind=region.city("changzhou").endpoints["alerts"],
        tls=pki.tls("changzhou"),
        security=PeerSecurity(
            city="changzhou",
            region=region,
            policy=load_policy(cities=region.cities.keys()),
            keyring=make_consent_kit().keyring,
        ),
        rules=parse_rules(doc, source="recovery"),
    )
    producer = make_producer(settings, client_id="intake")
    await producer.start()
    try:
        yield Fixture(
            settings,
            region,
            options,
            EventPublisher(producer, AvroSerde(), settings, service="intake"),
        )
    finally:
        await producer.stop()


async def submit(fixture: Fixture, record: dict[str, Any]) -> None:
    await fixture.publisher.publish(
        "credit.records.v1",
        "creditlink.v1.CreditRecord",
        record,
        key=record["subject"]["subject_key"],
        event_type="cn.creditlink.credit.record.accepted.v1",
    )


async def alert_events(settings: Settings) -> list[str]:
    consumer = make_consumer(settings, "supervision.alerts.food-drug.v1", group_id=None)
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=2000)
        return [m.key.decode() for ms in batches.values() for m in ms]
    finally:
        await consumer.stop()


async def wait_for(predicate: Any, within_s: float = 20.0) -> None:
    async with asyncio.timeout(within_s):
        # Polls a condition on the node's store, which offers no event to wait on.
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.1)


async def test_a_lost_store_is_rebuilt_from_the_topics_without_duplicates(
    changzhou: Fixture,
) -> None:
    records = [
        penalty_record(org_key("91", "320505", f"MA1R{n:04d}"), city_code=CZ, serious=True)
        for n in range(3)
    ]
    node = changzhou.node()
    await node.start()
    for record in records:
        await submit(changzhou, record)
    await wait_for(lambda: len(list(node.store.scan("alert/"))) == 3)
    raised = sorted(key for key, _ in node.store.scan("alert/"))
    await node.stop(0)

    shutil.rmtree(changzhou.settings.data_dir / "alerts")  # the disk is gone

    rebuilt = changzhou.node()
    await rebuilt.start()
    assert rebuilt.engine is not None
    assert rebuilt.store is not None
    await asyncio.wait_for(rebuilt.engine.caught_up.wait(), 20)
    assert sorted(key for key, _ in rebuilt.store.scan("alert/")) == raised
    assert rebuilt.engine.processed == 3  # the inputs were replayed from the beginning ...
    assert sorted(await alert_events(changzhou.settings)) == [
        r.removeprefix("alert/") for r in raised
    ]
    # ... and every alert still waits for delivery to Suzhou.
    assert len(list(rebuilt.store.scan("out/320500/"))) == 3
    await rebuilt.stop(0)


async def test_events_produced_but_not_applied_are_applied_at_the_next_start(
    changzhou: Fixture,
) -> None:
    node = changzhou.node()
    await node.start()
    await submit(
        changzhou, penalty_record(org_key("91", "320505", "MA1C0001"), city_code=CZ, serious=True)
    )
    await wait_for(lambda: len(list(node.store.scan("alert/"))) == 1)
    (alert_id,) = [k.removeprefix("alert/") for k, _ in node.store.scan("alert/")]
    await node.stop(0)

    # As if the node had crashed right after producing this change, before applying it.
    change = StatusChange(
        change_id=str(uuid.uuid4()),
        alert_id=alert_id,
        status=Status.ACKNOWLEDGED,
        previous_status=Status.RAISED,
        by_city="320500",
        at=now_ms(),
    )
    await changzhou.publisher.publish(
        STATUS_TOPIC,
        STATUS_SCHEMA,
        change.to_avro(),
        key=alert_id,
        event_type="cn.creditlink.supervision.alert-status.changed.v1",
    )

    restarted = changzhou.node()
    await restarted.start()
    assert restarted.book is not None
    held = restarted.book.held(alert_id)
    assert held is not None
    assert held.status is Status.ACKNOWLEDGED
    assert restarted.book.change(change.change_id) == change
    assert list(restarted.store.scan("due/")) == []  # no escalation
    await restarted.stop(0)
