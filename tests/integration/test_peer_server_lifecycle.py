"""Graceful shutdown of a node on SIGTERM, run as every service runs it
(``services.common.node.run_until_signalled``): the peer server's health turns NOT_SERVING,
the call in flight is answered, new calls are refused, and the ops endpoint answers until the
node has stopped."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from creditlink.peer.v1 import common_pb2, credit_check_pb2, credit_check_pb2_grpc
from services.common.node import run_until_signalled
from services.common.observability import Check, OpsServer
from services.common.peer import (
    PeerSecurity,
    PeerServer,
    TlsFiles,
    secure_channel,
    start_peer_server,
)
from tests.peer_kit import (
    ORG,
    FakeCreditCheck,
    credit_check_binding,
    make_consent_kit,
    make_pki,
    make_security,
)

pytestmark = pytest.mark.timeout(60)


class SlowCreditCheck(FakeCreditCheck):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.started = asyncio.Event()

    async def CheckSubject(
        self, request: credit_check_pb2.CheckSubjectRequest, context: grpc.aio.ServicerContext
    ) -> credit_check_pb2.CheckSubjectResponse:
        self.started.set()
        await asyncio.sleep(1.5)
        return await super().CheckSubject(request, context)


class CheckNode:
    """The smallest node ``run_until_signalled`` runs: a peer server with one servicer."""

    def __init__(self, tls: TlsFiles, security: PeerSecurity, servicer: SlowCreditCheck) -> None:
        self.tls = tls
        self.security = security
        self.servicer = servicer
        self.server: PeerServer | None = None
        self.started = asyncio.Event()
        self.stopped_with: float | None = None

    async def start(self) -> None:
        self.server = await start_peer_server(
            bind="127.0.0.1:0",
            tls=self.tls,
            services=[credit_check_binding(self.servicer)],
            security=self.security,
            audit=None,
        )
        self.started.set()

    async def stop(self, grace: float) -> None:
        assert self.server is not None
        self.stopped_with = grace
        await self.server.stop(grace)

    def health_checks(self) -> Mapping[str, Check]:
        return {"server": lambda: self.server is not None}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _healthz(port: int) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/healthz") as response,
    ):
        return response.status, await response.json()


async def test_sigterm_drains_calls_in_flight_then_stops(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    security = make_security(make_consent_kit().keyring)
    servicer = SlowCreditCheck(security, {ORG: [common_pb2.LIST_TYPE_RED]})
    node = CheckNode(pki.tls("suzhou"), security, servicer)
    ops_port = _free_port()
    ops = OpsServer(service="lists", city="suzhou", port=ops_port)
    serving = asyncio.create_task(run_until_signalled(node, grace=5, ops=ops))
    await asyncio.wait_for(node.started.wait(), 10)
    server = node.server
    assert server is not None
    # The ops endpoint comes up with the node's checks.
    for _ in range(50):
        try:
            status, body = await _healthz(ops_port)
            break
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.1)
    else:
        raise AssertionError("the ops endpoint never answered")
    assert (status, body["checks"]) == (200, {"server": True})
    async with secure_channel(
        f"127.0.0.1:{server.port}", pki.tls("wuxi"), expect_city="suzhou", service="lists"
    ) as channel:
        stub = credit_check_pb2_grpc.CreditCheckServiceStub(channel)
        in_flight = asyncio.ensure_future(
            stub.CheckSubject(
                credit_check_pb2.CheckSubjectRequest(subject_key=ORG, purpose="x"), timeout=10
            )
        )
        await asyncio.wait_for(servicer.started.wait(), 5)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.2)
        health = await server.health.Check(health_pb2.HealthCheckRequest(service=""), None)
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        # Still draining: the ops endpoint answers until the node has stopped.
        assert not in_flight.done()
        assert (await _healthz(ops_port))[0] == 200
        answer = await in_flight
        assert [m.list_type for m in answer.memberships] == [common_pb2.LIST_TYPE_RED]
        await asyncio.wait_for(serving, 10)
        assert node.stopped_with == 5
        with pytest.raises(aiohttp.ClientConnectionError):
            await _healthz(ops_port)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
