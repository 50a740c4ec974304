"""``RecordIntakeService`` messages to submissions, and verdicts to ``RecordResult``.

A protobuf ``CreditRecord`` becomes the same canonical submission a file row becomes, so
both channels share one validator. Enum values travel by name (``PENALTY_TYPE_FINE``), the
zero value as absent, and a number the enum does not define as its number, which validation
rejects as an unknown value.
"""

from __future__ import annotations

from typing import Any, Final

from google.protobuf.message import DecodeError, Message

from creditlink.peer.v1 import common_pb2, record_intake_pb2
from services.common.logging import mask_resident_ids
from services.intake.validate.validation import Violation

PAYLOAD_ENCODING: Final = "application/x-protobuf; messageType=creditlink.peer.v1.CreditRecord"
_ID_FIELDS: Final = ("resident_id_number", "legal_representative_id_number")


def _enum(message: Message, name: str) -> str | None:
    number = getattr(message, name)
    if not number:
        return None
    enum = message.DESCRIPTOR.fields_by_name[name].enum_type
    value = enum.values_by_number.get(number) if enum is not None else None
    return value.name if value is not None else str(number)


def _enum_list(message: Message, name: str) -> list[str]:
    enum = message.DESCRIPTOR.fields_by_name[name].enum_type
    names: list[str] = []
    for number in getattr(message, name):
        value = enum.values_by_number.get(number) if enum is not None else None
        names.append(value.name if value is not None else str(number))
    return names


def _optional(message: Message, name: str) -> Any:
    return getattr(message, name) if message.HasField(name) else None


def submission_from_proto(record: record_intake_pb2.CreditRecord) -> dict[str, Any]:
    """The canonical submission of a protobuf ``CreditRecord``."""
    submission: dict[str, Any] = {
        "category": _enum(record, "category"),
        "department_code": record.department_code,
        "department_name": record.department_name,
        "decision_number": record.decision_number,
        "decision_date": record.decision_date,
        "report_date": record.report_date,
        "attributes": dict(record.attributes),
    }
    if record.HasField("subject"):
        subject = record.subject
        submission["subject"] = {
            "subject_type": _enum(subject, "subject_type"),
            "name": subject.name,
            "uscc": subject.uscc,
            "resident_id_number": subject.resident_id_number,
            "legal_representative": subject.legal_representative,
            "legal_representative_id_number": subject.legal_representative_id_number,
        }
    details = record.WhichOneof("details")
    if details == "penalty":
        penalty = record.penalty
        submission["penalty"] = {
            "domain": _enum(penalty, "domain"),
            "penalty_types": _enum_list(penalty, "penalty_types"),
            "fine_amount_fen": _optional(penalty, "fine_amount_fen"),
            "confiscated_amount_fen": _optional(penalty, "confiscated_amount_fen"),
            "violation": penalty.violation,
            "legal_basis": penalty.legal_basis,
            "severity": _enum(penalty, "severity"),
        }
    elif details == "licensing":
        licensing = record.licensing
        submission["licensing"] = {
            "licence_type": _enum(licensing, "licence_type"),
            "licence_name": licensing.licence_name,
            "licence_number": licensing.licence_number,
            "licensed_matter": licensing.licensed_matter,
            "valid_from": licensing.valid_from,
            "valid_to": licensing.valid_to,
        }
    elif details == "list_decision":
        decision = record.list_decision
        submission["list_decision"] = {
            "list_type": _enum(decision, "list_type"),
            "list_name": decision.list_name,
            "action": _enum(decision, "action"),
            "removal_reason": _enum(decision, "removal_reason"),
            "objection_upheld": _optional(decision, "objection_upheld"),
            "designation_decision_number": decision.designation_decision_number,
            "legal_basis": decision.legal_basis,
            "effective_from": decision.effective_from,
            "expires_at": decision.expires_at,
        }
    elif details == "court":
        court = record.court
        submission["court"] = {
            "court_name": court.court_name,
            "case_number": court.case_number,
            "enforcement_basis": court.enforcement_basis,
            "obligation": court.obligation,
            "performance": _enum(court, "performance"),
            "dishonest_conduct": court.dishonest_conduct,
            "filed_on": court.filed_on,
            "published_on": court.published_on,
            "debtor_is_government_body": court.debtor_is_government_body,
        }
    elif details == "commitment":
        commitment = record.commitment
        submission["commitment"] = {
            "commitment_type": _enum(commitment, "commitment_type"),
            "matter": commitment.matter,
            "content": commitment.content,
            "committed_on": commitment.committed_on,
            "fulfilment": _enum(commitment, "fulfilment"),
        }
    return submission


def _mask_strings(message: Message) -> None:
    for descriptor, value in message.ListFields():
        if descriptor.type == descriptor.TYPE_STRING and not descriptor.is_repeated:
            if descriptor.name in _ID_FIELDS:
                setattr(message, descriptor.name, value[:6] + "*" * max(0, len(value) - 6))
            else:
                setattr(message, descriptor.name, mask_resident_ids(value))
        elif descriptor.type == descriptor.TYPE_MESSAGE:
            entry = descriptor.message_type
            if entry is not None and entry.GetOptions().map_entry:
                for key in list(value):
                    value[key] = mask_resident_ids(value[key])
            elif not descriptor.is_repeated:
                _mask_strings(value)


def rejection_payload(record: record_intake_pb2.CreditRecord) -> bytes:
    """The submitted message with resident ID numbers masked, deterministically serialised."""
    masked = record_intake_pb2.CreditRecord()
    masked.CopyFrom(record)
    _mask_strings(masked)
    return masked.SerializeToString(deterministic=True)


def submission_from_payload(payload: bytes) -> dict[str, Any] | None:
    """Read a rejection payload written by :func:`rejection_payload` back (ID numbers masked)."""
    record = record_intake_pb2.CreditRecord()
    try:
        record.ParseFromString(payload)
    except DecodeError:
        return None
    return submission_from_proto(record)


def kebab(code: str) -> str:
    """``DATE_IN_FUTURE`` → ``date-in-future`` (FieldViolation.code in common.proto)."""
    return code.lower().replace("_", "-")


def field_violation(violation: Violation) -> common_pb2.FieldViolation:
    return common_pb2.FieldViolation(
        field=violation.field, code=kebab(violation.code), message=violation.message
    )
