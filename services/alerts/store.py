"""The alerts node's local state in one RocksDB database (``rocksdict``), written in atomic
batches.

Key space (all keys UTF-8; values JSON):

=====================================  ===========================================================
``o/<topic>/<partition>``              next offset to read; input offsets move in the same batch as
                                       the state they produced, so a restart neither skips nor
                                       double-applies an event
``rec/<record_id>``                    highest version of a credit record seen (replays are no-ops)
``sub/<subject_key>``                  the rules' :class:`~services.alerts.rules.SubjectState`
``alert/<alert_id>``                   the alert held here (raised or received) and its status
``chg/<change_id>``                    every status change applied (UpdateAlertStatus idempotency)
``feed/<seq>``                         the regulators' feed behind SubscribeAlerts, in order
``due/<ack deadline ms>/<alert_id>``   unacknowledged alerts this node raised, by deadline (SLA)
``out/<city>/<alert_id>``              DeliverAlerts outbox: one entry per alert and target city
``undelivered/<city>/<alert_id>``     deliveries a peer refused, with its reasons
``hook/<webhook>/<event>``             webhook outbox
``dead/<webhook>/<event>``             webhook dead letters, with the reason (operators:
                                       ``python -m services.alerts dead-letters``)
``meta/epoch``                         random id of this database, part of every feed cursor
=====================================  ===========================================================

Everything here can be rebuilt from Kafka: the node's own alert and status topics restore
alerts, statuses and the feed (with a new epoch: old cursors then answer OUT_OF_RANGE), and
the input topics restore the rule state. See docs/alerts.md, "State and recovery".
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, cast

from rocksdict import AccessType, Options, Rdict, WriteBatch

FEED_PREFIX: Final = "feed/"


def _encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _decode(raw: bytes) -> Any:
    return json.loads(raw)


def feed_key(seq: int) -> str:
    return f"{FEED_PREFIX}{seq:016x}"


def due_key(deadline_ms: int, alert_id: str) -> str:
    return f"due/{deadline_ms:013d}/{alert_id}"


class Batch:
    """Writes applied together by :meth:`AlertStore.write`, with a view of its own writes."""

    def __init__(self, store: AlertStore) -> None:
        self._store = store
        self._writes: dict[str, Any] = {}  # key -> value, None = delete
        self.feed_seqs: list[int] = []
        self.outbox_touched = False
        self.hooks_touched = False

    def put(self, key: str, value: Any) -> None:
        self._writes[key] = value
        if key.startswith("out/"):
            self.outbox_touched = True
        elif key.startswith("hook/"):
            self.hooks_touched = True

    def delete(self, key: str) -> None:
        self._writes[key] = None

    def get(self, key: str) -> Any:
        """The value as it will be after this batch."""
        if key in self._writes:
            return self._writes[key]
        return self._store.get(key)

    def append_feed(self, entry: dict[str, Any]) -> int:
        seq = self._store.next_feed_seq()
        self.put(feed_key(seq), entry)
        self.feed_seqs.append(seq)
        return seq

    def set_offset(self, topic: str, partition: int, next_offset: int) -> None:
        key = f"o/{topic}/{partition}"
        current = self.get(key)
        if current is None or int(current) < next_offset:
            self.put(key, next_offset)

    @property
    def empty(self) -> bool:
        return not self._writes

    def items(self) -> Iterator[tuple[str, Any]]:
        return iter(self._writes.items())


class AlertStore:
    """Single-writer store of one alerts node. Not thread-safe; one event loop uses it."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        path.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        if read_only:
            self._db = Rdict(
                str(path),
                options,
                access_type=AccessType.secondary(str(path.parent / f"{path.name}.reader")),
            )
            self._db.try_catch_up_with_primary()
        else:
            self._db = Rdict(str(path), options)
        self.path = path
        epoch = self.get("meta/epoch")
        if epoch is None and not read_only:
            epoch = secrets.token_hex(8)
            self._db.put(b"meta/epoch", _encode(epoch))
        self.epoch: str = str(epoch or "")
        last = self.last_key(FEED_PREFIX)
        self._feed_seq = int(last[len(FEED_PREFIX) :], 16) if last else 0
        self.feed_changed = asyncio.Event()
        self.outbox_changed = asyncio.Event()
        self.hooks_changed = asyncio.Event()

    def close(self) -> None:
        self._db.close()

    # --- reads ----------------------------------------------------------------------------

    def get(self, key: str) -> Any:
        raw = self._db.get(key.encode("utf-8"))
        return None if raw is None else _decode(raw)

    def scan(
        self, prefix: str, *, after: str | None = None, limit: int | None = None
    ) -> Iterator[tuple[str, Any]]:
        """Entries whose key starts with ``prefix``, in key order, after key ``after``."""
        start = (after or prefix).encode("utf-8")
        count = 0
        for raw_key, raw_value in self._db.items(from_key=start):
            key = cast(bytes, raw_key).decode("utf-8")
            if not key.startswith(prefix):
                return
            if after is not None and key == after:
                continue
            yield key, _decode(raw_value)
            count += 1
            if limit is not None and count >= limit:
                return

    def last_key(self, prefix: str) -> str | None:
        end = (prefix[:-1] + chr(ord(prefix[-1]) + 1)).encode("utf-8")
        for raw_key in self._db.keys(from_key=end, backwards=True):
            key = cast(bytes, raw_key).decode("utf-8")
            if key.startswith(prefix):
                return key
            if key < prefix:
                return None
        return None

    def offset(self, topic: str, partition: int) -> int | None:
        value = self.get(f"o/{topic}/{partition}")
        return None if value is None else int(value)

    @property
    def feed_seq(self) -> int:
        """Sequence number of the newest feed entry (0 when empty)."""
        return self._feed_seq

    def first_feed_seq(self) -> int:
        for key, _ in self.scan(FEED_PREFIX, limit=1):
            return int(key[len(FEED_PREFIX) :], 16)
        return self._feed_seq + 1

    def feed_after(self, seq: int, limit: int = 500) -> list[tuple[int, dict[str, Any]]]:
        after = feed_key(seq) if seq > 0 else None
        return [
            (int(key[len(FEED_PREFIX) :], 16), value)
            for key, value in self.scan(FEED_PREFIX, after=after, limit=limit)
        ]

    # --- writes ---------------------------------------------------------------------------

    def batch(self) -> Batch:
        return Batch(self)

    def next_feed_seq(self) -> int:
        self._feed_seq += 1
        return self._feed_seq

    def write(self, batch: Batch) -> None:
        """Apply ``batch`` atomically (one RocksDB write batch) and wake whoever waits."""
        if batch.empty:
            return
        rocks = WriteBatch(raw_mode=True)
        for key, value in batch.items():
            if value is None:
                rocks.delete(key.encode("utf-8"))
            else:
                rocks.put(key.encode("utf-8"), _encode(value))
        self._db.write(rocks)
        if batch.feed_seqs:
            self.feed_changed.set()
            self.feed_changed = asyncio.Event()
        if batch.outbox_touched:
            self.outbox_changed.set()
        if batch.hooks_touched:
            self.hooks_changed.set()
