"""The events of one classified batch: the fourth step of a record's road.

Each version the batch publishes and each new rejection becomes one event with its
CloudEvents headers. A first version goes out as it was prepared
(:func:`services.intake.prepare.prepare_verdicts` encoded it); a correction's row is validated
again and encoded at its version; a rejection is encoded here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.common.avro import AvroSerde
from services.intake.classify.decide import Decisions
from services.intake.classify.ledger import RecordState
from services.intake.encode import events as ev
from services.intake.prepare import PreparedBatch
from services.intake.publish.publisher import OutgoingEvent
from services.intake.validate.validation import ValidRecord


@dataclass(frozen=True, slots=True)
class EventFacts:
    """What every event of one batch shares."""

    serde: AvroSerde
    city_code: str
    record_schema_uri: str
    rejected_schema_uri: str
    now: datetime
    traceparent: str


def encode_batch(
    batch: PreparedBatch, decisions: Decisions, facts: EventFacts
) -> list[OutgoingEvent]:
    """The events of what ``decisions`` publishes: the records' versions, then the
    rejections, each in order."""
    chunk = batch.prepared
    events: list[OutgoingEvent] = []
    if decisions.records:
        headers = _headers(facts, ev.RECORD_ACCEPTED, facts.record_schema_uri).headers
        values = chunk.values
        partitions = chunk.partitions
        for index, state in decisions.records:
            subject_key = state.subject_key
            version = state.version
            events.append(
                OutgoingEvent(
                    ev.RECORDS_TOPIC,
                    subject_key.encode(),
                    values[index]
                    if version == 1
                    else _later_version(batch, chunk.lines[index], state, facts),
                    headers(ev.record_event_id(state.record_id, version), subject_key),
                    partitions[index],
                )
            )
    if decisions.rejections:
        headers = _headers(facts, ev.RECORD_REJECTED, facts.rejected_schema_uri).headers
        for index, rejected in decisions.rejections:
            row = chunk.rejections[index]
            department = rejected.department_code
            value = facts.serde.encode(
                ev.REJECTED_RECORD_SCHEMA,
                ev.rejected_record(
                    row.rejection,
                    rejection_id=rejected.rejection_id,
                    city_code=facts.city_code,
                    department_code=department,
                    payload=row.payload,
                    payload_encoding=row.payload_encoding,
                    rejected_at=facts.now,
                    source=batch.source(row.line_number),
                ),
            )
            events.append(
                OutgoingEvent(
                    ev.REJECTED_TOPIC,
                    department.encode(),
                    value,
                    headers(rejected.rejection_id, department),
                )
            )
    return events


def _headers(facts: EventFacts, event_type: str, schema_uri: str) -> ev.HeaderTemplate:
    return ev.HeaderTemplate(
        city=facts.city_code,
        event_type=event_type,
        data_schema=schema_uri,
        time=facts.now,
        traceparent=facts.traceparent,
    )


def _later_version(
    batch: PreparedBatch, line_number: int, state: RecordState, facts: EventFacts
) -> bytes:
    """A correction's event: its row validated again here, encoded at its version."""
    record = batch.revalidate(line_number)
    if not isinstance(record, ValidRecord):
        # A verdict is a pure function of the row: validating again cannot differ.
        raise RuntimeError(f"row {line_number} did not validate again")
    return ev.encode_credit_record(
        facts.serde,
        record,
        city_code=facts.city_code,
        version=state.version,
        report_date=state.first_report_date,
        accepted_at=facts.now,
        source=batch.source(line_number),
    )
