"""Three city nodes of the lists service (Suzhou, Wuxi, Changzhou) as real processes on one
broker, with per-city topic prefixes, over real gRPC with mutual TLS (docs/list-sync.md).

Changzhou reaches Suzhou through a TCP proxy the tests can cut, so "the replication stream is
cut mid-way" is a real broken connection, not a simulated one. Every scenario ends by
comparing digests — Suzhou's GetListDigest against the mirror's store — and by reading the
mirror's ``credit.list-changes.v1``: each Suzhou sequence exactly once, no gap.
"""

from __future__ import annotations

import asyncio
import random
import re
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import date, timedelta
from typing import Any

import grpc
import pytest

from contracts.conformance import Endpoint
from contracts.conformance import run as conformance_run
from creditlink.peer.v1 import (
    audit_evidence_pb2,
    audit_evidence_pb2_grpc,
    common_pb2,
    consent_pb2,
    consent_pb2_grpc,
    credit_check_pb2,
    list_sync_pb2,
    list_sync_pb2_grpc,
    record_intake_pb2,
    record_intake_pb2_grpc,
)
from services.common.audit import (
    AUDIT_TOPIC,
    GENESIS_HASH,
    SCHEMA,
    chain_hash,
    read_audit_topic,
    verify_chain,
)
from services.common.audit import main as audit_main
from services.common.audit.checkpoints import read_checkpoints
from services.common.audit.heads import Checkpoint
from services.common.audit.query import calls_about
from services.common.audit.read import AuditMessage
from services.common.audit.signing import AuditKeyring
from services.common.avro import AvroSerde
from services.common.certs import issue_dev_certificates, service_host
from services.common.clock import china_today
from services.common.consent import ConsentKeyring
from services.common.kafka import make_producer
from services.common.peer import (
    DENIAL_TRAILER,
    PeerSecurity,
    ServiceBinding,
    secure_channel,
    start_peer_server,
)
from services.common.policy import load_policy
from services.common.roles import Role
from services.common.settings import REPO_ROOT
from services.common.topic_names import CHECKPOINTS_TOPIC
from services.common.topics import load_catalogue, provision
from services.lists.convert import change_to_proto
from services.lists.model import ChangeAction, EntryStatus, ListChange, RemovalReason
from tests.kit.identifiers import make_uscc
from tests.kit.lists import SUZHOU, WUXI, list_decision, organisation_key
from tests.kit.lists_region import CityNode, ListsRegion, TcpProxy, eventually, free_port

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

PROCUREMENT = credit_check_pb2.SCENARIO_GOVERNMENT_PROCUREMENT
# docs/trust.md: a revocation is enforced region-wide within this many seconds.
REVOCATION_BOUND_SECONDS = 5.0


class Region:
    def __init__(
        self, harness: ListsRegion, proxy: TcpProxy, wuxi_proxy: TcpProxy, intake_port: int
    ) -> None:
        self.harness = harness
        self.intake_port = intake_port
        self.proxy = proxy
        self.wuxi_proxy = wuxi_proxy
        self.serial = 0

    async def check(self, caller: str, city: str, subject_key: str, **fields: Any) -> Any:
        async with self.harness.channel(caller, city) as channel:
            return await self.harness.check_stub(channel).CheckSubject(
                credit_check_pb2.CheckSubjectRequest(
                    subject_key=subject_key, purpose="集成测试", **fields
                ),
                timeout=10,
            )

    async def submit_to_suzhou_intake(
        self, records: list[record_intake_pb2.CreditRecord], department: str | None = None
    ) -> list[record_intake_pb2.RecordResult]:
        """As a Suzhou department does (by default the first record's): RecordIntakeService
        over mTLS with the department's certificate (retried while the intake process
        starts)."""
        target = f"127.0.0.1:{self.intake_port}"
        role = Role.department("suzhou", department or records[0].department_code)
        async with secure_channel(
            target, self.harness.tls(role), expect_city="suzhou", service="intake"
        ) as channel:
            stub = record_intake_pb2_grpc.RecordIntakeServiceStub(channel)
            for _ in range(100):
                try:
                    response = await stub.SubmitRecords(
                        record_intake_pb2.SubmitRecordsRequest(records=records), timeout=10
                    )
                    return list(response.results)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    await asyncio.sleep(0.2)
        raise AssertionError("Suzhou's intake did not answer")

    def designations(self, count: int) -> list[dict[str, Any]]:
        first = self.serial
        self.serial += count
        return [
            list_decision(organisation_key(n), decision_number=f"苏市监信〔2024〕批{n}号")
            for n in range(first, first + count)
        ]

    def publish_paced(self, records: list[dict[str, Any]], per_second: float) -> asyncio.Task[None]:
        """Publish onto Suzhou's records topic in the background at ``per_second``, so that
        whatever a test does "mid-way" really happens while changes are flowing."""

        async def run() -> None:
            step = 50
            for first in range(0, len(records), step):
                await self.harness.publish("suzhou", records[first : first + step])
                await asyncio.sleep(step / per_second)

        return asyncio.create_task(run())

    async def converged_in(
        self, city: str, issuer: str = "suzhou", *, within: float = 60.0
    ) -> tuple[int, str]:
        """Wait until ``city``'s copy of ``issuer``'s entries has the issuer's digest."""
        code = self.harness.nodes[issuer].code
        expected: tuple[int, str] = (-1, "")
        async with asyncio.timeout(within):
            while True:
                expected = await self.harness.issuer_digest(issuer, caller=city)
                if self.harness.nodes[city].digest_of(code) == expected:
                    return expected
                await asyncio.sleep(0.25)

    async def suzhou_entries(self) -> int:
        return (await self.harness.issuer_digest("suzhou", caller="wuxi"))[0]

    async def suzhou_holds(self, at_least: int, *, within: float = 60.0) -> None:
        """Until Suzhou's own entries number at least ``at_least``."""

        async def enough() -> bool:
            return await self.suzhou_entries() >= at_least

        await eventually(enough, within=within)

    async def assert_each_suzhou_change_once(self, city: str) -> list[ListChange]:
        """``city``'s changelog holds Suzhou's changes 1..N, each exactly once."""
        changes = [c for c in await self.harness.changes_on(city) if c.issuing_city == SUZHOU]
        sequences = [c.sequence for c in changes]
        assert sequences == list(range(1, len(sequences) + 1)), _describe(sequences)
        return changes


