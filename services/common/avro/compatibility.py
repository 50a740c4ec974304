"""Schema compatibility: every topic's value schema history against the topic's mode."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

from services.common.avro.store import TOPICS_FILE, SchemaStore


class CompatibilityMode(StrEnum):
    """Schema-evolution rule of a topic (the Confluent Schema Registry vocabulary)."""

    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"
    NONE = "NONE"


DEFAULT_COMPATIBILITY: Final = CompatibilityMode.BACKWARD_TRANSITIVE


def _reader_writer_pairs(count: int, mode: CompatibilityMode) -> list[tuple[int, int]]:
    """(reader index, writer index) pairs the mode requires over versions 0..count-1.

    Every version is checked as if it had just been added on top of the ones before it, so the
    whole history obeys the rule, not only the newest step.
    """
    if mode is CompatibilityMode.NONE:
        return []
    transitive = mode.value.endswith("_TRANSITIVE")
    backward = mode.value.startswith(("BACKWARD", "FULL"))
    forward = mode.value.startswith(("FORWARD", "FULL"))
    pairs: list[tuple[int, int]] = []
    for newer in range(1, count):
        for older in range(newer) if transitive else (newer - 1,):
            if backward:
                pairs.append((newer, older))  # consumers upgraded first read old data
            if forward:
                pairs.append((older, newer))  # consumers not yet upgraded read new data
    return pairs


def check_compatibility(
    store: SchemaStore,
    name: str,
    mode: CompatibilityMode | str = DEFAULT_COMPATIBILITY,
) -> list[str]:
    """Problems that break ``mode`` across the stored versions of ``name``; empty when none.

    Uses the Apache ``avro`` package's ``ReaderWriterCompatibilityChecker`` (an independent
    implementation of the specification's resolution rules), imported here only because the
    CLI and tests are its only users.
    """
    from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
    from avro.schema import parse as parse_apache

    mode = CompatibilityMode(mode)
    versions = store.versions(name)
    pairs = _reader_writer_pairs(len(versions), mode)
    if not pairs:
        return []
    apache = [parse_apache(json.dumps(v.schema)) for v in versions]
    problems: list[str] = []
    for reader_index, writer_index in pairs:
        # The checker's __init__ is the one unannotated function of avro's typed API.
        checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
        result = checker.get_compatibility(apache[reader_index], apache[writer_index])
        if result.compatibility is SchemaCompatibilityType.incompatible:
            reader, writer = versions[reader_index], versions[writer_index]
            details = "; ".join(sorted(result.messages)) or "incompatible"
            where = ", ".join(sorted(result.locations))
            problems.append(
                f"{reader.full_name} v{reader.version} cannot read data written with "
                f"v{writer.version} ({mode.value}): {details} at {where}"
            )
    return problems


@dataclass(frozen=True, slots=True)
class CatalogueBinding:
    """A topic of ``schemas/topics.yaml`` with its value schema and compatibility mode."""

    topic: str
    value: str
    compatibility: CompatibilityMode


def read_catalogue_bindings(path: Path | str | None = None) -> list[CatalogueBinding]:
    """The (topic, value schema, compatibility) of every topic in the catalogue."""
    catalogue_path = Path(path) if path is not None else TOPICS_FILE
    import yaml  # only the schema check reads the catalogue; intake workers never do

    raw = yaml.safe_load(catalogue_path.read_text(encoding="utf-8"))
    bindings: list[CatalogueBinding] = []
    for entry in raw["topics"]:
        bindings.append(
            CatalogueBinding(
                topic=str(entry["name"]),
                value=str(entry["value"]),
                compatibility=CompatibilityMode(
                    entry.get("compatibility", DEFAULT_COMPATIBILITY.value)
                ),
            )
        )
    return bindings


def check_catalogue(
    store: SchemaStore, bindings: Sequence[CatalogueBinding]
) -> tuple[list[str], int]:
    """Report lines (one per schema, problems indented below) and the number of problems."""
    lines: list[str] = []
    problem_count = 0
    by_schema: dict[str, list[CatalogueBinding]] = {}
    for binding in bindings:
        by_schema.setdefault(binding.value, []).append(binding)
    for value in sorted(by_schema):
        topics = ", ".join(b.topic for b in by_schema[value])
        modes = sorted({b.compatibility for b in by_schema[value]})
        if value not in store:
            lines.append(f"MISSING  {value}  no such schema (topics: {topics})")
            problem_count += 1
            continue
        problems = [p for mode in modes for p in check_compatibility(store, value, mode)]
        latest = store.latest(value)
        status = "OK      " if not problems else "PROBLEM "
        lines.append(
            f"{status} {latest.full_name}  v1..v{latest.version}  "
            f"{'+'.join(m.value for m in modes)}  fp={latest.fingerprint_hex}  topics: {topics}"
        )
        lines.extend(f"    {problem}" for problem in problems)
        problem_count += len(problems)
    for name in store.names():
        if name not in by_schema:
            lines.append(f"UNUSED   {name}  no topic in the catalogue carries it")
            problem_count += 1
    return lines, problem_count
