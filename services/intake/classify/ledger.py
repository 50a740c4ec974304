"""What this node has already published: the in-memory view intake decides against.

Kafka is the source of truth. The ledger is a *materialised view* of three topics —
``credit.records.v1`` (record id → latest version and content hash), the rejected topic
(rejection ids) and ``quality.disclosure.v1`` (declared daily counts) — built by reading them
(:mod:`services.intake.classify.ledger_sync`) and updated locally only after a transaction that
published new events has committed. Nothing is checkpointed on local disk, so there is no
window in which a local checkpoint and the topics disagree: after a crash the view is simply
read again, and a record that made it to Kafka is known, one that did not is not.

Everything here is pure: applying an event, classifying a submission, listing a day.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import date
from enum import Enum
from typing import Any

from services.intake.encode.record_encoding import content_hash
from services.intake.validate.validation import ValidRecord
from services.intake.validate.vocabulary import DISCLOSURE_CATEGORIES

DepartmentDay = tuple[str, date]


# Not frozen: built per record (services/intake/__init__.py).
@dataclass(slots=True)
class RecordState:
    """The latest published version of one record, and what disclosure quality needs of it."""

    record_id: str
    version: int
    content_hash: str
    category: str
    department_code: str
    department_name: str
    decision_number: str
    decision_date: date
    #: Report date of version 1: timeliness is judged on the first valid report.
    first_report_date: date
    subject_key: str


@dataclass(frozen=True, slots=True)
class RejectionState:
    """One published rejection, with what could be read of the rejected submission."""

    rejection_id: str
    department_code: str
    department_name: str | None
    record_id: str | None
    category: str | None
    decision_number: str | None
    decision_date: date | None


class Disposition(Enum):
    NEW = "new"
    CORRECTION = "correction"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class Classification:
    disposition: Disposition
    version: int
    previous: RecordState | None
    #: The report date the published version carries (the first one, for a correction).
    report_date: date


@dataclass(slots=True)
class _DayEntries:
    record_ids: set[str] = field(default_factory=set)
    unidentified_rejections: set[str] = field(default_factory=set)
    #: First report date → ids of the records whose latest version is dated this day: what
    #: a figure counts as valid and on time, kept as records are applied so that a figure
    #: of thousands of records does not look at each of them again.
    accepted: dict[date, set[str]] = field(default_factory=dict)


class Ledger:
    """Record ids, versions and content hashes, rejections and declared counts, indexed by
    record id and by department-day (for the 双公示 figures)."""

    def __init__(self) -> None:
        self.records: dict[str, RecordState] = {}
        #: (record id, content hash) → version, for versions a correction superseded: a
        #: resubmission of an earlier version's content (a re-run of a file holding a record
        #: and its correction) is a duplicate of that version, not a new correction.
        self.superseded: dict[tuple[str, str], int] = {}
        self.rejections: dict[str, RejectionState] = {}
        #: record id → its latest known rejection (for listing overdue records).
        self.rejection_of_record: dict[str, RejectionState] = {}
        self.declared: dict[DepartmentDay, int] = {}
        self.department_names: dict[str, str] = {}
        self._days: dict[DepartmentDay, _DayEntries] = {}

    # --- applying published events --------------------------------------------------------

    def apply_record(self, state: RecordState) -> bool:
        """Take a published version into the view; False when an equal or newer one is known."""
        known = self.records.get(state.record_id)
        if known is not None and known.version >= state.version:
            # Versions of a record whose subject changed live on other partitions, so a
            # rebuild can meet them out of order.
            if known.version > state.version:
                self.superseded[(state.record_id, state.content_hash)] = state.version
            return False
        if known is not None:
            self.superseded[(known.record_id, known.content_hash)] = known.version
            if known.category in DISCLOSURE_CATEGORIES:
                self._unaccept(known)
        self.records[state.record_id] = state
        self.department_names[state.department_code] = state.department_name
        if state.category in DISCLOSURE_CATEGORIES:
            # _day() inlined: this runs once for every record an import publishes.
            key = (state.department_code, state.decision_date)
            entries = self._days.get(key)
            if entries is None:
                entries = self._days[key] = _DayEntries()
            entries.record_ids.add(state.record_id)
            accepted = entries.accepted.get(state.first_report_date)
            if accepted is None:
                accepted = entries.accepted[state.first_report_date] = set()
            accepted.add(state.record_id)
        return True

    def _unaccept(self, state: RecordState) -> None:
        """Take a superseded version out of its day's accepted records."""
        entries = self._days[(state.department_code, state.decision_date)]
        accepted = entries.accepted[state.first_report_date]
        accepted.discard(state.record_id)
        if not accepted:
            del entries.accepted[state.first_report_date]

    def apply_rejection(self, state: RejectionState) -> bool:
        if state.rejection_id in self.rejections:
            return False
        self.rejections[state.rejection_id] = state
        if state.record_id is not None:
            self.rejection_of_record[state.record_id] = state
        if state.department_name and state.department_code not in self.department_names:
            self.department_names[state.department_code] = state.department_name
        if state.decision_date is not None and state.category in DISCLOSURE_CATEGORIES:
            entries = self._day(state.department_code, state.decision_date)
            if state.record_id is not None:
                entries.record_ids.add(state.record_id)
            else:
                entries.unidentified_rejections.add(state.rejection_id)
        return True

    def apply_declaration(self, department_code: str, day: date, expected: int | None) -> None:
        if expected is None:
            return
        self.declared[(department_code, day)] = expected
        self._day(department_code, day)

    def _day(self, department_code: str, day: date) -> _DayEntries:
        key = (department_code, day)
        entries = self._days.get(key)
        if entries is None:
            entries = self._days[key] = _DayEntries()
        return entries

    # --- deciding -------------------------------------------------------------------------

    def classify(
        self,
        record: ValidRecord,
        pending: Mapping[str, RecordState] | None = None,
        pending_superseded: Mapping[tuple[str, str], int] | None = None,
    ) -> Classification:
        """:meth:`classify_parts` of a validated record, its content hashed here."""
        return self.classify_parts(
            record.record_id,
            content_hash(record.content),
            record.report_date,
            pending,
            pending_superseded,
        )

    def classify_parts(
        self,
        record_id: str,
        content_hash: str,
        report_date: date,
        pending: Mapping[str, RecordState] | None = None,
        pending_superseded: Mapping[tuple[str, str], int] | None = None,
    ) -> Classification:
        """New, duplicate (the content of the latest or of an earlier version) or correction
        (version + 1): the one rule every batch is classified by.

        ``pending`` and ``pending_superseded`` hold what earlier records of the same batch
        decided, not yet committed.
        """
        previous = (pending or {}).get(record_id) or self.records.get(record_id)
        if previous is None:
            return Classification(Disposition.NEW, 1, None, report_date)
        if previous.content_hash == content_hash:
            return Classification(
                Disposition.DUPLICATE, previous.version, previous, previous.first_report_date
            )
        key = (record_id, content_hash)
        earlier = (pending_superseded or {}).get(key) or self.superseded.get(key)
        if earlier is not None:
            return Classification(
                Disposition.DUPLICATE, earlier, previous, previous.first_report_date
            )
        return Classification(
            Disposition.CORRECTION, previous.version + 1, previous, previous.first_report_date
        )

    # --- reading --------------------------------------------------------------------------

    def department_days(self, department_code: str | None = None) -> Iterator[DepartmentDay]:
        for key in sorted(self._days):
            if department_code is None or key[0] == department_code:
                yield key

    def day_records(self, department_code: str, day: date) -> list[RecordState]:
        """Accepted 双公示 records of the department dated ``day`` (latest versions)."""
        entries = self._days.get((department_code, day))
        if entries is None:
            return []
        return [self.records[r] for r in sorted(entries.record_ids) if r in self.records]

    def day_accepted(self, department_code: str, day: date) -> Mapping[date, AbstractSet[str]]:
        """First report date → ids of the accepted 双公示 records of the department whose
        latest version is dated ``day`` (read only)."""
        entries = self._days.get((department_code, day))
        return entries.accepted if entries is not None else {}

    def day_submissions(self, department_code: str, day: date) -> tuple[set[str], set[str]]:
        """(record ids submitted — accepted or rejected —, rejection ids without a record id)."""
        entries = self._days.get((department_code, day))
        if entries is None:
            return set(), set()
        return set(entries.record_ids), set(entries.unidentified_rejections)