def _describe(sequences: list[int]) -> str:
    duplicates = sorted(s for s, n in Counter(sequences).items() if n > 1)
    missing = sorted(set(range(1, max(sequences, default=0) + 1)) - set(sequences))
    return f"{len(sequences)} changes; duplicates {duplicates[:10]}; missing {missing[:10]}"


@pytest.fixture(scope="module")
async def region(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Region]:
    harness = ListsRegion(
        tmp_path_factory.mktemp("lists-region"),
        kafka_bootstrap,
        extra_env={"CREDITLINK_AUDIT_CHECKPOINT_SECONDS": "1"},
    )
    proxy = TcpProxy(harness.ports["suzhou"])
    await proxy.start()
    harness.route_through("changzhou", "suzhou", proxy.port)
    wuxi_proxy = TcpProxy(harness.ports["wuxi"])
    await wuxi_proxy.start()
    harness.route_through("changzhou", "wuxi", wuxi_proxy.port)
    await harness.provision()
    harness.start_all()
    intake_port = free_port()
    intake = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.intake",
        "serve",
        "--bind",
        f"127.0.0.1:{intake_port}",
        "--certs",
        str(harness.tls_dir),
        env={**harness.nodes["suzhou"].env, "CREDITLINK_DEV": "1"},
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.DEVNULL,
    )
    try:
        await harness.wait_ready()
        yield Region(harness, proxy, wuxi_proxy, intake_port)
    finally:
        intake.terminate()
        await intake.wait()
        await harness.close()
        await proxy.stop()
        await wuxi_proxy.stop()
        for node in harness.nodes.values():
            print(f"--- {node.key} log (tail) ---\n{node.log_text()[-3000:]}")


def _list_decision_submission(uscc: str, **decision: Any) -> record_intake_pb2.CreditRecord:
    """A list decision as 苏州市市场监督管理局 submits it to Suzhou's intake."""
    number = decision.pop("decision_number")
    return record_intake_pb2.CreditRecord(
        category=record_intake_pb2.RECORD_CATEGORY_LIST_DECISION,
        department_code="11320500014160400L",
        department_name="苏州市市场监督管理局",
        subject=record_intake_pb2.RecordSubject(
            subject_type=common_pb2.SUBJECT_TYPE_ORGANISATION,
            name="苏州市姑苏区鑫禾食品有限公司",
            uscc=uscc,
        ),
        decision_number=number,
        decision_date=(date.today() - timedelta(days=3)).isoformat(),
        list_decision=record_intake_pb2.ListDecisionDetails(
            list_type=common_pb2.LIST_TYPE_BLACK,
            list_name="严重失信主体名单",
            legal_basis="《市场监督管理严重违法失信名单管理办法》第九条",
            effective_from=(date.today() - timedelta(days=3)).isoformat(),
            expires_at=(date.today() + timedelta(days=3 * 365)).isoformat(),
            **decision,
        ),
    )


