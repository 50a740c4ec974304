"""Score scales, their published distribution versions, and when to publish a new one.

A city's *scale* (name, range, resolution, local grade bands) is configuration; a *published
scale* adds one version of the score distribution (quantiles, population, the region's common
grade cuts) and is what goes on ``credit.score-scales.v1`` keyed ``<city_code>:<version>`` and
out through ``GetScoreScale``. Versions are immutable: a recognition names the two versions it
used, and the compacted topic keeps every version, so it can be reproduced years later.

Publishing policy (:class:`RefreshPolicy`), checked every refresh interval:

- never below ``min_population`` residents: quantiles of a handful of people would disclose
  their scores;
- a first version as soon as the population allows;
- a new version when the distribution moved *materially*: some score's percentile rank changed
  by at least ``material_distance`` (Kolmogorov–Smirnov distance, default 0.5 percentile
  points), or the population changed by ``material_population_change`` (default 5 %);
- a new version when the scale definition or the common grade cuts changed;
- otherwise, a new version on schedule once the current one is ``max_age`` old (default one
  day) and anything at all changed, so small drifts still reach peers; an unchanged
  distribution is never republished.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from creditlink.peer.v1 import score_recognition_pb2 as pb
from services.scores.linking import (
    CommonGradeCuts,
    GradeCut,
    LinkingError,
    QuantileFunction,
    build_quantile_function,
    distribution_distance,
)


class ScaleError(ValueError):
    """A scale definition or published scale that is inconsistent; the message says where."""


@dataclass(frozen=True, slots=True)
class GradeBand:
    """A local grade: ``min_score`` inclusive, ``max_score`` exclusive (inclusive at the top)."""

    grade: str
    min_score: float
    max_score: float
    label: str | None = None


@dataclass(frozen=True, slots=True)
class ScaleDefinition:
    """A city's own scale as its operator configures it."""

    city_code: str
    scale_name: str
    min_score: float
    max_score: float
    step: float
    bands: tuple[GradeBand, ...]

    def __post_init__(self) -> None:
        where = f"scale {self.scale_name!r} of {self.city_code}"
        if not self.max_score > self.min_score:
            raise ScaleError(f"{where}: max_score must exceed min_score")
        if self.step < 0:
            raise ScaleError(f"{where}: step must be 0 (continuous) or positive")
        if not self.bands:
            raise ScaleError(f"{where}: at least one grade band is required")
        if self.bands[0].min_score != self.min_score or self.bands[-1].max_score != self.max_score:
            raise ScaleError(f"{where}: grade bands must cover min_score..max_score")
        for lower, upper in zip(self.bands, self.bands[1:], strict=False):
            if lower.max_score != upper.min_score:
                raise ScaleError(
                    f"{where}: band {lower.grade} ends at {lower.max_score} but "
                    f"{upper.grade} starts at {upper.min_score} (gap or overlap)"
                )
        for band in self.bands:
            if not band.max_score > band.min_score:
                raise ScaleError(f"{where}: band {band.grade} is empty")

    def contains(self, score: float) -> bool:
        return self.min_score <= score <= self.max_score

    def local_grade(self, score: float) -> str:
        """The band ``score`` falls in (the top band includes ``max_score``)."""
        if not self.contains(score):
            raise ScaleError(f"{score} is outside {self.min_score}..{self.max_score}")
        for band in self.bands:
            if score < band.max_score:
                return band.grade
        return self.bands[-1].grade


