"""Adding a city to the region: the one path that makes a city a live node (``city add``).

    python -m deploy.ops city add --key qingpu --code 310118 --name 上海青浦

writes, in a configuration folder laid out like ``deploy/config``:

* ``region.yaml``: the city's entry, with its topic prefix, the name of its personal score,
  a gRPC endpoint and an ops (health and metrics) endpoint per service;
* ``peer-policy.yaml``: the city as a caller of every rule that names all the other connected
  cities (rules for some cities only are left for the operator, and listed);
* ``score-incentives.yaml``: a scale for the city's personal score and an empty incentive
  catalogue per common grade, for its credit office to fill in;

and issues its development certificate and consent key beside the others'. Running it again
changes nothing. ``docs/adding-a-city.md`` is the runbook.

The files keep their comments and layout: entries are edited as text, and every edited file
is parsed again and must equal the intended document, then loaded by the services' own
loaders, before any file is replaced.
"""

from __future__ import annotations

import copy
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from services.common.certs import issue_dev_certificates
from services.common.policy import SELF, load_policy
from services.common.region import load_region
from services.scores.config import load_scores_config

REGION_FILE: Final = "region.yaml"
POLICY_FILE: Final = "peer-policy.yaml"
SCORES_FILE: Final = "score-incentives.yaml"
#: A city's gRPC and ops ports in its block, in this order from the block's base + 1 (the
#: demo's Suzhou: lists 24151, scores 24152, alerts 24153, intake 24154; ops 9151…).
PORT_ORDER: Final = ("lists", "scores", "alerts", "intake")
BLOCK: Final = 100
#: The scale a new city starts from, until its credit office publishes its own: 0–1000 in
#: whole points, one local band per common grade.
DEFAULT_SCALE: Final[Mapping[str, Any]] = {
    "min_score": 0,
    "max_score": 1000,
    "step": 1,
    "bands": [
        {"grade": "D", "label": "待提升", "min_score": 0, "max_score": 400},
        {"grade": "C", "label": "一般", "min_score": 400, "max_score": 600},
        {"grade": "B", "label": "良好", "min_score": 600, "max_score": 800},
        {"grade": "A", "label": "优秀", "min_score": 800, "max_score": 1000},
    ],
}
_CITY_KEY = re.compile(r"^[a-z][a-z0-9-]*$")


class CityAddError(ValueError):
    """The city cannot be added as asked; the message says why and nothing was written."""


@dataclass(frozen=True, slots=True)
class CityRequest:
    """What the operator asks for; what is left out comes from the region file or defaults."""

    key: str
    admin_code: str
    name: str | None = None
    score_scale: str | None = None
    topic_prefix: str | None = None
    host: str | None = None
    grpc_base: int | None = None
    ops_base: int | None = None


@dataclass
class Added:
    """What ``add_city`` did, one line per change, for the operator."""

    changes: list[str] = field(default_factory=list)
    left_to_operator: list[str] = field(default_factory=list)


# --- text editing of block-style YAML, comments kept ----------------------------------------
def _is_content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _block_end(lines: Sequence[str], start: int) -> int:
    """The index after the last content line of the block opened at ``lines[start]`` (comments
    and blank lines after it belong to what follows)."""
    indent, end = _indent(lines[start]), start + 1
    for index in range(start + 1, len(lines)):
        if _is_content(lines[index]):
            if _indent(lines[index]) <= indent:
                break
            end = index + 1
    return end


class _Flow(dict[str, Any]):
    """A mapping written on one line (``{grade: A, min_score: 0}``), as the files write the
    items of a list."""