async def test_a_blacklisting_is_seen_region_wide_and_a_repair_removes_it_everywhere(
    region: Region,
) -> None:
    uscc = make_uscc(random.Random(2024))
    subject = f"L:{uscc}"
    [result] = await region.submit_to_suzhou_intake(
        [
            _list_decision_submission(
                uscc,
                decision_number="苏市监信〔2024〕901号",
                action=record_intake_pb2.LIST_ACTION_DESIGNATE,
            )
        ]
    )
    assert result.WhichOneof("outcome") == "accepted", result

    for city in ("wuxi", "changzhou"):

        async def listed(city: str = city) -> Any:
            response = await region.check("suzhou", city, subject, scenario=PROCUREMENT)
            return response if response.memberships else None

        response = await eventually(listed)
        [membership] = response.memberships
        assert membership.issuing_city == SUZHOU
        assert membership.list_type == common_pb2.LIST_TYPE_BLACK
        assert membership.status == common_pb2.LIST_ENTRY_STATUS_ACTIVE
        assert membership.issuing_department_name == "苏州市市场监督管理局"
        assert [m.measure_code for m in response.measures] == ["restrict-procurement"]
        assert {f.city for f in response.mirror_freshness} >= {SUZHOU}

    # Another Suzhou department (not one city-roles.yaml lets act for the market supervision
    # bureau) can neither submit the bureau's removal nor remove the entry under its own code.
    other = "11320500014160574X"
    removal = _list_decision_submission(
        uscc,
        decision_number="苏城管撤〔2024〕901号",
        action=record_intake_pb2.LIST_ACTION_REMOVE,
        designation_decision_number="苏市监信〔2024〕901号",
        removal_reason=common_pb2.REMOVAL_REASON_REVOKED,
    )
    [result] = await region.submit_to_suzhou_intake([removal], department=other)
    assert [r.code for r in result.rejected.reasons] == ["not-your-department"], result
    removal.department_code, removal.department_name = other, "苏州市城市管理局"
    [result] = await region.submit_to_suzhou_intake([removal])
    assert result.WhichOneof("outcome") == "accepted", result
    refused_id = result.accepted.record_id

    async def refused() -> Any:
        found = [r for r in await region.harness.rejected_on("suzhou")]
        return [r for r in found if r["record_id"] == refused_id] or None

    [rejection] = await eventually(refused)
    assert [r["code"] for r in rejection["reasons"]] == ["not-issuing-department"]
    response = await region.check("suzhou", "suzhou", subject)
    assert [m.status for m in response.memberships] == [common_pb2.LIST_ENTRY_STATUS_ACTIVE]

    [result] = await region.submit_to_suzhou_intake(
        [
            _list_decision_submission(
                uscc,
                decision_number="苏信修〔2024〕901号",
                action=record_intake_pb2.LIST_ACTION_REPAIR,
                designation_decision_number="苏市监信〔2024〕901号",
            )
        ]
    )
    assert result.WhichOneof("outcome") == "accepted", result
    for city in ("suzhou", "wuxi", "changzhou"):

        async def removed(city: str = city) -> Any:
            response = await region.check("wuxi", city, subject, scenario=PROCUREMENT)
            return response if not response.memberships else None

        response = await eventually(removed)
        assert list(response.measures) == []
        history = await region.check("wuxi", city, subject, include_removed=True)
        [membership] = history.memberships
        assert membership.status == common_pb2.LIST_ENTRY_STATUS_REMOVED
        assert membership.removal_reason == common_pb2.REMOVAL_REASON_REPAIRED


