"""The security of peer calls over real sockets, real TLS and the real broker (docs/design.md §5).

Suzhou serves a CreditCheckService behind the common bootstrap (mTLS, policy, consent,
audit). Callers present certificates from the tests' own CA: Wuxi, Changzhou, Jiashan, a
certificate from a foreign CA, an expired one, one naming a city outside the region, or none.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from creditlink.peer.v1 import common_pb2, credit_check_pb2, credit_check_pb2_grpc
from services.common.audit import AuditChainWriter, AuditMessage, read_audit_topic, verify_chain
from services.common.audit.query import calls_about
from services.common.avro import AvroSerde
from services.common.certs import service_host
from services.common.kafka import make_producer
from services.common.peer import (
    DENIAL_TRAILER,
    PeerServer,
    TlsFiles,
    secure_channel,
    start_peer_server,
)
from services.common.settings import REPO_ROOT, Settings
from tests.peer_kit import (
    CHECK_PURPOSE,
    ORG,
    OTHER_PERSON,
    PERSON,
    ConsentKit,
    FakeCreditCheck,
    PeerPki,
    audit_node_settings,
    credit_check_binding,
    make_consent_kit,
    make_pki,
    make_security,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

WUXI, CHANGZHOU = "320200", "320400"


@dataclass
class Node:
    server: PeerServer
    pki: PeerPki
    consent: ConsentKit
    settings: Settings
    audit: AuditChainWriter
    serde: AvroSerde

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def stub(
        self, tls: TlsFiles
    ) -> tuple[grpc.aio.Channel, credit_check_pb2_grpc.CreditCheckServiceStub]:
        channel = secure_channel(self.target, tls, expect_city="suzhou", service="lists")
        return channel, credit_check_pb2_grpc.CreditCheckServiceStub(channel)

    async def audit_messages(self) -> list[AuditMessage]:
        await self.audit.flush()
        return await read_audit_topic(self.settings, self.audit.topic)

    async def audit_records(self) -> list[dict[str, Any]]:
        return [self.serde.decode(m.value) for m in await self.audit_messages()]

    async def audited_past(self, seq: int) -> None:
        """Wait until the chain is past ``seq``. The guard records a call once it has ended,
        and grpc.aio's ``abort`` sends the refusal before that: the caller can see a refusal
        just before its record is queued."""
        for _ in range(500):
            await self.audit.flush()
            if self.audit.head[0] > seq:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"no audit record after seq {seq}")


@pytest.fixture(scope="module")
async def node(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Node]:
    settings = await audit_node_settings(kafka_bootstrap)
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    consent = make_consent_kit()
    security = make_security(consent.keyring)
    serde = AvroSerde()
    producer = make_producer(settings, client_id="audit-test")
    await producer.start()
    audit = AuditChainWriter(settings, serde, producer, node_city="320500", service="lists")
    await audit.start()
    servicer = FakeCreditCheck(
        security, {ORG: [common_pb2.LIST_TYPE_BLACK], PERSON: [common_pb2.LIST_TYPE_WATCH]}
    )
    server = await start_peer_server(
        bind="127.0.0.1:0",
        tls=pki.tls("suzhou"),
        services=[credit_check_binding(servicer)],
        security=security,
        audit=audit,
    )
    try:
        yield Node(server, pki, consent, settings, audit, serde)
    finally:
        await server.stop(0)
        await producer.stop()


async def _check(node: Node, caller: str, **fields: Any) -> credit_check_pb2.CheckSubjectResponse:
    channel, stub = node.stub(node.pki.tls(caller))
    async with channel:
        response: credit_check_pb2.CheckSubjectResponse = await stub.CheckSubject(
            credit_check_pb2.CheckSubjectRequest(**fields), timeout=10
        )
        return response


async def _refusal(node: Node, caller: str, **fields: Any) -> grpc.aio.AioRpcError:
    """The error a refused call ends with, once its audit record is on the chain."""
    await node.audit.flush()
    before = node.audit.head[0]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _check(node, caller, **fields)
    await node.audited_past(before)
    return refused.value


def _denial(error: grpc.aio.AioRpcError) -> str | None:
    for key, value in error.trailing_metadata() or ():
        if key == DENIAL_TRAILER:
            return str(value)
    return None


# --- transport: who may connect at all ----------------------------------------------------


async def test_city_with_valid_certificate_is_answered_and_audited(node: Node) -> None:
    response = await _check(
        node,
        "wuxi",
        subject_key=ORG,
        scenario=credit_check_pb2.SCENARIO_TENDERING,
        purpose="WXZB-2024-0031",
    )
    assert [m.list_type for m in response.memberships] == [common_pb2.LIST_TYPE_BLACK]
    last = (await node.audit_records())[-1]
    assert last["caller_city"] == WUXI
    assert last["callee_city"] == "320500"
    assert last["method"] == "/creditlink.peer.v1.CreditCheckService/CheckSubject"
    assert (last["status_code"], last["denial_code"]) == ("OK", None)
    assert last["subject_key"] == ORG
    assert last["purpose"] == "TENDERING: WXZB-2024-0031"
    assert len(last["peer_certificate_sha256"]) == 64


async def test_client_without_certificate_is_refused(node: Node) -> None:
    tls = node.pki.tls("wuxi")
    credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca.read_bytes())
    async with grpc.aio.secure_channel(
        node.target,
        credentials,
        options=[("grpc.ssl_target_name_override", service_host("suzhou", "lists"))],
    ) as channel:
        stub = credit_check_pb2_grpc.CreditCheckServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CheckSubject(
                credit_check_pb2.CheckSubjectRequest(subject_key=ORG, purpose="x"), timeout=5
            )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails


@pytest.mark.parametrize("certificate", ["foreign", "expired"])
async def test_certificate_from_other_ca_or_expired_is_refused(
    node: Node, certificate: str
) -> None:
    tls = node.pki.tls("suzhou")  # trust the right CA, present a bad certificate
    bad = TlsFiles(
        ca=tls.ca,
        cert=node.pki.directory / f"{certificate}.crt",
        key=node.pki.directory / f"{certificate}.key",
    )
    error = await _refusal_with(node, bad)
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def _refusal_with(node: Node, tls: TlsFiles) -> grpc.aio.AioRpcError:
    async with secure_channel(node.target, tls, expect_city="suzhou", service="lists") as channel:
        stub = credit_check_pb2_grpc.CreditCheckServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CheckSubject(
                credit_check_pb2.CheckSubjectRequest(subject_key=ORG, purpose="x"), timeout=5
            )
    return refused.value


async def test_certificate_naming_no_city_of_the_region_is_unauthenticated(node: Node) -> None:
    error = await _refusal(node, "atlantis", subject_key=ORG, purpose="x")
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _denial(error) == "unknown-city"
    last = (await node.audit_records())[-1]
    assert (last["status_code"], last["denial_code"]) == ("UNAUTHENTICATED", "unknown-city")


@pytest.mark.parametrize(
    ("certificate", "denial"), [("cn-only", "no-city-name"), ("two-cities", "several-city-names")]
)
async def test_certificate_must_name_exactly_one_city_in_a_uri_san(
    node: Node, certificate: str, denial: str
) -> None:
    """The CN is not an identity, and a certificate naming two cities names none of them."""
    error = await _refusal(node, certificate, subject_key=ORG, purpose="x")
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _denial(error) == denial
    last = (await node.audit_records())[-1]
    assert (last["caller_city"], last["status_code"]) == ("unknown", "UNAUTHENTICATED")
    assert last["denial_code"] == denial
    assert last["peer_certificate_sha256"] is None


async def test_health_and_reflection_are_served_over_mtls(node: Node) -> None:
    async with secure_channel(
        node.target, node.pki.tls("jiashan"), expect_city="suzhou", service="lists"
    ) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(
            health_pb2.HealthCheckRequest(service="creditlink.peer.v1.CreditCheckService"),
            timeout=5,
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


# --- policy -------------------------------------------------------------------------------


async def test_method_denied_by_policy_is_permission_denied_and_audited(node: Node) -> None:
    await node.audit.flush()
    before = node.audit.head[0]
    channel, stub = node.stub(node.pki.tls("changzhou"))
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CheckSubjects(
                credit_check_pb2.CheckSubjectsRequest(
                    subjects=[credit_check_pb2.SubjectQuery(subject_key=ORG)], purpose="bulk"
                ),
                timeout=10,
            )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _denial(refused.value) == "policy-denied"
    await node.audited_past(before)
    last = (await node.audit_records())[-1]
    assert (last["caller_city"], last["status_code"]) == (CHANGZHOU, "PERMISSION_DENIED")
    assert last["denial_code"] == "policy-denied"
    assert last["method"] == "/creditlink.peer.v1.CreditCheckService/CheckSubjects"


async def test_city_without_any_rule_is_denied(node: Node) -> None:
    error = await _refusal(node, "jiashan", subject_key=ORG, purpose="x")
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _denial(error) == "policy-denied"


async def test_data_class_not_granted_is_denied(node: Node) -> None:
    kit = node.consent
    token = kit.issuers["suzhou"].issue(
        purpose=CHECK_PURPOSE, subject_key=PERSON, audience_city=CHANGZHOU, lifetime_seconds=600
    )
    error = await _refusal(node, "changzhou", subject_key=PERSON, consent_token=token, purpose="x")
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _denial(error) == "data-class-denied"
    last = (await node.audit_records())[-1]
    assert (last["caller_city"], last["denial_code"]) == (CHANGZHOU, "data-class-denied")


async def test_a_refusal_by_the_servicer_is_audited_with_its_denial_code(node: Node) -> None:
    """The guard let the call through; the servicer refused it (``deny``): the record names
    the servicer's reason, as it names the guard's."""
    error = await _refusal(node, "wuxi", subject_key=ORG)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _denial(error) == "invalid-argument"
    last = (await node.audit_records())[-1]
    assert (last["caller_city"], last["subject_key"]) == (WUXI, ORG)
    assert (last["status_code"], last["denial_code"]) == ("INVALID_ARGUMENT", "invalid-argument")


# --- subject keys -------------------------------------------------------------------------

RESIDENT = "32050519900307123X"  # a valid GB 11643 number


@pytest.mark.parametrize(
    "key",
    [RESIDENT, "X:" + RESIDENT, "N:" + RESIDENT, "L:" + RESIDENT, "N:" + "ab" * 40],
    ids=["bare", "other-prefix", "person-prefix", "organisation-prefix", "overlong"],
)
async def test_malformed_subject_key_is_refused_and_audited_without_it(
    node: Node, key: str
) -> None:
    error = await _refusal(node, "wuxi", subject_key=key, purpose="x")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _denial(error) == "invalid-subject-key"
    assert key not in (error.details() or "")
    last = (await node.audit_records())[-1]
    assert (last["status_code"], last["subject_key"]) == ("INVALID_ARGUMENT", None)
    assert last["denial_code"] == "invalid-subject-key"
    assert RESIDENT[6:14] not in repr(last)


async def test_batch_refuses_malformed_subject_keys_item_by_item(node: Node) -> None:
    channel, stub = node.stub(node.pki.tls("wuxi"))
    async with channel:
        response = await stub.CheckSubjects(
            credit_check_pb2.CheckSubjectsRequest(
                subjects=[
                    credit_check_pb2.SubjectQuery(subject_key=ORG),
                    credit_check_pb2.SubjectQuery(subject_key="N:" + RESIDENT),
                    credit_check_pb2.SubjectQuery(subject_key="L:" + RESIDENT),
                ],
                purpose="bulk",
            ),
            timeout=10,
        )
    assert [r.error.code for r in response.results] == [
        "",
        "invalid-subject-key",
        "invalid-subject-key",
    ]
    last = (await node.audit_records())[-1]
    # The call was answered; the items it refused for a malformed key are in its response,
    # not its record (a malformed key may be a raw ID number, which the audit never holds).
    assert (last["status_code"], last["subject_key"], last["denial_code"]) == ("OK", None, None)
    assert [s["subject_key"] for s in last["subjects"]] == [ORG]


# --- consent ------------------------------------------------------------------------------


async def test_natural_person_with_valid_consent_is_answered(node: Node) -> None:
    token = node.consent.issuers["suzhou"].issue(
        purpose=CHECK_PURPOSE, subject_key=PERSON, audience_city=WUXI, lifetime_seconds=600
    )
    response = await _check(
        node, "wuxi", subject_key=PERSON, consent_token=token, purpose="deposit waiver"
    )
    assert [m.list_type for m in response.memberships] == [common_pb2.LIST_TYPE_WATCH]
    last = (await node.audit_records())[-1]
    assert last["consent_reference"] is not None
    assert (last["subject_key"], last["denial_code"]) == (PERSON, None)


def _tokens(kit: ConsentKit) -> dict[str, str]:
    suzhou = kit.issuers["suzhou"]
    valid = suzhou.issue(
        purpose=CHECK_PURPOSE, subject_key=PERSON, audience_city=WUXI, lifetime_seconds=600
    )
    head, body, signature = valid.split(".")
    forged_signature = ("A" if signature[0] != "A" else "B") + signature[1:]
    return {
        "consent-missing": "",
        "consent-expired": suzhou.issue(
            purpose=CHECK_PURPOSE,
            subject_key=PERSON,
            audience_city=WUXI,
            lifetime_seconds=60,
            now=1_600_000_000,
        ),
        "consent-wrong-city": suzhou.issue(
            purpose=CHECK_PURPOSE, subject_key=PERSON, audience_city=CHANGZHOU, lifetime_seconds=600
        ),
        "consent-wrong-subject": suzhou.issue(
            purpose=CHECK_PURPOSE,
            subject_key=OTHER_PERSON,
            audience_city=WUXI,
            lifetime_seconds=600,
        ),
        "consent-bad-signature": f"{head}.{body}.{forged_signature}",
        "consent-malformed": "not-a-token",
    }


@pytest.mark.parametrize(
    "reason",
    [
        "consent-missing",
        "consent-expired",
        "consent-wrong-city",
        "consent-wrong-subject",
        "consent-bad-signature",
        "consent-malformed",
    ],
)
async def test_natural_person_without_valid_consent_is_refused(node: Node, reason: str) -> None:
    token = _tokens(node.consent)[reason]
    error = await _refusal(node, "wuxi", subject_key=PERSON, consent_token=token, purpose="x")
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _denial(error) == reason
    last = (await node.audit_records())[-1]
    assert (last["status_code"], last["subject_key"], last["consent_reference"]) == (
        "PERMISSION_DENIED",
        PERSON,
        None,
    )
    assert last["denial_code"] == reason


async def test_batch_refuses_only_the_items_without_consent(node: Node) -> None:
    token = node.consent.issuers["suzhou"].issue(
        purpose=CHECK_PURPOSE, subject_key=PERSON, audience_city=WUXI, lifetime_seconds=600
    )
    channel, stub = node.stub(node.pki.tls("wuxi"))
    async with channel:
        response = await stub.CheckSubjects(
            credit_check_pb2.CheckSubjectsRequest(
                subjects=[
                    credit_check_pb2.SubjectQuery(subject_key=ORG),
                    credit_check_pb2.SubjectQuery(subject_key=PERSON, consent_token=token),
                    credit_check_pb2.SubjectQuery(subject_key=OTHER_PERSON, consent_token=token),
                ],
                purpose="bulk",
            ),
            timeout=10,
        )
    assert [r.error.code for r in response.results] == ["", "", "consent-wrong-subject"]
    assert len(response.results[1].memberships) == 1
    # The one record of the call holds each subject with its own consent (or refusal).
    last = (await node.audit_records())[-1]
    assert [(s["subject_key"], s["denial_code"]) for s in last["subjects"]] == [
        (ORG, None),
        (PERSON, None),
        (OTHER_PERSON, "consent-wrong-subject"),
    ]
    consents = [s["consent_reference"] for s in last["subjects"]]
    assert consents[0] is None
    assert consents[2] is None
    assert re.fullmatch(r"[0-9a-f]{32}", consents[1] or "")
    calls = calls_about(await node.audit_messages(), PERSON)
    assert [(c.method.rsplit("/", 1)[-1], c.consent_reference) for c in calls][-1] == (
        "CheckSubjects",
        consents[1],
    )


async def test_a_city_cannot_consent_for_another_citys_resident(node: Node) -> None:
    """Wuxi signs, with its own genuine consent key, a token for a Suzhou resident naming
    itself as the audience: refused, and the refusal is on the audit with its reason."""
    self_issued = node.consent.issuers["wuxi"].issue(
        purpose=CHECK_PURPOSE, subject_key=PERSON, audience_city=WUXI, lifetime_seconds=600
    )
    error = await _refusal(node, "wuxi", subject_key=PERSON, consent_token=self_issued, purpose="x")
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _denial(error) == "consent-wrong-issuer"
    last = (await node.audit_records())[-1]
    assert (last["status_code"], last["subject_key"], last["consent_reference"]) == (
        "PERMISSION_DENIED",
        PERSON,
        None,
    )
    assert last["denial_code"] == "consent-wrong-issuer"


@pytest.mark.parametrize(
    ("purpose", "scenario", "lifetime", "reason"),
    [
        # Consent to a hiring check does not open a financing check.
        (
            "credit-check.civil-service-hiring",
            credit_check_pb2.SCENARIO_FINANCING,
            600,
            "consent-wrong-purpose",
        ),
        ("anything", credit_check_pb2.SCENARIO_UNSPECIFIED, 600, "consent-wrong-purpose"),
        # Default cap: 30 days.
        (
            CHECK_PURPOSE,
            credit_check_pb2.SCENARIO_UNSPECIFIED,
            31 * 86400,
            "consent-lifetime-too-long",
        ),
    ],
)
async def test_consent_is_honoured_only_for_its_purpose_and_lifetime(
    node: Node, purpose: str, scenario: int, lifetime: int, reason: str
) -> None:
    token = node.consent.issuers["suzhou"].issue(
        purpose=purpose, subject_key=PERSON, audience_city=WUXI, lifetime_seconds=lifetime
    )
    error = await _refusal(
        node, "wuxi", subject_key=PERSON, consent_token=token, scenario=scenario, purpose="x"
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _denial(error) == reason
    last = (await node.audit_records())[-1]
    assert (last["status_code"], last["denial_code"]) == ("PERMISSION_DENIED", reason)


async def test_consent_for_a_scenario_opens_that_scenario(node: Node) -> None:
    token = node.consent.issuers["suzhou"].issue(
        purpose="credit-check.civil-service-hiring",
        subject_key=PERSON,
        audience_city=WUXI,
        lifetime_seconds=600,
    )
    response = await _check(
        node,
        "wuxi",
        subject_key=PERSON,
        consent_token=token,
        scenario=credit_check_pb2.SCENARIO_CIVIL_SERVICE_HIRING,
        purpose="公务员录用 2026-0815",
    )
    assert [m.list_type for m in response.memberships] == [common_pb2.LIST_TYPE_WATCH]


# --- the audit chain on the broker --------------------------------------------------------


async def test_audit_chain_of_all_calls_verifies(node: Node) -> None:
    await _check(node, "wuxi", subject_key=ORG, purpose="chain check")
    await node.audit.flush()
    messages = await read_audit_topic(node.settings, node.audit.topic)
    report = verify_chain(messages)
    assert report.ok, [str(p) for p in report.problems]
    assert [m.key for m in messages] == [str(i) for i in range(1, len(messages) + 1)]
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "services.common.audit",
            "verify",
            "--bootstrap",
            node.settings.kafka_bootstrap,
            "--topic",
            node.audit.topic,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(messages)} records" in done.stdout


async def test_concurrent_calls_each_get_one_record_in_one_unbroken_chain(node: Node) -> None:
    """Records of concurrent calls are sent in batches: none lost, none twice, order kept."""
    before = node.audit.head[0]
    channel, stub = node.stub(node.pki.tls("wuxi"))
    async with channel:
        await asyncio.gather(
            *(
                stub.CheckSubject(
                    credit_check_pb2.CheckSubjectRequest(subject_key=ORG, purpose=f"burst {n}"),
                    timeout=10,
                )
                for n in range(200)
            )
        )
    await node.audit.flush()
    assert node.audit.head[0] == before + 200
    records = await node.audit_records()
    burst = [r for r in records if r["seq"] > before]
    assert sorted(r["purpose"] for r in burst) == sorted(f"burst {n}" for n in range(200))
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    messages = await read_audit_topic(node.settings, node.audit.topic)
    assert verify_chain(messages).ok


async def test_calls_are_refused_while_the_audit_chain_cannot_be_extended(node: Node) -> None:
    producer = make_producer(node.settings, client_id="audit-test-unstarted")
    await producer.start()
    # Never started: the writer does not know the chain's head, so it may not extend it.
    unstarted = AuditChainWriter(node.settings, node.serde, producer, node_city="320500")
    server = await start_peer_server(
        bind="127.0.0.1:0",
        tls=node.pki.tls("suzhou"),
        services=[credit_check_binding(FakeCreditCheck(make_security(node.consent.keyring), {}))],
        security=make_security(node.consent.keyring),
        audit=unstarted,
    )
    try:
        async with secure_channel(
            f"127.0.0.1:{server.port}", node.pki.tls("wuxi"), expect_city="suzhou", service="lists"
        ) as channel:
            stub = credit_check_pb2_grpc.CreditCheckServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.CheckSubject(
                    credit_check_pb2.CheckSubjectRequest(subject_key=ORG), timeout=10
                )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert _denial(refused.value) == "audit-unavailable"
    finally:
        await server.stop(0)
        await producer.stop()


async def test_an_answer_waits_for_its_record_and_only_a_refusal_outlives_a_lost_one(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call is answered once the broker has its audit record. A record the broker does not
    acknowledge fails a call that had succeeded; a refusal, which fails anyway, still
    answers with its own status and denial code."""
    producer = make_producer(node.settings, client_id="audit-test-unacknowledged")
    await producer.start()
    audit = AuditChainWriter(node.settings, node.serde, producer, node_city="320500", chain="lost")
    await audit.start()
    security = make_security(node.consent.keyring)
    server = await start_peer_server(
        bind="127.0.0.1:0",
        tls=node.pki.tls("suzhou"),
        services=[credit_check_binding(FakeCreditCheck(security, {}))],
        security=security,
        audit=audit,
    )
    channels = {
        caller: secure_channel(
            f"127.0.0.1:{server.port}", node.pki.tls(caller), expect_city="suzhou", service="lists"
        )
        for caller in ("wuxi", "jiashan")
    }

    async def check(caller: str) -> object:
        stub = credit_check_pb2_grpc.CreditCheckServiceStub(channels[caller])
        request = credit_check_pb2.CheckSubjectRequest(subject_key=ORG, purpose=CHECK_PURPOSE)
        return await stub.CheckSubject(request, timeout=10)

    async def unacknowledged(*_: object, **__: object) -> asyncio.Future[None]:
        # Held long enough for the refusal below to enter while the writer is still healthy.
        delivery = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(
            0.5, delivery.set_exception, ConnectionError("no acknowledgement")
        )
        return delivery

    try:
        await check("wuxi")
        assert audit.head[0] == 1
        # On the broker before the answer came: no flush.
        messages = await read_audit_topic(node.settings, audit.topic)
        assert [m.key for m in messages if m.key.startswith("lost:")] == ["lost:1"]
        for channel in channels.values():
            await channel.channel_ready()
        monkeypatch.setattr(producer, "send_batch", unacknowledged)
        answered = asyncio.create_task(check("wuxi"))
        await asyncio.sleep(0.2)
        refused = asyncio.create_task(check("jiashan"))  # Jiashan may not call
        outcomes = await asyncio.gather(answered, refused, return_exceptions=True)
        failed, denied = outcomes
        assert isinstance(failed, grpc.aio.AioRpcError), failed
        assert failed.code() == grpc.StatusCode.UNAVAILABLE
        assert _denial(failed) == "audit-unavailable"
        assert isinstance(denied, grpc.aio.AioRpcError), denied
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
        assert _denial(denied) == "policy-denied"
        assert not audit.healthy
    finally:
        for channel in channels.values():
            await channel.close()
        await server.stop(0)
        await producer.stop()


