"""ListSyncService, CreditCheckService and the peer mirror over real gRPC with mutual TLS,
in one process, without a broker (the changelog is in memory): the contract's stream, digest
and paging semantics, and a mirror that converges through a cut stream and a lost history."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from creditlink.peer.v1 import (
    common_pb2,
    credit_check_pb2,
    credit_check_pb2_grpc,
    list_sync_pb2,
    list_sync_pb2_grpc,
)
from services.common.avro import AvroSerde
from services.common.list_digest import bucket_digests
from services.common.peer import (
    DENIAL_TRAILER,
    PeerSecurity,
    PeerServer,
    ServiceBinding,
    secure_channel,
    start_peer_server,
)
from services.common.policy import load_policy
from services.lists.book import ListBook
from services.lists.check_server import CreditCheckServicer
from services.lists.convert import change_from_proto, entry_from_proto
from services.lists.measures import load_measures
from services.lists.mirror import Backoff, PeerMirror
from services.lists.store import ListStore
from services.lists.sync_server import ListSyncServicer
from tests.kit.lists import (
    SUZHOU,
    WUXI,
    Clock,
    MemoryChangelog,
    RefusalRecorder,
    incoming,
    list_decision,
    organisation_key,
    person_key,
)
from tests.peer_kit import REGION, PeerPki, make_consent_kit, make_pki

pytestmark = pytest.mark.timeout(60)


@dataclass
class City:
    key: str
    code: str
    book: ListBook
    changelog: MemoryChangelog
    server: PeerServer
    clock: Clock

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"


async def _serve(
    book: ListBook,
    key: str,
    pki: PeerPki,
    bind: str = "127.0.0.1:0",
    *,
    follow_max_age: float = 600.0,
) -> PeerServer:
    security = PeerSecurity(
        city=key,
        region=REGION,
        policy=load_policy(cities=REGION.cities.keys()),
        keyring=make_consent_kit().keyring,
    )
    return await start_peer_server(
        bind=bind,
        tls=pki.tls(key),
        services=[
            ServiceBinding(
                ListSyncServicer(book, follow_max_age=follow_max_age),
                list_sync_pb2_grpc.add_ListSyncServiceServicer_to_server,
                "creditlink.peer.v1.ListSyncService",
            ),
            ServiceBinding(
                CreditCheckServicer(book, load_measures(), security, REGION.peers_of(key)),
                credit_check_pb2_grpc.add_CreditCheckServiceServicer_to_server,
                "creditlink.peer.v1.CreditCheckService",
            ),
        ],
        security=security,
        audit=None,
    )


async def _city(directory: Path, key: str, pki: PeerPki) -> City:
    code = REGION.city(key).admin_code
    changelog = MemoryChangelog()
    clock = Clock()
    book = ListBook(
        ListStore(directory / key, AvroSerde(), own_city=code),
        changelog,
        RefusalRecorder(),
        changelog,
        own_city=code,
        changelog_topic="credit.list-changes.v1",
        clock=clock,
    )
    return City(key, code, book, changelog, await _serve(book, key, pki), clock)


@dataclass
class Pair:
    suzhou: City
    wuxi: City
    pki: PeerPki

    def sync(self, caller: str = "wuxi") -> tuple[grpc.aio.Channel, Any]:
        channel = secure_channel(
            self.suzhou.target, self.pki.tls(caller), expect_city="suzhou", service="lists"
        )
        return channel, list_sync_pb2_grpc.ListSyncServiceStub(channel)

    def check(self, caller: str = "wuxi") -> tuple[grpc.aio.Channel, Any]:
        channel = secure_channel(
            self.suzhou.target, self.pki.tls(caller), expect_city="suzhou", service="lists"
        )
        return channel, credit_check_pb2_grpc.CreditCheckServiceStub(channel)

    def mirror(self, reconcile_seconds: float = 3600.0) -> PeerMirror:
        return PeerMirror(
            self.wuxi.book,
            REGION.city("suzhou"),
            lambda: secure_channel(
                self.suzhou.target, self.pki.tls("wuxi"), expect_city="suzhou", service="lists"
            ),
            own_city_key="wuxi",
            reconcile_seconds=reconcile_seconds,
            backoff=Backoff(initial=0.05, maximum=0.2),
        )


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    pki = make_pki(tmp_path / "pki")
    suzhou = await _city(tmp_path, "suzhou", pki)
    wuxi = await _city(tmp_path, "wuxi", pki)
    try:
        yield Pair(suzhou, wuxi, pki)
    finally:
        await suzhou.server.stop(0)
        await wuxi.server.stop(0)


async def designate(city: City, count: int, start: int = 0, list_type: str = "BLACK") -> None:
    await city.book.apply_records(
        [
            incoming(
                list_decision(organisation_key(n), decision_number=f"D{n}", list_type=list_type),
                offset=n,
            )
            for n in range(start, start + count)
        ]
    )


def _denial(error: grpc.aio.AioRpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get(DENIAL_TRAILER)


async def _stream(stub: Any, **fields: Any) -> list[list_sync_pb2.StreamListChangesResponse]:
    return [
        r async for r in stub.StreamListChanges(list_sync_pb2.StreamListChangesRequest(**fields))
    ]


async def test_stream_sends_every_change_then_caught_up_and_resumes_from_a_cursor(
    pair: Pair,
) -> None:
    await designate(pair.suzhou, 5)
    channel, stub = pair.sync()
    async with channel:
        responses = await _stream(stub)
        assert [r.change.sequence for r in responses[:-1]] == [1, 2, 3, 4, 5]
        assert responses[-1].caught_up.changes_sent == 5
        resumed = await _stream(stub, cursor=responses[2].cursor)
        assert [r.change.sequence for r in resumed[:-1]] == [4, 5]
        at_end = await _stream(stub, cursor=responses[-1].cursor)
        assert [r.WhichOneof("event") for r in at_end] == ["caught_up"]
    change = change_from_proto(responses[0].change)
    assert change.change_id == f"{SUZHOU}:1"


async def test_stream_filters_list_types(pair: Pair) -> None:
    await designate(pair.suzhou, 2)
    await designate(pair.suzhou, 2, start=10, list_type="RED")
    channel, stub = pair.sync()
    async with channel:
        responses = await _stream(stub, list_types=[common_pb2.LIST_TYPE_RED])
    assert [r.change.entry.list_type for r in responses[:-1]] == [common_pb2.LIST_TYPE_RED] * 2
    assert pair.suzhou.book.cursors.decode(responses[-1].cursor) == 4


async def test_followed_stream_delivers_new_changes(pair: Pair) -> None:
    await designate(pair.suzhou, 1)
    channel, stub = pair.sync()
    async with channel:
        call = stub.StreamListChanges(list_sync_pb2.StreamListChangesRequest(follow=True))
        first = await call.read()
        caught_up = await call.read()
        assert (first.change.sequence, caught_up.WhichOneof("event")) == (1, "caught_up")
        await designate(pair.suzhou, 1, start=1)
        later = await asyncio.wait_for(call.read(), 5)
        assert later.change.sequence == 2
        call.cancel()


@pytest.mark.parametrize(
    ("cursor", "code", "denial"),
    [
        (b"garbage", grpc.StatusCode.INVALID_ARGUMENT, "invalid-cursor"),
        ("other-city", grpc.StatusCode.INVALID_ARGUMENT, "invalid-cursor"),
        ("ahead", grpc.StatusCode.INVALID_ARGUMENT, "invalid-cursor"),
        ("pruned", grpc.StatusCode.OUT_OF_RANGE, "cursor-expired"),
    ],
)
async def test_stream_refuses_cursors_it_cannot_serve(
    pair: Pair, cursor: Any, code: grpc.StatusCode, denial: str
) -> None:
    await designate(pair.suzhou, 3)
    if cursor == "other-city":
        cursor = pair.wuxi.book.cursors.encode(1)
    elif cursor == "ahead":
        cursor = pair.suzhou.book.cursors.encode(99)
    elif cursor == "pruned":
        pair.suzhou.book._clock.advance(days=400)  # type: ignore[attr-defined]
        await designate(pair.suzhou, 1, start=3)
        await pair.suzhou.book.prune_retained(timedelta(days=365))
        cursor = pair.suzhou.book.cursors.encode(1)
    channel, stub = pair.sync()
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _stream(stub, cursor=cursor)
    assert refused.value.code() == code
    assert _denial(refused.value) == denial


async def test_digest_matches_the_contract_and_entries_page_in_key_order(pair: Pair) -> None:
    await designate(pair.suzhou, 30)
    store = pair.suzhou.book.store
    channel, stub = pair.sync()
    async with channel:
        digest = await stub.GetListDigest(list_sync_pb2.GetListDigestRequest(bucket_count=8))
        expected = bucket_digests(store.digest_lines(SUZHOU, None), 8)
        assert [(b.bucket, b.entry_count, b.sha256) for b in digest.buckets] == [
            (b.bucket, b.entry_count, b.sha256) for b in expected
        ]
        assert pair.suzhou.book.cursors.decode(digest.cursor) == 30
        keys: list[str] = []
        token = ""
        pages = 0
        while True:
            page = await stub.ListEntries(
                list_sync_pb2.ListEntriesRequest(bucket_count=8, page_size=7, page_token=token)
            )
            keys.extend(e.entry_key for e in page.entries)
            pages += 1
            token = page.next_page_token
            if not token:
                break
        assert pages == 5
        assert keys == sorted(keys, key=lambda k: k.encode())
        assert len(set(keys)) == 30
        some = await stub.ListEntries(list_sync_pb2.ListEntriesRequest(bucket_count=8, buckets=[3]))
        assert len(some.entries) == expected[3].entry_count
        assert entry_from_proto(some.entries[0]).issuing_city == SUZHOU
        first = await stub.ListEntries(
            list_sync_pb2.ListEntriesRequest(bucket_count=8, page_size=2)
        )
        for bad in (
            list_sync_pb2.GetListDigestRequest(bucket_count=3),
            list_sync_pb2.ListEntriesRequest(bucket_count=8, buckets=[9]),
            list_sync_pb2.ListEntriesRequest(
                bucket_count=8, buckets=[1], page_token=first.next_page_token
            ),
        ):
            method = (
                stub.GetListDigest
                if isinstance(bad, list_sync_pb2.GetListDigestRequest)
                else stub.ListEntries
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await method(bad)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def _until(condition: Any, seconds: float = 10.0) -> None:
    """Poll ``condition``: the state under test lives in two stores, no event covers both."""
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {seconds}s")


def _converged(pair: Pair) -> bool:
    def digest(city: City) -> object:
        return bucket_digests(city.book.store.digest_lines(SUZHOU, None), 64)

    return digest(pair.wuxi) == digest(pair.suzhou)


async def test_mirror_converges_through_a_cut_stream_without_applying_twice(pair: Pair) -> None:
    mirror = pair.mirror()
    follow = asyncio.create_task(mirror.follow())
    try:
        await designate(pair.suzhou, 300)
        await _until(lambda: pair.wuxi.book.mirrored_applied.get(SUZHOU, 0) >= 100)
        # Cut every connection of the stream (the server side goes away mid-stream).
        port = pair.suzhou.server.port
        await pair.suzhou.server.server.stop(0)
        pair.suzhou.server = await _serve(pair.suzhou.book, "suzhou", pair.pki, f"127.0.0.1:{port}")
        await designate(pair.suzhou, 300, start=300)
        await _until(lambda: _converged(pair))
    finally:
        follow.cancel()
        await mirror.close()
    assert pair.wuxi.book.mirrored_applied[SUZHOU] == 600
    mirrored = [c.sequence for c in pair.wuxi.changelog.changes if c.issuing_city == SUZHOU]
    assert mirrored == list(range(1, 601))


async def test_a_followed_stream_ends_at_its_age_and_the_mirror_resumes_from_its_cursor(
    pair: Pair,
) -> None:
    """docs/design.md §3.3: a follow stream ends (OK) after its maximum age, after the last
    cursor; the mirror opens the next one from that cursor, with no gap and nothing twice."""
    port = pair.suzhou.server.port
    await pair.suzhou.server.stop(0)
    pair.suzhou.server = await _serve(
        pair.suzhou.book, "suzhou", pair.pki, f"127.0.0.1:{port}", follow_max_age=0.3
    )
    await designate(pair.suzhou, 2)
    channel, stub = pair.sync()
    async with channel:
        started = asyncio.get_running_loop().time()
        async with asyncio.timeout(5):
            responses = await _stream(stub, follow=True)
        lasted = asyncio.get_running_loop().time() - started
    assert [r.WhichOneof("event") for r in responses] == ["change", "change", "caught_up"]
    assert 0.3 <= lasted < 3
    mirror = pair.mirror()
    follow = asyncio.create_task(mirror.follow())
    try:
        await _until(lambda: pair.wuxi.book.mirrored_applied.get(SUZHOU, 0) >= 2)
        await asyncio.sleep(1.0)  # three streams or so ended meanwhile
        await designate(pair.suzhou, 3, start=2)
        await _until(lambda: pair.wuxi.book.mirrored_applied.get(SUZHOU, 0) >= 5)
    finally:
        follow.cancel()
        await mirror.close()
    mirrored = [c.sequence for c in pair.wuxi.changelog.changes if c.issuing_city == SUZHOU]
    assert mirrored == [1, 2, 3, 4, 5]


async def test_mirror_repairs_when_the_history_it_needs_is_gone(pair: Pair) -> None:
    await designate(pair.suzhou, 20)
    mirror = pair.mirror()
    follow = asyncio.create_task(mirror.follow())
    try:
        await _until(lambda: _converged(pair))
        follow.cancel()
        # Wuxi is away for more than the retention; Suzhou changes and forgets old changes.
        pair.suzhou.book._clock.advance(days=400)  # type: ignore[attr-defined]
        removal = list_decision(
            organisation_key(4),
            action="REMOVE",
            removal_reason="REVOKED",
            decision_number="撤4",
            designation="D4",
        )
        await pair.suzhou.book.apply_records([incoming(removal, offset=50)])
        await designate(pair.suzhou, 5, start=20)
        await pair.suzhou.book.prune_retained(timedelta(days=365))
        assert pair.suzhou.book.store.first_retained_sequence() == 21
        follow = asyncio.create_task(mirror.follow())
        await _until(lambda: _converged(pair))
        await _until(lambda: pair.wuxi.book.store.peer_position(SUZHOU).sequence == 26)
        await designate(pair.suzhou, 1, start=30)
        await _until(lambda: _converged(pair))
    finally:
        follow.cancel()
        await mirror.close()


async def test_scheduled_reconcile_repairs_a_silent_divergence(pair: Pair) -> None:
    await designate(pair.suzhou, 10)
    mirror = pair.mirror()
    follow = asyncio.create_task(mirror.follow())
    try:
        await _until(lambda: _converged(pair))
        # Someone deletes an entry from Wuxi's store behind the book's back.
        victim = next(pair.wuxi.book.store.entries(f"{SUZHOU}/"))
        batch = pair.wuxi.book.store.batch()
        batch.delete_entry(victim)
        pair.wuxi.book.store.commit(batch)
        assert not _converged(pair)
        report = await mirror.reconcile(adopt_cursor=False)
        assert report is not None
        assert report.updated == [victim.entry_key]
        assert _converged(pair)
    finally:
        follow.cancel()
        await mirror.close()


async def test_check_subject_answers_memberships_and_measures(pair: Pair) -> None:
    await designate(pair.suzhou, 1)
    channel, stub = pair.check()
    async with channel:
        response = await stub.CheckSubject(
            credit_check_pb2.CheckSubjectRequest(
                subject_key=organisation_key(0),
                scenario=credit_check_pb2.SCENARIO_GOVERNMENT_PROCUREMENT,
                purpose="WXCG-2024-17",
            )
        )
        [membership] = response.memberships
        assert membership.list_type == common_pb2.LIST_TYPE_BLACK
        assert membership.issuing_city == SUZHOU
        assert [m.measure_code for m in response.measures] == ["restrict-procurement"]
        assert list(response.measures[0].triggered_by_entry_keys) == [membership.entry_key]
        nobody = await stub.CheckSubject(
            credit_check_pb2.CheckSubjectRequest(subject_key=organisation_key(9), purpose="x")
        )
        assert list(nobody.memberships) == []
        other = await stub.CheckSubject(
            credit_check_pb2.CheckSubjectRequest(
                subject_key=organisation_key(0),
                scenario=credit_check_pb2.SCENARIO_OTHER,
                scenario_code="land_transfer",
                purpose="x",
            )
        )
        assert [m.measure_code for m in other.measures] == ["restrict-land-transfer"]


async def test_check_answers_follow_each_change_and_the_day(pair: Pair) -> None:
    """Answers are cached per subject; a designation, a removal and the day coming when an
    entry takes effect each show in the next check."""
    subject = organisation_key(0)
    request = credit_check_pb2.CheckSubjectRequest(
        subject_key=subject,
        scenario=credit_check_pb2.SCENARIO_GOVERNMENT_PROCUREMENT,
        purpose="WXCG-2024-18",
    )
    channel, stub = pair.check()
    async with channel:

        async def check() -> tuple[list[int], list[str]]:
            response = await stub.CheckSubject(request)
            return (
                [m.status for m in response.memberships],
                [m.measure_code for m in response.measures],
            )

        assert await check() == ([], [])
        starts = pair.suzhou.clock.now.date() + timedelta(days=2)
        designation = list_decision(subject, decision_number="D0", effective_from=starts)
        await pair.suzhou.book.apply_records([incoming(designation, offset=0)])
        assert await check() == ([common_pb2.LIST_ENTRY_STATUS_ACTIVE], [])  # not in force yet
        pair.suzhou.clock.advance(days=2)
        assert await check() == ([common_pb2.LIST_ENTRY_STATUS_ACTIVE], ["restrict-procurement"])
        removal = list_decision(
            subject,
            action="REMOVE",
            removal_reason="REVOKED",
            decision_number="撤0",
            designation="D0",
        )
        await pair.suzhou.book.apply_records([incoming(removal, offset=1)])
        assert await check() == ([], [])


async def test_check_reports_each_mirror_as_fresh_as_it_last_was(pair: Pair) -> None:
    """``mirror_freshness`` follows every sync and caught-up of a mirror, and a commit."""
    request = credit_check_pb2.CheckSubjectRequest(subject_key=organisation_key(0), purpose="x")
    channel = secure_channel(
        pair.wuxi.target, pair.pki.tls("suzhou"), expect_city="wuxi", service="lists"
    )
    stub = credit_check_pb2_grpc.CreditCheckServiceStub(channel)
    async with channel:

        async def freshness() -> dict[str, datetime]:
            response = await stub.CheckSubject(request)
            return {f.city: f.synced_at.ToDatetime(UTC) for f in response.mirror_freshness}

        assert await freshness() == {}
        pair.wuxi.book.mark_caught_up(SUZHOU)
        first = pair.wuxi.clock.now
        assert await freshness() == {SUZHOU: first}
        pair.wuxi.clock.advance(minutes=5)
        assert await freshness() == {SUZHOU: first}  # nothing heard since
        pair.wuxi.book.mark_caught_up(SUZHOU)
        assert await freshness() == {SUZHOU: first + timedelta(minutes=5)}
        # A change mirrored from Suzhou moves it on too.
        pair.wuxi.clock.advance(minutes=5)
        await designate(pair.suzhou, 1)
        mirror = pair.mirror()
        follow = asyncio.create_task(mirror.follow())
        try:
            await _until(lambda: pair.wuxi.book.mirrored_applied.get(SUZHOU, 0) == 1)
        finally:
            follow.cancel()
            await mirror.close()
        assert await freshness() == {SUZHOU: pair.wuxi.clock.now}


@pytest.mark.parametrize(
    ("fields", "code", "denial"),
    [
        (
            {"subject_key": "L:91320500MA1W8XY409"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "purpose-required",
        ),
        (
            {"subject_key": "L:short", "purpose": "x"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid-subject-key",
        ),
        (
            {"subject_key": "X:1", "purpose": "x"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid-subject-key",
        ),
        (
            {
                "subject_key": "L:91320500MA1W8XY409",
                "purpose": "x",
                "scenario": 100,
                "scenario_code": "MOON",
            },
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown-scenario",
        ),
        (
            {"subject_key": person_key(1), "purpose": "x"},
            grpc.StatusCode.PERMISSION_DENIED,
            "consent-missing",
        ),
    ],
)
async def test_check_subject_refusals(
    pair: Pair, fields: dict[str, Any], code: grpc.StatusCode, denial: str
) -> None:
    channel, stub = pair.check()
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CheckSubject(credit_check_pb2.CheckSubjectRequest(**fields))
    assert refused.value.code() == code
    assert _denial(refused.value) == denial


async def test_check_subjects_answers_per_subject_and_bounds_the_batch(pair: Pair) -> None:
    await designate(pair.suzhou, 2)
    channel, stub = pair.check()
    async with channel:
        response = await stub.CheckSubjects(
            credit_check_pb2.CheckSubjectsRequest(
                subjects=[
                    credit_check_pb2.SubjectQuery(subject_key=organisation_key(0)),
                    credit_check_pb2.SubjectQuery(subject_key="bad"),
                    credit_check_pb2.SubjectQuery(subject_key=person_key(3)),
                    credit_check_pb2.SubjectQuery(subject_key=organisation_key(1)),
                ],
                scenario=credit_check_pb2.SCENARIO_TENDERING,
                purpose="batch",
            )
        )
        results = response.results
        assert [len(r.memberships) for r in results] == [1, 0, 0, 1]
        assert [r.error.code for r in results] == ["", "invalid-subject-key", "consent-missing", ""]
        assert results[3].measures[0].measure_code == "restrict-tendering"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CheckSubjects(
                credit_check_pb2.CheckSubjectsRequest(
                    subjects=[credit_check_pb2.SubjectQuery(subject_key=organisation_key(0))]
                    * 1001,
                    purpose="too many",
                )
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_city_without_a_policy_rule_is_denied(pair: Pair) -> None:
    channel, stub = pair.sync("jiashan")
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _stream(stub)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _denial(refused.value) == "policy-denied"
    assert WUXI  # Wuxi is allowed by the same policy (the other tests)