async def test_a_revoked_consent_is_refused_at_every_node_within_seconds(region: Region) -> None:
    """Suzhou's consent service issues a token for its resident to Wuxi; Wuxi's checks are
    answered at all three nodes; Suzhou revokes it; every node refuses it within the bound of
    docs/trust.md (goal 5 s), Changzhou's through its mirror of Suzhou's revocations."""
    harness = region.harness
    resident = f"N:320505.{harness.region.pseudonym_key_ids[0]}." + "7e" * 32
    async with harness.channel("suzhou", "suzhou") as channel:
        consent = consent_pb2_grpc.ConsentServiceStub(channel)
        issued = await consent.IssueConsent(
            consent_pb2.IssueConsentRequest(
                subject_key=resident,
                audience_city=WUXI,
                purpose="credit-history",
                lifetime_seconds=3600,
            ),
            timeout=10,
        )
    for city in ("suzhou", "wuxi", "changzhou"):
        answer = await region.check("wuxi", city, resident, consent_token=issued.token)
        assert answer.subject_key == resident
    # A peer may not sign for Suzhou's residents, nor revoke Suzhou's tokens.
    async with harness.channel("wuxi", "suzhou") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await consent_pb2_grpc.ConsentServiceStub(channel).RevokeConsent(
                consent_pb2.RevokeConsentRequest(token=issued.token), timeout=10
            )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED

    async with harness.channel("suzhou", "suzhou") as channel:
        started = time.monotonic()
        revoked = await consent_pb2_grpc.ConsentServiceStub(channel).RevokeConsent(
            consent_pb2.RevokeConsentRequest(token=issued.token), timeout=10
        )
    assert revoked.revocation.token_id == issued.token_id

    async def refused_within(city: str) -> float:
        while True:
            try:
                await region.check("wuxi", city, resident, consent_token=issued.token)
            except grpc.aio.AioRpcError as exc:
                refusal = (exc.code(), dict(exc.trailing_metadata() or ()).get(DENIAL_TRAILER))
                break
            await asyncio.sleep(0.05)
        assert refusal == (grpc.StatusCode.PERMISSION_DENIED, "consent-revoked"), city
        return time.monotonic() - started

    cities = ("suzhou", "wuxi", "changzhou")
    async with asyncio.timeout(30):
        bounds = dict(zip(cities, await asyncio.gather(*map(refused_within, cities)), strict=True))
    print(f"revocation refused after: {bounds}")
    assert max(bounds.values()) <= REVOCATION_BOUND_SECONDS, bounds


async def test_wuxi_removing_suzhous_entry_is_refused(region: Region) -> None:
    subject = organisation_key(9_000_002)
    await region.harness.publish(
        "suzhou", [list_decision(subject, decision_number="苏市监信〔2024〕902号")]
    )
    await eventually(lambda: _listed_in(region, "wuxi", subject))
    # A Wuxi department submits a removal of Suzhou's designation to Wuxi's node.
    attempt = list_decision(
        subject,
        city=WUXI,
        action="REMOVE",
        removal_reason="REVOKED",
        decision_number="锡市监撤〔2024〕1号",
        designation="苏市监信〔2024〕902号",
    )
    await region.harness.publish("wuxi", [attempt])

    async def refused() -> Any:
        rejected = await region.harness.rejected_on("wuxi")
        return [r for r in rejected if r["record_id"] == attempt["record_id"]]

    [rejection] = await eventually(refused)
    assert rejection["city_code"] == WUXI
    assert [reason["code"] for reason in rejection["reasons"]] == ["not-issuing-city"]
    for city in ("suzhou", "wuxi", "changzhou"):
        response = await region.check("changzhou", city, subject)
        assert [m.status for m in response.memberships] == [common_pb2.LIST_ENTRY_STATUS_ACTIVE]
    assert not [c for c in await region.harness.changes_on("wuxi") if c.issuing_city == WUXI]


async def _listed_in(region: Region, city: str, subject: str) -> bool:
    return bool((await region.check("suzhou", city, subject)).memberships)


async def test_changzhou_down_while_suzhou_issues_1000_changes_then_catches_up(
    region: Region,
) -> None:
    changzhou = region.harness.nodes["changzhou"]
    changzhou.stop()
    before = await region.suzhou_entries()
    await region.harness.publish("suzhou", region.designations(1000))
    await region.suzhou_holds(before + 1000)
    changzhou.start()
    await region.harness.wait_ready("changzhou")
    entries, _digest = await region.converged_in("changzhou")
    assert entries >= 1000
    await region.assert_each_suzhou_change_once("changzhou")
    await region.assert_each_suzhou_change_once("suzhou")


async def test_a_replication_stream_cut_mid_way_resumes_without_gap_or_duplicate(
    region: Region,
) -> None:
    proxy, changzhou = region.proxy, region.harness.nodes["changzhou"]
    before = changzhou.digest_of(SUZHOU)[0]
    publishing = region.publish_paced(region.designations(1000), per_second=500)
    await eventually(lambda: _mirrored_beyond(changzhou, before + 300), within=60)
    # Cut every connection through the proxy (mid-message, wherever TCP split it), keep the
    # way closed for a moment, then let Changzhou reconnect and resume.
    proxy.refuse = True
    proxy.cut()
    at_cut = changzhou.digest_of(SUZHOU)[0]
    await asyncio.sleep(1.0)
    proxy.refuse = False
    await publishing
    await region.converged_in("changzhou")
    assert before + 300 <= at_cut < before + 1000
    await region.assert_each_suzhou_change_once("changzhou")
    log = changzhou.log_text()
    assert '"peer": "suzhou"' in log
    assert "peer_stream_broken" in log


async def _mirrored_beyond(node: CityNode, entries: int) -> bool:
    return bool(node.digest_of(SUZHOU)[0] > entries)


