"""Intake throughput end to end, next to raw aiokafka producing the same bytes.

*Ours*: ``import_files`` on a CSV of synthetic 双公示 records — parse, validate, pseudonymise,
classify against the ledger, Avro-encode, CloudEvents headers, produce with ``acks=all`` in
one Kafka transaction per chunk, commit. *Baseline*: the same records, encoded beforehand
exactly as the import encodes them (same keys and value sizes, CloudEvents headers),
produced by a plain aiokafka producer with the node's producer settings (idempotent,
``acks=all``, same linger and batch size), one ``send()`` per message — what "raw aiokafka"
means to most code. It runs before and after ours; its figure is the mean.
A second, informational row compares with the fastest raw path, hand-built batches
(``create_batch``/``send_batch``), which ours uses too.

200,000 records (20,000 with ``--quick``). Target: ours / baseline ≥ 0.5.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from bench.harness import BenchContext, Comparison, benchmark
from services.common.cloudevents import build_headers
from services.common.kafka import make_producer
from services.common.pseudonym import DEV_REGION_KEY
from services.common.settings import Settings, load_settings
from services.common.topics import load_catalogue, provision
from services.intake.encode.events import RECORD_ACCEPTED, RECORDS_TOPIC
from services.intake.importer import default_workers, import_files
from services.intake.node import intake_node
from services.intake.prepare import Preparation, PreparedRecord, prepare_chunk, split_file
from tests.kit.intake_samples import licensing_row, penalty_row, render_csv

BASELINE_TOPIC = "bench.raw-records.v1"


def write_file(path: Path, count: int) -> None:
    rng = random.Random(7)
    start = date.today() - timedelta(days=30)
    rows = []
    for serial in range(count):
        decided = start + timedelta(days=serial % 25)
        if serial % 4:
            rows.append(penalty_row(rng, decision_date=decided, serial=serial))
        else:
            rows.append(licensing_row(rng, decision_date=decided, serial=serial))
    path.write_text(render_csv(rows), encoding="utf-8")


def pre_encoded(path: Path, partitions: int) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    """The (key, value, headers) of every record of the file, encoded the way the import
    encodes them: the baseline's payloads, identical in size. Not timed."""
    preparation = Preparation(
        city="suzhou",
        city_code="320500",
        region_key=DEV_REGION_KEY,
        today=date.today(),
        submitted_at=datetime.now(UTC),
        uploader_department=None,
        partitions=partitions,
        traceparent=None,
    )
    headers = build_headers(
        event_type=RECORD_ACCEPTED,
        source="/cities/320500/intake",
        subject="L:91320500MA1W8XY409",
        data_schema="urn:creditlink:schema:creditlink.v1.CreditRecord:v1:0000000000000000",
    )
    messages = []
    with path.open("rb") as stream:
        for chunk in split_file(stream, "csv", path.name):
            for item in prepare_chunk(chunk, preparation).items():
                if isinstance(item, PreparedRecord):
                    messages.append((item.key, item.value, headers))
    return messages


async def raw_send(
    settings: Settings, messages: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]
) -> float:
    """Messages per second of one ``send()`` per message, all awaited at the end."""
    producer = make_producer(settings, client_id="bench-raw")
    await producer.start()
    try:
        topic = settings.topic(BASELINE_TOPIC)
        await producer.partitions_for(topic)
        started = time.perf_counter()
        futures = [
            await producer.send(topic, value=value, key=key, headers=headers)
            for key, value, headers in messages
        ]
        await asyncio.gather(*futures)
        return len(messages) / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def raw_batches(
    settings: Settings, messages: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]
) -> float:
    """Messages per second with hand-built per-partition batches."""
    producer = make_producer(settings, client_id="bench-raw-batch")
    await producer.start()
    try:
        topic = settings.topic(BASELINE_TOPIC)
        partitions = sorted(await producer.partitions_for(topic))
        partitioner = DefaultPartitioner()
        started = time.perf_counter()
        batches: dict[int, Any] = {}
        futures = []
        for key, value, headers in messages:
            partition = partitioner(key, partitions, partitions)
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = batches[partition] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None, headers=headers)
        for partition, batch in batches.items():
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*futures)
        return len(messages) / (time.perf_counter() - started)
    finally:
        await producer.stop()


@benchmark("intake")
async def intake_throughput(ctx: BenchContext) -> list[Comparison]:
    count = 20_000 if ctx.quick else 200_000
    path = ctx.scratch / f"intake-{count}.csv"
    write_file(path, count)
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    settings = load_settings(
        {
            "KAFKA_BOOTSTRAP": ctx.kafka_bootstrap,
            "CREDITLINK_TOPIC_PREFIX": prefix,
            "CREDITLINK_LOG_LEVEL": "warning",
        }
    )
    catalogue = load_catalogue()
    records_spec = next(s for s in catalogue if s.name == RECORDS_TOPIC)
    baseline_spec = dataclasses.replace(records_spec, name=BASELINE_TOPIC)  # same partitions
    await provision(ctx.kafka_bootstrap, [*catalogue, baseline_spec], prefix=prefix)

    messages = pre_encoded(path, records_spec.partitions)
    size = sum(len(v) for _, v, _ in messages) / len(messages)
    # The baseline runs before and after ours and counts as their mean, so a change in the
    # machine's load during the run (these machines are shared) does not favour either side.
    before = await raw_send(settings, messages)
    # As `python -m services.intake import` does, the node starts its preparing processes
    # while it connects and catches up, before the clock; the producers are started before
    # the baseline's clock too.
    async with intake_node(
        settings,
        writer="bench",
        region_key=DEV_REGION_KEY,
        preparers=default_workers([path]),
    ) as node:
        started = time.perf_counter()
        summary = await import_files(node, [path])
        ours = summary.lines / (time.perf_counter() - started)
    if summary.accepted != count:
        raise RuntimeError(f"bench import accepted {summary.accepted} of {count}")
    after = await raw_send(settings, messages)
    batched = await raw_batches(settings, messages)
    notes = (
        f"{count:,} records, {size:.0f} B values; ours transactional, "
        f"{default_workers([path])} preparing process(es); send() before/after "
        f"{before:,.0f}/{after:,.0f} rec/s; load {os.getloadavg()[0]:.1f}"
    )
    return [
        Comparison(
            "intake import end to end",
            ours,
            (before + after) / 2,
            unit="rec/s",
            baseline_name="raw aiokafka send()",
            target=0.5,
            notes=notes,
        ),
        Comparison(
            "intake import end to end",
            ours,
            batched,
            unit="rec/s",
            baseline_name="raw aiokafka send_batch",
            notes=notes,
        ),
    ]
