"""Limits a peer cannot exceed (docs/design.md §3.3), over real sockets, real TLS and the real
broker: Changzhou floods a Suzhou lists server (many follow streams, rapid calls, oversized
messages and scenario codes) and is refused with RESOURCE_EXHAUSTED, each refusal on the audit
chain, while Wuxi's checks are still answered and the server's memory stays bounded.

Loopback only, bounded in calls and time. The server runs in this process, so the resident
set measured is the server's plus the client's.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from creditlink.peer.v1 import (
    credit_check_pb2,
    credit_check_pb2_grpc,
    list_sync_pb2,
    list_sync_pb2_grpc,
)
from services.common.audit import AuditChainWriter, read_audit_topic
from services.common.avro import AvroSerde
from services.common.kafka import make_producer
from services.common.peer import (
    DENIAL_TRAILER,
    PeerSecurity,
    PeerServer,
    secure_channel,
    start_peer_server,
)
from services.common.peer.limits import RATE_LIMITED, TOO_MANY_CALLS
from services.common.policy import parse_policy
from services.common.settings import PeerLimits, Settings
from services.lists.book import ListBook
from services.lists.measures import load_measures
from services.lists.node import peer_services
from services.lists.store import ListStore
from tests.kit.lists import (
    SUZHOU,
    Clock,
    MemoryChangelog,
    RefusalRecorder,
    incoming,
    list_decision,
    organisation_key,
)
from tests.peer_kit import REGION, PeerPki, audit_node_settings, make_consent_kit, make_pki

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

WUXI, CHANGZHOU = "320200", "320400"
POLICY = {
    "version": 1,
    "data_classes": {"organisation": "orgs", "natural_person": "people", "aggregate": "scales"},
    "rules": [
        {
            "callers": ["wuxi"],
            "methods": ["/creditlink.peer.v1.CreditCheckService/*"],
            "data_classes": ["organisation"],
        },
        {
            "callers": ["changzhou"],
            "methods": [
                "/creditlink.peer.v1.CreditCheckService/CheckSubject",
                "/creditlink.peer.v1.ListSyncService/*",
            ],
            "data_classes": ["organisation"],
        },
    ],
}
LIMITS = PeerLimits(
    caller_rate=20,
    caller_burst=20,
    max_calls_per_caller=8,
    max_message_bytes=1024 * 1024,
)
STREAMS = 16
RAPID_CALLS = 150
#: Under the message limit, far over the longest scenario code a catalogue has.
BIG_CODE = 900_000


@dataclass
class Node:
    server: PeerServer
    pki: PeerPki
    settings: Settings
    audit: AuditChainWriter
    serde: AvroSerde

    def channel(self, city: str) -> grpc.aio.Channel:
        return secure_channel(
            f"127.0.0.1:{self.server.port}",
            self.pki.tls(city),
            expect_city="suzhou",
            service="lists",
        )

    async def audit_records(self) -> list[dict[str, Any]]:
        await self.audit.flush()
        messages = await read_audit_topic(self.settings, self.audit.topic)
        return [self.serde.decode(m.value) for m in messages]


@pytest.fixture
async def node(kafka_bootstrap: str, tmp_path: Path) -> AsyncIterator[Node]:
    settings = await audit_node_settings(kafka_bootstrap)
    pki = make_pki(tmp_path / "pki")
    security = PeerSecurity(
        city="suzhou",
        region=REGION,
        policy=parse_policy(POLICY, source="limits-policy", cities=REGION.cities.keys()),
        keyring=make_consent_kit().keyring,
    )
    changelog = MemoryChangelog()
    book = ListBook(
        ListStore(tmp_path / "store", AvroSerde(), own_city=SUZHOU),
        changelog,
        RefusalRecorder(),
        changelog,
        own_city=SUZHOU,
        changelog_topic="credit.list-changes.v1",
        clock=Clock(),
    )
    await book.apply_records([incoming(list_decision(organisation_key(0), decision_number="D0"))])
    serde = AvroSerde()
    producer = make_producer(settings, client_id="limits-test")
    await producer.start()
    audit = AuditChainWriter(settings, serde, producer, node_city=SUZHOU, service="lists")
    await audit.start()
    server = await start_peer_server(
        bind="127.0.0.1:0",
        tls=pki.tls("suzhou"),
        services=peer_services(book, load_measures(), security, REGION.peers_of("suzhou"), LIMITS),
        security=security,
        audit=audit,
        limits=LIMITS,
    )
    try:
        yield Node(server, pki, settings, audit, serde)
    finally:
        await server.stop(0)
        await producer.stop()


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _denial(error: grpc.aio.AioRpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get(DENIAL_TRAILER)


def _request(code: str = "", n: int = 0) -> credit_check_pb2.CheckSubjectRequest:
    return credit_check_pb2.CheckSubjectRequest(
        subject_key=organisation_key(0),
        scenario=credit_check_pb2.SCENARIO_TENDERING,
        scenario_code=code,
        purpose=f"flood {n}",
    )


async def _wuxi_checks(node: Node, count: int) -> list[int]:
    """Wuxi's checks during the flood: how many memberships each answer had."""
    async with node.channel("wuxi") as channel:
        stub = credit_check_pb2_grpc.CreditCheckServiceStub(channel)
        answers = []
        for n in range(count):
            answer = await stub.CheckSubject(_request(n=n), timeout=10)
            answers.append(len(answer.memberships))
            await asyncio.sleep(0.02)
        return answers


async def _outcome(call: Any) -> tuple[grpc.StatusCode, str | None]:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code(), _denial(error)
    return grpc.StatusCode.OK, None


