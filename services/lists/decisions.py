"""What a list-decision record, the calendar, or a peer's change does to a list entry.

Pure functions over plain values: no broker, no store, no clock of their own. The single
writer (``book.py``) asks them, then numbers and publishes what they decide.

Rules (docs/design.md §4.4; the CreditRecord schema's ``ListDecisionDetails``):

* Only the issuing city changes or removes its entries. A record of this node that names an
  entry another city issued is refused (``not-issuing-city``); so is a peer's change to an
  entry that peer did not issue.
* Every record version is applied at most once; a correction (higher version of the same
  record) of a designation corrects the entry (``CORRECTED``).
* Removal reasons: expired (at the end of the term, by the calendar), repaired (credit
  repair, not before the designation's earliest repair date), objection upheld, revoked.
* A filed objection makes the entry ``OBJECTION_PENDING`` (peers see it); a dismissed one
  returns it to ``ACTIVE``; an upheld one removes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol

from services.common.clock import china_today
from services.lists.model import (
    EARLIEST_REPAIR_DATE,
    SOURCE_RECORD_VERSION,
    ChangeAction,
    EntryStatus,
    ListChange,
    ListEntry,
    ListType,
    RemovalReason,
    SubjectType,
    entry_key_for,
    issuer_of_key,
)


@dataclass(frozen=True, slots=True)
class Applied:
    """Make this change: ``entry`` is the entry as it is after it."""

    action: ChangeAction
    entry: ListEntry


@dataclass(frozen=True, slots=True)
class Skipped:
    """Nothing to do, and nothing wrong: already applied, or no change."""

    reason: str


@dataclass(frozen=True, slots=True)
class Refused:
    """The input asks for something the rules forbid; it is recorded, never applied."""

    code: str
    field: str
    message: str


Outcome = Applied | Skipped | Refused


class EntryLookup(Protocol):
    """Read access to the entries a decision needs.

    Example::

        class DictLookup:
            def __init__(self, entries: dict[str, ListEntry]) -> None:
                self.entries = entries
            def entry(self, entry_key: str) -> ListEntry | None:
                return self.entries.get(entry_key)
            def entries_of_subject(self, subject_key: str) -> Iterable[ListEntry]:
                return [e for e in self.entries.values() if e.subject_key == subject_key]
    """

    def entry(self, entry_key: str) -> ListEntry | None: ...

    def entries_of_subject(self, subject_key: str) -> Iterable[ListEntry]: ...


def _designated_entry(
    record: Mapping[str, Any], decision: Mapping[str, Any], entry_key: str
) -> dict[str, Any]:
    """The content fields a designation record gives its entry."""
    subject = record["subject"]
    subject_type = SubjectType(subject["subject_type"])
    attributes = {SOURCE_RECORD_VERSION: str(record["version"])}
    earliest_repair = (record.get("publicity") or {}).get("earliest_repair_date")
    if isinstance(earliest_repair, date):
        attributes[EARLIEST_REPAIR_DATE] = earliest_repair.isoformat()
    return {
        "entry_key": entry_key,
        "list_type": ListType(decision["list_type"]),
        "list_name": str(decision["list_name"]),
        "issuing_city": str(record["city_code"]),
        "issuing_department_code": str(record["department_code"]),
        "issuing_department_name": str(record["department_name"]),
        "subject_key": str(subject["subject_key"]),
        "subject_type": subject_type,
        # Names of natural persons never leave the home city (docs/design.md §4.8).
        "subject_name": (
            str(subject["name"]) if subject_type is SubjectType.ORGANISATION else None
        ),
        "legal_basis": str(decision["legal_basis"]),
        "decision_reference": str(record["decision_number"]),
        "effective_from": decision["effective_from"],
        "expires_at": decision.get("expires_at"),
        "source_record_id": str(record["record_id"]),
        "attributes": attributes,
    }


_CONTENT_FIELDS = (
    "list_name",
    "issuing_department_name",
    "subject_name",
    "legal_basis",
    "effective_from",
    "expires_at",
)


def _designate(
    record: Mapping[str, Any],
    decision: Mapping[str, Any],
    *,
    own_city: str,
    lookup: EntryLookup,
    now: datetime,
) -> Outcome:
    subject_key = str(record["subject"]["subject_key"])
    key = entry_key_for(
        own_city,
        decision["list_type"],
        subject_key,
        str(record["department_code"]),
        str(record["decision_number"]),
    )
    content = _designated_entry(record, decision, key)
    held = lookup.entry(key)
    if held is None:
        return Applied(
            ChangeAction.DESIGNATED,
            ListEntry(
                **content,
                status=EntryStatus.ACTIVE,
                removal_reason=None,
                version=1,
                updated_at=now,
            ),
        )
    if held.removed:
        # Designated again under the same decision (e.g. reinstated after a review): the
        # entry keeps its key and continues its version history.
        return Applied(
            ChangeAction.DESIGNATED,
            held.evolve(
                **content,
                status=EntryStatus.ACTIVE,
                removal_reason=None,
                version=held.version + 1,
                updated_at=now,
            ),
        )
    if all(getattr(held, name) == content[name] for name in _CONTENT_FIELDS):
        return Skipped("unchanged")
    return Applied(
        ChangeAction.CORRECTED,
        held.evolve(
            **content,
            status=held.status,
            removal_reason=None,
            version=held.version + 1,
            updated_at=now,
        ),
    )


#: Whether department ``actor`` may change what department ``owner`` of the node's city
#: decided (deploy/config/city-roles.yaml, ``acts_for``).
ActsFor = Callable[[str, str], bool]


def same_department(actor: str, owner: str) -> bool:
    """A department acts for itself only: the rule when the city configures no authorities."""
    return actor == owner


def _target(
    record: Mapping[str, Any],
    decision: Mapping[str, Any],
    *,
    own_city: str,
    lookup: EntryLookup,
    acts_for: ActsFor,
) -> ListEntry | Refused:
    """The entry an action other than DESIGNATE concerns, found by its designation number."""
    reference = decision.get("designation_decision_number")
    field = "list_decision.designation_decision_number"
    if not reference:
        return Refused("required", field, "the action needs the designation's decision number")
    subject_key = str(record["subject"]["subject_key"])
    list_type = ListType(decision["list_type"])
    key = entry_key_for(own_city, list_type, subject_key, str(record["department_code"]), reference)
    held = lookup.entry(key)
    if held is not None:
        return held
    # The action may come from another department of the city than the designating one
    # (e.g. the credit office handling a repair): find the entry by its decision number.
    candidates = [
        entry
        for entry in lookup.entries_of_subject(subject_key)
        if entry.list_type is list_type and entry.decision_reference == reference
    ]
    own = [entry for entry in candidates if entry.issuing_city == own_city]
    if len(own) == 1:
        actor, owner = str(record["department_code"]), own[0].issuing_department_code
        if not acts_for(actor, owner):
            return Refused(
                "not-issuing-department",
                "department_code",
                f"entry {own[0].entry_key} was designated by department {owner}; department "
                f"{actor} does not act for it (city-roles.yaml)",
            )
        return own[0]
    if len(own) > 1:
        return Refused(
            "ambiguous-entry",
            field,
            f"{len(own)} entries of this city carry decision number {reference!r}",
        )
    if candidates:
        issuer = candidates[0].issuing_city
        return Refused(
            "not-issuing-city",
            field,
            f"entry {candidates[0].entry_key} was issued by {issuer}; only the issuing city "
            "changes or removes it",
        )
    return Refused("unknown-entry", field, f"no {list_type} entry with decision {reference!r}")


def _changed(
    held: ListEntry,
    record: Mapping[str, Any],
    now: datetime,
    *,
    status: EntryStatus,
    reason: RemovalReason | None = None,
) -> ListEntry:
    attributes = {**held.attributes, SOURCE_RECORD_VERSION: str(record["version"])}
    return held.evolve(
        status=status,
        removal_reason=reason,
        version=held.version + 1,
        updated_at=now,
        source_record_id=str(record["record_id"]),
        attributes=attributes,
    )


def _repair_refusal(held: ListEntry, today: date) -> Refused | None:
    if held.list_type is ListType.RED:
        return Refused(
            "repair-not-applicable", "list_decision.action", "red entries are not repaired"
        )
    earliest = held.attributes.get(EARLIEST_REPAIR_DATE)
    if earliest and today < date.fromisoformat(earliest):
        return Refused(
            "repair-before-minimum-period",
            "list_decision.action",
            f"credit repair can take this entry down from {earliest}, not earlier",
        )
    return None


def decide_record(
    record: Mapping[str, Any],
    *,
    own_city: str,
    lookup: EntryLookup,
    applied_version: int | None,
    now: datetime,
    acts_for: ActsFor = same_department,
) -> Outcome:
    """What an accepted CreditRecord of this node does to the lists.

    ``applied_version`` is the highest version of the same ``record_id`` already applied
    (None if none): a version not above it is skipped, so redelivery is harmless.
    """
    if record.get("category") != "LIST_DECISION":
        return Skipped("not-a-list-decision")
    version = int(record["version"])
    if applied_version is not None and version <= applied_version:
        return Skipped("already-applied")
    if record.get("city_code") != own_city:
        return Refused(
            "foreign-record",
            "city_code",
            f"record of {record.get('city_code')} on {own_city}'s node",
        )
    decision = record.get("list_decision")
    if not isinstance(decision, Mapping):
        return Refused("required", "list_decision", "a LIST_DECISION record needs list_decision")
    action = decision.get("action")
    if action == "DESIGNATE":
        return _designate(record, decision, own_city=own_city, lookup=lookup, now=now)
    target = _target(record, decision, own_city=own_city, lookup=lookup, acts_for=acts_for)
    if isinstance(target, Refused):
        return target
    today = china_today(now)
    if action in ("REMOVE", "REPAIR"):
        raw_reason = "REPAIRED" if action == "REPAIR" else decision.get("removal_reason")
        if raw_reason not in RemovalReason.__members__:
            return Refused(
                "required", "list_decision.removal_reason", "a REMOVE needs a removal reason"
            )
        reason = RemovalReason(str(raw_reason))
        if target.removed:
            return Skipped("already-removed")
        if reason is RemovalReason.REPAIRED and (refusal := _repair_refusal(target, today)):
            return refusal
        return Applied(
            ChangeAction.REMOVED,
            _changed(target, record, now, status=EntryStatus.REMOVED, reason=reason),
        )
    if action == "OBJECTION_FILED":
        if target.removed:
            return Refused("entry-removed", "list_decision.action", "the entry is already removed")
        if target.objection_pending:
            return Skipped("objection-already-pending")
        return Applied(
            ChangeAction.OBJECTION_FILED,
            _changed(target, record, now, status=EntryStatus.OBJECTION_PENDING),
        )
    if action == "OBJECTION_DECIDED":
        upheld = decision.get("objection_upheld")
        if upheld is None:
            return Refused(
                "required", "list_decision.objection_upheld", "the objection's outcome is missing"
            )
        if target.removed:
            return Skipped("already-removed")
        if upheld:
            return Applied(
                ChangeAction.REMOVED,
                _changed(
                    target,
                    record,
                    now,
                    status=EntryStatus.REMOVED,
                    reason=RemovalReason.OBJECTION_UPHELD,
                ),
            )
        if not target.objection_pending:
            return Skipped("no-pending-objection")
        return Applied(
            ChangeAction.OBJECTION_DISMISSED,
            _changed(target, record, now, status=EntryStatus.ACTIVE),
        )
    return Refused("unknown-action", "list_decision.action", f"action {action!r} is not known")


def expire(entry: ListEntry, *, today: date, now: datetime) -> Applied | None:
    """Take an entry down at the end of its term: the day after ``expires_at`` (inclusive)."""
    if entry.removed or entry.expires_at is None or entry.expires_at >= today:
        return None
    return Applied(
        ChangeAction.REMOVED,
        entry.evolve(
            status=EntryStatus.REMOVED,
            removal_reason=RemovalReason.EXPIRED,
            version=entry.version + 1,
            updated_at=now,
        ),
    )


def _issuer_refusal(entry: ListEntry, claimed_issuer: str, peer_code: str) -> Refused | None:
    issuers = {claimed_issuer, entry.issuing_city, issuer_of_key(entry.entry_key)}
    if issuers != {peer_code}:
        return Refused(
            "not-issuing-city",
            "entry.issuing_city",
            f"{peer_code} sent a change to entry {entry.entry_key} issued by "
            f"{entry.issuing_city}; only the issuing city changes its entries",
        )
    return None


def check_mirrored(
    change: ListChange,
    *,
    peer_code: str,
    held: ListEntry | None,
    last_sequence: int | None,
) -> Outcome:
    """Whether a change streamed by ``peer_code`` is applied to this node's mirror.

    ``last_sequence`` is the peer's last sequence this node applied (None when unknown, e.g.
    after a repair adopted a digest cursor). A change is applied at most once: a sequence or
    entry version this node already has is skipped.
    """
    if refusal := _issuer_refusal(change.entry, change.issuing_city, peer_code):
        return refusal
    if (change.action is ChangeAction.REMOVED) != change.entry.removed:
        return Refused(
            "inconsistent-change",
            "action",
            f"change {change.change_id}: action {change.action} with status {change.entry.status}",
        )
    if last_sequence is not None and change.sequence <= last_sequence:
        return Skipped("duplicate-sequence")
    if held is not None and change.entry.version <= held.version:
        return Skipped("stale-version")
    return Applied(change.action, change.entry)


def check_repair(upstream: ListEntry, *, peer_code: str, held: ListEntry | None) -> Outcome:
    """Whether an entry a peer listed (``ListEntries``) replaces this node's copy."""
    if refusal := _issuer_refusal(upstream, upstream.issuing_city, peer_code):
        return refusal
    if held is not None and upstream.version <= held.version:
        return Skipped("current")
    return Applied(ChangeAction.CORRECTED, upstream)
