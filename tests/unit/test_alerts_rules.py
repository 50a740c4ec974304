"""Every supervision rule fires where it must and stays silent where it must not.

The rules run inside an offline node (real store, engine and alert book; a fake producer), so
each case is the real path from a decoded event to the alert that would be published.
Cities: Suzhou 320500, Wuxi 320200, Changzhou 320400; Jiashan 330421 is in the region but not
connected.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from services.alerts.model import Alert, Domain, Severity
from tests.kit.alerts import (
    OfflineNode,
    black_entry,
    debtor_record,
    licence_record,
    list_change,
    offline_node,
    org_key,
    penalty_record,
    person_key,
    today_cst,
)

SZ, WX, CZ, JS = "320500", "320200", "320400", "330421"
SUZHOU_CO = org_key("91", "320506", "MA1W8XY4")  # registered in a Suzhou district
WUXI_CO = org_key("91", "320211", "MA1Q2W3E")
CHANGZHOU_CO = org_key("91", "320402", "MA1W9X8C")
JIASHAN_CO = org_key("91", "330421", "MA1K7L6M")
GOV_BODY = org_key("11", "320500", "01416040")
PUBLIC_INSTITUTION = org_key("12", "320400", "46650011")
PERSON = person_key("a doctor")


@pytest.fixture
def wuxi(tmp_path: Path) -> Iterator[OfflineNode]:
    node = offline_node("wuxi", tmp_path / "wuxi")
    yield node
    node.close()


@pytest.fixture
def changzhou(tmp_path: Path) -> Iterator[OfflineNode]:
    node = offline_node("changzhou", tmp_path / "changzhou")
    yield node
    node.close()


@pytest.fixture
def suzhou(tmp_path: Path) -> Iterator[OfflineNode]:
    node = offline_node("suzhou", tmp_path / "suzhou")
    yield node
    node.close()


def rule_ids(alerts: list[Alert]) -> list[str]:
    return [a.rule_id for a in alerts]


# --- blacklisted-operating-elsewhere.v1 -------------------------------------------------------


async def test_blacklisted_subject_registered_here_fires_when_the_mirrored_entry_arrives(
    wuxi: OfflineNode,
) -> None:
    entry = black_entry(WUXI_CO, issuing_city=SZ)
    (alert,) = await wuxi.entry(entry)
    assert alert.rule_id == "blacklisted-operating-elsewhere.v1"
    assert alert.origin_city == WX
    assert alert.target_cities == (WX, SZ)  # the operating city, and the issuer is told
    assert alert.severity is Severity.HIGH
    assert alert.evidence_list_entry_keys == (entry["entry_key"],)
    assert alert.attributes["presence"] == "registration"
    assert "苏州" in alert.explanation
    assert "无锡" in alert.explanation


async def test_blacklisted_subject_with_a_local_licence_fires_in_its_domain(
    wuxi: OfflineNode,
) -> None:
    assert await wuxi.entry(black_entry(SUZHOU_CO, issuing_city=SZ)) == []  # not in Wuxi yet
    licence = licence_record(SUZHOU_CO, city_code=WX, licence_name="食品经营许可证")
    (alert,) = await wuxi.record(licence)
    assert alert.domain is Domain.FOOD_DRUG
    assert alert.evidence_record_ids == (licence["record_id"],)
    assert alert.attributes["presence"] == "records"
    assert "食品经营许可证" in alert.explanation


async def test_blacklisted_also_arrives_through_list_changes(wuxi: OfflineNode) -> None:
    change = list_change(black_entry(WUXI_CO, issuing_city=CZ), sequence=7)
    alerts = await wuxi.feed("credit.list-changes.v1", CZ, change)
    assert rule_ids(alerts) == ["blacklisted-operating-elsewhere.v1"]


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        (black_entry(WUXI_CO, issuing_city=WX), "Wuxi's own entry"),
        (black_entry(SUZHOU_CO, issuing_city=SZ), "registered in Suzhou, no records in Wuxi"),
        (black_entry(WUXI_CO, issuing_city=SZ, status="OBJECTION_PENDING"), "objection pending"),
        (black_entry(WUXI_CO, issuing_city=SZ, status="REMOVED"), "removed"),
        (black_entry(WUXI_CO, issuing_city=SZ, list_type="RED"), "red list"),
    ],
)
async def test_blacklisted_must_not_fire(
    wuxi: OfflineNode, entry: dict[str, Any], why: str
) -> None:
    assert await wuxi.entry(entry) == [], why


async def test_blacklisted_stops_after_a_tombstone(wuxi: OfflineNode) -> None:
    entry = black_entry(SUZHOU_CO, issuing_city=SZ)
    await wuxi.entry(entry)
    await wuxi.feed("credit.lists.v1", entry["entry_key"], None)  # removed by the issuer
    assert await wuxi.record(licence_record(SUZHOU_CO, city_code=WX)) == []


async def test_blacklisted_natural_person_alerts_only_the_local_regulators(
    wuxi: OfflineNode,
) -> None:
    await wuxi.entry(black_entry(PERSON, issuing_city=SZ))
    (alert,) = await wuxi.record(penalty_record(PERSON, city_code=WX, domain="MEDICAL"))
    assert alert.target_cities == (WX,)  # personal data does not cross the border
    assert alert.subject_name is None


# --- serious-penalty-linkage.v1 ----------------------------------------------------------------


async def test_serious_food_penalty_links_to_the_registration_city(changzhou: OfflineNode) -> None:
    record = penalty_record(SUZHOU_CO, city_code=CZ, domain="FOOD_DRUG", serious=True)
    (alert,) = await changzhou.record(record)
    assert alert.rule_id == "serious-penalty-linkage.v1"
    assert alert.origin_city == CZ
    assert alert.target_cities == (SZ,)
    assert alert.domain is Domain.FOOD_DRUG
    assert alert.topic == "supervision.alerts.food-drug.v1"
    assert alert.attributes["penalty_record_id"] == record["record_id"]
    assert alert.attributes["penalty_severity"] == "SERIOUS"
    # The department's full name carries its city once: 被常州市市场监督管理局处以, not 常州常州市….
    assert "被常州市市场监督管理局处以严重失信行政处罚" in alert.explanation
    assert "常州常州" not in alert.explanation


async def test_serious_penalty_links_to_every_city_the_subject_is_known_in(
    changzhou: OfflineNode,
) -> None:
    await changzhou.entry(black_entry(SUZHOU_CO, issuing_city=WX, list_type="WATCH"))
    (alert,) = await changzhou.record(
        penalty_record(SUZHOU_CO, city_code=CZ, domain="MEDICAL", serious=True)
    )
    assert set(alert.target_cities) == {SZ, WX}


@pytest.mark.parametrize(
    ("record", "why"),
    [
        (penalty_record(SUZHOU_CO, city_code=CZ, serious=False), "general, not serious"),
        (
            penalty_record(SUZHOU_CO, city_code=CZ, domain="CONSTRUCTION", serious=True),
            "not a linkage domain",
        ),
        (
            penalty_record(CHANGZHOU_CO, city_code=CZ, serious=True),
            "registered here and known nowhere else",
        ),
        (
            penalty_record(
                SUZHOU_CO,
                city_code=CZ,
                serious=True,
                decision_date=today_cst() - timedelta(days=800),
            ),
            "older than max_age_days",
        ),
    ],
)
async def test_serious_linkage_must_not_fire(
    changzhou: OfflineNode,
    record: dict[str, Any],
    why: str,
) -> None:
    alerts = await changzhou.record(record)
    assert "serious-penalty-linkage.v1" not in rule_ids(alerts), why


async def test_serious_linkage_does_not_carry_a_person_across_the_border(
    changzhou: OfflineNode,
) -> None:
    changzhou_state_city = WX
    await changzhou.entry(black_entry(PERSON, issuing_city=changzhou_state_city))
    alerts = await changzhou.record(
        penalty_record(PERSON, city_code=CZ, domain="MEDICAL", serious=True)
    )
    assert "serious-penalty-linkage.v1" not in rule_ids(alerts)


# --- cross-region-penalty-notice.v1 ------------------------------------------------------------


async def test_penalty_notice_goes_to_the_home_city(changzhou: OfflineNode) -> None:
    record = penalty_record(SUZHOU_CO, city_code=CZ, domain="ENVIRONMENT")
    (alert,) = await changzhou.record(record)
    assert alert.rule_id == "cross-region-penalty-notice.v1"
    assert alert.target_cities == (SZ,)
    assert alert.severity is Severity.LOW
    assert alert.attributes["penalty_domain"] == "ENVIRONMENT"


@pytest.mark.parametrize(
    ("subject", "serious", "why"),
    [
        (CHANGZHOU_CO, False, "registered here"),
        (JIASHAN_CO, False, "home city not connected"),
        (SUZHOU_CO, True, "the serious-penalty linkage already told Suzhou"),
    ],
)
async def test_penalty_notice_must_not_fire(
    changzhou: OfflineNode, subject: str, serious: bool, why: str
) -> None:
    alerts = await changzhou.record(
        penalty_record(subject, city_code=CZ, domain="FOOD_DRUG", serious=serious)
    )
    assert "cross-region-penalty-notice.v1" not in rule_ids(alerts), why


# --- repeated-penalties-in-domain.v1 ------------------------------------------------------------


def _penalty(
    subject: str, city: str, n: int, days_ago: int, domain: str = "FOOD_DRUG"
) -> dict[str, Any]:
    return penalty_record(
        subject,
        city_code=city,
        domain=domain,
        decision_number=f"{city}罚〔2025〕{n}号",
        decision_date=today_cst() - timedelta(days=days_ago),
    )


async def test_three_penalties_in_a_window_fire_at_the_home_city_counting_peer_notices(
    suzhou: OfflineNode, changzhou: OfflineNode
) -> None:
    assert await suzhou.record(_penalty(SUZHOU_CO, SZ, 1, 100)) == []
    assert await suzhou.record(_penalty(SUZHOU_CO, SZ, 2, 40)) == []
    # The third penalty is in Changzhou: Changzhou sends Suzhou a notice, Suzhou counts it.
    (notice,) = await changzhou.record(_penalty(SUZHOU_CO, CZ, 3, 5))
    (alert,) = await suzhou.engine.observe_peer_alert(notice)
    assert alert.rule_id == "repeated-penalties-in-domain.v1"
    assert alert.origin_city == SZ
    assert set(alert.target_cities) == {SZ, CZ}
    assert alert.attributes["penalty_count"] == "3"
    assert len(alert.evidence_record_ids) == 3
    assert alert.severity is Severity.MEDIUM


async def test_repeated_penalties_are_not_counted_twice(suzhou: OfflineNode) -> None:
    first = [_penalty(SUZHOU_CO, SZ, n, 30 - n) for n in (1, 2, 3)]
    alerts = [a for record in first for a in await suzhou.record(record)]
    assert rule_ids(alerts) == ["repeated-penalties-in-domain.v1"]
    # A fourth penalty does not re-raise the first three; two more make a new alert.
    assert await suzhou.record(_penalty(SUZHOU_CO, SZ, 4, 10)) == []
    assert await suzhou.record(_penalty(SUZHOU_CO, SZ, 5, 9)) == []
    (second,) = await suzhou.record(_penalty(SUZHOU_CO, SZ, 6, 8))
    assert set(second.evidence_record_ids).isdisjoint(alerts[0].evidence_record_ids)


@pytest.mark.parametrize(
    ("records", "why"),
    [
        (
            [
                _penalty(SUZHOU_CO, SZ, 1, 170),
                _penalty(SUZHOU_CO, SZ, 2, 90),
                _penalty(SUZHOU_CO, SZ, 3, 1),
                _penalty(SUZHOU_CO, SZ, 4, 400),
            ],
            "170, 90 and 1 days ago span 169 days; the 400-day-old one is outside",
        ),
    ],
)
async def test_repeated_window_is_inclusive_of_its_span(
    suzhou: OfflineNode,
    records: list[dict[str, Any]],
    why: str,
) -> None:
    alerts = [a for record in records for a in await suzhou.record(record)]
    assert rule_ids(alerts) == ["repeated-penalties-in-domain.v1"], why


@pytest.mark.parametrize(
    ("records", "why"),
    [
        (
            [
                _penalty(SUZHOU_CO, SZ, 1, 300),
                _penalty(SUZHOU_CO, SZ, 2, 150),
                _penalty(SUZHOU_CO, SZ, 3, 1),
            ],
            "spread over more than the 180-day window",
        ),
        (
            [
                _penalty(SUZHOU_CO, SZ, 1, 30, "FOOD_DRUG"),
                _penalty(SUZHOU_CO, SZ, 2, 20, "MEDICAL"),
                _penalty(SUZHOU_CO, SZ, 3, 10, "FOOD_DRUG"),
            ],
            "two domains",
        ),
        (
            [_penalty(SUZHOU_CO, SZ, n, 30 - n, "TAX") for n in (1, 2, 3)],
            "TAX is not a configured domain",
        ),
        (
            [_penalty(SUZHOU_CO, SZ, 1, 30)] * 3,
            "the same record three times",
        ),
    ],
)
async def test_repeated_must_not_fire(
    suzhou: OfflineNode,
    records: list[dict[str, Any]],
    why: str,
) -> None:
    alerts = [a for record in records for a in await suzhou.record(record)]
    assert "repeated-penalties-in-domain.v1" not in rule_ids(alerts), why


async def test_repeated_counts_at_home_not_where_the_penalties_are(
    changzhou: OfflineNode,
) -> None:
    alerts = [
        a for n in (1, 2, 3) for a in await changzhou.record(_penalty(SUZHOU_CO, CZ, n, 30 - n))
    ]
    # Suzhou is the home city and connected: Changzhou only sends notices.
    assert rule_ids(alerts) == ["cross-region-penalty-notice.v1"] * 3


async def test_repeated_counts_locally_when_the_home_city_is_not_connected(
    changzhou: OfflineNode,
) -> None:
    alerts = [
        a for n in (1, 2, 3) for a in await changzhou.record(_penalty(JIASHAN_CO, CZ, n, 30 - n))
    ]
    assert rule_ids(alerts) == ["repeated-penalties-in-domain.v1"]
    assert alerts[0].target_cities == (CZ,)


async def test_a_correction_replaces_the_penalty_it_corrects(suzhou: OfflineNode) -> None:
    await suzhou.record(_penalty(SUZHOU_CO, SZ, 1, 20))
    second = _penalty(SUZHOU_CO, SZ, 2, 10)
    await suzhou.record(second)
    corrected = {**second, "version": 2, "supersedes_version": 1}
    corrected["penalty"] = {**second["penalty"], "domain": "MEDICAL"}
    assert await suzhou.record(corrected) == []
    assert await suzhou.record(_penalty(SUZHOU_CO, SZ, 3, 5)) == []  # only 2 in FOOD_DRUG


# --- government-dishonest-debtor.v1 --------------------------------------------------------------


async def test_government_body_as_dishonest_debtor_fires_critical(changzhou: OfflineNode) -> None:
    record = debtor_record(GOV_BODY, city_code=CZ)
    (alert,) = await changzhou.record(record)
    assert alert.rule_id == "government-dishonest-debtor.v1"
    assert alert.severity is Severity.CRITICAL
    assert alert.domain is Domain.OTHER
    assert alert.topic == "supervision.alerts.general.v1"
    assert alert.target_cities == (CZ, SZ)  # the court's city and where the body sits
    assert alert.attributes["recognised_by"] == "uscc"


async def test_public_institution_and_court_flag_are_government_too(
    changzhou: OfflineNode,
) -> None:
    (by_code,) = await changzhou.record(debtor_record(PUBLIC_INSTITUTION, city_code=CZ))
    assert by_code.target_cities == (CZ,)
    (by_flag,) = await changzhou.record(
        debtor_record(CHANGZHOU_CO, city_code=CZ, government_flag=True, case_number="(2025)x1号")
    )
    assert by_flag.attributes["recognised_by"] == "court_flag"


@pytest.mark.parametrize(
    ("record", "why"),
    [
        (debtor_record(CHANGZHOU_CO, city_code=CZ), "an enterprise, no court flag"),
        (debtor_record(GOV_BODY, city_code=CZ, performance="PERFORMED"), "obligation performed"),
        (penalty_record(GOV_BODY, city_code=CZ, domain="MARKET"), "a penalty, not a debtor record"),
    ],
)
async def test_government_debtor_must_not_fire(
    changzhou: OfflineNode,
    record: dict[str, Any],
    why: str,
) -> None:
    alerts = await changzhou.record(record)
    assert "government-dishonest-debtor.v1" not in rule_ids(alerts), why


# --- replays ------------------------------------------------------------------------------------


async def test_replaying_the_same_input_raises_nothing_twice(tmp_path: Path) -> None:
    inputs = [
        ("entry", black_entry(WUXI_CO, issuing_city=SZ)),
        ("record", penalty_record(WUXI_CO, city_code=WX, domain="FOOD_DRUG", serious=True)),
        ("record", debtor_record(GOV_BODY, city_code=WX)),
        *[("record", _penalty(WUXI_CO, WX, n, 20 - n)) for n in (1, 2, 3)],
    ]

    async def play(node: OfflineNode) -> list[str]:
        raised = []
        for kind, value in inputs:
            alerts = await (node.entry(value) if kind == "entry" else node.record(value))
            raised += [a.alert_id for a in alerts]
        return raised

    node = offline_node("wuxi", tmp_path / "wuxi")
    first = await play(node)
    assert len(first) == len(set(first)) >= 3
    assert await play(node) == []  # the same events again: nothing new
    published = len(node.published_alerts())
    node.close()

    # The node restarts on the same store and the input is replayed from the beginning.
    again = offline_node("wuxi", tmp_path / "wuxi")
    assert await play(again) == []
    assert len(again.published_alerts()) == 0
    assert published == len(first)
    again.close()

    # Lost store: a new node raises the same alerts with the same ids (consumers dedupe).
    fresh = offline_node("wuxi", tmp_path / "fresh")
    assert sorted(await play(fresh)) == sorted(first)
    fresh.close()


async def test_blacklisted_fires_once_the_objection_is_dismissed(wuxi: OfflineNode) -> None:
    pending = black_entry(WUXI_CO, issuing_city=SZ, status="OBJECTION_PENDING", version=2)
    assert await wuxi.entry(pending) == []
    dismissed = black_entry(WUXI_CO, issuing_city=SZ, status="ACTIVE", version=3)
    assert rule_ids(await wuxi.entry(dismissed)) == ["blacklisted-operating-elsewhere.v1"]
    corrected = black_entry(WUXI_CO, issuing_city=SZ, status="ACTIVE", version=4)
    assert await wuxi.entry(corrected) == []  # the same entry in the same city: raised once
    assert await wuxi.entry(dismissed) == []  # an old version arriving late changes nothing
