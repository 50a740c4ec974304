"""Lists at scale: one store holding many entries (``CREDITLINK_BENCH_SCALE_ENTRIES``,
default 1,000,000), each figure next to a baseline of the same run.

- **restart**: opening the store as a restarting node does (the digest index loaded), in a
  fresh process, against the same store opened the way a store without the index's own
  lines is (every entry decoded to build it); and the open's peak RSS.
- **lookup**: p50/p99 of a subject's entries read from the store (cold, random subjects,
  what CheckSubject reads) at the large size against the same reads at 10,000 entries.

Several rounds each; the figure is the minimum, min-max in the notes.

    CREDITLINK_BENCH_SCALE_ENTRIES=200000 python -m bench scale
    python -m bench.bench_scale open STORE_DIR     # one timed open (used by the bench)
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import shutil
import sys
import time
from pathlib import Path

from bench.harness import BenchContext, Comparison, benchmark, percentile
from services.common.avro import AvroSerde
from services.common.settings import REPO_ROOT
from services.lists.store import ListStore
from tests.kit.lists import SUZHOU, organisation_key
from tests.kit.lists_seed import drop_index_lines, seed_entries

SMALL = 10_000
ROUNDS = 3
LOOKUPS = 2_000


def _entries(ctx: BenchContext) -> int:
    default = 20_000 if ctx.quick else 1_000_000
    return int(os.environ.get("CREDITLINK_BENCH_SCALE_ENTRIES", default))


def _without_index_lines(source: Path, target: Path) -> None:
    """A copy of the store as one written before the index had lines of its own."""
    shutil.copytree(source, target)
    drop_index_lines(target)


async def _open_in_process(path: Path, *, keep: bool = True) -> tuple[float, float]:
    """Seconds to open the store and its peak RSS (MiB), in a fresh process."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.bench_scale",
        "open",
        str(path),
        "keep" if keep else "once",
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    result = json.loads(out)
    return float(result["seconds"]), float(result["rss_mib"])


def _lookups(store: ListStore, count: int) -> list[float]:
    rng = random.Random(7)
    latencies = []
    for _ in range(LOOKUPS):
        subject = organisation_key(rng.randrange(count))
        started = time.perf_counter()
        found = store.entries_of_subject(subject)
        latencies.append(time.perf_counter() - started)
        assert found, subject
    return latencies


def _span(values: list[float]) -> str:
    return f"min-max {min(values):,.2f}-{max(values):,.2f} over {len(values)} rounds"


@benchmark("scale")
async def scale(ctx: BenchContext) -> list[Comparison]:
    count = _entries(ctx)
    serde = AvroSerde()
    big, small = ctx.scratch / "scale-big", ctx.scratch / "scale-small"
    for path, n in ((big, count), (small, SMALL)):
        store = ListStore(path, serde, own_city=SUZHOU)
        started = time.perf_counter()
        seed_entries(store, count=n, issuing_city=SUZHOU)
        print(f"seeded {n:,} entries in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        store.close()
    legacy = ctx.scratch / "scale-legacy"
    _without_index_lines(big, legacy)

    opens, legacy_opens, rss, legacy_rss = [], [], [], []
    for _ in range(ROUNDS):
        seconds, mib = await _open_in_process(big)
        opens.append(seconds)
        rss.append(mib)
        # The copy is opened without writing, so each round decodes every entry again.
        seconds, mib = await _open_in_process(legacy, keep=False)
        legacy_opens.append(seconds)
        legacy_rss.append(mib)

    p99s: dict[str, list[float]] = {"big": [], "small": []}
    p50s: dict[str, list[float]] = {"big": [], "small": []}
    for _ in range(ROUNDS):
        for name, path, n in (("big", big, count), ("small", small, SMALL)):
            store = ListStore(path, serde, own_city=SUZHOU)
            latencies = _lookups(store, n)
            store.close()
            p50s[name].append(percentile(latencies, 50) * 1e6)
            p99s[name].append(percentile(latencies, 99) * 1e6)

    label = f"{count:,} entries"
    return [
        Comparison(
            f"restart (store open) at {label}",
            min(opens),
            min(legacy_opens),
            "s",
            "same store, index built by decoding every entry",
            higher_is_better=False,
            notes=f"ours {_span(opens)}; baseline {_span(legacy_opens)}",
        ),
        Comparison(
            f"restart against the 30 s goal at {label}",
            max(opens),
            30.0,
            "s",
            "goal",
            target=1.0,
            higher_is_better=False,
        ),
        Comparison(
            f"peak RSS after open at {label}",
            min(rss),
            min(legacy_rss),
            "MiB",
            "same store, index built by decoding",
            higher_is_better=False,
            notes=f"ours {_span(rss)}; baseline {_span(legacy_rss)}",
        ),
        Comparison(
            f"subject lookup p50 at {label}",
            min(p50s["big"]),
            min(p50s["small"]),
            "µs",
            f"same reads at {SMALL:,} entries",
            higher_is_better=False,
            notes=f"ours {_span(p50s['big'])}; baseline {_span(p50s['small'])}",
        ),
        Comparison(
            f"subject lookup p99 at {label}",
            min(p99s["big"]),
            min(p99s["small"]),
            "µs",
            f"same reads at {SMALL:,} entries",
            target=1 / 1.5,
            higher_is_better=False,
            notes=f"ours {_span(p99s['big'])}; baseline {_span(p99s['small'])}",
        ),
    ]


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "open":
        path, keep = Path(argv[1]), len(argv) < 3 or argv[2] == "keep"
        started = time.perf_counter()
        store = ListStore(path, AvroSerde(), own_city=SUZHOU, read_only=not keep)
        seconds = time.perf_counter() - started
        store.close()
        rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"seconds": seconds, "rss_mib": rss_mib}))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
