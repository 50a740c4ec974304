"""``kill -9`` in the middle of a bulk import, then the same import again: exactly once.

The import runs as its own process (``python -m services.intake import``), is killed with
SIGKILL once part of the file is on Kafka — typically with a transaction open — and is run
again to completion. Afterwards every valid record is on ``credit.records.v1`` exactly once
by record id, and every rejection once on the rejected topic.

Size: ``INTAKE_CRASH_RECORDS`` lines (default 100,000, the large case; ``make test`` runs it
in about a minute on a 2-core machine). Set it lower for a quick local run.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from services.common.avro import AvroSerde
from services.common.kafka import make_consumer
from services.common.settings import REPO_ROOT, Settings
from services.intake.classify.ledger_sync import partition_counts
from services.intake.encode.events import RECORDS_TOPIC, REJECTED_TOPIC
from tests.integration.test_intake_import import read_topic
from tests.kit.intake_samples import penalty_row, render_csv

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(600)]

RECORDS = int(os.environ.get("INTAKE_CRASH_RECORDS", "100000"))
INVALID_EVERY = 97  # about 1% of the lines are rejected (no severity)


def write_file(path: Path, count: int) -> int:
    """``count`` penalty lines; returns how many are valid."""
    rng = random.Random(2024)
    decided = date.today() - timedelta(days=3)
    rows = []
    for serial in range(count):
        row = penalty_row(rng, decision_date=decided, serial=serial)
        if serial % INVALID_EVERY == 0:
            row["severity"] = ""
        rows.append(row)
    path.write_text(render_csv(rows), encoding="utf-8")
    return sum(1 for serial in range(count) if serial % INVALID_EVERY)


def import_process(settings: Settings, path: Path) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CREDITLINK_CITY": settings.city,
        "CREDITLINK_TOPIC_PREFIX": settings.topic_prefix,
        "CREDITLINK_DEV": "1",
        "CREDITLINK_LOG_LEVEL": "warning",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "services.intake", "import", str(path), "--json", "--no-progress"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class Offsets:
    """End offsets of the records topic as committed readers and as everyone sees them: a
    difference means a transaction with records in it is open right now."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._consumers = {
            level: make_consumer(settings, group_id=None, isolation_level=level)
            for level in ("read_committed", "read_uncommitted")
        }
        self._partitions: list[TopicPartition] = []

    async def __aenter__(self) -> Offsets:
        name = self._settings.topic(RECORDS_TOPIC)
        count = (await partition_counts(self._settings, [name]))[name]
        self._partitions = [TopicPartition(name, p) for p in range(count)]
        for consumer in self._consumers.values():
            await consumer.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        for consumer in self._consumers.values():
            await consumer.stop()

    async def ends(self) -> tuple[int, int]:
        """(last stable offsets, high watermarks), summed over the partitions."""
        stable = await self._consumers["read_committed"].end_offsets(self._partitions)
        high = await self._consumers["read_uncommitted"].end_offsets(self._partitions)
        return sum(stable.values()), sum(high.values())


async def test_kill_9_mid_import_then_rerun_publishes_each_record_once(
    provisioned: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "bulk.csv"
    valid = write_file(path, RECORDS)

    first = import_process(provisioned, path)
    deadline = time.monotonic() + 300
    async with Offsets(provisioned) as offsets:
        try:
            while True:
                stable, high = await offsets.ends()
                # Prefer to kill while a batch is open (records beyond the last stable
                # offset); settle for any moment once two thirds are through.
                if high >= RECORDS // 3 and high > stable:
                    break
                if high >= 2 * RECORDS // 3:
                    break
                assert first.poll() is None, f"import ended early: {first.communicate()}"
                assert time.monotonic() < deadline, "import made no progress"
                await asyncio.sleep(0.005)
        finally:
            first.send_signal(signal.SIGKILL)
            first.communicate()
        assert first.returncode == -signal.SIGKILL
        stable, high = await offsets.ends()
    published_before = len(await read_topic(provisioned, RECORDS_TOPIC))
    assert 0 < published_before < valid
    # A batch the kill left open stays open (high > stable) until a writer with the same
    # transactional id starts: the re-run below fences it and the broker aborts it.

    second = import_process(provisioned, path)
    stdout, stderr = await asyncio.to_thread(second.communicate, timeout=480)
    assert second.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["lines"] == RECORDS
    assert summary["balanced"] is True
    assert summary["accepted"] + summary["duplicates"] == valid
    assert summary["duplicates"] >= published_before
    assert summary["rejected"] == RECORDS - valid

    serde = AvroSerde()
    records = await read_topic(provisioned, RECORDS_TOPIC)
    ids = Counter(serde.decode(m.value)["record_id"] for m in records if m.value)
    assert len(ids) == valid
    assert set(ids.values()) == {1}
    rejections = await read_topic(provisioned, REJECTED_TOPIC)
    rejection_ids = Counter(dict(m.headers)["ce_id"] for m in rejections)
    assert len(rejection_ids) == RECORDS - valid
    assert set(rejection_ids.values()) == {1}
