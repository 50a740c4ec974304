"""What list-decision records, the calendar and peers' changes do to list entries (pure)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime

import pytest

from services.lists.decisions import (
    Applied,
    Outcome,
    Refused,
    Skipped,
    check_mirrored,
    check_repair,
    decide_record,
    expire,
)
from services.lists.model import (
    SOURCE_RECORD_VERSION,
    ChangeAction,
    EntryStatus,
    ListChange,
    ListEntry,
    RemovalReason,
    entry_key_for,
)
from tests.kit.lists import CHANGZHOU, SUZHOU, WUXI, list_decision, person_key

ORG = "L:91320500MA1W8XY409"
NOW = datetime(2024, 7, 1, 2, 0, tzinfo=UTC)


class Lookup:
    def __init__(self, *entries: ListEntry) -> None:
        self.entries = {e.entry_key: e for e in entries}

    def entry(self, entry_key: str) -> ListEntry | None:
        return self.entries.get(entry_key)

    def entries_of_subject(self, subject_key: str) -> Iterable[ListEntry]:
        return [e for e in self.entries.values() if e.subject_key == subject_key]


def decide(record: dict[str, object], *entries: ListEntry, applied: int | None = None) -> Outcome:
    return decide_record(
        record, own_city=SUZHOU, lookup=Lookup(*entries), applied_version=applied, now=NOW
    )


def designated(**fields: object) -> ListEntry:
    outcome = decide(list_decision(ORG, **fields))
    assert isinstance(outcome, Applied)
    return outcome.entry


def test_designation_creates_an_active_entry_with_the_contract_key() -> None:
    outcome = decide(list_decision(ORG, earliest_repair=date(2025, 6, 3)))
    assert isinstance(outcome, Applied)
    assert outcome.action is ChangeAction.DESIGNATED
    entry = outcome.entry
    assert entry.entry_key == entry_key_for(
        SUZHOU, "BLACK", ORG, "11320500014160400L", "苏市监信〔2024〕8号"
    )
    assert entry.entry_key.startswith(f"{SUZHOU}/BLACK/{ORG}/")
    assert len(entry.entry_key) == 50
    assert (entry.status, entry.version, entry.removal_reason) == (EntryStatus.ACTIVE, 1, None)
    assert entry.attributes[SOURCE_RECORD_VERSION] == "1"
    assert entry.attributes["earliest_repair_date"] == "2025-06-03"
    assert entry.subject_name is not None


def test_natural_person_names_never_enter_an_entry() -> None:
    outcome = decide(list_decision(person_key(1)))
    assert isinstance(outcome, Applied)
    assert outcome.entry.subject_name is None


def test_record_versions_apply_once_and_corrections_correct() -> None:
    entry = designated()
    assert decide(list_decision(ORG), entry, applied=1) == Skipped("already-applied")
    assert decide(list_decision(ORG, version=2), entry, applied=1) == Skipped("unchanged")
    corrected = decide(list_decision(ORG, version=2, expires_at=date(2026, 6, 2)), entry, applied=1)
    assert isinstance(corrected, Applied)
    assert corrected.action is ChangeAction.CORRECTED
    assert (corrected.entry.version, corrected.entry.expires_at) == (2, date(2026, 6, 2))


def test_other_categories_are_not_list_decisions() -> None:
    record = list_decision(ORG)
    record["category"] = "ADMIN_PENALTY"
    assert decide(record) == Skipped("not-a-list-decision")


@pytest.mark.parametrize(
    ("action", "extra", "reason"),
    [
        ("REMOVE", {"removal_reason": "REVOKED"}, RemovalReason.REVOKED),
        ("REMOVE", {"removal_reason": "EXPIRED"}, RemovalReason.EXPIRED),
        ("REPAIR", {}, RemovalReason.REPAIRED),
        ("OBJECTION_DECIDED", {"objection_upheld": True}, RemovalReason.OBJECTION_UPHELD),
    ],
)
def test_removals_carry_their_reason(action: str, extra: dict[str, object], reason: str) -> None:
    entry = designated()
    record = list_decision(
        ORG,
        action=action,
        decision_number="苏市监信〔2024〕99号",
        designation=entry.decision_reference,
        **extra,
    )
    outcome = decide(record, entry)
    assert isinstance(outcome, Applied)
    assert outcome.action is ChangeAction.REMOVED
    assert (outcome.entry.status, outcome.entry.removal_reason) == (EntryStatus.REMOVED, reason)
    assert outcome.entry.version == 2
    # Removing again is a no-op, not an error.
    assert decide(record, outcome.entry) == Skipped("already-removed")


def test_remove_needs_a_reason() -> None:
    entry = designated()
    record = list_decision(
        ORG, action="REMOVE", decision_number="X1", designation=entry.decision_reference
    )
    outcome = decide(record, entry)
    assert isinstance(outcome, Refused)
    assert (outcome.code, outcome.field) == ("required", "list_decision.removal_reason")


def test_repair_is_refused_before_the_minimum_publicity_period() -> None:
    entry = designated(earliest_repair=date(2025, 6, 3))
    record = list_decision(
        ORG, action="REPAIR", decision_number="X2", designation=entry.decision_reference
    )
    outcome = decide(record, entry)
    assert isinstance(outcome, Refused)
    assert outcome.code == "repair-before-minimum-period"


def test_red_entries_are_not_repaired() -> None:
    entry = designated(list_type="RED")
    record = list_decision(
        ORG,
        list_type="RED",
        action="REPAIR",
        decision_number="X3",
        designation=entry.decision_reference,
    )
    outcome = decide(record, entry)
    assert isinstance(outcome, Refused)
    assert outcome.code == "repair-not-applicable"


def test_objection_is_pending_then_dismissed() -> None:
    entry = designated()
    filed = decide(
        list_decision(
            ORG,
            action="OBJECTION_FILED",
            decision_number="异1",
            designation=entry.decision_reference,
        ),
        entry,
    )
    assert isinstance(filed, Applied)
    assert filed.entry.status is EntryStatus.OBJECTION_PENDING
    assert filed.entry.objection_pending
    again = list_decision(
        ORG, action="OBJECTION_FILED", decision_number="异2", designation=entry.decision_reference
    )
    assert decide(again, filed.entry) == Skipped("objection-already-pending")
    dismissed = decide(
        list_decision(
            ORG,
            action="OBJECTION_DECIDED",
            objection_upheld=False,
            decision_number="异3",
            designation=entry.decision_reference,
        ),
        filed.entry,
    )
    assert isinstance(dismissed, Applied)
    assert dismissed.action is ChangeAction.OBJECTION_DISMISSED
    assert (dismissed.entry.status, dismissed.entry.version) == (EntryStatus.ACTIVE, 3)


def test_an_action_from_another_department_finds_the_entry_by_decision_number() -> None:
    entry = designated()
    record = list_decision(
        ORG,
        action="REMOVE",
        removal_reason="REVOKED",
        decision_number="苏信修〔2024〕1号",
        designation=entry.decision_reference,
        department=("11320500MB1234567X", "苏州市发展和改革委员会"),
    )
    # Only where the city's roles let that department act for the designating one.
    refused = decide(record, entry)
    assert isinstance(refused, Refused)
    assert refused.code == "not-issuing-department"
    outcome = decide_record(
        record,
        own_city=SUZHOU,
        lookup=Lookup(entry),
        applied_version=None,
        now=NOW,
        acts_for=lambda actor, owner: actor == "11320500MB1234567X",
    )
    assert isinstance(outcome, Applied)
    assert outcome.entry.entry_key == entry.entry_key


def test_only_the_issuing_city_changes_its_entries() -> None:
    suzhou_entry = designated()
    # Wuxi's node receives a Wuxi department's removal of Suzhou's entry.
    record = list_decision(
        ORG,
        city=WUXI,
        action="REMOVE",
        removal_reason="REVOKED",
        decision_number="锡1",
        designation=suzhou_entry.decision_reference,
    )
    outcome = decide_record(
        record, own_city=WUXI, lookup=Lookup(suzhou_entry), applied_version=None, now=NOW
    )
    assert isinstance(outcome, Refused)
    assert outcome.code == "not-issuing-city"
    assert SUZHOU in outcome.message


def test_unknown_entries_and_foreign_records_are_refused() -> None:
    record = list_decision(ORG, action="REPAIR", decision_number="X4", designation="无此决定")
    outcome = decide(record)
    assert isinstance(outcome, Refused)
    assert outcome.code == "unknown-entry"
    foreign = decide(list_decision(ORG, city=WUXI))
    assert isinstance(foreign, Refused)
    assert foreign.code == "foreign-record"


def test_expiry_takes_an_entry_down_the_day_after_its_last_day() -> None:
    entry = designated(expires_at=date(2024, 6, 30))
    assert expire(entry, today=date(2024, 6, 30), now=NOW) is None
    gone = expire(entry, today=date(2024, 7, 1), now=NOW)
    assert gone is not None
    assert (gone.entry.status, gone.entry.removal_reason) == (
        EntryStatus.REMOVED,
        RemovalReason.EXPIRED,
    )
    assert expire(designated(expires_at=None), today=date(2099, 1, 1), now=NOW) is None


def _change(
    entry: ListEntry, sequence: int, action: ChangeAction = ChangeAction.DESIGNATED
) -> ListChange:
    return ListChange(entry.issuing_city, sequence, action, entry, NOW)


def test_a_peer_change_applies_once() -> None:
    entry = designated()
    change = _change(entry, 7)
    assert isinstance(check_mirrored(change, peer_code=SUZHOU, held=None, last_sequence=6), Applied)
    assert check_mirrored(change, peer_code=SUZHOU, held=None, last_sequence=7) == Skipped(
        "duplicate-sequence"
    )
    assert check_mirrored(change, peer_code=SUZHOU, held=entry, last_sequence=None) == Skipped(
        "stale-version"
    )


def test_a_peer_cannot_change_another_citys_entry() -> None:
    suzhou_entry = designated()
    # Wuxi streams a removal of Suzhou's entry, claiming to be its issuer or not.
    removal = suzhou_entry.evolve(
        status=EntryStatus.REMOVED, removal_reason=RemovalReason.REVOKED, version=2
    )
    for claimed in (WUXI, SUZHOU):
        change = ListChange(claimed, 3, ChangeAction.REMOVED, removal, NOW)
        outcome = check_mirrored(change, peer_code=WUXI, held=suzhou_entry, last_sequence=2)
        assert isinstance(outcome, Refused)
        assert outcome.code == "not-issuing-city"
    forged_key = removal.evolve(issuing_city=WUXI)
    outcome = check_mirrored(
        ListChange(WUXI, 3, ChangeAction.REMOVED, forged_key, NOW),
        peer_code=WUXI,
        held=None,
        last_sequence=None,
    )
    assert isinstance(outcome, Refused)
    assert isinstance(check_repair(suzhou_entry, peer_code=CHANGZHOU, held=None), Refused)


def test_a_change_whose_action_contradicts_its_status_is_refused() -> None:
    entry = designated()
    outcome = check_mirrored(
        _change(entry, 1, ChangeAction.REMOVED), peer_code=SUZHOU, held=None, last_sequence=None
    )
    assert isinstance(outcome, Refused)
    assert outcome.code == "inconsistent-change"


def test_repair_takes_only_newer_versions() -> None:
    entry = designated()
    newer = entry.evolve(version=5)
    assert check_repair(entry, peer_code=SUZHOU, held=newer) == Skipped("current")
    assert isinstance(check_repair(newer, peer_code=SUZHOU, held=entry), Applied)
