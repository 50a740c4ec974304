"""Publicity (公示) windows of accepted records.

Penalty records (docs/design.md §4.3; 《失信行为纠正后的信用信息修复管理办法（试行）》, NDRC Order
2023 No. 58): a record of *general* dishonesty is public for at least 3 months and at most
1 year, one of *serious* dishonesty for at least 1 year and at most 3 years, both counted from
the decision date. Credit repair can take a record down from the end of the minimum period;
at the end of the maximum it comes down on its own.

Licences are public for as long as they are valid; list entries until they expire. The record
becomes public on the day the department reports it.
"""

from __future__ import annotations

import calendar
import functools
from dataclasses import dataclass
from datetime import date
from typing import Final, Literal

Severity = Literal["GENERAL", "SERIOUS"]

#: (minimum, maximum) publicity in months from the decision date, per severity.
PUBLICITY_MONTHS: Final[dict[str, tuple[int, int]]] = {
    "GENERAL": (3, 12),
    "SERIOUS": (12, 36),
}


@functools.lru_cache(maxsize=8192)  # pure, and a file's decisions share few days
def add_months(day: date, months: int) -> date:
    """``day`` plus ``months`` calendar months, clamped to the end of a shorter month.

    A period that starts on 31 August and lasts 3 months ends on 30 November, and one that
    starts on 29 February and lasts a year ends on 28 February: the Civil Code's reckoning of
    periods in months (到期月的对应日为期间的最后一日；没有对应日的，月末日为期间的最后一日).
    """
    month_index = day.month - 1 + months
    year = day.year + month_index // 12
    month = month_index % 12 + 1
    last = calendar.monthrange(year, month)[1]
    return date(year, month, min(day.day, last))


# Not frozen: built per record (services/intake/__init__.py).
@dataclass(slots=True)
class PublicityWindow:
    publicity_start: date
    earliest_repair_date: date | None
    takedown_date: date | None
    severity: Severity | None

    def as_avro(self) -> dict[str, object]:
        return {
            "publicity_start": self.publicity_start,
            "earliest_repair_date": self.earliest_repair_date,
            "takedown_date": self.takedown_date,
            "severity": self.severity,
        }


def penalty_publicity(
    decision_date: date, report_date: date, severity: Severity
) -> PublicityWindow:
    minimum, maximum = PUBLICITY_MONTHS[severity]
    return PublicityWindow(
        publicity_start=report_date,
        earliest_repair_date=add_months(decision_date, minimum),
        takedown_date=add_months(decision_date, maximum),
        severity=severity,
    )


def bounded_publicity(report_date: date, ends: date | None) -> PublicityWindow:
    """Public from the report until ``ends`` (end of a licence's validity, a list's term)."""
    return PublicityWindow(
        publicity_start=report_date, earliest_repair_date=None, takedown_date=ends, severity=None
    )
