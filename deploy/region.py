"""Run a region's city nodes as local processes: the supervisor behind ``region up/down``, the
demo and the tests' city nodes.

Each (city, service) pair runs as its own process, ``python -m services.<service>``, with the
environment a production node would give it (settings.py, the certificate directory, the
configuration files). Processes are detached and tracked by pid files under a run directory
(``.cache/region/`` for the operator's region) so ``region down`` and ``region status`` work
from another shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx
from aiokafka.admin import AIOKafkaAdminClient

from deploy.broker import REPO_ROOT
from services.common.certs import issue_dev_certificates
from services.common.region import City, Region, load_region
from services.common.topics import load_catalogue, provision

SERVICES: Final = ("intake", "lists", "scores", "alerts")
RUN_DIR: Final = REPO_ROOT / ".cache" / "region"
CONFIG_DIR: Final = REPO_ROOT / "deploy" / "config"
CERT_DIR: Final = REPO_ROOT / "deploy" / "local" / "certs"
#: The variable each service reads the path of one configuration file from, and the file's
#: name in a configuration folder laid out like ``deploy/config``.
CONFIG_FILES: Final = {
    "CREDITLINK_REGION_FILE": "region.yaml",
    "CREDITLINK_PEER_POLICY": "peer-policy.yaml",
    "CREDITLINK_CITY_ROLES": "city-roles.yaml",
    "CREDITLINK_SCORES_CONFIG": "score-incentives.yaml",
    "CREDITLINK_MEASURES_FILE": "measures.yaml",
    "CREDITLINK_ALERT_RULES": "alert-rules.yaml",
    "CREDITLINK_ALERT_SUBSCRIPTIONS": "alert-subscriptions.yaml",
    "CREDITLINK_CALENDAR_SUPPLEMENT": "calendar-supplement.yaml",
}
# Processes this process started, by pid file: stopping one reaps it, and one that exited
# counts as gone (a zombie still answers ``kill(pid, 0)``).
_children: dict[Path, subprocess.Popen[bytes]] = {}


class Supervised:
    """One long-running ``python -m <module>`` process: detached in its own session, its output
    appended to ``<run_dir>/logs/<name>.log``, its pid in ``<run_dir>/pids/<name>.pid``.

    Any process can find, watch and stop it through the pid file; the process that started it
    also reaps it. Example::

        node = Supervised("suzhou-lists", "services.lists", run_dir=tmp_path)
        node.start(env)
        ...
        node.stop()  # SIGTERM, SIGKILL after the grace period
    """

    def __init__(
        self, name: str, module: str, *, run_dir: Path, arguments: Sequence[str] = ()
    ) -> None:
        self.name = name
        self.module = module
        self.arguments = tuple(arguments)
        self.pid_file = run_dir / "pids" / f"{name}.pid"
        self.log_file = run_dir / "logs" / f"{name}.log"
        #: Where this process's log began at its last :meth:`start` (its earlier runs' output
        #: comes before).
        self.log_start = 0

    @property
    def child(self) -> subprocess.Popen[bytes] | None:
        """The process, if this process started it."""
        return _children.get(self.pid_file)

    def pid(self) -> int | None:
        """The running process's pid, or None."""
        child = self.child
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

    @property
    def running(self) -> bool:
        return self.pid() is not None

    def start(self, env: Mapping[str, str]) -> int:
        """Start the process unless it already runs; returns its pid."""
        if (pid := self.pid()) is not None:
            return pid
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self.log_start = log.tell()
            child = subprocess.Popen(  # noqa: S603 -- our own module, fixed arguments
                [sys.executable, "-m", self.module, *self.arguments],
                cwd=REPO_ROOT,
                env=dict(env),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid_file.write_text(str(child.pid))
        _children[self.pid_file] = child
        return child.pid

    def _gone_within(self, seconds: float) -> bool:
        child = self.child
        if child is not None:
            try:
                child.wait(seconds)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + seconds
        while self.pid() is not None:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def _signal(self, signum: signal.Signals, *, grace_s: float) -> bool:
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):  # it may have just exited
                os.kill(pid, signum)
                if not self._gone_within(grace_s):
                    os.kill(pid, signal.SIGKILL)
                    self._gone_within(10.0)
        _children.pop(self.pid_file, None)
        self.pid_file.unlink(missing_ok=True)
        return pid is not None

    def stop(self, *, grace_s: float = 10.0) -> bool:
        """SIGTERM (the service drains and closes its stores), then SIGKILL after ``grace_s``.
        True if it was running."""
        return self._signal(signal.SIGTERM, grace_s=grace_s)

    def kill(self) -> bool:
        """SIGKILL (``kill -9``): no shutdown code runs. True if it was running."""
        return self._signal(signal.SIGKILL, grace_s=10.0)

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def logged_since_start(self, marker: bytes) -> bool:
        """Whether the output of the current run (since the last :meth:`start`) has ``marker``."""
        try:
            with self.log_file.open("rb") as log:
                log.seek(self.log_start)
                return marker in log.read()
        except FileNotFoundError:
            return False


