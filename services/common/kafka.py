"""Kafka producer and consumer factories shared by every service (docs/design.md §2.4).

Producers are idempotent with ``acks=all`` so a retried send never duplicates an event on
the broker; consumers never auto-commit: a service commits only after it has applied what it
read, and its handlers are idempotent on ``ce_id`` so a redelivery after a crash is harmless.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from services.common.avro import AvroSerde
from services.common.cloudevents import (
    EventEnvelope,
    HeaderTemplate,
    build_headers,
    new_event_id,
    parse_headers,
    source_for,
)
from services.common.region import city_code
from services.common.settings import Settings

# Larger batches amortise Python's per-message cost, which bounds throughput on a small
# machine far more than the broker does (``python -m bench foundation``).
PRODUCER_LINGER_MS = 5
PRODUCER_MAX_BATCH_BYTES = 256 * 1024


def make_producer(settings: Settings, *, client_id: str, **overrides: Any) -> AIOKafkaProducer:
    """An idempotent producer (``enable_idempotence=True`` implies ``acks=all``)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "client_id": f"{settings.city}-{client_id}",
        "enable_idempotence": True,
        "acks": "all",
        "linger_ms": PRODUCER_LINGER_MS,
        "max_batch_size": PRODUCER_MAX_BATCH_BYTES,
        "request_timeout_ms": 30_000,
        "retry_backoff_ms": 200,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def make_consumer(
    settings: Settings, *topics: str, group_id: str | None, **overrides: Any
) -> AIOKafkaConsumer:
    """A consumer that commits only when told to, reading only committed data.

    ``topics`` are catalogue names; the node's prefix is added here. ``group_id=None`` makes
    an unmanaged reader (tools, tests) that starts at the earliest offset.
    """
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "client_id": f"{settings.city}-{group_id or 'reader'}",
        "group_id": f"{settings.topic_prefix}{group_id}" if group_id else None,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
    }
    options.update(overrides)
    return AIOKafkaConsumer(*(settings.topic(t) for t in topics), **options)


@dataclass(frozen=True, slots=True)
class ConsumedEvent:
    """One decoded event with where it came from."""

    topic: str
    partition: int
    offset: int
    key: str | None
    envelope: EventEnvelope
    record: dict[str, Any]


class EventPublisher:
    """Encodes a record as Avro single-object bytes with CloudEvents headers and produces it.

    Example::

        publisher = EventPublisher(producer, serde, settings, service="intake")
        await publisher.publish("credit.records.v1", "creditlink.v1.CreditRecord", record,
                                key="L:91320500MA1XXXXXXX", event_type="...accepted.v1")
    """

    def __init__(
        self, producer: AIOKafkaProducer, serde: AvroSerde, settings: Settings, *, service: str
    ) -> None:
        self._producer = producer
        self._serde = serde
        self._settings = settings
        self._source = source_for(city_code(settings), service)
        # Headers per (schema, event type) are built and checked once: an event only sets
        # its id, subject, time and trace (a third of what encoding one cost before).
        self._templates: dict[tuple[str, str], HeaderTemplate] = {}

    @property
    def source(self) -> str:
        """The ``ce_source`` of every event this publisher sends."""
        return self._source

    def encode(
        self,
        schema: str,
        record: Mapping[str, Any],
        *,
        key: str,
        event_type: str,
        event_id: str | None = None,
        traceparent: str | None = None,
    ) -> tuple[bytes, list[tuple[str, bytes]]]:
        """Value bytes and headers, without producing (batching callers use this)."""
        value = self._serde.encode(schema, record)
        template = self._templates.get((schema, event_type))
        if template is None:
            template = self._templates[(schema, event_type)] = HeaderTemplate(
                event_type=event_type,
                source=self._source,
                data_schema=self._serde.data_schema_uri(schema),
            )
        headers = template.headers(
            new_event_id() if event_id is None else event_id,
            key,
            time=datetime.now(UTC),
            traceparent=traceparent,
        )
        return value, headers

    async def publish(
        self,
        topic: str,
        schema: str,
        record: Mapping[str, Any] | None,
        *,
        key: str,
        event_type: str,
        event_id: str | None = None,
        traceparent: str | None = None,
    ) -> RecordMetadata:
        """Produce one event and wait for the broker's acknowledgement.

        ``record=None`` produces a tombstone (compacted topics), which carries headers but no
        value.
        """
        if record is None:
            value = None
            headers = build_headers(
                event_type=event_type,
                source=self._source,
                subject=key,
                data_schema=None,
                event_id=event_id,
                traceparent=traceparent,
            )
        else:
            value, headers = self.encode(
                schema,
                record,
                key=key,
                event_type=event_type,
                event_id=event_id,
                traceparent=traceparent,
            )
        return await self._producer.send_and_wait(
            self._settings.topic(topic), value=value, key=key.encode(), headers=headers
        )


async def consume_events(
    consumer: AIOKafkaConsumer, serde: AvroSerde, *, reader: str | None = None
) -> AsyncIterator[ConsumedEvent]:
    """Decode every message the consumer yields. Tombstones are skipped.

    Decoding failures propagate: a service routes them to its dead-letter topic rather than
    letting a bad message vanish.
    """
    async for message in consumer:
        if message.value is None:
            continue
        yield ConsumedEvent(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=message.key.decode() if message.key is not None else None,
            envelope=parse_headers(list(message.headers)),
            record=serde.decode(message.value, reader=reader),
        )


def header_map(headers: Sequence[tuple[str, bytes]]) -> dict[str, str]:
    """Headers as text, for logs and assertions."""
    return {k: v.decode() for k, v in headers}
