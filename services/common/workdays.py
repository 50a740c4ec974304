"""Working days on the Chinese official calendar, and the 双公示 disclosure deadline.

A working day is Monday–Friday unless the State Council's annual holiday notice
(国务院办公厅关于部分节假日安排的通知) makes it a day off, plus the weekend make-up days
(调休上班) that notice declares. The dates come from the maintained ``chinesecalendar``
package (import name ``chinese_calendar``), which transcribes those notices.

For a year the package does not cover, this module refuses to guess: treating such a year
as plain Monday–Friday would silently move every deadline that crosses a Spring Festival.
It raises :class:`CalendarNotCovered` naming the year, until an operator supplies the year
in the supplement file (``deploy/config/calendar-supplement.yaml``, or the file named by
``CREDITLINK_CALENDAR_SUPPLEMENT``; its header documents the format).

Counting rule: a period "within N working days of" a date excludes that date itself and ends
with the Nth working day after it (Civil Code of the PRC, Art. 201: a period counted in days
starts on the next day). So::

    >>> disclosure_deadline(date(2025, 9, 26))   # Fri before the 2025 National Day holiday
    datetime.date(2025, 10, 13)

counts Sun 28 Sep (make-up day), Mon 29, Tue 30, Thu 9 Oct, Fri 10, Sat 11 (make-up day)
and Mon 13 Oct; 1–8 October are holidays.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import chinese_calendar
import yaml

from services.common.settings import REPO_ROOT

__all__ = [
    "DEFAULT_SUPPLEMENT_PATH",
    "DISCLOSURE_WORKING_DAYS",
    "SUPPLEMENT_ENV",
    "CalendarConfigError",
    "CalendarNotCovered",
    "WorkdayCalendar",
    "YearSupplement",
    "add_working_days",
    "default_calendar",
    "disclosure_deadline",
    "is_timely",
    "is_working_day",
    "load_supplements",
    "working_days_between",
]

# 双公示 (docs/design.md §4.2): administrative licensing and penalty decisions are disclosed within
# 7 working days of the decision date.
DISCLOSURE_WORKING_DAYS = 7

SUPPLEMENT_ENV = "CREDITLINK_CALENDAR_SUPPLEMENT"
DEFAULT_SUPPLEMENT_PATH = REPO_ROOT / "deploy" / "config" / "calendar-supplement.yaml"

_SATURDAY = 5


class CalendarNotCovered(LookupError):
    """No official working-day data for ``year``: neither the package nor the supplement."""

    def __init__(self, year: int, package_years: range | None = None) -> None:
        self.year = year
        known = (
            f"chinesecalendar {_package_version()} covers {package_years.start}–"
            f"{package_years.stop - 1}"
            if package_years
            else "the package is not consulted"
        )
        super().__init__(
            f"the working-day calendar does not cover {year} ({known}); add {year}'s official "
            f"holiday schedule to {DEFAULT_SUPPLEMENT_PATH.name} (or the file named by "
            f"{SUPPLEMENT_ENV}) or upgrade chinesecalendar"
        )


class CalendarConfigError(ValueError):
    """The supplement file is malformed; the message names the file and the entry."""


@dataclass(frozen=True, slots=True)
class YearSupplement:
    """Official holiday arrangements for one year, from ``source`` (the State Council notice).

    For a year the package does not cover, a supplement *is* that year's calendar: days not
    listed follow Monday–Friday. For a covered year, its dates override the package's.
    """

    year: int
    source: str
    holidays: frozenset[date] = field(default_factory=frozenset)
    workdays: frozenset[date] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        where = f"year {self.year}"
        if not self.source.strip():
            raise CalendarConfigError(f"{where}: 'source' must name the official notice")
        for day in sorted(self.holidays | self.workdays):
            if day.year != self.year:
                raise CalendarConfigError(f"{where}: {day.isoformat()} is not in {self.year}")
        if both := sorted(self.holidays & self.workdays):
            listed = ", ".join(day.isoformat() for day in both)
            raise CalendarConfigError(f"{where}: listed as holiday and as workday: {listed}")
        for day in sorted(self.workdays):
            if day.weekday() < _SATURDAY:
                raise CalendarConfigError(
                    f"{where}: make-up workday {day.isoformat()} is a {day:%A}, already a "
                    "working day; make-up days fall on a Saturday or Sunday"
                )


@dataclass(frozen=True, slots=True)
class _YearTable:
    # working[k] / worked_through[k]: day k (0 = 1 January) is a working day / the number of
    # working days from 1 January to day k inclusive.
    working: tuple[bool, ...]
    worked_through: tuple[int, ...]

    @property
    def total(self) -> int:
        return self.worked_through[-1]


def _package_version() -> str:
    try:
        return version("chinesecalendar")
    except PackageNotFoundError:
        return "(unknown version)"


@functools.cache
def _package_years() -> range:
    # chinese_calendar itself accepts exactly the years between its first and last holiday.
    years = [day.year for day in chinese_calendar.holidays]
    return range(min(years), max(years) + 1)


def _as_date(day: date) -> date:
    # A datetime counts on its own wall-clock date; set lookups need a plain date.
    return day.date() if isinstance(day, datetime) else day


class WorkdayCalendar:
    """Working days from ``chinesecalendar`` plus supplements; thread-safe for reading.

    >>> cal = WorkdayCalendar()
    >>> cal.is_working_day(date(2025, 10, 11))   # Saturday, National Day make-up day
    True
    """

    def __init__(
        self, supplements: Iterable[YearSupplement] = (), *, use_package: bool = True
    ) -> None:
        self._supplements: dict[int, YearSupplement] = {}
        for supplement in supplements:
            if supplement.year in self._supplements:
                raise CalendarConfigError(f"year {supplement.year} is supplied twice")
            self._supplements[supplement.year] = supplement
        self._package_years = _package_years() if use_package else None
        self._tables: dict[int, _YearTable] = {}

    @classmethod
    def from_yaml(cls, path: Path) -> WorkdayCalendar:
        """The package's calendar plus the supplements in ``path``."""
        return cls(load_supplements(path))

    @property
    def supplemented_years(self) -> tuple[int, ...]:
        return tuple(sorted(self._supplements))

    def covers(self, year: int) -> bool:
        return year in self._supplements or (
            self._package_years is not None and year in self._package_years
        )

    def _table(self, year: int) -> _YearTable:
        table = self._tables.get(year)
        if table is not None:
            return table
        if not self.covers(year):
            raise CalendarNotCovered(year, self._package_years)
        from_package = self._package_years is not None and year in self._package_years
        supplement = self._supplements.get(year)
        working: list[bool] = []
        day = date(year, 1, 1)
        while day.year == year:
            if supplement is not None and day in supplement.workdays:
                works = True
            elif supplement is not None and day in supplement.holidays:
                works = False
            elif from_package:
                works = bool(chinese_calendar.is_workday(day))
            else:
                works = day.weekday() < _SATURDAY
            working.append(works)
            day += timedelta(days=1)
        running = 0
        worked_through: list[int] = []
        for works in working:
            running += works
            worked_through.append(running)
        table = _YearTable(tuple(working), tuple(worked_through))
        self._tables[year] = table
        return table

    def _worked_through(self, day: date) -> int:
        return self._table(day.year).worked_through[day.timetuple().tm_yday - 1]

    def is_working_day(self, day: date) -> bool:
        day = _as_date(day)
        return self._table(day.year).working[day.timetuple().tm_yday - 1]

    def add_working_days(self, start: date, n: int) -> date:
        """The ``n``-th working day after ``start`` (``start`` itself is not counted).

        ``n == 0`` returns ``start``; a negative ``n`` gives the ``|n|``-th working day
        before ``start``.
        """
        day = _as_date(start)
        step = timedelta(days=1 if n >= 0 else -1)
        remaining = abs(n)
        while remaining:
            day += step
            if self.is_working_day(day):
                remaining -= 1
        return day

    def working_days_between(self, start: date, end: date) -> int:
        """Working days in ``(start, end]``; negative (``-(end, start]``) if ``end < start``."""
        start, end = _as_date(start), _as_date(end)
        if end < start:
            return -self.working_days_between(end, start)
        if start.year == end.year:
            return self._worked_through(end) - self._worked_through(start)
        count = self._table(start.year).total - self._worked_through(start)
        for year in range(start.year + 1, end.year):
            count += self._table(year).total
        return count + self._worked_through(end)

    def disclosure_deadline(
        self, decision_date: date, working_days: int = DISCLOSURE_WORKING_DAYS
    ) -> date:
        """The last day a decision may be disclosed on time under the 双公示 rule."""
        if working_days < 1:
            raise ValueError(f"working_days must be at least 1, got {working_days}")
        return self.add_working_days(decision_date, working_days)

    def is_timely(
        self,
        decision_date: date,
        reported_on: date,
        working_days: int = DISCLOSURE_WORKING_DAYS,
    ) -> bool:
        """Whether a report on ``reported_on`` meets the disclosure deadline.

        Raises ``ValueError`` for a report dated before its decision (a data error, not a
        late report) and :class:`CalendarNotCovered` only when the answer depends on an
        uncovered year: a report within ``working_days`` calendar days is on time under any
        calendar, since N working days never take fewer than N days.
        """
        decision_date, reported_on = _as_date(decision_date), _as_date(reported_on)
        if reported_on < decision_date:
            raise ValueError(
                f"reported on {reported_on.isoformat()}, before the decision of "
                f"{decision_date.isoformat()}"
            )
        if (reported_on - decision_date).days <= working_days:
            return True
        return reported_on <= self.disclosure_deadline(decision_date, working_days)


