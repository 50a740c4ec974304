"""Capacity by stepping the offered rate: one helper for every pipeline bench.

A single offered rate cannot tell latency from backlog: below capacity the latency is the
path's own, above it the queue grows and the latency with it. So a capacity bench offers
each rate of :data:`RATES` in turn, for a fixed time, and reports p50/p99 per step; the
capacity is the highest rate whose p99 stays within the budget (1 s). The baseline is one
plain Kafka hop (produce → consume, :func:`kafka_hop`) offered the same rates in the same run.

Usage::

    async def measure(rate: float) -> list[float]:   # latencies in seconds at that rate
        ...
    ours = await step_rates(measure, RATES)
    hop = await step_rates(lambda rate: kafka_hop(bootstrap, rate=rate, seconds=3), RATES)
    rows = capacity_rows("lists propagation", ours, hop)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.harness import Comparison, percentile
from services.common.kafka import make_consumer, make_producer
from services.common.settings import load_settings

RATES: tuple[float, ...] = (250.0, 500.0, 1_000.0, 2_000.0, 4_000.0)
BUDGET_SECONDS = 1.0
#: A pacing tick: sending in small bursts every tick keeps the offered rate exact without
#: one timer per message.
TICK_SECONDS = 0.02


@dataclass(frozen=True, slots=True)
class Step:
    """The latencies seen at one offered rate."""

    rate: float
    samples: int
    p50_ms: float
    p99_ms: float

    def within(self, budget_seconds: float = BUDGET_SECONDS) -> bool:
        return self.samples > 0 and self.p99_ms <= budget_seconds * 1000


def summarise(rate: float, latencies: Sequence[float]) -> Step:
    if not latencies:
        return Step(rate, 0, float("inf"), float("inf"))
    values = list(latencies)
    return Step(rate, len(values), percentile(values, 50) * 1000, percentile(values, 99) * 1000)


async def step_rates(
    measure: Callable[[float], Awaitable[Sequence[float]]],
    rates: Sequence[float] = RATES,
    *,
    budget_seconds: float = BUDGET_SECONDS,
    stop_after_miss: bool = True,
) -> list[Step]:
    """Offer each rate in turn; ``measure(rate)`` returns latencies in seconds.

    With ``stop_after_miss`` the steps above the first one over budget are not run: they
    could only queue more, and they cost the shared machine minutes.
    """
    steps: list[Step] = []
    for rate in rates:
        step = summarise(rate, await measure(rate))
        steps.append(step)
        if stop_after_miss and not step.within(budget_seconds):
            break
    return steps


def capacity(steps: Sequence[Step], budget_seconds: float = BUDGET_SECONDS) -> float:
    """The highest offered rate whose p99 is within budget, every lower step too (0 if none)."""
    best = 0.0
    for step in sorted(steps, key=lambda s: s.rate):
        if not step.within(budget_seconds):
            break
        best = step.rate
    return best


async def paced(rate: float, total: int, send: Callable[[int, int], Awaitable[None]]) -> float:
    """Offer ``total`` items at ``rate``/s as ``send(first, count)`` bursts, one per tick.

    Returns the achieved offered rate (lower than ``rate`` when sending itself cannot keep up,
    which is then part of what the bench shows).
    """
    per_tick = max(1, round(rate * TICK_SECONDS))
    started = time.perf_counter()
    for first in range(0, total, per_tick):
        count = min(per_tick, total - first)
        await send(first, count)
        await asyncio.sleep(max(0.0, started + (first + count) / rate - time.perf_counter()))
    elapsed = time.perf_counter() - started
    return total / elapsed if elapsed > 0 else float("inf")


async def kafka_hop(bootstrap: str, *, rate: float, seconds: float) -> list[float]:
    """Latencies of one plain Kafka hop (acks=all producer → consumer) offered ``rate``/s."""
    settings = load_settings({"KAFKA_BOOTSTRAP": bootstrap})
    topic = f"bench-hop-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    producer = make_producer(settings, client_id="bench-hop")
    consumer = make_consumer(settings, group_id=None, fetch_max_wait_ms=100)
    consumer.subscribe([topic])
    await producer.start()
    await consumer.start()
    total = max(1, int(rate * seconds))
    sent: dict[bytes, float] = {}
    latencies: list[float] = []
    try:
        await consumer.seek_to_end()

        async def receive() -> None:
            async for message in consumer:
                value = message.value
                if value is not None and value in sent:
                    latencies.append(time.perf_counter() - sent[value])
                if len(latencies) >= total:
                    return

        receiving = asyncio.create_task(receive())
        await asyncio.sleep(0.5)

        async def send(first: int, count: int) -> None:
            for n in range(first, first + count):
                value = f"{n}".encode()
                sent[value] = time.perf_counter()
                await producer.send(topic, value=value)

        await paced(rate, total, send)
        try:
            await asyncio.wait_for(receiving, 30 + seconds)
        except TimeoutError:
            receiving.cancel()
    finally:
        await consumer.stop()
        await producer.stop()
    return latencies


def capacity_rows(
    name: str, ours: Sequence[Step], hop: Sequence[Step], *, goal: float | None = None
) -> list[Comparison]:
    """p50/p99 per step next to the Kafka hop at the same rate, then the capacities."""
    by_rate = {step.rate: step for step in hop}
    rows: list[Comparison] = []
    for step in ours:
        base = by_rate.get(step.rate)
        if base is None:
            continue
        label = f"{name} @{step.rate:,.0f}/s (n={step.samples})"
        rows.append(
            Comparison(
                f"{label} p50",
                step.p50_ms,
                base.p50_ms,
                "ms",
                "one Kafka hop p50",
                higher_is_better=False,
            )
        )
        rows.append(
            Comparison(
                f"{label} p99",
                step.p99_ms,
                base.p99_ms,
                "ms",
                "one Kafka hop p99",
                higher_is_better=False,
            )
        )
    ours_capacity, hop_capacity = capacity(ours), capacity(hop)
    rows.append(
        Comparison(
            f"{name} capacity (p99 ≤ 1 s)",
            ours_capacity,
            hop_capacity,
            "/s",
            "one Kafka hop capacity",
        )
    )
    if goal is not None:
        rows.append(
            Comparison(
                f"{name} capacity against the goal", ours_capacity, goal, "/s", "goal", target=1.0
            )
        )
    return rows
