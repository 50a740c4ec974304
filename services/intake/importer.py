"""Bulk import of 双公示 files (``python -m services.intake import FILE ...``).

Files are read in chunks; each chunk is one pipeline batch, i.e. one Kafka transaction. The
import is safe to re-run after an interruption of any kind (Ctrl-C, ``kill -9``, a power
cut): what committed is on Kafka and is recognised as duplicate on the re-run, what did not
commit was aborted and is published by it. Nothing is kept on local disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from services.common.cloudevents import new_traceparent
from services.common.logging import get_logger
from services.intake.classify.decide import Accepted, Outcome
from services.intake.encode.events import RECORDS_TOPIC
from services.intake.node import IntakeNode
from services.intake.pipeline import disclosure_day_of
from services.intake.prepare import (
    CHUNK_LINES,
    Chunk,
    Preparation,
    PreparedBatch,
    PreparedChunk,
    file_source,
    prepare_chunk,
    revalidate_line,
    split_file,
)
from services.intake.preparers import PreparerPool
from services.intake.read import files
from services.intake.validate.validation import ValidationContext

DEFAULT_CHUNK: Final = CHUNK_LINES
# The cyclic collector's first threshold while an import runs. Each record adds a ledger
# state that lives on, and what is in flight (prepared chunks, events, outcomes) outlives a
# few young collections, so at the default 700 an import of 200,000 records ran about 1,600
# young, 150 middle and a dozen full collections, the full ones walking the whole growing
# ledger: a third of the importing process's CPU. At this threshold the same garbage is
# collected some fifteen times less often; reference counting frees the rest as before.
IMPORT_GC_THRESHOLD: Final = 10_000
# Below this, spawning worker processes costs more than it saves.
PARALLEL_FROM_BYTES: Final = 4 << 20


@dataclass(slots=True)
class ImportSummary:
    """Counts of one import. Every data line is exactly one of accepted, duplicate, rejected."""

    files: list[str] = field(default_factory=list)
    lines: int = 0
    accepted: int = 0
    corrections: int = 0
    duplicates: int = 0
    rejected: int = 0
    rejections_already_recorded: int = 0
    with_warnings: int = 0
    ignored_columns: list[str] = field(default_factory=list)
    quality_figures: int = 0
    seconds: float = 0.0

    @property
    def balanced(self) -> bool:
        return self.lines == self.accepted + self.duplicates + self.rejected

    def count(self, outcomes: Sequence[Outcome]) -> None:
        self.lines += len(outcomes)
        for outcome in outcomes:
            if isinstance(outcome, Accepted):
                if outcome.duplicate:
                    self.duplicates += 1
                else:
                    self.accepted += 1
                    self.corrections += outcome.correction
                self.with_warnings += bool(outcome.warnings)
            else:
                self.rejected += 1
                self.rejections_already_recorded += outcome.already_recorded

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "balanced": self.balanced}


def progress_bar(enabled: bool) -> Progress:
    """A progress bar on stderr (stdout carries the JSON log lines)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[records]:>9,} records"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )


def default_workers(paths: Sequence[Path]) -> int:
    """Worker processes for preparing chunks: one per CPU for files worth the start-up
    (about a second to spawn the workers and load the schemas), none for small ones."""
    total = sum(p.stat().st_size for p in paths)
    return max(1, os.cpu_count() or 1) if total >= PARALLEL_FROM_BYTES else 1


def _prepared_batch(
    chunk: Chunk, prepared: PreparedChunk, preparation: Preparation, context: ValidationContext
) -> PreparedBatch:
    return PreparedBatch(
        prepared=prepared,
        revalidate=functools.partial(
            revalidate_line,
            chunk,
            context=context,
            uploader_department=preparation.uploader_department,
        ),
        source=functools.partial(file_source, chunk.file_name, preparation.submitted_at),
    )


_imports_running = 0
_threshold_before: tuple[int, int, int] = gc.get_threshold()