def _parse_day(value: Any, where: str) -> date:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise CalendarConfigError(f"{where}: {value!r} is not a date (YYYY-MM-DD)")


def _parse_days(entry: Mapping[str, Any], name: str, where: str) -> frozenset[date]:
    values = entry.get(name) or []
    if not isinstance(values, list):
        raise CalendarConfigError(f"{where}: {name!r} must be a list of dates")
    return frozenset(_parse_day(value, f"{where}.{name}") for value in values)


def load_supplements(path: Path) -> list[YearSupplement]:
    """Read a supplement file (format in ``deploy/config/calendar-supplement.yaml``)."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CalendarConfigError(f"{path}: cannot read calendar supplement: {exc}") from exc
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise CalendarConfigError(f"{path}: expected a mapping with 'version' and 'years'")
    if raw.get("version", 1) != 1:
        raise CalendarConfigError(f"{path}: unsupported version {raw.get('version')!r}")
    years = raw.get("years") or {}
    if not isinstance(years, dict):
        raise CalendarConfigError(f"{path}: 'years' must map a year to its arrangements")
    supplements: list[YearSupplement] = []
    for key, entry in years.items():
        where = f"{path}: years.{key}"
        if isinstance(key, bool) or not str(key).isdigit():
            raise CalendarConfigError(f"{where}: year must be a number such as 2027")
        if not isinstance(entry, dict):
            raise CalendarConfigError(f"{where}: expected a mapping (source, holidays, workdays)")
        source = entry.get("source")
        if not isinstance(source, str):
            raise CalendarConfigError(f"{where}: 'source' must name the official notice")
        try:
            supplements.append(
                YearSupplement(
                    year=int(key),
                    source=source,
                    holidays=_parse_days(entry, "holidays", where),
                    workdays=_parse_days(entry, "workdays", where),
                )
            )
        except CalendarConfigError as exc:
            raise CalendarConfigError(f"{path}: {exc}") from None
    return supplements


@functools.cache
def default_calendar() -> WorkdayCalendar:
    """The node's calendar: the package plus the configured supplement, built on first use.

    Built lazily rather than at import so importing never reads files; a named file that is
    missing or malformed fails here with :class:`CalendarConfigError`.
    """
    named = os.environ.get(SUPPLEMENT_ENV)
    if named:
        return WorkdayCalendar.from_yaml(Path(named))
    if DEFAULT_SUPPLEMENT_PATH.is_file():
        return WorkdayCalendar.from_yaml(DEFAULT_SUPPLEMENT_PATH)
    return WorkdayCalendar()


def is_working_day(day: date) -> bool:
    return default_calendar().is_working_day(day)


def add_working_days(start: date, n: int) -> date:
    return default_calendar().add_working_days(start, n)


def working_days_between(start: date, end: date) -> int:
    return default_calendar().working_days_between(start, end)


def disclosure_deadline(decision_date: date, working_days: int = DISCLOSURE_WORKING_DAYS) -> date:
    return default_calendar().disclosure_deadline(decision_date, working_days)


def is_timely(
    decision_date: date, reported_on: date, working_days: int = DISCLOSURE_WORKING_DAYS
) -> bool:
    return default_calendar().is_timely(decision_date, reported_on, working_days)
