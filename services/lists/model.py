"""List entries and list changes as the lists service holds them.

One :class:`ListEntry` is the current state of one red, black or watch list entry; one
:class:`ListChange` is one numbered change the issuing city made to one of its entries. Both
convert to and from the Avro records of ``schemas/avro/ListEntry`` and ``ListChange`` (the
same dicts :class:`~services.common.avro.AvroSerde` reads and writes), so what is stored,
published and served is one shape.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any, Final

from services.common.clock import CHINA_STANDARD_TIME, china_today

ENTRY_SCHEMA: Final = "creditlink.v1.ListEntry"
CHANGE_SCHEMA: Final = "creditlink.v1.ListChange"
RECORD_SCHEMA: Final = "creditlink.v1.CreditRecord"


#: Entry attribute naming the version of the source record that made the entry's version,
#: so a node rebuilt from the changelog knows which record versions it already applied.
SOURCE_RECORD_VERSION: Final = "source_record_version"
#: Entry attribute: first day credit repair may take the entry down (the designation's
#: ``publicity.earliest_repair_date``), so an early repair is refused.
EARLIEST_REPAIR_DATE: Final = "earliest_repair_date"


class ListType(StrEnum):
    RED = "RED"
    BLACK = "BLACK"
    WATCH = "WATCH"


class EntryStatus(StrEnum):
    ACTIVE = "ACTIVE"
    OBJECTION_PENDING = "OBJECTION_PENDING"
    REMOVED = "REMOVED"


class RemovalReason(StrEnum):
    EXPIRED = "EXPIRED"
    REPAIRED = "REPAIRED"
    OBJECTION_UPHELD = "OBJECTION_UPHELD"
    REVOKED = "REVOKED"


class ChangeAction(StrEnum):
    DESIGNATED = "DESIGNATED"
    CORRECTED = "CORRECTED"
    OBJECTION_FILED = "OBJECTION_FILED"
    OBJECTION_DISMISSED = "OBJECTION_DISMISSED"
    REMOVED = "REMOVED"


class SubjectType(StrEnum):
    ORGANISATION = "ORGANISATION"
    NATURAL_PERSON = "NATURAL_PERSON"


class ChinaDay:
    """:func:`china_today` for a reader that asks on every call: the day last worked out is
    kept with the instants it starts and ends at, and worked out again only outside them
    (a test clock may also go back)."""

    __slots__ = ("_day", "_ends", "_starts")

    def __init__(self) -> None:
        self._day = date.min
        self._starts = self._ends = datetime.min.replace(tzinfo=UTC)

    def of(self, now: datetime) -> date:
        if now.tzinfo is None:  # local time, as china_today() takes it
            return china_today(now)
        if self._starts <= now < self._ends:
            return self._day
        day = china_today(now)
        starts = datetime.combine(day, time(), CHINA_STANDARD_TIME)
        self._day, self._starts = day, starts
        self._ends = datetime.combine(day + timedelta(days=1), time(), CHINA_STANDARD_TIME)
        return day


def entry_key_for(
    issuing_city: str,
    list_type: ListType | str,
    subject_key: str,
    department_code: str,
    decision_reference: str,
) -> str:
    """``<issuing_city>/<list_type>/<subject_key>/<digest>`` (schemas/topics.yaml
    ``list_entry_key``): digest is the first 16 hex characters of SHA-256 over
    ``<issuing_department_code>|<decision_reference>``."""
    digest = hashlib.sha256(f"{department_code}|{decision_reference}".encode()).hexdigest()
    return f"{issuing_city}/{list_type}/{subject_key}/{digest[:16]}"


def issuer_of_key(entry_key: str) -> str:
    """The issuing city code an entry key starts with."""
    return entry_key.split("/", 1)[0]


@dataclass(frozen=True, slots=True)
class ListEntry:
    """The current state of one list entry (schemas/avro/ListEntry/v1.avsc)."""

    entry_key: str
    list_type: ListType
    list_name: str
    issuing_city: str
    issuing_department_code: str
    issuing_department_name: str
    subject_key: str
    subject_type: SubjectType
    subject_name: str | None
    legal_basis: str
    decision_reference: str
    effective_from: date
    expires_at: date | None
    status: EntryStatus
    removal_reason: RemovalReason | None
    version: int
    updated_at: datetime
    source_record_id: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)

    @property
    def removed(self) -> bool:
        return self.status is EntryStatus.REMOVED

    @property
    def objection_pending(self) -> bool:
        return self.status is EntryStatus.OBJECTION_PENDING

    def evolve(self, **changes: Any) -> ListEntry:
        return replace(self, **changes)

    def to_avro(self) -> dict[str, Any]:
        return {
            "entry_key": self.entry_key,
            "list_type": self.list_type.value,
            "list_name": self.list_name,
            "issuing_city": self.issuing_city,
            "issuing_department_code": self.issuing_department_code,
            "issuing_department_name": self.issuing_department_name,
            "subject_key": self.subject_key,
            "subject_type": self.subject_type.value,
            "subject_name": self.subject_name,
            "legal_basis": self.legal_basis,
            "decision_reference": self.decision_reference,
            "effective_from": self.effective_from,
            "expires_at": self.expires_at,
            "status": self.status.value,
            "removal_reason": self.removal_reason.value if self.removal_reason else None,
            "version": self.version,
            "updated_at": self.updated_at,
            "source_record_id": self.source_record_id,
            "attributes": dict(self.attributes),
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> ListEntry:
        reason = record.get("removal_reason")
        return cls(
            entry_key=str(record["entry_key"]),
            list_type=ListType(record["list_type"]),
            list_name=str(record["list_name"]),
            issuing_city=str(record["issuing_city"]),
            issuing_department_code=str(record["issuing_department_code"]),
            issuing_department_name=str(record["issuing_department_name"]),
            subject_key=str(record["subject_key"]),
            subject_type=SubjectType(record["subject_type"]),
            subject_name=record.get("subject_name"),
            legal_basis=str(record["legal_basis"]),
            decision_reference=str(record["decision_reference"]),
            effective_from=record["effective_from"],
            expires_at=record.get("expires_at"),
            status=EntryStatus(record["status"]),
            # A reader older than the writer sees a newer reason as UNKNOWN: still removed.
            removal_reason=(
                RemovalReason(str(reason)) if reason in RemovalReason.__members__ else None
            ),
            version=int(record["version"]),
            updated_at=record["updated_at"],
            source_record_id=record.get("source_record_id"),
            attributes=dict(record.get("attributes") or {}),
        )


@dataclass(frozen=True, slots=True)
class ListChange:
    """One change the issuing city made (schemas/avro/ListChange/v1.avsc)."""

    issuing_city: str
    sequence: int
    action: ChangeAction
    entry: ListEntry
    changed_at: datetime

    @property
    def change_id(self) -> str:
        """``<issuing_city>:<sequence>``, unique in the region; handlers are idempotent on it."""
        return f"{self.issuing_city}:{self.sequence}"

    def to_avro(self) -> dict[str, Any]:
        return {
            "change_id": self.change_id,
            "issuing_city": self.issuing_city,
            "sequence": self.sequence,
            "action": self.action.value,
            "entry": self.entry.to_avro(),
            "changed_at": self.changed_at,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> ListChange:
        action = str(record["action"])
        if action not in ChangeAction.__members__:
            raise ValueError(f"list change {record.get('change_id')!r} has action {action!r}")
        return cls(
            issuing_city=str(record["issuing_city"]),
            sequence=int(record["sequence"]),
            action=ChangeAction(action),
            entry=ListEntry.from_avro(record["entry"]),
            changed_at=record["changed_at"],
        )
