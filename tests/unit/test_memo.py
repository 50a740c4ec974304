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


def test_a_byte_bound_forgets_everything_before_it_would_be_passed() -> None:
    memo: BoundedMemo[int, bytes] = BoundedMemo(1000, max_bytes=100)
    for n in range(10):
        memo.remember(n, b"x" * 30, size=30)
        assert memo.held_bytes <= 100
        assert n in memo
    assert set(memo) == {9}  # 9 would have made 120 bytes with 6, 7 and 8


def test_a_value_larger_than_the_byte_bound_is_answered_but_not_kept() -> None:
    memo: BoundedMemo[str, bytes] = BoundedMemo(10, max_bytes=100)
    memo.remember("small", b"s", size=1)
    assert memo.remember("huge", b"h" * 500, size=500) == b"h" * 500
    assert "huge" not in memo
    assert memo == {"small": b"s"}


def test_clearing_forgets_the_bytes_too() -> None:
    memo: BoundedMemo[str, int] = BoundedMemo(10, max_bytes=100)
    memo.remember("a", 1, size=60)
    memo.clear()
    assert memo.held_bytes == 0
    memo.remember("b", 2, size=60)
    assert memo == {"b": 2}


def test_intake_keeps_no_text_padded_beyond_its_fields_limit() -> None:
    """The validation memos are keyed by the submitted text: a value padded to megabytes
    must not become a key (services/intake/validate/validation.py)."""
    from services.intake.validate import validation

    validation._CLEAN_TEXT.clear()
    validation._PENALTY_TYPES.clear()
    form = validation._Form(validation.ValidationContext.__new__(validation.ValidationContext))
    padded = "市场监督管理局" + " " * 100_000
    assert form.text({"name": padded}, "name", "name", limit=100) == "市场监督管理局"
    assert padded not in validation._CLEAN_TEXT
    listed = "警告," * 10_000
    assert validation._penalty_types(form, {"penalty_types": listed}, "p") == ["WARNING"]
    assert listed not in validation._PENALTY_TYPES
