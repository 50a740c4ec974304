"""The lists service's Kafka ends: the records it reads, the topics it writes and reads back.

* :class:`KafkaChangeSink` publishes each change on ``credit.list-changes.v1`` (key: issuing
  city; ``ce_id`` the change id) and the entry's state on ``credit.lists.v1`` (key: entry key;
  a tombstone once removed), and waits for the broker's acknowledgements.
* :class:`KafkaRefusals` sends a refused list decision to ``credit.records.rejected.v1`` with
  machine-readable reasons, and writes a refused peer change to the audit chain.
* :class:`KafkaChangelog` reads both topics back for the start-up catch-up.
* :func:`feed_records` reads ``credit.records.v1`` into the book. It owns every partition
  (one lists service per node: the issuer's sequence needs a single writer) and resumes from
  the offsets stored with the state they produced, so no consumer group rebalance is needed;
  the offsets are also committed to the ``lists`` group for lag monitoring.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from services.common.audit import AuditChainWriter, AuditEntry
from services.common.avro import AvroSerde, SerdeError
from services.common.cloudevents import build_headers, source_for
from services.common.kafka import make_consumer
from services.common.settings import Settings
from services.common.topic_names import CHANGES_TOPIC as CHANGES_TOPIC
from services.common.topic_names import LISTS_TOPIC as LISTS_TOPIC
from services.common.topic_names import RECORDS_TOPIC as RECORDS_TOPIC
from services.common.topic_names import REJECTED_TOPIC as REJECTED_TOPIC
from services.lists.book import ChangelogItem, IncomingRecord, ListBook
from services.lists.decisions import Refused
from services.lists.model import (
    CHANGE_SCHEMA,
    ENTRY_SCHEMA,
    RECORD_SCHEMA,
    ListChange,
    ListEntry,
)

REJECTED_SCHEMA: Final = "creditlink.v1.RejectedRecord"
CHANGE_EVENT: Final = "cn.creditlink.list.changed.v1"
ENTRY_EVENT: Final = "cn.creditlink.list.entry.v1"
REJECTED_EVENT: Final = "cn.creditlink.credit.record.rejected.v1"
STREAM_METHOD: Final = "/creditlink.peer.v1.ListSyncService/StreamListChanges"
FETCH_MAX_RECORDS: Final = 500

log = structlog.get_logger()


class KafkaChangeSink:
    """Publishes changes and entry states, acknowledged by the broker before returning."""

    def __init__(
        self, producer: AIOKafkaProducer, serde: AvroSerde, settings: Settings, *, city_code: str
    ) -> None:
        self._producer = producer
        self._serde = serde
        self._changes_topic = settings.topic(CHANGES_TOPIC)
        self._lists_topic = settings.topic(LISTS_TOPIC)
        self._source = source_for(city_code, "lists")
        self._change_schema = serde.data_schema_uri(CHANGE_SCHEMA)
        self._entry_schema = serde.data_schema_uri(ENTRY_SCHEMA)

    async def _send_state(self, entry: ListEntry, event_id: str) -> asyncio.Future[Any]:
        value = None if entry.removed else self._serde.encode(ENTRY_SCHEMA, entry.to_avro())
        headers = build_headers(
            event_type=ENTRY_EVENT,
            source=self._source,
            subject=entry.entry_key,
            data_schema=None if value is None else self._entry_schema,
            event_id=event_id,
        )
        future: asyncio.Future[Any] = await self._producer.send(
            self._lists_topic, value=value, key=entry.entry_key.encode(), headers=headers
        )
        return future

    async def _send_tombstone(self, entry_key: str) -> asyncio.Future[Any]:
        headers = build_headers(
            event_type=ENTRY_EVENT, source=self._source, subject=entry_key, data_schema=None
        )
        future: asyncio.Future[Any] = await self._producer.send(
            self._lists_topic, value=None, key=entry_key.encode(), headers=headers
        )
        return future

    async def publish(
        self, changes: Sequence[ListChange], *, without_state: frozenset[str] = frozenset()
    ) -> Mapping[int, int]:
        change_futures = []
        state_futures = []
        for change in changes:
            headers = build_headers(
                event_type=CHANGE_EVENT,
                source=self._source,
                subject=change.entry.entry_key,
                data_schema=self._change_schema,
                event_id=change.change_id,
                time=change.changed_at,
            )
            change_futures.append(
                await self._producer.send(
                    self._changes_topic,
                    value=self._serde.encode(CHANGE_SCHEMA, change.to_avro()),
                    key=change.issuing_city.encode(),
                    headers=headers,
                )
            )
            if change.change_id not in without_state:
                state_futures.append(
                    await self._send_state(change.entry, f"{change.change_id}/state")
                )
        delivered = await asyncio.gather(*change_futures)
        await asyncio.gather(*state_futures)
        offsets: dict[int, int] = {}
        for metadata in delivered:
            offsets[metadata.partition] = max(
                offsets.get(metadata.partition, 0), metadata.offset + 1
            )
        return offsets

    async def publish_states(self, entries: Sequence[ListEntry], deleted: Sequence[str]) -> None:
        futures = [await self._send_state(e, f"{uuid.uuid4()}/state") for e in entries]
        futures.extend([await self._send_tombstone(key) for key in deleted])
        await asyncio.gather(*futures)


class KafkaRefusals:
    """Refused list decisions → ``credit.records.rejected.v1``; refused peer changes → audit."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        serde: AvroSerde,
        settings: Settings,
        *,
        city_code: str,
        audit: AuditChainWriter | None,
    ) -> None:
        self._producer = producer
        self._serde = serde
        self._topic = settings.topic(REJECTED_TOPIC)
        self._city = city_code
        self._source = source_for(city_code, "lists")
        self._audit = audit

    async def record_refused(self, incoming: IncomingRecord, refusal: Refused) -> None:
        record = incoming.record
        department = str(record.get("department_code") or "unknown")
        rejected = {
            "rejection_id": str(uuid.uuid4()),
            "city_code": self._city,
            "department_code": department,
            "department_name": record.get("department_name"),
            "record_id": record.get("record_id"),
            "claimed_category": record.get("category"),
            "payload": incoming.raw,
            "payload_encoding": f"application/avro; messageType={RECORD_SCHEMA}",
            "source": record.get("source")
            or {"channel": "UNKNOWN", "submitted_at": datetime.now(UTC)},
            "reasons": [{"field": refusal.field, "code": refusal.code, "message": refusal.message}],
            "rejected_at": datetime.now(UTC),
        }
        headers = build_headers(
            event_type=REJECTED_EVENT,
            source=self._source,
            subject=department,
            data_schema=self._serde.data_schema_uri(REJECTED_SCHEMA),
        )
        await self._producer.send_and_wait(
            self._topic,
            value=self._serde.encode(REJECTED_SCHEMA, rejected),
            key=department.encode(),
            headers=headers,
        )

    async def peer_refused(
        self, peer_code: str, what: str, entry: ListEntry, refusal: Refused
    ) -> None:
        """One OUTBOUND audit record: this node refused what ``peer_code`` sent it."""
        if self._audit is None:
            return
        await self._audit.append(
            AuditEntry(
                caller_city=self._city,
                callee_city=peer_code,
                method=STREAM_METHOD,
                purpose=f"LIST_SYNC: refused {what} to {entry.entry_key} ({refusal.code})"[:200],
                status_code="PERMISSION_DENIED",
                latency_ms=0,
                at=datetime.now(UTC),
                subject_key=entry.subject_key,
                direction="OUTBOUND",
                denial_code=refusal.code,
                caller_role="node",  # the mirror calls as the city's node
            )
        )


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Every partition of ``topic``; RuntimeError if it does not exist (after a few tries)."""
    for _ in range(50):
        # A consumer without subscriptions tracks no topic's metadata, and aiokafka has no
        # public call to refresh it (``topics()`` returns a copy): ask its client directly.
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return [TopicPartition(topic, p) for p in sorted(partitions)]
        await asyncio.sleep(0.1)
    raise RuntimeError(f"topic {topic} does not exist; create the node's topics (make topics)")


class KafkaChangelog:
    """Reads this node's ``credit.list-changes.v1`` and ``credit.lists.v1`` up to their end."""

    def __init__(self, settings: Settings, serde: AvroSerde) -> None:
        self._settings = settings
        self._serde = serde

    async def _read(
        self, topic: str, from_offsets: Mapping[int, int]
    ) -> AsyncIterator[tuple[int, int, bytes | None, bytes | None]]:
        consumer = make_consumer(self._settings, group_id=None)
        await consumer.start()
        try:
            partitions = await topic_partitions(consumer, self._settings.topic(topic))
            consumer.assign(partitions)
            ends = await consumer.end_offsets(partitions)
            starts = await consumer.beginning_offsets(partitions)
            for tp in partitions:
                consumer.seek(tp, max(from_offsets.get(tp.partition, 0), starts[tp]))
            remaining = {tp for tp in partitions if await consumer.position(tp) < ends[tp]}
            while remaining:
                fetched = await consumer.getmany(*remaining, timeout_ms=500, max_records=1000)
                for tp, messages in fetched.items():
                    for message in messages:
                        if message.offset < ends[tp]:
                            yield tp.partition, message.offset, message.key, message.value
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
        finally:
            await consumer.stop()

    async def read_changes(self, from_offsets: Mapping[int, int]) -> AsyncIterator[ChangelogItem]:
        async for partition, offset, _key, value in self._read(CHANGES_TOPIC, from_offsets):
            change = None
            if value is not None:
                try:
                    change = ListChange.from_avro(self._serde.decode(value, reader=CHANGE_SCHEMA))
                except (SerdeError, ValueError, KeyError) as exc:
                    log.error(
                        "changelog_undecodable", partition=partition, offset=offset, error=str(exc)
                    )
            yield ChangelogItem(partition, offset, change)

    async def read_states(self) -> AsyncIterator[ListEntry]:
        latest: dict[bytes, bytes | None] = {}
        async for _partition, _offset, key, value in self._read(LISTS_TOPIC, {}):
            if key is not None:
                latest[key] = value
        for value in latest.values():
            if value is not None:
                yield ListEntry.from_avro(self._serde.decode(value, reader=ENTRY_SCHEMA))


