"""双公示 quality, timeliness across holidays and make-up days, and publicity windows.

Hand-computed deadlines (国务院办公厅 holiday notices for 2025):

* National Day + Mid-Autumn 2025: 1–8 October off; Sunday 28 September and Saturday
  11 October are make-up working days.
  - decision Fri 26 Sep → working days Sun 28 (make-up), Mon 29, Tue 30, Thu 9 Oct, Fri 10,
    Sat 11 (make-up), Mon 13 → due Mon 13 Oct;
  - decision Tue 30 Sep → Thu 9, Fri 10, Sat 11 (make-up), Mon 13, Tue 14, Wed 15, Thu 16 →
    due Thu 16 Oct;
  - decision on the make-up day Sun 28 Sep → Mon 29, Tue 30, Thu 9, Fri 10, Sat 11, Mon 13,
    Tue 14 → due Tue 14 Oct.
* Spring Festival 2025: 28 January – 4 February off; Sunday 26 January and Saturday
  8 February are make-up working days.
  - decision Fri 24 Jan → Sun 26 (make-up), Mon 27, Wed 5 Feb, Thu 6, Fri 7, Sat 8 (make-up),
    Mon 10 → due Mon 10 Feb.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime
from typing import Any

import pytest

from services.common.avro import AvroSerde
from services.common.workdays import WorkdayCalendar
from services.intake.classify.ledger import (
    Disposition,
    Ledger,
    RejectionState,
    record_state_from_event,
    record_state_of,
)
from services.intake.encode.events import SubmissionSource, credit_record
from services.intake.encode.publicity import add_months, penalty_publicity
from services.intake.figures.quality import disclosure_quality, overdue_records
from services.intake.read.files import flat_to_submission
from services.intake.validate import validation as v
from tests.kit.intake_samples import DEPARTMENTS, licensing_row, penalty_row

CALENDAR = WorkdayCalendar()
DEPARTMENT = DEPARTMENTS[0]
NOW = datetime(2025, 10, 20, 8, 0, tzinfo=UTC)


def context(today: date) -> v.ValidationContext:
    return v.ValidationContext(city_code="320500", today=today, pseudonymise=lambda n: n)


@pytest.mark.parametrize(
    ("decision", "due"),
    [
        (date(2025, 9, 26), date(2025, 10, 13)),
        (date(2025, 9, 30), date(2025, 10, 16)),
        (date(2025, 9, 28), date(2025, 10, 14)),
        (date(2025, 1, 24), date(2025, 2, 10)),
    ],
)
def test_due_dates_across_holidays_and_make_up_days(decision: date, due: date) -> None:
    assert CALENDAR.disclosure_deadline(decision) == due


def record(serial: int, decided: date, reported: date, **changes: Any) -> v.ValidRecord:
    row = penalty_row(
        random.Random(serial),
        decision_date=decided,
        report_date=reported,
        department=DEPARTMENT,
        serial=serial,
    )
    row.update(changes)
    verdict = v.validate_submission(flat_to_submission(row), context(reported))
    assert isinstance(verdict, v.ValidRecord), verdict
    return verdict


def rejection(serial: int, decided: date, *, with_number: bool = True) -> RejectionState:
    number = f"{DEPARTMENT.prefix}〔2025〕{serial}号"
    return RejectionState(
        rejection_id=f"rejection-{serial}",
        department_code=DEPARTMENT.code,
        department_name=DEPARTMENT.name,
        record_id=(
            v.record_id_for("320500", DEPARTMENT.code, "ADMIN_PENALTY", number)
            if with_number
            else None
        ),
        category="ADMIN_PENALTY",
        decision_number=number if with_number else None,
        decision_date=decided,
    )


def accept(ledger: Ledger, verdict: v.ValidRecord) -> None:
    decided = ledger.classify(verdict)
    ledger.apply_record(record_state_of(verdict, decided.version, decided.report_date))


def test_the_three_rates_of_a_day_across_the_national_day_holiday() -> None:
    day = date(2025, 9, 26)  # due Mon 13 Oct (see the module docstring)
    ledger = Ledger()
    on_time = record(1, day, date(2025, 10, 13))  # the due date itself
    late = record(2, day, date(2025, 10, 14))
    ledger.apply_rejection(rejection(3, day))  # never corrected
    ledger.apply_rejection(rejection(4, day))  # corrected in time:
    corrected = record(4, day, date(2025, 10, 10))
    ledger.apply_rejection(rejection(5, day, with_number=False))  # no record id derivable
    for verdict in (on_time, late, corrected):
        accept(ledger, verdict)
    ledger.apply_declaration(DEPARTMENT.code, day, 6)

    figure = disclosure_quality(
        ledger,
        DEPARTMENT.code,
        day,
        today=date(2025, 10, 20),
        calendar=CALENDAR,
        city_code="320500",
        computed_at=NOW,
    )
    assert figure["due_date"] == date(2025, 10, 13)
    assert figure["due_date_passed"] is True
    assert (figure["submitted_count"], figure["valid_count"]) == (5, 3)
    assert (figure["reported_on_time_count"], figure["reported_late_count"]) == (2, 1)
    assert figure["reporting_rate"] == pytest.approx(5 / 6)
    assert figure["compliance_rate"] == pytest.approx(3 / 5)
    assert figure["timeliness_rate"] == pytest.approx(2 / 5)
    rejected_id = rejection(3, day).record_id
    assert rejected_id is not None
    assert sorted(figure["overdue_record_ids"]) == sorted([late.record_id, rejected_id])
    AvroSerde().encode("DisclosureQuality", figure)

    listed = overdue_records(ledger, DEPARTMENT.code, today=date(2025, 10, 20), calendar=CALENDAR)
    assert {(o.decision_number, o.status) for o in listed} == {
        (late.decision_number, "accepted late"),
        (rejection(3, day).decision_number, "rejected, not corrected"),
        (None, "rejected, not corrected"),
    }


def test_before_the_due_date_a_rejection_is_not_yet_overdue() -> None:
    day = date(2025, 9, 30)  # due Thu 16 Oct, across the holiday and Sat 11 Oct
    ledger = Ledger()
    accept(ledger, record(1, day, date(2025, 10, 16)))
    ledger.apply_rejection(rejection(2, day))
    figure = disclosure_quality(
        ledger,
        DEPARTMENT.code,
        day,
        today=date(2025, 10, 16),
        calendar=CALENDAR,
        city_code="320500",
        computed_at=NOW,
    )
    assert figure["due_date_passed"] is False
    assert figure["overdue_record_ids"] == []
    assert figure["timeliness_rate"] == pytest.approx(0.5)
    assert figure["reporting_rate"] is None  # nothing declared


def test_a_correction_keeps_the_first_report_date() -> None:
    day = date(2025, 9, 26)
    ledger = Ledger()
    first = record(1, day, date(2025, 10, 9))
    accept(ledger, first)
    fixed = record(1, day, date(2025, 10, 20), fine_amount_yuan="1.00")
    decided = ledger.classify(fixed)
    assert decided.disposition is Disposition.CORRECTION
    assert (decided.version, decided.report_date) == (2, date(2025, 10, 9))
    ledger.apply_record(record_state_of(fixed, decided.version, decided.report_date))
    assert ledger.classify(fixed).disposition is Disposition.DUPLICATE
    # The first content again (a re-run of a file holding record and correction): a
    # duplicate of version 1, not a third version.
    again = ledger.classify(first)
    assert (again.disposition, again.version) == (Disposition.DUPLICATE, 1)
    figure = disclosure_quality(
        ledger,
        DEPARTMENT.code,
        day,
        today=date(2025, 10, 20),
        calendar=CALENDAR,
        city_code="320500",
        computed_at=NOW,
    )
    assert figure["reported_on_time_count"] == 1


def test_the_ledger_reads_back_what_was_published() -> None:
    """Content hash and facts survive an Avro round trip, so a rebuilt ledger classifies a
    resubmission exactly as the writer's own ledger did."""
    serde = AvroSerde()
    today = date(2025, 10, 20)
    for row in (
        penalty_row(random.Random(1), decision_date=date(2025, 9, 26), person_share=1.0),
        penalty_row(random.Random(2), decision_date=date(2025, 9, 26), person_share=0.0),
        licensing_row(random.Random(3), decision_date=date(2025, 9, 26)),
    ):
        verdict = v.validate_submission(flat_to_submission(row), context(today))
        assert isinstance(verdict, v.ValidRecord)
        event = credit_record(
            verdict,
            city_code="320500",
            version=3,
            report_date=date(2025, 10, 1),
            accepted_at=NOW,
            source=SubmissionSource("FILE", NOW, file_name="a.csv", line_number=2),
        )
        read_back = record_state_from_event(serde.decode(serde.encode("CreditRecord", event)))
        assert read_back == record_state_of(verdict, 3, date(2025, 10, 1))


