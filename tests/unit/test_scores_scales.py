"""Scales, published versions, the refresh policy, the score table logic, the configuration,
the import file and one recognition — all without a broker."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from services.common.avro import AvroSerde
from services.common.pseudonym import DEV_REGION_KEY, pseudonym
from services.common.region import load_region
from services.common.settings import REPO_ROOT
from services.scores.config import ScoresConfigError, load_scores_config, parse_config
from services.scores.importer import read_score_file
from services.scores.linking import CommonGradeCuts, GradeCut, QuantileFunction
from services.scores.recognition import SCHEMA as RECOGNITION_SCHEMA
from services.scores.recognition import recognize
from services.scores.scales import (
    GradeBand,
    PublishedScale,
    PublishReason,
    RefreshPolicy,
    ScaleCatalogue,
    ScaleDefinition,
    ScaleError,
    ScorePopulation,
    publish_scale,
)
from services.scores.stream import ScoreOutcome, apply_score_event

REGION = load_region(REPO_ROOT / "deploy/config/region.yaml")
CONFIG = load_scores_config(REPO_ROOT / "deploy/config/score-incentives.yaml", region=REGION)
SUZHOU = CONFIG.scale_of("suzhou")
WUXI = CONFIG.scale_of("wuxi")
NOW = datetime(2026, 11, 27, 4, 5, 6, 789000, tzinfo=UTC)
PERSON = "ab" * 32


def _published(
    definition: ScaleDefinition, points: list[tuple[float, float]], version: str
) -> PublishedScale:
    return PublishedScale(
        definition=definition,
        distribution_version=version,
        quantiles=QuantileFunction.from_points(points),
        population=1000,
        cuts=CONFIG.cuts,
        published_at=NOW,
    )


# --- configuration ------------------------------------------------------------------------


def test_the_region_configuration_loads() -> None:
    assert SUZHOU.scale_name == "桂花分"
    assert SUZHOU.city_code == "320500"
    assert WUXI.scale_name == "阿福分"
    assert WUXI.min_score == 350
    assert CONFIG.scale_of("changzhou").scale_name == "龙城分"
    assert CONFIG.cuts.grades == ["A", "B", "C", "D"]
    assert [i.name for i in CONFIG.incentives_for("wuxi", "A")][:1] == ["图书馆免押金借阅"]
    assert CONFIG.incentives_for("wuxi", "D") == ()


def test_a_bad_configuration_lists_every_problem() -> None:
    raw: dict[str, Any] = {
        "version": 1,
        "common_grades": {"version": "x", "cuts": [{"grade": "A", "min_percentile": 0.0}]},
        "scales": {
            "atlantis": {"min_score": 0, "max_score": 1, "bands": []},
            "suzhou": {
                "min_score": 0,
                "max_score": 100,
                "bands": [{"grade": "A", "min_score": 0, "max_score": 90}],
            },
        },
        "incentives": {"wuxi": {"Z": [{"code": "X"}]}},
    }
    with pytest.raises(ScoresConfigError) as raised:
        parse_config(raw, region=REGION, source="test")
    message = str(raised.value)
    assert "atlantis" in message
    assert "cover min_score..max_score" in message
    assert "not a common grade" in message
    assert "needs code and name" in message


def test_grade_bands_must_not_leave_gaps() -> None:
    with pytest.raises(ScaleError, match="gap or overlap"):
        ScaleDefinition(
            "320500",
            "桂花分",
            0,
            100,
            1,
            (GradeBand("B", 0, 40), GradeBand("A", 50, 100)),
        )


def test_local_grades_are_half_open_except_at_the_top() -> None:
    assert SUZHOU.local_grade(0) == "C"
    assert SUZHOU.local_grade(599.5) == "B"
    assert SUZHOU.local_grade(600) == "A"
    assert SUZHOU.local_grade(1000) == "AAA"
    with pytest.raises(ScaleError):
        SUZHOU.local_grade(1000.5)


# --- published versions -------------------------------------------------------------------


def test_a_published_version_round_trips_through_avro_and_the_contract() -> None:
    scale = publish_scale(SUZHOU, {600.0: 3, 700.0: 1}, CONFIG.cuts, now=NOW, points=11)
    assert scale.published_at == datetime(2026, 11, 27, 4, 5, 6, 789000, tzinfo=UTC)
    assert scale.distribution_version.startswith("20261127T040506Z-")
    assert scale.key == f"320500:{scale.distribution_version}"
    serde = AvroSerde()
    decoded = serde.decode(serde.encode("creditlink.v1.ScoreScale", scale.to_record()))
    assert PublishedScale.from_record(decoded, step=SUZHOU.step) == scale
    from_contract = PublishedScale.from_proto(scale.to_proto())
    assert from_contract.quantiles == scale.quantiles
    assert from_contract.cuts == scale.cuts  # 0-100 on the wire, [0, 1] inside
    assert scale.to_proto().common_grade_cuts[0].min_percentile == pytest.approx(90.0)


def test_the_version_names_the_content() -> None:
    one = publish_scale(SUZHOU, {600.0: 3}, CONFIG.cuts, now=NOW, points=11)
    same = publish_scale(SUZHOU, {600.0: 3}, CONFIG.cuts, now=NOW, points=11)
    other = publish_scale(SUZHOU, {600.0: 4}, CONFIG.cuts, now=NOW, points=11)
    assert one.distribution_version == same.distribution_version
    assert one.distribution_version != other.distribution_version


def test_catalogue_keeps_every_version_and_knows_the_current_one() -> None:
    catalogue = ScaleCatalogue()
    old = publish_scale(SUZHOU, {600.0: 3}, CONFIG.cuts, now=NOW, points=11)
    new = publish_scale(SUZHOU, {700.0: 3}, CONFIG.cuts, now=NOW + timedelta(hours=1), points=11)
    assert catalogue.add(new)
    assert catalogue.add(old)
    assert not catalogue.add(old)
    assert catalogue.current("320500") == new
    assert catalogue.version("320500", old.distribution_version) == old
    assert catalogue.versions("320500") == [old, new]
    assert catalogue.current("320200") is None


# --- refresh policy -----------------------------------------------------------------------

POLICY = RefreshPolicy(min_population=3, max_age=timedelta(hours=6))


def _candidate(counts: dict[float, int], at: datetime = NOW) -> PublishedScale:
    return publish_scale(SUZHOU, counts, CONFIG.cuts, now=at, points=101)


def test_nothing_is_published_below_the_minimum_population() -> None:
    assert POLICY.decide(None, _candidate({600.0: 2})) is None
    assert POLICY.decide(None, _candidate({600.0: 2, 650.0: 1})) is PublishReason.FIRST


def test_a_material_change_publishes_at_once() -> None:
    current = _candidate({float(s): 10 for s in range(500, 700)})
    moved = dict(current_counts := {float(s): 10 for s in range(500, 700)})
    moved.update({float(s): 30 for s in range(680, 700)})  # a fifth of residents move up
    assert POLICY.decide(current, _candidate(current_counts)) is None
    assert POLICY.decide(current, _candidate(moved)) is PublishReason.MATERIAL_CHANGE


def test_a_small_drift_waits_for_the_schedule() -> None:
    counts = {float(s): 10 for s in range(500, 700)}
    current = _candidate(counts)
    drifted = dict(counts)
    drifted[650.0] = 11
    assert POLICY.decide(current, _candidate(drifted, NOW + timedelta(hours=1))) is None
    later = _candidate(drifted, NOW + timedelta(hours=7))
    assert POLICY.decide(current, later) is PublishReason.SCHEDULED
    # An unchanged distribution is never republished, however old.
    assert POLICY.decide(current, _candidate(counts, NOW + timedelta(days=30))) is None


def test_new_cuts_publish_a_new_version() -> None:
    counts = {float(s): 10 for s in range(500, 700)}
    current = _candidate(counts)
    recut = publish_scale(
        SUZHOU,
        counts,
        CommonGradeCuts("SXC-2027-1", (GradeCut("A", 0.8), GradeCut("B", 0.0))),
        now=NOW,
        points=101,
    )
    assert POLICY.decide(current, recut) is PublishReason.DEFINITION_CHANGED


# --- the score table logic ----------------------------------------------------------------


def _entry(score: float, **overrides: Any) -> dict[str, Any]:
    return {"pseudonym": PERSON, "city_code": "320500", "score": score, **overrides}


def test_score_events_keep_table_and_population_in_step() -> None:
    table: dict[str, float] = {}
    population = ScorePopulation()
    assert apply_score_event(table, population, PERSON, _entry(700), definition=SUZHOU) == (
        ScoreOutcome.STORED,
        "",
    )
    assert apply_score_event(table, population, PERSON, _entry(700), definition=SUZHOU)[0] is (
        ScoreOutcome.UNCHANGED
    )
    apply_score_event(table, population, PERSON, _entry(710), definition=SUZHOU)
    assert table == {PERSON: 710.0}
    assert population.counts == {710.0: 1}
    assert apply_score_event(table, population, PERSON, None, definition=SUZHOU)[0] is (
        ScoreOutcome.REMOVED
    )
    assert table == {}
    assert population.counts == {}


@pytest.mark.parametrize(
    ("key", "entry", "reason"),
    [
        ("not-a-pseudonym", _entry(700), "64-character"),
        (PERSON, _entry(700, pseudonym="cd" * 32), "differs from the key"),
        (PERSON, _entry(700, city_code="320200"), "this city's"),
        (PERSON, _entry(1200), "outside the scale"),
        (PERSON, _entry(float("nan")), "finite"),
    ],
)
def test_unusable_score_events_are_rejected(key: str, entry: dict[str, Any], reason: str) -> None:
    table: dict[str, float] = {}
    outcome, why = apply_score_event(table, ScorePopulation(), key, entry, definition=SUZHOU)
    assert outcome is ScoreOutcome.REJECTED
    assert reason in why
    assert table == {}


# --- import file --------------------------------------------------------------------------


def test_import_file_pseudonymises_and_reports_by_line(tmp_path: Path) -> None:
    resident = "11010519491231002X"
    good = tmp_path / "scores.csv"
    good.write_text(
        f"resident_id,pseudonym,score,model_version\n{resident},,712,m-2026.1\n,{'cd' * 32},455,\n",
        encoding="utf-8",
    )
    updates, problems = read_score_file(good, definition=SUZHOU, region_key=DEV_REGION_KEY)
    assert problems == []
    assert updates[0].pseudonym == pseudonym(resident, DEV_REGION_KEY)
    assert updates[0].entry is not None
    assert updates[0].entry["grade"] == "AA"
    assert updates[1].entry is not None
    assert updates[1].entry["grade"] == "C"
    AvroSerde().encode("creditlink.v1.ScoreEntry", updates[0].entry)

    bad = tmp_path / "scores.jsonl"
    bad.write_text(
        "\n".join(
            [
                json.dumps({"resident_id": "110105194912310021", "score": 700}),
                json.dumps({"pseudonym": "ab" * 32, "score": 2000}),
                "not json",
                json.dumps({"pseudonym": "ab" * 32, "delete": True}),
            ]
        ),
        encoding="utf-8",
    )
    updates, problems = read_score_file(bad, definition=SUZHOU, region_key=DEV_REGION_KEY)
    assert [p.line for p in problems] == [1, 2, 3]
    assert "GB 11643" in problems[0].reason
    assert "110105" not in str(problems[0])
    assert updates[0].entry is None  # a withdrawal


# --- one recognition ----------------------------------------------------------------------


def test_recognition_by_hand_names_both_versions() -> None:
    home = _published(SUZHOU, [(0.0, 0.0), (0.5, 600.0), (1.0, 1000.0)], "2026Q3")
    target = _published(WUXI, [(0.0, 350.0), (0.5, 650.0), (1.0, 950.0)], "2026-10")
    result = recognize(
        score=800.0,
        home=home,
        target=target,
        incentives_at=lambda grade: [i.name for i in CONFIG.incentives_for("wuxi", grade)],
        request_id="r-1",
        pseudonym=PERSON,
        consent_reference="jti-1",
        now=NOW,
    )
    assert result.home_percentile == pytest.approx(0.75)
    assert result.linked_score == pytest.approx(800.0)
    assert result.common_grade == "B"  # 0.6 <= 0.75 < 0.9
    assert result.incentives == ("图书馆免押金借阅", "医院先诊疗后付费")
    assert (result.home_distribution_version, result.requesting_distribution_version) == (
        "2026Q3",
        "2026-10",
    )
    assert (result.home_city, result.requesting_city) == ("320500", "320200")
    assert result.common_grade_cuts_version == "SXC-2026-1"
    response = result.to_proto()
    assert response.home_percentile == pytest.approx(75.0)
    assert response.subject_key == f"N:{PERSON}"
    serde = AvroSerde()
    assert serde.decode(serde.encode(RECOGNITION_SCHEMA, result.to_record()))["linked_score"] == (
        pytest.approx(800.0)
    )


def test_a_linked_score_stays_on_the_target_scale() -> None:
    home = _published(SUZHOU, [(0.0, 0.0), (1.0, 1000.0)], "h")
    target = _published(WUXI, [(0.0, 349.5), (1.0, 950.5)], "t")
    low = recognize(
        score=0.0,
        home=home,
        target=target,
        incentives_at=lambda _g: (),
        request_id="r",
        pseudonym=PERSON,
        consent_reference="c",
        now=NOW,
    )
    assert low.linked_score == 350.0
