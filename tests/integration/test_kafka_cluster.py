"""Replication on a real 3-broker KRaft cluster (``deploy/local/kafka.sh cluster-up``).

The catalogue's production profile gives every topic 3 replicas and min.insync.replicas 2;
with the producers' acks=all (``services/common/kafka.py``) a broker killed while they write
loses no acknowledged record.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from deploy.broker import Cluster
from services.common.kafka import make_consumer, make_producer
from services.common.settings import Settings, load_settings
from services.common.topics import (
    MIN_INSYNC_REPLICAS,
    Replication,
    TopicSpec,
    load_catalogue,
    provision,
)

pytestmark = pytest.mark.cluster

RECORDS = "credit.records.v1"  # 6 partitions: leaders on every broker
SENT = 5_000


@pytest.fixture
def cluster_settings(kafka_cluster: Cluster, topic_prefix: str, tmp_path: Path) -> Settings:
    return load_settings(
        {
            "CREDITLINK_CITY": "suzhou",
            "KAFKA_BOOTSTRAP": kafka_cluster.bootstrap,
            "CREDITLINK_TOPIC_PREFIX": topic_prefix,
            "CREDITLINK_DATA_DIR": str(tmp_path / "data"),
        }
    )


def production_spec(name: str) -> TopicSpec:
    return next(spec for spec in load_catalogue(profile="production") if spec.name == name)


async def describe(bootstrap: str, topics: list[str]) -> dict[str, list[dict[str, Any]]]:
    """topic -> its partitions' metadata (leader, replicas, isr), asking again while the
    answering broker does not know a topic yet."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    found: dict[str, list[dict[str, Any]]] = {}
    try:
        for _ in range(50):
            for topic in await admin.describe_topics([t for t in topics if t not in found]):
                if topic["error_code"] == 0 and topic["partitions"]:
                    found[topic["topic"]] = topic["partitions"]
            if len(found) == len(topics):
                break
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    return found


