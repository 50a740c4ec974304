"""Topic provisioning from the catalogue (``schemas/topics.yaml``).

``apply`` creates missing topics and reports *drift*: a topic that exists with other
partitions or other configuration than the catalogue says, or with less replication than the
chosen replication profile asks for. It never deletes or shrinks a topic on its own —
partitions cannot shrink in Kafka, and a config change on a live topic is an operator's
decision — so drift is reported, and ``--fix-config`` applies config drift. Missing replicas
are reported too, but no config adds them: that takes a partition reassignment.

    python -m services.common.topics apply --prefix suzhou.      # create + report drift
    python -m services.common.topics apply --prefix suzhou. --check   # exit 1 on drift
    python -m services.common.topics apply --prefix suzhou. --replication production

The replication profile (``replication:`` in the catalogue) defaults to ``development``, one
replica for the one-broker setup of ``deploy/local`` and the compose file.
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
DEFAULT_PROFILE = "development"
MIN_INSYNC_REPLICAS = "min.insync.replicas"
# Kafka error codes met while provisioning (Kafka protocol, "Error Codes").
_TOPIC_ALREADY_EXISTS = 36
# What AlterConfigs cannot change, with what it takes instead: the report names it.
NOT_BY_CONFIG = {
    "partitions": "partitions never shrink, and adding some moves keys to other partitions",
    "replicas": "alter-configs cannot add replicas; reassign the partitions "
    "(kafka-reassign-partitions.sh)",
}


@dataclass(frozen=True, slots=True)
class Replication:
    """A replication profile of the catalogue: the least a topic is replicated with.

    ``replicas`` is every partition's replication factor, ``min_insync_replicas`` the topic's
    ``min.insync.replicas``: with acks=all a write is acknowledged once that many replicas
    have it.
    """

    replicas: int
    min_insync_replicas: int


# Specs built in code rather than read from the catalogue are for the one-broker setup.
_ONE_REPLICA = Replication(replicas=1, min_insync_replicas=1)


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
    replication: Replication = _ONE_REPLICA

    def topic_configs(self) -> dict[str, str]:
        """The broker-side configs the catalogue pins for this topic."""
        configs = {
            "cleanup.policy": self.cleanup_policy,
            "retention.ms": str(self.retention_ms),
            MIN_INSYNC_REPLICAS: str(self.replication.min_insync_replicas),
        }
        configs.update(self.config)
        return configs


def replication_profiles(path: Path = CATALOGUE) -> dict[str, Replication]:
    """The catalogue's replication profiles by name (``development``, ``production``)."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    profiles: dict[str, Replication] = {}
    for name, entry in (raw.get("replication") or {}).items():
        profile = Replication(
            replicas=int(entry["replicas"]),
            min_insync_replicas=int(entry["min_insync_replicas"]),
        )
        if not 1 <= profile.min_insync_replicas <= profile.replicas:
            raise ValueError(
                f"{path}: replication profile {name!r} needs 1 <= min_insync_replicas <= replicas"
            )
        profiles[str(name)] = profile
    return profiles


def load_catalogue(path: Path = CATALOGUE, *, profile: str = DEFAULT_PROFILE) -> list[TopicSpec]:
    """The catalogue's topics, replicated as its replication profile ``profile`` says."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    profiles = replication_profiles(path)
    if profile not in profiles:
        raise ValueError(
            f"{path} has no replication profile {profile!r}; it has {', '.join(sorted(profiles))}"
        )
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
                replication=profiles[profile],
            )
        )
    return specs


@dataclass(frozen=True, slots=True)
class Drift:
    topic: str
    setting: str
    expected: str
    actual: str

    @property
    def by_config(self) -> bool:
        """Whether ``--fix-config`` (AlterConfigs) can set it right."""
        return self.setting not in NOT_BY_CONFIG

    def __str__(self) -> str:
        text = f"{self.topic}: {self.setting} is {self.actual}, catalogue says {self.expected}"
        return text if self.by_config else f"{text} ({NOT_BY_CONFIG[self.setting]})"


@dataclass(slots=True)
class ProvisionReport:
    created: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    drift: list[Drift] = field(default_factory=list)
    fixed: list[Drift] = field(default_factory=list)


def _config_entries(response: Any) -> tuple[dict[str, dict[str, str]], dict[str, int]]:
    """topic -> {config name: value} from a DescribeConfigs response (any version), and
    topic -> error code for those it could not describe."""
    result: dict[str, dict[str, str]] = {}
    errors: dict[str, int] = {}
    for resource in response.resources:
        error_code, _message, _rtype, name, entries = resource[:5]
        if error_code:
            errors[name] = error_code
        else:
            result[name] = {entry[0]: entry[1] for entry in entries}
    return result, errors


async def _topic_configs(
    admin: AIOKafkaAdminClient, names: Sequence[str]
) -> dict[str, dict[str, str]]:
    """Every topic's configs. On a cluster, the broker that answers may not know yet of a topic
    created a moment ago (each learns it from the controller in its own time) and answers
    UNKNOWN_TOPIC_OR_PARTITION: ask again rather than report the topic's settings as unset."""
    found: dict[str, dict[str, str]] = {}
    pending = list(names)
    errors: dict[str, int] = {}
    for _ in range(50):
        errors = {}
        for response in await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in pending]
        ):
            configs, failed = _config_entries(response)
            found.update(configs)
            errors.update(failed)
        pending = [name for name in pending if name not in found]
        if not pending:
            return found
        await asyncio.sleep(0.1)
    raise RuntimeError(f"describing the configs of {', '.join(pending)} failed: errors {errors}")