async def test_kill_9_mid_way_and_restart_rebuilds_the_same_state(region: Region) -> None:
    suzhou, changzhou = region.harness.nodes["suzhou"], region.harness.nodes["changzhou"]
    before = await region.suzhou_entries()
    publishing = region.publish_paced(region.designations(1000), per_second=500)
    # The issuer and a mirror die without any shutdown code, while changes are flowing.
    await eventually(lambda: _holds_more_than(region, before + 300), within=60)
    suzhou.kill()
    changzhou.kill()
    killed_at = suzhou.digest_of(SUZHOU)[0]
    suzhou.start()
    changzhou.start()
    await publishing
    await region.harness.wait_ready("suzhou", "changzhou")
    await region.suzhou_holds(before + 1000)
    assert before + 300 <= killed_at < before + 1000
    for city in ("wuxi", "changzhou"):
        await region.converged_in(city)
        await region.assert_each_suzhou_change_once(city)
    await region.assert_each_suzhou_change_once("suzhou")
    # And at rest: kill -9 once more; the restarted node has the same digest of everything.
    held = {code: changzhou.digest_of(code) for code in (SUZHOU, WUXI)}
    changzhou.kill()
    changzhou.start()
    await region.harness.wait_ready("changzhou")
    assert {code: changzhou.digest_of(code) for code in (SUZHOU, WUXI)} == held


async def _holds_more_than(region: Region, entries: int) -> bool:
    return await region.suzhou_entries() > entries


