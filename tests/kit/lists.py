"""Test doubles and record builders for the lists service (used by tests and the benchmark).

Example::

    changelog = MemoryChangelog()
    book = ListBook(store, changelog, RefusalRecorder(), changelog, own_city="320500",
                    changelog_topic="credit.list-changes.v1")
    await book.apply_records([incoming(designation("L:91320500MA1W8XY409"))])
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from services.common.avro import load_example
from services.lists.book import ChangelogItem, IncomingRecord
from services.lists.decisions import Refused
from services.lists.model import ListChange, ListEntry

SUZHOU, WUXI, CHANGZHOU = "320500", "320200", "320400"
DEPARTMENTS = {
    SUZHOU: ("11320500014160400L", "苏州市市场监督管理局"),
    WUXI: ("11320200014137711C", "无锡市市场监督管理局"),
    CHANGZHOU: ("113204000141785430", "常州市市场监督管理局"),
}


def organisation_key(n: int) -> str:
    """A distinct, well-formed organisation subject key per ``n`` (shape only)."""
    return f"L:91320500MA{n:07d}X"[:20]


def person_key(n: int) -> str:
    return "N:" + hashlib.sha256(f"person-{n}".encode()).hexdigest()


def _record_id(city: str, department: str, decision_number: str) -> str:
    digest = hashlib.sha256(f"{department}|LIST_DECISION|{decision_number}".encode()).hexdigest()
    return f"{city}-{digest[:32]}"


def list_decision(
    subject_key: str,
    *,
    action: str = "DESIGNATE",
    list_type: str = "BLACK",
    city: str = SUZHOU,
    decision_number: str = "苏市监信〔2024〕8号",
    designation: str | None = None,
    removal_reason: str | None = None,
    objection_upheld: bool | None = None,
    version: int = 1,
    effective_from: date = date(2024, 6, 3),
    expires_at: date | None = date(2027, 6, 2),
    earliest_repair: date | None = None,
    list_name: str | None = None,
    department: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """A CreditRecord of category LIST_DECISION as intake publishes it."""
    record = load_example("CreditRecord")
    dept_code, dept_name = department or DEPARTMENTS[city]
    person = subject_key.startswith("N:")
    record.update(
        record_id=_record_id(city, dept_code, decision_number),
        version=version,
        supersedes_version=version - 1 if version > 1 else None,
        category="LIST_DECISION",
        city_code=city,
        department_code=dept_code,
        department_name=dept_name,
        decision_number=decision_number,
        penalty=None,
        list_decision={
            "list_type": list_type,
            "list_name": list_name
            or {"BLACK": "严重失信主体名单", "RED": "A级纳税人名单", "WATCH": "重点关注名单"}[
                list_type
            ],
            "action": action,
            "removal_reason": removal_reason,
            "objection_upheld": objection_upheld,
            "designation_decision_number": designation,
            "legal_basis": "《市场监督管理严重违法失信名单管理办法》第九条",
            "effective_from": effective_from,
            "expires_at": expires_at,
        },
    )
    record["subject"] = {
        **record["subject"],
        "subject_type": "NATURAL_PERSON" if person else "ORGANISATION",
        "subject_key": subject_key,
        "name": "张三" if person else f"测试企业{subject_key[-6:]}有限公司",
        "uscc": None if person else subject_key[2:],
        "legal_representative": None,
        "legal_representative_key": None,
    }
    record["publicity"] = {
        **record["publicity"],
        "earliest_repair_date": earliest_repair,
        "takedown_date": expires_at,
        "severity": None,
    }
    return record


def incoming(record: Mapping[str, Any], *, offset: int = 0, partition: int = 0) -> IncomingRecord:
    return IncomingRecord(
        record=record,
        topic="credit.records.v1",
        partition=partition,
        offset=offset,
        event_id=f"{record.get('record_id')}.v{record.get('version')}",
    )


@dataclass
class MemoryChangelog:
    """A ChangeSink and ChangelogSource in memory: the node's two topics as lists.

    ``fail_after`` makes ``publish`` raise after that many changes (a half-published step).
    """

    changes: list[ListChange] = field(default_factory=list)
    states: dict[str, ListEntry | None] = field(default_factory=dict)
    fail_after: int | None = None

    async def publish(
        self, changes: Sequence[ListChange], *, without_state: frozenset[str] = frozenset()
    ) -> Mapping[int, int]:
        for change in changes:
            if self.fail_after is not None and self.fail_after <= 0:
                raise ConnectionError("broker went away")
            if self.fail_after is not None:
                self.fail_after -= 1
            self.changes.append(change)
            if change.change_id not in without_state:
                entry = change.entry
                self.states[entry.entry_key] = None if entry.removed else entry
        return {0: len(self.changes)} if changes else {}

    async def publish_states(self, entries: Sequence[ListEntry], deleted: Sequence[str]) -> None:
        for entry in entries:
            self.states[entry.entry_key] = None if entry.removed else entry
        for key in deleted:
            self.states[key] = None

    async def read_changes(self, from_offsets: Mapping[int, int]) -> AsyncIterator[ChangelogItem]:
        for offset in range(from_offsets.get(0, 0), len(self.changes)):
            yield ChangelogItem(0, offset, self.changes[offset])

    async def read_states(self) -> AsyncIterator[ListEntry]:
        for entry in list(self.states.values()):
            if entry is not None:
                yield entry


@dataclass
class RefusalRecorder:
    records: list[tuple[IncomingRecord, Refused]] = field(default_factory=list)
    peers: list[tuple[str, str, ListEntry, Refused]] = field(default_factory=list)

    async def record_refused(self, incoming: IncomingRecord, refusal: Refused) -> None:
        self.records.append((incoming, refusal))

    async def peer_refused(
        self, peer_code: str, what: str, entry: ListEntry, refusal: Refused
    ) -> None:
        self.peers.append((peer_code, what, entry, refusal))


class Clock:
    """A settable clock for the book (``clock=Clock(...)``)."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2024, 7, 1, 2, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)
