"""Start and stop a real local broker, or a 3-broker cluster, from Python
(deploy/local/kafka.sh does the work).

Used by the test harness, `make bench` and `make demo`; the cluster by the tests of what
replication survives (tests/integration/test_kafka_cluster.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from services.common.settings import REPO_ROOT as REPO_ROOT

KAFKA_SH = REPO_ROOT / "deploy" / "local" / "kafka.sh"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: all held open at once, so none is handed out twice."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _kafka_sh(command: str, env: Mapping[str, str], timeout: float) -> str:
    done = subprocess.run(  # noqa: S603 -- our own script, fixed arguments
        [str(KAFKA_SH), command],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"kafka.sh {command} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def _gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaped yet counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def broker_pid(state_dir: Path) -> int | None:
    """The pid of the broker started from ``state_dir`` if it runs. Checked as kafka.sh does,
    by its command line, so a pid the system gave to another process since is never used."""
    try:
        pid = int((state_dir / "kafka.pid").read_text().strip())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ValueError):
        return None
    ours = argv[-3:-1] == [b"kafka.Kafka", str(state_dir / "server.properties").encode()]
    return pid if ours and not _gone(pid) else None


def _sigkill(state_dir: Path) -> None:
    """SIGKILL the broker of ``state_dir`` and wait until it is gone: its ports are closed."""
    pid = broker_pid(state_dir)
    if pid is None:
        raise RuntimeError(f"no broker runs from {state_dir}")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not _gone(pid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"broker pid {pid} still runs 10 s after SIGKILL")
        time.sleep(0.05)


def broker_answers(bootstrap: str, timeout_s: float = 5.0) -> bool:
    """A TCP probe first (cheap refusal), then a real metadata call."""
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            pass
    except OSError:
        return False

    async def metadata() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        try:
            await asyncio.wait_for(admin.start(), timeout_s)
            await asyncio.wait_for(admin.describe_cluster(), timeout_s)
            return True
        except Exception:
            return False
        finally:
            await admin.close()

    return asyncio.run(metadata())


@dataclass
class Broker:
    """A broker this run started in its own state directory (or one found running)."""

    bootstrap: str
    state_dir: Path | None
    port: int | None = None
    controller_port: int | None = None

    @property
    def started_here(self) -> bool:
        return self.state_dir is not None

    def _env(self) -> dict[str, str]:
        assert self.state_dir is not None
        return {
            "KAFKA_STATE": str(self.state_dir),
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(self.controller_port),
        }

    def _run(self, command: str, timeout: float = 180) -> str:
        return _kafka_sh(command, self._env(), timeout)

    def up(self) -> None:
        self._run("up")

    def down(self) -> None:
        self._run("down")

    def kill(self) -> None:
        """SIGKILL the broker: for tests of what survives a broker crash."""
        assert self.state_dir is not None
        _sigkill(self.state_dir)


def start_broker(state_dir: Path) -> Broker:
    port, controller_port = free_port(), free_port()
    broker = Broker(
        bootstrap=f"127.0.0.1:{port}",
        state_dir=state_dir,
        port=port,
        controller_port=controller_port,
    )
    broker.up()
    return broker


@dataclass
class Cluster:
    """A KRaft cluster on one machine (``kafka.sh cluster-up``): node ``i`` (from 1) is broker
    and controller, listening on ``ports[i - 1]`` and ``controller_ports[i - 1]``.

    PLAINTEXT for now; TLS listeners would be one more port per node, rendered the same way.
    """

    state_dir: Path
    ports: tuple[int, ...]
    controller_ports: tuple[int, ...]

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.ports)

    @property
    def node_ids(self) -> range:
        return range(1, len(self.ports) + 1)

    def address(self, node_id: int) -> str:
        return f"127.0.0.1:{self.ports[node_id - 1]}"

    def _run(self, command: str, timeout: float = 240) -> str:
        env = {
            "KAFKA_STATE": str(self.state_dir),
            "KAFKA_CLUSTER_PORTS": ",".join(map(str, self.ports)),
            "KAFKA_CLUSTER_CONTROLLER_PORTS": ",".join(map(str, self.controller_ports)),
            # Three JVMs starting at once on a shared 2-core box took 20-60 s to answer, by
            # the load; more than kafka.sh's 60 s default before a start counts as failed.
            "KAFKA_READY_TIMEOUT": os.environ.get("KAFKA_READY_TIMEOUT", "120"),
        }
        return _kafka_sh(command, env, timeout)

    def up(self) -> None:
        """Start every node that is not running and wait until all are live brokers."""
        self._run("cluster-up")

    def down(self, *, graceful: bool = True) -> None:
        """Stop every node; ``graceful=False`` SIGKILLs them, for a cluster whose data is
        thrown away (a clean stop of all nodes at once takes seconds of controller waits)."""
        if graceful:
            self._run("cluster-down")
            return
        for node_id in self.node_ids:
            if broker_pid(self._node_dir(node_id)) is not None:
                self.kill(node_id)

    def kill(self, node_id: int) -> None:
        """SIGKILL one node: for tests of what survives a broker crash. ``up`` restarts it."""
        _sigkill(self._node_dir(node_id))

    def _node_dir(self, node_id: int) -> Path:
        return self.state_dir / f"node-{node_id}"


def start_cluster(state_dir: Path, nodes: int = 3) -> Cluster:
    ports = free_ports(2 * nodes)
    cluster = Cluster(
        state_dir=state_dir, ports=tuple(ports[:nodes]), controller_ports=tuple(ports[nodes:])
    )
    try:
        cluster.up()
    except BaseException:
        # Nodes that did start must not outlive a failed start; its data is of no use.
        cluster.down(graceful=False)
        raise
    return cluster
