"""``import-scores``: load a file of local scores onto ``credit.scores.v1`` (tests and the demo;
in production the city's scoring engine publishes there itself).

File formats, chosen by suffix:

- ``.csv`` with a header row; ``.jsonl`` with one JSON object per line.
- Columns / keys: ``pseudonym`` *or* ``resident_id`` (pseudonymised here with the region key,
  never stored or logged), ``score``; optional ``model_version``, ``computed_at`` (RFC 3339
  with offset; default now), ``delete`` (``true`` publishes a tombstone: the score is
  withdrawn).

Rows that cannot be used are reported by line number and reason, never by content (a resident
ID must not reach a terminal or a log), and nothing is published unless every row is usable.
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from services.common.avro import AvroSerde
from services.common.cloudevents import build_headers, source_for
from services.common.kafka import EventPublisher, make_producer
from services.common.policy import is_valid_subject_key
from services.common.pseudonym import InvalidResidentId, pseudonym
from services.common.region import city_code
from services.common.settings import Settings
from services.common.topic_names import SCORES_TOPIC
from services.scores.scales import ScaleDefinition

SCORE_SCHEMA: Final = "creditlink.v1.ScoreEntry"
SCORE_EVENT: Final = "cn.creditlink.score.updated.v1"
SCORE_WITHDRAWN_EVENT: Final = "cn.creditlink.score.withdrawn.v1"
_BATCH = 500


@dataclass(frozen=True, slots=True)
class ImportProblem:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(frozen=True, slots=True)
class ScoreUpdate:
    """One row as it goes on the topic: a ScoreEntry, or a tombstone when ``entry`` is None."""

    pseudonym: str
    entry: dict[str, Any] | None


def _rows(path: Path) -> Iterator[tuple[int, Mapping[str, Any] | None]]:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                yield number, None
                continue
            yield number, value if isinstance(value, dict) else None
        return
    reader = csv.DictReader(text.splitlines())
    for number, row in enumerate(reader, start=2):
        yield number, row


def _computed_at(value: Any, now: datetime) -> datetime:
    if value in (None, ""):
        return now
    moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("computed_at needs a UTC offset")
    return moment.astimezone(UTC)


def parse_score_row(
    row: Mapping[str, Any], *, definition: ScaleDefinition, region_key: bytes, now: datetime
) -> ScoreUpdate:
    """One usable update from a row, or ValueError whose message never repeats the row."""
    raw_pseudonym = str(row.get("pseudonym") or "").strip()
    resident_id = str(row.get("resident_id") or "").strip()
    if raw_pseudonym and resident_id:
        raise ValueError("give pseudonym or resident_id, not both")
    if resident_id:
        try:
            person = pseudonym(resident_id, region_key)
        except InvalidResidentId:
            raise ValueError("resident_id is not a valid GB 11643 number") from None
    elif raw_pseudonym:
        person = raw_pseudonym.lower()
        if not is_valid_subject_key("N:" + person):
            raise ValueError("not a pseudonym (<division>.<key id>.<64 hex>)")
    else:
        raise ValueError("pseudonym or resident_id is required")
    if str(row.get("delete") or "").strip().lower() in ("true", "1", "yes"):
        return ScoreUpdate(person, None)
    try:
        score = float(row.get("score"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError("score is not a number") from None
    if not math.isfinite(score) or not definition.contains(score):
        raise ValueError(
            f"score is outside the scale {definition.min_score}..{definition.max_score}"
        )
    try:
        computed_at = _computed_at(row.get("computed_at"), now)
    except ValueError:
        raise ValueError("computed_at is not an RFC 3339 time with offset") from None
    model = str(row.get("model_version") or "").strip() or None
    return ScoreUpdate(
        person,
        {
            "pseudonym": person,
            "subject_key": "N:" + person,
            "city_code": definition.city_code,
            "scale_name": definition.scale_name,
            "score": score,
            "grade": definition.local_grade(score),
            "model_version": model,
            "computed_at": computed_at,
        },
    )


def read_score_file(
    path: Path, *, definition: ScaleDefinition, region_key: bytes, now: datetime | None = None
) -> tuple[list[ScoreUpdate], list[ImportProblem]]:
    moment = now or datetime.now(UTC)
    updates: list[ScoreUpdate] = []
    problems: list[ImportProblem] = []
    for number, row in _rows(path):
        if row is None:
            problems.append(ImportProblem(number, "not a JSON object"))
            continue
        try:
            updates.append(
                parse_score_row(row, definition=definition, region_key=region_key, now=moment)
            )
        except ValueError as exc:
            problems.append(ImportProblem(number, str(exc)))
    return updates, problems


async def publish_scores(settings: Settings, updates: list[ScoreUpdate]) -> int:
    """Produce every update (``acks=all``, idempotent) and wait for all acknowledgements."""
    producer = make_producer(settings, client_id="import-scores")
    await producer.start()
    try:
        publisher = EventPublisher(producer, AvroSerde(), settings, service="scores")
        topic = settings.topic(SCORES_TOPIC)
        source = source_for(city_code(settings), "scores")
        for first in range(0, len(updates), _BATCH):
            pending = []
            for update in updates[first : first + _BATCH]:
                if update.entry is None:
                    value: bytes | None = None
                    headers = build_headers(
                        event_type=SCORE_WITHDRAWN_EVENT,
                        source=source,
                        subject="N:" + update.pseudonym,
                        data_schema=None,
                    )
                else:
                    value, headers = publisher.encode(
                        SCORE_SCHEMA,
                        update.entry,
                        key="N:" + update.pseudonym,
                        event_type=SCORE_EVENT,
                    )
                pending.append(
                    await producer.send(
                        topic, value=value, key=update.pseudonym.encode(), headers=headers
                    )
                )
            await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return len(updates)
