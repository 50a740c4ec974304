"""The list book over a real RocksDB store, with the changelog in memory: the single writer's
guarantees without a broker (sequence without gap or duplicate, idempotency, catch-up,
mirroring, repair, expiry, retention)."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from services.common.avro import AvroSerde
from services.common.clock import china_today
from services.common.list_digest import bucket_digests
from services.lists.book import IncomingRecord, ListBook
from services.lists.model import ChangeAction, ChinaDay, EntryStatus, ListChange, RemovalReason
from services.lists.store import ListStore
from tests.kit.lists import (
    CHANGZHOU,
    SUZHOU,
    WUXI,
    Clock,
    MemoryChangelog,
    RefusalRecorder,
    incoming,
    list_decision,
    organisation_key,
)
from tests.kit.lists_seed import drop_index_lines

SERDE = AvroSerde()


class Node:
    """A book, its store, its in-memory topics and refusals: one city's lists."""

    def __init__(self, directory: Path, city: str, clock: Clock | None = None) -> None:
        self.directory = directory
        self.city = city
        self.clock = clock or Clock()
        self.changelog = MemoryChangelog()
        self.refusals = RefusalRecorder()
        self.store = ListStore(directory, SERDE, own_city=city)
        self.book = self._book()

    def _book(self) -> ListBook:
        return ListBook(
            self.store,
            self.changelog,
            self.refusals,
            self.changelog,
            own_city=self.city,
            changelog_topic="credit.list-changes.v1",
            clock=self.clock,
        )

    def restart(self, *, wipe: bool = False) -> None:
        """A new process on the same store (or on an empty one) and the same topics."""
        self.store.close()
        directory = (
            self.directory.with_name(self.directory.name + "-new") if wipe else self.directory
        )
        self.store = ListStore(directory, SERDE, own_city=self.city)
        self.book = self._book()

    def index_lines(self) -> list[tuple[str, int, str]]:
        lines = self.store.digest_lines(SUZHOU, None)
        return sorted((line.entry_key, line.version, line.status) for line in lines)

    def digest(self, issuer: str) -> list[object]:
        return list(bucket_digests(self.store.digest_lines(issuer, None), 64))


@pytest.fixture
def suzhou(tmp_path: Path) -> Node:
    return Node(tmp_path / "suzhou", SUZHOU)


@pytest.fixture
def wuxi(tmp_path: Path) -> Node:
    return Node(tmp_path / "wuxi", WUXI)


def designations(count: int, start: int = 0) -> list[IncomingRecord]:
    return [
        incoming(
            list_decision(organisation_key(n), decision_number=f"苏市监信〔2024〕{n}号"), offset=n
        )
        for n in range(start, start + count)
    ]


def sequences(changes: list[ListChange], city: str = SUZHOU) -> list[int]:
    return [c.sequence for c in changes if c.issuing_city == city]


async def test_own_changes_are_numbered_without_gap_and_applied_once(suzhou: Node) -> None:
    records = designations(5)
    report = await suzhou.book.apply_records(records)
    assert [c.sequence for c in report.applied] == [1, 2, 3, 4, 5]
    again = await suzhou.book.apply_records(records)
    assert again.applied == []
    assert again.skipped == {"already-applied": 5}
    assert sequences(suzhou.changelog.changes) == [1, 2, 3, 4, 5]
    assert suzhou.store.own_sequence() == 5
    assert suzhou.store.offsets("credit.records.v1") == {0: 5}
    assert suzhou.store.offsets("credit.list-changes.v1") == {0: 5}


async def test_removal_publishes_a_tombstone_and_keeps_the_removed_entry(suzhou: Node) -> None:
    [record] = designations(1)
    await suzhou.book.apply_records([record])
    repair = list_decision(
        organisation_key(0),
        action="REMOVE",
        removal_reason="REVOKED",
        decision_number="苏市监撤〔2024〕1号",
        designation="苏市监信〔2024〕0号",
    )
    report = await suzhou.book.apply_records([incoming(repair, offset=1)])
    [change] = report.applied
    assert change.action is ChangeAction.REMOVED
    assert suzhou.changelog.states[change.entry.entry_key] is None  # tombstone
    [held] = suzhou.store.entries_of_subject(organisation_key(0))
    assert (held.status, held.removal_reason) == (EntryStatus.REMOVED, RemovalReason.REVOKED)


async def test_a_refusal_is_recorded_once_per_record_version(wuxi: Node) -> None:
    record = list_decision(
        organisation_key(1),
        city=WUXI,
        action="REPAIR",
        decision_number="锡信修〔2024〕1号",
        designation="苏市监信〔2024〕1号",
    )
    first = await wuxi.book.apply_records([incoming(record)])
    second = await wuxi.book.apply_records([incoming(record)])
    assert [r.code for r in first.refused] == ["unknown-entry"]
    assert second.refused == []
    assert len(wuxi.refusals.records) == 1


