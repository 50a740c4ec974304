"""Typed settings read from the environment.

Every service reads its configuration through :func:`load_settings`, which collects *all*
problems before failing so an operator sees everything that is wrong in one go.

Variables (all optional):

- ``CREDITLINK_CITY``: the city this node serves, a key of the region file (``suzhou``).
- ``KAFKA_BOOTSTRAP``: the node's Kafka bootstrap servers (``127.0.0.1:19092``).
- ``CREDITLINK_TOPIC_PREFIX``: prefix in front of every topic name, ending in ``.`` (none).
- ``CREDITLINK_REGION_FILE``: the region registry (``deploy/config/region.yaml``).
- ``CREDITLINK_DATA_DIR``: local state: RocksDB tables, cursors (``.cache/data/<city>``).
- ``CREDITLINK_LOG_LEVEL``: ``debug``, ``info``, ``warning`` or ``error`` (``info``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

_LOG_LEVELS = ("debug", "info", "warning", "error")


class SettingsError(ValueError):
    """The environment does not describe a usable node; the message lists every problem."""


@dataclass(frozen=True, slots=True)
class Settings:
    city: str
    kafka_bootstrap: str
    topic_prefix: str
    region_file: Path
    data_dir: Path
    log_level: str
    #: The longest consent token lifetime this node honours (CREDITLINK_CONSENT_MAX_DAYS).
    consent_max_days: int = 30

    def topic(self, logical_name: str) -> str:
        """The physical topic of a catalogue name (``suzhou.`` + ``credit.records.v1``)."""
        return f"{self.topic_prefix}{logical_name}"


def _check_bootstrap(value: str) -> str | None:
    for server in value.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            return f"KAFKA_BOOTSTRAP: {server!r} is not host:port (comma-separated list allowed)"
    return None


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from ``environ`` (default ``os.environ``); raise :class:`SettingsError`."""
    env = os.environ if environ is None else environ
    problems: list[str] = []

    city = env.get("CREDITLINK_CITY", "suzhou").strip().lower()
    if not city or not city.replace("-", "").isalnum():
        problems.append(f"CREDITLINK_CITY: {city!r} is not a city key (letters, digits, '-')")

    bootstrap = env.get("KAFKA_BOOTSTRAP", "127.0.0.1:19092").strip()
    if (problem := _check_bootstrap(bootstrap)) is not None:
        problems.append(problem)

    prefix = env.get("CREDITLINK_TOPIC_PREFIX", "")
    if prefix and not prefix.endswith("."):
        problems.append(f"CREDITLINK_TOPIC_PREFIX: {prefix!r} must end with '.' (e.g. 'suzhou.')")

    region_file = Path(env.get("CREDITLINK_REGION_FILE", REPO_ROOT / "deploy/config/region.yaml"))
    if not region_file.is_file():
        problems.append(f"CREDITLINK_REGION_FILE: {str(region_file)!r} does not exist")

    data_dir = Path(env.get("CREDITLINK_DATA_DIR", REPO_ROOT / ".cache/data" / city))

    log_level = env.get("CREDITLINK_LOG_LEVEL", "info").strip().lower()
    if log_level not in _LOG_LEVELS:
        problems.append(
            f"CREDITLINK_LOG_LEVEL: {log_level!r} is not one of {', '.join(_LOG_LEVELS)}"
        )

    consent_days = env.get("CREDITLINK_CONSENT_MAX_DAYS", "30").strip()
    if not consent_days.isdigit() or not 1 <= int(consent_days) <= 366:
        problems.append(f"CREDITLINK_CONSENT_MAX_DAYS: {consent_days!r} is not 1..366 days")

    if problems:
        raise SettingsError("invalid configuration:\n  - " + "\n  - ".join(problems))
    return Settings(
        city=city,
        kafka_bootstrap=bootstrap,
        topic_prefix=prefix,
        region_file=region_file,
        data_dir=data_dir,
        log_level=log_level,
        consent_max_days=int(consent_days),
    )


def settings_environment(settings: Settings) -> dict[str, str]:
    """The environment :func:`load_settings` reads ``settings`` back from (for a helper
    process of the same node)."""
    return {
        "CREDITLINK_CITY": settings.city,
        "KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CREDITLINK_TOPIC_PREFIX": settings.topic_prefix,
        "CREDITLINK_REGION_FILE": str(settings.region_file),
        "CREDITLINK_DATA_DIR": str(settings.data_dir),
        "CREDITLINK_LOG_LEVEL": settings.log_level,
        "CREDITLINK_CONSENT_MAX_DAYS": str(settings.consent_max_days),
    }
