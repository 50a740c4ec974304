"""Equipercentile linking of credit scores between city scales (docs/design.md §4.6).

A city publishes the distribution of its residents' scores as a quantile function: points
``(p, score)`` with ``p`` from 0 to 1, strictly increasing in ``p`` and non-decreasing in
``score``; between points the function is linear. Everything here works on that published
form only, so any city holding the two published versions can reproduce a recognition.

- :meth:`QuantileFunction.percentile_rank` is the inverse of the quantile function. On a flat
  run (many residents with one score, a *point mass*) it returns the middle of the run: the
  mid-rank, ``P(X < x) + P(X = x) / 2`` (Kolen & Brennan, *Test Equating, Scaling, and
  Linking*, 3rd ed., §2.1 "percentile rank").
- :func:`link_score` maps a score to the score with the same percentile rank on another
  scale: ``Q_target(F_home(x))``. Both functions are non-decreasing, so linking is monotone.
- :func:`build_quantile_function` computes the published form from the actual scores. On a
  discrete scale (``step`` > 0, e.g. integer points) each score ``x`` is spread uniformly over
  ``[x - step/2, x + step/2]``, the usual continuization of discrete score distributions
  (Kolen & Brennan §2.1): percentile ranks then vary continuously, the rank of ``x`` itself is
  its mid-rank, and linking round-trips. A continuous scale (``step`` = 0) keeps ties as point
  masses, which :meth:`~QuantileFunction.percentile_rank` resolves by mid-rank.

Percentiles are fractions in ``[0, 1]`` here and on Kafka; the gRPC contract shows them as
0–100 and converts at its boundary.
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

#: Points of a published quantile function: p = 0, 0.001, …, 1.
DEFAULT_QUANTILE_POINTS = 1001


class LinkingError(ValueError):
    """A quantile function or grade cut list that cannot be used for linking."""


@dataclass(frozen=True, slots=True)
class QuantileFunction:
    """A piecewise-linear quantile function ``Q(p)`` given by its points.

    Example::

        q = QuantileFunction(ps=(0.0, 0.5, 1.0), scores=(300.0, 600.0, 900.0))
        q.score_at(0.25)            # 450.0
        q.percentile_rank(750.0)    # 0.75
    """

    ps: tuple[float, ...]
    scores: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.ps) != len(self.scores) or len(self.ps) < 2:
            raise LinkingError("a quantile function needs at least two (p, score) points")
        if self.ps[0] != 0.0 or self.ps[-1] != 1.0:
            raise LinkingError("quantile points must start at p = 0 and end at p = 1")
        for earlier, later in zip(self.ps, self.ps[1:], strict=False):
            if not later > earlier:
                raise LinkingError("quantile points must be strictly increasing in p")
        for earlier, later in zip(self.scores, self.scores[1:], strict=False):
            if later < earlier:
                raise LinkingError("quantile scores must not decrease as p increases")
        if not all(math.isfinite(s) for s in self.scores):
            raise LinkingError("quantile scores must be finite")

    @classmethod
    def from_points(cls, points: Iterable[tuple[float, float]]) -> QuantileFunction:
        pairs = list(points)
        return cls(ps=tuple(p for p, _ in pairs), scores=tuple(s for _, s in pairs))

    @property
    def points(self) -> list[tuple[float, float]]:
        return list(zip(self.ps, self.scores, strict=True))

    @property
    def lowest(self) -> float:
        return self.scores[0]

    @property
    def highest(self) -> float:
        return self.scores[-1]

    def score_at(self, p: float) -> float:
        """``Q(p)``: the score at cumulative share ``p`` (clamped to [0, 1])."""
        if p <= 0.0:
            return self.scores[0]
        if p >= 1.0:
            return self.scores[-1]
        upper = bisect_right(self.ps, p)  # ps[upper - 1] <= p < ps[upper]
        p0, p1 = self.ps[upper - 1], self.ps[upper]
        s0, s1 = self.scores[upper - 1], self.scores[upper]
        if p == p0:
            return s0
        return s0 + (s1 - s0) * (p - p0) / (p1 - p0)

    def percentile_rank(self, score: float) -> float:
        """``F(x)``: the share of residents below ``score``, ties counted half (mid-rank)."""
        scores = self.scores
        if score < scores[0]:
            return 0.0
        if score > scores[-1]:
            return 1.0
        first = bisect_left(scores, score)
        after = bisect_right(scores, score)
        if first < after:
            # ``score`` is a point of the function: Q equals it on [ps[first], ps[after-1]].
            return (self.ps[first] + self.ps[after - 1]) / 2.0
        s0, s1 = scores[first - 1], scores[first]
        p0, p1 = self.ps[first - 1], self.ps[first]
        return p0 + (p1 - p0) * (score - s0) / (s1 - s0)


def link_score(score: float, home: QuantileFunction, target: QuantileFunction) -> float:
    """The score on ``target``'s scale with the same percentile rank as ``score`` on home's."""
    return target.score_at(home.percentile_rank(score))


# --- building the published form ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Segment:
    """The interval one distinct score is spread over, and how many residents hold it."""

    low: float
    high: float
    count: int


def _segments(counts: Mapping[float, int], step: float) -> list[_Segment]:
    values = sorted(v for v, c in counts.items() if c > 0)
    half = step / 2.0
    segments: list[_Segment] = []
    for index, value in enumerate(values):
        low, high = value - half, value + half
        # Scores off the step lattice must not overlap their neighbours' intervals.
        if index > 0:
            low = max(low, (values[index - 1] + value) / 2.0)
        if index + 1 < len(values):
            high = min(high, (value + values[index + 1]) / 2.0)
        segments.append(_Segment(low, high, counts[value]))
    return segments


def build_quantile_function(
    counts: Mapping[float, int],
    *,
    step: float,
    min_score: float,
    max_score: float,
    points: int = DEFAULT_QUANTILE_POINTS,
) -> QuantileFunction:
    """The quantile function of a score population given as ``{score: residents}``.

    ``step`` is the scale's resolution (1 for integer points, 0 for a continuous scale). The
    result has ``points`` evenly spaced values of ``p``; between them linking interpolates.
    As in the usual continuization, the lowest and highest scores spread half a step beyond
    the scale's ends, so even a score at an end keeps its mid-rank; a linked score is clamped
    to the target scale's range (:func:`services.scores.recognition.recognize`).
    """
    if points < 2:
        raise LinkingError("a quantile function needs at least two points")
    if step < 0:
        raise LinkingError("step must be 0 (continuous) or positive")
    if any(not min_score <= value <= max_score for value in counts):
        raise LinkingError(f"scores must lie within the scale {min_score}..{max_score}")
    segments = _segments(counts, step)
    total = sum(s.count for s in segments)
    if total == 0:
        raise LinkingError("cannot build a distribution of no scores")
    # cumulative[i] = residents in segments[:i]
    cumulative = [0]
    for segment in segments:
        cumulative.append(cumulative[-1] + segment.count)
    ps: list[float] = []
    scores: list[float] = []
    index = 0
    for k in range(points):
        p = k / (points - 1)
        mass = p * total
        while index < len(segments) - 1 and cumulative[index + 1] < mass:
            index += 1
        segment = segments[index]
        inside = (mass - cumulative[index]) / segment.count
        inside = min(max(inside, 0.0), 1.0)
        score = segment.low + (segment.high - segment.low) * inside
        if scores and score < scores[-1]:  # float rounding at segment joins
            score = scores[-1]
        ps.append(p)
        scores.append(score)
    ps[-1] = 1.0
    return QuantileFunction(ps=tuple(ps), scores=tuple(scores))


def distribution_distance(a: QuantileFunction, b: QuantileFunction) -> float:
    """Largest difference in percentile rank that ``a`` and ``b`` give one score.

    The Kolmogorov–Smirnov distance of the two published distributions, evaluated at every
    score either names; a republishing decision compares it with a threshold.
    """
    probes = sorted(set(a.scores) | set(b.scores))
    return max(abs(a.percentile_rank(s) - b.percentile_rank(s)) for s in probes)


# --- common grades -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GradeCut:
    """The lowest percentile rank (in [0, 1]) that earns a common grade."""

    grade: str
    min_percentile: float


@dataclass(frozen=True, slots=True)
class CommonGradeCuts:
    """The region's published common grades, highest first, and their version.

    Example::

        cuts = CommonGradeCuts("SXC-2024-1", (GradeCut("A", 0.9), GradeCut("B", 0.6),
                                              GradeCut("C", 0.2), GradeCut("D", 0.0)))
        cuts.grade_for(0.93)   # "A"
    """

    version: str
    cuts: tuple[GradeCut, ...]

    def __post_init__(self) -> None:
        if not self.version:
            raise LinkingError("common grade cuts need a version")
        if not self.cuts:
            raise LinkingError("common grade cuts must name at least one grade")
        bounds = [c.min_percentile for c in self.cuts]
        if any(not 0.0 <= b <= 1.0 for b in bounds):
            raise LinkingError("common grade cuts are percentiles in [0, 1]")
        if any(later >= earlier for earlier, later in itertools.pairwise(bounds)):
            raise LinkingError("common grade cuts must be ordered highest first, no repeats")
        if bounds[-1] != 0.0:
            raise LinkingError("the lowest common grade must start at percentile 0")
        if len({c.grade for c in self.cuts}) != len(self.cuts):
            raise LinkingError("common grades must be distinct")

    @property
    def grades(self) -> list[str]:
        return [c.grade for c in self.cuts]

    def grade_for(self, percentile: float) -> str:
        """The first grade, from the top, whose cut ``percentile`` reaches."""
        for cut in self.cuts:
            if percentile >= cut.min_percentile:
                return cut.grade
        return self.cuts[-1].grade


def empirical_quantile(sorted_scores: Sequence[float], p: float) -> float:
    """The empirical ``p``-quantile of sorted scores (type 7, linear between order statistics).

    For tests and the benchmark: the reference a published quantile function approximates.
    """
    if not sorted_scores:
        raise LinkingError("no scores")
    position = p * (len(sorted_scores) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(sorted_scores) - 1)
    fraction = position - lower
    return sorted_scores[lower] + (sorted_scores[upper] - sorted_scores[lower]) * fraction
