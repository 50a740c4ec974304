"""``kill -9`` right after the last answer: every call a node answered is on its audit chain.

A Suzhou lists node runs as its own process (``python -m services.lists``, started by
tests/kit/lists_region.py) on the real broker and serves over mutual TLS. Wuxi makes
``CALLS`` CheckSubject calls to it, ``CALLERS`` at a time; the moment the last one is
answered the node is killed with SIGKILL, so no shutdown code (the writer's flush in
``PeerServer.stop``) runs. The guard answers a call only once the broker has acknowledged its
audit record (services/common/peer/guard.py), so the node's chain on the topic holds one
``OK`` record of Wuxi's CheckSubject for every ``OK`` answer — nothing else called it — and
verifies with no gap, every record under a signed head.

Wuxi's calls go through the kit's :class:`OutboundEvidence` with a chain of its own on Wuxi's
audit topic: it holds one OUTBOUND record per answer, each with the receipt Suzhou returned,
signed with Suzhou's audit key and naming the very record Suzhou's chain holds.

Refusals too: the guard sends a refusal only once its record is acknowledged, so a node
killed right after its last of ``REFUSALS`` refusals (half the guard's ``consent-missing``,
half the servicer's ``purpose-required``) has every one on its chain with its denial code.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from creditlink.peer.v1 import credit_check_pb2
from services.common.audit import (
    AUDIT_TOPIC,
    AuditChainWriter,
    parse_key,
    read_audit_topic,
    verify_chain,
)
from services.common.audit.read import AuditMessage
from services.common.audit.signing import AuditKeyring, load_audit_signer
from services.common.audit.verify import check_receipts
from services.common.avro import AvroSerde
from services.common.certs import issue_dev_certificates
from services.common.kafka import make_producer
from services.common.peer import OutboundEvidence, secure_channel
from services.common.settings import Settings, load_settings
from services.common.topics import load_catalogue, provision
from tests.kit.lists import SUZHOU, WUXI, organisation_key, person_key
from tests.kit.lists_region import ListsRegion

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

CALLS = 1200
REFUSALS = 400
CALLERS = 16
CHECK_SUBJECT = "/creditlink.peer.v1.CreditCheckService/CheckSubject"
#: The per-city limits (docs/design.md §3.3) would refuse part of a burst this size.
UNLIMITED = {
    "CREDITLINK_PEER_CALLER_RATE": "1000000",
    "CREDITLINK_PEER_CALLER_BURST": "1000000",
    "CREDITLINK_PEER_MAX_CALLS_PER_CALLER": "100000",
}


@dataclass
class _Crash:
    """Suzhou's lists node and Wuxi's channel to it, with Wuxi's OUTBOUND chain."""

    region: ListsRegion
    stub: Any
    wuxi_settings: Settings


@asynccontextmanager
async def _suzhou_called_by_wuxi(kafka_bootstrap: str, tmp_path: Path) -> AsyncIterator[_Crash]:
    region = ListsRegion(tmp_path, kafka_bootstrap, cities=("suzhou",), extra_env=UNLIMITED)
    # The caller's certificate, from the run's CA: Wuxi calls, but runs no node here (a
    # node would also call Suzhou, and its calls would be on the chain too).
    issue_dev_certificates(region.tls_dir, ["wuxi"])
    await region.provision()
    suzhou = region.nodes["suzhou"]
    wuxi_settings = load_settings(
        {**suzhou.env, "CREDITLINK_CITY": "wuxi", "CREDITLINK_TOPIC_PREFIX": f"{region.run}wuxi."}
    )
    await provision(kafka_bootstrap, load_catalogue(), prefix=wuxi_settings.topic_prefix)
    producer = make_producer(wuxi_settings, client_id="crash-caller")
    await producer.start()
    outbound = AuditChainWriter(
        wuxi_settings,
        AvroSerde(),
        producer,
        node_city=WUXI,
        chain="caller",
        signer=load_audit_signer(region.tls_dir, "wuxi", WUXI),
    )
    await outbound.start()
    suzhou.start()
    try:
        await region.wait_ready("suzhou")
        evidence = OutboundEvidence(outbound, node_city=WUXI, callee_city=SUZHOU)
        async with secure_channel(
            suzhou.target,
            region.tls("wuxi"),
            expect_city="suzhou",
            service="lists",
            interceptors=(evidence,),
        ) as channel:
            yield _Crash(region, region.check_stub(channel), wuxi_settings)
    finally:
        await outbound.flush()
        await producer.stop()
        await region.close()


async def _call_then_kill(
    crash: _Crash,
    calls: int,
    request_of: Callable[[int], credit_check_pb2.CheckSubjectRequest],
) -> tuple[int, list[grpc.aio.AioRpcError]]:
    """``calls`` CheckSubject calls, ``CALLERS`` at a time, then SIGKILL the moment the last
    one has its answer: how many were answered OK, and the errors of the others."""
    numbers = iter(range(calls))  # shared by the callers: each call made once
    answered = 0
    failed: list[grpc.aio.AioRpcError] = []

    async def caller() -> None:
        nonlocal answered
        for n in numbers:
            try:
                await crash.stub.CheckSubject(request_of(n), timeout=10)
            except grpc.aio.AioRpcError as error:
                failed.append(error)
                continue
            answered += 1

    suzhou = crash.region.nodes["suzhou"]
    process = suzhou.process
    await asyncio.gather(*(caller() for _ in range(CALLERS)))
    suzhou.kill()
    assert process is not None
    assert process.returncode == -signal.SIGKILL
    return answered, failed