@pytest.mark.parametrize(
    ("start", "months", "end"),
    [
        (date(2025, 1, 15), 3, date(2025, 4, 15)),
        (date(2025, 8, 31), 3, date(2025, 11, 30)),
        (date(2024, 2, 29), 12, date(2025, 2, 28)),
        (date(2024, 2, 29), 36, date(2027, 2, 28)),
        (date(2025, 11, 30), 3, date(2026, 2, 28)),
    ],
)
def test_months_are_counted_as_civil_periods(start: date, months: int, end: date) -> None:
    assert add_months(start, months) == end


def test_publicity_windows_by_severity() -> None:
    general = penalty_publicity(date(2025, 9, 26), date(2025, 10, 9), "GENERAL")
    assert (general.publicity_start, general.earliest_repair_date, general.takedown_date) == (
        date(2025, 10, 9),
        date(2025, 12, 26),
        date(2026, 9, 26),
    )
    serious = penalty_publicity(date(2025, 9, 26), date(2025, 10, 9), "SERIOUS")
    assert (serious.earliest_repair_date, serious.takedown_date) == (
        date(2026, 9, 26),
        date(2028, 9, 26),
    )


def _counted_record_by_record(
    ledger: Ledger, department: str, day: date, today: date
) -> tuple[int, int, int, list[str]]:
    """(submitted, valid, on time, overdue ids) from the ledger's states, one by one."""
    due = CALENDAR.disclosure_deadline(day)
    record_ids, unidentified = ledger.day_submissions(department, day)
    submitted, valid, on_time, overdue = len(unidentified), 0, 0, []
    for record_id in sorted(record_ids):
        state = ledger.records.get(record_id)
        if state is not None and state.decision_date != day:
            continue
        submitted += 1
        if state is None:
            if today > due:
                overdue.append(record_id)
        elif state.first_report_date <= due:
            valid += 1
            on_time += 1
        else:
            valid += 1
            overdue.append(record_id)
    return submitted, valid, on_time, overdue