async def provision(
    bootstrap: str,
    specs: Sequence[TopicSpec],
    *,
    prefix: str = "",
    fix_config: bool = False,
) -> ProvisionReport:
    """Create missing topics, report (and optionally fix) config drift. Idempotent.

    Topics are created with their spec's replication; a present topic with fewer replicas or
    a lower ``min.insync.replicas`` than that is drift. More is not: a profile states the
    least a topic needs, so provisioning never lowers what an operator raised.
    """
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
            await _check_enough_brokers(admin, [wanted[name] for name in missing])
            response = await admin.create_topics(
                [
                    NewTopic(
                        name,
                        wanted[name].partitions,
                        wanted[name].replication.replicas,
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
                spec, partitions = wanted[name], existing[name]["partitions"]
                if len(partitions) != spec.partitions:
                    report.drift.append(
                        Drift(name, "partitions", str(spec.partitions), str(len(partitions)))
                    )
                # The assigned replicas, not the in-sync ones: a broker that is down for a
                # while leaves the topic as replicated as it was.
                replicas = min((len(p["replicas"]) for p in partitions), default=0)
                if replicas < spec.replication.replicas:
                    report.drift.append(
                        Drift(name, "replicas", str(spec.replication.replicas), str(replicas))
                    )
            actual_configs = await _topic_configs(admin, present)
            to_fix: list[str] = []
            for name in present:
                actual = actual_configs.get(name, {})
                for setting, expected in wanted[name].topic_configs().items():
                    value = actual.get(setting)
                    if value == expected or (
                        setting == MIN_INSYNC_REPLICAS and _at_least(value, expected)
                    ):
                        continue
                    report.drift.append(Drift(name, setting, expected, str(value)))
                    if name not in to_fix:
                        to_fix.append(name)
            if fix_config and to_fix:
                # AlterConfigs replaces a topic's whole dynamic config, so send all pinned
                # settings of the topic, not only the drifted one.
                await admin.alter_configs(
                    [
                        ConfigResource(
                            ConfigResourceType.TOPIC,
                            name,
                            _configs_to_set(wanted[name], actual_configs.get(name, {})),
                        )
                        for name in to_fix
                    ]
                )
                report.fixed = [d for d in report.drift if d.by_config]
                report.drift = [d for d in report.drift if not d.by_config]
            drifted = {d.topic for d in report.drift} | {d.topic for d in report.fixed}
            report.unchanged.extend(n for n in present if n not in drifted)
    finally:
        await admin.close()
    return report


async def _check_enough_brokers(admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec]) -> None:
    """Fail before creating anything when the cluster cannot hold the replicas asked for."""
    needed = max(spec.replication.replicas for spec in specs)
    brokers = len((await admin.describe_cluster())["brokers"])
    if brokers < needed:
        raise RuntimeError(
            f"the replication profile asks for {needed} replicas per partition and the cluster "
            f"has {brokers} broker(s); provision with a profile that fits it (--replication)"
        )


def _at_least(value: str | None, least: str) -> bool:
    return value is not None and value.isdigit() and int(value) >= int(least)


def _configs_to_set(spec: TopicSpec, actual: dict[str, str]) -> dict[str, str]:
    """The spec's configs, keeping a ``min.insync.replicas`` an operator set higher."""
    configs = spec.topic_configs()
    if _at_least(actual.get(MIN_INSYNC_REPLICAS), configs[MIN_INSYNC_REPLICAS]):
        configs[MIN_INSYNC_REPLICAS] = actual[MIN_INSYNC_REPLICAS]
    return configs


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
    apply.add_argument(
        "--replication",
        default=DEFAULT_PROFILE,
        metavar="PROFILE",
        help=f"replication profile of the catalogue (default {DEFAULT_PROFILE}, one broker; "
        "production: RF 3, min.insync.replicas 2)",
    )
    args = parser.parse_args(argv)

    import os

    bootstrap = args.bootstrap or os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:19092")
    try:
        catalogue = load_catalogue(args.catalogue, profile=args.replication)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        report = asyncio.run(
            provision(bootstrap, catalogue, prefix=args.prefix, fix_config=args.fix_config)
        )
    except RuntimeError as exc:  # the broker refused: say why, without a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
