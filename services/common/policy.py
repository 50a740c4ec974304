"""The authorization policy for peer calls: which city may call which method and see which data.

The policy is deploy configuration (``deploy/config/peer-policy.yaml``, or the file named by
``CREDITLINK_PEER_POLICY``) and **denies by default**: a call is allowed only when a rule
names the calling city and role (from its verified certificate, services/common/roles.py),
the method, and — when the request is about a subject — the subject's data class. File
format::

    version: 1
    data_classes:                     # every class a rule may name, with what it covers
      organisation: ...
      natural_person: ...
    rules:
      - description: why the rule exists (shown in reviews, not evaluated)
        servers: [suzhou]             # optional: serving cities the rule applies to (default all)
        callers: [wuxi, changzhou]    # city keys (the city's node); "self" is the serving
                                      # city's; "<city>/department", "self/regulator": a role
                                      # of the city (any department, any regulator)
        methods:                      # "/package.Service/Method" or "/package.Service/*"
          - /creditlink.peer.v1.CreditCheckService/CheckSubject
        data_classes: [organisation]  # what the caller may see through these methods

A rule with an unknown data class, a caller that is not a city of the region, or a malformed
method is a configuration error: the node refuses to start rather than run a policy that
does not mean what it says.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from services.common.identifiers import has_uscc_shape, is_resident_id
from services.common.pseudonym import parse_person_key
from services.common.roles import POLICY_ROLES
from services.common.settings import REPO_ROOT

DEFAULT_POLICY_FILE = REPO_ROOT / "deploy" / "config" / "peer-policy.yaml"
SELF = "self"
ORGANISATION = "organisation"
NATURAL_PERSON = "natural_person"


class PolicyError(ValueError):
    """The policy file is malformed; the message names the file and the rule."""


# Longer than any well-formed key; a longer value is refused without being read.
_MAX_SUBJECT_KEY = 2 + 6 + 1 + 8 + 1 + 64


def subject_key_problem(subject_key: str) -> str | None:
    """Why ``subject_key`` is not a well-formed subject key, or ``None`` when it is one.

    Well formed: ``L:`` + the shape of a unified social credit code, or ``N:`` + a pseudonym
    (``<64 lowercase hex>`` or ``<6-digit division>.<8 lowercase hex key id>.<64 lowercase
    hex>``). A raw resident ID number is refused in every form, also behind ``L:``. The
    answer never repeats the key: a malformed key may be personal data.
    """
    if len(subject_key) > _MAX_SUBJECT_KEY:
        return "subject_key is longer than any subject key"
    prefix, value = subject_key[:2], subject_key[2:]
    if prefix == "L:":
        if not has_uscc_shape(value):
            return "an L: subject key is L: and 18 characters of a unified social credit code"
        if is_resident_id(value):
            return "an L: subject key holds a unified social credit code, not an ID number"
        return None
    if prefix == "N:":
        # docs/design.md §4.8, services/common/pseudonym.py: the pseudonym's one definition.
        if parse_person_key(subject_key) is None:
            return "an N: subject key is N: and a pseudonym, never an ID number"
        return None
    return "subject_key must start with L: or N:"


def is_valid_subject_key(subject_key: str) -> bool:
    return subject_key_problem(subject_key) is None


def data_class_of(subject_key: str) -> str | None:
    """The data class a subject key belongs to (``L:`` organisation, ``N:`` natural person)."""
    if subject_key.startswith("L:"):
        return ORGANISATION
    if subject_key.startswith("N:"):
        return NATURAL_PERSON
    return None


@dataclass(frozen=True, slots=True)
class Rule:
    callers: frozenset[str]
    methods: frozenset[str]
    data_classes: frozenset[str]
    servers: frozenset[str] | None
    description: str

    def matches_method(self, method: str) -> bool:
        if method in self.methods:
            return True
        service = method.rsplit("/", 1)[0]
        return f"{service}/*" in self.methods

    def matches_caller(self, caller: str, server: str) -> bool:
        """``caller`` is a principal (services/common/roles.py, ``Role.principal``):
        ``<city>`` for a node, ``<city>/<role>`` for a department or regulator."""
        if caller in self.callers:
            return True
        city, _, role = caller.partition("/")
        if city != server:
            return False
        return f"{SELF}/{role}" in self.callers if role else SELF in self.callers

    def applies_to(self, server: str) -> bool:
        return self.servers is None or server in self.servers


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy grants one caller on one method: the data classes it may see."""

    allowed: bool
    data_classes: frozenset[str]

    def permits(self, data_class: str | None) -> bool:
        return self.allowed and (data_class is None or data_class in self.data_classes)