@pytest.mark.parametrize("seed", range(12))
def test_figures_kept_as_records_apply_equal_a_count_from_scratch(seed: int) -> None:
    """New records, duplicates, corrections (also to another decision date or department
    day), rejections with and without a record id, corrected rejections, and versions read
    back out of order: the figure equals a record-by-record count of the ledger."""
    rng = random.Random(seed)
    days = [date(2025, 9, 26), date(2025, 9, 30), date(2025, 10, 9)]
    reports = [date(2025, 10, 10), date(2025, 10, 14), date(2025, 10, 17), date(2025, 10, 20)]
    ledger = Ledger()
    published: list[v.ValidRecord] = []
    for step in range(160):
        serial = rng.randrange(1, 40)
        action = rng.random()
        if action < 0.2:
            ledger.apply_rejection(
                rejection(serial, rng.choice(days), with_number=rng.random() < 0.8)
            )
            continue
        reported = rng.choice(reports)
        verdict = record(
            serial,
            rng.choice(days),
            reported,
            violation=rng.choice(("甲", "乙")),  # the same content now and then: duplicates
        )
        decided = ledger.classify(verdict)
        if decided.disposition is Disposition.DUPLICATE:
            continue
        state = record_state_of(verdict, decided.version, decided.report_date)
        published.append(verdict)
        ledger.apply_record(state)
        if action > 0.9:  # a rebuild meeting an older version after a newer one
            ledger.apply_record(record_state_of(verdict, max(1, decided.version - 1), reported))
        if step % 20 == 0 or step == 159:
            for today in (date(2025, 10, 15), date(2025, 10, 20)):
                for day in days:
                    figure = disclosure_quality(
                        ledger,
                        DEPARTMENT.code,
                        day,
                        today=today,
                        calendar=CALENDAR,
                        city_code="320500",
                        computed_at=NOW,
                    )
                    counted = (
                        figure["submitted_count"],
                        figure["valid_count"],
                        figure["reported_on_time_count"],
                        figure["overdue_record_ids"],
                    )
                    assert counted == _counted_record_by_record(ledger, DEPARTMENT.code, day, today)
    assert published
