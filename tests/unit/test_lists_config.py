"""The lists service's configuration: defaults, and every problem named at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.region import load_region
from services.common.settings import SettingsError, load_settings
from services.lists.config import ListsConfig, load_lists_config


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


def test_defaults(tmp_path: Path) -> None:
    config = _load(_environment(tmp_path))
    assert (config.reconcile_seconds, config.expiry_seconds, config.retention_days) == (
        300.0,
        60.0,
        365,
    )
    assert config.bind == load_region(load_settings(_environment(tmp_path)).region_file).city(
        "wuxi"
    ).endpoint("lists")


def test_every_problem_is_named_at_once(tmp_path: Path) -> None:
    environment = _environment(
        tmp_path, CREDITLINK_LISTS_RECONCILE_SECONDS="soon", CREDITLINK_LISTS_RETENTION_DAYS="0"
    )
    with pytest.raises(SettingsError) as refused:
        _load(environment)
    message = str(refused.value)
    assert "CREDITLINK_LISTS_RECONCILE_SECONDS: 'soon'" in message
    assert "CREDITLINK_LISTS_RETENTION_DAYS: '0'" in message