async def min_insync_replicas(bootstrap: str, topics: list[str]) -> dict[str, str]:
    """Each topic's min.insync.replicas. A broker that does not know a new topic yet answers
    with an error for it (services/common/topics.py, ``_topic_configs``): ask again."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    found: dict[str, str] = {}
    try:
        for _ in range(50):
            pending = [name for name in topics if name not in found]
            if not pending:
                break
            for response in await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name) for name in pending]
            ):
                for error, _message, _type, name, entries, *_ in response.resources:
                    if not error:
                        found[name] = next(e[1] for e in entries if e[0] == MIN_INSYNC_REPLICAS)
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    return found


async def read_back(settings: Settings, spec: TopicSpec) -> tuple[Counter[str], int]:
    """How often each key is on the topic, read committed from the start, and how many
    records the topic holds (the sum of its end offsets)."""
    topic = settings.topic(spec.name)
    partitions = [TopicPartition(topic, p) for p in range(spec.partitions)]
    consumer = make_consumer(settings, spec.name, group_id=None)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(partitions)
        seen: Counter[str] = Counter()
        deadline = time.monotonic() + 60
        while True:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                seen.update(m.key.decode() for m in messages if m.key is not None)
            # Positions exist once the reader has its partitions, after the first fetch.
            if consumer.assignment() == set(partitions) and all(
                [await consumer.position(tp) >= ends[tp] for tp in partitions]
            ):
                return seen, sum(ends.values())
            assert time.monotonic() < deadline, f"read {seen.total()} of {sum(ends.values())}"
    finally:
        await consumer.stop()


async def test_the_production_profile_gives_every_topic_three_replicas_and_min_isr_two(
    kafka_cluster: Cluster, topic_prefix: str
) -> None:
    bootstrap = kafka_cluster.bootstrap
    catalogue = load_catalogue(profile="production")
    names = sorted(topic_prefix + spec.name for spec in catalogue)

    first = await provision(bootstrap, catalogue, prefix=topic_prefix)
    assert sorted(first.created) == names
    assert first.drift == []

    partitions = await describe(bootstrap, names)
    nodes = set(kafka_cluster.node_ids)
    assert {
        name: {len(p["replicas"]) for p in partitions[name]}
        for name in names
        if any(set(p["replicas"]) != nodes for p in partitions[name])
    } == {}
    assert set((await min_insync_replicas(bootstrap, names)).values()) == {"2"}

    second = await provision(bootstrap, catalogue, prefix=topic_prefix)
    assert (second.created, second.drift, sorted(second.unchanged)) == ([], [], names)
    # The development profile asks for less; more than a profile asks for is not drift.
    development = await provision(bootstrap, load_catalogue(), prefix=topic_prefix)
    assert (development.created, development.drift) == ([], [])


async def test_a_topic_made_with_one_replica_is_reported_under_replicated(
    kafka_cluster: Cluster, topic_prefix: str
) -> None:
    bootstrap = kafka_cluster.bootstrap
    spec = production_spec(RECORDS)
    name = topic_prefix + spec.name
    # As the one-broker setup would have made it.
    one_replica = dataclasses.replace(spec, replication=Replication(1, 1))
    assert (await provision(bootstrap, [one_replica], prefix=topic_prefix)).created == [name]

    report = await provision(bootstrap, [spec], prefix=topic_prefix)
    assert sorted((d.topic, d.setting, d.expected, d.actual) for d in report.drift) == [
        (name, MIN_INSYNC_REPLICAS, "2", "1"),
        (name, "replicas", "3", "1"),
    ]
    assert report.unchanged == []

    # --fix-config raises min.insync.replicas; the replicas stay drift, with what fixes them.
    fixed = await provision(bootstrap, [spec], prefix=topic_prefix, fix_config=True)
    assert [(d.setting, d.actual) for d in fixed.fixed] == [(MIN_INSYNC_REPLICAS, "1")]
    assert [(d.setting, d.actual) for d in fixed.drift] == [("replicas", "1")]
    assert "reassign the partitions" in str(fixed.drift[0])


async def test_consumer_offsets_and_transaction_state_are_replicated_as_the_data(
    kafka_cluster: Cluster, cluster_settings: Settings
) -> None:
    # Kafka creates both on first use: a group's first commit, a transactional producer's start.
    spec = production_spec(RECORDS)
    await provision(kafka_cluster.bootstrap, [spec], prefix=cluster_settings.topic_prefix)
    producer = make_producer(cluster_settings, client_id="tx", transactional_id="cluster-tx")
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send_and_wait(cluster_settings.topic(RECORDS), b"v", key=b"k")
    finally:
        await producer.stop()
    consumer = make_consumer(cluster_settings, RECORDS, group_id="cluster-group")
    await consumer.start()
    try:
        await consumer.getmany(timeout_ms=2000)
        await consumer.commit()
    finally:
        await consumer.stop()

    internal = ["__consumer_offsets", "__transaction_state"]
    partitions = await describe(kafka_cluster.bootstrap, internal)
    assert {name: {len(p["replicas"]) for p in partitions[name]} for name in internal} == {
        name: {3} for name in internal
    }
    assert await min_insync_replicas(kafka_cluster.bootstrap, internal) == {
        name: "2" for name in internal
    }


async def test_a_broker_killed_while_producing_loses_no_acknowledged_record(
    kafka_cluster: Cluster, cluster_settings: Settings
) -> None:
    bootstrap = kafka_cluster.bootstrap
    spec = production_spec(RECORDS)
    await provision(bootstrap, [spec], prefix=cluster_settings.topic_prefix)
    topic = cluster_settings.topic(RECORDS)
    victim = next(
        p["leader"] for p in (await describe(bootstrap, [topic]))[topic] if p["partition"] == 0
    )
    keys = [f"L:{i:018d}" for i in range(SENT)]

    producer = make_producer(cluster_settings, client_id="cluster-test")
    await producer.start()
    try:
        sent = []
        for i, key in enumerate(keys):
            if i == SENT // 3:
                # Mid-stream, with batches in flight to the victim: it leads partition 0.
                await asyncio.to_thread(kafka_cluster.kill, victim)
                killed_at = time.monotonic()
            sent.append(await producer.send(topic, key=key.encode(), value=f"record {i}".encode()))
        # Every send is acknowledged: acks=all with two of three replicas still in sync.
        acknowledged = await asyncio.gather(*sent)
        failover_s = time.monotonic() - killed_at
    finally:
        await producer.stop()
    assert len(acknowledged) == SENT
    # The killed broker restarts (a JVM start, seconds) while the records are read back from
    # the two that stayed up.
    restart = asyncio.create_task(asyncio.to_thread(kafka_cluster.up))

    try:
        seen, stored = await read_back(cluster_settings, spec)
    finally:
        await restart  # no node may be starting when the cluster is stopped
    # Exactly once each: the idempotent producer's retries after the failover wrote no copy.
    assert stored == SENT
    assert set(seen) == set(keys)
    assert {key: n for key, n in seen.items() if n != 1} == {}

    # The killed broker has come back; it catches up and is in sync again on every partition.
    deadline = time.monotonic() + 60
    while True:
        lagging = [
            p["partition"]
            for p in (await describe(bootstrap, [topic]))[topic]
            if victim not in p["isr"]
        ]
        if not lagging:
            break
        assert time.monotonic() < deadline, f"broker {victim} not back in the ISR of {lagging}"
        await asyncio.sleep(0.5)
    print(f"broker {victim} killed; all {SENT} acknowledged {failover_s:.1f} s after the kill")