@dataclass(frozen=True, slots=True)
class PublishedScale:
    """One immutable published version of a city's scale and score distribution."""

    definition: ScaleDefinition
    distribution_version: str
    quantiles: QuantileFunction
    population: int
    cuts: CommonGradeCuts
    published_at: datetime

    @property
    def city_code(self) -> str:
        return self.definition.city_code

    @property
    def scale_name(self) -> str:
        return self.definition.scale_name

    @property
    def key(self) -> str:
        """The Kafka key on ``credit.score-scales.v1``: ``<city_code>:<version>``."""
        return f"{self.city_code}:{self.distribution_version}"

    # --- Avro (credit.score-scales.v1) ---------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        d = self.definition
        return {
            "city_code": d.city_code,
            "scale_name": d.scale_name,
            "distribution_version": self.distribution_version,
            "min_score": d.min_score,
            "max_score": d.max_score,
            "grade_bands": [
                {
                    "grade": b.grade,
                    "label": b.label,
                    "min_score": b.min_score,
                    "max_score": b.max_score,
                }
                for b in d.bands
            ],
            "common_grade_cuts": [
                {"common_grade": c.grade, "min_percentile": c.min_percentile}
                for c in self.cuts.cuts
            ],
            "common_grade_cuts_version": self.cuts.version,
            "population": self.population,
            "quantiles": [{"p": p, "score": s} for p, s in self.quantiles.points],
            "published_at": self.published_at,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any], *, step: float = 0.0) -> PublishedScale:
        """A published scale read back from Kafka. ``step`` is not published (it only shapes
        how quantiles are built) and does not affect linking."""
        try:
            definition = ScaleDefinition(
                city_code=str(record["city_code"]),
                scale_name=str(record["scale_name"]),
                min_score=float(record["min_score"]),
                max_score=float(record["max_score"]),
                step=step,
                bands=tuple(
                    GradeBand(
                        grade=str(b["grade"]),
                        label=b.get("label"),
                        min_score=float(b["min_score"]),
                        max_score=float(b["max_score"]),
                    )
                    for b in record["grade_bands"]
                ),
            )
            published_at = record["published_at"]
            if not isinstance(published_at, datetime):
                raise ScaleError("published_at must be a timestamp")
            return cls(
                definition=definition,
                distribution_version=str(record["distribution_version"]),
                quantiles=QuantileFunction.from_points(
                    (float(q["p"]), float(q["score"])) for q in record["quantiles"]
                ),
                population=int(record["population"]),
                cuts=CommonGradeCuts(
                    version=str(record["common_grade_cuts_version"]),
                    cuts=tuple(
                        GradeCut(str(c["common_grade"]), float(c["min_percentile"]))
                        for c in record["common_grade_cuts"]
                    ),
                ),
                published_at=published_at.astimezone(UTC),
            )
        except (KeyError, TypeError, LinkingError) as exc:
            raise ScaleError(f"not a usable published scale: {exc}") from exc

    # --- gRPC (GetScoreScale) --------------------------------------------------------------

    def to_proto(self) -> pb.ScoreScale:
        """The contract's ScoreScale; percentile cuts in 0–100 as the contract states."""
        d = self.definition
        published = Timestamp()
        published.FromDatetime(self.published_at)
        return pb.ScoreScale(
            city_code=d.city_code,
            scale_name=d.scale_name,
            distribution_version=self.distribution_version,
            min_score=d.min_score,
            max_score=d.max_score,
            grade_bands=[
                pb.GradeBand(
                    grade=b.grade, label=b.label or "", min_score=b.min_score, max_score=b.max_score
                )
                for b in d.bands
            ],
            common_grade_cuts=[
                pb.CommonGradeCut(common_grade=c.grade, min_percentile=c.min_percentile * 100.0)
                for c in self.cuts.cuts
            ],
            common_grade_cuts_version=self.cuts.version,
            population=self.population,
            quantiles=[pb.Quantile(p=p, score=s) for p, s in self.quantiles.points],
            published_at=published,
        )

    @classmethod
    def from_proto(cls, message: pb.ScoreScale) -> PublishedScale:
        record = {
            "city_code": message.city_code,
            "scale_name": message.scale_name,
            "distribution_version": message.distribution_version,
            "min_score": message.min_score,
            "max_score": message.max_score,
            "grade_bands": [
                {
                    "grade": b.grade,
                    "label": b.label or None,
                    "min_score": b.min_score,
                    "max_score": b.max_score,
                }
                for b in message.grade_bands
            ],
            "common_grade_cuts": [
                {"common_grade": c.common_grade, "min_percentile": c.min_percentile / 100.0}
                for c in message.common_grade_cuts
            ],
            "common_grade_cuts_version": message.common_grade_cuts_version,
            "population": message.population,
            "quantiles": [{"p": q.p, "score": q.score} for q in message.quantiles],
            "published_at": message.published_at.ToDatetime(tzinfo=UTC),
        }
        return cls.from_record(record)


def distribution_version(published_at: datetime, digest_source: str) -> str:
    """``20241105T084207Z-3f9a1c0e``: sortable by time, unique by content."""
    digest = hashlib.sha256(digest_source.encode()).hexdigest()[:8]
    return f"{published_at.astimezone(UTC):%Y%m%dT%H%M%SZ}-{digest}"