def record_state_from_event(record: Mapping[str, Any]) -> RecordState:
    """The view of a decoded ``CreditRecord`` event (as read back from Kafka)."""
    subject = record["subject"]
    return RecordState(
        record_id=str(record["record_id"]),
        version=int(record["version"]),
        content_hash=content_hash(record),
        category=str(record["category"]),
        department_code=str(record["department_code"]),
        department_name=str(record["department_name"]),
        decision_number=str(record["decision_number"]),
        decision_date=record["decision_date"],
        first_report_date=record["report_date"],
        subject_key=str(subject["subject_key"]),
    )


def record_state_of(
    record: ValidRecord, version: int, first_report_date: date, digest: str | None = None
) -> RecordState:
    """The view of a record this process is about to publish (``digest``: its content hash,
    when the caller has it already)."""
    return RecordState(
        record_id=record.record_id,
        version=version,
        content_hash=digest if digest is not None else content_hash(record.content),
        category=record.category,
        department_code=record.department_code,
        department_name=record.department_name,
        decision_number=record.decision_number,
        decision_date=record.decision_date,
        first_report_date=first_report_date,
        subject_key=record.subject_key,
    )


def apply_all(ledger: Ledger, states: Iterable[RecordState | RejectionState]) -> None:
    for state in states:
        if isinstance(state, RecordState):
            ledger.apply_record(state)
        else:
            ledger.apply_rejection(state)
