"""Working days on the Chinese official calendar and the 双公示 7-working-day deadline.

Expected deadlines are counted by hand in the comments: "1" is the first working day after
the decision date, which itself is never counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

import chinese_calendar
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common import workdays
from services.common.workdays import (
    DEFAULT_SUPPLEMENT_PATH,
    DISCLOSURE_WORKING_DAYS,
    SUPPLEMENT_ENV,
    CalendarConfigError,
    CalendarNotCovered,
    WorkdayCalendar,
    YearSupplement,
    add_working_days,
    default_calendar,
    disclosure_deadline,
    is_timely,
    is_working_day,
    load_supplements,
    working_days_between,
)


def days(first: date, last: date) -> list[date]:
    return [first + timedelta(n) for n in range((last - first).days + 1)]


# The State Council notices, transcribed by hand:
# 国务院办公厅关于2025年 / 2026年部分节假日安排的通知.
OFFICIAL_2025 = YearSupplement(
    year=2025,
    source="国务院办公厅关于2025年部分节假日安排的通知 (transcribed for the test)",
    holidays=frozenset(
        [
            date(2025, 1, 1),
            *days(date(2025, 1, 28), date(2025, 2, 4)),  # Spring Festival
            *days(date(2025, 4, 4), date(2025, 4, 6)),  # Qingming
            *days(date(2025, 5, 1), date(2025, 5, 5)),  # Labour Day
            *days(date(2025, 5, 31), date(2025, 6, 2)),  # Dragon Boat
            *days(date(2025, 10, 1), date(2025, 10, 8)),  # National Day + Mid-Autumn
        ]
    ),
    workdays=frozenset(
        {date(2025, 1, 26), date(2025, 2, 8), date(2025, 4, 27)}
        | {date(2025, 9, 28), date(2025, 10, 11)}
    ),
)
OFFICIAL_2026 = YearSupplement(
    year=2026,
    source="国务院办公厅关于2026年部分节假日安排的通知 (transcribed for the test)",
    holidays=frozenset(
        [
            *days(date(2026, 1, 1), date(2026, 1, 3)),  # New Year
            *days(date(2026, 2, 15), date(2026, 2, 23)),  # Spring Festival
            *days(date(2026, 4, 4), date(2026, 4, 6)),  # Qingming
            *days(date(2026, 5, 1), date(2026, 5, 5)),  # Labour Day
            *days(date(2026, 6, 19), date(2026, 6, 21)),  # Dragon Boat
            *days(date(2026, 9, 25), date(2026, 9, 27)),  # Mid-Autumn
            *days(date(2026, 10, 1), date(2026, 10, 7)),  # National Day
        ]
    ),
    workdays=frozenset(
        {date(2026, 1, 4), date(2026, 2, 14), date(2026, 2, 28), date(2026, 5, 9)}
        | {date(2026, 9, 20), date(2026, 10, 10)}
    ),
)


@pytest.fixture(autouse=True)
def fresh_default_calendar(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(SUPPLEMENT_ENV, raising=False)
    default_calendar.cache_clear()
    yield
    default_calendar.cache_clear()


# --- the official dates, as the package has them -----------------------------------------


@pytest.mark.parametrize("official", [OFFICIAL_2025, OFFICIAL_2026], ids=lambda s: str(s.year))
def test_package_data_matches_the_transcribed_notice_day_by_day(official: YearSupplement) -> None:
    # Both directions: every listed date is in the package's own tables, and a calendar built
    # only from the transcription agrees with the package on every day of the year.
    assert official.holidays <= set(chinese_calendar.holidays)
    assert official.workdays == {d for d in chinese_calendar.workdays if d.year == official.year}
    transcribed = WorkdayCalendar([official], use_package=False)
    for day in days(date(official.year, 1, 1), date(official.year, 12, 31)):
        assert transcribed.is_working_day(day) is chinese_calendar.is_workday(day), day
        assert is_working_day(day) is chinese_calendar.is_workday(day), day


def test_2025_national_day_and_its_make_up_days() -> None:
    assert date(2025, 9, 28).weekday() == 6  # Sunday, worked
    assert date(2025, 10, 11).weekday() == 5  # Saturday, worked
    assert is_working_day(date(2025, 9, 28))
    assert is_working_day(date(2025, 10, 11))
    assert not any(is_working_day(d) for d in days(date(2025, 10, 1), date(2025, 10, 8)))
    assert not is_working_day(date(2025, 10, 12))  # an ordinary Sunday


@given(day=st.dates(min_value=date(2004, 1, 1), max_value=date(2026, 12, 31)))
def test_agrees_with_the_package_on_every_covered_day(day: date) -> None:
    assert is_working_day(day) is chinese_calendar.is_workday(day)


# --- deadlines counted by hand ---------------------------------------------------------


@pytest.mark.parametrize(
    ("decision", "deadline"),
    [
        # Fri 2025-09-26: Sat 27 off; Sun 28 (make-up) 1; Mon 29 2; Tue 30 3; Oct 1–8 off;
        # Thu 9 4; Fri 10 5; Sat 11 (make-up) 6; Sun 12 off; Mon 13 7.
        # (Mon–Fri counting would say Tue 7 Oct, in the middle of the holiday.)
        (date(2025, 9, 26), date(2025, 10, 13)),
        # Decided on the make-up Sunday 2025-09-28: 29 1; 30 2; Oct 9 3; 10 4; 11 5; 13 6;
        # 14 7.
        (date(2025, 9, 28), date(2025, 10, 14)),
        # Decided during the holiday, Fri 2025-10-03: Oct 9 1; 10 2; 11 3; 13 4; 14 5; 15 6;
        # 16 7.
        (date(2025, 10, 3), date(2025, 10, 16)),
        # Fri 2025-01-24 before Spring Festival: Sat 25 off; Sun 26 (make-up) 1; Mon 27 2;
        # Jan 28–Feb 4 off; Wed 5 3; Thu 6 4; Fri 7 5; Sat 8 (make-up) 6; Sun 9 off; Mon 10 7.
        (date(2025, 1, 24), date(2025, 2, 10)),
        # An ordinary week, Tue 2025-06-10: 11 1; 12 2; 13 3; 16 4; 17 5; 18 6; 19 7.
        (date(2025, 6, 10), date(2025, 6, 19)),
        # Across the year end, Mon 2025-12-29: Tue 30 1; Wed 31 2; Jan 1–3 off; Sun 4
        # (make-up) 3; Mon 5 4; Tue 6 5; Wed 7 6; Thu 8 7.
        (date(2025, 12, 29), date(2026, 1, 8)),
        # Thu 2026-02-12 before Spring Festival: Fri 13 1; Sat 14 (make-up) 2; Feb 15–23 off;
        # Tue 24 3; 25 4; 26 5; Fri 27 6; Sat 28 (make-up) 7 — due on a Saturday.
        (date(2026, 2, 12), date(2026, 2, 28)),
        # Thu 2026-09-24: Sep 25–27 (Mid-Autumn) off; Mon 28 1; 29 2; 30 3; Oct 1–7 off;
        # Thu 8 4; Fri 9 5; Sat 10 (make-up) 6; Sun 11 off; Mon 12 7.
        (date(2026, 9, 24), date(2026, 10, 12)),
        # Fri 2026-12-18: Dec 21–25 1–5; Mon 28 6; Tue 29 7 — stays inside 2026.
        (date(2026, 12, 18), date(2026, 12, 29)),
    ],
)
def test_disclosure_deadline(decision: date, deadline: date) -> None:
    assert disclosure_deadline(decision) == deadline
    assert working_days_between(decision, deadline) == DISCLOSURE_WORKING_DAYS
    assert is_working_day(deadline)
    assert is_timely(decision, deadline)
    assert not is_timely(decision, deadline + timedelta(days=1))


def test_is_timely_edges() -> None:
    decision = date(2025, 9, 26)
    assert is_timely(decision, decision)  # same day
    assert is_timely(decision, date(2025, 10, 7))  # in the holiday, before the deadline
    assert is_timely(decision, date(2025, 10, 13))
    assert not is_timely(decision, date(2025, 10, 14))
    assert is_timely(decision, date(2025, 10, 16), working_days=10)
    with pytest.raises(ValueError, match="before the decision"):
        is_timely(decision, date(2025, 9, 25))


def test_deadline_parameter() -> None:
    assert DISCLOSURE_WORKING_DAYS == 7
    assert disclosure_deadline(date(2025, 9, 26), working_days=1) == date(2025, 9, 28)
    assert disclosure_deadline(date(2025, 9, 26), working_days=4) == date(2025, 10, 9)
    with pytest.raises(ValueError, match="at least 1"):
        disclosure_deadline(date(2025, 9, 26), working_days=0)


def test_add_working_days_zero_and_backwards() -> None:
    assert add_working_days(date(2025, 10, 4), 0) == date(2025, 10, 4)
    assert add_working_days(date(2025, 10, 9), -1) == date(2025, 9, 30)
    # Back from Mon 13 Oct: Sat 11 1; Fri 10 2; Thu 9 3; Sep 30 4; 29 5; Sun 28 6; Fri 26 7.
    assert add_working_days(date(2025, 10, 13), -7) == date(2025, 9, 26)


def test_working_days_between() -> None:
    assert working_days_between(date(2025, 9, 30), date(2025, 10, 9)) == 1  # only Oct 9
    assert working_days_between(date(2025, 10, 13), date(2025, 9, 26)) == -7
    assert working_days_between(date(2025, 10, 5), date(2025, 10, 5)) == 0
    # 2025: 261 weekdays − 18 weekday holidays + 5 make-up days = 248
    # (= 365 − 104 weekend days − 13 statutory holidays).
    assert working_days_between(date(2024, 12, 31), date(2025, 12, 31)) == 248
    # 2026: 261 weekdays − 19 weekday holidays + 6 make-up days = 248.
    assert working_days_between(date(2025, 12, 31), date(2026, 12, 31)) == 248
    # Multi-year spans add up year by year.
    assert working_days_between(date(2024, 12, 31), date(2026, 12, 31)) == 496


def test_datetimes_count_on_their_own_date() -> None:
    assert is_working_day(datetime(2025, 10, 11, 9, 30))
    assert disclosure_deadline(datetime(2025, 9, 26, 23, 59)) == date(2025, 10, 13)


@given(
    start=st.dates(min_value=date(2004, 1, 1), max_value=date(2026, 10, 15)),
    n=st.integers(min_value=0, max_value=40),
)
def test_add_and_between_are_inverse(start: date, n: int) -> None:
    end = add_working_days(start, n)
    assert working_days_between(start, end) == n
    if n:
        assert is_working_day(end)
        assert working_days_between(start, end - timedelta(days=1)) == n - 1


@given(
    start=st.dates(min_value=date(2004, 3, 1), max_value=date(2026, 12, 31)),
    k=st.integers(min_value=1, max_value=40),
)
def test_counting_backwards(start: date, k: int) -> None:
    earlier = add_working_days(start, -k)
    assert is_working_day(earlier)
    one_day = timedelta(days=1)
    assert working_days_between(earlier - one_day, start - one_day) == k


# --- years the package does not cover ---------------------------------------------------


def test_uncovered_year_raises_naming_the_year() -> None:
    with pytest.raises(CalendarNotCovered, match="does not cover 2027") as caught:
        is_working_day(date(2027, 1, 4))
    assert caught.value.year == 2027
    assert "2004–2026" in str(caught.value)
    with pytest.raises(CalendarNotCovered, match="2003"):
        is_working_day(date(2003, 12, 31))
    # A deadline that runs into 2027: Dec 29, 30, 31 are 1–3, then 2027 is unknown.
    with pytest.raises(CalendarNotCovered, match="2027"):
        disclosure_deadline(date(2026, 12, 28))
    with pytest.raises(CalendarNotCovered, match="2027"):
        is_timely(date(2026, 12, 28), date(2027, 1, 11))
    with pytest.raises(CalendarNotCovered, match="2027"):
        working_days_between(date(2026, 12, 1), date(2027, 1, 1))
    # Within 7 calendar days a report is on time under any calendar: no need to know 2027.
    assert is_timely(date(2026, 12, 30), date(2027, 1, 5))


# Synthetic dates for the test only — NOT the official 2027 arrangements.
SYNTHETIC_2027 = """\
version: 1
years:
  2027:
    source: "synthetic test fixture, not an official notice"
    holidays: [2027-01-01]
    workdays: ["2027-01-02"]
