"""The list book: the one writer of a node's list state.

Every change of state — a list decision of this city, the calendar's expiry, a change
streamed by a peer, a repair after a digest mismatch, the catch-up at start — goes through
:class:`ListBook` under one lock, in three steps:

1. decide (``decisions.py``) against the store plus the step's own earlier writes;
2. publish what changed to Kafka and wait for the broker (``acks=all``): the changes on
   ``credit.list-changes.v1`` are the node's changelog, the entries on ``credit.lists.v1``
   its compacted state;
3. commit the step to RocksDB in one batch, with the input positions that produced it
   (record offsets, a peer's cursor, changelog offsets).

A crash between 2 and 3 leaves changes on the changelog the store does not have:
:meth:`ListBook.catch_up` applies them at the next start, before anything new is decided, so
the issuer's sequence has no gap and no duplicate, and the replayed input finds its records
already applied. Peers are only ever served changes that are both on the changelog and in
the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from services.common.clock import china_today
from services.lists.cursor import CursorCodec
from services.lists.decisions import (
    ActsFor,
    Applied,
    Refused,
    Skipped,
    check_mirrored,
    check_repair,
    decide_record,
    expire,
    same_department,
)
from services.lists.model import SOURCE_RECORD_VERSION, ListChange, ListEntry
from services.lists.store import ListStore, PeerPosition, StoreBatch, utc_now

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class IncomingRecord:
    """One CreditRecord read from ``credit.records.v1`` and where it was read."""

    record: Mapping[str, Any]
    topic: str
    partition: int
    offset: int
    event_id: str
    #: The message value as read, kept for the rejected-records topic.
    raw: bytes = b""


@dataclass(frozen=True, slots=True)
class ChangelogItem:
    """A change read back from this node's ``credit.list-changes.v1``."""

    partition: int
    offset: int
    change: ListChange | None


class ChangeSink(Protocol):
    """Where a step publishes before it commits (Kafka in a node, a list in unit tests).

    Example::

        class MemorySink:
            def __init__(self) -> None:
                self.changes: list[ListChange] = []
            async def publish(self, changes, *, without_state=frozenset()):
                self.changes.extend(changes)
                return {0: len(self.changes)} if changes else {}
            async def publish_states(self, entries, deleted):
                pass
    """

    async def publish(
        self, changes: Sequence[ListChange], *, without_state: frozenset[str] = frozenset()
    ) -> Mapping[int, int]:
        """Publish changes, in order, and their entry states (except for the change ids in
        ``without_state``); return the next changelog offset per partition."""
        ...

    async def publish_states(self, entries: Sequence[ListEntry], deleted: Sequence[str]) -> None:
        """Publish entry states (tombstones for removed and ``deleted`` keys) only."""
        ...


class RefusalSink(Protocol):
    """Where refusals go: the rejected-records topic and the audit chain in a node."""

    async def record_refused(self, incoming: IncomingRecord, refusal: Refused) -> None: ...

    async def peer_refused(
        self, peer_code: str, what: str, entry: ListEntry, refusal: Refused
    ) -> None: ...


class ChangelogSource(Protocol):
    """Reads this node's own Kafka topics back, for :meth:`ListBook.catch_up`."""

    def read_changes(self, from_offsets: Mapping[int, int]) -> AsyncIterator[ChangelogItem]: ...

    def read_states(self) -> AsyncIterator[ListEntry]: ...


@dataclass(slots=True)
class StepReport:
    """What one step did; counters feed logs, metrics and tests."""

    applied: list[ListChange] = field(default_factory=list)
    #: Mirrored changes whose entry a repair had already brought here: appended to this
    #: node's changelog (so it holds each of the issuer's changes once) but not applied.
    late: list[ListChange] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    refused: list[Refused] = field(default_factory=list)
    gaps: int = 0

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


@dataclass(slots=True)
class RepairReport:
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)


