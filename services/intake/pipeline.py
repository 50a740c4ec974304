"""The intake pipeline: validate, decide against the ledger, publish atomically, remember.

One call of :meth:`IntakePipeline.submit` handles one batch (a chunk of a file, one gRPC
request, a stream's micro-batch):

1. every submission is validated (pure, :mod:`services.intake.validate.validation`);
2. each valid record is classified against the ledger plus the batch's own earlier records:
   new (version 1), correction (version + 1) or duplicate (nothing to publish); each
   rejection gets its deterministic id, and one already on the rejected topic is not
   published again;
3. the batch's new events go out in one Kafka transaction;
4. only once it committed does the ledger learn them.

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
from services.intake.classify.ledger import (
    Classification,
    Disposition,
    Ledger,
    RecordState,
    RejectionState,
    record_state_of,
)
from services.intake.classify.ledger_sync import LedgerFollower
from services.intake.encode import events as ev
from services.intake.encode.record_encoding import ContentParts, content_of
from services.intake.figures.quality import disclosure_quality
from services.intake.prepare import (
    Prepared,
    PreparedChunk,
    PreparedRecord,
    PreparedRejection,
    Submitter,
    check_submission,
)
from services.intake.publish.publisher import OutgoingEvent, PublishFailed, TransactionalPublisher
from services.intake.validate.validation import (
    InvalidRecord,
    ValidationContext,
    ValidRecord,
    Verdict,
    Violation,
)
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


@dataclass(slots=True)
class _Plan:
    outcomes: list[Outcome] = field(default_factory=list)
    events: list[OutgoingEvent] = field(default_factory=list)
    states: list[RecordState | RejectionState] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """Rows a worker process prepared (:mod:`services.intake.prepare`), in file order, with
    how to validate one of them again here and where each came from."""

    prepared: PreparedChunk
    revalidate: Callable[[int], Verdict]  # by line number
    source: Callable[[int], ev.SubmissionSource]  # by line number


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


class _Planner:
    """Decides one batch against the ledger plus the batch's own earlier rows."""

    def __init__(self, pipeline: IntakePipeline, now: datetime, traceparent: str | None) -> None:
        self.pipeline = pipeline
        self.ledger = pipeline.ledger
        self.now = now
        self.plan = _Plan()
        self.pending: dict[str, RecordState] = {}
        self.pending_superseded: dict[tuple[str, str], int] = {}
        self.pending_rejections: set[str] = set()
        self._traceparent = traceparent
        self._record_headers: ev.HeaderTemplate | None = None
        self._rejected_headers: ev.HeaderTemplate | None = None

    def _headers(self, event_type: str, schema_uri: str) -> ev.HeaderTemplate:
        return ev.HeaderTemplate(
            city=self.pipeline.city_code,
            event_type=event_type,
            data_schema=schema_uri,
            time=self.now,
            traceparent=self._traceparent,
        )

    def decide(self, record_id: str, content_hash: str, report_date: date) -> Classification:
        decided = self.ledger.classify_parts(
            record_id, content_hash, report_date, self.pending, self.pending_superseded
        )
        if decided.disposition is not Disposition.DUPLICATE and decided.previous is not None:
            previous = decided.previous
            self.pending_superseded[(previous.record_id, previous.content_hash)] = previous.version
        return decided

    def duplicate(self, state: RecordState, version: int, warnings: tuple[Violation, ...]) -> None:
        self.plan.outcomes.append(
            Accepted(state.record_id, version, state.subject_key, duplicate=True, warnings=warnings)
        )

    def publish_record(
        self,
        state: RecordState,
        event: OutgoingEvent,
        decided: Classification,
        warnings: tuple[Violation, ...],
    ) -> None:
        self.pending[state.record_id] = state
        self.plan.states.append(state)
        self.plan.events.append(event)
        self.plan.outcomes.append(
            Accepted(
                state.record_id,
                decided.version,
                state.subject_key,
                correction=decided.disposition is Disposition.CORRECTION,
                warnings=warnings,
            )
        )

    def record_headers(self) -> ev.HeaderTemplate:
        if self._record_headers is None:
            self._record_headers = self._headers(
                ev.RECORD_ACCEPTED, self.pipeline.record_schema_uri
            )
        return self._record_headers

    def encode_record(
        self,
        record: ValidRecord,
        decided: Classification,
        source: ev.SubmissionSource,
        content: tuple[ContentParts | None, str] | None = None,
    ) -> tuple[RecordState, OutgoingEvent]:
        parts, digest = content or content_of(record.content)
        value = ev.encode_credit_record(
            self.pipeline.serde,
            record,
            city_code=self.pipeline.city_code,
            version=decided.version,
            report_date=decided.report_date,
            accepted_at=self.now,
            source=source,
            content_parts=parts,
        )
        key = record.subject_key
        event = OutgoingEvent(
            ev.RECORDS_TOPIC,
            key.encode(),
            value,
            self.record_headers().headers(
                ev.record_event_id(record.record_id, decided.version), key
            ),
        )
        return record_state_of(record, decided.version, decided.report_date, digest), event

    def valid(self, record: ValidRecord, source: ev.SubmissionSource) -> None:
        content = content_of(record.content)
        decided = self.decide(record.record_id, content[1], record.report_date)
        if decided.disposition is Disposition.DUPLICATE:
            self.duplicate(
                record_state_of(record, decided.version, decided.report_date, content[1]),
                decided.version,
                record.warnings,
            )
            return
        state, event = self.encode_record(record, decided, source, content)
        self.publish_record(state, event, decided, record.warnings)

    def prepared_chunk(self, batch: PreparedBatch) -> None:
        """Every valid row of a prepared chunk, in file order.

        Nearly every row of a bulk file is new: the worker's encoding of version 1 goes out as
        it is (what decide() would say, without its bookkeeping), and no per-row object is
        built beyond the ledger state, the event and the outcome. The others go through
        :meth:`prepared`."""
        chunk = batch.prepared
        if not chunk.lines:
            return
        known = self.ledger.records
        pending = self.pending
        states = self.plan.states
        events = self.plan.events
        outcomes = self.plan.outcomes
        headers = self.record_headers().headers
        values = chunk.values
        partitions = chunk.partitions
        warnings = chunk.warnings
        no_warnings: tuple[Violation, ...] = ()
        for index, state in chunk.states():
            record_id = state.record_id
            if record_id in pending or record_id in known:
                self.prepared(chunk.record(index, state), batch)
                continue
            subject_key = state.subject_key
            pending[record_id] = state
            states.append(state)
            events.append(
                OutgoingEvent(
                    ev.RECORDS_TOPIC,
                    subject_key.encode(),
                    values[index],
                    headers(ev.record_event_id(record_id, 1), subject_key),
                    partitions[index],
                )
            )
            outcomes.append(
                Accepted(record_id, 1, subject_key, warnings=warnings.get(index, no_warnings))
            )

    def prepared(self, item: PreparedRecord, batch: PreparedBatch) -> None:
        """A prepared row whose record is pending in this batch or known to the ledger (the
        new ones take :meth:`prepared_chunk`'s own path), as :meth:`decide` classifies it."""
        state = item.state
        record_id = state.record_id
        decided = self.decide(record_id, state.content_hash, state.first_report_date)
        if decided.disposition is Disposition.DUPLICATE:
            self.duplicate(state, decided.version, item.warnings)
            return
        if decided.disposition is Disposition.NEW:
            event = OutgoingEvent(
                ev.RECORDS_TOPIC,
                item.key,
                item.value,
                self.record_headers().headers(
                    ev.record_event_id(state.record_id, 1), state.subject_key
                ),
                item.partition,
            )
            self.publish_record(state, event, decided, item.warnings)
            return
        record = batch.revalidate(item.line_number)
        if not isinstance(record, ValidRecord):
            # A worker's verdict is a pure function of the row: validating again cannot differ.
            raise RuntimeError(f"line {item.line_number} did not validate again")
        state, event = self.encode_record(record, decided, batch.source(item.line_number))
        self.publish_record(state, event, decided, item.warnings)

    def rejected(
        self,
        rejection: InvalidRecord,
        payload: bytes,
        payload_encoding: str,
        source: ev.SubmissionSource,
    ) -> None:
        identity = rejection.identity
        department = (
            self.pipeline.uploader_department or identity.department_code or ev.UNKNOWN_DEPARTMENT
        )
        rejection_id = ev.rejection_id_for(self.pipeline.city_code, department, payload)
        known = rejection_id in self.ledger.rejections or rejection_id in self.pending_rejections
        self.plan.outcomes.append(Rejected(rejection_id, rejection.reasons, already_recorded=known))
        if known:
            return
        self.pending_rejections.add(rejection_id)
        self.plan.states.append(
            RejectionState(
                rejection_id=rejection_id,
                department_code=department,
                department_name=identity.department_name,
                record_id=identity.record_id,
                category=identity.category,
                decision_number=identity.decision_number,
                decision_date=identity.decision_date,
            )
        )
        if self._rejected_headers is None:
            self._rejected_headers = self._headers(
                ev.RECORD_REJECTED, self.pipeline.rejected_schema_uri
            )
        value = self.pipeline.serde.encode(
            ev.REJECTED_RECORD_SCHEMA,
            ev.rejected_record(
                rejection,
                rejection_id=rejection_id,
                city_code=self.pipeline.city_code,
                department_code=department,
                payload=payload,
                payload_encoding=payload_encoding,
                rejected_at=self.now,
                source=source,
            ),
        )
        self.plan.events.append(
            OutgoingEvent(
                ev.REJECTED_TOPIC,
                department.encode(),
                value,
                self._rejected_headers.headers(rejection_id, department),
            )
        )


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

    def plan(
        self,
        batch: Sequence[Submission],
        verdicts: Sequence[Verdict],
        *,
        now: datetime,
        traceparent: str | None,
    ) -> _Plan:
        """Classify every verdict and encode the events to publish (no I/O)."""
        planner = _Planner(self, now, traceparent)
        for submission, verdict in zip(batch, verdicts, strict=True):
            if isinstance(verdict, ValidRecord):
                planner.valid(verdict, submission.source)
            else:
                payload, payload_encoding = submission.render_payload()
                planner.rejected(verdict, payload, payload_encoding, submission.source)
        return planner.plan

    def plan_prepared(
        self, batch: PreparedBatch, *, now: datetime, traceparent: str | None
    ) -> _Plan:
        """The same for rows a worker process prepared."""
        planner = _Planner(self, now, traceparent)
        planner.prepared_chunk(batch)
        for rejection in batch.prepared.rejections:
            planner.rejected(
                rejection.rejection,
                rejection.payload,
                rejection.payload_encoding,
                batch.source(rejection.line_number),
            )
        return planner.plan

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
        trace = traceparent or new_traceparent()
        return await self._store(lambda now: self.plan(batch, checked, now=now, traceparent=trace))

    async def submit_prepared(
        self, batch: PreparedBatch, *, traceparent: str | None = None
    ) -> list[Outcome]:
        """:meth:`submit` for rows a worker process prepared."""
        if not len(batch.prepared):
            return []
        trace = traceparent or new_traceparent()
        return await self._store(lambda now: self.plan_prepared(batch, now=now, traceparent=trace))

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
            for state in plan.states:
                if isinstance(state, RecordState):
                    self.ledger.apply_record(state)
                else:
                    self.ledger.apply_rejection(state)
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
