"""The region's CA hierarchy over real TLS (docs/trust.md, "Certificates").

Suzhou serves a CreditCheckService behind the common bootstrap. Callers present certificates
of the tests' hierarchy (a root, one CA per city): a rogue CA for Wuxi that the real root
signed, naming Suzhou; a certificate the root signed itself; one sent without its city CA.
Clients dial a city and service and must reach that city's server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from creditlink.peer.v1 import common_pb2, credit_check_pb2, credit_check_pb2_grpc
from services.common.audit import AuditChainWriter, read_audit_topic
from services.common.avro import AvroSerde
from services.common.certs import issue_city_certificate, service_host
from services.common.kafka import make_producer
from services.common.peer import (
    DENIAL_TRAILER,
    PeerServer,
    TlsFiles,
    secure_channel,
    start_peer_server,
)
from services.common.settings import Settings
from tests.peer_kit import (
    ORG,
    FakeCreditCheck,
    PeerPki,
    audit_node_settings,
    credit_check_binding,
    make_consent_kit,
    make_pki,
    make_security,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

RED = common_pb2.LIST_TYPE_RED


@dataclass
class Node:
    server: PeerServer
    pki: PeerPki
    settings: Settings
    audit: AuditChainWriter
    serde: AvroSerde

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def files(self, certificate: str, *, trusting: str = "suzhou") -> TlsFiles:
        return TlsFiles(
            ca=self.pki.tls(trusting).ca,
            cert=self.pki.directory / f"{certificate}.crt",
            key=self.pki.directory / f"{certificate}.key",
        )

    async def last_record(self, before: int) -> dict[str, Any]:
        """The audit record after ``before``, once the guard has queued it (it records a call
        when the call has ended, after the refusal reached the caller)."""
        for _ in range(500):
            await self.audit.flush()
            if self.audit.head[0] > before:
                break
            await asyncio.sleep(0.01)
        messages = await read_audit_topic(self.settings, self.audit.topic)
        record: dict[str, Any] = self.serde.decode(messages[-1].value)
        return record


@pytest.fixture(scope="module")
async def node(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Node]:
    settings = await audit_node_settings(kafka_bootstrap)
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    security = make_security(make_consent_kit().keyring)
    serde = AvroSerde()
    producer = make_producer(settings, client_id="pki-test")
    await producer.start()
    audit = AuditChainWriter(settings, serde, producer, node_city="320500", service="lists")
    await audit.start()
    server = await start_peer_server(
        bind="127.0.0.1:0",
        tls=pki.tls("suzhou"),
        services=[
            credit_check_binding(FakeCreditCheck(security, {ORG: [common_pb2.LIST_TYPE_RED]}))
        ],
        security=security,
        audit=audit,
    )
    try:
        yield Node(server, pki, settings, audit, serde)
    finally:
        await server.stop(0)
        await producer.stop()


async def _call(
    node: Node, tls: TlsFiles, *, expect_city: str = "suzhou"
) -> credit_check_pb2.CheckSubjectResponse:
    async with secure_channel(
        node.target, tls, expect_city=expect_city, service="lists"
    ) as channel:
        response: credit_check_pb2.CheckSubjectResponse = (
            await credit_check_pb2_grpc.CreditCheckServiceStub(channel).CheckSubject(
                credit_check_pb2.CheckSubjectRequest(subject_key=ORG, purpose="x"), timeout=5
            )
        )
        return response


async def _refused(node: Node, tls: TlsFiles, **kwargs: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _call(node, tls, **kwargs)
    return refused.value


def _denial(error: grpc.aio.AioRpcError) -> str | None:
    for key, value in error.trailing_metadata() or ():
        if key == DENIAL_TRAILER:
            return str(value)
    return None


async def test_a_city_certificate_from_its_own_city_ca_is_answered(node: Node) -> None:
    answer = await _call(node, node.pki.tls("wuxi"))
    assert [m.list_type for m in answer.memberships] == [RED]


@pytest.mark.parametrize(
    ("certificate", "denial"),
    [
        # A CA for Wuxi that the real root signed, issuing a certificate naming Suzhou (its host
        # names are Wuxi's, so the handshake's name constraints let it through).
        ("rogue", "issuer-of-another-city"),
        # A certificate naming Suzhou that the root signed itself, with no city CA between.
        ("root-signed", "issuer-not-a-city-ca"),
    ],
)
async def test_a_certificate_not_from_its_own_city_ca_is_refused_and_audited(
    node: Node, certificate: str, denial: str
) -> None:
    await node.audit.flush()
    before = node.audit.head[0]
    error = await _refused(node, node.files(certificate))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _denial(error) == denial
    last = await node.last_record(before)
    assert (last["caller_city"], last["status_code"]) == ("unknown", "UNAUTHENTICATED")
    assert last["denial_code"] == denial


async def test_a_city_ca_cannot_issue_another_citys_host_names(node: Node) -> None:
    """The rogue Wuxi CA's certificate naming Suzhou's hosts breaks its name constraints: the
    server's TLS stack refuses the handshake before any handler runs."""
    error = await _refused(node, node.files("rogue-hosts"))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_certificate_sent_without_its_city_ca_fails_the_handshake(
    node: Node, tmp_path: Path
) -> None:
    wuxi = node.pki.tls("wuxi")
    leaf_only = tmp_path / "wuxi-leaf.crt"
    text = wuxi.cert.read_text()
    leaf_only.write_text(text[: text.index("-----END CERTIFICATE-----") + 26])
    error = await _refused(node, TlsFiles(ca=wuxi.ca, cert=leaf_only, key=wuxi.key))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_client_dialling_wuxi_refuses_a_server_presenting_suzhous_certificate(
    node: Node,
) -> None:
    """The address is Wuxi's as far as the client knows; the server there is Suzhou's. The
    same client dialling Suzhou there is answered (the first test)."""
    error = await _refused(node, node.pki.tls("wuxi"), expect_city="wuxi")
    assert error.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("certificate", "service", "answered"),
    [
        # From Suzhou's own CA, naming only its lists service: answered as that ...
        ("lists-only", "lists", True),
        # ... and refused when dialled as another service.
        ("lists-only", "scores", False),
        # Names Suzhou in its URI SAN, from the rogue Wuxi CA: its host names are Wuxi's.
        ("rogue", "lists", False),
    ],
)
async def test_a_client_checks_the_server_certificate_for_the_city_and_service_it_dialled(
    node: Node, certificate: str, service: str, answered: bool
) -> None:
    security = make_security(make_consent_kit().keyring)
    issue_city_certificate(
        node.pki.city_cas["suzhou"], "suzhou", hosts=(service_host("suzhou", "lists"),)
    ).write(node.pki.directory / "lists-only.crt", node.pki.directory / "lists-only.key")
    server = await start_peer_server(
        bind="127.0.0.1:0",
        tls=node.files(certificate),
        services=[credit_check_binding(FakeCreditCheck(security, {ORG: [RED]}))],
        security=security,
        audit=None,
    )
    try:
        async with secure_channel(
            f"127.0.0.1:{server.port}", node.pki.tls("wuxi"), expect_city="suzhou", service=service
        ) as channel:
            call = credit_check_pb2_grpc.CreditCheckServiceStub(channel).CheckSubject(
                credit_check_pb2.CheckSubjectRequest(subject_key=ORG, purpose="x"), timeout=5
            )
            if answered:
                assert [m.list_type for m in (await call).memberships] == [RED]
            else:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)
