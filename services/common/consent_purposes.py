"""What each consent purpose covers: the methods and scenarios a token's ``pur`` claim opens.

A natural person agrees to one purpose ("a credit check for civil-service hiring"), not to
every use the requesting city may think of. The catalogue (``deploy/config/consent-purposes.yaml``,
one for the region: every city must read a purpose the same way) names each purpose's code, its
description as shown to the person, the peer methods it covers and, for methods that carry a
scenario, the scenarios. The serving city honours a token only for a call its purpose covers
(docs/trust.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from services.common.settings import REPO_ROOT

DEFAULT_PURPOSES_FILE = REPO_ROOT / "deploy/config/consent-purposes.yaml"


class PurposeCatalogueError(ValueError):
    """The catalogue file is unreadable or malformed; the message names the entry."""


@dataclass(frozen=True, slots=True)
class ConsentPurpose:
    code: str
    description: str
    methods: frozenset[str]
    #: Scenario names (``SCENARIO_…``) the purpose covers; None for methods without one.
    scenarios: frozenset[str] | None


class ConsentPurposes:
    """The region's purposes; :meth:`covering` answers which of them cover a call."""

    def __init__(self, purposes: Iterable[ConsentPurpose]) -> None:
        self._purposes = {purpose.code: purpose for purpose in purposes}

    def __contains__(self, code: object) -> bool:
        return code in self._purposes

    def __getitem__(self, code: str) -> ConsentPurpose:
        return self._purposes[code]

    def codes(self) -> list[str]:
        return sorted(self._purposes)

    def covering(self, method: str, scenario: str | None) -> frozenset[str]:
        """The purpose codes under which a call of ``method`` in ``scenario`` (None: the
        method has no scenario) may use a person's data."""
        return frozenset(
            purpose.code
            for purpose in self._purposes.values()
            if method in purpose.methods
            and (purpose.scenarios is None or scenario in purpose.scenarios)
        )


def load_purposes(path: Path | None = None) -> ConsentPurposes:
    """The catalogue from ``path``, ``$CREDITLINK_CONSENT_PURPOSES`` or the default file."""
    chosen = path or Path(os.environ.get("CREDITLINK_CONSENT_PURPOSES", DEFAULT_PURPOSES_FILE))
    try:
        raw = yaml.safe_load(chosen.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise PurposeCatalogueError(f"{chosen}: cannot read the purpose catalogue: {exc}") from exc
    return parse_purposes(raw, source=str(chosen))


def parse_purposes(raw: Any, *, source: str = "<purposes>") -> ConsentPurposes:
    if not isinstance(raw, Mapping) or raw.get("version") != 1:
        raise PurposeCatalogueError(f"{source}: expected a mapping with version: 1")
    entries = raw.get("purposes")
    if not isinstance(entries, Mapping) or not entries:
        raise PurposeCatalogueError(f"{source}: 'purposes' must name at least one purpose")
    purposes = []
    for code, entry in entries.items():
        where = f"{source}: purpose {code!r}"
        if not isinstance(code, str) or not code or not isinstance(entry, Mapping):
            raise PurposeCatalogueError(f"{where}: expected a code and a mapping")
        methods = entry.get("methods")
        if not isinstance(methods, list) or not methods:
            raise PurposeCatalogueError(f"{where}: 'methods' must list full method names")
        for method in methods:
            if not isinstance(method, str) or not method.startswith("/creditlink.peer.v1."):
                raise PurposeCatalogueError(f"{where}: {method!r} is not a full method name")
        scenarios = entry.get("scenarios")
        if scenarios is not None and (
            not isinstance(scenarios, list)
            or not all(isinstance(s, str) and s.startswith("SCENARIO_") for s in scenarios)
        ):
            raise PurposeCatalogueError(f"{where}: 'scenarios' must list SCENARIO_… names")
        description = entry.get("description")
        if not isinstance(description, str) or not description.strip():
            raise PurposeCatalogueError(f"{where}: a description is required")
        purposes.append(
            ConsentPurpose(
                code=code,
                description=description.strip(),
                methods=frozenset(methods),
                scenarios=None if scenarios is None else frozenset(scenarios),
            )
        )
    return ConsentPurposes(purposes)