async def test_a_wiped_store_is_rebuilt_from_the_changelog(region: Region) -> None:
    wuxi = region.harness.nodes["wuxi"]
    await region.converged_in("wuxi")
    held = wuxi.digest_of(SUZHOU)
    wuxi.stop()
    store_dir = wuxi.settings.data_dir / "lists" / "store"
    for path in sorted(store_dir.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    store_dir.rmdir()
    wuxi.start()
    await region.harness.wait_ready("wuxi")
    assert wuxi.digest_of(SUZHOU) == held
    # Its peers held cursors of its old store: they recover and still follow it.
    subject = organisation_key(9_000_003)
    await region.harness.publish(
        "wuxi",
        [list_decision(subject, city=WUXI, decision_number="锡市监信〔2024〕3号")],
    )
    await eventually(lambda: _listed_in(region, "changzhou", subject), within=60)


class RogueWuxi(list_sync_pb2_grpc.ListSyncServiceServicer):
    """A server holding Wuxi's certificate that streams a removal of Suzhou's entry."""

    def __init__(self, forged: ListChange) -> None:
        self.forged = forged

    async def StreamListChanges(self, request: Any, context: Any) -> AsyncIterator[Any]:
        yield list_sync_pb2.StreamListChangesResponse(
            change=change_to_proto(self.forged), cursor=b"rogue-cursor"
        )
        yield list_sync_pb2.StreamListChangesResponse(
            caught_up=list_sync_pb2.CaughtUp(changes_sent=1), cursor=b"rogue-cursor"
        )
        await asyncio.sleep(3600)


async def test_a_change_to_suzhous_entry_streamed_by_wuxi_is_refused_and_audited(
    region: Region,
) -> None:
    harness, changzhou = region.harness, region.harness.nodes["changzhou"]
    subject = organisation_key(9_000_004)
    await harness.publish(
        "suzhou", [list_decision(subject, decision_number="苏市监信〔2024〕904号")]
    )
    await eventually(lambda: _listed_in(region, "changzhou", subject))
    store = changzhou.store()
    try:
        [entry] = store.entries_of_subject(subject)
    finally:
        store.close()
    forged = ListChange(
        WUXI,
        10_000,
        ChangeAction.REMOVED,
        entry.evolve(
            status=EntryStatus.REMOVED,
            removal_reason=RemovalReason.REVOKED,
            version=entry.version + 1,
        ),
        entry.updated_at,
    )
    rogue = await start_peer_server(
        bind="127.0.0.1:0",
        tls=harness.tls("wuxi"),
        services=[
            ServiceBinding(
                RogueWuxi(forged),
                list_sync_pb2_grpc.add_ListSyncServiceServicer_to_server,
                "creditlink.peer.v1.ListSyncService",
            )
        ],
        security=PeerSecurity(
            city="wuxi",
            region=harness.region,
            policy=load_policy(cities=harness.region.cities.keys()),
            keyring=ConsentKeyring(),
        ),
        audit=None,
    )
    try:
        # Changzhou's connection to "Wuxi" now reaches the rogue server.
        region.wuxi_proxy.upstream_port = rogue.port
        region.wuxi_proxy.cut()

        async def audited() -> Any:
            records = [
                harness.serde.decode(v)
                for _k, v in await harness.read_topic("changzhou", AUDIT_TOPIC)
                if v is not None
            ]
            # Changzhou's calls to peers are OUTBOUND records too; the refusal is the one
            # record with a denial whose method is no call Changzhou made.
            return [
                r
                for r in records
                if r["direction"] == "OUTBOUND" and r["denial_code"] == "not-issuing-city"
            ]

        [record] = await eventually(audited)
    finally:
        region.wuxi_proxy.upstream_port = harness.ports["wuxi"]
        region.wuxi_proxy.cut()
        await rogue.stop(0)
    assert (record["caller_city"], record["callee_city"]) == ("320400", WUXI)
    assert (record["status_code"], record["denial_code"]) == (
        "PERMISSION_DENIED",
        "not-issuing-city",
    )
    assert entry.entry_key in record["purpose"]
    assert record["subject_key"] == subject
    response = await region.check("wuxi", "changzhou", subject)
    assert [m.status for m in response.memberships] == [common_pb2.LIST_ENTRY_STATUS_ACTIVE]
    # Back on the real Wuxi, which does not know the rogue's cursor: Changzhou repairs from the
    # digest, adopts its cursor and follows Wuxi again.
    await region.converged_in("changzhou", "wuxi")
    mark = organisation_key(9_000_005)
    await harness.publish(
        "wuxi", [list_decision(mark, city=WUXI, decision_number="锡市监信〔2024〕5号")]
    )
    await eventually(lambda: _listed_in(region, "changzhou", mark), within=60)


async def test_peer_calls_are_audited_on_an_intact_chain(region: Region) -> None:
    # Every chain signed by its node's audit key, as the published keys verify.
    codes = {key: city.admin_code for key, city in region.harness.region.cities.items()}
    keyring = AuditKeyring.from_directory(region.harness.tls_dir, codes)
    for city in ("suzhou", "changzhou"):
        await region.check("wuxi", city, organisation_key(9_000_400))  # one call at least
        settings = region.harness.nodes[city].settings

        async def signed(settings: Any = settings) -> list[AuditMessage] | None:
            messages = await read_audit_topic(settings, settings.topic(AUDIT_TOPIC))
            return messages if any(m.signature is not None for m in messages) else None

        messages = await eventually(signed)
        report = verify_chain(messages, keyring=keyring)
        assert report.ok, report
    audit = await region.harness.read_topic("suzhou", AUDIT_TOPIC)
    keys = {key.rsplit(":", 1)[0] for key, _ in audit if key}
    assert "lists" in keys
    methods = {region.harness.serde.decode(v)["method"] for _, v in audit if v}
    assert "/creditlink.peer.v1.ListSyncService/StreamListChanges" in methods
    assert "/creditlink.peer.v1.CreditCheckService/CheckSubject" in methods


async def test_the_conformance_runner_passes_against_a_real_lists_node(region: Region) -> None:
    """The runner, as Wuxi, against Suzhou's real lists node (ListSyncService and
    CreditCheckService): every case it can run passes; only scores and alerts, which this
    endpoint does not serve, are skipped."""
    harness = region.harness
    # Enough of Suzhou's own entries and changes for the paging and resume cases.
    subjects = [organisation_key(9_000_100 + n) for n in range(2)]
    await harness.publish(
        "suzhou",
        [
            list_decision(subject, decision_number=f"苏市监信〔2024〕{950 + n}号")
            for n, subject in enumerate(subjects)
        ],
    )
    for subject in subjects:
        await eventually(lambda subject=subject: _listed_in(region, "suzhou", subject))
    issue_dev_certificates(harness.tls_dir, ["jiashan"])  # a city the policy names for nothing
    certs = harness.tls_dir
    endpoint = Endpoint(
        f"127.0.0.1:{harness.ports['suzhou']}",
        certs / "ca.crt",
        certs / "wuxi.crt",
        certs / "wuxi.key",
        service_host("suzhou", "lists"),
        caller_code=WUXI,
        serving_code=SUZHOU,
        pseudonym_key_id=harness.region.pseudonym_key_ids[0],
        consent_key=certs / "wuxi.consent.key",
        denied_cert=certs / "jiashan.crt",
        denied_key=certs / "jiashan.key",
    )
    results = await conformance_run(endpoint)
    failed = [r.line() for r in results if r.outcome == "FAIL"]
    assert failed == []
    skipped = {r.name for r in results if r.outcome == "SKIP"}
    assert all(name.startswith(("score", "alerts")) for name in skipped), skipped
    assert any(r.name == "credit-check.listed-subject-has-its-membership" for r in results)
    passed = {r.name for r in results if r.outcome == "PASS"}
    assert "credit-check.listed-subject-has-its-membership" in passed


async def test_audit_query_names_who_checked_a_subject_from_which_city_and_role(
    region: Region,
) -> None:
    """A subject checked at Wuxi by Suzhou's node and by one of Wuxi's own departments: the
    query of Wuxi's audit returns both calls with their purpose and role, and refuses an ID
    number without repeating it."""
    subject = f"L:{make_uscc(random.Random(4711))}"
    await region.check("suzhou", "wuxi", subject)
    department = Role.department("wuxi", "113202000143201878")
    async with secure_channel(
        region.harness.nodes["wuxi"].target,
        region.harness.tls(department),
        expect_city="wuxi",
        service="lists",
    ) as channel:
        await region.harness.check_stub(channel).CheckSubject(
            credit_check_pb2.CheckSubjectRequest(subject_key=subject, purpose="行政许可审查"),
            timeout=10,
        )
    settings = region.harness.nodes["wuxi"].settings

    async def both() -> list[AuditMessage] | None:
        messages = await read_audit_topic(settings, settings.topic(AUDIT_TOPIC))
        return messages if len(calls_about(messages, subject)) == 2 else None

    messages = await eventually(both)
    today = china_today()
    calls = calls_about(messages, subject, since=today, until=today)
    assert [(c.caller_city, c.caller_role, c.purpose, c.status_code) for c in calls] == [
        (SUZHOU, "node", "集成测试", "OK"),
        (WUXI, "department:113202000143201878", "行政许可审查", "OK"),
    ]
    assert calls_about(messages, subject, until=today - timedelta(days=1)) == []
    with pytest.raises(ValueError, match="ID number") as refused:
        calls_about(messages, "L:32050519900307123X")
    assert "32050519900307123X" not in str(refused.value)


async def _suzhou_heads_held(region: Region, through_seq: int) -> list[Checkpoint]:
    """Once Wuxi and Changzhou both hold a head of Suzhou's lists chain at ``through_seq`` or
    later: every head of Suzhou they hold."""
    held: list[Checkpoint] = []
    for peer in ("wuxi", "changzhou"):
        settings = region.harness.nodes[peer].settings
        kept = await read_checkpoints(settings, settings.topic(CHECKPOINTS_TOPIC))
        about = [c for c in kept if c.city == SUZHOU]
        if not any(c.chain == "lists" and c.seq >= through_seq for c in about):
            return []
        held.extend(about)
    return held


async def _checked_at(region: Region, subject: str) -> int:
    """Check ``subject`` at Suzhou from Wuxi; the seq of the call's record on the lists chain."""
    await region.check("wuxi", "suzhou", subject)
    settings = region.harness.nodes["suzhou"].settings

    async def recorded() -> int:
        messages = await read_audit_topic(settings, settings.topic(AUDIT_TOPIC))
        calls = [
            record["seq"]
            for m in messages
            if m.key.startswith("lists:")
            and (record := region.harness.serde.decode(m.value))["subject_key"] == subject
        ]
        return calls[-1] if calls else 0

    return int(await eventually(recorded))


async def _copy(region: Region, messages: list[AuditMessage], name: str) -> str:
    """``messages`` (keys, values and signature headers) onto a new audit topic: what a
    city that rewrote its own topic would show a verifier."""
    prefix = f"{region.harness.run}{name}."
    specs = [spec for spec in load_catalogue() if spec.name == AUDIT_TOPIC]
    await provision(region.harness.bootstrap, specs, prefix=prefix)
    settings = region.harness.nodes["suzhou"].settings
    producer = make_producer(settings, client_id="tamper")
    await producer.start()
    try:
        for message in messages:
            headers = (
                []
                if message.signature is None
                else [("creditlink-audit-signature", message.signature)]
            )
            await producer.send_and_wait(
                prefix + AUDIT_TOPIC, value=message.value, key=message.key.encode(), headers=headers
            )
    finally:
        await producer.stop()
    return prefix + AUDIT_TOPIC


async def test_peers_hold_suzhous_signed_heads_and_find_what_suzhou_cut_deleted_or_rewrote(
    region: Region, capsys: pytest.CaptureFixture[str]
) -> None:
    """Suzhou hands the signed heads of its audit chains to Wuxi and Changzhou, which keep
    them. Suzhou's real topic verifies against them; a copy cut at an earlier signed head, one
    without the lists chain and one rewritten with valid hashes verify by themselves, and
    each fails against the heads the peers hold, at the position named."""
    harness = region.harness
    first = await _checked_at(region, organisation_key(9_000_300))
    await eventually(lambda: _suzhou_heads_held(region, first), within=30)
    second = await _checked_at(region, organisation_key(9_000_301))
    held = await eventually(lambda: _suzhou_heads_held(region, second), within=30)
    newest = max(c.seq for c in held if c.chain == "lists")

    async def verify(topic: str) -> tuple[int, str]:
        code = await asyncio.to_thread(
            audit_main,
            [
                "verify",
                "--bootstrap",
                harness.bootstrap,
                "--topic",
                topic,
                "--keys",
                str(harness.tls_dir),
                "--region",
                str(harness._region_file("suzhou")),
                "--against-peers",
                "--city",
                "suzhou",
                *(
                    arg
                    for peer in ("wuxi", "changzhou")
                    for arg in (
                        "--checkpoints",
                        harness.nodes[peer].settings.topic(CHECKPOINTS_TOPIC),
                    )
                ),
            ],
        )
        return code, capsys.readouterr().out

    settings = harness.nodes["suzhou"].settings
    code, out = await verify(settings.topic(AUDIT_TOPIC))
    assert code == 0, out
    assert "of suzhou's heads on" in out

    messages = await read_audit_topic(settings, settings.topic(AUDIT_TOPIC))
    lists = [m for m in messages if m.key.startswith("lists:")]
    # Cut after the last signed head before the second check's record: alone it verifies.
    signed = [int(m.key.split(":")[1]) for m in lists if m.signature is not None]
    cut_at = max(seq for seq in signed if seq < second)
    kept = [
        m for m in messages if not m.key.startswith("lists:") or int(m.key.split(":")[1]) <= cut_at
    ]
    truncated = await _copy(region, kept, "truncated")
    code, out = await verify(truncated)
    assert code == 1, out
    assert f"TRUNCATED: chain 'lists' seq {cut_at + 1} " in out
    gone = re.search(rf"so seq {cut_at + 1}\.\.(\d+) are gone", out)
    assert gone is not None, out
    assert int(gone[1]) >= newest  # the peers' heads move on while the test runs

    deleted = await _copy(
        region, [m for m in messages if not m.key.startswith("lists:")], "deleted"
    )
    code, out = await verify(deleted)
    assert code == 1, out
    deleted_at = re.search(r"CHAIN-DELETED: chain 'lists' seq (\d+): no record of the chain", out)
    assert deleted_at is not None, out
    assert int(deleted_at[1]) >= newest

    rewritten = await _copy(region, _rewritten(harness.serde, messages), "rewritten")
    code, out = await verify(rewritten)
    assert code == 1, out
    assert "REWRITTEN: chain 'lists' seq" in out


async def test_a_checkpoint_not_signed_by_the_calling_city_is_refused_and_audited(
    region: Region,
) -> None:
    """Wuxi cannot plant a head of its chain that its key did not sign (nor one of another
    city's chain: the city is always the caller's)."""
    harness = region.harness
    forged = audit_evidence_pb2.AuditCheckpoint(
        chain="lists", seq=7, hash="ab" * 32, signature="deadbeef.AAAA"
    )
    async with harness.channel("wuxi", "suzhou") as channel:
        stub = audit_evidence_pb2_grpc.AuditEvidenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.HandCheckpoints(
                audit_evidence_pb2.HandCheckpointsRequest(checkpoints=[forged]), timeout=10
            )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    trailers = dict(refused.value.trailing_metadata() or ())
    assert trailers[DENIAL_TRAILER] == "bad-checkpoint"
    assert "320200:lists:7" in (refused.value.details() or "")
    settings = harness.nodes["suzhou"].settings

    async def audited() -> bool:
        messages = await read_audit_topic(settings, settings.topic(AUDIT_TOPIC))
        return any(
            (record := harness.serde.decode(m.value))["denial_code"] == "bad-checkpoint"
            and record["caller_city"] == WUXI
            for m in messages
        )

    assert await eventually(audited)
    kept = await read_checkpoints(settings, settings.topic(CHECKPOINTS_TOPIC))
    assert not [c for c in kept if c.city == WUXI and c.seq == 7 and c.hash == "ab" * 32]


def _rewritten(serde: AvroSerde, messages: list[AuditMessage]) -> list[AuditMessage]:
    """The lists chain written again from seq 1 with another purpose and valid hashes, as
    whoever can write the topic but lacks the city's key could (so: unsigned)."""
    out, previous = [], GENESIS_HASH
    for message in messages:
        if not message.key.startswith("lists:"):
            out.append(message)
            continue
        record = serde.decode(message.value) | {"purpose": "改写", "prev_hash": previous}
        record["hash"] = previous = chain_hash(serde, record)
        out.append(AuditMessage(message.offset, message.key, serde.encode(SCHEMA, record)))
    return out
