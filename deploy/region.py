"""Run a region's city nodes as local processes: the supervisor behind ``region up/down``.

Each (city, service) pair runs as its own process, ``python -m services.<service>``, with the
environment a production node would give it (settings.py, the certificate directory, the
peer policy). Processes are detached and tracked by pid files under ``.cache/region/`` so
``region down`` and ``region status`` work from another shell.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from aiokafka.admin import AIOKafkaAdminClient

from deploy.broker import REPO_ROOT
from services.common.region import City, Region

SERVICES = ("intake", "lists", "scores", "alerts")
RUN_DIR = REPO_ROOT / ".cache" / "region"
CERT_DIR = REPO_ROOT / "deploy" / "local" / "certs"
# Processes this process started, kept so that stopping them also reaps them.
_children: dict[str, subprocess.Popen[bytes]] = {}


def data_root(bootstrap: str) -> Path:
    """Where the services keep their local state for the Kafka cluster at ``bootstrap``: a
    folder per cluster id. Local stores hold offsets and state derived from one cluster's
    topics; after the broker is wiped or another one answers at the same address they must
    not be reused (faust refuses to start on them: ConsistencyError), while the services
    rebuild empty stores from the topics."""
    return RUN_DIR / "data" / asyncio.run(_cluster_id(bootstrap))


async def _cluster_id(bootstrap: str) -> str:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="creditlink-region")
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()
    return str(cluster.get("cluster_id") or "unknown-cluster")


@dataclass(frozen=True, slots=True)
class Process:
    city: City
    service: str

    @property
    def name(self) -> str:
        return f"{self.city.key}-{self.service}"

    @property
    def pid_file(self) -> Path:
        return RUN_DIR / "pids" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return RUN_DIR / "logs" / f"{self.name}.log"

    @property
    def health_url(self) -> str:
        return f"http://{self.city.ops[self.service]}/healthz"

    def pid(self) -> int | None:
        """The running process's pid, or None (an exited child of ours counts as gone)."""
        child = _children.get(self.name)
        if child is not None and child.poll() is not None:
            return None
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid


def node_environment(
    city: City, service: str, *, bootstrap: str, data_root: Path, extra: dict[str, str]
) -> dict[str, str]:
    """The environment of one service process of one city node."""
    return {
        **os.environ,
        "CREDITLINK_CITY": city.key,
        "KAFKA_BOOTSTRAP": bootstrap,
        "CREDITLINK_TOPIC_PREFIX": city.topic_prefix,
        "CREDITLINK_DATA_DIR": str(data_root / city.key / service),
        "CREDITLINK_TLS_DIR": str(CERT_DIR),
        # The published dev pseudonym key: a local region only, never a production node.
        "CREDITLINK_DEV": "1",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def local_cities(region: Region) -> tuple[str, ...]:
    """The cities of the region file that run here: those with an ops endpoint per service
    (the others are members known by name only, not yet connected)."""
    return tuple(key for key, city in region.cities.items() if city.ops)


def processes(region: Region, cities: tuple[str, ...] | None = None) -> list[Process]:
    chosen = local_cities(region) if cities is None else cities
    return [Process(region.city(c), s) for c in chosen for s in SERVICES]


def start(
    process: Process, *, bootstrap: str, data_root: Path, extra: dict[str, str] | None = None
) -> int:
    """Start one service process unless it already runs; returns its pid."""
    if (pid := process.pid()) is not None:
        return pid
    process.pid_file.parent.mkdir(parents=True, exist_ok=True)
    process.log_file.parent.mkdir(parents=True, exist_ok=True)
    with process.log_file.open("ab") as log:
        child = subprocess.Popen(  # noqa: S603 -- our own module, fixed arguments
            [sys.executable, "-m", f"services.{process.service}"],
            cwd=REPO_ROOT,
            env=node_environment(
                process.city,
                process.service,
                bootstrap=bootstrap,
                data_root=data_root,
                extra=extra or {},
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    process.pid_file.write_text(str(child.pid))
    _children[process.name] = child
    return child.pid


def stop(process: Process, *, grace_s: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL after ``grace_s``. True if it was running."""
    pid = process.pid()
    if pid is None:
        process.pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and process.pid() is not None:
        time.sleep(0.1)
    if process.pid() is not None:
        os.kill(pid, signal.SIGKILL)
    if (child := _children.pop(process.name, None)) is not None:
        child.wait(timeout=grace_s)  # reap it: no zombie left behind this process
    process.pid_file.unlink(missing_ok=True)
    return True


def health(process: Process, *, timeout_s: float = 2.0) -> tuple[bool, str]:
    """(up, detail) from the process's ``/healthz``; a dead pid is down without asking."""
    if process.pid() is None:
        return False, "not running"
    try:
        answer = httpx.get(process.health_url, timeout=timeout_s)
    except httpx.HTTPError as exc:
        return False, f"no answer ({type(exc).__name__})"
    if answer.status_code == 200:
        return True, "up"
    try:
        failing = [k for k, ok in answer.json().get("checks", {}).items() if not ok]
    except ValueError:
        failing = []
    return False, f"unhealthy: {', '.join(failing) or answer.status_code}"


def wait_healthy(procs: list[Process], *, timeout_s: float) -> list[Process]:
    """Wait until every process answers healthy; return those that did not in time."""
    deadline = time.monotonic() + timeout_s
    pending = list(procs)
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if not health(p, timeout_s=1.0)[0]]
        if pending:
            time.sleep(0.5)
    return pending
