"""Settings, logging masks and the region registry."""

from __future__ import annotations

import json
import logging
import unicodedata
from datetime import date
from pathlib import Path

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

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
        # Glued to what comes before it, written with separators or in other digits.
        ("A32050519900307123X", "A320505************"),
        ("ID320505199003071234", "ID320505************"),
        ("身份证号320505199003071234号", "身份证号320505************号"),
        ("３２０５０５１９９００３０７１２３Ｘ", "320505************"),
        ("32050519900307123×", "320505************"),
        ("320505 19900307 1234", "320505************"),
        ("3205-0519-9003-0712-3x", "320505************"),
        ("320505\u3000199003071234", "320505************"),
        ("3205051990\u200b03071234", "320505************"),
        ("tel 0512 6666 8888 320505 19900307 1234", "tel 0512 6666 8888 320505************"),
    ],
)
def test_mask_resident_ids(text: str, expected: str) -> None:
    assert mask_resident_ids(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "order 1234567890123456789",  # 19 digits in a row: a record id, not an ID number
        "3205051990030712345",
        "N:" + "ab123456789012345678cd" * 3,  # 18 digits inside a pseudonym
        "00-4bf92f3577b34da6a3ce929d012345678901234567-00f067aa0ba902b7-01",
        "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "L:91320500MA1W8XY409",
        "注册号 320500000012345",  # 15 digits: a business registration number
        "2024-01-01 2024-01-02 2024-01-03",  # separated digits whose 7-14 are not a date
        "电话 0512-6666 8888，罚款 100 000 元",
        "12345678901234567",  # 17 digits
    ],
)
def test_what_is_not_an_id_number_is_left_alone(text: str) -> None:
    assert mask_resident_ids(text) == text


_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_SEPARATORS = (" ", "-", "\u3000", "\u00a0", "\u2014", "\uff0d", "\u200b", "\u2009", "\u00ad")
_CHECK_FORMS = {"X": ("X", "x", "Ｘ", "ｘ", "×")}
_GLUE = ("", "ID", "id", "No.", "A", "x", "身份证号", "身份证号：", "证件号码 ", "（", "\t")


def _gb11643(first17: str) -> str:
    """GB 11643-1999 check character, computed here independently of services/common."""
    return "10X98765432"[sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True)) % 11]


@st.composite
def resident_ids(draw: st.DrawFn) -> str:
    division = draw(st.from_regex(r"[1-8][0-9]{5}", fullmatch=True))
    born = draw(st.dates(date(1900, 1, 1), date(2025, 12, 31)))
    first17 = f"{division}{born:%Y%m%d}{draw(st.integers(0, 999)):03d}"
    return first17 + _gb11643(first17)


@st.composite
def rendered(draw: st.DrawFn, number: str) -> str:
    """``number`` as people type it: ASCII or full-width digits, any form of X, with
    separators anywhere between its characters."""
    pieces = []
    for index, char in enumerate(number):
        if char in _CHECK_FORMS:
            pieces.append(draw(st.sampled_from(_CHECK_FORMS[char])))
        else:
            pieces.append(chr(ord(char) + 0xFEE0) if draw(st.booleans()) else char)
        if index < len(number) - 1:
            gap = draw(st.lists(st.sampled_from(_SEPARATORS), max_size=3))
            pieces.append("".join(gap) if draw(st.integers(0, 3)) == 0 else "")
    return "".join(pieces)


def _no_digit_even_normalised(char: str) -> bool:
    return not any(c.isdigit() for c in unicodedata.normalize("NFKC", char))


# Surrounding text: anything but digits (a number that runs on into more digits is a longer
# number) and hexadecimal letters (a long hex token is a hash, left alone by rule).
_TEXT = st.text(
    st.characters(blacklist_categories=("Nd", "Cs"), blacklist_characters="abcdefABCDEF").filter(
        _no_digit_even_normalised
    ),
    max_size=40,
)


@given(st.data(), resident_ids(), _TEXT, st.sampled_from(_GLUE), _TEXT)
def test_no_resident_id_survives_masking_in_any_form(
    data: st.DataObject, number: str, before: str, glue: str, after: str
) -> None:
    text = before + glue + data.draw(rendered(number)) + after
    masked = mask_resident_ids(text)
    digits = "".join(c for c in unicodedata.normalize("NFKC", masked) if c.isdigit())
    assert digits == number[:6], (text, masked)


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
