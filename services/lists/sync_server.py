"""``ListSyncService``: this city's own entries, for peers to mirror (contracts list_sync.proto).

Served from the store, never from Kafka: a peer only sees changes that are on the changelog
*and* committed here, in sequence order, each exactly once per stream. Authorization and the
audit record of each call are the common peer-call guard's (``services/common/peer/guard.py``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections.abc import AsyncIterator
from typing import Final

import grpc

from creditlink.peer.v1 import common_pb2, list_sync_pb2, list_sync_pb2_grpc
from services.common.list_digest import bucket_count_or_default, bucket_digests, bucket_of
from services.common.peer import deny
from services.common.settings import PeerLimits
from services.lists.book import BookView
from services.lists.convert import LIST_TYPE_FROM_PROTO, change_to_proto, entry_to_proto
from services.lists.cursor import InvalidCursor

STREAM_BATCH: Final = 500
DEFAULT_PAGE: Final = 500
MAX_PAGE: Final = 1000
#: A followed stream re-checks the log this often even without a notification.
FOLLOW_RECHECK_SECONDS: Final = 5.0


def _list_type_name(value: common_pb2.ListType.ValueType) -> str | None:
    """The list type's name, None for UNSPECIFIED (all types); ValueError if unknown."""
    if value == common_pb2.LIST_TYPE_UNSPECIFIED:
        return None
    list_type = LIST_TYPE_FROM_PROTO.get(value)
    if list_type is None:
        raise ValueError(f"unknown list type {value}")
    return str(list_type.value)


class ListSyncServicer(list_sync_pb2_grpc.ListSyncServiceServicer):
    """``follow_max_age`` (``PeerLimits.follow_stream_max_age``) ends a followed stream, after
    the cursor last sent, so no peer holds one for ever; the peer resumes from that cursor
    (``services/lists/mirror.py`` does at once)."""

    def __init__(
        self, book: BookView, *, follow_max_age: float = PeerLimits().follow_stream_max_age
    ) -> None:
        self._book = book
        self._follow_max_age = follow_max_age
        self._store = book.store
        self._city = book.own_city

    async def StreamListChanges(
        self,
        request: list_sync_pb2.StreamListChangesRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[list_sync_pb2.StreamListChangesResponse]:
        cursors = self._book.cursors
        try:
            position = cursors.decode(request.cursor)
        except InvalidCursor as exc:
            await deny(context, grpc.StatusCode.INVALID_ARGUMENT, "invalid-cursor", str(exc))
        own = self._store.own_sequence()
        if position > own:
            await deny(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "invalid-cursor",
                "the cursor is ahead of this city's change log",
            )
        first = self._store.first_retained_sequence()
        if position < own and (first is None or position + 1 < first):
            await deny(
                context,
                grpc.StatusCode.OUT_OF_RANGE,
                "cursor-expired",
                "changes after this cursor are no longer retained; repair with GetListDigest "
                "and ListEntries, then resume from the digest's cursor",
            )
        wanted = {LIST_TYPE_FROM_PROTO[t] for t in request.list_types if t in LIST_TYPE_FROM_PROTO}
        ends_at = time.monotonic() + self._follow_max_age
        sent = 0
        caught_up = False
        while True:
            changes = self._store.changes_after(position, STREAM_BATCH)
            for change in changes:
                position = change.sequence
                if wanted and change.entry.list_type not in wanted:
                    continue
                yield list_sync_pb2.StreamListChangesResponse(
                    change=change_to_proto(change), cursor=cursors.encode(position)
                )
                sent += 1
            if len(changes) == STREAM_BATCH:
                continue
            if not caught_up:
                caught_up = True
                yield list_sync_pb2.StreamListChangesResponse(
                    caught_up=list_sync_pb2.CaughtUp(changes_sent=sent),
                    cursor=cursors.encode(position),
                )
                if not request.follow:
                    return
            remaining = ends_at - time.monotonic()
            if remaining <= 0:
                return  # docs/design.md §3.3: the peer resumes from the last cursor it got
            await self._book.wait_for_own_change(position, min(FOLLOW_RECHECK_SECONDS, remaining))

    async def GetListDigest(
        self, request: list_sync_pb2.GetListDigestRequest, context: grpc.aio.ServicerContext
    ) -> list_sync_pb2.GetListDigestResponse:
        try:
            bucket_count = bucket_count_or_default(request.bucket_count)
            list_type = _list_type_name(request.list_type)
        except ValueError as exc:
            await deny(context, grpc.StatusCode.INVALID_ARGUMENT, "invalid-argument", str(exc))
        # No await between reading the lines and the sequence: they describe one state.
        lines = self._store.digest_lines(self._city, list_type)
        sequence = self._store.own_sequence()
        return list_sync_pb2.GetListDigestResponse(
            issuing_city=self._city,
            bucket_count=bucket_count,
            buckets=[
                list_sync_pb2.BucketDigest(
                    bucket=b.bucket, entry_count=b.entry_count, sha256=b.sha256
                )
                for b in bucket_digests(lines, bucket_count)
            ],
            cursor=self._book.cursors.encode(sequence),
        )

    async def ListEntries(
        self, request: list_sync_pb2.ListEntriesRequest, context: grpc.aio.ServicerContext
    ) -> list_sync_pb2.ListEntriesResponse:
        try:
            bucket_count = bucket_count_or_default(request.bucket_count)
            list_type = _list_type_name(request.list_type)
            wanted = set(request.buckets)
            if any(b >= bucket_count for b in wanted):
                raise ValueError(f"bucket numbers must be below bucket_count {bucket_count}")
            after = _read_page_token(
                request.page_token, _page_scope(list_type, bucket_count, wanted)
            )
        except ValueError as exc:
            await deny(context, grpc.StatusCode.INVALID_ARGUMENT, "invalid-argument", str(exc))
        size = min(request.page_size or DEFAULT_PAGE, MAX_PAGE)
        prefix = f"{self._city}/{list_type}/" if list_type else f"{self._city}/"
        entries: list[list_sync_pb2.ListEntry] = []
        more = False
        for key in self._store.entry_keys(prefix, after=after):
            if wanted and bucket_of(key, bucket_count) not in wanted:
                continue
            if len(entries) == size:
                more = True
                break
            entry = self._store.entry(key)
            if entry is not None:
                entries.append(entry_to_proto(entry))
        token = ""
        if more:
            token = _page_token(_page_scope(list_type, bucket_count, wanted), entries[-1].entry_key)
        return list_sync_pb2.ListEntriesResponse(entries=entries, next_page_token=token)


def _page_scope(list_type: str | None, bucket_count: int, buckets: set[int]) -> str:
    """A short hash of what a page token is valid for (same list type, count and buckets)."""
    text = f"{list_type}|{bucket_count}|{','.join(map(str, sorted(buckets)))}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _page_token(scope: str, last_key: str) -> str:
    raw = json.dumps({"s": scope, "k": last_key}, ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_page_token(token: str, scope: str) -> str | None:
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError):
        raise ValueError("page_token is not one this server issued") from None
    if not isinstance(data, dict) or not isinstance(data.get("k"), str):
        raise ValueError("page_token is not one this server issued")
    if data.get("s") != scope:
        raise ValueError("page_token belongs to a request with other list_type or buckets")
    return str(data["k"])
