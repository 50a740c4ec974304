"""A bounded memo: answers worked out once and looked up again, forgotten all at once when full.

Hot paths (the peer-call guard, credit checks, the list store, intake validation) remember
small answers that repeat; a caller can send unboundedly many distinct keys, so each memo has
a limit. Clearing it whole when the limit is reached costs one dict allocation per ``limit``
misses and needs no bookkeeping per hit, which an LRU would add to every lookup. It is a
``dict`` so that a hit is the builtin ``get``.
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedMemo(dict[K, V]):
    """A dict of at most ``limit`` entries; :meth:`remember` is the only way in."""

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a memo holds at least one entry, not {limit}")
        super().__init__()
        self.limit = limit

    def remember(self, key: K, value: V) -> V:
        """Keep ``value`` for ``key`` (forgetting everything first if full); return it."""
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value