def publish_scale(
    definition: ScaleDefinition,
    counts: Mapping[float, int],
    cuts: CommonGradeCuts,
    *,
    now: datetime,
    points: int,
) -> PublishedScale:
    """A new published version of ``definition`` from the current ``{score: residents}``."""
    quantiles = build_quantile_function(
        counts,
        step=definition.step,
        min_score=definition.min_score,
        max_score=definition.max_score,
        points=points,
    )
    population = sum(counts.values())
    content = json.dumps(
        [definition.city_code, population, cuts.version, quantiles.points], separators=(",", ":")
    )
    published_at = now.astimezone(UTC).replace(microsecond=(now.microsecond // 1000) * 1000)
    return PublishedScale(
        definition=definition,
        distribution_version=distribution_version(published_at, content),
        quantiles=quantiles,
        population=population,
        cuts=cuts,
        published_at=published_at,
    )


class PublishReason(StrEnum):
    FIRST = "first"
    MATERIAL_CHANGE = "material-change"
    DEFINITION_CHANGED = "definition-changed"
    SCHEDULED = "scheduled"


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    """When a city publishes a new distribution version (see the module docstring)."""

    min_population: int = 100
    material_distance: float = 0.005
    material_population_change: float = 0.05
    max_age: timedelta = timedelta(days=1)

    def decide(
        self, current: PublishedScale | None, candidate: PublishedScale
    ) -> PublishReason | None:
        if candidate.population < self.min_population:
            return None
        if current is None:
            return PublishReason.FIRST
        if (
            current.definition != replace(candidate.definition, step=current.definition.step)
            or current.cuts != candidate.cuts
        ):
            return PublishReason.DEFINITION_CHANGED
        distance = distribution_distance(current.quantiles, candidate.quantiles)
        growth = abs(candidate.population - current.population) / max(current.population, 1)
        if distance >= self.material_distance or growth >= self.material_population_change:
            return PublishReason.MATERIAL_CHANGE
        changed = (
            current.quantiles != candidate.quantiles or current.population != candidate.population
        )
        if changed and candidate.published_at - current.published_at >= self.max_age:
            return PublishReason.SCHEDULED
        return None


@dataclass
class ScaleCatalogue:
    """Every published version this node knows, its own and its peers', by city and version.

    Fed from ``credit.score-scales.v1`` (own publications and mirrored peer scales). The
    current version of a city is its newest ``published_at``.
    """

    _versions: dict[tuple[str, str], PublishedScale] = field(default_factory=dict)
    _current: dict[str, PublishedScale] = field(default_factory=dict)

    def add(self, scale: PublishedScale) -> bool:
        """Add a version; False when it was already known (adding is idempotent)."""
        key = (scale.city_code, scale.distribution_version)
        if key in self._versions:
            return False
        self._versions[key] = scale
        current = self._current.get(scale.city_code)
        if current is None or (scale.published_at, scale.distribution_version) > (
            current.published_at,
            current.distribution_version,
        ):
            self._current[scale.city_code] = scale
        return True

    def current(self, city_code: str) -> PublishedScale | None:
        return self._current.get(city_code)

    def version(self, city_code: str, version: str) -> PublishedScale | None:
        return self._versions.get((city_code, version))

    def versions(self, city_code: str) -> list[PublishedScale]:
        """Every known version of a city, oldest first."""
        return sorted(
            (s for (code, _), s in self._versions.items() if code == city_code),
            key=lambda s: (s.published_at, s.distribution_version),
        )

    def __iter__(self) -> Iterator[PublishedScale]:
        return iter(list(self._versions.values()))

    def __len__(self) -> int:
        return len(self._versions)


@dataclass
class ScorePopulation:
    """How many residents hold each score: the live distribution a new version is built from.

    Kept in memory next to the score table and rebuilt from it after every table recovery;
    :meth:`replace` applies one change of one resident's score.
    """

    counts: dict[float, int] = field(default_factory=dict)
    changes: int = 0

    def replace(self, old: float | None, new: float | None) -> None:
        if old == new:
            return
        if old is not None:
            remaining = self.counts.get(old, 0) - 1
            if remaining > 0:
                self.counts[old] = remaining
            else:
                self.counts.pop(old, None)
        if new is not None:
            self.counts[new] = self.counts.get(new, 0) + 1
        self.changes += 1

    def rebuild(self, scores: Sequence[float] | Iterator[float]) -> None:
        self.counts.clear()
        for score in scores:
            self.counts[score] = self.counts.get(score, 0) + 1
        self.changes += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def snapshot(self) -> dict[float, int]:
        return dict(self.counts)