async def test_a_half_published_step_is_caught_up_before_anything_new(suzhou: Node) -> None:
    records = designations(5)
    suzhou.changelog.fail_after = 2
    with pytest.raises(ConnectionError):
        await suzhou.book.apply_records(records)
    assert suzhou.store.own_sequence() == 0  # nothing committed
    assert len(suzhou.changelog.changes) == 2  # but two changes reached the topic
    suzhou.changelog.fail_after = None
    report = await suzhou.book.apply_records(records)  # the redelivery
    assert sequences(suzhou.changelog.changes) == [1, 2, 3, 4, 5]
    assert [c.sequence for c in report.applied] == [3, 4, 5]
    assert report.skipped == {"already-applied": 2}


async def test_a_crash_between_publish_and_commit_is_repaired_at_start(
    suzhou: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = designations(4)
    await suzhou.book.apply_records(records[:2])

    def crash(_batch: object) -> None:
        raise SystemExit("killed")

    monkeypatch.setattr(suzhou.store, "commit", crash)
    with pytest.raises(SystemExit):
        await suzhou.book.apply_records(records[2:])
    monkeypatch.undo()
    suzhou.restart()
    assert suzhou.store.own_sequence() == 2
    assert await suzhou.book.catch_up() == 2
    again = await suzhou.book.apply_records(records)  # input replayed from the stored offsets
    assert again.applied == []
    assert suzhou.store.own_sequence() == 4
    assert sequences(suzhou.changelog.changes) == [1, 2, 3, 4]


async def test_a_lost_store_is_rebuilt_from_the_changelog(suzhou: Node, wuxi: Node) -> None:
    await suzhou.book.apply_records(designations(6))
    repair = list_decision(
        organisation_key(2),
        action="REMOVE",
        removal_reason="OBJECTION_UPHELD",
        decision_number="苏异〔2024〕2号",
        designation="苏市监信〔2024〕2号",
    )
    await suzhou.book.apply_records([incoming(repair, offset=6)])
    # A mirrored entry on the same node's topics is rebuilt too.
    await suzhou.book.apply_mirrored(WUXI, [(c, b"c") for c in await _designate_in(wuxi, 1)])
    before_own, before_wuxi = suzhou.digest(SUZHOU), suzhou.digest(WUXI)
    suzhou.restart(wipe=True)
    assert suzhou.store.is_empty()
    await suzhou.book.catch_up()
    assert suzhou.digest(SUZHOU) == before_own
    assert suzhou.digest(WUXI) == before_wuxi
    assert suzhou.store.own_sequence() == 7
    assert suzhou.store.peer_position(WUXI).sequence == 1
    replayed = [*designations(6), incoming(repair, offset=6)]
    assert (await suzhou.book.apply_records(replayed)).applied == []


async def _designate_in(node: Node, count: int) -> list[ListChange]:
    records = [
        incoming(
            list_decision(organisation_key(100 + n), city=node.city, decision_number=f"锡{n}"),
            offset=n,
        )
        for n in range(count)
    ]
    return (await node.book.apply_records(records)).applied


async def test_mirroring_applies_each_change_once_and_converges(suzhou: Node, wuxi: Node) -> None:
    await suzhou.book.apply_records(designations(10))
    items = [(c, suzhou.book.cursors.encode(c.sequence)) for c in suzhou.changelog.changes]
    first = await wuxi.book.apply_mirrored(SUZHOU, items[:6])
    # The stream broke after 6 and resumed from the 4th: the overlap is skipped.
    second = await wuxi.book.apply_mirrored(SUZHOU, items[3:])
    assert len(first.applied) + len(second.applied) == 10
    assert second.skipped == {"duplicate-sequence": 3}
    assert wuxi.digest(SUZHOU) == suzhou.digest(SUZHOU)
    assert wuxi.store.peer_position(SUZHOU).cursor == items[-1][1]
    # Mirrored changes are appended to Wuxi's own changelog, keyed by their issuer.
    assert sequences(wuxi.changelog.changes) == list(range(1, 11))


async def test_a_gap_is_counted_and_left_for_repair(suzhou: Node, wuxi: Node) -> None:
    await suzhou.book.apply_records(designations(3))
    changes = suzhou.changelog.changes
    report = await wuxi.book.apply_mirrored(SUZHOU, [(changes[0], b"1"), (changes[2], b"3")])
    assert report.gaps == 1


async def test_a_peer_changing_another_citys_entry_is_refused_and_audited(
    suzhou: Node, wuxi: Node, tmp_path: Path
) -> None:
    changzhou = Node(tmp_path / "changzhou", CHANGZHOU)
    await suzhou.book.apply_records(designations(1))
    [designated] = suzhou.changelog.changes
    await changzhou.book.apply_mirrored(SUZHOU, [(designated, b"s1")])
    # Wuxi streams a removal of Suzhou's entry to Changzhou.
    forged = ListChange(
        WUXI,
        1,
        ChangeAction.REMOVED,
        designated.entry.evolve(
            status=EntryStatus.REMOVED, removal_reason=RemovalReason.REVOKED, version=2
        ),
        designated.changed_at,
    )
    report = await changzhou.book.apply_mirrored(WUXI, [(forged, b"w1")])
    assert [r.code for r in report.refused] == ["not-issuing-city"]
    [(peer, _what, entry, refusal)] = changzhou.refusals.peers
    assert (peer, entry.entry_key, refusal.code) == (
        WUXI,
        designated.entry.entry_key,
        "not-issuing-city",
    )
    [held] = changzhou.store.entries_of_subject(organisation_key(0))
    assert held.status is EntryStatus.ACTIVE
    assert changzhou.store.peer_position(WUXI).cursor == b"w1"  # not asked for again


async def test_repair_brings_a_mirror_to_the_issuers_entries(suzhou: Node, wuxi: Node) -> None:
    await suzhou.book.apply_records(designations(8))
    items = [(c, b"") for c in suzhou.changelog.changes]
    await wuxi.book.apply_mirrored(SUZHOU, items[:5])  # missed the last three
    stray = items[0][0].entry.evolve(
        entry_key=f"{SUZHOU}/BLACK/{organisation_key(99)}/ffffffffffffffff"
    )
    batch = wuxi.store.batch()
    batch.put_entry(stray)  # e.g. restored from a backup of another timeline
    wuxi.store.commit(batch)
    upstream = list(suzhou.store.entries(f"{SUZHOU}/"))
    snapshot = {line.entry_key: line.version for line in wuxi.store.digest_lines(SUZHOU, None)}
    report = await wuxi.book.repair(SUZHOU, upstream, snapshot, adopt_cursor=b"digest-cursor")
    assert len(report.updated) == 3
    assert report.deleted == [stray.entry_key]
    assert wuxi.digest(SUZHOU) == suzhou.digest(SUZHOU)
    position = wuxi.store.peer_position(SUZHOU)
    assert (position.sequence, position.cursor) == (None, b"digest-cursor")
    assert wuxi.changelog.states[stray.entry_key] is None


async def test_repair_does_not_undo_a_change_that_arrived_meanwhile(
    suzhou: Node, wuxi: Node
) -> None:
    await suzhou.book.apply_records(designations(2))
    items = [(c, b"") for c in suzhou.changelog.changes]
    await wuxi.book.apply_mirrored(SUZHOU, items[:1])
    snapshot = {line.entry_key: line.version for line in wuxi.store.digest_lines(SUZHOU, None)}
    upstream = [items[0][0].entry]  # the peer's listing was taken before entry 2 existed
    await wuxi.book.apply_mirrored(SUZHOU, items[1:])  # entry 2 streams in meanwhile
    report = await wuxi.book.repair(SUZHOU, upstream, snapshot)
    assert report.deleted == []
    assert wuxi.store.entry_count(SUZHOU) == 2


async def test_changes_a_repair_overtook_still_reach_the_changelog_once(
    suzhou: Node, wuxi: Node
) -> None:
    await suzhou.book.apply_records(designations(4))
    items = [(c, b"") for c in suzhou.changelog.changes]
    await wuxi.book.apply_mirrored(SUZHOU, items[:1])
    snapshot = {line.entry_key: line.version for line in wuxi.store.digest_lines(SUZHOU, None)}
    await wuxi.book.repair(SUZHOU, list(suzhou.store.entries(f"{SUZHOU}/")), snapshot)
    states_before = dict(wuxi.changelog.states)
    report = await wuxi.book.apply_mirrored(SUZHOU, items)  # the stream catches up later
    assert report.applied == []
    assert [c.sequence for c in report.late] == [2, 3, 4]
    assert sequences(wuxi.changelog.changes) == [1, 2, 3, 4]
    assert wuxi.changelog.states == states_before  # no older state republished
    again = await wuxi.book.apply_mirrored(SUZHOU, items)
    assert again.late == []
    assert sequences(wuxi.changelog.changes) == [1, 2, 3, 4]


async def test_expiry_removes_ended_terms_as_the_issuer(suzhou: Node) -> None:
    suzhou.clock.now = suzhou.clock.now.replace(year=2024, month=6, day=20)
    record = list_decision(organisation_key(1), expires_at=date(2024, 6, 30))
    await suzhou.book.apply_records([incoming(record)])
    assert (await suzhou.book.expire_due()).applied == []
    suzhou.clock.advance(days=11)
    [change] = (await suzhou.book.expire_due()).applied
    assert (change.sequence, change.entry.removal_reason) == (2, RemovalReason.EXPIRED)
    assert (await suzhou.book.expire_due()).applied == []


async def test_retention_forgets_old_removed_entries_and_changes(suzhou: Node) -> None:
    await suzhou.book.apply_records(designations(3))
    remove = list_decision(
        organisation_key(0),
        action="REMOVE",
        removal_reason="REVOKED",
        decision_number="撤1",
        designation="苏市监信〔2024〕0号",
    )
    await suzhou.book.apply_records([incoming(remove, offset=3)])
    suzhou.clock.advance(days=400)
    await suzhou.book.apply_records(designations(1, start=3))
    forgotten = await suzhou.book.prune_retained(timedelta(days=365))
    assert forgotten == 1 + 4  # the removed entry, the four old changes
    assert suzhou.store.first_retained_sequence() == 5
    assert suzhou.store.entry_count(SUZHOU) == 3


async def test_reads_served_from_the_cache_follow_every_write(suzhou: Node) -> None:
    """The store caches decoded entries for checks; after each kind of write it answers what
    a fresh, uncached reader of the same RocksDB answers."""
    subjects = [organisation_key(n) for n in range(5)]

    def agrees() -> None:
        fresh = ListStore(suzhou.directory, SERDE, own_city=SUZHOU, read_only=True)
        try:
            for subject in subjects:
                assert suzhou.store.entries_of_subject(subject) == fresh.entries_of_subject(subject)
        finally:
            fresh.close()

    agrees()  # caches "no entries" for every subject
    await suzhou.book.apply_records(designations(3))
    agrees()
    remove = list_decision(
        organisation_key(0),
        action="REMOVE",
        removal_reason="REVOKED",
        decision_number="撤1",
        designation="苏市监信〔2024〕0号",
    )
    await suzhou.book.apply_records([incoming(remove, offset=3)])
    agrees()
    [held] = suzhou.store.entries_of_subject(organisation_key(0))
    assert held.status is EntryStatus.REMOVED
    suzhou.clock.advance(days=400)
    await suzhou.book.apply_records(designations(2, start=3))
    assert await suzhou.book.prune_retained(timedelta(days=365)) > 0
    agrees()
    assert suzhou.store.entries_of_subject(organisation_key(0)) == []
    assert len(suzhou.store.entries_of_subject(organisation_key(4))) == 1


async def test_followers_wake_on_a_new_own_change(suzhou: Node) -> None:
    waiter = asyncio.create_task(suzhou.book.wait_for_own_change(0, 5.0))
    await asyncio.sleep(0)
    await suzhou.book.apply_records(designations(1))
    assert await waiter
    assert not await suzhou.book.wait_for_own_change(1, 0.05)


def test_china_day_agrees_with_china_today_across_midnights_and_back() -> None:
    """The day a credit check keeps is china_today()'s, whichever way the clock moves."""
    day = ChinaDay()
    # 16:00 UTC is midnight in China: walk over three of them, then jump back and forth.
    start = datetime(2024, 12, 30, 15, 58, tzinfo=UTC)
    instants = [start + timedelta(minutes=m) for m in range(0, 3 * 24 * 60, 37)]
    instants += [start + timedelta(minutes=m) for m in (2, 1, 1, 3, -600, 2 * 24 * 60 + 2)]
    instants += [datetime(2024, 12, 31, 16, 0, tzinfo=UTC) - timedelta(microseconds=1)]
    for now in instants:
        assert day.of(now) == china_today(now), now
    naive = datetime(2024, 12, 31, 23, 59)
    assert day.of(naive) == china_today(naive)


async def test_the_digest_index_survives_a_restart_and_is_built_for_an_older_store(
    suzhou: Node,
) -> None:
    await suzhou.book.apply_records(designations(4))
    removal = list_decision(
        organisation_key(1),
        action="REMOVE",
        removal_reason="REVOKED",
        decision_number="苏市监撤〔2024〕1号",
        designation="苏市监信〔2024〕1号",
    )
    await suzhou.book.apply_records([incoming(removal, offset=9)])
    before = suzhou.digest(SUZHOU)
    lines = suzhou.index_lines()
    assert {status for _, _, status in lines} == {"ACTIVE", "REMOVED"}
    suzhou.restart()
    assert suzhou.index_lines() == lines
    assert suzhou.digest(SUZHOU) == before
    # A store written before the index had lines of its own: they are built at start.
    suzhou.store.close()
    drop_index_lines(suzhou.directory)
    suzhou.store = ListStore(suzhou.directory, SERDE, own_city=SUZHOU)
    assert suzhou.index_lines() == lines
    suzhou.restart()
    assert suzhou.index_lines() == lines
