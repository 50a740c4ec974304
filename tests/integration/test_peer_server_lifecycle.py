"""Graceful shutdown of the peer server on SIGTERM: health turns NOT_SERVING, the call in
flight is answered, new calls are refused."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from creditlink.peer.v1 import common_pb2, credit_check_pb2, credit_check_pb2_grpc
from services.common.peer import secure_channel, start_peer_server
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
        await asyncio.sleep(0.8)
        return await super().CheckSubject(request, context)


async def test_sigterm_drains_calls_in_flight_then_stops(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    security = make_security(make_consent_kit().keyring)
    servicer = SlowCreditCheck(security, {ORG: [common_pb2.LIST_TYPE_RED]})
    server = await start_peer_server(
        bind="127.0.0.1:0",
        tls=pki.tls("suzhou"),
        services=[credit_check_binding(servicer)],
        security=security,
        audit=None,
    )
    serving = asyncio.create_task(server.serve_until_signalled(grace=5))
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
        answer = await in_flight
        assert [m.list_type for m in answer.memberships] == [common_pb2.LIST_TYPE_RED]
        await asyncio.wait_for(serving, 10)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
