"""Start and stop a real local broker from Python (deploy/local/kafka.sh does the work).

Used by the test harness, `make bench` and `make demo`.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from services.common.settings import REPO_ROOT as REPO_ROOT

KAFKA_SH = REPO_ROOT / "deploy" / "local" / "kafka.sh"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
            **os.environ,
            "KAFKA_STATE": str(self.state_dir),
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(self.controller_port),
        }

    def _run(self, command: str, timeout: float = 180) -> str:
        done = subprocess.run(  # noqa: S603 -- our own script, fixed arguments
            [str(KAFKA_SH), command],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"kafka.sh {command} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def up(self) -> None:
        self._run("up")

    def down(self) -> None:
        self._run("down")

    def kill(self) -> None:
        """SIGKILL the broker: for tests of what survives a broker crash."""
        assert self.state_dir is not None
        pid = int((self.state_dir / "kafka.pid").read_text().strip())
        os.kill(pid, 9)


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
