"""`region status` sees a stopped service as down within 10 seconds, and a restarted one up."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from deploy import region as supervisor
from deploy.broker import Broker
from tests.kit.deployment import RunRegion

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]


def test_status_reports_a_killed_service_down_then_up(kafka_broker: Broker, tmp_path: Path) -> None:
    run = RunRegion(tmp_path)
    region, deployment = run.region(), run.deployment
    bootstrap = kafka_broker.bootstrap

    def region_status() -> subprocess.CompletedProcess[str]:
        return run.ops(bootstrap, "region", "status", "suzhou", "--no-lag")

    supervisor.prepare(region, ["suzhou"], bootstrap=bootstrap, deployment=deployment, report=print)
    procs = supervisor.processes(region, ["suzhou"], run_dir=deployment.run_dir)
    data_root = tmp_path / "data"
    try:
        for proc in procs:
            supervisor.start(proc, bootstrap=bootstrap, data_root=data_root, deployment=deployment)
        assert supervisor.wait_healthy(procs, timeout_s=120) == []
        healthy = region_status()
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        assert healthy.stdout.count("up") >= len(procs)

        lists = next(p for p in procs if p.service == "lists")
        pid = lists.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        down = region_status()
        noticed_after = time.monotonic() - killed_at
        assert down.returncode == 1
        line = next(row for row in down.stdout.splitlines() if "lists" in row)
        assert "not running" in line or "no answer" in line, down.stdout
        assert noticed_after < 10.0

        supervisor.start(lists, bootstrap=bootstrap, data_root=data_root, deployment=deployment)
        assert supervisor.wait_healthy([lists], timeout_s=120) == []
        again = region_status()
        assert again.returncode == 0, again.stdout
    finally:
        for proc in procs:
            supervisor.stop(proc)
