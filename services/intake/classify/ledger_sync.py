"""Builds and refreshes the :class:`~services.intake.classify.ledger.Ledger` from Kafka.

The follower reads ``credit.records.v1``, ``credit.records.rejected.v1`` and
``quality.disclosure.v1`` with ``isolation_level=read_committed`` from where it stopped up to
the *last stable offset* of every partition at the moment of the call. Started after the
writer's transactional producer (which aborts a crashed predecessor's open batch), a catch-up
therefore sees every batch that ever committed, and none that did not.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import date
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from services.common.avro import AvroSerde, SerdeError
from services.common.kafka import make_consumer
from services.common.logging import get_logger
from services.common.settings import Settings
from services.intake.classify.ledger import Ledger, RejectionState, record_state_from_event
from services.intake.encode.events import QUALITY_TOPIC, RECORDS_TOPIC, REJECTED_TOPIC
from services.intake.read import files, grpc_codec
from services.intake.validate.validation import identify

CATCH_UP_STALL_S: Final = 60.0


def rejection_state_from_event(record: Mapping[str, Any]) -> RejectionState:
    """The view of a decoded ``RejectedRecord``; the decision date is read from the payload."""
    payload = bytes(record["payload"])
    encoding = str(record["payload_encoding"])
    if encoding.startswith("application/x-protobuf"):
        submission = grpc_codec.submission_from_payload(payload)
    else:
        submission = files.payload_submission(payload, encoding)
    identity = identify(submission, str(record["city_code"])) if submission else None
    decision_date: date | None = identity.decision_date if identity else None
    return RejectionState(
        rejection_id=str(record["rejection_id"]),
        department_code=str(record["department_code"]),
        department_name=record.get("department_name"),
        record_id=record.get("record_id"),
        category=identity.category if identity else None,
        decision_number=identity.decision_number if identity else None,
        decision_date=decision_date,
    )


class LedgerFollower:
    """Keeps a ledger in step with the topics; :meth:`catch_up` is cheap when nothing is new.

    Example::

        follower = LedgerFollower(settings, serde, ledger)
        await follower.start()
        await follower.catch_up()      # everything committed so far is in the ledger
        await follower.stop()
    """

    def __init__(self, settings: Settings, serde: AvroSerde, ledger: Ledger) -> None:
        self._settings = settings
        self._serde = serde
        self.ledger = ledger
        self._consumer: AIOKafkaConsumer | None = None
        self._topics = {
            settings.topic(RECORDS_TOPIC): self._apply_record,
            settings.topic(REJECTED_TOPIC): self._apply_rejection,
            settings.topic(QUALITY_TOPIC): self._apply_quality,
        }
        self._log = get_logger(component="ledger")
        self.undecodable = 0

    async def start(self) -> None:
        counts = await partition_counts(self._settings, list(self._topics))
        partitions = [TopicPartition(t, p) for t in self._topics for p in range(counts[t])]
        consumer = make_consumer(self._settings, group_id=None, max_partition_fetch_bytes=4 << 20)
        await consumer.start()
        try:
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def catch_up(self) -> int:
        """Apply every committed event up to the current last stable offsets; the count."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("LedgerFollower.catch_up before start")
        partitions = list(consumer.assignment())
        targets = await consumer.end_offsets(partitions)
        applied = 0
        last_progress = time.monotonic()
        while True:
            behind = [tp for tp in partitions if await consumer.position(tp) < targets[tp]]
            if not behind:
                return applied
            batches = await consumer.getmany(*behind, timeout_ms=500, max_records=5000)
            if batches:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > CATCH_UP_STALL_S:
                raise TimeoutError(f"ledger catch-up made no progress on {behind}")
            for tp, messages in batches.items():
                apply = self._topics[tp.topic]
                for message in messages:
                    if message.value is None:
                        continue
                    try:
                        apply(self._serde.decode(message.value))
                    except (SerdeError, KeyError, TypeError, ValueError) as exc:
                        # Not ours to fix here, and never a reason to stop intake: counted and
                        # logged so the operator sees it.
                        self.undecodable += 1
                        self._log.error(
                            "ledger_event_unreadable",
                            topic=tp.topic,
                            partition=tp.partition,
                            offset=message.offset,
                            error=repr(exc),
                        )
                        continue
                    applied += 1

    def _apply_record(self, record: Mapping[str, Any]) -> None:
        self.ledger.apply_record(record_state_from_event(record))

    def _apply_rejection(self, record: Mapping[str, Any]) -> None:
        self.ledger.apply_rejection(rejection_state_from_event(record))

    def _apply_quality(self, record: Mapping[str, Any]) -> None:
        self.ledger.apply_declaration(
            str(record["department_code"]), record["decision_date"], record.get("expected_count")
        )
        name = record.get("department_name")
        if name:
            self.ledger.department_names.setdefault(str(record["department_code"]), str(name))


async def partition_counts(settings: Settings, topics: list[str]) -> dict[str, int]:
    """Partitions of each topic, from the broker (the catalogue may have drifted)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, client_id=f"{settings.city}-intake-ledger"
    )
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    counts: dict[str, int] = {}
    for entry in described:
        if entry["error_code"] != 0 or not entry["partitions"]:
            raise LookupError(
                f"topic {entry['topic']} is not available (error {entry['error_code']}); "
                "provision the node's topics first (make topics)"
            )
        counts[entry["topic"]] = len(entry["partitions"])
    return counts


async def load_ledger(settings: Settings, serde: AvroSerde) -> Ledger:
    """A ledger of everything committed so far (for one-shot commands)."""
    follower = LedgerFollower(settings, serde, Ledger())
    await follower.start()
    try:
        await follower.catch_up()
    finally:
        await follower.stop()
    return follower.ledger
