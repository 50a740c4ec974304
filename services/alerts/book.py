"""The alert book: every change to the alerts a node holds goes through here.

Each change is first produced to Kafka (``acks=all``; the topic is the record of truth), then
applied to the store in one atomic batch together with everything that follows from it: the
feed entry regulators stream, the DeliverAlerts outbox entries, the webhook outbox entries,
the SLA index, and the output offset it reached. One lock serialises these steps, so the
stored output offsets only ever cover applied events, and after a crash
:meth:`AlertBook.recover` re-applies exactly the events produced but not yet applied.

Roles: the *origin* raises, escalates and accepts status changes; a *target* receives
alerts (DeliverAlerts) and records status changes its regulators made once the origin took
them (``record_change``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from services.alerts.config import Webhook
from services.alerts.model import (
    ALERT_ESCALATED_TYPE,
    ALERT_ID_NAMESPACE,
    ALERT_RAISED_TYPE,
    ALERT_RECEIVED_TYPE,
    ALERT_SCHEMA,
    ALERT_TOPICS,
    STATUS_CHANGED_TYPE,
    STATUS_SCHEMA,
    STATUS_TOPIC,
    Alert,
    SlaPolicy,
    Status,
    StatusChange,
    now_ms,
    to_ms,
    transition_problem,
)
from services.alerts.rules import AlertDraft
from services.alerts.store import AlertStore, Batch, due_key
from services.alerts.topics import topic_partitions
from services.common.avro import AvroSerde, SerdeError
from services.common.kafka import EventPublisher, make_consumer
from services.common.observability import ALERT_LATENCY
from services.common.settings import Settings

# A lazy proxy: it picks up configure_logging() however early this module is imported.
log = structlog.get_logger()
OUTPUT_TOPICS: Final = (*ALERT_TOPICS, STATUS_TOPIC)


class AlertNotFound(LookupError):
    pass


class StatusConflict(Exception):
    """The change does not follow the status order, or ``expected_status`` is stale."""


@dataclass(frozen=True, slots=True)
class HeldAlert:
    """An alert as the store holds it."""

    alert: Alert
    status: Status

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HeldAlert:
        return cls(alert=Alert.from_json(data["alert"]), status=Status(data["status"]))


def alert_key(alert_id: str) -> str:
    return f"alert/{alert_id}"


def change_key(change_id: str) -> str:
    return f"chg/{change_id}"


def derived_change_id(alert_id: str, what: str) -> str:
    """Ids of changes the node makes itself, stable across replays."""
    return str(uuid.uuid5(ALERT_ID_NAMESPACE, f"{alert_id}|{what}"))


class AlertBook:
    def __init__(
        self,
        *,
        settings: Settings,
        city_code: str,
        store: AlertStore,
        serde: AvroSerde,
        producer: AIOKafkaProducer,
        sla: SlaPolicy,
        webhooks: Sequence[Webhook] = (),
    ) -> None:
        self._settings = settings
        self.city_code = city_code
        self._store = store
        self._serde = serde
        self._producer = producer
        self._publisher = EventPublisher(producer, serde, settings, service="alerts")
        self.sla = sla
        self._webhooks = tuple(webhooks)
        self._lock = asyncio.Lock()

    # --- reads ----------------------------------------------------------------------------

    def held(self, alert_id: str) -> HeldAlert | None:
        data = self._store.get(alert_key(alert_id))
        return None if data is None else HeldAlert.from_json(data)

    def change(self, change_id: str) -> StatusChange | None:
        data = self._store.get(change_key(change_id))
        return None if data is None else StatusChange.from_json(data)

    # --- origin: raise, escalate, accept status changes ------------------------------------

    def _new_alert(self, draft: AlertDraft, now: datetime) -> Alert:
        resolve = self.sla.resolve[draft.severity]
        return Alert(
            alert_id=draft.alert_id(self.city_code),
            rule_id=draft.rule_id,
            domain=draft.domain,
            severity=draft.severity,
            origin_city=self.city_code,
            target_cities=draft.target_cities,
            subject_key=draft.subject_key,
            subject_name=draft.subject_name,
            explanation=draft.explanation,
            evidence_record_ids=draft.evidence_record_ids,
            evidence_list_entry_keys=draft.evidence_list_entry_keys,
            raised_at=now,
            ack_deadline=now + self.sla.ack[draft.severity],
            resolve_deadline=None if resolve is None else now + resolve,
            escalation_level=0,
            attributes=draft.attributes,
        )

    async def raise_drafts(self, drafts: Iterable[AlertDraft]) -> list[Alert]:
        """Raise each draft whose alert this node does not hold yet; returns the new alerts."""
        async with self._lock:
            now = now_ms()
            alerts: dict[str, Alert] = {}
            drafts_by_id: dict[str, AlertDraft] = {}
            for draft in drafts:
                alert_id = draft.alert_id(self.city_code)
                if alert_id in alerts or self._store.get(alert_key(alert_id)) is not None:
                    continue
                alerts[alert_id] = self._new_alert(draft, now)
                drafts_by_id[alert_id] = draft
            if not alerts:
                return []
            events: list[tuple[Alert | StatusChange, str]] = []
            for alert in alerts.values():
                events.append((alert, ALERT_RAISED_TYPE))
                events.append((self._raised_change(alert), STATUS_CHANGED_TYPE))
            metas = await self._produce(events)
            batch = self._store.batch()
            for (event, _), meta in zip(events, metas, strict=True):
                self._apply(batch, event, meta)
            self._store.write(batch)
        for draft in drafts_by_id.values():
            if draft.trigger_accepted_at is not None:
                ALERT_LATENCY.labels(city=self._settings.city, domain=draft.domain.value).observe(
                    max(0.0, (now - draft.trigger_accepted_at).total_seconds())
                )
        for alert in alerts.values():
            log.info(
                "alert_raised",
                alert_id=alert.alert_id,
                rule_id=alert.rule_id,
                subject_key=alert.subject_key,
                targets=list(alert.target_cities),
                severity=alert.severity.value,
            )
        return list(alerts.values())

    def _raised_change(self, alert: Alert) -> StatusChange:
        return StatusChange(
            change_id=derived_change_id(alert.alert_id, "raised"),
            alert_id=alert.alert_id,
            status=Status.RAISED,
            by_city=self.city_code,
            at=alert.raised_at,
        )

    async def escalate_due(self, now: datetime | None = None) -> list[Alert]:
        """Escalate every alert this node raised whose acknowledgement deadline passed."""
        moment = now or now_ms()
        escalated: list[Alert] = []
        async with self._lock:
            due: list[str] = []
            for key, _ in self._store.scan("due/"):  # ordered by deadline
                if int(key.split("/")[1]) > to_ms(moment):
                    break
                due.append(key)
            events: list[tuple[Alert | StatusChange, str]] = []
            stale: list[str] = []
            for key in due:
                held = self.held(key.split("/", 2)[2])
                if (
                    held is None
                    or held.status.acknowledged
                    or held.alert.escalation_level >= self.sla.max_level
                    or due_key(to_ms(held.alert.ack_deadline), held.alert.alert_id) != key
                ):
                    stale.append(key)
                    continue
                alert = held.alert.escalated(
                    ack_deadline=moment + self.sla.ack[held.alert.severity]
                )
                change = StatusChange(
                    change_id=derived_change_id(
                        alert.alert_id, f"escalated/{alert.escalation_level}"
                    ),
                    alert_id=alert.alert_id,
                    status=Status.ESCALATED,
                    previous_status=held.status,
                    by_city=self.city_code,
                    escalation_level=alert.escalation_level,
                    at=moment,
                )
                events += [(alert, ALERT_ESCALATED_TYPE), (change, STATUS_CHANGED_TYPE)]
                escalated.append(alert)
            metas = await self._produce(events) if events else []
            batch = self._store.batch()
            for key in stale:
                batch.delete(key)
            for (event, _), meta in zip(events, metas, strict=True):
                self._apply(batch, event, meta)
            self._store.write(batch)
        for alert in escalated:
            log.warning(
                "alert_escalated",
                alert_id=alert.alert_id,
                escalation_level=alert.escalation_level,
                ack_deadline=alert.ack_deadline.isoformat(),
            )
        return escalated

    async def update_status(
        self,
        *,
        alert_id: str,
        status: Status,
        by_city: str,
        change_id: str,
        regulator: str | None = None,
        note: str | None = None,
        expected: Status | None = None,
    ) -> StatusChange:
        """A regulator's change of an alert this node raised (UpdateAlertStatus at the origin).

        Raises :class:`AlertNotFound` or :class:`StatusConflict`. Repeating a ``change_id``
        returns the recorded change without changing anything.
        """
        async with self._lock:
            known = self.change(change_id)
            if known is not None:
                return known
            held = self.held(alert_id)
            if held is None:
                raise AlertNotFound(alert_id)
            if expected is not None and expected is not held.status:
                raise StatusConflict(f"status is {held.status}, not the expected {expected}")
            problem = transition_problem(held.status, status)
            if problem is not None:
                raise StatusConflict(problem)
            change = StatusChange(
                change_id=change_id,
                alert_id=alert_id,
                status=status,
                previous_status=held.status,
                by_city=by_city,
                by_regulator=regulator,
                note=note,
                escalation_level=held.alert.escalation_level,
                at=now_ms(),
            )
            (meta,) = await self._produce([(change, STATUS_CHANGED_TYPE)])
            batch = self._store.batch()
            self._apply(batch, change, meta)
            self._store.write(batch)
        log.info(
            "alert_status_changed",
            alert_id=alert_id,
            status=status.value,
            by_city=by_city,
            change_id=change_id,
        )
        return change

    # --- target: receive, record the origin's answer -------------------------------------

    async def receive(self, alert: Alert) -> bool:
        """An alert delivered by its origin; False when already held at this level."""
        return (await self.receive_many([alert]))[0]

    async def receive_many(self, alerts: Sequence[Alert]) -> list[bool]:
        """Alerts delivered by their origin, republished here in one round trip; for each,
        False when it was already held at that escalation level (a redelivery)."""
        async with self._lock:
            fresh: dict[tuple[str, int], Alert] = {}
            answers: list[bool] = []
            for alert in alerts:
                held = self.held(alert.alert_id)
                known = (alert.alert_id, alert.escalation_level) in fresh or (
                    held is not None and held.alert.escalation_level >= alert.escalation_level
                )
                answers.append(not known)
                if not known:
                    fresh[(alert.alert_id, alert.escalation_level)] = alert
            if fresh:
                events: list[tuple[Alert | StatusChange, str]] = [
                    (a, ALERT_ESCALATED_TYPE if a.escalation_level else ALERT_RECEIVED_TYPE)
                    for a in fresh.values()
                ]
                metas = await self._produce(events)
                batch = self._store.batch()
                for (event, _), meta in zip(events, metas, strict=True):
                    self._apply(batch, event, meta)
                self._store.write(batch)
        for alert in fresh.values():
            log.info(
                "alert_received",
                alert_id=alert.alert_id,
                origin_city=alert.origin_city,
                escalation_level=alert.escalation_level,
                subject_key=alert.subject_key,
            )
        return answers

    async def record_change(self, change: StatusChange) -> None:
        """A change the origin accepted for one of our regulators: publish it here too."""
        async with self._lock:
            if self.change(change.change_id) is not None:
                return
            (meta,) = await self._produce([(change, STATUS_CHANGED_TYPE)])
            batch = self._store.batch()
            self._apply(batch, change, meta)
            self._store.write(batch)

    # --- producing and applying ----------------------------------------------------------

    async def _produce(
        self, events: Sequence[tuple[Alert | StatusChange, str]]
    ) -> list[RecordMetadata]:
        futures = []
        for event, event_type in events:
            if isinstance(event, Alert):
                topic, schema, key, event_id = (
                    event.topic,
                    ALERT_SCHEMA,
                    event.alert_id,
                    event.event_id,
                )
            else:
                topic, schema, key, event_id = (
                    STATUS_TOPIC,
                    STATUS_SCHEMA,
                    event.alert_id,
                    event.change_id,
                )
            value, headers = self._publisher.encode(
                schema, event.to_avro(), key=key, event_type=event_type, event_id=event_id
            )
            futures.append(
                await self._producer.send(
                    self._settings.topic(topic), value=value, key=key.encode(), headers=headers
                )
            )
        return list(await asyncio.gather(*futures))

    def _apply(
        self, batch: Batch, event: Alert | StatusChange, meta: RecordMetadata | None
    ) -> None:
        if meta is not None:
            batch.set_offset(meta.topic, meta.partition, meta.offset + 1)
        if isinstance(event, Alert):
            self._apply_alert(batch, event)
        else:
            self._apply_change(batch, event)

    def _apply_alert(self, batch: Batch, alert: Alert) -> None:
        previous = batch.get(alert_key(alert.alert_id))
        held = HeldAlert.from_json(previous) if previous is not None else None
        if held is not None and held.alert.escalation_level >= alert.escalation_level:
            return
        if held is not None and held.status.acknowledged:
            status = held.status
        else:
            status = Status.ESCALATED if alert.escalation_level else Status.RAISED
        batch.put(alert_key(alert.alert_id), {"alert": alert.to_json(), "status": status.value})
        seq = batch.append_feed(
            {
                "kind": "alert",
                "alert": alert.to_json(),
                "domain": alert.domain.value,
                "severity": alert.severity.value,
            }
        )
        if self.city_code in alert.target_cities:
            for hook in self._webhooks:
                if hook.wants("alert", alert.domain, alert.severity):
                    batch.put(
                        f"hook/{hook.id}/{alert.event_id}",
                        {"seq": seq, "attempts": 0, "next_at": 0, "first_at": None},
                    )
        if alert.origin_city != self.city_code:
            return
        if held is not None:
            batch.delete(due_key(to_ms(held.alert.ack_deadline), alert.alert_id))
        if not status.acknowledged and alert.escalation_level < self.sla.max_level:
            batch.put(due_key(to_ms(alert.ack_deadline), alert.alert_id), 1)
        for city in alert.target_cities:
            if city != self.city_code:
                batch.put(
                    f"out/{city}/{alert.alert_id}",
                    {"level": alert.escalation_level, "attempts": 0, "next_at": 0},
                )

    def _apply_change(self, batch: Batch, change: StatusChange) -> None:
        if batch.get(change_key(change.change_id)) is not None:
            return
        batch.put(change_key(change.change_id), change.to_json())
        stored = batch.get(alert_key(change.alert_id))
        if stored is None:
            return  # a change for an alert we do not hold: kept for idempotency only
        held = HeldAlert.from_json(stored)
        if change.status is Status.RAISED:
            return  # implied by the alert itself; on the topic for its history
        # Statuses only move forward; an escalation after an acknowledgement changes nothing.
        new_status: Status = change.status
        if change.status is Status.ESCALATED:
            if held.status.acknowledged:
                new_status = held.status
        elif change.status.rank <= held.status.rank:
            new_status = held.status
        batch.put(
            alert_key(change.alert_id), {"alert": stored["alert"], "status": new_status.value}
        )
        if new_status.acknowledged and held.alert.origin_city == self.city_code:
            batch.delete(due_key(to_ms(held.alert.ack_deadline), held.alert.alert_id))
        seq = batch.append_feed(
            {
                "kind": "status",
                "change": change.to_json(),
                "domain": held.alert.domain.value,
                "severity": held.alert.severity.value,
            }
        )
        if self.city_code in held.alert.target_cities:
            for hook in self._webhooks:
                if hook.wants("status", held.alert.domain, held.alert.severity):
                    batch.put(
                        f"hook/{hook.id}/chg~{change.change_id}",
                        {"seq": seq, "attempts": 0, "next_at": 0, "first_at": None},
                    )

    # --- recovery ---------------------------------------------------------------------------

    async def recover(self) -> int:
        """Apply what the output topics hold beyond the stored offsets (a crash between
        producing and applying); returns the number of events applied."""
        consumer = make_consumer(
            self._settings, group_id=None, client_id=f"{self._settings.city}-alerts-recovery"
        )
        applied = 0
        try:
            await consumer.start()
            partitions = await topic_partitions(
                self._settings.kafka_bootstrap, [self._settings.topic(t) for t in OUTPUT_TOPICS]
            )
            consumer.assign(partitions)
            ends = await consumer.end_offsets(partitions)
            beginnings = await consumer.beginning_offsets(partitions)
            status_topic = self._settings.topic(STATUS_TOPIC)
            pending = {}
            for tp in partitions:
                stored = self._store.offset(tp.topic, tp.partition)
                start = beginnings[tp] if stored is None else max(stored, beginnings[tp])
                consumer.seek(tp, start)
                if start < ends[tp]:
                    pending[tp] = ends[tp]
            while pending:
                batch_messages = await consumer.getmany(*pending, timeout_ms=1000)
                if not batch_messages:
                    for tp in list(pending):
                        if await consumer.position(tp) >= pending[tp]:
                            del pending[tp]
                    continue
                async with self._lock:
                    batch = self._store.batch()
                    for tp, messages in batch_messages.items():
                        for message in messages:
                            batch.set_offset(tp.topic, tp.partition, message.offset + 1)
                            if message.value is None:
                                continue
                            event: Alert | StatusChange
                            try:
                                if tp.topic == status_topic:
                                    event = StatusChange.from_avro(
                                        self._serde.decode(message.value, reader=STATUS_SCHEMA)
                                    )
                                else:
                                    event = Alert.from_avro(
                                        self._serde.decode(message.value, reader=ALERT_SCHEMA)
                                    )
                            except (SerdeError, KeyError, ValueError) as exc:
                                log.error(
                                    "undecodable_output_event",
                                    topic=tp.topic,
                                    partition=tp.partition,
                                    offset=message.offset,
                                    error=str(exc),
                                )
                                continue
                            self._apply(batch, event, None)
                            applied += 1
                        if messages and messages[-1].offset + 1 >= pending.get(tp, 0):
                            pending.pop(tp, None)
                    self._store.write(batch)
        finally:
            await consumer.stop()
        if applied:
            log.warning("alerts_recovered_from_topics", events=applied)
        return applied
