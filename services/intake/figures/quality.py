"""双公示 quality: reporting, compliance and timeliness per department and decision day.

Definitions (``schemas/avro/DisclosureQuality/v1.avsc``; the plan's target is 100% for all
three):

* *submitted* — distinct records (by record id) the department submitted for decisions of
  that day, valid or not, plus rejected submissions whose record id could not be derived;
* *valid* — submitted records accepted, possibly after a correction;
* *on time* — valid records whose first valid report is no later than the due date, the 7th
  working day after the decision (:mod:`services.common.workdays`: holidays skipped, make-up
  working days counted);
* reporting rate = submitted / declared (上报率; only when the department declared a daily
  count), compliance rate = valid / submitted (合规率), timeliness rate = on time /
  submitted (及时率);
* *overdue* — records not validly reported by the due date: accepted late, or (once the due
  date has passed) rejected and not corrected.

Pure functions over the :class:`~services.intake.classify.ledger.Ledger`; publishing is elsewhere.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, datetime
from importlib.metadata import PackageNotFoundError, version
from itertools import filterfalse
from typing import Any

from services.common.workdays import CalendarNotCovered, WorkdayCalendar
from services.intake.classify.ledger import Ledger


@functools.cache  # reading package metadata takes a millisecond; it is one per figure
def _holiday_package() -> str:
    try:
        return f"chinesecalendar {version('chinesecalendar')}"
    except PackageNotFoundError:  # pragma: no cover - the package is a hard dependency
        return "chinesecalendar (unknown version)"


def calendar_version(calendar: WorkdayCalendar) -> str:
    """Which holiday data due dates were computed with, e.g. ``chinesecalendar 1.11.0``."""
    package = _holiday_package()
    supplemented = calendar.supplemented_years
    if supplemented:
        return f"{package} + supplement {','.join(str(y) for y in supplemented)}"
    return package


@dataclass(frozen=True, slots=True)
class OverdueRecord:
    """A record of a department not validly reported by its due date."""

    record_id: str | None
    decision_number: str | None
    decision_date: date
    due_date: date
    reported_on: date | None  # None: rejected and not corrected yet

    @property
    def status(self) -> str:
        return "accepted late" if self.reported_on is not None else "rejected, not corrected"


def _rate(numerator: int, denominator: int | None) -> float | None:
    if not denominator:
        return None
    return min(1.0, numerator / denominator)


def disclosure_quality(
    ledger: Ledger,
    department_code: str,
    day: date,
    *,
    today: date,
    calendar: WorkdayCalendar,
    city_code: str,
    computed_at: datetime,
) -> dict[str, Any]:
    """The ``DisclosureQuality`` value of one department and decision day.

    Raises :class:`~services.common.workdays.CalendarNotCovered` when the due date falls in
    a year the working-day calendar does not cover yet: a figure is not guessed.
    """
    due = calendar.disclosure_deadline(day)
    record_ids, unidentified = ledger.day_submissions(department_code, day)
    submitted = len(unidentified)
    valid = on_time = 0
    overdue: list[str] = []
    records = ledger.records
    accepted = ledger.day_accepted(department_code, day)
    for reported, ids in accepted.items():
        valid += len(ids)
        if reported <= due:
            on_time += len(ids)
        else:
            overdue.extend(ids)
    submitted += valid
    if len(record_ids) > valid:
        # Submitted but not accepted (rejected, not corrected), or corrected to another
        # decision date (then counted on that day, not here).
        unaccepted = list(filterfalse(records.__contains__, record_ids))
        submitted += len(unaccepted)
        if today > due:
            overdue.extend(unaccepted)
    overdue.sort()
    expected = ledger.declared.get((department_code, day))
    return {
        "department_day": f"{department_code}:{day.isoformat()}",
        "city_code": city_code,
        "department_code": department_code,
        "department_name": ledger.department_names.get(department_code, ""),
        "decision_date": day,
        "due_date": due,
        "due_date_passed": today > due,
        "expected_count": expected,
        "submitted_count": submitted,
        "valid_count": valid,
        "reported_on_time_count": on_time,
        "reported_late_count": valid - on_time,
        "reporting_rate": _rate(submitted, expected),
        "compliance_rate": _rate(valid, submitted),
        "timeliness_rate": _rate(on_time, submitted),
        "overdue_record_ids": overdue,
        "computed_at": computed_at,
        "calendar_version": calendar_version(calendar),
    }


def overdue_records(
    ledger: Ledger, department_code: str, *, today: date, calendar: WorkdayCalendar
) -> list[OverdueRecord]:
    """Every overdue record of a department, oldest decision first."""
    found: list[OverdueRecord] = []
    for department, day in ledger.department_days(department_code):
        try:
            due = calendar.disclosure_deadline(day)
        except CalendarNotCovered:
            continue  # not computable yet, so not known to be overdue
        record_ids, unidentified = ledger.day_submissions(department, day)
        for record_id in sorted(record_ids):
            state = ledger.records.get(record_id)
            if state is not None:
                if state.decision_date == day and state.first_report_date > due:
                    found.append(
                        OverdueRecord(
                            record_id,
                            state.decision_number,
                            day,
                            due,
                            state.first_report_date,
                        )
                    )
            elif today > due:
                rejection = ledger.rejection_of_record.get(record_id)
                found.append(
                    OverdueRecord(
                        record_id, rejection.decision_number if rejection else None, day, due, None
                    )
                )
        if today > due:
            for rejection_id in sorted(unidentified):
                rejection = ledger.rejections[rejection_id]
                found.append(OverdueRecord(None, rejection.decision_number, day, due, None))
    return found