@dataclass(frozen=True, slots=True)
class Policy:
    data_classes: Mapping[str, str]
    rules: tuple[Rule, ...]

    def decide(self, *, server: str, caller: str, method: str) -> Decision:
        """Union of the data classes of every rule naming this caller and method; deny if none."""
        granted: set[str] = set()
        allowed = False
        for rule in self.rules:
            if (
                rule.applies_to(server)
                and rule.matches_caller(caller, server)
                and rule.matches_method(method)
            ):
                allowed = True
                granted |= rule.data_classes
        return Decision(allowed=allowed, data_classes=frozenset(granted))


def _strings(value: Any, where: str, name: str) -> frozenset[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{where}: {name!r} must be a non-empty list of strings")
    return frozenset(value)


def parse_policy(raw: Any, *, source: str, cities: Collection[str]) -> Policy:
    if not isinstance(raw, dict) or raw.get("version") != 1:
        raise PolicyError(f"{source}: expected a mapping with 'version: 1'")
    classes = raw.get("data_classes")
    if not isinstance(classes, dict) or not classes:
        raise PolicyError(f"{source}: 'data_classes' must map each class to its description")
    rules: list[Rule] = []
    for index, entry in enumerate(raw.get("rules") or []):
        where = f"{source}: rules[{index}]"
        if not isinstance(entry, dict):
            raise PolicyError(f"{where}: expected a mapping")
        callers = _strings(entry.get("callers"), where, "callers")
        known = {*cities, SELF}
        unknown = sorted(
            caller
            for caller in callers
            if (city_role := caller.partition("/"))[0] not in known
            or (city_role[1] and city_role[2] not in POLICY_ROLES)
        )
        if unknown:
            raise PolicyError(f"{where}: unknown caller(s) {', '.join(unknown)}")
        servers = None
        if "servers" in entry:
            servers = _strings(entry["servers"], where, "servers")
            if unknown := sorted(servers - set(cities)):
                raise PolicyError(f"{where}: unknown server(s) {', '.join(unknown)}")
        methods = _strings(entry.get("methods"), where, "methods")
        for method in methods:
            service, _, name = method.rpartition("/")
            if not method.startswith("/") or not service[1:] or not name:
                raise PolicyError(f"{where}: method {method!r} is not '/package.Service/Method'")
        data_classes = _strings(entry.get("data_classes"), where, "data_classes")
        if unknown := sorted(data_classes - set(classes)):
            raise PolicyError(f"{where}: unknown data class(es) {', '.join(unknown)}")
        rules.append(
            Rule(
                callers=callers,
                methods=methods,
                data_classes=data_classes,
                servers=servers,
                description=str(entry.get("description", "")),
            )
        )
    return Policy(data_classes={str(k): str(v) for k, v in classes.items()}, rules=tuple(rules))


def load_policy(path: Path | None = None, *, cities: Collection[str]) -> Policy:
    """Load the policy from ``path``, ``$CREDITLINK_PEER_POLICY`` or the default file."""
    chosen = path or Path(os.environ.get("CREDITLINK_PEER_POLICY", DEFAULT_POLICY_FILE))
    try:
        raw = yaml.safe_load(chosen.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise PolicyError(f"{chosen}: cannot read policy: {exc}") from exc
    return parse_policy(raw, source=str(chosen), cities=cities)
