"""The rule engine's wiring: Kafka input → subject state → rules → the alert book.

Reads ``credit.records.v1`` (intake), ``credit.lists.v1`` and ``credit.list-changes.v1``
(lists: own and mirrored entries) with one consumer that owns every partition and keeps its
positions in the store, next to the state they produced (one RocksDB batch per fetched
batch). No consumer group: one engine per node (docs/alerts.md, "Scaling").

Per fetched batch: fold each event into its subject's state, collect the rules' drafts,
raise them (produced and applied by the book), then write state and offsets. A crash after
raising but before writing replays the batch: the replayed drafts have the same alert ids,
which the book already holds, so nothing is raised twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Coroutine, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, TypeVar

import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord, TopicPartition

from services.alerts.book import AlertBook
from services.alerts.model import Alert
from services.alerts.rules import (
    AlertDraft,
    EntryView,
    PenaltyObservation,
    RecordFacts,
    RuleContext,
    RuleSet,
    SubjectState,
)
from services.alerts.store import AlertStore, Batch
from services.alerts.topics import topic_partitions
from services.common.avro import AvroSerde, SerdeError
from services.common.clock import china_today
from services.common.kafka import make_consumer
from services.common.region import Region
from services.common.settings import Settings
from services.common.topic_names import CHANGES_TOPIC as LIST_CHANGES_TOPIC
from services.common.topic_names import LISTS_TOPIC, RECORDS_TOPIC

INPUT_TOPICS: Final = (RECORDS_TOPIC, LISTS_TOPIC, LIST_CHANGES_TOPIC)
# Alerts wait for their fetched batch to be folded in: small batches keep that wait short
# when the engine has fallen behind.
FETCH_MAX_RECORDS: Final = 250
TOPIC_WAIT_S: Final = 30.0

# A lazy proxy: it picks up configure_logging() however early this module is imported.
log = structlog.get_logger()
_T = TypeVar("_T")


async def uninterrupted(work: Coroutine[Any, Any, _T]) -> _T:
    """Run ``work`` to its end even if the caller is cancelled meanwhile, then let the
    cancellation through. Starting an aiokafka client is such work: cancelled half-way, it
    leaves a bootstrap connection that ``stop()`` does not know about and never closes."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise


def subject_key_of_entry(entry_key: str) -> str | None:
    """``<issuing_city>/<list_type>/<subject_key>/<digest>`` → the subject key."""
    parts = entry_key.split("/")
    return parts[2] if len(parts) == 4 else None


