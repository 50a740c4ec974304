"""Between the lists service's values and the peer contract's protobuf messages.

The contract mirrors the Avro events field for field (contracts/proto/.../common.proto);
the differences are the wire forms: enums carry their type's prefix (``LIST_TYPE_BLACK``),
dates are ISO 8601 strings, an absent end date or subject name is the empty string.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Final, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from creditlink.peer.v1 import common_pb2, credit_check_pb2, list_sync_pb2
from services.lists.measures import AppliedMeasure, MeasureKind
from services.lists.model import (
    ChangeAction,
    EntryStatus,
    ListChange,
    ListEntry,
    ListType,
    RemovalReason,
    SubjectType,
)

LIST_TYPE_TO_PROTO: Final = {t: common_pb2.ListType.Value(f"LIST_TYPE_{t.value}") for t in ListType}
LIST_TYPE_FROM_PROTO: Final = {v: k for k, v in LIST_TYPE_TO_PROTO.items()}
STATUS_TO_PROTO: Final = {
    s: common_pb2.ListEntryStatus.Value(f"LIST_ENTRY_STATUS_{s.value}") for s in EntryStatus
}
STATUS_FROM_PROTO: Final = {v: k for k, v in STATUS_TO_PROTO.items()}
REASON_TO_PROTO: Final = {
    r: common_pb2.RemovalReason.Value(f"REMOVAL_REASON_{r.value}") for r in RemovalReason
}
REASON_FROM_PROTO: Final = {v: k for k, v in REASON_TO_PROTO.items()}
SUBJECT_TO_PROTO: Final = {
    s: common_pb2.SubjectType.Value(f"SUBJECT_TYPE_{s.value}") for s in SubjectType
}
SUBJECT_FROM_PROTO: Final = {v: k for k, v in SUBJECT_TO_PROTO.items()}
ACTION_TO_PROTO: Final = {
    a: list_sync_pb2.ListChangeAction.Value(f"LIST_CHANGE_ACTION_{a.value}") for a in ChangeAction
}
ACTION_FROM_PROTO: Final = {v: k for k, v in ACTION_TO_PROTO.items()}
KIND_TO_PROTO: Final = {
    k: credit_check_pb2.MeasureKind.Value(f"MEASURE_KIND_{k.value}") for k in MeasureKind
}


_K = TypeVar("_K")
_V = TypeVar("_V")


class ContractError(ValueError):
    """A peer's message does not say what the contract requires (e.g. an UNSPECIFIED enum)."""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(moment: datetime) -> Timestamp:
    """``moment`` as a protobuf Timestamp, to the microsecond (``Timestamp.FromDatetime``
    gives the same, by a slower road; a naive ``moment`` is local time, as there)."""
    since = (moment if moment.tzinfo is not None else moment.astimezone(UTC)) - _EPOCH
    return Timestamp(seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1000)


def _lookup(table: dict[_K, _V], value: _K, what: str) -> _V:
    try:
        return table[value]
    except KeyError:
        raise ContractError(f"{what} {value!r} is not allowed here") from None


def entry_to_proto(entry: ListEntry) -> list_sync_pb2.ListEntry:
    return list_sync_pb2.ListEntry(
        entry_key=entry.entry_key,
        list_type=LIST_TYPE_TO_PROTO[entry.list_type],
        list_name=entry.list_name,
        issuing_city=entry.issuing_city,
        issuing_department_code=entry.issuing_department_code,
        issuing_department_name=entry.issuing_department_name,
        subject_key=entry.subject_key,
        subject_type=SUBJECT_TO_PROTO[entry.subject_type],
        subject_name=entry.subject_name or "",
        legal_basis=entry.legal_basis,
        decision_reference=entry.decision_reference,
        effective_from=entry.effective_from.isoformat(),
        expires_at=entry.expires_at.isoformat() if entry.expires_at else "",
        status=STATUS_TO_PROTO[entry.status],
        removal_reason=(
            REASON_TO_PROTO[entry.removal_reason]
            if entry.removal_reason
            else common_pb2.REMOVAL_REASON_UNSPECIFIED
        ),
        version=entry.version,
        updated_at=timestamp(entry.updated_at),
        source_record_id=entry.source_record_id or "",
        attributes=dict(entry.attributes),
    )


