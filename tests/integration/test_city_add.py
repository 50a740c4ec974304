"""A fourth city joins by the documented path (docs/adding-a-city.md): ``city add`` writes its
configuration and certificates, it comes up as a live node beside Suzhou, Wuxi and Changzhou
(one broker, mutual TLS), and its CheckSubject answers a designation decided in Suzhou.

The three cities' entries are moved to ports and topic prefixes of this run (the demo's fixed
ones may be in use); Qingpu gets its ports and prefix through the command's own options.
Qingpu runs every service, a live node; the others run the lists service, all the check needs.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import pytest
import yaml

from creditlink.peer.v1 import common_pb2, credit_check_pb2, credit_check_pb2_grpc
from deploy import region as supervisor
from deploy.broker import REPO_ROOT
from services.common.kafka import make_producer
from services.common.peer import TlsFiles, secure_channel
from services.common.region import Region
from services.common.settings import load_settings
from tests.kit.identifiers import make_uscc
from tests.kit.lists import SUZHOU, list_decision
from tests.kit.lists_region import eventually, publish_records

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

PEERS = ("suzhou", "wuxi", "changzhou")


def _free_block(taken: set[int]) -> int:
    """A base whose ports base+1…base+4 are free, below Linux's ephemeral range (32768-60999)
    as the region file's ports are, so that no outgoing connection already holds one."""
    for _ in range(200):
        base = random.randrange(20_000, 32_000, 10)
        ports = range(base + 1, base + 5)
        if taken.isdisjoint(ports) and all(_bindable(port) for port in ports):
            taken.update(ports)
            return base
    raise RuntimeError("no free block of 4 ports")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _config_of_this_run(config_dir: Path, run: str, taken: set[int]) -> None:
    """deploy/config, with the three cities on ports and topic prefixes of this run."""
    shutil.copytree(REPO_ROOT / "deploy" / "config", config_dir)
    path = config_dir / "region.yaml"
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key in PEERS:
        entry = raw["cities"][key]
        for kind in ("endpoints", "ops"):
            base = _free_block(taken)
            order = ("lists", "scores", "alerts", "intake")
            entry[kind] = {s: f"127.0.0.1:{base + 1 + n}" for n, s in enumerate(order)}
        entry["topic_prefix"] = f"{run}{key}."
    path.write_text(yaml.safe_dump(raw, allow_unicode=True, sort_keys=False), encoding="utf-8")


