"""The events intake publishes, as Avro-ready dicts, and their keys, ids and headers.

Ids are deterministic so a redelivery is recognisable everywhere downstream (docs/design.md §2.4:
handlers are idempotent on ``ce_id``):

* a credit record event's ``ce_id`` is ``<record_id>.v<version>``;
* a rejection's id is a UUID 5 over city, department and the (masked) payload, so the same
  bad line of the same file, or the same bad message of a retried call, is one rejection.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Final, Literal

from services.common import cloudevents
from services.common.avro import AvroSerde
from services.common.cloudevents import new_traceparent, source_for
from services.common.topic_names import QUALITY_TOPIC as QUALITY_TOPIC
from services.common.topic_names import RECORDS_TOPIC as RECORDS_TOPIC
from services.common.topic_names import REJECTED_TOPIC as REJECTED_TOPIC
from services.intake.encode.record_encoding import ContentParts, default_encoding
from services.intake.validate.validation import InvalidRecord, ValidRecord, Violation

CREDIT_RECORD_SCHEMA: Final = "creditlink.v1.CreditRecord"
REJECTED_RECORD_SCHEMA: Final = "creditlink.v1.RejectedRecord"
QUALITY_SCHEMA: Final = "creditlink.v1.DisclosureQuality"

RECORD_ACCEPTED: Final = "cn.creditlink.credit.record.accepted.v1"
RECORD_REJECTED: Final = "cn.creditlink.credit.record.rejected.v1"
QUALITY_COMPUTED: Final = "cn.creditlink.quality.disclosure.computed.v1"

UNKNOWN_DEPARTMENT: Final = "UNKNOWN"
_REJECTION_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:creditlink:intake:rejection")

Channel = Literal["FILE", "GRPC"]


# Not frozen: built per record (services/intake/__init__.py).
@dataclass(slots=True)
class SubmissionSource:
    """Where one submission came from (``RecordSource`` of the events)."""

    channel: Channel
    submitted_at: datetime
    request_id: str | None = None
    file_name: str | None = None
    line_number: int | None = None

    def as_avro(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "request_id": self.request_id,
            "file_name": self.file_name,
            "line_number": self.line_number,
            "submitted_at": self.submitted_at,
        }


def record_event_id(record_id: str, version: int) -> str:
    return f"{record_id}.v{version}"


def rejection_id_for(city_code: str, department_code: str, payload: bytes) -> str:
    digest = hashlib.sha256(payload).hexdigest()
    return str(uuid.uuid5(_REJECTION_NAMESPACE, f"{city_code}|{department_code}|{digest}"))


def credit_record(
    record: ValidRecord,
    *,
    city_code: str,
    version: int,
    report_date: date,
    accepted_at: datetime,
    source: SubmissionSource,
) -> dict[str, Any]:
    """The ``CreditRecord`` event of an accepted record (``version`` > 1 for a correction).

    ``report_date`` is the first report's (the record became public then), for every version.
    """
    content = record.content
    publicity = dict(content["publicity"])
    publicity["publicity_start"] = report_date
    return {
        "record_id": record.record_id,
        "version": version,
        "supersedes_version": version - 1 if version > 1 else None,
        "category": content["category"],
        "city_code": city_code,
        "department_code": content["department_code"],
        "department_name": content["department_name"],
        "subject": content["subject"],
        "decision_number": content["decision_number"],
        "decision_date": content["decision_date"],
        "report_date": report_date,
        "accepted_at": accepted_at,
        "publicity": publicity,
        "penalty": content["penalty"],
        "licensing": content["licensing"],
        "list_decision": content["list_decision"],
        "court": content["court"],
        "commitment": content["commitment"],
        "attributes": content["attributes"],
        "source": source.as_avro(),
    }


def encode_credit_record(
    serde: AvroSerde,
    record: ValidRecord,
    *,
    city_code: str,
    version: int,
    report_date: date,
    accepted_at: datetime,
    source: SubmissionSource,
    content_parts: ContentParts | None = None,
) -> bytes:
    """``serde.encode`` of :func:`credit_record`, written around the content's encoding
    (:mod:`services.intake.encode.record_encoding`): ``content_parts`` when the caller has
    it already (it hashed the content), else made here."""
    encoding = default_encoding()
    parts = content_parts
    if parts is None:
        parts = encoding.content_parts(record.content)
    if parts is not None and serde.writer_schema(CREDIT_RECORD_SCHEMA) is encoding.schema:
        fields = {
            "record_id": record.record_id,
            "version": version,
            "supersedes_version": version - 1 if version > 1 else None,
            "city_code": city_code,
            "report_date": report_date,
            "accepted_at": accepted_at,
            "publicity": {"publicity_start": report_date},
            "source": source.as_avro(),
        }
        value = encoding.event(parts, fields)
        if value is not None:
            return value
    return serde.encode(
        CREDIT_RECORD_SCHEMA,
        credit_record(
            record,
            city_code=city_code,
            version=version,
            report_date=report_date,
            accepted_at=accepted_at,
            source=source,
        ),
    )


def reasons_avro(reasons: tuple[Violation, ...]) -> list[dict[str, str]]:
    return [{"field": v.field, "code": v.code, "message": v.message} for v in reasons]


def rejected_record(
    rejection: InvalidRecord,
    *,
    rejection_id: str,
    city_code: str,
    department_code: str,
    payload: bytes,
    payload_encoding: str,
    rejected_at: datetime,
    source: SubmissionSource,
) -> dict[str, Any]:
    identity = rejection.identity
    return {
        "rejection_id": rejection_id,
        "city_code": city_code,
        "department_code": department_code,
        "department_name": identity.department_name,
        "record_id": identity.record_id,
        "claimed_category": identity.claimed_category,
        "payload": payload,
        "payload_encoding": payload_encoding,
        "source": source.as_avro(),
        "reasons": reasons_avro(rejection.reasons),
        "rejected_at": rejected_at,
    }


class HeaderTemplate(cloudevents.HeaderTemplate):
    """CloudEvents headers of the events of one intake batch: this city's intake as source,
    one time and one trace context (a new one when ``traceparent`` is None); each event
    varies only in ``ce_id`` and ``ce_subject``, so its headers cost a list copy."""

    def __init__(
        self,
        *,
        city: str,
        event_type: str,
        data_schema: str,
        time: datetime,
        traceparent: str | None,
    ) -> None:
        super().__init__(
            event_type=event_type,
            source=source_for(city, "intake"),
            data_schema=data_schema,
            time=time,
            traceparent=traceparent or new_traceparent(),
        )


def quality_key(quality: Mapping[str, Any]) -> str:
    return str(quality["department_day"])
