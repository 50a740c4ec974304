"""The bounded memo: never more than its limit, forgotten whole when full."""

from __future__ import annotations

import pytest

from services.common.memo import BoundedMemo


def test_it_remembers_and_returns_the_value() -> None:
    memo: BoundedMemo[str, int] = BoundedMemo(3)
    assert memo.remember("a", 1) == 1
    assert memo.get("a") == 1
    assert memo.get("b") is None


def test_it_never_holds_more_than_its_limit() -> None:
    memo: BoundedMemo[int, int] = BoundedMemo(3)
    for n in range(10):
        memo.remember(n, n * n)
        assert len(memo) <= 3
        assert memo[n] == n * n  # the newest is always kept
    assert set(memo) == {9}  # full at 9: everything before it forgotten


def test_a_key_remembered_again_replaces_its_value() -> None:
    memo: BoundedMemo[str, int] = BoundedMemo(2)
    memo.remember("a", 1)
    memo.remember("a", 2)
    assert memo == {"a": 2}


@pytest.mark.parametrize("limit", [0, -1])
def test_a_limit_below_one_is_refused(limit: int) -> None:
    with pytest.raises(ValueError, match="at least one entry"):
        BoundedMemo(limit)