async def _memberships(
    target: str, tls: TlsFiles, subject_key: str
) -> list[credit_check_pb2.Membership]:
    async with secure_channel(target, tls) as channel:
        try:
            answer = await credit_check_pb2_grpc.CreditCheckServiceStub(channel).CheckSubject(
                credit_check_pb2.CheckSubjectRequest(
                    subject_key=subject_key,
                    scenario=credit_check_pb2.SCENARIO_GOVERNMENT_PROCUREMENT,
                    purpose="集成测试",
                ),
                timeout=5,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            return []
    return list(answer.memberships)


def _ops(deployment: supervisor.Deployment, bootstrap: str, *command: str) -> tuple[int, str]:
    """``python -m deploy.ops COMMAND`` as the operator types it, on this run's region."""
    done = subprocess.run(
        [sys.executable, "-m", "deploy.ops", *command],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "KAFKA_BOOTSTRAP": bootstrap,
            "CREDITLINK_CONFIG_DIR": str(deployment.config_dir),
            "CREDITLINK_TLS_DIR": str(deployment.cert_dir),
            "CREDITLINK_RUN_DIR": str(deployment.run_dir),
            "COLUMNS": "200",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def _lag_rows(status: str, prefix: str) -> dict[str, int]:
    """group -> lag from the lag table of ``region status``, for the groups of ``prefix``."""
    rows = {}
    for line in status.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) == 4 and cells[1].startswith(prefix):
            rows[cells[1]] = int(cells[2].replace(",", ""))
    return rows


def _idle_lag(
    deployment: supervisor.Deployment, bootstrap: str, run: str
) -> tuple[dict[str, int], str]:
    """The lag ``region status`` reports for the groups of the four cities, once all are at 0
    (or the last report, after 30 s). The three peers run their lists service only, so the
    status's exit code says nothing here; the table of groups does."""
    deadline = time.monotonic() + 30
    while True:
        _code, status = _ops(deployment, bootstrap, "region", "status", *PEERS, "qingpu")
        lag = _lag_rows(status, run)
        if (lag and not any(lag.values())) or time.monotonic() > deadline:
            return lag, status
        time.sleep(1)


async def _designate_in_suzhou_and_check_at_qingpu(
    region: Region, deployment: supervisor.Deployment, bootstrap: str, data_root: Path
) -> credit_check_pb2.Membership:
    subject = f"L:{make_uscc(random.Random(), '320500')}"
    settings = load_settings(
        supervisor.node_environment(
            region.city("suzhou"),
            "intake",
            bootstrap=bootstrap,
            data_root=data_root,
            deployment=deployment,
        )
    )
    # In a transaction, as Suzhou's intake publishes: a commit marker follows the record.
    producer = make_producer(
        settings, client_id="test-city-add", transactional_id=f"{settings.topic_prefix}test"
    )
    await producer.start()
    try:
        async with producer.transaction():
            await publish_records(producer, settings, [list_decision(subject)])
    finally:
        await producer.stop()

    target = region.city("qingpu").endpoint("lists")
    tls = TlsFiles.for_city("qingpu", deployment.cert_dir)

    async def seen_at_qingpu() -> list[credit_check_pb2.Membership]:
        return await _memberships(target, tls, subject)

    (membership,) = await eventually(seen_at_qingpu, within=60)
    assert isinstance(membership, credit_check_pb2.Membership)
    return membership


def test_qingpu_added_by_city_add_answers_a_suzhou_designation(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    run = f"t{uuid.uuid4().hex[:8]}-"
    taken: set[int] = set()
    deployment = supervisor.Deployment(
        config_dir=tmp_path / "config", cert_dir=tmp_path / "certs", run_dir=tmp_path / "run"
    )
    _config_of_this_run(deployment.config_dir, run, taken)
    code, output = _ops(
        deployment,
        kafka_bootstrap,
        *("city", "add", "--key", "qingpu", "--code", "310118", "--topic-prefix", f"{run}qingpu."),
        *("--grpc-base", str(_free_block(taken)), "--ops-base", str(_free_block(taken))),
    )
    assert code == 0, output
    assert (deployment.cert_dir / "qingpu.crt").exists()

    region = deployment.region()
    assert region.city("qingpu").connected
    supervisor.prepare(
        region, (*PEERS, "qingpu"), bootstrap=kafka_bootstrap, deployment=deployment, report=print
    )
    procs = supervisor.processes(region, ["qingpu"], run_dir=deployment.run_dir)
    procs += supervisor.processes(region, PEERS, services=["lists"], run_dir=deployment.run_dir)
    data_root = tmp_path / "data"
    try:
        for proc in procs:
            supervisor.start(
                proc, bootstrap=kafka_bootstrap, data_root=data_root, deployment=deployment
            )
        late = supervisor.wait_healthy(procs, timeout_s=120)
        assert [p.name for p in late] == []

        membership = asyncio.run(
            _designate_in_suzhou_and_check_at_qingpu(region, deployment, kafka_bootstrap, data_root)
        )
        assert membership.issuing_city == SUZHOU
        assert membership.list_type == common_pb2.LIST_TYPE_BLACK
        assert membership.status == common_pb2.LIST_ENTRY_STATUS_ACTIVE

        # `region status` reports Qingpu's node up, and once the region is idle, every group
        # at lag 0, though the topics it reads end with transaction commit markers.
        code, status = _ops(deployment, kafka_bootstrap, "region", "status", "qingpu", "--no-lag")
        assert code == 0, status
        lag, status = _idle_lag(deployment, kafka_bootstrap, run)
        assert f"{run}suzhou.lists" in lag, status
        assert {group: behind for group, behind in lag.items() if behind} == {}, status
    finally:
        for proc in procs:
            proc.stop()
        for proc in procs:
            print(f"--- {proc.name} log (tail) ---\n{proc.log_text()[-2000:]}")
