"""`region status` sees a stopped service as down within 10 seconds, and a restarted one up."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy import region as supervisor
from deploy.broker import REPO_ROOT, Broker
from services.common.certs import issue_dev_certificates
from services.common.region import load_region
from services.common.topics import load_catalogue, provision

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]


def region_status(bootstrap: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.ops", "region", "status", "suzhou", "--no-lag"],
        cwd=REPO_ROOT,
        env={**os.environ, "KAFKA_BOOTSTRAP": bootstrap, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_status_reports_a_killed_service_down_then_up(kafka_broker: Broker, tmp_path: Path) -> None:
    region = load_region(REPO_ROOT / "deploy" / "config" / "region.yaml")
    issue_dev_certificates(supervisor.CERT_DIR, sorted(region.cities))
    asyncio.run(
        provision(
            kafka_broker.bootstrap, load_catalogue(), prefix=region.city("suzhou").topic_prefix
        )
    )
    procs = supervisor.processes(region, ("suzhou",))
    try:
        for proc in procs:
            supervisor.start(proc, bootstrap=kafka_broker.bootstrap, data_root=tmp_path)
        assert supervisor.wait_healthy(procs, timeout_s=120) == []
        healthy = region_status(kafka_broker.bootstrap)
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        assert healthy.stdout.count("up") >= len(procs)

        lists = next(p for p in procs if p.service == "lists")
        pid = lists.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        down = region_status(kafka_broker.bootstrap)
        noticed_after = time.monotonic() - killed_at
        assert down.returncode == 1
        line = next(row for row in down.stdout.splitlines() if "lists" in row)
        assert "not running" in line or "no answer" in line, down.stdout
        assert noticed_after < 10.0

        supervisor.start(lists, bootstrap=kafka_broker.bootstrap, data_root=tmp_path)
        assert supervisor.wait_healthy([lists], timeout_s=120) == []
        again = region_status(kafka_broker.bootstrap)
        assert again.returncode == 0, again.stdout
    finally:
        for proc in procs:
            supervisor.stop(proc)