class RuleEngine:
    def __init__(
        self,
        *,
        settings: Settings,
        region: Region,
        city_code: str,
        store: AlertStore,
        serde: AvroSerde,
        rules: RuleSet,
        book: AlertBook,
    ) -> None:
        self._settings = settings
        self._region = region
        self.city_code = city_code
        self._store = store
        self._serde = serde
        self._rules = rules
        self._book = book
        self._lock = asyncio.Lock()
        self._topics = {settings.topic(t): t for t in INPUT_TOPICS}
        self.processed = 0
        self.caught_up = asyncio.Event()

    def context(self, now: datetime | None = None) -> RuleContext:
        return RuleContext(city_code=self.city_code, region=self._region, today=china_today(now))

    # --- folding one event ------------------------------------------------------------------

    def _state(
        self, batch: Batch, cache: dict[str, SubjectState], subject_key: str
    ) -> SubjectState:
        state = cache.get(subject_key)
        if state is None:
            stored = batch.get(f"sub/{subject_key}")
            state = (
                SubjectState.from_json(stored)
                if stored is not None
                else SubjectState(subject_key=subject_key)
            )
            cache[subject_key] = state
        return state

    def on_record(
        self,
        ctx: RuleContext,
        batch: Batch,
        cache: dict[str, SubjectState],
        record: Mapping[str, Any],
    ) -> list[AlertDraft]:
        facts = RecordFacts.from_avro(record)
        seen = batch.get(f"rec/{facts.record_id}")
        if seen is not None and int(seen) >= facts.version:
            return []  # a replay or a stale version: nothing new
        batch.put(f"rec/{facts.record_id}", facts.version)
        state = self._state(batch, cache, facts.subject_key)
        state.apply_record(facts, city_code=self.city_code, first_version=seen is None)
        accepted_at = record.get("accepted_at")
        return [
            dataclasses.replace(draft, trigger_accepted_at=accepted_at)
            for draft in self._rules.on_record(ctx, state, facts)
        ]

    def on_entry(
        self,
        ctx: RuleContext,
        batch: Batch,
        cache: dict[str, SubjectState],
        entry: Mapping[str, Any],
    ) -> list[AlertDraft]:
        view = EntryView.from_avro(entry)
        state = self._state(batch, cache, str(entry["subject_key"]))
        if not state.apply_entry(view):
            return []
        if entry.get("subject_name") and state.subject_name is None:
            state.subject_name = str(entry["subject_name"])
        return self._rules.on_list_entry(ctx, state, view)

    def on_tombstone(self, batch: Batch, cache: dict[str, SubjectState], entry_key: str) -> None:
        subject_key = subject_key_of_entry(entry_key)
        if subject_key is not None:
            self._state(batch, cache, subject_key).remove_entry(entry_key)

    def _dispatch(
        self,
        ctx: RuleContext,
        batch: Batch,
        cache: dict[str, SubjectState],
        message: ConsumerRecord,
    ) -> list[AlertDraft]:
        logical = self._topics[message.topic]
        if message.value is None:
            if logical == LISTS_TOPIC and message.key is not None:
                self.on_tombstone(batch, cache, message.key.decode("utf-8"))
            return []
        if logical == RECORDS_TOPIC:
            record = self._serde.decode(message.value, reader="creditlink.v1.CreditRecord")
            return self.on_record(ctx, batch, cache, record)
        if logical == LISTS_TOPIC:
            entry = self._serde.decode(message.value, reader="creditlink.v1.ListEntry")
            return self.on_entry(ctx, batch, cache, entry)
        change = self._serde.decode(message.value, reader="creditlink.v1.ListChange")
        return self.on_entry(ctx, batch, cache, change["entry"])

    async def handle(self, messages: Sequence[ConsumerRecord]) -> list[Alert]:
        """Fold a fetched batch in, raise what the rules drafted, persist state + offsets."""
        async with self._lock:
            ctx = self.context()
            batch = self._store.batch()
            cache: dict[str, SubjectState] = {}
            drafts: list[AlertDraft] = []
            for message in messages:
                try:
                    drafts.extend(self._dispatch(ctx, batch, cache, message))
                except (SerdeError, KeyError, TypeError, ValueError) as exc:
                    # The event stays on its topic; intake/lists own its correction.
                    log.error(
                        "input_event_skipped",
                        topic=message.topic,
                        partition=message.partition,
                        offset=message.offset,
                        error=f"{type(exc).__name__}: {exc}",
                    )
                batch.set_offset(message.topic, message.partition, message.offset + 1)
            for state in cache.values():
                state.prune(today=ctx.today, keep_days=self._rules.keep_days)
                batch.put(f"sub/{state.subject_key}", state.to_json())
            raised = await self._book.raise_drafts(drafts) if drafts else []
            self._store.write(batch)
            self.processed += len(messages)
            return raised

    async def observe_peer_alert(self, alert: Alert) -> list[Alert]:
        """A peer's alert teaches us where the subject is active and, when it reports a
        penalty, adds it to the region-wide count (which may raise an alert here)."""
        async with self._lock:
            ctx = self.context()
            batch = self._store.batch()
            cache: dict[str, SubjectState] = {}
            state = self._state(batch, cache, alert.subject_key)
            if alert.origin_city != self.city_code:
                state.peer_cities.setdefault(alert.origin_city, f"alert:{alert.rule_id}")
            if alert.subject_name and state.subject_name is None:
                state.subject_name = alert.subject_name
            drafts: list[AlertDraft] = []
            observation = PenaltyObservation.from_alert_attributes(alert.attributes)
            if observation is not None and state.apply_observation(observation):
                drafts = self._rules.on_observation(ctx, state, observation)
            batch.put(f"sub/{state.subject_key}", state.to_json())
            raised = await self._book.raise_drafts(drafts) if drafts else []
            self._store.write(batch)
            return raised

    # --- the loop ---------------------------------------------------------------------------

    async def _assign(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        partitions = await topic_partitions(
            self._settings.kafka_bootstrap, list(self._topics), wait_s=TOPIC_WAIT_S
        )
        consumer.assign(partitions)
        beginnings = await consumer.beginning_offsets(partitions)
        for tp in partitions:
            stored = self._store.offset(tp.topic, tp.partition)
            # An offset below the log start was deleted by retention: go on from the start.
            consumer.seek(tp, beginnings[tp] if stored is None else max(stored, beginnings[tp]))
        return partitions

    async def _open(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, int]:
        await consumer.start()
        partitions = await self._assign(consumer)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        return ends

    def _reached(self, ends: Mapping[TopicPartition, int]) -> bool:
        return all(
            (self._store.offset(tp.topic, tp.partition) or 0) >= end
            for tp, end in ends.items()
            if end
        )

    async def run(self) -> None:
        """Consume until cancelled."""
        # No group: positions live in the store (see the module docstring). Latency: a
        # record should reach the rules in tens of milliseconds, hence the short fetch wait.
        consumer = make_consumer(
            self._settings,
            group_id=None,
            client_id=f"{self._settings.city}-alerts-engine",
            fetch_max_wait_ms=20,
        )
        try:
            ends = await uninterrupted(self._open(consumer))
            while True:
                fetched = await consumer.getmany(timeout_ms=200, max_records=FETCH_MAX_RECORDS)
                messages = [m for tp_messages in fetched.values() for m in tp_messages]
                if messages:
                    await self.handle(messages)
                if not self.caught_up.is_set() and self._reached(ends):
                    self.caught_up.set()
                    log.info("rule_engine_caught_up", processed=self.processed)
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()
