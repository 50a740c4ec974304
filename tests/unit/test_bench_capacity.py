"""The capacity stepping helper: steps, stops after a miss, and reads the capacity."""

from __future__ import annotations

import asyncio

from bench.capacity import Step, capacity, capacity_rows, step_rates, summarise


def test_capacity_is_the_highest_rate_within_budget_with_every_lower_step() -> None:
    steps = [
        Step(250, 10, 5, 20),
        Step(500, 10, 5, 900),
        Step(1000, 10, 800, 1500),
        Step(2000, 10, 5, 20),
    ]
    assert capacity(steps) == 500
    assert capacity([Step(250, 10, 900, 1001)]) == 0
    assert capacity([Step(250, 0, 0, 0)]) == 0


def test_stepping_stops_after_the_first_step_over_budget() -> None:
    offered: list[float] = []

    async def measure(rate: float) -> list[float]:
        offered.append(rate)
        return [0.01] * 99 + [2.0 if rate >= 1000 else 0.05]

    steps = asyncio.run(step_rates(measure, (250, 500, 1000, 2000)))
    assert offered == [250, 500, 1000]
    assert [s.within() for s in steps] == [True, True, False]
    assert capacity(steps) == 500


def test_rows_put_each_step_next_to_the_hop_at_the_same_rate() -> None:
    ours = [summarise(250, [0.1] * 10), summarise(500, [0.2] * 10)]
    hop = [summarise(250, [0.01] * 10), summarise(500, [0.02] * 10)]
    rows = capacity_rows("x", ours, hop, goal=2000)
    assert [round(r.ours) for r in rows[:4]] == [100, 100, 200, 200]
    assert [round(r.baseline) for r in rows[:4]] == [10, 10, 20, 20]
    assert (rows[-2].ours, rows[-2].baseline) == (500, 500)
    assert rows[-1].verdict == "BELOW"