"""


def test_supplement_covers_a_year(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "calendar.yaml"
    path.write_text(SYNTHETIC_2027, encoding="utf-8")
    calendar = WorkdayCalendar.from_yaml(path)
    assert calendar.covers(2027)
    assert calendar.supplemented_years == (2027,)
    assert not calendar.is_working_day(date(2027, 1, 1))  # Friday, listed holiday
    assert calendar.is_working_day(date(2027, 1, 2))  # Saturday, listed make-up day
    assert not calendar.is_working_day(date(2027, 1, 3))  # an unlisted Sunday
    assert calendar.is_working_day(date(2027, 3, 3))  # an unlisted Wednesday
    # Mon 2026-12-28: Tue 29 1; Wed 30 2; Thu 31 3; Fri Jan 1 off; Sat 2 (make-up) 4;
    # Mon 4 5; Tue 5 6; Wed 6 7.
    assert calendar.disclosure_deadline(date(2026, 12, 28)) == date(2027, 1, 6)
    with pytest.raises(CalendarNotCovered, match="2028"):
        calendar.is_working_day(date(2028, 1, 3))

    monkeypatch.setenv(SUPPLEMENT_ENV, str(path))
    default_calendar.cache_clear()
    assert disclosure_deadline(date(2026, 12, 28)) == date(2027, 1, 6)


def test_supplement_overrides_a_covered_year() -> None:
    local_closure = YearSupplement(
        year=2025, source="synthetic correction", holidays=frozenset({date(2025, 6, 10)})
    )
    calendar = WorkdayCalendar([local_closure])
    assert not calendar.is_working_day(date(2025, 6, 10))
    assert calendar.is_working_day(date(2025, 6, 11))
    assert not calendar.is_working_day(date(2025, 10, 1))  # the package still applies


def test_repository_supplement_file_loads_and_invents_no_year() -> None:
    assert load_supplements(DEFAULT_SUPPLEMENT_PATH) == []
    assert not default_calendar().covers(2027)
    assert default_calendar().covers(2026)


def test_without_the_package_only_supplemented_years_are_known() -> None:
    calendar = WorkdayCalendar([OFFICIAL_2025], use_package=False)
    with pytest.raises(CalendarNotCovered, match="package is not consulted"):
        calendar.is_working_day(date(2024, 6, 3))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("years: {2027: {holidays: [2027-01-01]}}", "'source'"),
        ("years: {2027: {source: x, holidays: [2028-01-01]}}", "not in 2027"),
        ("years: {2027: {source: x, workdays: [2027-01-04]}}", "Monday"),
        (
            "years: {2027: {source: x, holidays: [2027-01-02], workdays: [2027-01-02]}}",
            "holiday and as workday",
        ),
        ("years: {2027: {source: x, holidays: [not-a-date]}}", "not a date"),
        ("years: {2027: {source: x, holidays: 2027-01-01}}", "list of dates"),
        ("years: {next: {source: x}}", "year must be a number"),
        ("years: [2027]", "'years' must map"),
        ("version: 2\nyears: {}", "unsupported version"),
        ("- 1\n- 2", "expected a mapping"),
        ("years: {2027: [", "cannot read"),
    ],
)
def test_malformed_supplement_is_rejected_with_the_reason(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "calendar.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CalendarConfigError, match=message) as caught:
        load_supplements(path)
    assert str(path) in str(caught.value)


def test_missing_named_supplement_fails_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SUPPLEMENT_ENV, str(tmp_path / "absent.yaml"))
    with pytest.raises(CalendarConfigError, match=r"absent\.yaml"):
        is_working_day(date(2025, 1, 2))


def test_a_year_cannot_be_supplied_twice() -> None:
    with pytest.raises(CalendarConfigError, match="twice"):
        WorkdayCalendar([OFFICIAL_2025, OFFICIAL_2025])


def test_module_exports() -> None:
    assert set(workdays.__all__) <= set(dir(workdays))


def test_the_china_day_turns_at_midnight_in_shanghai_whatever_the_machine_zone() -> None:
    from datetime import UTC, date, datetime

    from services.common.clock import china_today

    assert china_today(datetime(2026, 12, 1, 15, 59, 59, tzinfo=UTC)) == date(2026, 12, 1)
    assert china_today(datetime(2026, 12, 1, 16, 0, 0, tzinfo=UTC)) == date(2026, 12, 2)
