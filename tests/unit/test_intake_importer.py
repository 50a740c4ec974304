"""The importing process's collector setting while imports run (no broker)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from services.intake import importer


@pytest.fixture
def threshold() -> Iterator[tuple[int, int, int]]:
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield gc.get_threshold()
    gc.set_threshold(*before)


def test_imports_raise_the_first_threshold_and_the_last_one_restores_it(
    threshold: tuple[int, int, int],
) -> None:
    raised = (importer.IMPORT_GC_THRESHOLD, threshold[1], threshold[2])
    with importer.collecting_less():
        assert gc.get_threshold() == raised
        with importer.collecting_less():  # a second import of the same process
            assert gc.get_threshold() == raised
        assert gc.get_threshold() == raised
    assert gc.get_threshold() == threshold


def test_a_failed_import_restores_it_and_a_higher_setting_is_kept(
    threshold: tuple[int, int, int],
) -> None:
    with pytest.raises(RuntimeError), importer.collecting_less():
        raise RuntimeError("the broker went away")
    assert gc.get_threshold() == threshold
    gc.set_threshold(50_000, 20, 30)
    with importer.collecting_less():
        assert gc.get_threshold() == (50_000, 20, 30)
    assert gc.get_threshold() == (50_000, 20, 30)
