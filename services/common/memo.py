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
    """A dict of at most ``limit`` entries and, when ``max_bytes`` is given, of at most that
    many bytes as :meth:`remember` is told them; :meth:`remember` is the only way in.

    The byte bound is for answers whose size the caller decides (a credit check's memberships
    grow with the subject's entries): an entry limit alone would let a few large answers pin
    memory. A value larger than ``max_bytes`` by itself is not kept.
    """

    __slots__ = ("held_bytes", "limit", "max_bytes")

    def __init__(self, limit: int, *, max_bytes: int | None = None) -> None:
        if limit < 1:
            raise ValueError(f"a memo holds at least one entry, not {limit}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"a memo holds at least one byte, not {max_bytes}")
        super().__init__()
        self.limit = limit
        self.max_bytes = max_bytes
        self.held_bytes = 0

    def remember(self, key: K, value: V, size: int = 0) -> V:
        """Keep ``value`` for ``key`` (forgetting everything first if full); return it.
        ``size`` is what the entry costs in bytes, counted against ``max_bytes``."""
        bound = self.max_bytes
        if bound is not None:
            if size > bound:
                return value
            if self.held_bytes + size > bound:
                self.clear()
        if len(self) >= self.limit:
            self.clear()
        # A key remembered again counts again until the next clear: an overestimate, so the
        # bound still holds.
        self.held_bytes += size
        self[key] = value
        return value

    def clear(self) -> None:
        super().clear()
        self.held_bytes = 0
