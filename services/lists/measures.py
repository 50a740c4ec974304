"""The measures catalogue (``deploy/config/measures.yaml``): list type × scenario → measures.

Example::

    catalogue = load_measures()                       # or CREDITLINK_MEASURES_FILE
    catalogue.measures_for("GOVERNMENT_PROCUREMENT", entries, today=date(2024, 7, 1))
    # -> [AppliedMeasure(code="restrict-procurement", kind=PUNISHMENT, ...)]

A measure applies when at least one of the subject's entries is in force (not removed,
effective, of a listed type and subject type) and, for an entry whose objection is pending,
only when the measure says ``while_objection_pending: apply`` (国办发〔2020〕49号: punishment
must not run ahead of the subject's right to object).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, TypeVar

import yaml

from services.common.settings import REPO_ROOT
from services.lists.model import ListEntry, ListType, SubjectType

DEFAULT_MEASURES_FILE: Final = REPO_ROOT / "deploy" / "config" / "measures.yaml"
#: The contract's Scenario values (without ``SCENARIO_``) every catalogue must name.
CONTRACT_SCENARIOS: Final = (
    "TENDERING",
    "GOVERNMENT_PROCUREMENT",
    "HONOURS",
    "SUBSIDIES",
    "ADMINISTRATIVE_LICENSING",
    "CIVIL_SERVICE_HIRING",
    "FINANCING",
)


_E = TypeVar("_E", bound=StrEnum)


class MeasuresError(ValueError):
    """The catalogue is malformed; the message names the file and the measure."""


class MeasureKind(StrEnum):
    REWARD = "REWARD"
    PUNISHMENT = "PUNISHMENT"


@dataclass(frozen=True, slots=True)
class MeasureRule:
    code: str
    kind: MeasureKind
    description: str
    legal_basis: str
    list_types: frozenset[ListType]
    scenarios: frozenset[str]
    subject_types: frozenset[SubjectType]
    while_objection_pending: bool

    def triggered_by(self, entry: ListEntry, today: date) -> bool:
        return (
            not entry.removed
            and entry.list_type in self.list_types
            and entry.subject_type in self.subject_types
            and entry.effective_from <= today
            and (self.while_objection_pending or not entry.objection_pending)
        )


@dataclass(frozen=True, slots=True)
class AppliedMeasure:
    """A measure that applies to a subject, with the entries that trigger it."""

    code: str
    kind: MeasureKind
    description: str
    legal_basis: str
    triggered_by: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MeasuresCatalogue:
    scenarios: Mapping[str, str]
    rules: tuple[MeasureRule, ...]

    def knows(self, scenario: str) -> bool:
        return scenario in self.scenarios

    def measures_for(
        self, scenario: str, entries: Iterable[ListEntry], *, today: date
    ) -> list[AppliedMeasure]:
        """The measures of ``scenario`` the subject's ``entries`` trigger, in catalogue order."""
        held = list(entries)
        applied: list[AppliedMeasure] = []
        for rule in self.rules:
            if scenario not in rule.scenarios:
                continue
            keys = tuple(entry.entry_key for entry in held if rule.triggered_by(entry, today))
            if keys:
                applied.append(
                    AppliedMeasure(rule.code, rule.kind, rule.description, rule.legal_basis, keys)
                )
        return applied


def _names(value: Any, where: str, name: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise MeasuresError(f"{where}: {name!r} must be a non-empty list of names")
    return value


def _enum_set(kind: type[_E], values: list[str], where: str, name: str) -> frozenset[_E]:
    unknown = [v for v in values if v not in kind.__members__]
    if unknown:
        raise MeasuresError(f"{where}: unknown {name} {', '.join(unknown)}")
    return frozenset(kind(v) for v in values)


def parse_measures(raw: Any, *, source: str) -> MeasuresCatalogue:
    if not isinstance(raw, dict) or raw.get("version") != 1:
        raise MeasuresError(f"{source}: expected a mapping with 'version: 1'")
    scenarios = raw.get("scenarios")
    if not isinstance(scenarios, dict) or not scenarios:
        raise MeasuresError(f"{source}: 'scenarios' must map each scenario code to its name")
    missing = [s for s in CONTRACT_SCENARIOS if s not in scenarios]
    if missing:
        raise MeasuresError(f"{source}: contract scenarios missing: {', '.join(missing)}")
    rules: list[MeasureRule] = []
    seen: set[str] = set()
    for index, entry in enumerate(raw.get("measures") or []):
        where = f"{source}: measures[{index}]"
        if not isinstance(entry, dict):
            raise MeasuresError(f"{where}: expected a mapping")
        code = entry.get("code")
        if not isinstance(code, str) or not code or code != code.lower() or " " in code:
            raise MeasuresError(f"{where}: 'code' must be a lower-kebab-case name")
        if code in seen:
            raise MeasuresError(f"{where}: duplicate code {code!r}")
        seen.add(code)
        where = f"{source}: measure {code}"
        kind = entry.get("kind")
        if kind not in MeasureKind.__members__:
            raise MeasuresError(f"{where}: 'kind' must be REWARD or PUNISHMENT")
        rule_scenarios = _names(entry.get("scenarios"), where, "scenarios")
        if unknown := [s for s in rule_scenarios if s not in scenarios]:
            raise MeasuresError(f"{where}: undeclared scenario(s) {', '.join(unknown)}")
        subject_types = entry.get("subject_types", list(SubjectType.__members__))
        pending = entry.get("while_objection_pending", "apply" if kind == "REWARD" else "suspend")
        if pending not in ("apply", "suspend"):
            raise MeasuresError(f"{where}: 'while_objection_pending' must be apply or suspend")
        for text in ("description", "legal_basis"):
            if not isinstance(entry.get(text), str) or not entry[text].strip():
                raise MeasuresError(f"{where}: {text!r} is required")
        rules.append(
            MeasureRule(
                code=code,
                kind=MeasureKind(str(kind)),
                description=entry["description"].strip(),
                legal_basis=entry["legal_basis"].strip(),
                list_types=_enum_set(
                    ListType,
                    _names(entry.get("list_types"), where, "list_types"),
                    where,
                    "list type",
                ),
                scenarios=frozenset(rule_scenarios),
                subject_types=_enum_set(
                    SubjectType,
                    _names(subject_types, where, "subject_types"),
                    where,
                    "subject type",
                ),
                while_objection_pending=pending == "apply",
            )
        )
    return MeasuresCatalogue(
        scenarios={str(k): str(v) for k, v in scenarios.items()}, rules=tuple(rules)
    )


def load_measures(path: Path | None = None) -> MeasuresCatalogue:
    """Load ``path``, ``$CREDITLINK_MEASURES_FILE`` or the default catalogue."""
    chosen = path or Path(os.environ.get("CREDITLINK_MEASURES_FILE", DEFAULT_MEASURES_FILE))
    try:
        raw = yaml.safe_load(chosen.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise MeasuresError(f"{chosen}: cannot read the measures catalogue: {exc}") from exc
    return parse_measures(raw, source=str(chosen))
