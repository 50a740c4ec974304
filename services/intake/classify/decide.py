"""Classify one batch against the ledger: the third step of a record's road.

Every valid row is new (version 1), a correction (version + 1) or a duplicate (nothing to
publish), by :meth:`~services.intake.classify.ledger.Ledger.classify_parts` against the
ledger plus the batch's own earlier rows; every rejection is new or already on the rejected
topic (a re-run). The batch comes as a worker process or the pipeline prepared it
(:class:`services.intake.prepare.PreparedChunk`), whichever the channel: one path.

Pure: the ledger is read, never changed. It learns the states decided here only once the
batch's transaction committed (:mod:`services.intake.pipeline`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Protocol

from services.intake.classify.ledger import Disposition, Ledger, RecordState, RejectionState
from services.intake.validate.validation import InvalidRecord, Violation


# Not frozen: built per record (services/intake/__init__.py).
@dataclass(slots=True)
class Accepted:
    record_id: str
    version: int
    subject_key: str
    duplicate: bool = False
    correction: bool = False
    warnings: tuple[Violation, ...] = ()


@dataclass(frozen=True, slots=True)
class Rejected:
    rejection_id: str
    reasons: tuple[Violation, ...]
    #: True when this very rejection was already on the rejected topic (a re-run).
    already_recorded: bool = False


Outcome = Accepted | Rejected


class Rejection(Protocol):
    """A rejected row as classifying needs it (a ``PreparedRejection``)."""

    @property
    def line_number(self) -> int: ...
    @property
    def rejection(self) -> InvalidRecord: ...
    @property
    def rejection_id(self) -> str: ...
    @property
    def department_code(self) -> str: ...


class Candidates(Protocol):
    """The rows of one batch, each under its key (a line number, a position in a request):
    the valid ones as the first version of their record, then the rejections, each in
    order. ``PreparedChunk`` is one."""

    @property
    def lines(self) -> list[int]: ...
    @property
    def warnings(self) -> dict[int, tuple[Violation, ...]]: ...
    @property
    def rejections(self) -> Sequence[Rejection]: ...
    def states(self) -> Iterator[tuple[int, RecordState]]: ...


@dataclass(slots=True)
class Decisions:
    """What one batch adds: the outcome of each row, in row order, and the states of what it
    publishes — (index of the valid row, its new version) and (index of the rejection, its
    state) — in order."""

    outcomes: list[Outcome]
    records: list[tuple[int, RecordState]]
    rejections: list[tuple[int, RejectionState]]


def decide(ledger: Ledger, batch: Candidates) -> Decisions:
    """Classify every row of ``batch``; see the module docstring."""
    known = ledger.records
    pending: dict[str, RecordState] = {}
    pending_superseded: dict[tuple[str, str], int] = {}
    records: list[tuple[int, RecordState]] = []
    accepted: list[Outcome] = []
    warnings = batch.warnings
    no_warnings: tuple[Violation, ...] = ()
    for index, state in batch.states():
        record_id = state.record_id
        row_warnings = warnings.get(index, no_warnings)
        if record_id not in pending and record_id not in known:
            # New, as classify_parts would say without its lookups: nearly every row of a
            # bulk file, and this runs once for each.
            pending[record_id] = state
            records.append((index, state))
            accepted.append(Accepted(record_id, 1, state.subject_key, warnings=row_warnings))
            continue
        decided = ledger.classify_parts(
            record_id, state.content_hash, state.first_report_date, pending, pending_superseded
        )
        if decided.disposition is Disposition.DUPLICATE:
            accepted.append(
                Accepted(
                    record_id,
                    decided.version,
                    state.subject_key,
                    duplicate=True,
                    warnings=row_warnings,
                )
            )
            continue
        previous = decided.previous
        if previous is not None:
            pending_superseded[(previous.record_id, previous.content_hash)] = previous.version
        state = _version(state, decided.version, decided.report_date)
        pending[record_id] = state
        records.append((index, state))
        accepted.append(
            Accepted(
                record_id,
                decided.version,
                state.subject_key,
                correction=decided.disposition is Disposition.CORRECTION,
                warnings=row_warnings,
            )
        )
    rejected: list[Outcome] = []
    rejections: list[tuple[int, RejectionState]] = []
    pending_rejections: set[str] = set()
    for index, row in enumerate(batch.rejections):
        rejection_id = row.rejection_id
        already = rejection_id in ledger.rejections or rejection_id in pending_rejections
        rejected.append(Rejected(rejection_id, row.rejection.reasons, already_recorded=already))
        if already:
            continue
        pending_rejections.add(rejection_id)
        identity = row.rejection.identity
        rejections.append(
            (
                index,
                RejectionState(
                    rejection_id=rejection_id,
                    department_code=row.department_code,
                    department_name=identity.department_name,
                    record_id=identity.record_id,
                    category=identity.category,
                    decision_number=identity.decision_number,
                    decision_date=identity.decision_date,
                ),
            )
        )
    outcomes = _in_row_order(batch, accepted, rejected)
    return Decisions(outcomes, records, rejections)


def _version(state: RecordState, version: int, first_report_date: date) -> RecordState:
    """The state of a row's record at ``version`` (a correction keeps the first report day)."""
    if version == state.version and first_report_date == state.first_report_date:
        return state
    return dataclasses.replace(state, version=version, first_report_date=first_report_date)


def _in_row_order(
    batch: Candidates, accepted: list[Outcome], rejected: list[Outcome]
) -> list[Outcome]:
    """The outcomes of the valid rows and of the rejections merged by row key."""
    if not rejected:
        return accepted
    if not accepted:
        return rejected
    lines = batch.lines
    merged: list[Outcome] = []
    at = 0
    for row, outcome in zip(batch.rejections, rejected, strict=True):
        while at < len(lines) and lines[at] < row.line_number:
            merged.append(accepted[at])
            at += 1
        merged.append(outcome)
    merged.extend(accepted[at:])
    return merged