async def test_a_flooding_peer_is_refused_and_audited_while_others_are_served(
    node: Node,
) -> None:
    refused: list[tuple[grpc.StatusCode, str | None]] = []
    async with node.channel("changzhou") as warm:
        stub = credit_check_pb2_grpc.CreditCheckServiceStub(warm)
        await stub.CheckSubject(_request(), timeout=10)
        # A few large messages first, so that the heap has its working size when measured.
        warmed = [await _outcome(stub.CheckSubject(_request("w" * BIG_CODE))) for _ in range(4)]
        assert set(warmed) == {(grpc.StatusCode.INVALID_ARGUMENT, "unknown-scenario")}
    assert await _wuxi_checks(node, 3) == [1, 1, 1]
    gc.collect()
    rss_before = _rss_bytes()

    # Many follow streams over two connections: at most max_calls_per_caller are served.
    channels = [node.channel("changzhou") for _ in range(2)]
    streams = [list_sync_pb2.StreamListChangesRequest(follow=True) for _ in range(STREAMS)]
    calls = [
        list_sync_pb2_grpc.ListSyncServiceStub(channels[n % 2]).StreamListChanges(request)
        for n, request in enumerate(streams)
    ]

    async def first(call: Any) -> tuple[grpc.StatusCode, str | None]:
        try:
            response = await call.read()
        except grpc.aio.AioRpcError as error:
            return error.code(), _denial(error)
        assert response.WhichOneof("event") in ("change", "caught_up")
        return grpc.StatusCode.OK, None

    opened = await asyncio.wait_for(asyncio.gather(*(first(c) for c in calls)), 20)
    served = [o for o in opened if o[0] is grpc.StatusCode.OK]
    assert 0 < len(served) <= LIMITS.max_calls_per_caller
    assert {o for o in opened if o[0] is not grpc.StatusCode.OK} == {
        (grpc.StatusCode.RESOURCE_EXHAUSTED, TOO_MANY_CALLS)
    }
    refused.extend(o for o in opened if o[0] is not grpc.StatusCode.OK)
    # Changzhou's streams hold all its slots; Wuxi is served all the same.
    assert await _wuxi_checks(node, 5) == [1] * 5
    for call in calls:
        call.cancel()
    for channel in channels:
        await channel.close()
    await asyncio.sleep(0.2)

    # Rapid calls with scenario codes of almost a megabyte each, all distinct, and a few
    # messages over the limit; Wuxi checks meanwhile.
    async with node.channel("changzhou") as channel:
        stub = credit_check_pb2_grpc.CreditCheckServiceStub(channel)
        wuxi = asyncio.create_task(_wuxi_checks(node, 20))
        rapid = []
        started = time.monotonic()
        for n in range(RAPID_CALLS):
            code = f"{n:06d}" + "x" * BIG_CODE
            rapid.append(await _outcome(stub.CheckSubject(_request(code, n), timeout=10)))
        elapsed = time.monotonic() - started
        oversized = [
            await _outcome(stub.CheckSubject(_request("y" * 2 * LIMITS.max_message_bytes)))
            for _ in range(3)
        ]
        assert await wuxi == [1] * 20
    assert set(rapid) <= {
        (grpc.StatusCode.INVALID_ARGUMENT, "unknown-scenario"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, RATE_LIMITED),
    }
    rate_limited = rapid.count((grpc.StatusCode.RESOURCE_EXHAUSTED, RATE_LIMITED))
    # The token bucket's own bound, whatever the machine's speed: the burst, then caller_rate
    # a second over the time the calls took (a slower client sends fewer, not more).
    admitted = RAPID_CALLS - rate_limited
    bound = LIMITS.caller_burst + LIMITS.caller_rate * elapsed + 1
    print(f"rapid calls: {admitted} admitted in {elapsed:.2f} s (bucket bound {bound:.1f})")
    assert admitted <= bound
    assert rate_limited >= 1
    refused.extend(o for o in rapid if o[0] is grpc.StatusCode.RESOURCE_EXHAUSTED)
    # gRPC itself refuses a message over the limit, before any handler: no denial code.
    assert {o[0] for o in oversized} == {grpc.StatusCode.RESOURCE_EXHAUSTED}

    gc.collect()
    grown = _rss_bytes() - rss_before
    print(f"resident set grew by {grown / 2**20:.1f} MiB over the flood")
    # The codes alone came to RAPID_CALLS * BIG_CODE = 129 MiB, which a memo keyed by them
    # kept; what remains is the allocator's and gRPC's buffers (30-50 MiB measured).
    assert grown < 64 * 2**20

    # Every refusal by the guard is on the audit chain, as Changzhou's, with its status and
    # its denial code; so is every refusal by the servicer (an unknown scenario code).
    records = await node.audit_records()
    exhausted = [
        r
        for r in records
        if r["caller_city"] == CHANGZHOU and r["status_code"] == "RESOURCE_EXHAUSTED"
    ]
    assert sorted(r["denial_code"] for r in exhausted) == sorted(str(o[1]) for o in refused)
    methods = {r["method"].rsplit("/", 1)[1] for r in exhausted}
    assert methods == {"StreamListChanges", "CheckSubject"}
    unknown_scenario = [
        r
        for r in records
        if r["caller_city"] == CHANGZHOU and r["status_code"] == "INVALID_ARGUMENT"
    ]
    expected = len(warmed) + rapid.count((grpc.StatusCode.INVALID_ARGUMENT, "unknown-scenario"))
    assert len(unknown_scenario) == expected
    assert {r["denial_code"] for r in unknown_scenario} == {"unknown-scenario"}
    wuxi_outcomes = {
        (r["status_code"], r["denial_code"]) for r in records if r["caller_city"] == WUXI
    }
    assert wuxi_outcomes == {("OK", None)}
