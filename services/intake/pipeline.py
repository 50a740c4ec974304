"""The intake pipeline: one road for every batch, whichever its channel.

One call of :meth:`IntakePipeline.submit` (a gRPC request, a stream's micro-batch) or
:meth:`IntakePipeline.submit_prepared` (a chunk of a bulk file, read and validated by a
worker process) handles one batch, each step once and in order:

1. read and validate (pure, :mod:`services.intake.validate.validation`), then prepare
   (:func:`services.intake.prepare.prepare_verdicts`: each valid row hashed and encoded as the
   first version of its record, each rejection with its payload and id) — in a worker
   process for a file, here for a request;
2. classify (:func:`services.intake.classify.decide.decide`) against the ledger plus the
   batch's own earlier rows: new (version 1), correction (version + 1) or duplicate (nothing
   to publish); a rejection already on the rejected topic is not published again;
3. encode (:func:`services.intake.encode.batch.encode_batch`) what the batch publishes;
4. publish its events in one Kafka transaction
   (:class:`~services.intake.publish.publisher.TransactionalPublisher`);
5. only once it committed does the ledger learn them.

If the transaction fails (broker gone, producer fenced, timeout), the pipeline restarts its
producer — which fences the failed one, so the failed batch can never surface later —
re-reads the topics into the ledger (the batch may in fact have committed before the error
reached us), classifies again and retries, until :attr:`retry_deadline_s` has passed. A
broker restart therefore costs time, never a record, and never a duplicate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Final

from services.common.avro import AvroSerde
from services.common.cloudevents import new_traceparent
from services.common.logging import get_logger
from services.common.observability import (
    RECORDS_ACCEPTED,
    RECORDS_DUPLICATE,
    RECORDS_REJECTED,
)
from services.common.workdays import CalendarNotCovered, WorkdayCalendar
from services.intake.classify.decide import Accepted, Outcome, Rejected, decide
from services.intake.classify.ledger import Ledger, RecordState, RejectionState, apply_all
from services.intake.classify.ledger_sync import LedgerFollower
from services.intake.encode import events as ev
from services.intake.encode.batch import EventFacts, encode_batch
from services.intake.figures.quality import disclosure_quality
from services.intake.prepare import (
    Prepared,
    PreparedBatch,
    PreparedRecord,
    PreparedRejection,
    Submitter,
    check_submission,
    prepare_verdicts,
)
from services.intake.publish.publisher import OutgoingEvent, PublishFailed, TransactionalPublisher
from services.intake.validate.validation import ValidationContext, ValidRecord, Verdict
from services.intake.validate.vocabulary import DISCLOSURE_CATEGORIES

RETRY_DEADLINE_S: Final = 300.0
_BACKOFF_S: Final = (0.5, 1.0, 2.0, 4.0)
_RECOVERY_STEP_TIMEOUT_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class Submission:
    """One record as received: its canonical form (None when it could not be read at all),
    the reason it could not be read, its origin, and how to render its original bytes (ID
    numbers masked) with their media type should it be rejected."""

    content: Any
    render_payload: Callable[[], tuple[bytes, str]]
    source: ev.SubmissionSource
    problem: str | None = None


@dataclass(slots=True)
class _Plan:
    outcomes: list[Outcome] = field(default_factory=list)
    events: list[OutgoingEvent] = field(default_factory=list)
    states: list[RecordState | RejectionState] = field(default_factory=list)


def disclosure_day_of(verdict: Verdict | Prepared) -> tuple[str, date] | None:
    """The (department, decision day) a row counts for in the 双公示 figures, if any."""
    if isinstance(verdict, PreparedRejection):
        verdict = verdict.rejection
    if isinstance(verdict, PreparedRecord):
        state = verdict.state
        if state.category in DISCLOSURE_CATEGORIES:
            return state.department_code, state.decision_date
        return None
    if isinstance(verdict, ValidRecord):
        if verdict.category in DISCLOSURE_CATEGORIES:
            return verdict.department_code, verdict.decision_date
        return None
    identity = verdict.identity
    if (
        identity.category in DISCLOSURE_CATEGORIES
        and identity.department_code
        and identity.decision_date
    ):
        return identity.department_code, identity.decision_date
    return None


class IntakePipeline:
    """Validates and publishes batches of submissions; see the module docstring.

    ``uploader_department`` (the department a bulk file is uploaded for) makes records of any
    other department a rejection, and keys every rejection of the upload by it.
    """

    def __init__(
        self,
        *,
        city: str,
        city_code: str,
        serde: AvroSerde,
        ledger: Ledger,
        publisher: TransactionalPublisher,
        follower: LedgerFollower,
        pseudonymise: Callable[[str], str],
        calendar: WorkdayCalendar,
        today: Callable[[], date],
        uploader_department: str | None = None,
        retry_deadline_s: float = RETRY_DEADLINE_S,
    ) -> None:
        self.city = city
        self.city_code = city_code
        self.ledger = ledger
        self.retry_deadline_s = retry_deadline_s
        self.serde = serde
        self._publisher = publisher
        self._follower = follower
        self._pseudonymise = pseudonymise
        self.calendar = calendar
        self._today = today
        self._uploader = uploader_department
        self.uploader_department = uploader_department
        self._log = get_logger(component="pipeline")
        self.record_schema_uri = serde.data_schema_uri(ev.CREDIT_RECORD_SCHEMA)
        self.rejected_schema_uri = serde.data_schema_uri(ev.REJECTED_RECORD_SCHEMA)
        self._quality_schema_uri = serde.data_schema_uri(ev.QUALITY_SCHEMA)

    # --- pure steps -----------------------------------------------------------------------

    def today(self) -> date:
        return self._today()

    def context(self) -> ValidationContext:
        return ValidationContext(
            city_code=self.city_code, today=self._today(), pseudonymise=self._pseudonymise
        )

    def validate(
        self, batch: Sequence[Submission], submitter: Submitter | None = None
    ) -> list[Verdict]:
        context = self.context()
        return [
            check_submission(s.content, s.problem, context, self._uploader, submitter)
            for s in batch
        ]

    def prepare(self, batch: Sequence[Submission], verdicts: Sequence[Verdict]) -> PreparedBatch:
        """Verdicts on submissions as a worker process prepares a file's rows
        (:func:`~services.intake.prepare.prepare_verdicts`), each row under its position."""

        def source(position: int) -> ev.SubmissionSource:
            return batch[position].source

        rows = (
            (position, verdict, submission.render_payload)
            for position, (submission, verdict) in enumerate(zip(batch, verdicts, strict=True))
        )
        prepared = prepare_verdicts(
            rows,
            serde=self.serde,
            city_code=self.city_code,
            uploader_department=self._uploader,
            partitions=None,
            accepted_at=datetime.now(UTC),
            source=source,
        )
        return PreparedBatch(prepared, verdicts.__getitem__, source)

    def plan(self, batch: PreparedBatch, *, now: datetime, traceparent: str) -> _Plan:
        """Classify the batch, then encode what it publishes (no I/O)."""
        decisions = decide(self.ledger, batch.prepared)
        facts = EventFacts(
            self.serde,
            self.city_code,
            self.record_schema_uri,
            self.rejected_schema_uri,
            now,
            traceparent,
        )
        states: list[RecordState | RejectionState] = [state for _, state in decisions.records]
        states.extend(state for _, state in decisions.rejections)
        return _Plan(decisions.outcomes, encode_batch(batch, decisions, facts), states)

    def quality_events(
        self, days: Iterable[tuple[str, date]], *, now: datetime, traceparent: str | None
    ) -> list[OutgoingEvent]:
        """``DisclosureQuality`` events of the given department-days, from the ledger."""
        headers = ev.HeaderTemplate(
            city=self.city_code,
            event_type=ev.QUALITY_COMPUTED,
            data_schema=self._quality_schema_uri,
            time=now,
            traceparent=traceparent,
        )
        today = self._today()
        out: list[OutgoingEvent] = []
        for department, day in sorted(set(days)):
            try:
                figure = disclosure_quality(
                    self.ledger,
                    department,
                    day,
                    today=today,
                    calendar=self.calendar,
                    city_code=self.city_code,
                    computed_at=now,
                )
            except CalendarNotCovered as exc:
                self._log.warning("quality_not_computable", department=department, error=str(exc))
                continue
            key = ev.quality_key(figure)
            out.append(
                OutgoingEvent(
                    ev.QUALITY_TOPIC,
                    key.encode(),
                    self.serde.encode(ev.QUALITY_SCHEMA, figure),
                    headers.headers(f"{key}@{now.isoformat()}", key),
                )
            )
        return out

    # --- with Kafka -----------------------------------------------------------------------

    async def submit(
        self,
        batch: Sequence[Submission],
        *,
        verdicts: Sequence[Verdict] | None = None,
        traceparent: str | None = None,
    ) -> list[Outcome]:
        """Handle one batch; one outcome per submission, in order.

        Raises :class:`PublishFailed` only when the batch could not be stored before the
        retry deadline; nothing of it is then visible, and submitting it again is safe.
        """
        if not batch:
            return []
        checked = verdicts if verdicts is not None else self.validate(batch)
        return await self.submit_prepared(self.prepare(batch, checked), traceparent=traceparent)

    async def submit_prepared(
        self, batch: PreparedBatch, *, traceparent: str | None = None
    ) -> list[Outcome]:
        """:meth:`submit` for a prepared batch: classify, encode, publish, then remember."""
        if not len(batch.prepared):
            return []
        trace = traceparent or new_traceparent()
        return await self._store(lambda now: self.plan(batch, now=now, traceparent=trace))

    async def _store(self, make_plan: Callable[[datetime], _Plan]) -> list[Outcome]:
        deadline = time.monotonic() + self.retry_deadline_s
        attempt = 0
        first: list[Outcome] | None = None
        while True:
            plan = make_plan(datetime.now(UTC))
            if first is not None:
                plan.outcomes = _as_first_attempt(plan.outcomes, first)
            try:
                await self._publisher.publish(plan.events)
            except PublishFailed as exc:
                attempt += 1
                first = first or plan.outcomes
                await self._recover(exc, attempt, deadline)
                continue
            apply_all(self.ledger, plan.states)
            self._count(plan.outcomes)
            return plan.outcomes

    def _count(self, outcomes: Sequence[Outcome]) -> None:
        """Prometheus counters, once the outcomes are committed on the broker (one increment
        per counter and batch: a labelled increment costs more than deciding a record)."""
        accepted = duplicates = 0
        rejected: dict[str, int] = {}
        for outcome in outcomes:
            if isinstance(outcome, Rejected):
                if not outcome.already_recorded:
                    code = outcome.reasons[0].code if outcome.reasons else "unknown"
                    rejected[code] = rejected.get(code, 0) + 1
            elif outcome.duplicate:
                duplicates += 1
            else:
                accepted += 1
        if accepted:
            RECORDS_ACCEPTED.labels(city=self.city).inc(accepted)
        if duplicates:
            RECORDS_DUPLICATE.labels(city=self.city).inc(duplicates)
        for code, count in rejected.items():
            RECORDS_REJECTED.labels(city=self.city, code=code).inc(count)

    async def publish_quality(
        self, days: Iterable[tuple[str, date]], *, traceparent: str | None = None
    ) -> int:
        """Recompute and publish the figures of ``days``; the number published."""
        deadline = time.monotonic() + self.retry_deadline_s
        attempt = 0
        wanted = list(days)
        while True:
            quality = self.quality_events(
                wanted, now=datetime.now(UTC), traceparent=traceparent or new_traceparent()
            )
            try:
                await self._publisher.publish(quality)
            except PublishFailed as exc:
                attempt += 1
                await self._recover(exc, attempt, deadline)
                continue
            return len(quality)

    async def _recover(self, error: PublishFailed, attempt: int, deadline: float) -> None:
        """Fence the failed producer, re-read what did commit, then let the caller retry."""
        while True:
            if time.monotonic() > deadline:
                raise PublishFailed(f"gave up after {attempt} attempts: {error}") from error
            delay = _BACKOFF_S[min(attempt - 1, len(_BACKOFF_S) - 1)]
            self._log.warning("publish_failed_retrying", attempt=attempt, error=str(error))
            await asyncio.sleep(delay)
            try:
                await asyncio.wait_for(self._publisher.restart(), _RECOVERY_STEP_TIMEOUT_S)
                await asyncio.wait_for(self._follower.catch_up(), _RECOVERY_STEP_TIMEOUT_S)
            except Exception as exc:  # still unreachable: wait and try again
                attempt += 1
                self._log.warning("recovery_failed", attempt=attempt, error=repr(exc))
                continue
            return


def _as_first_attempt(outcomes: list[Outcome], first: list[Outcome]) -> list[Outcome]:
    """Outcomes of a retried batch, reported as the first attempt would have.

    A transaction can commit although its commit reply is lost; the retry then finds its own
    records already on Kafka. Those are this batch's acceptances, not duplicates.
    """
    merged: list[Outcome] = []
    for now, before in zip(outcomes, first, strict=True):
        ours_already = (
            isinstance(now, Accepted)
            and isinstance(before, Accepted)
            and now.duplicate
            and not before.duplicate
            and now.version == before.version
        )
        ours_rejected = isinstance(now, Rejected) and now.already_recorded
        merged.append(before if ours_already or ours_rejected else now)
    return merged
