"""Topic provisioning from the catalogue (``schemas/topics.yaml``).

``apply`` creates missing topics and reports *drift*: a topic that exists with other
partitions or other configuration than the catalogue says. It never deletes or shrinks a
topic on its own — partitions cannot shrink in Kafka, and a config change on a live topic is
an operator's decision — so drift is reported, and ``--fix-config`` applies config drift.

    python -m services.common.topics apply --prefix suzhou.      # create + report drift
    python -m services.common.topics apply --prefix suzhou. --check   # exit 1 on drift
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from services.common.settings import REPO_ROOT

CATALOGUE = REPO_ROOT / "schemas" / "topics.yaml"
DEFAULT_COMPATIBILITY = "BACKWARD_TRANSITIVE"
# Kafka error codes met while provisioning (Kafka protocol, "Error Codes").
_TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    description: str
    key: str
    value: str
    partitions: int
    cleanup_policy: str
    retention_ms: int
    compatibility: str = DEFAULT_COMPATIBILITY
    config: dict[str, str] = field(default_factory=dict)

    def topic_configs(self) -> dict[str, str]:
        """The broker-side configs the catalogue pins for this topic."""
        configs = {"cleanup.policy": self.cleanup_policy, "retention.ms": str(self.retention_ms)}
        configs.update(self.config)
        return configs


def load_catalogue(path: Path = CATALOGUE) -> list[TopicSpec]:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    specs: list[TopicSpec] = []
    for entry in raw["topics"]:
        specs.append(
            TopicSpec(
                name=str(entry["name"]),
                description=str(entry.get("description", "")),
                key=str(entry["key"]),
                value=str(entry["value"]),
                partitions=int(entry["partitions"]),
                cleanup_policy=str(entry["cleanup_policy"]),
                retention_ms=int(entry["retention_ms"]),
                compatibility=str(entry.get("compatibility", DEFAULT_COMPATIBILITY)),
                config={str(k): str(v) for k, v in (entry.get("config") or {}).items()},
            )
        )
    return specs


@dataclass(frozen=True, slots=True)
class Drift:
    topic: str
    setting: str
    expected: str
    actual: str

    def __str__(self) -> str:
        return f"{self.topic}: {self.setting} is {self.actual}, catalogue says {self.expected}"


@dataclass(slots=True)
class ProvisionReport:
    created: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    drift: list[Drift] = field(default_factory=list)
    fixed: list[Drift] = field(default_factory=list)


def _config_entries(response: Any) -> dict[str, dict[str, str]]:
    """topic -> {config name: value} from a DescribeConfigs response (any version)."""
    result: dict[str, dict[str, str]] = {}
    for resource in response.resources:
        error_code, _message, _rtype, name, entries = resource[:5]
        if error_code:
            continue
        result[name] = {entry[0]: entry[1] for entry in entries}
    return result


async def provision(
    bootstrap: str,
    specs: Sequence[TopicSpec],
    *,
    prefix: str = "",
    fix_config: bool = False,
    replication_factor: int = 1,
) -> ProvisionReport:
    """Create missing topics, report (and optionally fix) config drift. Idempotent."""
    report = ProvisionReport()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="creditlink-topics")
    await admin.start()
    try:
        wanted = {prefix + s.name: s for s in specs}
        existing = {t["topic"]: t for t in await admin.describe_topics(list(wanted))}
        missing = [
            name for name in wanted if name not in existing or existing[name]["error_code"] != 0
        ]
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(
                        name,
                        wanted[name].partitions,
                        replication_factor,
                        topic_configs=wanted[name].topic_configs(),
                    )
                    for name in missing
                ]
            )
            # A topic created a moment ago may not be in the metadata describe_topics read
            # yet; the broker then answers "already exists", and it is present, not created.
            already: set[str] = set()
            for name, error_code, *rest in response.topic_errors:
                if error_code == _TOPIC_ALREADY_EXISTS:
                    already.add(name)
                elif error_code != 0:
                    raise RuntimeError(f"creating {name} failed: error {error_code} {rest}")
            report.created.extend(name for name in missing if name not in already)
            missing = [name for name in missing if name not in already]
            # Wait until every topic created here, or created a moment ago by another, has a
            # leader for each partition: a service started right after provisioning checks
            # its topics once and refuses to start on one the broker does not serve yet.
            waiting = sorted({*already, *missing})
            for _ in range(100):
                for topic in await admin.describe_topics(waiting):
                    existing[topic["topic"]] = topic
                if all(_served(existing.get(name)) for name in waiting):
                    break
                await asyncio.sleep(0.1)

        present = [n for n in wanted if n not in missing]
        if present:
            for name in present:
                actual = len(existing[name]["partitions"])
                if actual != wanted[name].partitions:
                    report.drift.append(
                        Drift(name, "partitions", str(wanted[name].partitions), str(actual))
                    )
            responses = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name) for name in present]
            )
            actual_configs: dict[str, dict[str, str]] = {}
            for response in responses:
                actual_configs.update(_config_entries(response))
            to_fix: dict[str, dict[str, str]] = {}
            for name in present:
                for setting, expected in wanted[name].topic_configs().items():
                    actual_value = actual_configs.get(name, {}).get(setting)
                    if actual_value != expected:
                        drift = Drift(name, setting, expected, str(actual_value))
                        report.drift.append(drift)
                        to_fix.setdefault(name, {})[setting] = expected
            if fix_config and to_fix:
                # AlterConfigs replaces a topic's whole dynamic config, so send all pinned
                # settings of the topic, not only the drifted one.
                await admin.alter_configs(
                    [
                        ConfigResource(ConfigResourceType.TOPIC, name, wanted[name].topic_configs())
                        for name in to_fix
                    ]
                )
                report.fixed = [d for d in report.drift if d.setting != "partitions"]
                report.drift = [d for d in report.drift if d.setting == "partitions"]
            drifted = {d.topic for d in report.drift} | {d.topic for d in report.fixed}
            report.unchanged.extend(n for n in present if n not in drifted)
    finally:
        await admin.close()
    return report


def _served(description: dict[str, Any] | None) -> bool:
    """The topic exists and every partition has a leader."""
    return (
        description is not None
        and description.get("error_code") == 0
        and bool(description.get("partitions"))
        and all(p.get("leader", -1) >= 0 for p in description["partitions"])
    )


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.common.topics")
    sub = parser.add_subparsers(dest="command", required=True)
    apply = sub.add_parser("apply", help="create missing topics and report drift")
    apply.add_argument("--bootstrap", default=None, help="default: KAFKA_BOOTSTRAP")
    apply.add_argument("--prefix", default="", help="per-city prefix, e.g. 'suzhou.'")
    apply.add_argument("--catalogue", type=Path, default=CATALOGUE)
    apply.add_argument("--check", action="store_true", help="exit 1 if any drift remains")
    apply.add_argument("--fix-config", action="store_true", help="apply config drift")
    args = parser.parse_args(argv)

    import os

    bootstrap = args.bootstrap or os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:19092")
    report = asyncio.run(
        provision(
            bootstrap,
            load_catalogue(args.catalogue),
            prefix=args.prefix,
            fix_config=args.fix_config,
        )
    )
    for name in report.created:
        print(f"created    {name}")
    for name in report.unchanged:
        print(f"ok         {name}")
    for drift in report.fixed:
        print(f"fixed      {drift}")
    for drift in report.drift:
        print(f"DRIFT      {drift}")
    print(
        f"{len(report.created)} created, {len(report.unchanged)} unchanged, "
        f"{len(report.fixed)} fixed, {len(report.drift)} drifted"
    )
    return 1 if args.check and report.drift else 0


if __name__ == "__main__":
    sys.exit(_main())
