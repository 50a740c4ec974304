"""The processes that prepare an import's chunks (validate, pseudonymise, encode).

Spawning them and loading what preparing needs (schemas, compiled writers, the working-day
calendar) takes about half a second; an import that started its own pool spent it before its
first chunk. A node that imports starts them while it connects and catches up
(``intake_node(..., preparers=N)``) and every import reuses them.
"""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import random
from concurrent.futures import ProcessPoolExecutor
from datetime import date

from services.intake.prepare import (
    Chunk,
    Preparation,
    PreparedChunk,
    exit_with_parent,
    prepare_chunk,
    split_file,
    warm_worker,
)
from tests.kit.intake_samples import penalty_row, render_csv


class PreparerPool:
    """``workers`` spawned processes preparing chunks, in the order they are given."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=exit_with_parent
        )

    async def warm(self, preparation: Preparation) -> None:
        """Start every worker and let each prepare a chunk of one valid row."""
        loop = asyncio.get_running_loop()
        warm_up = _one_row_chunk(preparation.today)
        await asyncio.gather(
            *(
                loop.run_in_executor(self._executor, warm_worker, warm_up, preparation, 0.3)
                for _ in range(self.workers)
            )
        )

    def prepare(self, chunk: Chunk, preparation: Preparation) -> asyncio.Future[PreparedChunk]:
        return asyncio.get_running_loop().run_in_executor(
            self._executor, prepare_chunk, chunk, preparation
        )

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def _one_row_chunk(today: date) -> Chunk:
    row = penalty_row(random.Random(0), decision_date=today, serial=0)  # noqa: S311 (sample data)
    data = render_csv([row]).encode()
    return next(split_file(io.BytesIO(data), "csv", "warm-up.csv"))
