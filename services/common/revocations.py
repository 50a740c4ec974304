"""Revoked consent tokens: what every process that verifies consent must know, within seconds.

docs/trust.md, "Revocation". A home city revokes a token through its consent service
(``ConsentService.RevokeConsent``), which writes the revocation to the node's
``consent.revocations.v1`` before it answers. Inside a node, revocations travel over Kafka:
every process that verifies consent (lists, scores) follows that topic from the beginning into
a :class:`Revocations` set (:func:`follow_revocations`). Between cities they travel over the
peer contracts: each node's lists service follows every peer's
``ConsentService.StreamRevocations`` and writes what it receives to its own topic
(``services/lists/revocation_mirror.py``), so a peer's revocation reaches every local process
the same way as one made here.

A revocation matters only until the token expires; expired ones are dropped from the set (and
compaction keeps one record per token on the topic).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import structlog

from services.common.avro import AvroSerde
from services.common.kafka import EventPublisher, make_consumer
from services.common.settings import Settings
from services.common.topic_names import REVOCATIONS_TOPIC

SCHEMA: Final = "creditlink.v1.ConsentRevocation"
EVENT_TYPE: Final = "cn.creditlink.consent.revoked.v1"

log = structlog.get_logger("revocations")


@dataclass(frozen=True, slots=True)
class Revocation:
    token_id: str
    issuer_city: str
    revoked_at: datetime
    expires_at: datetime

    def to_record(self) -> dict[str, Any]:
        return {
            "token_id": self.token_id,
            "issuer_city": self.issuer_city,
            "revoked_at": self.revoked_at,
            "expires_at": self.expires_at,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Revocation:
        return cls(
            token_id=record["token_id"],
            issuer_city=record["issuer_city"],
            revoked_at=record["revoked_at"],
            expires_at=record["expires_at"],
        )


class Revocations:
    """The token ids revoked in the region, each until its token expires.

    Changes are numbered, so a stream can send what was added after what it has sent
    (:meth:`added_since`) and wait for the next one (:meth:`wait_for_more`).
    """

    def __init__(self) -> None:
        self._by_id: dict[str, Revocation] = {}
        self._log: list[Revocation] = []
        self._added = asyncio.Event()
        self.caught_up = asyncio.Event()

    def __contains__(self, token_id: object) -> bool:
        return token_id in self._by_id

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, token_id: str) -> Revocation | None:
        return self._by_id.get(token_id)

    def add(self, revocation: Revocation) -> bool:
        """Record ``revocation``; False when the token was already revoked (or has expired)."""
        if revocation.token_id in self._by_id or revocation.expires_at <= datetime.now(UTC):
            return False
        self._by_id[revocation.token_id] = revocation
        self._log.append(revocation)
        self._added.set()
        self._added = asyncio.Event()
        if len(self._log) % 1024 == 0:
            self._prune()
        return True

    def added_since(
        self, position: int, issuer_city: str | None = None
    ) -> tuple[int, list[Revocation]]:
        """The revocations added after ``position`` (optionally of one issuer, not expired),
        and the position to ask from next time."""
        now = datetime.now(UTC)
        fresh = [
            r
            for r in self._log[position:]
            if (issuer_city is None or r.issuer_city == issuer_city) and r.expires_at > now
        ]
        return len(self._log), fresh

    async def wait_for_more(self, seconds: float) -> None:
        """Return when something is added, or after ``seconds``."""
        added = self._added
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await added.wait()

    def _prune(self) -> None:
        now = datetime.now(UTC)
        self._by_id = {k: r for k, r in self._by_id.items() if r.expires_at > now}
        # Positions handed out stay valid: the log keeps its length, expired entries are
        # skipped by added_since.


async def publish_revocation(publisher: EventPublisher, revocation: Revocation) -> None:
    """Write ``revocation`` to the node's topic and wait for the broker's acknowledgement."""
    await publisher.publish(
        REVOCATIONS_TOPIC,
        SCHEMA,
        revocation.to_record(),
        key=revocation.token_id,
        event_type=EVENT_TYPE,
    )


async def follow_revocations(
    settings: Settings, serde: AvroSerde, revocations: Revocations
) -> None:
    """Fill ``revocations`` from the node's topic, from the beginning, for ever; sets
    ``revocations.caught_up`` once everything written before the start has been read."""
    consumer = make_consumer(settings, REVOCATIONS_TOPIC, group_id=None)
    await consumer.start()
    try:
        partitions = consumer.assignment()
        while not partitions:
            await asyncio.sleep(0.05)
            partitions = consumer.assignment()
        ends = await consumer.end_offsets(list(partitions))
        started = time.monotonic()
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            for messages in batches.values():
                for message in messages:
                    if message.value is None:
                        continue
                    try:
                        record = serde.decode(message.value)
                        revocations.add(Revocation.from_record(record))
                    except Exception as exc:  # a bad record must not stop enforcement
                        log.error(
                            "revocation_unreadable",
                            offset=message.offset,
                            error=f"{type(exc).__name__}: {exc}",
                        )
            if not revocations.caught_up.is_set() and await _reached(consumer, ends):
                revocations.caught_up.set()
                log.info(
                    "revocations_caught_up",
                    revoked=len(revocations),
                    seconds=round(time.monotonic() - started, 3),
                )
    finally:
        await consumer.stop()


async def _reached(consumer: Any, ends: dict[Any, int]) -> bool:
    for partition, end in ends.items():
        if await consumer.position(partition) < end:
            return False
    return True
