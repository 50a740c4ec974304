"""Equipercentile linking: hand-computed cases and properties (services/scores/linking.py)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.scores.linking import (
    CommonGradeCuts,
    GradeCut,
    LinkingError,
    QuantileFunction,
    build_quantile_function,
    distribution_distance,
    link_score,
)

# --- hand-computed cases ------------------------------------------------------------------

HOME = QuantileFunction(ps=(0.0, 0.5, 1.0), scores=(0.0, 600.0, 1000.0))  # 桂花分-like
TARGET = QuantileFunction(ps=(0.0, 0.5, 1.0), scores=(350.0, 650.0, 950.0))  # 阿福分-like


def test_percentile_rank_interpolates_between_points() -> None:
    assert HOME.percentile_rank(300.0) == pytest.approx(0.25)
    assert HOME.percentile_rank(800.0) == pytest.approx(0.75)  # 0.5 + 0.5 * 200/400


def test_linking_by_hand() -> None:
    # 800 on home is the 75th percentile; the target's 75th percentile is 650 + 0.5 * 300.
    assert link_score(800.0, HOME, TARGET) == pytest.approx(800.0)
    # 300 is the 25th percentile; the target's is 350 + 0.5 * 300.
    assert link_score(300.0, HOME, TARGET) == pytest.approx(500.0)
    assert link_score(600.0, HOME, TARGET) == pytest.approx(650.0)


def test_scores_outside_the_distribution_clamp_to_its_ends() -> None:
    assert HOME.percentile_rank(-5.0) == 0.0
    assert HOME.percentile_rank(1200.0) == 1.0
    assert link_score(-5.0, HOME, TARGET) == 350.0
    assert link_score(1200.0, HOME, TARGET) == 950.0


def test_a_tie_takes_the_mid_rank_of_its_flat_run() -> None:
    # 40 % of residents hold exactly 10: Q is flat at 10 from p = 0.2 to p = 0.6.
    q = QuantileFunction(ps=(0.0, 0.2, 0.6, 1.0), scores=(0.0, 10.0, 10.0, 20.0))
    assert q.percentile_rank(10.0) == pytest.approx(0.4)  # 0.2 below + 0.4 / 2
    assert q.percentile_rank(5.0) == pytest.approx(0.1)
    assert q.percentile_rank(15.0) == pytest.approx(0.8)


def test_discrete_scale_is_continuized_over_half_steps() -> None:
    # Scores 1, 2, 2, 3 on an integer scale: each spreads over [x - 0.5, x + 0.5].
    q = build_quantile_function(
        {1.0: 1, 2.0: 2, 3.0: 1}, step=1, min_score=0, max_score=4, points=5
    )
    assert q.points == [(0.0, 0.5), (0.25, 1.5), (0.5, 2.0), (0.75, 2.5), (1.0, 3.5)]
    # Mid-ranks: P(X < x) + P(X = x) / 2.
    assert q.percentile_rank(1.0) == pytest.approx(0.125)
    assert q.percentile_rank(2.0) == pytest.approx(0.5)
    assert q.percentile_rank(3.0) == pytest.approx(0.875)


def test_a_score_at_the_end_of_the_scale_keeps_its_mid_rank() -> None:
    q = build_quantile_function({0.0: 1, 10.0: 3}, step=1, min_score=0, max_score=10, points=9)
    assert (q.lowest, q.highest) == (-0.5, 10.5)
    assert q.percentile_rank(0.0) == pytest.approx(0.125)
    assert q.percentile_rank(10.0) == pytest.approx(0.625)


def test_scores_off_the_scale_are_refused() -> None:
    with pytest.raises(LinkingError, match="within the scale"):
        build_quantile_function({11.0: 1}, step=1, min_score=0, max_score=10)


def test_continuous_scale_keeps_ties_as_point_masses() -> None:
    q = build_quantile_function({10.0: 2, 20.0: 2}, step=0, min_score=0, max_score=30)
    assert q.percentile_rank(10.0) == pytest.approx(0.25, abs=1e-3)
    assert q.percentile_rank(20.0) == pytest.approx(0.75, abs=1e-3)


def test_common_grade_by_published_cuts() -> None:
    cuts = CommonGradeCuts(
        "SXC-2026-1",
        (GradeCut("A", 0.9), GradeCut("B", 0.6), GradeCut("C", 0.2), GradeCut("D", 0.0)),
    )
    assert [cuts.grade_for(p) for p in (0.95, 0.9, 0.89, 0.6, 0.3, 0.2, 0.0)] == [
        "A",
        "A",
        "B",
        "B",
        "C",
        "C",
        "D",
    ]


@pytest.mark.parametrize(
    ("cuts", "problem"),
    [
        ((GradeCut("A", 0.6), GradeCut("B", 0.9), GradeCut("C", 0.0)), "highest first"),
        ((GradeCut("A", 0.9), GradeCut("B", 0.2)), "percentile 0"),
        ((GradeCut("A", 1.5), GradeCut("B", 0.0)), r"\[0, 1\]"),
        ((GradeCut("A", 0.5), GradeCut("A", 0.0)), "distinct"),
    ],
)
def test_bad_cuts_are_refused(cuts: tuple[GradeCut, ...], problem: str) -> None:
    with pytest.raises(LinkingError, match=problem):
        CommonGradeCuts("v", cuts)


@pytest.mark.parametrize(
    ("ps", "scores", "problem"),
    [
        ((0.0, 1.0), (5.0, 4.0), "must not decrease"),
        ((0.0, 0.5, 0.5, 1.0), (1.0, 2.0, 3.0, 4.0), "strictly increasing"),
        ((0.1, 1.0), (1.0, 2.0), "start at p = 0"),
        ((0.0,), (1.0,), "at least two"),
    ],
)
def test_malformed_quantile_functions_are_refused(
    ps: tuple[float, ...], scores: tuple[float, ...], problem: str
) -> None:
    with pytest.raises(LinkingError, match=problem):
        QuantileFunction(ps=ps, scores=scores)


def test_distance_of_identical_and_shifted_distributions() -> None:
    assert distribution_distance(HOME, HOME) == 0.0
    shifted = QuantileFunction(ps=HOME.ps, scores=tuple(s + 100 for s in HOME.scores))
    # Largest at 700: 0.5 + 0.5 * 100/400 on HOME, exactly the median on the shifted one.
    assert distribution_distance(HOME, shifted) == pytest.approx(0.125)


# --- properties ---------------------------------------------------------------------------


@st.composite
def quantile_functions(draw: st.DrawFn, *, strict: bool) -> QuantileFunction:
    """Random quantile functions; ``strict`` forbids flat runs (point masses)."""
    n = draw(st.integers(min_value=2, max_value=40))
    # Published grids are evenly spaced at 0.001; any p-spacing of at least 1e-4 is realistic.
    # (Arbitrarily close p values make a near-vertical quantile function, where no score can
    # be recovered from its rank in floating point.)
    cuts = sorted(set(draw(st.lists(st.integers(1, 9_999), min_size=n - 2, max_size=n - 2))))
    ps = (0.0, *(c / 10_000 for c in cuts), 1.0)
    low = draw(st.floats(-1000, 1000))
    # A step is a tie (0) or at least 0.01 points: scales resolve no finer, and a near-flat
    # segment is ill-conditioned in floating point without meaning anything.
    step = st.floats(0.01, 100.0) if strict else st.one_of(st.just(0.0), st.floats(0.01, 100.0))
    steps = draw(st.lists(step, min_size=len(ps) - 1, max_size=len(ps) - 1))
    scores = [low]
    for step in steps:
        scores.append(scores[-1] + step)
    return QuantileFunction(ps=ps, scores=tuple(scores))


@settings(max_examples=200, deadline=None)
@given(
    quantile_functions(strict=False),
    quantile_functions(strict=False),
    st.floats(-1200, 6000),
    st.floats(-1200, 6000),
)
def test_linking_is_monotone(
    home: QuantileFunction, target: QuantileFunction, a: float, b: float
) -> None:
    low, high = min(a, b), max(a, b)
    assert home.percentile_rank(low) <= home.percentile_rank(high)
    assert link_score(low, home, target) <= link_score(high, home, target)


@settings(max_examples=200, deadline=None)
@given(quantile_functions(strict=True), quantile_functions(strict=True), st.floats(0.0, 1.0))
def test_pth_percentile_maps_to_pth_percentile(
    home: QuantileFunction, target: QuantileFunction, p: float
) -> None:
    linked = link_score(home.score_at(p), home, target)
    assert linked == pytest.approx(target.score_at(p), rel=1e-9, abs=1e-6)
    assert target.percentile_rank(linked) == pytest.approx(p, abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(quantile_functions(strict=False), st.floats(0.0, 1.0))
def test_with_ties_pth_maps_within_the_flat_run(home: QuantileFunction, p: float) -> None:
    # On a flat run the percentile rank is the run's middle: off by at most half its width.
    rank = home.percentile_rank(home.score_at(p))
    widest = max(
        (hi - lo for lo, hi in _flat_runs(home)),
        default=0.0,
    )
    assert abs(rank - p) <= widest / 2 + 1e-9


def _flat_runs(q: QuantileFunction) -> list[tuple[float, float]]:
    runs = []
    start = 0
    for i in range(1, len(q.scores) + 1):
        if i == len(q.scores) or q.scores[i] != q.scores[start]:
            if i - 1 > start:
                runs.append((q.ps[start], q.ps[i - 1]))
            start = i
    return runs


@settings(max_examples=200, deadline=None)
@given(quantile_functions(strict=True), quantile_functions(strict=True), st.floats(0.0, 1.0))
def test_round_trip_a_to_b_to_a(home: QuantileFunction, peer: QuantileFunction, p: float) -> None:
    score = home.score_at(p)
    back = link_score(link_score(score, home, peer), peer, home)
    span = home.highest - home.lowest
    assert back == pytest.approx(score, abs=1e-6 * max(span, 1.0))


integer_scores = st.lists(st.integers(300, 900), min_size=30, max_size=400)


@settings(max_examples=60, deadline=None)
@given(integer_scores, integer_scores)
def test_discrete_populations_link_and_round_trip(home_raw: list[int], peer_raw: list[int]) -> None:
    home = build_quantile_function(
        Counter(map(float, home_raw)), step=1, min_score=300, max_score=900, points=101
    )
    peer = build_quantile_function(
        Counter(map(float, peer_raw)), step=1, min_score=300, max_score=900, points=101
    )
    for score in sorted(set(home_raw))[:: max(1, len(set(home_raw)) // 10)]:
        linked = link_score(score, home, peer)
        # Same percentile rank on both sides, and back again.
        assert peer.percentile_rank(linked) == pytest.approx(home.percentile_rank(score), abs=1e-9)
        assert link_score(linked, peer, home) == pytest.approx(score, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(integer_scores)
def test_published_rank_is_the_empirical_mid_rank_within_grid_error(raw: list[int]) -> None:
    points = 101
    q = build_quantile_function(
        Counter(map(float, raw)), step=1, min_score=300, max_score=900, points=points
    )
    n = len(raw)
    for score in set(raw):
        below = sum(1 for r in raw if r < score)
        equal = sum(1 for r in raw if r == score)
        mid_rank = (below + equal / 2) / n
        assert math.isclose(q.percentile_rank(score), mid_rank, abs_tol=1 / (points - 1))
