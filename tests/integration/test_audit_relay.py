"""The audit chain written through a relay helper process, against the real broker.

What a node relies on: every appended entry becomes one record of one unbroken chain; a
relay started again continues the chain; a helper that dies makes the relay unavailable,
and the peer-call guard then refuses calls instead of serving them unaudited.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import pytest

from creditlink.peer.v1 import credit_check_pb2, credit_check_pb2_grpc
from services.common.audit import (
    AUDIT_TOPIC,
    AuditEntry,
    AuditUnavailable,
    read_audit_topic,
    verify_chain,
)
from services.common.audit_relay import AuditRelay
from services.common.avro import AvroSerde
from services.common.peer import secure_channel, start_peer_server
from services.common.settings import Settings
from tests.peer_kit import (
    ORG,
    FakeCreditCheck,
    audit_node_settings,
    credit_check_binding,
    make_consent_kit,
    make_pki,
    make_security,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

SUZHOU = "320500"


@pytest.fixture
async def settings(kafka_bootstrap: str) -> Settings:
    return await audit_node_settings(kafka_bootstrap)


@pytest.fixture
async def relay(settings: Settings) -> AsyncIterator[AuditRelay]:
    relay = AuditRelay(settings, node_city=SUZHOU, chain="lists", service="lists")
    await relay.start()
    try:
        yield relay
    finally:
        await relay.close()


def _entry(n: int) -> AuditEntry:
    return AuditEntry(
        caller_city="320200",
        callee_city=SUZHOU,
        method="/creditlink.peer.v1.CreditCheckService/CheckSubject",
        purpose=f"call {n}",
        status_code="OK",
        latency_ms=n % 7,
        at=datetime.now(UTC),
        subject_key=ORG,
    )


async def _records(settings: Settings) -> list[dict[str, object]]:
    serde = AvroSerde()
    messages = await read_audit_topic(settings, settings.topic(AUDIT_TOPIC))
    assert verify_chain(messages).ok
    return [serde.decode(m.value) for m in messages]


async def test_every_entry_is_one_record_of_one_unbroken_chain(
    settings: Settings, relay: AuditRelay
) -> None:
    for n in range(150):
        relay.append_nowait(_entry(n))
        if n % 40 == 0:
            await asyncio.sleep(0.03)  # several batches, not one
    relay.append_nowait(lambda: _entry(150))  # an entry made when its batch is sent
    await relay.flush()
    assert relay.head[0] == 151
    records = await _records(settings)
    assert [r["seq"] for r in records] == list(range(1, 152))
    assert [r["purpose"] for r in records] == [f"call {n}" for n in range(151)]
    assert records[-1]["hash"] == relay.head[1]


async def test_a_durable_append_returns_once_the_broker_has_the_record(
    settings: Settings,
) -> None:
    relay = AuditRelay(settings, node_city=SUZHOU, chain="durable", durable=True)
    await relay.start()
    try:
        await relay.append(_entry(1))
        assert relay.head[0] == 1
        records = await _records(settings)
        assert [r["purpose"] for r in records] == ["call 1"]
    finally:
        await relay.close()


async def test_a_relay_started_again_continues_the_chain(
    settings: Settings, relay: AuditRelay
) -> None:
    for n in range(5):
        relay.append_nowait(_entry(n))
    await relay.close()
    again = AuditRelay(settings, node_city=SUZHOU, chain="lists", service="lists")
    await again.start()
    try:
        assert again.head == relay.head
        assert again.head[0] == 5
        again.append_nowait(_entry(5))
        await again.flush()
    finally:
        await again.close()
    records = await _records(settings)
    assert [r["seq"] for r in records] == list(range(1, 7))


async def test_a_dead_helper_makes_the_guard_refuse_calls(
    settings: Settings, relay: AuditRelay, tmp_path_factory: pytest.TempPathFactory
) -> None:
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    security = make_security(make_consent_kit().keyring)
    server = await start_peer_server(
        bind="127.0.0.1:0",
        tls=pki.tls("suzhou"),
        services=[credit_check_binding(FakeCreditCheck(security, {}))],
        security=security,
        audit=relay,
    )
    try:
        async with secure_channel(f"127.0.0.1:{server.port}", pki.tls("wuxi")) as channel:
            stub = credit_check_pb2_grpc.CreditCheckServiceStub(channel)
            request = credit_check_pb2.CheckSubjectRequest(subject_key=ORG, purpose="before")
            await stub.CheckSubject(request, timeout=10)
            await relay.flush()
            assert relay.head[0] == 1

            assert relay.pid is not None
            os.kill(relay.pid, signal.SIGKILL)
            for _ in range(100):
                if not relay.healthy:
                    break
                await asyncio.sleep(0.05)
            assert not relay.healthy
            with pytest.raises(AuditUnavailable):
                relay.append_nowait(_entry(2))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.CheckSubject(request, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)
    records = await _records(settings)
    assert [r["purpose"] for r in records] == ["before"]
