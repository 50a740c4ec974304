"""The lists service's configuration: defaults, and every problem named at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.region import load_region
from services.common.settings import SettingsError, load_settings
from services.lists.config import MAX_SERVING_PROCESSES, ListsConfig, load_lists_config


def _environment(tmp_path: Path, **overrides: str) -> dict[str, str]:
    for name in ("ca.crt", "wuxi.crt", "wuxi.key"):
        (tmp_path / name).write_text("test")
    return {
        "CREDITLINK_CITY": "wuxi",
        "KAFKA_BOOTSTRAP": "127.0.0.1:1",
        "CREDITLINK_TLS_DIR": str(tmp_path),
        **overrides,
    }


def _load(environment: dict[str, str]) -> ListsConfig:
    settings = load_settings(environment)
    return load_lists_config(settings, load_region(settings.region_file), environment)


@pytest.mark.parametrize(("raw", "expected"), [(None, 1), ("1", 1), (" 3 ", 3), ("64", 64)])
def test_serving_processes(tmp_path: Path, raw: str | None, expected: int) -> None:
    extra = {} if raw is None else {"CREDITLINK_LISTS_SERVING_PROCESSES": raw}
    config = _load(_environment(tmp_path, **extra))
    assert config.serving_processes == expected


@pytest.mark.parametrize("raw", ["0", "-1", "two", "1.5", str(MAX_SERVING_PROCESSES + 1)])
def test_a_wrong_number_of_serving_processes_is_named(tmp_path: Path, raw: str) -> None:
    environment = _environment(
        tmp_path, CREDITLINK_LISTS_SERVING_PROCESSES=raw, CREDITLINK_LISTS_RETENTION_DAYS="0"
    )
    with pytest.raises(SettingsError) as refused:
        _load(environment)
    message = str(refused.value)
    assert f"CREDITLINK_LISTS_SERVING_PROCESSES: {raw!r}" in message
    assert "CREDITLINK_LISTS_RETENTION_DAYS" in message  # every problem at once
