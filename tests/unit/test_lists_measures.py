"""The measures catalogue: deploy/config/measures.yaml and what it yields per scenario."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest
import yaml

from services.lists.measures import (
    CONTRACT_SCENARIOS,
    DEFAULT_MEASURES_FILE,
    MeasureKind,
    MeasuresError,
    load_measures,
    parse_measures,
)
from services.lists.model import EntryStatus, ListEntry, ListType, RemovalReason, SubjectType

TODAY = date(2024, 7, 1)
CATALOGUE = load_measures(DEFAULT_MEASURES_FILE)


def entry(list_type: ListType, **fields: Any) -> ListEntry:
    values: dict[str, Any] = {
        "entry_key": f"320500/{list_type}/L:91320500MA1W8XY409/{list_type.value.lower():0<16}",
        "list_type": list_type,
        "list_name": "名单",
        "issuing_city": "320500",
        "issuing_department_code": "11320500014160400L",
        "issuing_department_name": "苏州市市场监督管理局",
        "subject_key": "L:91320500MA1W8XY409",
        "subject_type": SubjectType.ORGANISATION,
        "subject_name": "某公司",
        "legal_basis": "依据",
        "decision_reference": "决定",
        "effective_from": date(2024, 6, 3),
        "expires_at": None,
        "status": EntryStatus.ACTIVE,
        "removal_reason": None,
        "version": 1,
        "updated_at": datetime(2024, 6, 3, tzinfo=UTC),
    }
    values.update(fields)
    return ListEntry(**values)


def codes(scenario: str, *entries: ListEntry) -> list[str]:
    return [m.code for m in CATALOGUE.measures_for(scenario, entries, today=TODAY)]


def test_the_deployed_catalogue_covers_every_contract_scenario() -> None:
    for scenario in CONTRACT_SCENARIOS:
        assert CATALOGUE.knows(scenario)
    for rule in CATALOGUE.rules:
        assert rule.legal_basis
        assert rule.description


def test_black_list_in_government_procurement_restricts_participation() -> None:
    black = entry(ListType.BLACK)
    [measure] = CATALOGUE.measures_for("GOVERNMENT_PROCUREMENT", [black], today=TODAY)
    assert measure.code == "restrict-procurement"
    assert measure.kind is MeasureKind.PUNISHMENT
    assert measure.triggered_by == (black.entry_key,)
    assert "政府采购法" in measure.legal_basis


def test_red_list_in_licensing_is_fast_tracked() -> None:
    assert codes("ADMINISTRATIVE_LICENSING", entry(ListType.RED)) == ["licensing-fast-track"]


def test_watch_list_means_closer_review_not_exclusion() -> None:
    assert codes("GOVERNMENT_PROCUREMENT", entry(ListType.WATCH)) == ["enhanced-bid-review"]


def test_pending_objection_suspends_punishment_but_shows_nothing_else() -> None:
    pending = entry(ListType.BLACK, status=EntryStatus.OBJECTION_PENDING)
    assert codes("GOVERNMENT_PROCUREMENT", pending) == []


def test_removed_or_not_yet_effective_entries_trigger_nothing() -> None:
    removed = entry(
        ListType.BLACK, status=EntryStatus.REMOVED, removal_reason=RemovalReason.REPAIRED
    )
    future = entry(ListType.BLACK, effective_from=date(2024, 8, 1))
    assert codes("GOVERNMENT_PROCUREMENT", removed, future) == []


def test_subject_types_limit_measures() -> None:
    organisation = entry(ListType.BLACK)
    person = entry(ListType.BLACK, subject_type=SubjectType.NATURAL_PERSON, subject_name=None)
    assert codes("CIVIL_SERVICE_HIRING", organisation) == []
    assert codes("CIVIL_SERVICE_HIRING", person) == ["bar-civil-service-hiring"]
    assert codes("LAND_TRANSFER", organisation) == ["restrict-land-transfer"]


def test_several_entries_trigger_one_measure_and_mixed_lists_their_own() -> None:
    first = entry(ListType.BLACK)
    second = entry(ListType.BLACK, entry_key="320200/BLACK/L:91320500MA1W8XY409/2222222222222222")
    red = entry(ListType.RED)
    measures = CATALOGUE.measures_for("TENDERING", [first, second, red], today=TODAY)
    assert [(m.code, len(m.triggered_by)) for m in measures] == [
        ("restrict-tendering", 2),
        ("bid-credit-bonus", 1),
    ]


def _raw() -> dict[str, Any]:
    raw = yaml.safe_load(DEFAULT_MEASURES_FILE.read_text(encoding="utf-8"))
    assert isinstance(raw, dict)
    return raw


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r["scenarios"].pop("FINANCING"), "contract scenarios missing"),
        (lambda r: r["measures"][0].update(scenarios=["MOON_LANDING"]), "undeclared scenario"),
        (lambda r: r["measures"][0].update(list_types=["PURPLE"]), "unknown list type"),
        (lambda r: r["measures"][0].update(kind="BONUS"), "REWARD or PUNISHMENT"),
        (lambda r: r["measures"][0].update(legal_basis=""), "legal_basis"),
        (lambda r: r["measures"].append(dict(r["measures"][0])), "duplicate code"),
        (lambda r: r["measures"][0].update(while_objection_pending="maybe"), "apply or suspend"),
    ],
)
def test_a_malformed_catalogue_is_refused_with_the_place(mutate: Any, message: str) -> None:
    raw = _raw()
    mutate(raw)
    with pytest.raises(MeasuresError, match=message):
        parse_measures(raw, source="measures.yaml")
