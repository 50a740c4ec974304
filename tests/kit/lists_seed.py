"""Seed a node's list store with many entries fast, through the store's own batches.

Building a large store through the book (one decision, one change, one published event each)
takes as long as the decisions would; the scale tests and benches only need the state a node
holds, so this writes entries straight through :class:`~services.lists.store.StoreBatch`.

    seed_entries(store, count=1_000_000, issuing_city="320500")
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from rocksdict import Options, Rdict

from services.lists.model import (
    EntryStatus,
    ListEntry,
    ListType,
    SubjectType,
    entry_key_for,
)
from services.lists.store import _DIGEST, _DIGEST_BUILT, ListStore
from tests.kit.lists import organisation_key

CHUNK = 5_000
_UPDATED = datetime(2024, 6, 3, 9, 0, tzinfo=UTC)


def seeded_entry(n: int, issuing_city: str) -> ListEntry:
    """The ``n``-th seeded entry: a black-list designation of organisation ``n``."""
    subject = organisation_key(n)
    reference = f"苏市监信〔2024〕种{n}号"
    return ListEntry(
        entry_key=entry_key_for(issuing_city, ListType.BLACK, subject, "SZ-SCJGJ", reference),
        list_type=ListType.BLACK,
        list_name="严重失信主体名单",
        issuing_city=issuing_city,
        issuing_department_code="SZ-SCJGJ",
        issuing_department_name="苏州市市场监督管理局",
        subject_key=subject,
        subject_type=SubjectType.ORGANISATION,
        subject_name=f"苏州种子{n}有限公司",
        legal_basis="《市场监督管理严重违法失信名单管理办法》第十条",
        decision_reference=reference,
        effective_from=date(2024, 6, 3),
        expires_at=date(2027, 6, 2),
        status=EntryStatus.ACTIVE,
        removal_reason=None,
        version=1,
        updated_at=_UPDATED,
    )


def seed_entries(store: ListStore, *, count: int, issuing_city: str, start: int = 0) -> None:
    """Write ``count`` entries issued by ``issuing_city`` (entries ``start`` .. on)."""
    for first in range(start, start + count, CHUNK):
        batch = store.batch()
        for n in range(first, min(first + CHUNK, start + count)):
            batch.put_entry(seeded_entry(n, issuing_city))
        store.commit(batch)


def drop_index_lines(path: Path) -> None:
    """Make a closed store look like one written before the digest index had lines of its
    own (its next open builds them by decoding every entry)."""
    raw = Rdict(str(path), Options(raw_mode=True))
    stale = []
    iterator = raw.iter()
    iterator.seek(_DIGEST)
    while iterator.valid() and bytes(iterator.key()).startswith(_DIGEST):
        stale.append(bytes(iterator.key()))
        iterator.next()
    for key in [*stale, _DIGEST_BUILT]:
        del raw[key]
    raw.close()