@dataclass(frozen=True, slots=True)
class Deployment:
    """Where a local region's configuration, certificates and process files are.

    The operator's region uses ``deploy/config``, ``deploy/local/certs`` and ``.cache/region``;
    a test gives each its own folders. ``CREDITLINK_CONFIG_DIR``, ``CREDITLINK_TLS_DIR`` and
    ``CREDITLINK_RUN_DIR`` choose them for the operator CLI.
    """

    config_dir: Path = CONFIG_DIR
    cert_dir: Path = CERT_DIR
    run_dir: Path = RUN_DIR

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> Deployment:
        env = os.environ if env is None else env
        return cls(
            config_dir=Path(env.get("CREDITLINK_CONFIG_DIR", CONFIG_DIR)),
            cert_dir=Path(env.get("CREDITLINK_TLS_DIR", CERT_DIR)),
            run_dir=Path(env.get("CREDITLINK_RUN_DIR", RUN_DIR)),
        )

    @property
    def region_file(self) -> Path:
        return self.config_dir / CONFIG_FILES["CREDITLINK_REGION_FILE"]

    def region(self) -> Region:
        return load_region(self.region_file)

    def config_environment(self) -> dict[str, str]:
        """The configuration file variables of every service, all from ``config_dir``."""
        return {var: str(self.config_dir / name) for var, name in CONFIG_FILES.items()}


def data_root(bootstrap: str, run_dir: Path = RUN_DIR) -> Path:
    """Where the services keep their local state for the Kafka cluster at ``bootstrap``: a
    folder per cluster id. Local stores hold offsets and state derived from one cluster's
    topics; after the broker is wiped or another one answers at the same address they must
    not be reused (faust refuses to start on them: ConsistencyError), while the services
    rebuild empty stores from the topics."""
    return run_dir / "data" / asyncio.run(_cluster_id(bootstrap))


async def _cluster_id(bootstrap: str) -> str:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="creditlink-region")
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()
    return str(cluster.get("cluster_id") or "unknown-cluster")


#: The command a service runs with, where it is not the module's default. Intake without a
#: command calls its ``serve`` as a plain function, whose options then keep their defaults
#: whatever their environment variables say (CREDITLINK_TLS_DIR); named on the command line,
#: ``serve`` reads them.
SERVICE_ARGUMENTS: Final[Mapping[str, tuple[str, ...]]] = {"intake": ("serve",)}


class Process(Supervised):
    """One service process of one city node."""

    def __init__(self, city: City, service: str, *, run_dir: Path = RUN_DIR) -> None:
        super().__init__(
            f"{city.key}-{service}",
            f"services.{service}",
            run_dir=run_dir,
            arguments=SERVICE_ARGUMENTS.get(service, ()),
        )
        self.city = city
        self.service = service

    @property
    def health_url(self) -> str:
        return f"http://{self.city.ops[self.service]}/healthz"


