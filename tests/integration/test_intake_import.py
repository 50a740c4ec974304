"""Bulk import through the real broker: a mixed file, a re-run, a broker restart.

The clock is pinned to 20 October 2025 so the 双公示 deadlines are the hand-computed ones of
``tests/unit/test_intake_quality.py`` (decisions of Fri 26 September 2025 are due Mon
13 October, across the National Day holiday and two make-up working days).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from prometheus_client import REGISTRY

from deploy.broker import Broker
from services.common.avro import AvroSerde
from services.common.kafka import make_consumer
from services.common.pseudonym import DEV_REGION_KEY
from services.common.settings import Settings
from services.intake.classify.ledger_sync import partition_counts
from services.intake.encode.events import QUALITY_TOPIC, RECORDS_TOPIC, REJECTED_TOPIC
from services.intake.figures.queries import query_quality
from services.intake.importer import ImportSummary, import_files
from services.intake.node import intake_node
from tests.kit.identifiers import make_resident_id
from tests.kit.intake_samples import (
    DEPARTMENTS,
    licensing_row,
    penalty_row,
    render_csv,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

TODAY = date(2025, 10, 20)
DAY = date(2025, 9, 26)  # due Mon 13 Oct 2025
DEPARTMENT = DEPARTMENTS[0]


async def read_topic(settings: Settings, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every committed message of a catalogue topic, partition by partition."""
    name = settings.topic(topic)
    count = (await partition_counts(settings, [name]))[name]
    partitions = [TopicPartition(name, p) for p in range(count)]
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        messages: list[ConsumerRecord[bytes, bytes]] = []
        deadline = time.monotonic() + 120
        while any([await consumer.position(tp) < ends[tp] for tp in partitions]):
            assert time.monotonic() < deadline, "topic not read to its end in time"
            for batch in (await consumer.getmany(timeout_ms=500, max_records=10_000)).values():
                messages.extend(batch)
        return messages
    finally:
        await consumer.stop()


async def decoded(settings: Settings, topic: str) -> list[dict[str, Any]]:
    serde = AvroSerde()
    return [serde.decode(m.value) for m in await read_topic(settings, topic) if m.value]


async def run_import(
    settings: Settings, paths: list[Path], *, preparers: int = 0, **options: Any
) -> ImportSummary:
    async with intake_node(
        settings,
        writer="import",
        today=lambda: TODAY,
        region_key=DEV_REGION_KEY,
        preparers=preparers,
    ) as node:
        return await import_files(node, paths, **options)


def penalty(serial: int, reported: date | None, **changes: str) -> dict[str, str]:
    row = penalty_row(
        random.Random(serial),
        decision_date=DAY,
        report_date=reported,
        department=DEPARTMENT,
        serial=serial,
        person_share=0.0,
    )
    row.update(changes)
    return row


def mixed_file(path: Path, person_id: str) -> None:
    """27 data lines; see the expectations in the test below."""
    on_time, late = date(2025, 10, 13), date(2025, 10, 14)
    valid_on_time = [penalty(i, on_time) for i in range(1, 9)]  # 8
    valid_late = [penalty(i, late) for i in range(11, 14)]  # 3, overdue
    licences = [
        licensing_row(
            random.Random(i), decision_date=date(2025, 10, 15), department=DEPARTMENT, serial=i
        )
        for i in range(21, 25)
    ]  # 4, reported today: on time (due Fri 24 Oct)
    invalid = [
        penalty(31, on_time, subject_uscc="91320500MA2W8XY409"),  # check characters
        penalty(32, on_time, severity=""),  # required
        penalty(33, None, decision_date="2025-10-25"),  # in the future
    ]
    duplicates = [valid_on_time[0], valid_on_time[1]]  # 2
    correction = [{**valid_on_time[2], "fine_amount_yuan": "123.45"}]  # 1, version 2
    person = [
        penalty(
            41,
            on_time,
            subject_type="自然人",
            subject_name="王芳",
            subject_uscc="",
            subject_id_number=person_id,
            legal_representative="",
        )
    ]
    gb18030 = [penalty(51, on_time), penalty(52, on_time)]  # 2, encoded GB18030 below
    utf8_rows = valid_on_time + valid_late + licences + invalid + duplicates + correction + person
    text = render_csv(utf8_rows)
    header = text.split("\n", 1)[0]
    data = text.encode("utf-8")
    data += render_csv(gb18030).split("\n", 1)[1].encode("gb18030")
    cells = header.count(",") + 1
    data += ("ADMIN_PENALTY" + ",x" * cells + "\n").encode()  # one cell too many
    data += b"ADMIN_PENALTY,\xff\xfe not text\n"  # neither UTF-8 nor GB18030
    data += render_csv([invalid[0]]).split("\n", 1)[1].encode()  # the same bad line again
    path.write_bytes(data)


