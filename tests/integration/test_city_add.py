"""A fourth city joins by the documented path (docs/adding-a-city.md): ``city add`` writes its
configuration and certificates, it comes up as a live node beside Suzhou, Wuxi and Changzhou
(one broker, mutual TLS), and its CheckSubject answers a designation decided in Suzhou.

The three cities' entries are moved to ports and topic prefixes of this run (the demo's fixed
ones may be in use: tests/kit/deployment.py); Qingpu gets its ports and prefix through the
command's own options.
Qingpu runs every service, a live node; the others run the lists service, all the check needs.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from creditlink.peer.v1 import common_pb2, credit_check_pb2, credit_check_pb2_grpc
from deploy import region as supervisor
from services.common.kafka import make_producer
from services.common.peer import TlsFiles, secure_channel
from services.common.region import Region
from services.common.settings import load_settings
from tests.kit.deployment import RunRegion
from tests.kit.identifiers import make_uscc
from tests.kit.lists import SUZHOU, list_decision
from tests.kit.lists_region import eventually, publish_records

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

PEERS = ("suzhou", "wuxi", "changzhou")


async def _memberships(
    target: str, tls: TlsFiles, subject_key: str, city: str
) -> list[credit_check_pb2.Membership]:
    async with secure_channel(target, tls, expect_city=city, service="lists") as channel:
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


async def _serving_with_run_certificates(
    region: Region, deployment: supervisor.Deployment
) -> dict[str, bool]:
    """Whether each of Qingpu's gRPC endpoints answers its health check to a peer holding a
    certificate of this run's CA: each serves with the certificate `city add` issued."""
    tls = TlsFiles.for_city("wuxi", deployment.cert_dir)
    serving = {}
    for service, target in region.city("qingpu").endpoints.items():
        async with secure_channel(target, tls, expect_city="qingpu", service=service) as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=10
            )
        serving[service] = answer.status == health_pb2.HealthCheckResponse.SERVING
    return serving


def _lag_rows(status: str, prefix: str) -> dict[str, int]:
    """group -> lag from the lag table of ``region status``, for the groups of ``prefix``."""
    rows = {}
    for line in status.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) == 4 and cells[1].startswith(prefix):
            rows[cells[1]] = int(cells[2].replace(",", ""))
    return rows


def _idle_lag(run: RunRegion, bootstrap: str) -> tuple[dict[str, int], str]:
    """The lag ``region status`` reports for the groups of the four cities, once all are at 0
    (or the last report, after 30 s). The three peers run their lists service only, so the
    status's exit code says nothing here; the table of groups does."""
    deadline = time.monotonic() + 30
    while True:
        status = run.ops(bootstrap, "region", "status", *PEERS, "qingpu").stdout
        lag = _lag_rows(status, run.run)
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
        return await _memberships(target, tls, subject, "qingpu")

    (membership,) = await eventually(seen_at_qingpu, within=60)
    assert isinstance(membership, credit_check_pb2.Membership)
    return membership


def test_qingpu_added_by_city_add_answers_a_suzhou_designation(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    run = RunRegion(tmp_path, PEERS)
    deployment = run.deployment
    added = run.ops(
        kafka_bootstrap,
        *("city", "add", "--key", "qingpu", "--code", "310118"),
        *("--topic-prefix", run.prefix("qingpu")),
        *("--grpc-base", str(run.free_block()), "--ops-base", str(run.free_block())),
    )
    assert added.returncode == 0, added.stdout + added.stderr
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
        serving = asyncio.run(_serving_with_run_certificates(region, deployment))
        assert serving == dict.fromkeys(supervisor.SERVICES, True)

        membership = asyncio.run(
            _designate_in_suzhou_and_check_at_qingpu(region, deployment, kafka_bootstrap, data_root)
        )
        assert membership.issuing_city == SUZHOU
        assert membership.list_type == common_pb2.LIST_TYPE_BLACK
        assert membership.status == common_pb2.LIST_ENTRY_STATUS_ACTIVE

        # `region status` reports Qingpu's node up, and once the region is idle, every group
        # at lag 0, though the topics it reads end with transaction commit markers.
        up = run.ops(kafka_bootstrap, "region", "status", "qingpu", "--no-lag")
        assert up.returncode == 0, up.stdout + up.stderr
        lag, status = _idle_lag(run, kafka_bootstrap)
        assert f"{run.prefix('suzhou')}lists" in lag, status
        assert {group: behind for group, behind in lag.items() if behind} == {}, status
    finally:
        for proc in procs:
            proc.stop()
        for proc in procs:
            print(f"--- {proc.name} log (tail) ---\n{proc.log_text()[-2000:]}")
