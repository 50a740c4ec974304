"""Wiring: one intake writer of a city node (settings, region key, Kafka, ledger, pipeline).

Start order matters for exactly-once: the transactional producer starts *first* — its
``InitProducerId`` fences a crashed predecessor with the same ``transactional.id`` and has
the broker abort that predecessor's open batch — and only then is the ledger read, up to the
last stable offsets, which now lie past every batch that will ever commit under that id.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime

from services.common.avro import AvroSerde
from services.common.clock import china_today
from services.common.pseudonym import check_region_key, load_region_key
from services.common.region import load_region
from services.common.settings import Settings
from services.common.workdays import WorkdayCalendar, default_calendar
from services.intake.classify.ledger import Ledger
from services.intake.classify.ledger_sync import LedgerFollower
from services.intake.pipeline import IntakePipeline
from services.intake.prepare import Preparation
from services.intake.preparers import PreparerPool
from services.intake.publish.publisher import TransactionalPublisher
from services.intake.validate.validation import pseudonymiser


@dataclass(frozen=True, slots=True)
class IntakeNode:
    settings: Settings
    city_code: str
    region_key: bytes
    serde: AvroSerde
    ledger: Ledger
    publisher: TransactionalPublisher
    follower: LedgerFollower
    pipeline: IntakePipeline
    #: Processes kept for preparing imports' chunks (None: an import starts its own).
    preparers: PreparerPool | None = None


@contextlib.asynccontextmanager
async def intake_node(
    settings: Settings,
    *,
    writer: str,
    uploader_department: str | None = None,
    today: Callable[[], date] = china_today,
    calendar: WorkdayCalendar | None = None,
    region_key: bytes | None = None,
    preparers: int = 0,
) -> AsyncIterator[IntakeNode]:
    """A started writer whose ledger holds everything committed so far.

    ``preparers`` > 1 also starts that many processes for preparing imports' chunks, while
    the node connects and catches up, and keeps them until the node stops.
    """
    region = load_region(settings.region_file)
    city_code = region.city(settings.city).admin_code
    key = region_key if region_key is not None else load_region_key()
    check_region_key(key, region.pseudonym_key_ids)
    serde = AvroSerde()
    ledger = Ledger()
    publisher = TransactionalPublisher(settings, writer=writer)
    follower = LedgerFollower(settings, serde, ledger)
    pool = PreparerPool(preparers) if preparers > 1 else None
    warming = (
        asyncio.create_task(
            pool.warm(
                Preparation(
                    city=settings.city,
                    city_code=city_code,
                    region_key=key,
                    today=today(),
                    submitted_at=datetime.now(UTC),
                    uploader_department=uploader_department,
                    partitions=1,
                    traceparent=None,
                )
            )
        )
        if pool is not None
        else None
    )
    try:
        await publisher.start()
        try:
            await follower.start()
            try:
                await follower.catch_up()
                pipeline = IntakePipeline(
                    city=settings.city,
                    city_code=city_code,
                    serde=serde,
                    ledger=ledger,
                    publisher=publisher,
                    follower=follower,
                    pseudonymise=pseudonymiser(key),
                    calendar=calendar or default_calendar(),
                    today=today,
                    uploader_department=uploader_department,
                )
                if warming is not None:
                    await warming
                yield IntakeNode(
                    settings, city_code, key, serde, ledger, publisher, follower, pipeline, pool
                )
            finally:
                await follower.stop()
        finally:
            await publisher.stop()
    finally:
        if warming is not None and not warming.done():
            warming.cancel()
        if pool is not None:
            pool.close()