def node_environment(
    city: City,
    service: str,
    *,
    bootstrap: str,
    data_root: Path,
    deployment: Deployment,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of one service process of one city node."""
    return {
        **os.environ,
        **deployment.config_environment(),
        "CREDITLINK_CITY": city.key,
        "KAFKA_BOOTSTRAP": bootstrap,
        "CREDITLINK_TOPIC_PREFIX": city.topic_prefix,
        "CREDITLINK_DATA_DIR": str(data_root / city.key / service),
        "CREDITLINK_TLS_DIR": str(deployment.cert_dir),
        # The published dev pseudonym key: a local region only, never a production node.
        "CREDITLINK_DEV": "1",
        "PYTHONUNBUFFERED": "1",
        **(extra or {}),
    }


def local_cities(region: Region) -> tuple[str, ...]:
    """The cities of the region file that run here: those with an ops endpoint per service
    (the others are members known by name only, not yet connected)."""
    return tuple(key for key, city in region.cities.items() if city.ops)


def processes(
    region: Region,
    cities: Sequence[str] | None = None,
    *,
    services: Sequence[str] = SERVICES,
    run_dir: Path = RUN_DIR,
) -> list[Process]:
    chosen = local_cities(region) if cities is None else cities
    return [Process(region.city(c), s, run_dir=run_dir) for c in chosen for s in services]


def start(
    process: Process,
    *,
    bootstrap: str,
    data_root: Path,
    deployment: Deployment | None = None,
    extra: Mapping[str, str] | None = None,
) -> int:
    """Start one service process unless it already runs; returns its pid."""
    return process.start(
        node_environment(
            process.city,
            process.service,
            bootstrap=bootstrap,
            data_root=data_root,
            deployment=deployment or Deployment(),
            extra=extra,
        )
    )


def stop(process: Supervised, *, grace_s: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL after ``grace_s``. True if it was running."""
    return process.stop(grace_s=grace_s)


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


def wait_healthy(procs: Iterable[Process], *, timeout_s: float) -> list[Process]:
    """Wait until every process answers healthy; return those that did not in time."""
    deadline = time.monotonic() + timeout_s
    pending = list(procs)
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if not health(p, timeout_s=1.0)[0]]
        if pending:
            time.sleep(0.5)
    return pending


def prepare(
    region: Region,
    cities: Sequence[str],
    *,
    bootstrap: str,
    deployment: Deployment,
    report: Callable[[str], None],
) -> None:
    """What a node needs before its processes start: dev certificates for every city of the
    region (kept when current) and each chosen city's topics from the catalogue."""
    for line in issue_dev_certificates(deployment.cert_dir, sorted(region.cities)):
        report(f"certs      {line}")
    catalogue = load_catalogue()
    for key in cities:
        city = region.city(key)
        created = asyncio.run(provision(bootstrap, catalogue, prefix=city.topic_prefix))
        report(
            f"topics     {city.name} {city.topic_prefix}*: {len(created.created)} created, "
            f"{len(created.unchanged)} present, {len(created.drift)} drifted"
        )


def up(
    region: Region,
    cities: Sequence[str] | None = None,
    *,
    bootstrap: str,
    data_root: Path,
    deployment: Deployment | None = None,
    services: Sequence[str] = SERVICES,
    extra: Mapping[str, str] | None = None,
    timeout_s: float = 120.0,
    report: Callable[[str], None] = print,
) -> tuple[list[Process], list[Process]]:
    """Certificates, topics and every chosen service of each city, started; returns the
    processes and those not healthy within ``timeout_s`` (still running)."""
    deployment = deployment or Deployment()
    chosen = local_cities(region) if cities is None else tuple(cities)
    prepare(region, chosen, bootstrap=bootstrap, deployment=deployment, report=report)
    procs = processes(region, chosen, services=services, run_dir=deployment.run_dir)
    for proc in procs:
        start(proc, bootstrap=bootstrap, data_root=data_root, deployment=deployment, extra=extra)
    return procs, wait_healthy(procs, timeout_s=timeout_s)
