"""A local region of one test run, for tests of ``deploy/`` (the demo, ``region status``,
``city add``): ``deploy/config`` copied with its connected cities moved to ports and topic
prefixes of the run, with certificates and process files of its own
(:class:`deploy.region.Deployment`).

Several test sessions share the machine, and the demo's fixed ports and prefixes would make
them collide. Example::

    run = RunRegion(tmp_path)
    procs, late = supervisor.up(run.region(), bootstrap=..., data_root=...,
                                deployment=run.deployment)
    status = run.ops(bootstrap, "region", "status", "suzhou")
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import yaml

from deploy.cities import PORT_ORDER
from deploy.region import CONFIG_DIR, Deployment
from services.common.region import Region
from services.common.settings import REPO_ROOT

DEMO_CITIES = ("suzhou", "wuxi", "changzhou")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class RunRegion:
    """``deploy/config`` under ``directory/config`` with ``cities`` on ports and topic prefixes
    of this run; certificates in ``directory/certs``, pid files and logs in ``directory/run``."""

    def __init__(self, directory: Path, cities: Sequence[str] = DEMO_CITIES) -> None:
        self.run = f"t{uuid.uuid4().hex[:8]}-"
        self._taken: set[int] = set()
        self.deployment = Deployment(
            config_dir=directory / "config",
            cert_dir=directory / "certs",
            run_dir=directory / "run",
        )
        shutil.copytree(CONFIG_DIR, self.deployment.config_dir)
        path = self.deployment.region_file
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        for key in cities:
            entry = raw["cities"][key]
            for kind in ("endpoints", "ops"):
                base = self.free_block()
                entry[kind] = {s: f"127.0.0.1:{base + 1 + n}" for n, s in enumerate(PORT_ORDER)}
            entry["topic_prefix"] = self.prefix(key)
        text = yaml.safe_dump(raw, allow_unicode=True, sort_keys=False)
        path.write_text(text, encoding="utf-8")

    def prefix(self, city: str) -> str:
        return f"{self.run}{city}."

    def region(self) -> Region:
        return self.deployment.region()

    def free_block(self) -> int:
        """A base whose ports base+1…base+4 are free and not yet given out by this run, below
        Linux's ephemeral range (32768-60999) as the region file's ports are, so that no
        outgoing connection already holds one."""
        for _ in range(200):
            base = random.randrange(20_000, 32_000, 10)
            ports = range(base + 1, base + 1 + len(PORT_ORDER))
            if self._taken.isdisjoint(ports) and all(_bindable(port) for port in ports):
                self._taken.update(ports)
                return base
        raise RuntimeError("no free block of ports")

    def ops(self, bootstrap: str, *command: str) -> subprocess.CompletedProcess[str]:
        """``python -m deploy.ops COMMAND`` as the operator types it, on this run's region."""
        return subprocess.run(
            [sys.executable, "-m", "deploy.ops", *command],
            cwd=REPO_ROOT,
            env={
                **os.environ,
                "KAFKA_BOOTSTRAP": bootstrap,
                "CREDITLINK_CONFIG_DIR": str(self.deployment.config_dir),
                "CREDITLINK_TLS_DIR": str(self.deployment.cert_dir),
                "CREDITLINK_RUN_DIR": str(self.deployment.run_dir),
                "COLUMNS": "200",
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
