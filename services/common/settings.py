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

The limits every peer server enforces (:func:`load_peer_limits`, docs/design.md §3.3) are read
from ``CREDITLINK_PEER_*`` variables (docs/design.md §3.3 names them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True, slots=True)
class PeerLimits:
    """What one peer may take of a peer server (docs/design.md §3.3); durations in seconds.

    The transport limits are gRPC core's and act before any handler runs; the per-caller
    limits are the peer-call guard's (``services/common/peer/limits.py``) and are refused,
    like every refusal, with a denial code and an audit record.
    """

    #: Largest request message a peer may send; larger ones end in RESOURCE_EXHAUSTED.
    max_message_bytes: int = 4 * 1024 * 1024
    #: HTTP/2 streams (calls) one connection may have open at a time; more wait client-side.
    max_streams_per_connection: int = 256
    #: A connection is asked to go away (GOAWAY) after this age, so no peer keeps one for ever
    #: and reconnects are spread; open calls get ``connection_age_grace`` to finish.
    max_connection_age: float = 1800.0
    #: At least the follow-stream age, so a follow stream ends on its own, at a cursor.
    connection_age_grace: float = 660.0
    #: A connection without any call for this long is closed.
    max_connection_idle: float = 300.0
    #: The server pings an idle connection this often and drops it when the ping is not
    #: answered within ``keepalive_timeout``: a half-open follow stream does not linger.
    keepalive_interval: float = 60.0
    keepalive_timeout: float = 20.0
    #: Pings from a peer closer together than this count as strikes; two strikes and the
    #: connection is closed (gRPC's ``too_many_pings``). Mirrors ping every 10 s.
    min_ping_interval: float = 5.0
    #: Calls per second each calling city may start (token bucket, refilled continuously) …
    caller_rate: float = 500.0
    #: … and how many it may start at once after being quiet.
    caller_burst: int = 1000
    #: Calls one calling city may have in progress at a time, over all its connections.
    max_calls_per_caller: int = 512
    #: A follow stream (``StreamListChanges`` with ``follow``, ``SubscribeAlerts``) ends after
    #: this long, after its latest cursor; the peer resumes from that cursor.
    follow_stream_max_age: float = 600.0

    def __post_init__(self) -> None:
        wrong = [f.name for f in fields(self) if not 0 < getattr(self, f.name) < float("inf")]
        if wrong:
            raise ValueError(f"peer limits must be above 0 and finite: {', '.join(wrong)}")


def load_peer_limits(environ: Mapping[str, str] | None = None) -> PeerLimits:
    """The peer limits from ``environ`` (default ``os.environ``), each unset one at its
    default; raise :class:`SettingsError` naming every value that is not a positive number
    (whole for counts and bytes)."""
    env = os.environ if environ is None else environ
    # Inside the function, so that only code that loads peer limits counts as reading them
    # (tests/unit/test_deploy_manifests.py scans the sources for the variables).
    variables = {
        "max_message_bytes": "CREDITLINK_PEER_MAX_MESSAGE_BYTES",
        "max_streams_per_connection": "CREDITLINK_PEER_MAX_STREAMS_PER_CONNECTION",
        "max_connection_age": "CREDITLINK_PEER_MAX_CONNECTION_AGE_S",
        "connection_age_grace": "CREDITLINK_PEER_CONNECTION_AGE_GRACE_S",
        "max_connection_idle": "CREDITLINK_PEER_MAX_CONNECTION_IDLE_S",
        "keepalive_interval": "CREDITLINK_PEER_KEEPALIVE_S",
        "keepalive_timeout": "CREDITLINK_PEER_KEEPALIVE_TIMEOUT_S",
        "min_ping_interval": "CREDITLINK_PEER_MIN_PING_INTERVAL_S",
        "caller_rate": "CREDITLINK_PEER_CALLER_RATE",
        "caller_burst": "CREDITLINK_PEER_CALLER_BURST",
        "max_calls_per_caller": "CREDITLINK_PEER_MAX_CALLS_PER_CALLER",
        "follow_stream_max_age": "CREDITLINK_PEER_FOLLOW_MAX_AGE_S",
    }
    defaults = PeerLimits()
    problems: list[str] = []
    values: dict[str, Any] = {}
    for limit in fields(PeerLimits):
        variable = variables[limit.name]
        raw = env.get(variable)
        if raw is None or not raw.strip():
            continue
        whole = isinstance(getattr(defaults, limit.name), int)
        try:
            value: int | float = int(raw) if whole else float(raw)
        except ValueError:
            value = -1
        if not 0 < value < float("inf"):
            kind = "a whole number above 0" if whole else "a finite number above 0"
            problems.append(f"{variable}: {raw!r} is not {kind}")
            continue
        values[limit.name] = value
    if problems:
        raise SettingsError("invalid peer limits:\n  - " + "\n  - ".join(problems))
    return replace(defaults, **values)
