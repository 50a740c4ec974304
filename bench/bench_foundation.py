"""Foundation figures: the Avro serde and the common publisher, each against its raw library.

- encode / decode: our single-object serde vs fastavro's schemaless writer/reader on the same
  CreditRecord (the framing and schema lookup are what we add);
- publish: ``EventPublisher`` (encode + CloudEvents headers + produce, ``acks=all``) vs raw
  aiokafka producing the same pre-encoded bytes with the same producer settings.
"""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any

import fastavro

from bench.harness import BenchContext, Comparison, benchmark, measure_rate
from services.common.avro import AvroSerde, SchemaStore, load_example
from services.common.kafka import EventPublisher, make_producer
from services.common.settings import load_settings
from services.common.topics import load_catalogue, provision

SCHEMA = "creditlink.v1.CreditRecord"


async def _produce_rate(send_batch: Any, total: int, batch: int) -> float:
    start = time.perf_counter()
    for first in range(0, total, batch):
        futures = await send_batch(first, min(batch, total - first))
        await asyncio.gather(*futures)
    return total / (time.perf_counter() - start)


@benchmark("foundation")
async def foundation(ctx: BenchContext) -> list[Comparison]:
    store = SchemaStore.load()
    serde = AvroSerde(store)
    record = load_example("CreditRecord")
    writer = store.latest(SCHEMA)
    seconds = 0.5 if ctx.quick else 3.0

    def raw_encode() -> bytes:
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, writer.parsed, record)
        return buffer.getvalue()

    body = raw_encode()
    ours_bytes = serde.encode(SCHEMA, record)
    enc_ours = measure_rate(lambda: serde.encode(SCHEMA, record), seconds=seconds)
    enc_base = measure_rate(raw_encode, seconds=seconds)
    dec_ours = measure_rate(lambda: serde.decode(ours_bytes), seconds=seconds)
    dec_base = measure_rate(
        lambda: fastavro.schemaless_reader(io.BytesIO(body), writer.parsed, writer.parsed),
        seconds=seconds,
    )

    settings = load_settings(
        {"KAFKA_BOOTSTRAP": ctx.kafka_bootstrap, "CREDITLINK_TOPIC_PREFIX": "bench."}
    )
    await provision(ctx.kafka_bootstrap, load_catalogue(), prefix=settings.topic_prefix)
    total = 5_000 if ctx.quick else 50_000
    batch = 1_000
    key = str(record["subject"]["subject_key"])
    topic = settings.topic("credit.records.v1")

    producer = make_producer(settings, client_id="bench")
    await producer.start()
    try:
        publisher = EventPublisher(producer, serde, settings, service="bench")

        async def ours(_first: int, count: int) -> list[Any]:
            futures = []
            for _ in range(count):
                value, headers = publisher.encode(
                    SCHEMA, record, key=key, event_type="cn.creditlink.bench.v1"
                )
                futures.append(
                    await producer.send(topic, value=value, key=key.encode(), headers=headers)
                )
            return futures

        _value, fixed_headers = publisher.encode(
            SCHEMA, record, key=key, event_type="cn.creditlink.bench.v1"
        )

        async def raw(_first: int, count: int) -> list[Any]:
            return [
                await producer.send(
                    topic, value=ours_bytes, key=key.encode(), headers=fixed_headers
                )
                for _ in range(count)
            ]

        # Warm up: metadata, leader discovery and the idempotent producer id, outside the clock.
        await _produce_rate(raw, batch, batch)
        pub_base = await _produce_rate(raw, total, batch)
        pub_ours = await _produce_rate(ours, total, batch)
    finally:
        await producer.stop()

    return [
        Comparison(
            "encode CreditRecord", enc_ours, enc_base, "rec/s", "fastavro schemaless_writer"
        ),
        Comparison(
            "decode CreditRecord", dec_ours, dec_base, "rec/s", "fastavro schemaless_reader"
        ),
        Comparison(
            f"publish {total:,} (acks=all)",
            pub_ours,
            pub_base,
            "ev/s",
            "aiokafka, pre-encoded bytes",
            target=0.5,
        ),
    ]
