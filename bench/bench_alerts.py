"""Alerts figure: end-to-end latency from a record accepted on ``credit.records.v1`` to the
alert on a peer regulator's ``SubscribeAlerts`` stream, under 1,000 records/s.

Two real alerts nodes run as their own processes (``python -m services.alerts``, as in
production): Changzhou, where the records land, and Suzhou, whose regulator follows its
stream from this process over mTLS. The load is 1,000 credit records/s on Changzhou's
``credit.records.v1``; one in 20 is a serious food-safety penalty of a Suzhou-registered
company, which the serious-penalty linkage rule turns into an alert delivered to Suzhou. The
clock starts when the broker acknowledges the record (intake's "accepted") and stops when the
regulator's stream yields the alert: engine fetch, rules, RocksDB, the alert produced with
``acks=all`` in Changzhou, DeliverAlerts over mTLS, republished with ``acks=all`` in Suzhou,
the feed, the stream.

Baseline, same run, same broker, same load: raw aiokafka producing the same pre-encoded
records at 1,000/s and a plain consumer (same fetch settings as the engine) receiving them —
the floor any Kafka-based pipeline pays for one hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import yaml
from aiokafka import AIOKafkaConsumer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.harness import BenchContext, Comparison, benchmark, percentile
from creditlink.peer.v1 import alert_exchange_pb2, alert_exchange_pb2_grpc
from deploy.broker import free_port
from services.alerts.model import Domain
from services.alerts.topics import topic_partitions
from services.common.avro import AvroSerde
from services.common.certs import issue_dev_certificates
from services.common.kafka import EventPublisher, make_producer
from services.common.peer import TlsFiles, secure_channel
from services.common.roles import Role
from services.common.settings import REPO_ROOT, Settings, load_settings
from services.common.topics import load_catalogue, provision
from tests.kit.alerts import org_key, penalty_record

RATE = 1_000  # records per second
ALERT_EVERY = 20  # one record in 20 raises an alert for Suzhou
TICK_S = 0.01
CZ = "320400"
SCHEMA = "creditlink.v1.CreditRecord"
CITIES = ("changzhou", "suzhou")


def _records(count: int, run: str) -> list[tuple[bool, dict[str, Any]]]:
    """(raises an alert?, record): unique subjects, so no rule but the linkage fires."""
    out = []
    for n in range(count):
        alerting = n % ALERT_EVERY == 0
        body = f"{run[:2].upper()}{n:06d}"  # hex and digits: inside the GB 32100 alphabet
        # Suzhou-registered (320505) and serious, or Changzhou-registered and general.
        division = "320505" if alerting else "320402"
        record = penalty_record(
            org_key("91", division, body),
            city_code=CZ,
            domain="FOOD_DRUG",
            serious=alerting,
            decision_number=f"常市监罚〔{run}〕{n}号",
        )
        out.append((alerting, record))
    return out


async def _paced(
    count: int, send: Callable[[int], Awaitable[Any]], on_ack: Callable[[int, float], None]
) -> float:
    """Send ``count`` messages at RATE per second; ``on_ack(i, t)`` when the broker acks."""
    per_tick = int(RATE * TICK_S)
    start = time.perf_counter()
    pending: list[asyncio.Future[Any]] = []

    def acked(i: int) -> Callable[[asyncio.Future[Any]], None]:
        return lambda future: on_ack(i, time.perf_counter()) if not future.exception() else None

    for first in range(0, count, per_tick):
        for i in range(first, min(count, first + per_tick)):
            future = await send(i)
            future.add_done_callback(acked(i))
            pending.append(future)
        delay = start + (first + per_tick) / RATE - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    await asyncio.gather(*pending)
    return count / (time.perf_counter() - start)


async def _baseline(
    settings: Settings, values: list[tuple[bytes, bytes, list[Any]]]
) -> list[float]:
    """Raw produce → consume latency (ms) at RATE on the same broker."""
    topic = settings.topic("credit.records.v1")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False, fetch_max_wait_ms=20
    )
    await consumer.start()
    partitions = await topic_partitions(settings.kafka_bootstrap, [topic])
    consumer.assign(partitions)
    for tp, end in (await consumer.end_offsets(partitions)).items():
        consumer.seek(tp, end)
    producer = make_producer(settings, client_id="bench-raw")
    await producer.start()
    acked: dict[bytes, float] = {}
    seen: dict[bytes, float] = {}

    async def consume() -> None:
        while len(seen) < len(values):
            batches = await consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for messages in batches.values():
                for message in messages:
                    seen.setdefault(message.key, now)

    reader = asyncio.create_task(consume())
    try:
        await _paced(
            len(values),
            lambda i: producer.send(
                topic, value=values[i][1], key=values[i][0], headers=values[i][2]
            ),
            lambda i, t: acked.__setitem__(values[i][0], t),
        )
        await asyncio.wait_for(reader, 30)
    finally:
        reader.cancel()
        await producer.stop()
        await consumer.stop()
    return [(seen[k] - acked[k]) * 1000 for k in acked if k in seen]


def _write_config(scratch: Path, ports: dict[str, int]) -> dict[str, str]:
    region = yaml.safe_load((REPO_ROOT / "deploy" / "config" / "region.yaml").read_text("utf-8"))
    for key, city in region["cities"].items():
        city.pop("ops", None)  # no health endpoints: nothing to collide with a running demo
        city["endpoints"] = {"alerts": f"127.0.0.1:{ports[key]}"} if key in ports else {}
    region_file = scratch / "region.yaml"
    region_file.write_text(yaml.safe_dump(region, allow_unicode=True), encoding="utf-8")
    subscriptions = scratch / "subscriptions.yaml"
    subscriptions.write_text("version: 1\ncities: {}\n", encoding="utf-8")
    issue_dev_certificates(scratch / "certs", [*CITIES, "wuxi"])
    return {
        "CREDITLINK_REGION_FILE": str(region_file),
        "CREDITLINK_ALERT_SUBSCRIPTIONS": str(subscriptions),
        "CREDITLINK_TLS_DIR": str(scratch / "certs"),
        "CREDITLINK_DEV": "1",
        "CREDITLINK_LOG_LEVEL": "warning",
    }


async def _wait_serving(city: str, endpoint: str, tls: TlsFiles, within_s: float = 60) -> None:
    deadline = time.perf_counter() + within_s
    async with secure_channel(endpoint, tls, expect_city=city, service="alerts") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.perf_counter() > deadline:
                raise TimeoutError(f"alerts node at {endpoint} did not come up")
            await asyncio.sleep(0.2)


@benchmark("alerts")
async def alerts_latency(ctx: BenchContext) -> list[Comparison]:
    seconds = 5 if ctx.quick else 20
    count = RATE * seconds
    run = uuid.uuid4().hex[:6]
    scratch = ctx.scratch / f"alerts-{run}"
    scratch.mkdir(parents=True)
    ports = {city: free_port() for city in CITIES}
    env = {**os.environ, **_write_config(scratch, ports)}
    settings = {
        city: load_settings(
            {
                "CREDITLINK_CITY": city,
                "KAFKA_BOOTSTRAP": ctx.kafka_bootstrap,
                "CREDITLINK_TOPIC_PREFIX": f"bench-{run}-{city}.",
                "CREDITLINK_DATA_DIR": str(scratch / city),
            }
        )
        for city in CITIES
    }
    for city in CITIES:
        await provision(ctx.kafka_bootstrap, load_catalogue(), prefix=settings[city].topic_prefix)

    serde = AvroSerde()
    records = _records(count, run)
    producer = make_producer(settings["changzhou"], client_id="bench-intake")
    await producer.start()
    publisher = EventPublisher(producer, serde, settings["changzhou"], service="intake")
    encoded = [
        (
            r["subject"]["subject_key"].encode(),
            *publisher.encode(
                SCHEMA, r, key=r["subject"]["subject_key"], event_type="cn.creditlink.bench.v1"
            ),
        )
        for _, r in records
    ]

    baseline = await _baseline(settings["changzhou"], [(k, v, h) for k, v, h in encoded])
    # The baseline wrote to Changzhou's records topic; the node must start after it.
    settings_cz = load_settings(
        {
            "CREDITLINK_CITY": "changzhou",
            "KAFKA_BOOTSTRAP": ctx.kafka_bootstrap,
            "CREDITLINK_TOPIC_PREFIX": f"bench-{run}-cz2.",
            "CREDITLINK_DATA_DIR": str(scratch / "changzhou"),
        }
    )
    await provision(ctx.kafka_bootstrap, load_catalogue(), prefix=settings_cz.topic_prefix)
    settings["changzhou"] = settings_cz
    publisher = EventPublisher(producer, serde, settings_cz, service="intake")
    topic = settings_cz.topic("credit.records.v1")

    processes: list[asyncio.subprocess.Process] = []
    tls = TlsFiles.for_city("suzhou", scratch / "certs")
    acked: dict[str, float] = {}
    arrived: dict[str, float] = {}
    try:
        for city in CITIES:
            with (scratch / f"{city}.log").open("wb") as log:
                processes.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "services.alerts",
                        cwd=REPO_ROOT,
                        env={
                            **env,
                            "CREDITLINK_CITY": city,
                            "KAFKA_BOOTSTRAP": ctx.kafka_bootstrap,
                            "CREDITLINK_TOPIC_PREFIX": settings[city].topic_prefix,
                            "CREDITLINK_DATA_DIR": str(scratch / city),
                        },
                        stdout=log,
                        stderr=asyncio.subprocess.STDOUT,
                    )
                )
        for city in CITIES:
            await _wait_serving(city, f"127.0.0.1:{ports[city]}", tls)

        # Suzhou's regulator, acting in every domain: it sees every alert raised for Suzhou.
        regulator = Role.regulator_of("suzhou", "11320500014160400L", [d.value for d in Domain])
        channel = secure_channel(
            f"127.0.0.1:{ports['suzhou']}",
            TlsFiles.for_role(regulator, scratch / "certs"),
            expect_city="suzhou",
            service="alerts",
        )
        stream = alert_exchange_pb2_grpc.AlertExchangeServiceStub(channel).SubscribeAlerts(
            alert_exchange_pb2.SubscribeAlertsRequest()
        )
        expected = sum(1 for alerting, _ in records if alerting)

        async def follow() -> None:
            async for message in stream:
                if message.WhichOneof("event") == "alert":
                    for record_id in message.alert.evidence_record_ids:
                        arrived.setdefault(record_id, time.perf_counter())
                if len(arrived) >= expected:
                    return

        follower = asyncio.create_task(follow())
        ids = [r["record_id"] for _, r in records]
        alerting = {r["record_id"] for a, r in records if a}
        rate = await _paced(
            count,
            lambda i: producer.send(
                topic, value=encoded[i][1], key=encoded[i][0], headers=encoded[i][2]
            ),
            lambda i, t: acked.__setitem__(ids[i], t) if ids[i] in alerting else None,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(follower, 60)
        stream.cancel()
        await channel.close()
    finally:
        await producer.stop()
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()

    latencies = [(arrived[k] - acked[k]) * 1000 for k in acked if k in arrived]
    missing = len(acked) - len(latencies)
    notes = f"{len(latencies)} alerts at {rate:,.0f} records/s offered; {missing} missing"
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    b50, b99 = percentile(baseline, 50), percentile(baseline, 99)
    return [
        Comparison(
            "record accepted → alert on peer stream, p50",
            p50,
            b50,
            "ms",
            "raw produce→consume p50",
            higher_is_better=False,
            notes=notes,
        ),
        Comparison(
            "record accepted → alert on peer stream, p99",
            p99,
            b99,
            "ms",
            "raw produce→consume p99",
            higher_is_better=False,
            notes=notes,
        ),
        Comparison(
            "p99 against the 1 s target",
            p99,
            1000.0,
            "ms",
            "target p99 ≤ 1 s",
            target=1.0,
            higher_is_better=False,
            notes=notes if not missing else f"{notes} (missing alerts count as failures)",
        ),
    ]