class BookView:
    """What the peer-facing servicers read of a node's lists: the store, the cursors, the
    mirrors' sync times, and a wait for the next own change. :class:`ListBook` is this and
    the single writer."""

    def __init__(
        self, store: ListStore, *, own_city: str, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self.store = store
        self.own_city = own_city
        self._clock = clock
        self._own_changed = asyncio.Condition()
        self.cursors = CursorCodec(own_city, store.cursor_secret())
        # When each peer's mirror last applied something or heard it was caught up
        # (set through _mark_synced).
        self.synced_at: dict[str, datetime] = {}
        #: Moves on whenever an entry of ``synced_at`` does (readers key caches on it).
        self.synced_moves = 0
        self._stored_sync: dict[str, tuple[int, datetime | None]] = {}

    def now(self) -> datetime:
        return self._clock()

    def _mark_synced(self, peer_code: str, now: datetime) -> None:
        self.synced_at[peer_code] = now
        self.synced_moves += 1

    def peer_synced_at(self, peer_code: str) -> datetime | None:
        synced = self.synced_at.get(peer_code)
        if synced is not None:
            return synced
        # Not synced since this process started: what the store says, read again only after
        # a commit (every credit check asks, also about peers that never answered).
        generation, stored = self._stored_sync.get(peer_code, (-1, None))
        if generation != self.store.generation:
            stored = self.store.peer_position(peer_code).synced_at
            self._stored_sync[peer_code] = (self.store.generation, stored)
        return stored

    async def _notify_own(self) -> None:
        async with self._own_changed:
            self._own_changed.notify_all()

    async def wait_for_own_change(self, after_sequence: int, seconds: float) -> bool:
        """Wait until the own sequence passes ``after_sequence``; False after ``seconds``."""
        async with self._own_changed:
            try:
                async with asyncio.timeout(seconds):
                    await self._own_changed.wait_for(
                        lambda: self.store.own_sequence() > after_sequence
                    )
            except TimeoutError:
                return False
        return True


class ListBook(BookView):
    """Single writer of one node's lists (see the module docstring)."""

    def __init__(
        self,
        store: ListStore,
        sink: ChangeSink,
        refusals: RefusalSink,
        changelog: ChangelogSource,
        *,
        own_city: str,
        changelog_topic: str,
        clock: Callable[[], datetime] = utc_now,
        acts_for: ActsFor = same_department,
    ) -> None:
        super().__init__(store, own_city=own_city, clock=clock)
        self._acts_for = acts_for
        self._sink = sink
        self._refusals = refusals
        self._changelog = changelog
        # Set when a publish failed half-way: the changelog may hold changes the store lacks,
        # so the next step first catches up (as after a crash) instead of deciding again.
        self._uncertain = False
        self._changelog_topic = changelog_topic
        self._lock = asyncio.Lock()
        #: Total changes applied from each peer since start (tests check "nothing twice").
        self.mirrored_applied: dict[str, int] = {}

    # --- own changes ----------------------------------------------------------------------

    def _stage_own(self, batch: StoreBatch, applied: Applied, now: datetime) -> ListChange:
        change = ListChange(
            issuing_city=self.own_city,
            sequence=batch.next_sequence(),
            action=applied.action,
            entry=applied.entry,
            changed_at=now,
        )
        batch.put_entry(change.entry)
        batch.put_own_change(change, self.store.encode_change(change))
        return change

    async def _publish_and_commit(
        self,
        batch: StoreBatch,
        changes: Sequence[ListChange],
        without_state: frozenset[str] = frozenset(),
    ) -> None:
        if changes:
            try:
                offsets = await self._sink.publish(changes, without_state=without_state)
            except BaseException:
                self._uncertain = True
                raise
            for partition, next_offset in offsets.items():
                batch.set_offset(self._changelog_topic, partition, next_offset)
        self.store.commit(batch)

    async def _settle(self) -> None:
        """Under the lock, before a step: recover from an earlier half-published step."""
        if self._uncertain:
            await self._catch_up_locked()
            self._uncertain = False

    async def apply_records(self, records: Sequence[IncomingRecord]) -> StepReport:
        """Apply a batch of this node's credit records (list decisions; others are skipped)."""
        report = StepReport()
        async with self._lock:
            await self._settle()
            batch = self.store.batch()
            now = self.now()
            refused: list[tuple[IncomingRecord, Refused]] = []
            for incoming in records:
                record = incoming.record
                record_id = str(record.get("record_id", ""))
                outcome = decide_record(
                    record,
                    own_city=self.own_city,
                    lookup=batch,
                    applied_version=batch.applied_version(record_id) if record_id else None,
                    now=now,
                    acts_for=self._acts_for,
                )
                if isinstance(outcome, Applied):
                    report.applied.append(self._stage_own(batch, outcome, now))
                elif isinstance(outcome, Refused):
                    report.refused.append(outcome)
                    refused.append((incoming, outcome))
                else:
                    report.skip(outcome.reason)
                if record_id and not (
                    isinstance(outcome, Skipped) and outcome.reason == "not-a-list-decision"
                ):
                    batch.mark_applied(record_id, int(record["version"]))
                batch.set_offset(incoming.topic, incoming.partition, incoming.offset + 1)
            # Refusals are recorded before the commit: after a crash they are recorded again
            # (at least once) rather than lost.
            for incoming, refusal in refused:
                await self._refusals.record_refused(incoming, refusal)
                log.warning(
                    "list_decision_refused",
                    record_id=incoming.record.get("record_id"),
                    ce_id=incoming.event_id,
                    code=refusal.code,
                    reason=refusal.message,
                )
            await self._publish_and_commit(batch, report.applied)
        if report.applied:
            await self._notify_own()
        return report

    async def expire_due(self) -> StepReport:
        """Remove own entries whose term ended (reason EXPIRED)."""
        report = StepReport()
        async with self._lock:
            await self._settle()
            now = self.now()
            today = china_today(now)
            batch = self.store.batch()
            for entry in self.store.due_for_expiry(today):
                applied = expire(entry, today=today, now=now)
                if applied is not None:
                    report.applied.append(self._stage_own(batch, applied, now))
            await self._publish_and_commit(batch, report.applied)
        if report.applied:
            await self._notify_own()
        return report

    async def prune_retained(self, retention: timedelta) -> int:
        """Forget removed entries and own changes older than ``retention``.

        Every node applies the same rule to the entries it holds, so issuer and mirrors keep
        the same removed entries; a mirror that prunes later differs only until the next
        reconciliation. Peers whose cursor is older than the oldest kept change get
        OUT_OF_RANGE and repair.
        """
        async with self._lock:
            cutoff = self.now() - retention
            batch = self.store.batch()
            removed = self.store.removed_before(cutoff)
            for entry in removed:
                batch.delete_entry(entry)
            old = self.store.changes_before(cutoff)
            for sequence in old:
                batch.drop_own_change(sequence)
            self.store.commit(batch)
        return len(removed) + len(old)

    # --- mirrored changes -------------------------------------------------------------------

    async def apply_mirrored(
        self, peer_code: str, items: Sequence[tuple[ListChange, bytes]]
    ) -> StepReport:
        """Apply changes streamed by ``peer_code``, each with the cursor that follows it."""
        report = StepReport()
        if not items:
            return report
        async with self._lock:
            await self._settle()
            batch = self.store.batch()
            now = self.now()
            position = batch.peer_position(peer_code)
            last = position.sequence
            cursor = position.cursor
            refused: list[tuple[ListChange, Refused]] = []
            logged: list[ListChange] = []  # what goes on this node's changelog, in order
            for change, next_cursor in items:
                outcome = check_mirrored(
                    change,
                    peer_code=peer_code,
                    held=batch.entry(change.entry.entry_key),
                    last_sequence=last,
                )
                if isinstance(outcome, Applied):
                    if last is not None and change.sequence > last + 1:
                        report.gaps += change.sequence - last - 1
                    batch.put_entry(change.entry)
                    report.applied.append(change)
                    logged.append(change)
                elif isinstance(outcome, Refused):
                    report.refused.append(outcome)
                    refused.append((change, outcome))
                elif outcome.reason == "stale-version" and (last is None or change.sequence > last):
                    report.late.append(change)
                    logged.append(change)
                else:
                    report.skip(outcome.reason)
                # A refused change is not applied, and not asked for again either (the cursor
                # moves past it); its sequence counts only if it is the next one, so a forged
                # far-ahead number cannot make the peer's real changes look like repeats.
                if isinstance(outcome, Refused):
                    if last is not None and change.sequence == last + 1:
                        last = change.sequence
                elif last is None or change.sequence > last:
                    last = change.sequence
                cursor = next_cursor
            for change, refusal in refused:
                await self._refusals.peer_refused(
                    peer_code, f"change {change.change_id}", change.entry, refusal
                )
                log.warning(
                    "peer_change_refused",
                    peer=peer_code,
                    change_id=change.change_id,
                    entry_key=change.entry.entry_key,
                    code=refusal.code,
                )
            batch.set_peer_position(peer_code, PeerPosition(last, cursor, now))
            await self._publish_and_commit(
                batch, logged, frozenset(c.change_id for c in report.late)
            )
            self._mark_synced(peer_code, now)
            self.mirrored_applied[peer_code] = self.mirrored_applied.get(peer_code, 0) + len(
                report.applied
            )
        if report.gaps:
            log.warning("peer_change_gap", peer=peer_code, missing=report.gaps)
        return report

    def mark_caught_up(self, peer_code: str) -> None:
        self._mark_synced(peer_code, self.now())

    async def repair(
        self,
        peer_code: str,
        upstream: Sequence[ListEntry],
        local_snapshot: Mapping[str, int],
        *,
        adopt_cursor: bytes | None = None,
    ) -> RepairReport:
        """Bring this node's copy of some of ``peer_code``'s buckets to the peer's entries.

        ``upstream`` are the peer's entries of the buckets that differed (``ListEntries``);
        ``local_snapshot`` maps the entry keys this node held in those buckets when the
        digests were compared to their versions. A local entry the peer no longer has is
        deleted only if it is still the version of the snapshot, so a change that streamed
        in meanwhile is not undone. ``adopt_cursor`` (after the stream was refused) becomes
        the peer's resume position.
        """
        report = RepairReport()
        async with self._lock:
            await self._settle()
            batch = self.store.batch()
            changed: list[ListEntry] = []
            deleted: list[str] = []
            for entry in upstream:
                outcome = check_repair(
                    entry, peer_code=peer_code, held=batch.entry(entry.entry_key)
                )
                if isinstance(outcome, Applied):
                    batch.put_entry(entry)
                    changed.append(entry)
                    report.updated.append(entry.entry_key)
                elif isinstance(outcome, Refused):
                    report.refused.append(outcome)
                    await self._refusals.peer_refused(peer_code, "listed entry", entry, outcome)
            upstream_keys = {entry.entry_key for entry in upstream}
            for key, version in local_snapshot.items():
                held = batch.entry(key)
                if key not in upstream_keys and held is not None and held.version == version:
                    batch.delete_entry(held)
                    deleted.append(key)
                    report.deleted.append(key)
            if adopt_cursor is not None:
                batch.set_peer_position(peer_code, PeerPosition(None, adopt_cursor, self.now()))
            if changed or deleted:
                await self._sink.publish_states(changed, deleted)
            self.store.commit(batch)
        if report.updated or report.deleted:
            log.info(
                "mirror_repaired",
                peer=peer_code,
                updated=len(report.updated),
                deleted=len(report.deleted),
            )
        return report

    # --- start-up -------------------------------------------------------------------------

    async def catch_up(self) -> int:
        """Apply what this node's changelog has and its store lacks; before serving anything.

        An empty store (new node, or a lost disk) first loads the compacted entry states,
        then replays every retained change.
        """
        async with self._lock:
            applied = await self._catch_up_locked()
            self._uncertain = False
        if applied:
            log.info("changelog_caught_up", changes=applied)
            await self._notify_own()
        return applied

    async def _catch_up_locked(self, batch_size: int = 1000) -> int:
        source = self._changelog
        applied = 0
        if self.store.is_empty():
            batch = self.store.batch()
            async for entry in source.read_states():
                batch.put_entry(entry)
            self.store.commit(batch)
        batch = self.store.batch()
        republish: set[str] = set()
        pending = 0
        async for item in source.read_changes(self.store.offsets(self._changelog_topic)):
            if item.change is not None and self._catch_up_change(batch, item.change):
                republish.add(item.change.entry.entry_key)
                applied += 1
            batch.set_offset(self._changelog_topic, item.partition, item.offset + 1)
            pending += 1
            if pending >= batch_size:
                await self._commit_caught_up(batch, republish)
                batch, republish, pending = self.store.batch(), set(), 0
        await self._commit_caught_up(batch, republish)
        return applied

    async def _commit_caught_up(self, batch: StoreBatch, republish: set[str]) -> None:
        # The crash may have come between the change and its entry state: publish the state
        # the entry has now (not the change's, which may be older than a repair's).
        entries = [entry for key in sorted(republish) if (entry := batch.entry(key)) is not None]
        if entries:
            await self._sink.publish_states(entries, [])
        self.store.commit(batch)

    def _catch_up_change(self, batch: StoreBatch, change: ListChange) -> bool:
        entry = change.entry
        if change.issuing_city == self.own_city:
            if change.sequence < batch.next_sequence():
                return False
            held = batch.entry(entry.entry_key)
            # A rebuilt store loaded newer states from credit.lists.v1 first; keep them.
            if held is None or entry.version >= held.version:
                batch.put_entry(entry)
            batch.put_own_change(change, self.store.encode_change(change))
            version = entry.attributes.get(SOURCE_RECORD_VERSION)
            if entry.source_record_id and version and version.isdigit():
                batch.mark_applied(entry.source_record_id, int(version))
            return True
        position = batch.peer_position(change.issuing_city)
        if position.sequence is not None and change.sequence <= position.sequence:
            return False
        held = batch.entry(entry.entry_key)
        if held is None or entry.version > held.version:
            batch.put_entry(entry)
        # The stored cursor stays behind this change; the stream re-sends what follows it and
        # the sequence check skips what is already here.
        batch.set_peer_position(
            change.issuing_city,
            PeerPosition(change.sequence, position.cursor, position.synced_at),
        )
        return True