@contextlib.contextmanager
def collecting_less() -> Iterator[None]:
    """Raise the collector's first threshold to :data:`IMPORT_GC_THRESHOLD` (never lower
    it) while at least one import of this process runs; restore it after the last."""
    global _imports_running, _threshold_before
    if _imports_running == 0:
        _threshold_before = gc.get_threshold()
        first, second, third = _threshold_before
        gc.set_threshold(max(first, IMPORT_GC_THRESHOLD), second, third)
    _imports_running += 1
    try:
        yield
    finally:
        _imports_running -= 1
        if _imports_running == 0:
            gc.set_threshold(*_threshold_before)


async def import_files(
    node: IntakeNode,
    paths: Sequence[Path],
    *,
    chunk_size: int = DEFAULT_CHUNK,
    progress: Progress | None = None,
    workers: int | None = None,
) -> ImportSummary:
    """Import every file in order; figures of the touched department-days are published at
    the end (also when every line was a duplicate, so a re-run repairs stale figures).

    Chunks are prepared by ``workers`` processes (default :func:`default_workers`), up to two
    per worker ahead of the one being published; they are decided and published in order.
    """
    with collecting_less():
        log = get_logger(component="import")
        pipeline = node.pipeline
        summary = ImportSummary(files=[p.name for p in paths])
        started = time.perf_counter()
        touched: set[tuple[str, date]] = set()
        trace = new_traceparent()
        context = pipeline.context()
        partitions = await node.publisher.partition_count(RECORDS_TOPIC)
        count = workers if workers is not None else default_workers(paths)
        loop = asyncio.get_running_loop()
        own_pool: PreparerPool | None = None
        pool: PreparerPool | None = None
        if count > 1:
            # The node's processes when it keeps some (already started); else our own.
            pool = node.preparers or (own_pool := PreparerPool(count))
            count = pool.workers

        def prepare(chunk: Chunk, preparation: Preparation) -> asyncio.Future[PreparedChunk]:
            if pool is not None:
                return pool.prepare(chunk, preparation)
            done: asyncio.Future[PreparedChunk] = loop.create_future()
            done.set_result(prepare_chunk(chunk, preparation))
            return done

        async def publish(
            chunk: Chunk, preparation: Preparation, future: asyncio.Future[PreparedChunk]
        ) -> None:
            prepared = await future
            touched.update(prepared.record_days())
            for rejection in prepared.rejections:
                day = disclosure_day_of(rejection)
                if day is not None:
                    touched.add(day)
            batch = _prepared_batch(chunk, prepared, preparation, context)
            summary.count(await pipeline.submit_prepared(batch, traceparent=trace))

        try:
            for path in paths:
                file_format = files.format_of(path)
                size = path.stat().st_size
                log.info("import_started", file=path.name, size=size, workers=count)
                task: TaskID | None = None
                if progress is not None:
                    task = progress.add_task(path.name, total=size, records=0)
                inflight: deque[tuple[Chunk, Preparation, asyncio.Future[PreparedChunk]]] = deque()
                done_bytes = 0
                with path.open("rb") as stream:
                    for chunk in split_file(stream, file_format, path.name, chunk_size):
                        if not summary.ignored_columns and chunk.header:
                            summary.ignored_columns = files.ignored_columns(chunk.header)
                        preparation = Preparation(
                            city=node.settings.city,
                            city_code=node.city_code,
                            region_key=node.region_key,
                            today=context.today,
                            submitted_at=datetime.now(UTC),
                            uploader_department=pipeline.uploader_department,
                            partitions=partitions,
                            traceparent=trace,
                        )
                        inflight.append((chunk, preparation, prepare(chunk, preparation)))
                        while len(inflight) > 2 * count:
                            ready = inflight.popleft()
                            await publish(*ready)
                            done_bytes += len(ready[0].body)
                            if progress is not None and task is not None:
                                progress.update(task, completed=done_bytes, records=summary.lines)
                    while inflight:
                        ready = inflight.popleft()
                        await publish(*ready)
                        done_bytes += len(ready[0].body)
                        if progress is not None and task is not None:
                            progress.update(task, completed=size, records=summary.lines)
        finally:
            if own_pool is not None:
                own_pool.close()
        if summary.ignored_columns:
            log.warning("columns_ignored", columns=summary.ignored_columns)
        summary.quality_figures = await pipeline.publish_quality(touched, traceparent=trace)
        summary.seconds = round(time.perf_counter() - started, 3)
        log.info("import_finished", **summary.as_dict())
        return summary
