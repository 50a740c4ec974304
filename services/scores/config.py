"""The score-recognition configuration (``deploy/config/score-incentives.yaml``) and the
service's own environment variables.

The file holds the region's common grade cuts, every city's scale definition and every
city's incentive catalogue; its header comment documents the format. Loading checks it all
against the region registry and fails with every problem listed, so a node never starts on a
catalogue that does not mean what it says.

Environment (all optional):

- ``CREDITLINK_SCORES_CONFIG``: the file above (``deploy/config/score-incentives.yaml``).
- ``CREDITLINK_SCORES_BIND``: where the gRPC server listens (the city's ``scores`` endpoint).
- ``CREDITLINK_TLS_DIR``: CA, city certificate and consent keys (``deploy/local/certs``).
- ``CREDITLINK_SCORES_REFRESH_SECONDS``: how often the distribution is re-examined (60).
- ``CREDITLINK_SCORES_PEER_SYNC_SECONDS``: how often peers' scales are fetched (30).
- ``CREDITLINK_SCORES_MIN_POPULATION``: fewest residents a published distribution covers (100).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from services.common.certs import DEFAULT_OUT
from services.common.region import Region
from services.common.settings import REPO_ROOT
from services.scores.linking import CommonGradeCuts, GradeCut, LinkingError
from services.scores.scales import GradeBand, ScaleDefinition, ScaleError

DEFAULT_CONFIG_FILE = REPO_ROOT / "deploy" / "config" / "score-incentives.yaml"


class ScoresConfigError(ValueError):
    """The configuration is unusable; the message lists every problem."""


@dataclass(frozen=True, slots=True)
class Incentive:
    """One incentive measure: a stable code and the name residents see."""

    code: str
    name: str


@dataclass(frozen=True, slots=True)
class ScoresConfig:
    cuts: CommonGradeCuts
    scales: Mapping[str, ScaleDefinition]  # by city key
    incentives: Mapping[str, Mapping[str, tuple[Incentive, ...]]]  # city key -> grade -> …
    cut_labels: Mapping[str, str]

    def scale_of(self, city: str) -> ScaleDefinition:
        try:
            return self.scales[city]
        except KeyError:
            raise ScoresConfigError(f"no score scale is configured for {city!r}") from None

    def incentives_for(self, city: str, common_grade: str) -> tuple[Incentive, ...]:
        """What ``city`` grants at ``common_grade`` (empty when it grants nothing)."""
        return tuple(self.incentives.get(city, {}).get(common_grade, ()))


def _number(value: Any, where: str, problems: list[str]) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.append(f"{where}: expected a number, got {value!r}")
        return 0.0
    return float(value)


def parse_config(raw: Any, *, region: Region, source: str) -> ScoresConfig:
    problems: list[str] = []
    if not isinstance(raw, dict) or raw.get("version") != 1:
        raise ScoresConfigError(f"{source}: expected a mapping with 'version: 1'")

    grades = raw.get("common_grades") or {}
    cut_entries = grades.get("cuts") if isinstance(grades, dict) else None
    cuts: CommonGradeCuts | None = None
    labels: dict[str, str] = {}
    if not isinstance(cut_entries, list):
        problems.append(f"{source}: common_grades.cuts must be a list")
    else:
        parsed: list[GradeCut] = []
        for index, entry in enumerate(cut_entries):
            where = f"{source}: common_grades.cuts[{index}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("grade"), str):
                problems.append(f"{where}: needs 'grade' and 'min_percentile'")
                continue
            parsed.append(
                GradeCut(entry["grade"], _number(entry.get("min_percentile"), where, problems))
            )
            if isinstance(entry.get("label"), str):
                labels[entry["grade"]] = entry["label"]
        try:
            cuts = CommonGradeCuts(str(grades.get("version") or ""), tuple(parsed))
        except LinkingError as exc:
            problems.append(f"{source}: common_grades: {exc}")

    scales: dict[str, ScaleDefinition] = {}
    for city_key, entry in (raw.get("scales") or {}).items():
        where = f"{source}: scales.{city_key}"
        city = region.cities.get(city_key)
        if city is None:
            problems.append(f"{where}: {city_key!r} is not a city of the region")
            continue
        if not city.score_scale:
            problems.append(f"{where}: region.yaml names no score_scale for {city_key}")
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("bands"), list):
            problems.append(f"{where}: needs min_score, max_score, step and bands")
            continue
        bands = []
        for index, band in enumerate(entry["bands"]):
            band_where = f"{where}.bands[{index}]"
            if not isinstance(band, dict) or not isinstance(band.get("grade"), str):
                problems.append(f"{band_where}: needs grade, min_score, max_score")
                continue
            bands.append(
                GradeBand(
                    grade=band["grade"],
                    label=band.get("label"),
                    min_score=_number(band.get("min_score"), band_where, problems),
                    max_score=_number(band.get("max_score"), band_where, problems),
                )
            )
        try:
            scales[city_key] = ScaleDefinition(
                city_code=city.admin_code,
                scale_name=city.score_scale,
                min_score=_number(entry.get("min_score"), where, problems),
                max_score=_number(entry.get("max_score"), where, problems),
                step=_number(entry.get("step", 0), where, problems),
                bands=tuple(bands),
            )
        except ScaleError as exc:
            problems.append(f"{where}: {exc}")

    incentives: dict[str, dict[str, tuple[Incentive, ...]]] = {}
    known_grades = set(cuts.grades) if cuts else set()
    for city_key, per_grade in (raw.get("incentives") or {}).items():
        where = f"{source}: incentives.{city_key}"
        if city_key not in region.cities:
            problems.append(f"{where}: {city_key!r} is not a city of the region")
            continue
        if not isinstance(per_grade, dict):
            problems.append(f"{where}: expected a mapping common grade -> list")
            continue
        incentives[city_key] = {}
        for grade, items in per_grade.items():
            if known_grades and grade not in known_grades:
                problems.append(f"{where}.{grade}: not a common grade ({sorted(known_grades)})")
            measures = []
            for index, item in enumerate(items or []):
                if not isinstance(item, dict) or not item.get("code") or not item.get("name"):
                    problems.append(f"{where}.{grade}[{index}]: needs code and name")
                    continue
                measures.append(Incentive(str(item["code"]), str(item["name"])))
            incentives[city_key][str(grade)] = tuple(measures)

    if problems or cuts is None:
        raise ScoresConfigError("invalid score configuration:\n  - " + "\n  - ".join(problems))
    return ScoresConfig(cuts=cuts, scales=scales, incentives=incentives, cut_labels=labels)


def load_scores_config(path: Path | None = None, *, region: Region) -> ScoresConfig:
    chosen = path or Path(os.environ.get("CREDITLINK_SCORES_CONFIG", DEFAULT_CONFIG_FILE))
    try:
        raw = yaml.safe_load(chosen.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ScoresConfigError(f"{chosen}: cannot read: {exc}") from exc
    return parse_config(raw, region=region, source=str(chosen))


@dataclass(frozen=True, slots=True)
class ScoresOptions:
    """The service's own knobs, from the environment (see the module docstring)."""

    bind: str
    certs_dir: Path
    refresh_seconds: float = 60.0
    peer_sync_seconds: float = 30.0
    min_population: int = 100

    @classmethod
    def from_env(
        cls, region: Region, city: str, environ: Mapping[str, str] | None = None
    ) -> ScoresOptions:
        env = os.environ if environ is None else environ
        problems: list[str] = []
        bind = env.get("CREDITLINK_SCORES_BIND", "")
        if not bind:
            home = region.city(city)
            bind = home.endpoints.get("scores", "")
            if not bind:
                problems.append(
                    f"CREDITLINK_SCORES_BIND: not set and region.yaml has no scores endpoint "
                    f"for {city}"
                )

        def number(name: str, default: float) -> float:
            text = env.get(name, "")
            if not text:
                return default
            try:
                value = float(text)
            except ValueError:
                value = -1.0
            if value <= 0:
                problems.append(f"{name}: {text!r} is not a positive number")
            return value

        refresh = number("CREDITLINK_SCORES_REFRESH_SECONDS", 60.0)
        peer_sync = number("CREDITLINK_SCORES_PEER_SYNC_SECONDS", 30.0)
        min_population = number("CREDITLINK_SCORES_MIN_POPULATION", 100)
        if problems:
            raise ScoresConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
        return cls(
            bind=bind,
            certs_dir=Path(env.get("CREDITLINK_TLS_DIR", str(DEFAULT_OUT))),
            refresh_seconds=refresh,
            peer_sync_seconds=peer_sync,
            min_population=int(min_population),
        )
