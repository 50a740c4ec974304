"""Same-run A/B of the lists node's performance mechanisms, on a quiet and on a loaded machine.

Each mechanism is switched on alone against a node with none of them: serving processes
(``CREDITLINK_LISTS_SERVING_PROCESSES=2``), the audit relay helper process, the shortened GIL
switch interval and ``gc.freeze`` after start-up. Wuxi is restarted with each variant in
turn, in a shuffled order every round, and answers ``CheckSubject`` to 16 callers on
connections of their own; a mechanism wins only if its lowest round beats the baseline's
highest. "Loaded" adds two busy processes, one per core, for the whole condition.

    python -m bench mechanisms
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from collections.abc import Mapping
from typing import Any, Final

from bench.bench_lists import CALLERS, _check_request, _closed_loop, _connections
from bench.harness import BenchContext, Comparison, benchmark, percentile
from tests.kit.lists import list_decision, organisation_key
from tests.kit.lists_region import ListsRegion

NONE: Final[Mapping[str, str]] = {
    "CREDITLINK_LISTS_SERVING_PROCESSES": "1",
    "CREDITLINK_AB_AUDIT_RELAY": "0",
    "CREDITLINK_AB_SWITCH_INTERVAL": "0",
    "CREDITLINK_AB_GC_FREEZE": "0",
}
VARIANTS: Final[Mapping[str, Mapping[str, str]]] = {
    "none": NONE,
    "serving processes (2)": {**NONE, "CREDITLINK_LISTS_SERVING_PROCESSES": "2"},
    "audit relay": {**NONE, "CREDITLINK_AB_AUDIT_RELAY": "1"},
    "switch interval 0.5 ms": {**NONE, "CREDITLINK_AB_SWITCH_INTERVAL": "1"},
    "gc.freeze": {**NONE, "CREDITLINK_AB_GC_FREEZE": "1"},
}
BUSY: Final = "while True: pass"


async def _measure(
    region: ListsRegion, env: Mapping[str, str], seconds: float
) -> tuple[float, float]:
    """Restart Wuxi with ``env``; (QPS, p99 ms) of CheckSubject with 16 callers."""
    wuxi = region.nodes["wuxi"]
    wuxi.stop()
    wuxi.env.update(env)
    wuxi.start()
    await region.wait_ready("wuxi")
    channels = _connections(wuxi.target, region.tls("suzhou"))
    stubs = [region.check_stub(c) for c in channels]
    requests = [_check_request(n) for n in range(2000)]

    async def check(n: int) -> object:
        return await stubs[n % len(stubs)].CheckSubject(requests[n % len(requests)], timeout=10)

    await _closed_loop(check, callers=CALLERS, seconds=1.0)
    calls, latencies, elapsed = await _closed_loop(check, callers=CALLERS, seconds=seconds)
    for channel in channels:
        await channel.close()
    return calls / elapsed, percentile(latencies, 99) * 1000


async def _condition(
    region: ListsRegion, seconds: float, rounds: int, label: str
) -> list[Comparison]:
    qps: dict[str, list[float]] = {name: [] for name in VARIANTS}
    p99: dict[str, list[float]] = {name: [] for name in VARIANTS}
    order = list(VARIANTS)
    for _ in range(rounds):
        random.shuffle(order)
        for name in order:
            rate, tail = await _measure(region, VARIANTS[name], seconds)
            qps[name].append(rate)
            p99[name].append(tail)
    base = qps["none"]
    rows = []
    for name in VARIANTS:
        if name == "none":
            continue
        ours = qps[name]
        verdict = (
            "wins beyond noise"
            if min(ours) > max(base)
            else "loses beyond noise"
            if max(ours) < min(base)
            else "within noise"
        )
        rows.append(
            Comparison(
                f"{label}: CheckSubject QPS with {name}",
                sorted(ours)[len(ours) // 2],
                sorted(base)[len(base) // 2],
                "req/s",
                "no mechanism (median)",
                notes=(
                    f"{verdict}; rounds {min(ours):,.0f}–{max(ours):,.0f} against "
                    f"{min(base):,.0f}–{max(base):,.0f}; p99 {min(p99[name]):.1f}–"
                    f"{max(p99[name]):.1f} ms against {min(p99['none']):.1f}–"
                    f"{max(p99['none']):.1f} ms"
                ),
            )
        )
    return rows


@benchmark("mechanisms")
async def mechanisms(ctx: BenchContext) -> list[Comparison]:
    seconds, rounds = (1.0, 2) if ctx.quick else (3.0, 4)
    region = ListsRegion(
        ctx.scratch / "mechanisms",
        ctx.kafka_bootstrap,
        cities=("suzhou", "wuxi"),
        reconcile_seconds=600,
        extra_env=dict(NONE),
    )
    await region.provision()
    region.start_all()
    busy: list[subprocess.Popen[Any]] = []
    try:
        await region.wait_ready()
        # Half of the checked subjects are on Suzhou's black list, mirrored to Wuxi.
        records = [
            list_decision(organisation_key(n), decision_number=f"苏市监信〔2024〕对{n}号")
            for n in range(1, 2000, 2)
        ]
        await region.publish("suzhou", records)
        stub = region.check_stub(region.channel("suzhou", "wuxi"))
        last = _check_request(1999)
        for _ in range(600):
            if (await stub.CheckSubject(last, timeout=10)).memberships:
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError("Suzhou's decisions never reached Wuxi")
        rows = await _condition(region, seconds, rounds, "quiet")
        busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(2)]  # noqa: ASYNC220
        rows += await _condition(region, seconds, rounds, "loaded (2 busy processes)")
    finally:
        for process in busy:
            process.kill()
            process.wait()
        await region.close()
    return rows