@pytest.mark.parametrize("workers", [1, 2], ids=["in-process", "2-workers"])
async def test_a_mixed_file_gives_exact_counts_and_topics(
    provisioned: Settings, tmp_path: Path, workers: int
) -> None:
    person_id = make_resident_id(random.Random(99), birth=date(1988, 8, 8))
    path = tmp_path / "shuanggongshi.csv"
    mixed_file(path, person_id)

    def counted() -> tuple[float, float, float]:
        city = {"city": provisioned.city}
        rejected = sum(
            sample.value
            for metric in REGISTRY.collect()
            if metric.name == "creditlink_records_rejected"
            for sample in metric.samples
            if sample.name.endswith("_total") and sample.labels.get("city") == provisioned.city
        )
        return (
            REGISTRY.get_sample_value("creditlink_records_accepted_total", city) or 0.0,
            REGISTRY.get_sample_value("creditlink_records_duplicate_total", city) or 0.0,
            rejected,
        )

    before = counted()
    # Small chunks: several transactions, corrections and duplicates across them. The first
    # import uses the node's preparing processes (started with the node), the second its own.
    summary = await run_import(
        provisioned, [path], chunk_size=7, workers=workers, preparers=workers
    )
    assert summary.lines == 27
    assert (summary.accepted, summary.duplicates, summary.rejected) == (19, 2, 6)
    # The Prometheus counters saw the same: one rejection was already on the topic.
    after = counted()
    assert tuple(b - a for a, b in zip(before, after, strict=True)) == (19, 2, 5)
    assert summary.corrections == 1
    assert summary.rejections_already_recorded == 1
    assert summary.balanced

    records = await decoded(provisioned, RECORDS_TOPIC)
    assert len(records) == 19
    versions = Counter((r["record_id"], r["version"]) for r in records)
    assert set(versions.values()) == {1}
    corrected = [r for r in records if r["version"] == 2]
    assert len(corrected) == 1
    assert corrected[0]["supersedes_version"] == 1
    assert corrected[0]["penalty"]["fine_amount_fen"] == 12345
    assert corrected[0]["report_date"] == date(2025, 10, 13)  # the first report's
    people = [r for r in records if r["subject"]["subject_type"] == "NATURAL_PERSON"]
    assert len(people) == 1
    assert people[0]["subject"]["subject_key"].startswith("N:")

    rejected = await decoded(provisioned, REJECTED_TOPIC)
    assert len(rejected) == 5
    codes = Counter(c for r in rejected for c in {reason["code"] for reason in r["reasons"]})
    assert codes == Counter(
        {"USCC_CHECKSUM": 1, "REQUIRED": 1, "DATE_IN_FUTURE": 1, "UNPARSEABLE": 2}
    )

    # No raw resident ID number on any topic, in values or headers.
    for topic in (RECORDS_TOPIC, REJECTED_TOPIC, QUALITY_TOPIC):
        for message in await read_topic(provisioned, topic):
            blob = (message.value or b"") + b"".join(v for _, v in message.headers)
            assert person_id.encode() not in blob

    figure = await query_quality(provisioned, AvroSerde(), DEPARTMENT.code, DAY)
    assert figure is not None
    # Submitted: 8 on time + 3 late + 2 GB18030 + 1 person + 2 rejected with a record id.
    assert (figure["submitted_count"], figure["valid_count"]) == (16, 14)
    assert (figure["reported_on_time_count"], figure["reported_late_count"]) == (11, 3)
    assert figure["timeliness_rate"] == pytest.approx(11 / 16)
    assert figure["compliance_rate"] == pytest.approx(14 / 16)
    assert len(figure["overdue_record_ids"]) == 5  # 3 late + 2 rejected, not corrected
    assert figure["due_date"] == date(2025, 10, 13)

    again = await run_import(provisioned, [path], workers=workers)
    assert (again.accepted, again.duplicates, again.rejected) == (0, 21, 6)
    assert again.rejections_already_recorded == 6
    assert len(await decoded(provisioned, RECORDS_TOPIC)) == 19
    assert len(await decoded(provisioned, REJECTED_TOPIC)) == 5


def bulk_rows(count: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [
        penalty_row(rng, decision_date=DAY, report_date=date(2025, 10, 13), serial=i)
        for i in range(count)
    ]


async def test_a_broker_restart_during_an_import_loses_nothing(
    provisioned: Settings, kafka_broker: Broker, tmp_path: Path
) -> None:
    if not kafka_broker.started_here:
        pytest.skip("the broker was not started by this run; not ours to restart")
    count = 3000
    path = tmp_path / "bulk.csv"
    path.write_text(render_csv(bulk_rows(count, seed=5)), encoding="utf-8")

    async with intake_node(
        provisioned, writer="import", today=lambda: TODAY, region_key=DEV_REGION_KEY
    ) as node:
        submit = node.pipeline.submit_prepared
        chunks = 0
        restarted: list[asyncio.Task[None]] = []

        async def submit_then_stop_the_broker(*args: Any, **kwargs: Any) -> Any:
            nonlocal chunks
            outcomes = await submit(*args, **kwargs)
            chunks += 1
            if chunks == 3:  # stop it between two batches, start it again a bit later
                await asyncio.to_thread(kafka_broker.down)

                async def start_again() -> None:
                    await asyncio.sleep(3)
                    await asyncio.to_thread(kafka_broker.up)

                restarted.append(asyncio.create_task(start_again()))
            return outcomes

        node.pipeline.submit_prepared = submit_then_stop_the_broker  # type: ignore[method-assign]
        summary = await import_files(node, [path], chunk_size=250)
        await asyncio.gather(*restarted)

    assert restarted, "the broker was never stopped"
    assert summary.balanced
    assert (summary.accepted, summary.duplicates, summary.rejected) == (count, 0, 0)
    records = await decoded(provisioned, RECORDS_TOPIC)
    ids = Counter(r["record_id"] for r in records)
    assert len(ids) == count
    assert max(ids.values()) == 1