async def feed_records(
    book: ListBook,
    settings: Settings,
    serde: AvroSerde,
    *,
    stopping: asyncio.Event,
    started: asyncio.Event | None = None,
) -> None:
    """Read ``credit.records.v1`` into ``book`` until ``stopping`` is set."""
    topic = settings.topic(RECORDS_TOPIC)
    consumer = make_consumer(settings, group_id="lists", fetch_max_wait_ms=100)
    await consumer.start()
    try:
        partitions = await topic_partitions(consumer, topic)
        consumer.assign(partitions)
        stored = book.store.offsets(topic)
        for tp in partitions:
            if tp.partition in stored:
                consumer.seek(tp, stored[tp.partition])
            else:
                committed = await consumer.committed(tp)
                if committed is not None:
                    consumer.seek(tp, committed)
                else:
                    await consumer.seek_to_beginning(tp)
        if started is not None:
            started.set()
        while not stopping.is_set():
            fetched = await consumer.getmany(timeout_ms=200, max_records=FETCH_MAX_RECORDS)
            incoming = [
                _incoming(serde, message) for messages in fetched.values() for message in messages
            ]
            if not incoming:
                continue
            await book.apply_records(incoming)
            offsets = {tp: messages[-1].offset + 1 for tp, messages in fetched.items() if messages}
            try:
                await consumer.commit(offsets)
            except Exception as exc:  # lag monitoring only; the store holds the positions
                log.warning("records_offset_commit_failed", error=str(exc))
    finally:
        await consumer.stop()


def _incoming(serde: AvroSerde, message: Any) -> IncomingRecord:
    headers = {k: v.decode("utf-8", "replace") for k, v in message.headers or ()}
    record: dict[str, Any] = {}
    if message.value is not None:
        try:
            record = serde.decode(message.value, reader=RECORD_SCHEMA)
        except SerdeError as exc:
            # The event stays on its topic; intake owns its correction.
            log.error(
                "record_undecodable",
                partition=message.partition,
                offset=message.offset,
                error=str(exc),
            )
    return IncomingRecord(
        record=record,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        event_id=headers.get("ce_id", ""),
        raw=bytes(message.value or b""),
    )