async def test_restarted_writer_continues_the_chain(node: Node) -> None:
    head = node.audit.head
    producer = make_producer(node.settings, client_id="audit-test-2")
    await producer.start()
    try:
        again = AuditChainWriter(node.settings, node.serde, producer, node_city="320500")
        await node.audit.flush()
        await again.start()
        assert again.head == head
    finally:
        await producer.stop()


async def test_grpc_latency_is_measured_by_method_and_status(node: Node) -> None:
    from prometheus_client import REGISTRY

    method = "/creditlink.peer.v1.CreditCheckService/CheckSubject"

    def calls(code: str) -> float:
        labels = {"city": "suzhou", "method": method, "code": code}
        return REGISTRY.get_sample_value("creditlink_grpc_latency_seconds_count", labels) or 0.0

    ok_before, denied_before = calls("OK"), calls("PERMISSION_DENIED")
    await _check(
        node, "wuxi", subject_key=ORG, scenario=credit_check_pb2.SCENARIO_TENDERING, purpose="T-1"
    )
    assert calls("OK") == ok_before + 1
    assert calls("PERMISSION_DENIED") == denied_before


async def test_a_subject_key_under_another_pseudonym_key_is_refused(node: Node) -> None:
    """A caller whose pseudonym key is not the region's learns it, instead of reading "no
    entries" for every person it asks about."""
    foreign = "N:320505.0123abcd." + "ab" * 32
    token = node.consent.issuers["suzhou"].issue(
        purpose=CHECK_PURPOSE, subject_key=foreign, audience_city=WUXI, lifetime_seconds=600
    )
    error = await _refusal(node, "wuxi", subject_key=foreign, consent_token=token, purpose="x")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _denial(error) == "pseudonym-key-unknown"
    last = (await node.audit_records())[-1]
    assert (last["status_code"], last["denial_code"]) == (
        "INVALID_ARGUMENT",
        "pseudonym-key-unknown",
    )
