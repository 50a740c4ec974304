"""The region registry: cities, their administrative codes and peer endpoints.

Loaded from deploy configuration (``deploy/config/region.yaml`` by default) so an operator
adds a city or moves an endpoint without a code change.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.common.settings import Settings


class RegionConfigError(ValueError):
    """The region file is malformed; the message names the file and the entry."""


@dataclass(frozen=True, slots=True)
class City:
    key: str
    name: str
    admin_code: str
    topic_prefix: str
    score_scale: str | None = None
    endpoints: Mapping[str, str] = field(default_factory=dict)
    #: service -> host:port of its health and metrics endpoint (``observability.OpsServer``)
    ops: Mapping[str, str] = field(default_factory=dict)

    @property
    def connected(self) -> bool:
        return bool(self.endpoints)

    def endpoint(self, service: str) -> str:
        try:
            return self.endpoints[service]
        except KeyError:
            raise RegionConfigError(f"city {self.key!r} has no {service!r} endpoint") from None


@dataclass(frozen=True, slots=True)
class Region:
    id: str
    name: str
    cities: Mapping[str, City]
    #: Ids of the pseudonym keys the region uses (the current one first, an older one while
    #: keys rotate); empty: not stated, nothing is checked (services/common/pseudonym.py).
    pseudonym_key_ids: tuple[str, ...] = ()

    def city(self, key: str) -> City:
        try:
            return self.cities[key]
        except KeyError:
            known = ", ".join(sorted(self.cities))
            raise RegionConfigError(f"unknown city {key!r}; known: {known}") from None

    def by_admin_code(self, admin_code: str) -> City | None:
        """The city whose division code is ``admin_code``, or whose prefecture contains it."""
        exact = [c for c in self.cities.values() if c.admin_code == admin_code]
        if exact:
            return exact[0]
        prefecture = admin_code[:4] + "00"
        matches = [c for c in self.cities.values() if c.admin_code == prefecture]
        return matches[0] if matches else None

    def peers_of(self, key: str) -> list[City]:
        """Connected cities other than ``key``: the ones a node replicates with."""
        self.city(key)
        return [c for k, c in self.cities.items() if k != key and c.connected]


def _require(entry: Mapping[str, Any], name: str, where: str) -> str:
    value = entry.get(name)
    if not isinstance(value, str) or not value:
        raise RegionConfigError(f"{where}: {name!r} is required and must be a string")
    return value


@functools.cache
def _city_code(region_file: Path, city: str) -> str:
    return load_region(region_file).city(city).admin_code


def city_code(settings: Settings) -> str:
    """The admin code of the node's city, from its region file."""
    return _city_code(settings.region_file, settings.city)


def load_region(path: Path) -> Region:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise RegionConfigError(f"{path}: cannot read region file: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("cities"), dict):
        raise RegionConfigError(f"{path}: expected a mapping with a 'cities' mapping")
    meta = raw.get("region") or {}
    cities: dict[str, City] = {}
    for key, entry in raw["cities"].items():
        where = f"{path}: cities.{key}"
        if not isinstance(entry, dict):
            raise RegionConfigError(f"{where}: expected a mapping")
        code = _require(entry, "admin_code", where)
        if len(code) != 6 or not code.isdigit():
            raise RegionConfigError(f"{where}: admin_code {code!r} is not a 6-digit GB/T 2260 code")
        endpoints = entry.get("endpoints") or {}
        if not isinstance(endpoints, dict):
            raise RegionConfigError(f"{where}: endpoints must be a mapping service -> host:port")
        cities[str(key)] = City(
            key=str(key),
            name=_require(entry, "name", where),
            admin_code=code,
            topic_prefix=str(entry.get("topic_prefix", f"{key}.")),
            score_scale=entry.get("score_scale"),
            endpoints={str(k): str(v) for k, v in endpoints.items()},
            ops={str(k): str(v) for k, v in (entry.get("ops") or {}).items()},
        )
    key_ids = meta.get("pseudonym_key_ids") or []
    if not isinstance(key_ids, list) or not all(
        isinstance(k, str) and len(k) == 8 and all(c in "0123456789abcdef" for c in k)
        for k in key_ids
    ):
        raise RegionConfigError(
            f"{path}: region.pseudonym_key_ids must list 8-hex-character key ids"
        )
    return Region(
        id=str(meta.get("id", "region")),
        name=str(meta.get("name", "")),
        cities=cities,
        pseudonym_key_ids=tuple(key_ids),
    )
