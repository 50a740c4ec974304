"""Supervision alerts and their status changes as typed values, with their three encodings.

An :class:`Alert` mirrors the Avro ``SupervisionAlert`` event and the proto ``Alert`` field for
field (docs/design.md §3.2: "every message mirrors the Avro event of the same name"); a
:class:`StatusChange` mirrors ``AlertStatusChange``. Each converts to and from the Avro dict
(Kafka), the protobuf message (peer calls) and a JSON-safe dict (the local store).

Instants are timezone-aware UTC datetimes truncated to milliseconds, the precision of Avro
``timestamp-millis``, so a value survives every round trip unchanged.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from google.protobuf.timestamp_pb2 import Timestamp

from creditlink.peer.v1 import alert_exchange_pb2, common_pb2
from services.common.topic_names import STATUS_TOPIC as STATUS_TOPIC

ALERT_SCHEMA: Final = "creditlink.v1.SupervisionAlert"
STATUS_SCHEMA: Final = "creditlink.v1.AlertStatusChange"
ALERT_RAISED_TYPE: Final = "cn.creditlink.supervision.alert.raised.v1"
ALERT_ESCALATED_TYPE: Final = "cn.creditlink.supervision.alert.escalated.v1"
ALERT_RECEIVED_TYPE: Final = "cn.creditlink.supervision.alert.received.v1"
STATUS_CHANGED_TYPE: Final = "cn.creditlink.supervision.alert-status.changed.v1"
# Alert ids are '<origin_city>-' + a UUID; rule-raised ones are UUID 5 under this namespace so
# that the same evidence gives the same id on every replay (topics.yaml key `alert_id`).
ALERT_ID_NAMESPACE: Final = uuid.UUID("6b0f3d0e-2f7a-5c55-9d59-8f3c1d0a4e21")


class Domain(StrEnum):
    """Supervision domain (CreditRecord ``SupervisionDomain``)."""

    MEDICAL = "MEDICAL"
    FOOD_DRUG = "FOOD_DRUG"
    URBAN_MANAGEMENT = "URBAN_MANAGEMENT"
    CONSTRUCTION = "CONSTRUCTION"
    ENVIRONMENT = "ENVIRONMENT"
    LABOUR = "LABOUR"
    MARKET = "MARKET"
    TAX = "TAX"
    OTHER = "OTHER"

    @property
    def topic(self) -> str:
        """``supervision.alerts.<domain>.v1``: the six linked domains have their own topic,
        the rest share ``general`` (schemas/topics.yaml)."""
        return f"supervision.alerts.{_DOMAIN_TOPICS.get(self, 'general')}.v1"

    @property
    def proto(self) -> int:
        return int(common_pb2.SupervisionDomain.Value(f"SUPERVISION_DOMAIN_{self.value}"))

    @classmethod
    def from_proto(cls, value: int) -> Domain:
        name = common_pb2.SupervisionDomain.Name(value)  # type: ignore[arg-type]
        return cls(name.removeprefix("SUPERVISION_DOMAIN_"))


_DOMAIN_TOPICS: Final = {
    Domain.MEDICAL: "medical",
    Domain.FOOD_DRUG: "food-drug",
    Domain.URBAN_MANAGEMENT: "urban-management",
    Domain.CONSTRUCTION: "construction",
    Domain.ENVIRONMENT: "environment",
    Domain.LABOUR: "labour",
}
#: The cross-region linked-supervision domains (docs/design.md §4.7).
LINKED_DOMAINS: Final = frozenset(_DOMAIN_TOPICS)
ALERT_TOPICS: Final = tuple(sorted({d.topic for d in Domain}))


class Severity(StrEnum):
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]

    @property
    def proto(self) -> int:
        return int(alert_exchange_pb2.AlertSeverity.Value(f"ALERT_SEVERITY_{self.value}"))

    @classmethod
    def from_proto(cls, value: int) -> Severity:
        name = alert_exchange_pb2.AlertSeverity.Name(value)  # type: ignore[arg-type]
        return cls(name.removeprefix("ALERT_SEVERITY_"))


_SEVERITY_RANK: Final = {
    Severity.LOW: 1,
    Severity.MEDIUM: 2,
    Severity.HIGH: 3,
    Severity.CRITICAL: 4,
}


class Status(StrEnum):
    RAISED = "RAISED"
    ACKNOWLEDGED = "ACKNOWLEDGED"
    IN_PROGRESS = "IN_PROGRESS"
    RESOLVED = "RESOLVED"
    ESCALATED = "ESCALATED"

    @property
    def rank(self) -> int:
        """Position in the handling order; ESCALATED is still unacknowledged (proto
        ``AlertStatus``: "ESCALATED may be set by the origin at any point before RESOLVED")."""
        return _STATUS_RANK[self]

    @property
    def acknowledged(self) -> bool:
        return self.rank >= _STATUS_RANK[Status.ACKNOWLEDGED]

    @property
    def proto(self) -> int:
        return int(alert_exchange_pb2.AlertStatus.Value(f"ALERT_STATUS_{self.value}"))

    @classmethod
    def from_proto(cls, value: int) -> Status:
        name = alert_exchange_pb2.AlertStatus.Name(value)  # type: ignore[arg-type]
        return cls(name.removeprefix("ALERT_STATUS_"))


_STATUS_RANK: Final = {
    Status.RAISED: 1,
    Status.ESCALATED: 1,
    Status.ACKNOWLEDGED: 2,
    Status.IN_PROGRESS: 3,
    Status.RESOLVED: 4,
}
#: What a regulator may set through UpdateAlertStatus.
REGULATOR_STATUSES: Final = frozenset({Status.ACKNOWLEDGED, Status.IN_PROGRESS, Status.RESOLVED})


def transition_problem(current: Status, new: Status) -> str | None:
    """Why ``current`` → ``new`` breaks the status order, or None when it is allowed.

    Handling only moves forward (skipping steps is allowed: a case closed on the spot goes
    RAISED → RESOLVED); ESCALATED is the origin's, allowed only while unacknowledged.
    """
    if new is Status.ESCALATED:
        return None if not current.acknowledged else f"{current} alerts are not escalated"
    if new.rank <= current.rank:
        return f"status is {current}; {new} does not move it forward"
    return None


def now_ms() -> datetime:
    """Now in UTC, truncated to whole milliseconds."""
    return truncate_ms(datetime.now(UTC))


def truncate_ms(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("instants must be timezone-aware")
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def to_ms(moment: datetime) -> int:
    return int(truncate_ms(moment).timestamp() * 1000)


def from_ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC)


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromMilliseconds(to_ms(moment))
    return stamp


def _from_timestamp(stamp: Timestamp) -> datetime:
    return from_ms(stamp.ToMilliseconds())


def rule_alert_id(origin_city: str, rule_id: str, dedupe_key: str) -> str:
    """The id of the alert a rule raises for ``dedupe_key``: the same on every replay."""
    return f"{origin_city}-{uuid.uuid5(ALERT_ID_NAMESPACE, f'{rule_id}|{dedupe_key}')}"


@dataclass(frozen=True, slots=True)
class Alert:
    """One supervision alert (``SupervisionAlert``)."""

    alert_id: str
    rule_id: str
    domain: Domain
    severity: Severity
    origin_city: str
    target_cities: tuple[str, ...]
    subject_key: str
    subject_name: str | None
    explanation: str
    evidence_record_ids: tuple[str, ...]
    raised_at: datetime
    ack_deadline: datetime
    resolve_deadline: datetime | None = None
    escalation_level: int = 0
    evidence_list_entry_keys: tuple[str, ...] = ()
    attributes: Mapping[str, str] = field(default_factory=dict)

    @property
    def topic(self) -> str:
        return self.domain.topic

    @property
    def event_id(self) -> str:
        """``ce_id`` of this alert at this escalation level: a replay gives the same id, so
        consumers idempotent on ``ce_id`` see each raise and each escalation once."""
        return f"{self.alert_id}/{self.escalation_level}"

    def escalated(self, *, ack_deadline: datetime) -> Alert:
        return replace(self, escalation_level=self.escalation_level + 1, ack_deadline=ack_deadline)

    # --- Avro ----------------------------------------------------------------------------

    def to_avro(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "rule_id": self.rule_id,
            "domain": self.domain.value,
            "severity": self.severity.value,
            "origin_city": self.origin_city,
            "target_cities": list(self.target_cities),
            "subject_key": self.subject_key,
            "subject_name": self.subject_name,
            "explanation": self.explanation,
            "evidence_record_ids": list(self.evidence_record_ids),
            "evidence_list_entry_keys": list(self.evidence_list_entry_keys),
            "raised_at": self.raised_at,
            "ack_deadline": self.ack_deadline,
            "resolve_deadline": self.resolve_deadline,
            "escalation_level": self.escalation_level,
            "attributes": dict(self.attributes),
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Alert:
        resolve = record.get("resolve_deadline")
        return cls(
            alert_id=str(record["alert_id"]),
            rule_id=str(record["rule_id"]),
            domain=Domain(record["domain"]),
            severity=Severity(record["severity"]),
            origin_city=str(record["origin_city"]),
            target_cities=tuple(record["target_cities"]),
            subject_key=str(record["subject_key"]),
            subject_name=record.get("subject_name"),
            explanation=str(record["explanation"]),
            evidence_record_ids=tuple(record["evidence_record_ids"]),
            evidence_list_entry_keys=tuple(record.get("evidence_list_entry_keys") or ()),
            raised_at=truncate_ms(record["raised_at"]),
            ack_deadline=truncate_ms(record["ack_deadline"]),
            resolve_deadline=truncate_ms(resolve) if resolve is not None else None,
            escalation_level=int(record.get("escalation_level", 0)),
            attributes=dict(record.get("attributes") or {}),
        )

    # --- protobuf ------------------------------------------------------------------------

    def to_proto(self) -> alert_exchange_pb2.Alert:
        message = alert_exchange_pb2.Alert(
            alert_id=self.alert_id,
            rule_id=self.rule_id,
            domain=self.domain.proto,  # type: ignore[arg-type]
            severity=self.severity.proto,  # type: ignore[arg-type]
            origin_city=self.origin_city,
            target_cities=list(self.target_cities),
            subject_key=self.subject_key,
            subject_name=self.subject_name or "",
            explanation=self.explanation,
            evidence_record_ids=list(self.evidence_record_ids),
            evidence_list_entry_keys=list(self.evidence_list_entry_keys),
            raised_at=_timestamp(self.raised_at),
            ack_deadline=_timestamp(self.ack_deadline),
            escalation_level=self.escalation_level,
            attributes=dict(self.attributes),
        )
        if self.resolve_deadline is not None:
            message.resolve_deadline.CopyFrom(_timestamp(self.resolve_deadline))
        return message

    @classmethod
    def from_proto(cls, message: alert_exchange_pb2.Alert) -> Alert:
        """Raises ``ValueError`` for an unset domain or severity."""
        if not message.domain:
            raise ValueError("domain is required")
        if not message.severity:
            raise ValueError("severity is required")
        return cls(
            alert_id=message.alert_id,
            rule_id=message.rule_id,
            domain=Domain.from_proto(message.domain),
            severity=Severity.from_proto(message.severity),
            origin_city=message.origin_city,
            target_cities=tuple(message.target_cities),
            subject_key=message.subject_key,
            subject_name=message.subject_name or None,
            explanation=message.explanation,
            evidence_record_ids=tuple(message.evidence_record_ids),
            evidence_list_entry_keys=tuple(message.evidence_list_entry_keys),
            raised_at=_from_timestamp(message.raised_at),
            ack_deadline=_from_timestamp(message.ack_deadline),
            resolve_deadline=(
                _from_timestamp(message.resolve_deadline)
                if message.HasField("resolve_deadline")
                else None
            ),
            escalation_level=message.escalation_level,
            attributes=dict(message.attributes),
        )

    # --- JSON (store, webhooks) ----------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        data = self.to_avro()
        for name in ("raised_at", "ack_deadline", "resolve_deadline"):
            if data[name] is not None:
                data[name] = to_ms(data[name])
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Alert:
        converted = dict(data)
        for name in ("raised_at", "ack_deadline", "resolve_deadline"):
            if converted.get(name) is not None:
                converted[name] = from_ms(int(converted[name]))
        return cls.from_avro(converted)

    def to_public_json(self) -> dict[str, Any]:
        """For webhooks: instants as RFC 3339 text."""
        data = self.to_avro()
        for name in ("raised_at", "ack_deadline", "resolve_deadline"):
            if data[name] is not None:
                data[name] = rfc3339(data[name])
        return data


@dataclass(frozen=True, slots=True)
class StatusChange:
    """One change of an alert's handling state (``AlertStatusChange``)."""

    change_id: str
    alert_id: str
    status: Status
    by_city: str
    at: datetime
    previous_status: Status | None = None
    by_regulator: str | None = None
    note: str | None = None
    escalation_level: int = 0

    def to_avro(self) -> dict[str, Any]:
        return {
            "change_id": self.change_id,
            "alert_id": self.alert_id,
            "status": self.status.value,
            "previous_status": self.previous_status.value if self.previous_status else None,
            "by_city": self.by_city,
            "by_regulator": self.by_regulator,
            "note": self.note,
            "escalation_level": self.escalation_level,
            "at": self.at,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> StatusChange:
        previous = record.get("previous_status")
        return cls(
            change_id=str(record["change_id"]),
            alert_id=str(record["alert_id"]),
            status=Status(record["status"]),
            previous_status=Status(previous) if previous else None,
            by_city=str(record["by_city"]),
            by_regulator=record.get("by_regulator"),
            note=record.get("note"),
            escalation_level=int(record.get("escalation_level", 0)),
            at=truncate_ms(record["at"]),
        )

    def to_proto(self) -> alert_exchange_pb2.AlertStatusChange:
        return alert_exchange_pb2.AlertStatusChange(
            change_id=self.change_id,
            alert_id=self.alert_id,
            status=self.status.proto,  # type: ignore[arg-type]
            previous_status=(
                self.previous_status.proto  # type: ignore[arg-type]
                if self.previous_status
                else alert_exchange_pb2.ALERT_STATUS_UNSPECIFIED
            ),
            by_city=self.by_city,
            by_regulator=self.by_regulator or "",
            note=self.note or "",
            escalation_level=self.escalation_level,
            at=_timestamp(self.at),
        )

    @classmethod
    def from_proto(cls, message: alert_exchange_pb2.AlertStatusChange) -> StatusChange:
        return cls(
            change_id=message.change_id,
            alert_id=message.alert_id,
            status=Status.from_proto(message.status),
            previous_status=(
                Status.from_proto(message.previous_status) if message.previous_status else None
            ),
            by_city=message.by_city,
            by_regulator=message.by_regulator or None,
            note=message.note or None,
            escalation_level=message.escalation_level,
            at=_from_timestamp(message.at),
        )

    def to_json(self) -> dict[str, Any]:
        data = self.to_avro()
        data["at"] = to_ms(self.at)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StatusChange:
        return cls.from_avro({**data, "at": from_ms(int(data["at"]))})

    def to_public_json(self) -> dict[str, Any]:
        data = self.to_avro()
        data["at"] = rfc3339(self.at)
        return data


def rfc3339(moment: datetime) -> str:
    return truncate_ms(moment).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def city_codes(values: Sequence[str]) -> tuple[str, ...]:
    """Distinct codes in first-seen order."""
    return tuple(dict.fromkeys(values))


# --- configuration types (parsed by config.py, used by the rules) ---------------------------


class AlertsConfigError(ValueError):
    """A configuration file is wrong; the message names the file and the entry."""


@dataclass(frozen=True, slots=True)
class RuleConfig:
    """One rule as configured. ``domain`` None means "from the evidence" (rule-specific)."""

    id: str
    severity: Severity
    summary: str
    explanation: str
    domain: Domain | None = None
    enabled: bool = True
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SlaPolicy:
    """Deadlines per severity. An alert not acknowledged by ``raised_at + ack`` escalates,
    then again ``ack`` after each escalation, up to ``max_level``."""

    ack: Mapping[Severity, timedelta]
    resolve: Mapping[Severity, timedelta | None]
    max_level: int = 3
    check_interval: timedelta = timedelta(seconds=30)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff: ``initial``, doubled per attempt, capped at ``maximum``."""

    initial: timedelta = timedelta(seconds=1)
    maximum: timedelta = timedelta(minutes=5)

    def delay(self, attempt: int, jitter: float = 0.0) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based); ``jitter`` in [0, 1)
        spreads retries of many items by up to a quarter of the delay."""
        base = min(
            self.maximum.total_seconds(), self.initial.total_seconds() * 2.0 ** (attempt - 1)
        )
        return base * (1 + jitter / 4)


@dataclass(frozen=True, slots=True)
class RulesConfig:
    rules: tuple[RuleConfig, ...]
    sla: SlaPolicy
    delivery: RetryPolicy = field(default_factory=RetryPolicy)
    source: str = "<memory>"

    def rule(self, rule_id: str) -> RuleConfig | None:
        return next((r for r in self.rules if r.id == rule_id), None)
