"""Settings, logging masks and the region registry."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import structlog

from services.common.logging import configure_logging, get_logger, mask_resident_ids
from services.common.region import RegionConfigError, load_region
from services.common.settings import REPO_ROOT, SettingsError, load_settings

REGION_FILE = REPO_ROOT / "deploy" / "config" / "region.yaml"


def test_settings_defaults_and_topic_prefix() -> None:
    settings = load_settings({"CREDITLINK_CITY": "Wuxi", "CREDITLINK_TOPIC_PREFIX": "wuxi."})
    assert settings.city == "wuxi"
    assert settings.topic("credit.records.v1") == "wuxi.credit.records.v1"


def test_settings_report_every_problem_at_once() -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(
            {
                "KAFKA_BOOTSTRAP": "localhost",
                "CREDITLINK_TOPIC_PREFIX": "suzhou",
                "CREDITLINK_LOG_LEVEL": "loud",
                "CREDITLINK_REGION_FILE": "/nonexistent/region.yaml",
            }
        )
    message = str(raised.value)
    for variable in (
        "KAFKA_BOOTSTRAP",
        "CREDITLINK_TOPIC_PREFIX",
        "CREDITLINK_LOG_LEVEL",
        "CREDITLINK_REGION_FILE",
    ):
        assert variable in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("id 32050519900307123X here", "id 320505************ here"),
        ("32050519900307123x", "320505************"),
        (
            "two: 110101199003071234,320583198512310016",
            "two: 110101************,320583************",
        ),
        # Not an ID number: 19 digits, or embedded in a longer token.
        ("order 1234567890123456789", "order 1234567890123456789"),
        ("A32050519900307123X", "A32050519900307123X"),
    ],
)
def test_mask_resident_ids(text: str, expected: str) -> None:
    assert mask_resident_ids(text) == expected


def test_log_lines_are_json_with_context_and_no_raw_id(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(city="suzhou", service="intake", level="info")
    try:
        get_logger(subject_key="N:abc").info(
            "record rejected",
            payload={"id_number": "32050519900307123X"},
            ids=["110101199003071234"],
        )
        logging.getLogger("aiokafka").warning("library says 320505199003071234")
        try:
            raise ValueError("bad id 320505199003071234")
        except ValueError:
            get_logger().exception("failed")
    finally:
        structlog.reset_defaults()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["event"] == "record rejected"
    assert lines[0]["city"] == "suzhou"
    assert lines[0]["service"] == "intake"
    assert lines[0]["subject_key"] == "N:abc"
    text = json.dumps(lines, ensure_ascii=False)
    for raw in ("32050519900307123X", "110101199003071234", "320505199003071234"):
        assert raw not in text
    assert any("library says 320505****" in json.dumps(line) for line in lines)


def test_region_registry_loads_the_demo_region() -> None:
    region = load_region(REGION_FILE)
    assert region.city("suzhou").admin_code == "320500"
    assert region.city("wuxi").admin_code == "320200"
    assert region.city("changzhou").admin_code == "320400"
    assert {c.key for c in region.peers_of("suzhou")} == {"wuxi", "changzhou"}
    # A county-level code resolves to its own entry when listed, else to its prefecture.
    assert region.by_admin_code("320509") is region.city("wujiang")
    assert region.by_admin_code("320583") is region.city("suzhou")
    assert region.by_admin_code("440300") is None
    with pytest.raises(RegionConfigError, match="unknown city 'nanjing'"):
        region.city("nanjing")


def test_region_registry_rejects_a_bad_code(tmp_path: Path) -> None:
    bad = tmp_path / "region.yaml"
    bad.write_text("cities:\n  x:\n    name: X\n    admin_code: '3205'\n", encoding="utf-8")
    with pytest.raises(RegionConfigError, match="6-digit"):
        load_region(bad)
