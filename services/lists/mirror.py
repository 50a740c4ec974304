"""Mirroring one peer city's lists: follow its change stream, reconcile by digest, repair.

:class:`PeerMirror` runs two loops per peer:

* **follow** — ``StreamListChanges(cursor=<last applied>, follow=True)``. A reader task puts
  responses on a queue; the applier takes whatever has arrived (up to a batch) and applies it
  in one step of the book, which stores the cursor of the last change with the state. When
  the stream breaks, everything read before the break is applied, then the stream resumes
  from the stored cursor: no gap, and the book skips what it already has (no duplicate).
  A stream refused with OUT_OF_RANGE or INVALID_ARGUMENT (history gone, or a cursor the peer
  no longer recognises) is repaired from the digest and resumed from the digest's cursor.
* **reconcile** — on a schedule, ``GetListDigest`` against the local digest of that peer's
  entries; differing buckets are fetched with ``ListEntries`` and repaired. A node that was
  restored from an old backup, or missed changes another way, converges.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import grpc
import structlog

from creditlink.peer.v1 import list_sync_pb2, list_sync_pb2_grpc
from services.common.list_digest import bucket_digests, bucket_of
from services.common.observability import REPLICATION_LAG
from services.common.peer import PURPOSE_METADATA
from services.common.region import City
from services.lists.book import ListBook, RepairReport
from services.lists.convert import ContractError, change_from_proto, entry_from_proto
from services.lists.model import ListChange

APPLY_BATCH: Final = 500
QUEUE_SIZE: Final = 4 * APPLY_BATCH
DEFAULT_BUCKETS: Final = 256
PAGE_SIZE: Final = 1000
#: After this many scheduled rounds in which the stream was never at the digest's cursor,
#: repair anyway (a peer changing without pause would otherwise never be compared).
MAX_DEFERRED_ROUNDS: Final = 3
_END: Final = object()

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class Backoff:
    initial: float = 0.2
    maximum: float = 5.0

    def delay(self, attempt: int) -> float:
        base = min(self.maximum, self.initial * 2.0 ** max(0, attempt - 1))
        return base * (0.75 + random.random() / 2)  # noqa: S311 -- jitter, not a secret


class PeerMirror:
    """This node's mirror of one peer city (see the module docstring)."""

    def __init__(
        self,
        book: ListBook,
        peer: City,
        channel_factory: Callable[[], grpc.aio.Channel],
        *,
        own_city_key: str,
        reconcile_seconds: float,
        bucket_count: int = DEFAULT_BUCKETS,
        backoff: Backoff | None = None,
    ) -> None:
        self._book = book
        self.peer = peer
        self.peer_code = peer.admin_code
        self._channel_factory = channel_factory
        self._channel: grpc.aio.Channel | None = None
        self._own_key = own_city_key
        self._reconcile_seconds = reconcile_seconds
        self._bucket_count = bucket_count
        self._backoff = backoff or Backoff()
        self._reconcile_lock = asyncio.Lock()
        self._deferred_rounds = 0
        self.streaming = False
        self.connected_once = asyncio.Event()

    def _stub(self) -> list_sync_pb2_grpc.ListSyncServiceStub:
        if self._channel is None:
            self._channel = self._channel_factory()
        return list_sync_pb2_grpc.ListSyncServiceStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    # --- follow ---------------------------------------------------------------------------

    async def follow(self) -> None:
        """Follow the peer's stream forever, reconnecting with backoff."""
        failures = 0
        while True:
            try:
                await self._follow_once()
                failures = 0
            except grpc.aio.AioRpcError as exc:
                self.streaming = False
                code = exc.code()
                if code in (grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.INVALID_ARGUMENT):
                    log.warning("peer_stream_refused_cursor", peer=self.peer.key, code=code.name)
                    await self._repair_and_adopt()
                    continue
                failures += 1
                log.info(
                    "peer_stream_broken",
                    peer=self.peer.key,
                    code=code.name,
                    details=exc.details(),
                    attempt=failures,
                )
                await asyncio.sleep(self._backoff.delay(failures))
            except Exception as exc:  # e.g. the broker is away: the applied step was not committed
                self.streaming = False
                failures += 1
                log.warning(
                    "peer_stream_failed", peer=self.peer.key, error=f"{type(exc).__name__}: {exc}"
                )
                await asyncio.sleep(self._backoff.delay(failures))

    async def _repair_and_adopt(self) -> None:
        for attempt in range(1, 1000):
            try:
                await self.reconcile(adopt_cursor=True)
                return
            except grpc.aio.AioRpcError as exc:
                log.info("peer_repair_failed", peer=self.peer.key, code=exc.code().name)
                await asyncio.sleep(self._backoff.delay(attempt))

    async def _follow_once(self) -> None:
        position = self._book.store.peer_position(self.peer_code)
        call = self._stub().StreamListChanges(
            list_sync_pb2.StreamListChangesRequest(cursor=position.cursor, follow=True),
            metadata=((PURPOSE_METADATA, "LIST_SYNC"),),
        )
        queue: asyncio.Queue[object] = asyncio.Queue(QUEUE_SIZE)

        async def read() -> None:
            try:
                async for response in call:
                    await queue.put(response)
                await queue.put(_END)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # handed to the applier, which raises it in order
                await queue.put(exc)

        reader = asyncio.create_task(read(), name=f"lists-stream-{self.peer.key}")
        try:
            while True:
                items = [await queue.get()]
                while len(items) < APPLY_BATCH and not queue.empty():
                    items.append(queue.get_nowait())
                if await self._apply(items):
                    return
        finally:
            call.cancel()
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader

    async def _apply(self, items: list[object]) -> bool:
        """Apply what the reader queued; True at the end of the stream. Raises its error."""
        changes: list[tuple[ListChange, bytes]] = []
        end: object | None = None
        for item in items:
            if item is _END or isinstance(item, BaseException):
                end = item
                break
            assert isinstance(item, list_sync_pb2.StreamListChangesResponse)
            if item.HasField("change"):
                try:
                    changes.append((change_from_proto(item.change), item.cursor))
                except ContractError as exc:
                    await self._refuse_malformed(item.change, str(exc))
            else:
                await self._apply_changes(changes)
                changes = []
                self._book.mark_caught_up(self.peer_code)
                self.streaming = True
                self.connected_once.set()
        await self._apply_changes(changes)
        if isinstance(end, BaseException):
            raise end
        return end is _END

    async def _apply_changes(self, changes: list[tuple[ListChange, bytes]]) -> None:
        if not changes:
            return
        report = await self._book.apply_mirrored(self.peer_code, changes)
        if report.applied:
            newest = report.applied[-1].changed_at
            REPLICATION_LAG.labels(city=self._own_key, peer=self.peer.key).set(
                max(0.0, (datetime.now(UTC) - newest).total_seconds())
            )

    async def _refuse_malformed(self, message: list_sync_pb2.ListChange, reason: str) -> None:
        log.warning(
            "peer_change_malformed", peer=self.peer.key, change_id=message.change_id, error=reason
        )

    # --- reconcile ------------------------------------------------------------------------

    async def reconcile_forever(self) -> None:
        while True:
            await asyncio.sleep(self._reconcile_seconds)
            try:
                await self.reconcile(adopt_cursor=False)
            except grpc.aio.AioRpcError as exc:
                log.info("peer_reconcile_failed", peer=self.peer.key, code=exc.code().name)
            except Exception as exc:
                log.warning(
                    "peer_reconcile_failed",
                    peer=self.peer.key,
                    error=f"{type(exc).__name__}: {exc}",
                )

    async def reconcile(self, *, adopt_cursor: bool) -> RepairReport | None:
        """Compare digests with the peer and repair the buckets that differ.

        On the schedule (``adopt_cursor`` False) a comparison only counts when this node's
        stream position is the digest's cursor; while the stream is still delivering, the
        difference is expected and the round is deferred (at most ``MAX_DEFERRED_ROUNDS``).
        """
        async with self._reconcile_lock:
            stub = self._stub()
            metadata = ((PURPOSE_METADATA, "LIST_SYNC: reconcile"),)
            digest = await stub.GetListDigest(
                list_sync_pb2.GetListDigestRequest(bucket_count=self._bucket_count),
                metadata=metadata,
            )
            if digest.issuing_city != self.peer_code:
                log.error("peer_digest_wrong_city", peer=self.peer.key, claimed=digest.issuing_city)
                return None
            count = digest.bucket_count
            lines = self._book.store.digest_lines(self.peer_code, None)
            local = bucket_digests(lines, count)
            differing = {
                remote.bucket
                for remote in digest.buckets
                if remote.bucket < count and remote.sha256 != local[remote.bucket].sha256
            }
            at_cursor = self._book.store.peer_position(self.peer_code).cursor == digest.cursor
            if not adopt_cursor and differing and not at_cursor:
                # While the follower is (re)connecting it will deliver the difference itself;
                # only a follower that streams and still never reaches the digest's cursor
                # (a peer changing without pause) counts towards repairing anyway.
                if not self.streaming:
                    return None
                self._deferred_rounds += 1
                if self._deferred_rounds < MAX_DEFERRED_ROUNDS:
                    return None
            self._deferred_rounds = 0
            if not differing:
                if adopt_cursor:
                    return await self._book.repair(
                        self.peer_code, [], {}, adopt_cursor=digest.cursor
                    )
                return RepairReport()
            snapshot = {
                line.entry_key: line.version
                for line in lines
                if bucket_of(line.entry_key, count) in differing
            }
            upstream = []
            token = ""
            while True:
                page = await stub.ListEntries(
                    list_sync_pb2.ListEntriesRequest(
                        bucket_count=count,
                        buckets=sorted(differing),
                        page_size=PAGE_SIZE,
                        page_token=token,
                    ),
                    metadata=metadata,
                )
                for message in page.entries:
                    try:
                        upstream.append(entry_from_proto(message))
                    except ContractError as exc:
                        log.warning("peer_entry_malformed", peer=self.peer.key, error=str(exc))
                token = page.next_page_token
                if not token:
                    break
            return await self._book.repair(
                self.peer_code,
                upstream,
                snapshot,
                adopt_cursor=digest.cursor if adopt_cursor else None,
            )