class _Dumper(yaml.SafeDumper):
    """Block style with list items indented under their key, as the files are written."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


_Dumper.add_representer(
    _Flow, lambda dumper, data: dumper.represent_mapping("tag:yaml.org,2002:map", data, True)
)


def _key_line(lines: Sequence[str], key: str, start: int, end: int, indent: int) -> int | None:
    pattern = re.compile(rf"^ {{{indent}}}{re.escape(key)}:(\s|$)")
    return next((i for i in range(start, end) if pattern.match(lines[i])), None)


def _set_entry(text: str, section: str, key: str, value: Any, *, where: str) -> str:
    """``text`` with ``section.key`` set to ``value`` (replaced in place, or appended to the
    section), ``section`` being a top-level block mapping."""
    lines = text.splitlines(keepends=True)
    top = _key_line(lines, section, 0, len(lines), 0)
    if top is None:
        raise CityAddError(f"{where}: no top-level {section!r} mapping")
    end = _block_end(lines, top)
    children = [i for i in range(top + 1, end) if _is_content(lines[i])]
    indent = _indent(lines[children[0]]) if children else 2
    rendered = yaml.dump(
        {key: value}, Dumper=_Dumper, allow_unicode=True, sort_keys=False, width=100
    )
    block = [" " * indent + line + "\n" for line in rendered.splitlines()]
    at = _key_line(lines, key, top + 1, end, indent)
    if at is None:
        if end and not lines[end - 1].endswith("\n"):
            lines[end - 1] += "\n"
        lines[end:end] = block
    else:
        lines[at : _block_end(lines, at)] = block
    return "".join(lines)


_FLOW_CALLERS = re.compile(r"^(\s*(?:-\s+)?callers:\s*\[)([^\]]*)(\].*)$")


def _set_callers(text: str, new_callers: Mapping[int, list[str]], *, where: str) -> str:
    """``text`` with the callers of rule ``n`` (counted from 0) set for each ``n`` given;
    callers lists must be written in flow style (``callers: [a, b]``)."""
    lines = text.splitlines(keepends=True)
    callers_lines = [i for i, line in enumerate(lines) if re.match(r"^\s*(-\s+)?callers:", line)]
    for rule, callers in new_callers.items():
        if rule >= len(callers_lines):
            raise CityAddError(f"{where}: cannot find rule {rule + 1}'s callers")
        index = callers_lines[rule]
        body = lines[index].rstrip("\n")
        match = _FLOW_CALLERS.match(body)
        if match is None:
            raise CityAddError(
                f"{where}: rule {rule + 1}'s callers are not one [a, b] list; edit it by hand"
            )
        newline = "\n" if lines[index].endswith("\n") else ""
        lines[index] = f"{match[1]}{', '.join(callers)}{match[3]}{newline}"
    return "".join(lines)


# --- the plan ---------------------------------------------------------------------------------
def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


def _host(address: str) -> str:
    return address.rpartition(":")[0]


def _next_base(addresses: Sequence[str], default: int) -> int:
    """The base of the block after the highest port in use: blocks of :data:`BLOCK` ports,
    each city's ports at ``base + 1`` … (``24451`` after Changzhou's ``24351``…)."""
    if not addresses:
        return default
    return max(_port(a) for a in addresses) // BLOCK * BLOCK + BLOCK + 50


def city_entry(region_raw: Mapping[str, Any], request: CityRequest) -> dict[str, Any]:
    """The region file entry of the city: the file's own where it has one, the request's
    where it says, defaults (the next free port block, ``<key>.``) for the rest."""
    if not _CITY_KEY.match(request.key):
        raise CityAddError(f"city key {request.key!r}: lower-case letters, digits and '-'")
    code = request.admin_code
    if len(code) != 6 or not code.isdigit():
        raise CityAddError(f"admin code {code!r} is not a 6-digit GB/T 2260 code")
    cities: Mapping[str, Any] = region_raw.get("cities") or {}
    for other, entry in cities.items():
        if other != request.key and str(entry.get("admin_code")) == code:
            raise CityAddError(f"admin code {code} is already the region's city {other!r}")
    known: Mapping[str, Any] = cities.get(request.key) or {}
    if known and str(known.get("admin_code")) != code:
        raise CityAddError(
            f"{request.key!r} is in the region file with admin code {known.get('admin_code')}, "
            f"not {code}"
        )
    name = request.name or known.get("name")
    if not name:
        raise CityAddError(f"{request.key!r} is a new city: give its --name (e.g. 上海青浦)")

    others = [e for k, e in cities.items() if k != request.key]
    grpc_in_use = [a for e in others for a in (e.get("endpoints") or {}).values()]
    ops_in_use = [a for e in others for a in (e.get("ops") or {}).values()]
    host = request.host or (_host(grpc_in_use[0]) if grpc_in_use else "127.0.0.1")

    def block(
        base: int | None, current: Mapping[str, str], in_use: list[str], first: int
    ) -> dict[str, str]:
        if base is None and set(current) >= set(PORT_ORDER):
            return dict(current)
        start = base if base is not None else _next_base(in_use, first)
        return {s: f"{host}:{start + 1 + n}" for n, s in enumerate(PORT_ORDER)}

    endpoints = block(request.grpc_base, known.get("endpoints") or {}, grpc_in_use, 24150)
    ops = block(request.ops_base, known.get("ops") or {}, ops_in_use, 9150)
    taken = {_port(a) for a in (*grpc_in_use, *ops_in_use)}
    clash = sorted(taken & {_port(a) for a in (*endpoints.values(), *ops.values())})
    if clash:
        raise CityAddError(f"ports {clash} are another city's; choose --grpc-base/--ops-base")
    prefix = request.topic_prefix or known.get("topic_prefix") or f"{request.key}."
    if not prefix.endswith("."):
        raise CityAddError(f"topic prefix {prefix!r} must end with '.' (e.g. {request.key}.)")
    entry = {
        "name": name,
        "admin_code": code,
        "topic_prefix": prefix,
        "score_scale": request.score_scale or known.get("score_scale") or f"{name}信用分",
        "endpoints": endpoints,
        "ops": ops,
    }
    return {**entry, **{k: v for k, v in known.items() if k not in entry}}


def _policy_callers(
    policy_raw: Mapping[str, Any], key: str, peers: set[str]
) -> tuple[dict[int, list[str]], list[str]]:
    """Rule index -> callers with ``key`` added, for every rule naming all of ``peers``; and a
    line per rule left as it is because it names some of them only."""
    updates: dict[int, list[str]] = {}
    left: list[str] = []
    for index, rule in enumerate(policy_raw.get("rules") or []):
        callers = [str(c) for c in rule.get("callers") or []]
        # "self" and "self/<role>" name the serving city's own callers, not peers.
        named = {c for c in callers if c.partition("/")[0] != SELF}
        if key in callers or not named:
            continue
        description = " ".join(str(rule.get("description", "")).split())
        if peers <= named:
            updates[index] = [*callers, key]
        else:
            left.append(f"rule {index + 1} ({description[:60]}): callers {callers}")
    return updates, left


# --- the edit -------------------------------------------------------------------------------
def _read(path: Path) -> tuple[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
        return text, yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        raise CityAddError(f"{path}: cannot read: {exc}") from exc


def _checked(path: Path, text: str, expected: Any) -> str:
    if yaml.safe_load(text) != expected:
        raise CityAddError(f"{path}: editing it as text did not give the intended document")
    return text


def add_city(config_dir: Path, cert_dir: Path, request: CityRequest) -> Added:
    """Make ``request.key`` a connected city of the region in ``config_dir`` (see the module
    docstring); nothing is written unless every file is right."""
    added = Added()
    region_path, policy_path, scores_path = (
        config_dir / REGION_FILE,
        config_dir / POLICY_FILE,
        config_dir / SCORES_FILE,
    )
    region_text, region_raw = _read(region_path)
    policy_text, policy_raw = _read(policy_path)
    scores_text, scores_raw = _read(scores_path)
    key = request.key

    entry = city_entry(region_raw, request)
    new_region = copy.deepcopy(region_raw)
    if new_region["cities"].get(key) != entry:
        new_region["cities"][key] = entry
        region_text = _set_entry(region_text, "cities", key, entry, where=str(region_path))
        added.changes.append(
            f"{REGION_FILE}: cities.{key} ({entry['admin_code']}, prefix {entry['topic_prefix']}"
            f", lists {entry['endpoints']['lists']}, ops {entry['ops']['lists']}…)"
        )
    region_text = _checked(region_path, region_text, new_region)

    peers = {k for k, e in region_raw["cities"].items() if k != key and (e.get("endpoints") or {})}
    updates, added.left_to_operator = _policy_callers(policy_raw, key, peers)
    new_policy = copy.deepcopy(policy_raw)
    for index, callers in updates.items():
        new_policy["rules"][index]["callers"] = callers
    if updates:
        policy_text = _set_callers(policy_text, updates, where=str(policy_path))
        added.changes.append(f"{POLICY_FILE}: {key} a caller of {len(updates)} rule(s)")
    policy_text = _checked(policy_path, policy_text, new_policy)

    new_scores = copy.deepcopy(scores_raw)
    if key not in (new_scores.get("scales") or {}):
        scale = copy.deepcopy(dict(DEFAULT_SCALE))
        new_scores.setdefault("scales", {})[key] = scale
        written = {**scale, "bands": [_Flow(band) for band in scale["bands"]]}
        scores_text = _set_entry(scores_text, "scales", key, written, where=str(scores_path))
        added.changes.append(
            f"{SCORES_FILE}: scales.{key} ({entry['score_scale']}, "
            f"{DEFAULT_SCALE['min_score']}–{DEFAULT_SCALE['max_score']})"
        )
    if key not in (new_scores.get("incentives") or {}):
        grades = [c["grade"] for c in (scores_raw.get("common_grades") or {}).get("cuts") or []]
        new_scores.setdefault("incentives", {})[key] = {grade: [] for grade in grades}
        scores_text = _set_entry(
            scores_text, "incentives", key, new_scores["incentives"][key], where=str(scores_path)
        )
        added.changes.append(f"{SCORES_FILE}: incentives.{key} (none yet, per common grade)")
    scores_text = _checked(scores_path, scores_text, new_scores)

    _write_checked({region_path: region_text, policy_path: policy_text, scores_path: scores_text})
    cities = sorted(new_region["cities"])
    for line in issue_dev_certificates(cert_dir, cities):
        if line.startswith("issued"):
            added.changes.append(f"certs: {line}")
    return added


def _write_checked(files: Mapping[Path, str]) -> None:
    """Load the new files with the services' loaders, then replace the old ones."""
    staged: dict[Path, Path] = {}
    try:
        for path, text in files.items():
            handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text)
            staged[path] = Path(name)
        by_name = {path.name: staged_path for path, staged_path in staged.items()}
        try:
            region = load_region(by_name[REGION_FILE])
            load_policy(by_name[POLICY_FILE], cities=region.cities)
            load_scores_config(by_name[SCORES_FILE], region=region)
        except ValueError as exc:
            raise CityAddError(f"the edited configuration does not load: {exc}") from exc
        for path, staged_path in staged.items():
            if path.read_text(encoding="utf-8") != files[path]:
                staged_path.replace(path)
    finally:
        for staged_path in staged.values():
            staged_path.unlink(missing_ok=True)
