"""``make bench``: run every registered benchmark against a real broker, print, write JSON."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import pkgutil
import sys
import tempfile
from pathlib import Path

from bench.harness import REGISTRY, BenchContext, Comparison, render_table, write_results
from deploy.broker import broker_answers, start_broker


def _load_suites() -> None:
    import bench

    for module in pkgutil.iter_modules(bench.__path__):
        if module.name.startswith("bench_"):
            importlib.import_module(f"bench.{module.name}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("suites", nargs="*", help="run only these suites")
    parser.add_argument("--quick", action="store_true", help="short runs (smoke check)")
    args = parser.parse_args()
    _load_suites()
    # The benches measure what a node can serve, mostly from one calling city: the per-city
    # rate limit (a policy knob, tested in tests/integration/test_peer_limits.py) would cap
    # the figure instead. Every node a bench starts inherits this.
    os.environ.setdefault("CREDITLINK_PEER_CALLER_RATE", "1000000")
    os.environ.setdefault("CREDITLINK_PEER_CALLER_BURST", "1000000")
    os.environ.setdefault("CREDITLINK_PEER_MAX_CALLS_PER_CALLER", "100000")
    chosen = args.suites or sorted(REGISTRY)
    unknown = [s for s in chosen if s not in REGISTRY]
    if unknown:
        print(f"unknown suites: {unknown}; known: {sorted(REGISTRY)}", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="creditlink-bench-") as scratch:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:19092")
        broker = None
        if not broker_answers(bootstrap):
            broker = start_broker(Path(scratch) / "kafka")
            bootstrap = broker.bootstrap
        try:
            ctx = BenchContext(kafka_bootstrap=bootstrap, scratch=Path(scratch), quick=args.quick)
            rows: list[tuple[str, Comparison]] = []
            for name in chosen:
                print(f"running {name} …", file=sys.stderr, flush=True)
                rows.extend((name, c) for c in asyncio.run(REGISTRY[name](ctx)))
        finally:
            if broker is not None:
                broker.down()
    print(render_table(rows))
    print(f"\nresults written to {write_results(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
