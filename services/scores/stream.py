"""The score table: every resident's current local score, kept from ``credit.scores.v1``.

A faust-streaming app with a RocksDB table (``rocksdict``) whose changelog topic
(``<prefix>scores-pseudonym_to_score-changelog``, made by faust) lets it rebuild after a
restart or on a new machine. Next to the table, :class:`~services.scores.scales.ScorePopulation`
counts residents per score in memory; it is rebuilt from the table after every recovery
(before faust resumes the stream), and the agent updates both for each event.

One worker per city node: the distribution needs every resident's score, so the node must
own all partitions of the table (see docs/score-linking.md, "Scaling").

Module order follows the faust examples: logic, app, topics, tables, agents.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import faust
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from services.common.faust_codec import register_avro_codec
from services.common.logging import get_logger
from services.common.policy import is_valid_subject_key
from services.common.settings import Settings
from services.common.topic_names import SCORES_TOPIC
from services.scores.scales import ScaleDefinition, ScorePopulation

SCORES_PARTITIONS: Final = 6  # schemas/topics.yaml; the table is co-partitioned with it
TABLE_NAME: Final = "pseudonym_to_score"

# --- logic -------------------------------------------------------------------------------


class ScoreOutcome(StrEnum):
    STORED = "stored"
    REMOVED = "removed"
    UNCHANGED = "unchanged"
    REJECTED = "rejected"


def apply_score_event(
    scores: MutableMapping[str, float],
    population: ScorePopulation,
    key: str,
    entry: Mapping[str, Any] | None,
    *,
    definition: ScaleDefinition,
) -> tuple[ScoreOutcome, str]:
    """Apply one event of ``credit.scores.v1`` (``entry=None`` for a tombstone).

    Idempotent: a redelivered event leaves the same state. Returns the outcome and, for a
    rejection, the reason (the event is logged, not applied).
    """
    if not is_valid_subject_key("N:" + key):
        return ScoreOutcome.REJECTED, "key is not a 64-character lowercase hex pseudonym"
    old = scores.get(key)
    if entry is None:
        if old is None:
            return ScoreOutcome.UNCHANGED, ""
        del scores[key]
        population.replace(old, None)
        return ScoreOutcome.REMOVED, ""
    if entry.get("pseudonym") != key:
        return ScoreOutcome.REJECTED, "pseudonym differs from the key"
    if entry.get("city_code") != definition.city_code:
        return ScoreOutcome.REJECTED, f"city_code is not this city's ({definition.city_code})"
    score = entry.get("score")
    if not isinstance(score, float | int) or not math.isfinite(score):
        return ScoreOutcome.REJECTED, "score is not a finite number"
    if not definition.contains(float(score)):
        return ScoreOutcome.REJECTED, (
            f"score outside the scale ({definition.min_score}..{definition.max_score})"
        )
    new = float(score)
    if old == new:
        return ScoreOutcome.UNCHANGED, ""
    scores[key] = new
    population.replace(old, new)
    return ScoreOutcome.STORED, ""


# --- app, topics, tables, agents ---------------------------------------------------------


@dataclass
class ScoreStream:
    """The running faust app with its table, and the population counted beside it."""

    app: faust.App
    table: Any
    population: ScorePopulation
    settings: Settings | None = None

    def score_of(self, pseudonym: str) -> float | None:
        value = self.table.get(pseudonym)
        return None if value is None else float(value)

    def __len__(self) -> int:
        return sum(1 for _ in self.table)

    async def start(self) -> None:
        if self.settings is not None:
            await ensure_changelog(self.settings)
        await self.app.start()

    async def recovered(self) -> None:
        """Wait until the table is restored from its changelog and the agent runs."""
        tables: Any = self.app.tables  # faust's TableManagerT does not declare ``recovery``
        await tables.recovery.completed.wait()

    async def stop(self) -> None:
        await self.app.stop()


async def ensure_changelog(settings: Settings, *, within_s: float = 30.0) -> None:
    """Create the table's changelog topic ourselves and wait until the broker's metadata
    shows all its partitions.

    faust creates it at start-up and checks its partition count at once; on a KRaft broker
    the new topic's metadata can lag, faust then sees 0 partitions, raises
    PartitionsMismatch and the agent stays crashed (seen on a loaded 2-core machine).
    """
    name = f"{settings.topic_prefix}scores-{TABLE_NAME}-changelog"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        known = {t["topic"]: t for t in await admin.describe_topics([name])}
        if name not in known or known[name]["error_code"] != 0:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [
                        NewTopic(
                            name,
                            SCORES_PARTITIONS,
                            1,
                            topic_configs={"cleanup.policy": "compact"},
                        )
                    ]
                )
        deadline = asyncio.get_running_loop().time() + within_s
        while asyncio.get_running_loop().time() < deadline:
            found = {t["topic"]: t for t in await admin.describe_topics([name])}.get(name)
            if found and found["error_code"] == 0 and len(found["partitions"]) == SCORES_PARTITIONS:
                return
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


def build_score_stream(
    settings: Settings, definition: ScaleDefinition, population: ScorePopulation
) -> ScoreStream:
    log = get_logger(component="score-table")
    codec = register_avro_codec("ScoreEntry")

    datadir = settings.data_dir / "scores"
    datadir.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
    app = faust.App(
        f"{settings.topic_prefix}scores",
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="rocksdb://",
        datadir=str(datadir),
        topic_partitions=SCORES_PARTITIONS,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
    )

    scores_topic = app.topic(
        settings.topic(SCORES_TOPIC),
        key_type=str,
        value_type=None,
        key_serializer="raw",
        value_serializer=codec,
        partitions=SCORES_PARTITIONS,
    )

    pseudonym_to_score = app.Table(
        TABLE_NAME, partitions=SCORES_PARTITIONS, key_type=str, value_type=float
    )

    async def rebuild_population() -> None:
        population.rebuild(float(v) for v in pseudonym_to_score.values())
        log.info("score population rebuilt", residents=population.total)

    pseudonym_to_score.on_recover(rebuild_population)

    async def track_scores(stream: faust.StreamT[Any]) -> None:
        async for key, entry in stream.items():
            subject = key.decode() if isinstance(key, bytes) else str(key)
            outcome, reason = apply_score_event(
                pseudonym_to_score, population, subject, entry, definition=definition
            )
            if outcome is ScoreOutcome.REJECTED:
                log.error("score event rejected", subject_key=f"N:{subject}", reason=reason)

    app.agent(scores_topic, name=f"{settings.topic_prefix}track_scores")(track_scores)
    return ScoreStream(app=app, table=pseudonym_to_score, population=population, settings=settings)