async def _both_chains(crash: _Crash) -> tuple[list[AuditMessage], list[AuditMessage]]:
    """Suzhou's audit topic and Wuxi's, each verified (links and signatures)."""
    region = crash.region
    settings = region.nodes["suzhou"].settings
    messages = await read_audit_topic(settings, settings.topic(AUDIT_TOPIC))
    codes = {key: city.admin_code for key, city in region.region.cities.items()}
    keyring = AuditKeyring.from_directory(region.tls_dir, codes)
    report = verify_chain(messages, keyring=keyring)
    assert report.ok, report
    theirs = await read_audit_topic(crash.wuxi_settings, crash.wuxi_settings.topic(AUDIT_TOPIC))
    caller_report = verify_chain(theirs, keyring=keyring)
    assert caller_report.ok, caller_report
    return messages, theirs


async def test_kill_9_after_the_last_answer_leaves_every_answered_call_on_the_chain(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    def request_of(n: int) -> credit_check_pb2.CheckSubjectRequest:
        return credit_check_pb2.CheckSubjectRequest(
            subject_key=organisation_key(n),
            scenario=credit_check_pb2.SCENARIO_GOVERNMENT_PROCUREMENT,
            purpose=f"crash {n}",
        )

    async with _suzhou_called_by_wuxi(kafka_bootstrap, tmp_path) as crash:
        answered, failed = await _call_then_kill(crash, CALLS, request_of)

    # Every call answered OK, so the chain holds exactly these calls: an unanswered call may
    # have been recorded, and would blur the count.
    assert not failed, f"{len(failed)} calls failed: {[e.code() for e in failed[:5]]}"
    assert answered == CALLS
    messages, theirs = await _both_chains(crash)
    serde = AvroSerde()
    chain = [serde.decode(m.value) for m in messages if parse_key(m.key)[0] == "lists"]
    assert [r["seq"] for r in chain] == list(range(1, len(chain) + 1))
    audited = [
        r
        for r in chain
        if (r["caller_city"], r["callee_city"], r["method"]) == (WUXI, SUZHOU, CHECK_SUBJECT)
        and r["status_code"] == "OK"
    ]
    assert len(audited) == answered
    assert len({r["purpose"] for r in audited}) == answered

    # The caller's side: one OUTBOUND record per answer, each with Suzhou's receipt, which
    # names Suzhou's record of that very call; all signatures (heads, receipts) verify.
    outbound_records = [serde.decode(m.value) for m in theirs]
    assert len(outbound_records) == answered
    assert {r["direction"] for r in outbound_records} == {"OUTBOUND"}
    assert all(r["receipt"] is not None for r in outbound_records)
    by_seq = {r["seq"]: r for r in chain}
    for record in outbound_records:
        receipt = record["receipt"]
        callee = by_seq[receipt["callee_seq"]]
        assert receipt["callee_chain"] == "lists"
        assert (callee["hash"], callee["exchange_sha256"]) == (
            receipt["callee_hash"],
            record["exchange_sha256"],
        )
        assert callee["purpose"] == record["purpose"]
    assert check_receipts(messages, theirs) == []


async def test_kill_9_after_the_last_refusal_leaves_every_refusal_on_the_chain(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A person's check without consent (the guard refuses, ``consent-missing``) and an
    organisation's without a purpose (the servicer refuses, ``purpose-required``), in turn."""

    def request_of(n: int) -> credit_check_pb2.CheckSubjectRequest:
        if n % 2:
            return credit_check_pb2.CheckSubjectRequest(
                subject_key=organisation_key(n),
                scenario=credit_check_pb2.SCENARIO_GOVERNMENT_PROCUREMENT,
            )
        return credit_check_pb2.CheckSubjectRequest(
            subject_key=person_key(n),
            scenario=credit_check_pb2.SCENARIO_GOVERNMENT_PROCUREMENT,
            purpose=f"refused {n}",
        )

    expected = {
        request_of(n).subject_key: (
            ("INVALID_ARGUMENT", "purpose-required")
            if n % 2
            else ("PERMISSION_DENIED", "consent-missing")
        )
        for n in range(REFUSALS)
    }
    async with _suzhou_called_by_wuxi(kafka_bootstrap, tmp_path) as crash:
        answered, failed = await _call_then_kill(crash, REFUSALS, request_of)

    # Every call refused, each with its status and denial trailer as the caller heard it.
    assert answered == 0
    assert len(failed) == REFUSALS
    heard = {
        (e.code().name, dict(e.trailing_metadata() or ()).get("creditlink-denial")) for e in failed
    }
    assert heard == {
        ("INVALID_ARGUMENT", "purpose-required"),
        ("PERMISSION_DENIED", "consent-missing"),
    }
    messages, theirs = await _both_chains(crash)
    serde = AvroSerde()
    chain = [serde.decode(m.value) for m in messages if parse_key(m.key)[0] == "lists"]
    assert [r["seq"] for r in chain] == list(range(1, len(chain) + 1))
    refused = {
        r["subject_key"]: (r["status_code"], r["denial_code"])
        for r in chain
        if (r["caller_city"], r["callee_city"], r["method"]) == (WUXI, SUZHOU, CHECK_SUBJECT)
    }
    missing = sorted(set(expected) - set(refused))
    assert not missing, f"{len(missing)} of {REFUSALS} refusals not on the chain"
    assert refused == expected
    assert all(r["receipt"] is None and r["exchange_sha256"] is None for r in chain)

    # The caller recorded each refusal as it heard it: status and denial code, no receipt.
    outbound_records = [serde.decode(m.value) for m in theirs]
    assert {
        r["subject_key"]: (r["status_code"], r["denial_code"]) for r in outbound_records
    } == expected
    assert len(outbound_records) == REFUSALS
    assert all(r["receipt"] is None for r in outbound_records)
    assert check_receipts(messages, theirs) == []
