"""Capacity of lists propagation: the offered rate stepped, next to one Kafka hop.

Two city nodes (Suzhou, Wuxi) run as real processes on the run's broker. Each step publishes
list decisions onto Suzhou's ``credit.records.v1`` at the offered rate for a fixed time; for
about a hundred of them per step, the time until Wuxi's ``CheckSubject`` returns it (polled
every 10 ms). The capacity is the highest rate whose p99 ≤ 1 s (``bench/capacity.py``); the
baseline is one plain Kafka hop offered the same rates in the same run.

    python -m bench capacity          # or: make bench
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.capacity import RATES, capacity_rows, kafka_hop, paced, step_rates
from bench.harness import BenchContext, Comparison, benchmark
from creditlink.peer.v1 import credit_check_pb2
from tests.kit.lists import list_decision, organisation_key
from tests.kit.lists_region import ListsRegion

LISTS_GOAL = 2_000.0
SAMPLES_PER_STEP = 100
POLL_SECONDS = 0.01


async def _visible(stub: Any, subject: str, *, poll: float, within: float = 60) -> None:
    request = credit_check_pb2.CheckSubjectRequest(subject_key=subject, purpose="bench")
    deadline = time.perf_counter() + within
    while time.perf_counter() < deadline:
        if (await stub.CheckSubject(request, timeout=10)).memberships:
            return
        await asyncio.sleep(poll)
    raise RuntimeError(f"{subject} never became visible in Wuxi")


@benchmark("capacity")
async def lists_capacity(ctx: BenchContext) -> list[Comparison]:
    seconds = 1.0 if ctx.quick else 3.0
    region = ListsRegion(
        ctx.scratch / "capacity",
        ctx.kafka_bootstrap,
        cities=("suzhou", "wuxi"),
        reconcile_seconds=600,
    )
    await region.provision()
    region.start_all()
    try:
        await region.wait_ready()
        channel = region.channel("suzhou", "wuxi")
        stub = region.check_stub(channel)
        warm = list_decision(organisation_key(9_999_999), decision_number="苏市监信〔2024〕预热号")
        await region.publish("suzhou", [warm])
        await _visible(stub, organisation_key(9_999_999), poll=0.05)
        next_key = 0

        async def measure(rate: float) -> list[float]:
            nonlocal next_key
            total = int(rate * seconds)
            base, next_key = next_key, next_key + total
            sample_every = max(1, total // SAMPLES_PER_STEP)
            records = [
                list_decision(
                    organisation_key(base + n), decision_number=f"苏市监信〔2024〕压{base + n}号"
                )
                for n in range(total)
            ]
            latencies: list[float] = []
            watchers: list[asyncio.Task[None]] = []

            async def watch(subject: str, published: float) -> None:
                await _visible(stub, subject, poll=POLL_SECONDS)
                latencies.append(time.perf_counter() - published)

            async def send(first: int, count: int) -> None:
                batch = records[first : first + count]
                await region.publish("suzhou", batch)
                now = time.perf_counter()
                for n, record in enumerate(batch, start=first):
                    if n % sample_every == 0:
                        subject = record["subject"]["subject_key"]
                        watchers.append(asyncio.create_task(watch(subject, now)))

            await paced(rate, total, send)
            await asyncio.wait_for(asyncio.gather(*watchers), 180)
            await asyncio.sleep(1.0)  # let the step's tail drain before the next one
            return latencies

        ours = await step_rates(measure, RATES)
        await channel.close()
    finally:
        await region.close()

    async def hop(rate: float) -> list[float]:
        return await kafka_hop(ctx.kafka_bootstrap, rate=rate, seconds=seconds)

    # The hop at every rate, so that its capacity is read from the same steps as ours could be.
    hops = await step_rates(hop, RATES)
    return capacity_rows("lists propagation", ours, hops, goal=LISTS_GOAL)
