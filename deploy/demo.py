"""``make demo``: a three-city region on one machine, with a scenario played through it.

Starts (or reuses) the local broker, provisions each city's topics from the catalogue with
its prefix, and plays the scenario. Exits 0 when every step's outcome is what the scenario
expects; ``--keep`` leaves the broker running.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from deploy.broker import REPO_ROOT, Broker, broker_answers
from services.common.avro import AvroSerde, SchemaStore, load_example
from services.common.kafka import EventPublisher, consume_events, make_consumer, make_producer
from services.common.region import load_region
from services.common.settings import load_settings
from services.common.topics import load_catalogue, provision

DEMO_CITIES = ("suzhou", "wuxi", "changzhou")


def say(step: str, text: str) -> None:
    print(f"{step:<10} {text}", flush=True)


async def play(bootstrap: str) -> bool:
    region = load_region(REPO_ROOT / "deploy" / "config" / "region.yaml")
    catalogue = load_catalogue()
    for key in DEMO_CITIES:
        city = region.city(key)
        report = await provision(bootstrap, catalogue, prefix=city.topic_prefix)
        say(
            "topics",
            f"{city.name} ({city.admin_code}) {city.topic_prefix}*: {len(report.created)} created, "
            f"{len(report.unchanged)} already there, {len(report.drift)} drifted",
        )

    settings = load_settings(
        {
            "CREDITLINK_CITY": "suzhou",
            "KAFKA_BOOTSTRAP": bootstrap,
            "CREDITLINK_TOPIC_PREFIX": "suzhou.",
        }
    )
    serde = AvroSerde(SchemaStore.load())
    record = load_example("CreditRecord")
    key = str(record["subject"]["subject_key"])
    producer = make_producer(settings, client_id="demo")
    await producer.start()
    try:
        publisher = EventPublisher(producer, serde, settings, service="intake")
        sent = await publisher.publish(
            "credit.records.v1",
            "creditlink.v1.CreditRecord",
            record,
            key=key,
            event_type="cn.creditlink.credit.record.accepted.v1",
        )
    finally:
        await producer.stop()
    say("produced", f"{sent.topic}[{sent.partition}]@{sent.offset} key={key}")

    consumer = make_consumer(
        settings, "credit.records.v1", group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        consumer.seek(sent.topic_partition, sent.offset)
        event = await asyncio.wait_for(anext(consume_events(consumer, serde)), timeout=30)
    finally:
        await consumer.stop()
    same = event.record == record
    say(
        "consumed",
        f"{event.envelope.type} from {event.envelope.source}, record "
        f"{event.record['record_id']} v{event.record['version']}: "
        f"{'identical to what was sent' if same else 'DIFFERENT from what was sent'}",
    )
    return same


def main() -> int:
    parser = argparse.ArgumentParser(prog="make demo")
    parser.add_argument("--keep", action="store_true", help="leave the broker running")
    args = parser.parse_args()

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:19092")
    broker: Broker | None = None
    if broker_answers(bootstrap):
        say("broker", f"{bootstrap} (already running)")
    else:
        host, _, port = bootstrap.rpartition(":")
        if host != "127.0.0.1":
            print(f"no broker answers at {bootstrap}", file=sys.stderr)
            return 1
        broker = Broker(
            bootstrap=bootstrap,
            state_dir=REPO_ROOT / ".cache" / "kafka" / "demo",
            port=int(port),
            controller_port=int(port) + 1,
        )
        broker.up()
        say("broker", f"{bootstrap} (started for the demo, data in {Path(broker.state_dir or '')})")
    try:
        ok = asyncio.run(play(bootstrap))
    finally:
        if broker is not None and not args.keep:
            broker.down()
            say("broker", "stopped")
    print(f"\ndemo finished: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