def _day(text: str, what: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ContractError(f"{what} {text!r} is not an ISO 8601 date") from None


def entry_from_proto(message: list_sync_pb2.ListEntry) -> ListEntry:
    subject_type = _lookup(SUBJECT_FROM_PROTO, message.subject_type, "subject_type")
    status = _lookup(STATUS_FROM_PROTO, message.status, "status")
    reason = REASON_FROM_PROTO.get(message.removal_reason)
    if status is EntryStatus.REMOVED and reason is None:
        raise ContractError(f"entry {message.entry_key} is REMOVED without a removal reason")
    if message.version < 1:
        raise ContractError(f"entry {message.entry_key} has version {message.version}")
    return ListEntry(
        entry_key=message.entry_key,
        list_type=_lookup(LIST_TYPE_FROM_PROTO, message.list_type, "list_type"),
        list_name=message.list_name,
        issuing_city=message.issuing_city,
        issuing_department_code=message.issuing_department_code,
        issuing_department_name=message.issuing_department_name,
        subject_key=message.subject_key,
        subject_type=subject_type,
        # A natural person's name never crosses a border, whatever a peer sends.
        subject_name=(
            message.subject_name or None if subject_type is SubjectType.ORGANISATION else None
        ),
        legal_basis=message.legal_basis,
        decision_reference=message.decision_reference,
        effective_from=_day(message.effective_from, "effective_from"),
        expires_at=_day(message.expires_at, "expires_at") if message.expires_at else None,
        status=status,
        removal_reason=reason if status is EntryStatus.REMOVED else None,
        version=message.version,
        updated_at=message.updated_at.ToDatetime(tzinfo=UTC),
        source_record_id=message.source_record_id or None,
        attributes=dict(message.attributes),
    )


def change_to_proto(change: ListChange) -> list_sync_pb2.ListChange:
    return list_sync_pb2.ListChange(
        change_id=change.change_id,
        issuing_city=change.issuing_city,
        sequence=change.sequence,
        action=ACTION_TO_PROTO[change.action],
        entry=entry_to_proto(change.entry),
        changed_at=timestamp(change.changed_at),
    )


def change_from_proto(message: list_sync_pb2.ListChange) -> ListChange:
    change = ListChange(
        issuing_city=message.issuing_city,
        sequence=message.sequence,
        action=_lookup(ACTION_FROM_PROTO, message.action, "action"),
        entry=entry_from_proto(message.entry),
        changed_at=message.changed_at.ToDatetime(tzinfo=UTC),
    )
    if message.change_id != change.change_id:
        raise ContractError(f"change_id {message.change_id!r} is not {change.change_id!r}")
    return change


def membership(entry: ListEntry) -> credit_check_pb2.Membership:
    return credit_check_pb2.Membership(
        entry_key=entry.entry_key,
        list_type=LIST_TYPE_TO_PROTO[entry.list_type],
        list_name=entry.list_name,
        issuing_city=entry.issuing_city,
        issuing_department_name=entry.issuing_department_name,
        status=STATUS_TO_PROTO[entry.status],
        objection_pending=entry.objection_pending,
        effective_from=entry.effective_from.isoformat(),
        expires_at=entry.expires_at.isoformat() if entry.expires_at else "",
        removal_reason=(
            REASON_TO_PROTO[entry.removal_reason]
            if entry.removal_reason
            else common_pb2.REMOVAL_REASON_UNSPECIFIED
        ),
        version=entry.version,
    )


def measures_to_proto(measures: Iterable[AppliedMeasure]) -> list[credit_check_pb2.Measure]:
    return [
        credit_check_pb2.Measure(
            measure_code=m.code,
            kind=KIND_TO_PROTO[m.kind],
            description=m.description,
            legal_basis=m.legal_basis,
            triggered_by_entry_keys=list(m.triggered_by),
        )
        for m in measures
    ]
