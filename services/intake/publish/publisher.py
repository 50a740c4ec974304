"""Atomic publication of one batch of intake events: all of it or none of it.

Each batch (accepted records, rejections, quality figures) is one Kafka *transaction* of an
idempotent producer with ``acks=all``. That closes the crash window between "produced" and
"known to be produced": a batch a crashed process had not committed is aborted by the broker
the moment a successor starts with the same ``transactional.id`` (the zombie is fenced), and
readers with ``isolation_level=read_committed`` — the ledger rebuild among them — never see
it. So after ``kill -9`` the next run finds on Kafka exactly the batches that committed.

Events are appended to per-partition batches by hand (``create_batch``/``send_batch``),
partitioned with the Java client's murmur2 partitioner, rather than one ``send()`` each:
per-message overhead in Python, not the broker, bounds intake throughput
(``python -m bench intake``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiokafka import AIOKafkaProducer

from services.common.kafka import make_producer
from services.common.logging import get_logger
from services.common.settings import Settings
from services.intake.publish.partitioning import partition_for

# A transaction holds one batch (seconds at most). If its producer dies, readers wait this
# long at most before the broker aborts it and read_committed readers move past it.
TRANSACTION_TIMEOUT_MS: Final = 20_000
ABORT_TIMEOUT_S: Final = 10.0


# Not frozen: built per record (services/intake/__init__.py).
@dataclass(slots=True)
class OutgoingEvent:
    """One encoded event for a catalogue topic (the node prefix is added when producing)."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    #: Already computed with the murmur2 partitioner (by a worker process), or None.
    partition: int | None = None


class PublishFailed(Exception):
    """The batch's transaction did not commit; none of its events is visible."""


def transactional_id(settings: Settings, writer: str) -> str:
    """One id per intake writer of a node: a restarted writer fences its predecessor."""
    return f"{settings.topic_prefix}{settings.city}-intake-{writer}"


class TransactionalPublisher:
    """Publishes batches of events, each in its own transaction.

    Example::

        publisher = TransactionalPublisher(settings, writer="import")
        await publisher.start()          # fences and aborts a crashed predecessor's batch
        await publisher.publish(events)  # raises PublishFailed: nothing of it is visible
        await publisher.stop()
    """

    def __init__(self, settings: Settings, *, writer: str, **producer_options: Any) -> None:
        self._settings = settings
        self._transactional_id = transactional_id(settings, writer)
        self._options = producer_options
        self._producer: AIOKafkaProducer | None = None
        self._partitions: dict[str, list[int]] = {}
        self._log = get_logger(component="publisher", transactional_id=self._transactional_id)

    @property
    def transactional_id(self) -> str:
        return self._transactional_id

    async def start(self) -> None:
        producer = make_producer(
            self._settings,
            client_id="intake",
            transactional_id=self._transactional_id,
            transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
            **self._options,
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def restart(self) -> None:
        """A fresh producer after a failure: its start fences the old one's epoch."""
        with contextlib.suppress(Exception):
            await self.stop()
        self._partitions.clear()
        await self.start()

    async def partition_count(self, topic: str) -> int:
        """Partitions of a catalogue topic, as this producer's metadata has them."""
        if self._producer is None:
            raise PublishFailed("the publisher is not started")
        return len(await self._partitions_of(self._producer, self._settings.topic(topic)))

    async def _partitions_of(self, producer: AIOKafkaProducer, topic: str) -> list[int]:
        partitions = self._partitions.get(topic)
        if partitions is None:
            partitions = sorted(await producer.partitions_for(topic))
            self._partitions[topic] = partitions
        return partitions

    async def publish(self, events: Sequence[OutgoingEvent]) -> None:
        """Produce every event and commit, or abort and raise :class:`PublishFailed`."""
        if not events:
            return
        producer = self._producer
        if producer is None:
            raise PublishFailed("the publisher is not started")
        try:
            await producer.begin_transaction()
        except Exception as exc:
            raise PublishFailed(f"cannot begin a transaction: {exc!r}") from exc
        try:
            futures: list[asyncio.Future[Any]] = []
            batches: dict[tuple[str, int], Any] = {}
            topics: dict[str, str] = {}
            for event in events:
                topic = topics.get(event.topic) or topics.setdefault(
                    event.topic, self._settings.topic(event.topic)
                )
                partition = event.partition
                if partition is None:
                    partitions = await self._partitions_of(producer, topic)
                    partition = partitions[partition_for(event.key, len(partitions))]
                batch = batches.get((topic, partition))
                if batch is None:
                    batch = batches[(topic, partition)] = producer.create_batch()
                appended = batch.append(
                    key=event.key, value=event.value, timestamp=None, headers=event.headers
                )
                if appended is None:
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = batches[(topic, partition)] = producer.create_batch()
                    batch.append(
                        key=event.key, value=event.value, timestamp=None, headers=event.headers
                    )
            for (topic, partition), batch in batches.items():
                if batch.record_count():
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
            await asyncio.gather(*futures)
            await producer.commit_transaction()
        except asyncio.CancelledError:
            await self._abort(producer)
            raise
        except Exception as exc:
            await self._abort(producer)
            raise PublishFailed(f"transaction of {len(events)} events failed: {exc!r}") from exc

    async def _abort(self, producer: AIOKafkaProducer) -> None:
        """Abort the open transaction; if even that fails, the caller restarts the producer,
        whose start fences this one and makes the broker abort the transaction."""
        try:
            await asyncio.wait_for(producer.abort_transaction(), ABORT_TIMEOUT_S)
        except Exception as exc:  # the broker may be unreachable: restart() settles it
            self._log.warning("abort_failed", error=repr(exc))
