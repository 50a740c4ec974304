"""Configuration of the lists service, from the environment, checked as a whole.

Besides the common settings (``services/common/settings.py``):

- ``CREDITLINK_LISTS_BIND``: where the peer-facing gRPC server listens (default: this city's
  ``lists`` endpoint in the region file).
- ``CREDITLINK_TLS_DIR``: ``ca.crt``, ``<city>.crt/.key`` and the cities' ``*.consent.pub``
  (default ``deploy/local/certs``, made by ``make certs``).
- ``CREDITLINK_MEASURES_FILE``: the measures catalogue (``deploy/config/measures.yaml``).
- ``CREDITLINK_PEER_POLICY``: the peer authorization policy (``deploy/config/peer-policy.yaml``).
- ``CREDITLINK_LISTS_RECONCILE_SECONDS``: digest comparison with each peer (300).
- ``CREDITLINK_LISTS_EXPIRY_SECONDS``: how often ended terms are taken down (60).
- ``CREDITLINK_AUDIT_CHECKPOINT_SECONDS``: how often the node hands the signed heads of its
  audit chains to its peers (60; services/common/audit/checkpoints.py).
- ``CREDITLINK_LISTS_RETENTION_DAYS``: how long removed entries and own changes are kept,
  the retention of ``credit.list-changes.v1`` (365).

The node answers peer calls from one process (docs/list-sync.md, "One process").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from services.common.region import Region, RegionConfigError
from services.common.settings import REPO_ROOT, Settings, SettingsError
from services.lists.measures import DEFAULT_MEASURES_FILE

DEFAULT_TLS_DIR: Final = REPO_ROOT / "deploy" / "local" / "certs"


@dataclass(frozen=True, slots=True)
class ListsConfig:
    bind: str
    tls_dir: Path
    measures_file: Path
    reconcile_seconds: float
    expiry_seconds: float
    retention_days: int
    #: How often the node hands its signed audit heads to its peers (docs/trust.md).
    checkpoint_seconds: float = 60.0


def _positive(env: Mapping[str, str], name: str, default: float, problems: list[str]) -> float:
    raw = env.get(name, str(default)).strip()
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        problems.append(f"{name}: {raw!r} is not a positive number")
        return default
    return value


def load_lists_config(
    settings: Settings, region: Region, environ: Mapping[str, str] | None = None
) -> ListsConfig:
    """Read the service's settings; raise :class:`SettingsError` listing every problem."""
    env = os.environ if environ is None else environ
    problems: list[str] = []
    bind = env.get("CREDITLINK_LISTS_BIND", "").strip()
    if not bind:
        try:
            bind = region.city(settings.city).endpoint("lists")
        except RegionConfigError as exc:
            problems.append(f"CREDITLINK_LISTS_BIND: not set and {exc}")
    tls_dir = Path(env.get("CREDITLINK_TLS_DIR", DEFAULT_TLS_DIR))
    for name in ("ca.crt", f"{settings.city}.crt", f"{settings.city}.key"):
        if not (tls_dir / name).is_file():
            problems.append(f"CREDITLINK_TLS_DIR: {tls_dir / name} is missing (make certs)")
    measures = Path(env.get("CREDITLINK_MEASURES_FILE", DEFAULT_MEASURES_FILE))
    if not measures.is_file():
        problems.append(f"CREDITLINK_MEASURES_FILE: {measures} does not exist")
    reconcile = _positive(env, "CREDITLINK_LISTS_RECONCILE_SECONDS", 300.0, problems)
    expiry = _positive(env, "CREDITLINK_LISTS_EXPIRY_SECONDS", 60.0, problems)
    retention = _positive(env, "CREDITLINK_LISTS_RETENTION_DAYS", 365, problems)
    checkpoints = _positive(env, "CREDITLINK_AUDIT_CHECKPOINT_SECONDS", 60.0, problems)
    if problems:
        raise SettingsError("invalid lists configuration:\n  - " + "\n  - ".join(problems))
    return ListsConfig(
        bind=bind,
        tls_dir=tls_dir,
        measures_file=measures,
        reconcile_seconds=reconcile,
        expiry_seconds=expiry,
        retention_days=int(retention),
        checkpoint_seconds=checkpoints,
    )
