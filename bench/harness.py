"""The benchmark harness: every figure is printed next to a baseline measured in the same run.

A benchmark is a coroutine function registered with :func:`benchmark`; it returns
:class:`Comparison` rows. ``make bench`` runs them all, prints one table and writes
``bench/results/<timestamp>.json``. Figures from another run or another machine are never
compared: these machines are shared and noisy, so only same-run ratios mean something.

Example::

    @benchmark("serde")
    async def serde_roundtrip(ctx: BenchContext) -> list[Comparison]:
        ours = measure_rate(lambda: serde.encode(...), seconds=2)
        base = measure_rate(lambda: fastavro_encode(...), seconds=2)
        return [Comparison("encode CreditRecord", ours, base, unit="rec/s", target=0.8)]
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True, slots=True)
class Comparison:
    """One measured figure next to its same-run baseline.

    ``higher_is_better`` decides how the ratio reads: for throughput ``ours / baseline``,
    for latency ``baseline / ours`` — so a ratio ≥ ``target`` is always good.
    """

    name: str
    ours: float
    baseline: float
    unit: str
    baseline_name: str
    target: float | None = None
    higher_is_better: bool = True
    notes: str = ""

    @property
    def ratio(self) -> float:
        if self.higher_is_better:
            return self.ours / self.baseline if self.baseline else float("inf")
        return self.baseline / self.ours if self.ours else float("inf")

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        return "meets" if self.ratio >= self.target else "BELOW"


@dataclass
class BenchContext:
    """What benchmarks share: the broker's address and a scratch directory."""

    kafka_bootstrap: str
    scratch: Path
    quick: bool = False
    extra: dict[str, str] = field(default_factory=dict)


BenchFn = Callable[[BenchContext], Coroutine[Any, Any, list[Comparison]]]
REGISTRY: dict[str, BenchFn] = {}


def benchmark(name: str) -> Callable[[BenchFn], BenchFn]:
    def register(fn: BenchFn) -> BenchFn:
        REGISTRY[name] = fn
        return fn

    return register


def measure_rate(operation: Callable[[], object], *, seconds: float, batch: int = 100) -> float:
    """Operations per second of a synchronous callable over roughly ``seconds``."""
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            operation()
        done += batch
        now = time.perf_counter()
        if now >= deadline:
            return done / (now - start)


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sample."""
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def render_table(rows: list[tuple[str, Comparison]]) -> str:
    header = ("suite", "figure", "ours", "baseline", "baseline is", "ratio", "target", "")
    lines = [header]
    for suite, c in rows:
        lines.append(
            (
                suite,
                c.name,
                f"{c.ours:,.1f} {c.unit}",
                f"{c.baseline:,.1f} {c.unit}",
                c.baseline_name,
                f"{c.ratio:.2f}",
                f"≥ {c.target:.2f}" if c.target is not None else "-",
                c.verdict,
            )
        )
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(header))]
    out = []
    for n, row in enumerate(lines):
        out.append("  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def write_results(rows: list[tuple[str, Comparison]]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"bench-{stamp}.json"
    payload = {
        "measured_at": stamp,
        "machine": {"python": platform.python_version(), "cpu_count": __import__("os").cpu_count()},
        "results": [
            {"suite": suite, **asdict(c), "ratio": c.ratio, "verdict": c.verdict}
            for suite, c in rows
        ],
    }
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False), encoding="utf-8")
    return path
