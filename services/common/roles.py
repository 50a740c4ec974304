"""Who a certificate names: a city and a role in it (docs/trust.md, "Roles").

Every creditlink certificate carries exactly one URI SAN of the ``creditlink`` trust domain,
and that URI is the caller's whole identity:

=====================================================================  ========================
URI SAN                                                                role
=====================================================================  ========================
``spiffe://creditlink/city/<city>``                                    the city's node (its
                                                                       services and their
                                                                       calls to peers)
``spiffe://creditlink/city/<city>/department/<USCC>``                  a department of the
                                                                       city, by its unified
                                                                       social credit code
``spiffe://creditlink/city/<city>/regulator/<USCC>/domains/<D>.<D>``    a regulator of the city
                                                                       (its code) and the
                                                                       supervision domains it
                                                                       acts in
=====================================================================  ========================

Path segments keep to the SPIFFE ID alphabet (letters, digits, ``.``, ``-``, ``_``). The
peer policy names a role as ``<city>/<role>`` or ``self/<role>`` (services/common/policy.py);
a bare ``<city>`` is the city's node.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from services.common.identifiers import has_uscc_shape, is_resident_id
from services.common.settings import REPO_ROOT

CITY_URI_PREFIX: Final = "spiffe://creditlink/city/"
DEFAULT_ROLES_FILE: Final = REPO_ROOT / "deploy" / "config" / "city-roles.yaml"
#: ``acts_for`` entry meaning every department of the city.
EVERY_DEPARTMENT: Final = "*"
NODE: Final = "node"
DEPARTMENT: Final = "department"
REGULATOR: Final = "regulator"
#: The roles a policy rule may name after ``<city>/`` (the node is the bare city).
POLICY_ROLES: Final = (DEPARTMENT, REGULATOR)

_CITY = re.compile(r"[a-z][a-z0-9_-]{0,39}")
_DOMAIN = re.compile(r"[A-Z][A-Z_]{0,39}")


def _code_problem(code: str | None) -> bool:
    """Not the shape of a unified social credit code, or a resident ID number (which has that
    shape too, and must not reach a certificate or the audit)."""
    return code is None or not has_uscc_shape(code) or is_resident_id(code)


class RoleError(ValueError):
    """A role that cannot be named in a certificate; the message says why."""


@dataclass(frozen=True, slots=True)
class Role:
    """A city and what its certificate may do there.

    Example::

        Role.department("suzhou", "11320500MB1234567X").uri()
        # 'spiffe://creditlink/city/suzhou/department/11320500MB1234567X'
        parse_role_uri("spiffe://creditlink/city/wuxi")  # Role(city='wuxi', kind='node', ...)
    """

    city: str
    kind: str = NODE
    department_code: str | None = None
    regulator: str | None = None
    domains: frozenset[str] = frozenset()

    @classmethod
    def node(cls, city: str) -> Role:
        return cls._checked(city, NODE)

    @classmethod
    def department(cls, city: str, department_code: str) -> Role:
        return cls._checked(city, DEPARTMENT, department_code=department_code)

    @classmethod
    def regulator_of(cls, city: str, regulator: str, domains: Iterable[str]) -> Role:
        return cls._checked(city, REGULATOR, regulator=regulator, domains=frozenset(domains))

    @classmethod
    def _checked(cls, city: str, kind: str, **fields: object) -> Role:
        role = cls(city, kind, **fields)  # type: ignore[arg-type]
        if (problem := role.problem()) is not None:
            raise RoleError(problem)
        return role

    def problem(self) -> str | None:
        """Why this role cannot be named in a certificate, or None."""
        if not _CITY.fullmatch(self.city):
            return f"city {self.city!r} is not a city key"
        if self.kind == NODE:
            return None
        if self.kind == DEPARTMENT:
            if _code_problem(self.department_code):
                return "a department is named by its 18-character unified social credit code"
            return None
        if self.kind == REGULATOR:
            if _code_problem(self.regulator):
                return "a regulator is named by its 18-character unified social credit code"
            if not self.domains or not all(_DOMAIN.fullmatch(d) for d in self.domains):
                return "a regulator acts in one or more supervision domains (e.g. FOOD_DRUG)"
            return None
        return f"unknown role {self.kind!r}"

    def uri(self) -> str:
        base = f"{CITY_URI_PREFIX}{self.city}"
        if self.kind == DEPARTMENT:
            return f"{base}/{DEPARTMENT}/{self.department_code}"
        if self.kind == REGULATOR:
            return f"{base}/{REGULATOR}/{self.regulator}/domains/{'.'.join(sorted(self.domains))}"
        return base

    @property
    def principal(self) -> str:
        """How the peer policy names this role: ``<city>`` for a node, else ``<city>/<role>``."""
        return self.city if self.kind == NODE else f"{self.city}/{self.kind}"

    @property
    def audit_role(self) -> str:
        """The role as the audit records it: ``node``, ``department:<USCC>`` or
        ``regulator:<USCC>`` (codes of organs of state, never personal data)."""
        if self.kind == NODE:
            return NODE
        return f"{self.kind}:{self.department_code or self.regulator}"

    @property
    def name(self) -> str:
        """A short name for files, logs and the audit (no personal data: codes and ids only)."""
        if self.kind == DEPARTMENT:
            return f"{self.city}.department.{self.department_code}"
        if self.kind == REGULATOR:
            return f"{self.city}.regulator.{self.regulator}"
        return self.city


def parse_role_uri(uri: str) -> Role | None:
    """The role a creditlink URI SAN names, or None if it is not one well-formed role URI."""
    if not uri.startswith(CITY_URI_PREFIX):
        return None
    parts = uri.removeprefix(CITY_URI_PREFIX).split("/")
    if len(parts) == 1:
        role = Role(parts[0])
    elif len(parts) == 3 and parts[1] == DEPARTMENT:
        role = Role(parts[0], DEPARTMENT, department_code=parts[2])
    elif len(parts) == 5 and parts[1] == REGULATOR and parts[3] == "domains":
        domains = parts[4].split(".")
        if len(set(domains)) != len(domains):
            return None
        role = Role(parts[0], REGULATOR, regulator=parts[2], domains=frozenset(domains))
    else:
        return None
    return role if role.problem() is None else None


def is_creditlink_uri(uri: str) -> bool:
    """Whether a URI SAN claims a creditlink identity at all (well formed or not)."""
    return uri.startswith(CITY_URI_PREFIX)


@dataclass(frozen=True, slots=True)
class RegulatorEntry:
    code: str
    name: str
    domains: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CityRoles:
    """The departments that act for others, and the development regulators, of every city
    (``deploy/config/city-roles.yaml``).

    Example::

        roles = load_city_roles(cities=region.cities.keys())
        roles.may_act_for("suzhou", actor="11320500014160128E", owner="11320500MB1234567X")
    """

    acts_for: Mapping[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    regulators: Mapping[str, tuple[RegulatorEntry, ...]] = field(default_factory=dict)

    def departments_of(self, city: str, department: str) -> frozenset[str] | None:
        """The department codes ``department`` of ``city`` submits for (itself included);
        None for every department of the city."""
        named = self.acts_for.get((city, department), frozenset())
        if EVERY_DEPARTMENT in named:
            return None
        return frozenset({department, *named})

    def may_act_for(self, city: str, *, actor: str, owner: str) -> bool:
        """Whether ``actor`` may change what department ``owner`` of ``city`` decided."""
        allowed = self.departments_of(city, actor)
        return allowed is None or owner in allowed

    def regulator_roles(self, city: str) -> list[Role]:
        return [
            Role.regulator_of(city, entry.code, entry.domains)
            for entry in self.regulators.get(city, ())
        ]

    def regulator_for(
        self, city: str, domains: Iterable[str] = (), code: str | None = None
    ) -> Role | None:
        """The first regulator of ``city`` (with ``code``, if given) acting in every one of
        ``domains``, or None."""
        wanted = set(domains)
        return next(
            (
                role
                for role in self.regulator_roles(city)
                if (code is None or role.regulator == code) and wanted <= role.domains
            ),
            None,
        )


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise RoleError(f"{where}: expected a list")
    return value


def parse_city_roles(raw: Any, *, source: str, cities: Collection[str]) -> CityRoles:
    if not isinstance(raw, dict) or raw.get("version") != 1:
        raise RoleError(f"{source}: expected a mapping with 'version: 1'")
    acts_for: dict[tuple[str, str], frozenset[str]] = {}
    regulators: dict[str, tuple[RegulatorEntry, ...]] = {}
    for city, entry in (raw.get("cities") or {}).items():
        where = f"{source}: cities.{city}"
        if city not in cities:
            raise RoleError(f"{where}: not a city of the region")
        if not isinstance(entry, dict):
            raise RoleError(f"{where}: expected a mapping")
        for index, department in enumerate(_list(entry.get("departments"), where)):
            at = f"{where}.departments[{index}]"
            code = str(department.get("code", "")) if isinstance(department, dict) else ""
            if (problem := Role(city, DEPARTMENT, department_code=code).problem()) is not None:
                raise RoleError(f"{at}: {problem}")
            named = [str(v) for v in _list(department.get("acts_for"), at)]
            for other in named:
                if other != EVERY_DEPARTMENT and _code_problem(other):
                    raise RoleError(f"{at}: acts_for {other!r} is not a department code or '*'")
            acts_for[(city, code)] = frozenset(named)
        found: list[RegulatorEntry] = []
        for index, regulator in enumerate(_list(entry.get("regulators"), where)):
            at = f"{where}.regulators[{index}]"
            if not isinstance(regulator, dict):
                raise RoleError(f"{at}: expected a mapping")
            item = RegulatorEntry(
                code=str(regulator.get("code", "")),
                name=str(regulator.get("name", "")),
                domains=tuple(str(d) for d in _list(regulator.get("domains"), at)),
            )
            regulator_role = Role(
                city, REGULATOR, regulator=item.code, domains=frozenset(item.domains)
            )
            if (text := regulator_role.problem()) is not None:
                raise RoleError(f"{at}: {text}")
            found.append(item)
        regulators[city] = tuple(found)
    return CityRoles(acts_for=acts_for, regulators=regulators)


def load_city_roles(path: Path | None = None, *, cities: Collection[str]) -> CityRoles:
    """From ``path``, ``$CREDITLINK_CITY_ROLES`` or the default file."""
    chosen = path or Path(os.environ.get("CREDITLINK_CITY_ROLES", DEFAULT_ROLES_FILE))
    try:
        raw = yaml.safe_load(chosen.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise RoleError(f"{chosen}: cannot read city roles: {exc}") from exc
    return parse_city_roles(raw, source=str(chosen), cities=cities)
