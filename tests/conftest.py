"""Test harness: a real Kafka broker for the run, and an isolated topic prefix per test.

A broker answering at ``KAFKA_BOOTSTRAP`` is reused; otherwise one is started in a temporary
state directory on free ports and stopped when the run ends. Tests marked ``cluster`` get a
3-broker cluster of their own (``kafka_cluster``), started only when one of them runs.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from deploy.broker import Broker, Cluster, broker_answers, start_broker, start_cluster
from services.common.settings import Settings, load_settings
from services.common.topics import load_catalogue, provision

# Property tests assert what holds, not how fast one example runs: a per-example deadline only
# fails them on a loaded machine (a first call paying for imports and caches took 0.47 s).
hypothesis_settings.register_profile("creditlink", deadline=None)
hypothesis_settings.load_profile("creditlink")


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:19092")
    if broker_answers(bootstrap):
        yield Broker(bootstrap=bootstrap, state_dir=None)
        return
    broker = start_broker(tmp_path_factory.mktemp("kafka"))
    try:
        yield broker
    finally:
        broker.down()


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A 3-broker KRaft cluster started for this run, never one found running: its tests kill
    brokers. A cluster that does not start fails the test that asked for it."""
    cluster = start_cluster(tmp_path_factory.mktemp("kafka-cluster"))
    try:
        yield cluster
    finally:
        cluster.down(graceful=False)  # its data goes with the temporary directory


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: Broker) -> str:
    return kafka_broker.bootstrap


@pytest.fixture
def topic_prefix() -> str:
    """A prefix of its own for every test, so tests never see each other's events."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def node_settings(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> Settings:
    return load_settings(
        {
            "CREDITLINK_CITY": "suzhou",
            "KAFKA_BOOTSTRAP": kafka_bootstrap,
            "CREDITLINK_TOPIC_PREFIX": topic_prefix,
            "CREDITLINK_DATA_DIR": str(tmp_path / "data"),
        }
    )


@pytest.fixture
async def provisioned(node_settings: Settings) -> Settings:
    """Settings whose topics exist on the broker, created from the catalogue."""
    await provision(
        node_settings.kafka_bootstrap, load_catalogue(), prefix=node_settings.topic_prefix
    )
    return node_settings
