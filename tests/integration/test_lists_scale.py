"""A short form of the scale bench: a store of 20,000 seeded entries restarts from its
digest index without decoding entries, and reads a subject about as fast as a small one."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from services.common.avro import AvroSerde
from services.lists.store import ListStore
from tests.kit.lists import SUZHOU, organisation_key
from tests.kit.lists_seed import drop_index_lines, seed_entries

pytestmark = [pytest.mark.slow]

ENTRIES = 20_000
SMALL = 2_000
SERDE = AvroSerde()


def _seeded(path: Path, count: int) -> None:
    store = ListStore(path, SERDE, own_city=SUZHOU)
    seed_entries(store, count=count, issuing_city=SUZHOU)
    store.close()


def _open_seconds(path: Path, *, read_only: bool = False) -> tuple[float, ListStore]:
    started = time.perf_counter()
    store = ListStore(path, SERDE, own_city=SUZHOU, read_only=read_only)
    return time.perf_counter() - started, store


def _lookup_p99(store: ListStore, count: int) -> float:
    rng = random.Random(3)
    latencies = []
    for _ in range(2_000):
        started = time.perf_counter()
        assert store.entries_of_subject(organisation_key(rng.randrange(count)))
        latencies.append(time.perf_counter() - started)
    return sorted(latencies)[int(len(latencies) * 0.99)]


def test_a_large_store_restarts_from_its_index_and_reads_like_a_small_one(tmp_path: Path) -> None:
    big, small = tmp_path / "big", tmp_path / "small"
    _seeded(big, ENTRIES)
    _seeded(small, SMALL)

    opened, store = _open_seconds(big)
    assert store.entry_count(SUZHOU) == ENTRIES
    store.close()
    # The same open, the index built by decoding every entry (as a store without its lines).

    drop_index_lines(big)
    decoded, store = _open_seconds(big, read_only=True)
    assert store.entry_count(SUZHOU) == ENTRIES
    store.close()
    # Margin for a shared machine: the bench shows the ratio, this only that it holds.
    assert opened * 3 < decoded, (opened, decoded)

    _open_seconds(big)[1].close()  # writes the index lines back
    reopened, store = _open_seconds(big)
    assert reopened * 3 < decoded, (reopened, decoded)
    big_p99 = min(_lookup_p99(store, ENTRIES) for _ in range(3))
    store.close()
    _, small_store = _open_seconds(small)
    small_p99 = min(_lookup_p99(small_store, SMALL) for _ in range(3))
    small_store.close()
    assert big_p99 <= 3 * small_p99, (big_p99, small_p99)
