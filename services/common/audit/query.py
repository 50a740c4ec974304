"""Who checked a subject, when, from which city and role, for which purpose: the calls about
one subject on a node's audit topic (``python -m services.common.audit query``).

The subject is named by its key, ``L:<USCC>`` or ``N:<pseudonym>``, and a malformed key is
refused without being repeated (it may be a raw ID number, which the audit never holds).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from services.common.audit.read import AuditMessage
from services.common.avro import AvroSerde, SerdeError
from services.common.clock import china_today
from services.common.policy import subject_key_problem


@dataclass(frozen=True, slots=True)
class SubjectCall:
    """One audited call about the subject."""

    at: str
    direction: str
    caller_city: str
    caller_role: str | None
    callee_city: str
    method: str
    purpose: str
    status_code: str
    denial_code: str | None
    consent_reference: str | None
    chain_key: str

    def line(self) -> str:
        method = self.method.rsplit("/", 1)[-1]
        outcome = self.status_code + (f" ({self.denial_code})" if self.denial_code else "")
        consent = f" consent {self.consent_reference}" if self.consent_reference else ""
        return (
            f"{self.at}  {self.direction:<8} {self.caller_city} {self.caller_role or '-'} -> "
            f"{self.callee_city} {method}  purpose {self.purpose!r}  {outcome}{consent}  "
            f"[{self.chain_key}]"
        )


def on_china_days(at: datetime, since: date | None, until: date | None) -> bool:
    """Whether ``at`` falls on a China day from ``since`` to ``until`` (both included; None:
    open)."""
    day = china_today(at)
    return (since is None or day >= since) and (until is None or day <= until)


def calls_about(
    messages: Iterable[AuditMessage],
    subject_key: str,
    *,
    since: date | None = None,
    until: date | None = None,
    serde: AvroSerde | None = None,
) -> list[SubjectCall]:
    """The calls about ``subject_key`` in ``messages``, oldest first, on China days from
    ``since`` to ``until`` (both included). Raises ValueError for a malformed key."""
    if (problem := subject_key_problem(subject_key)) is not None:
        raise ValueError(problem)
    serde = serde or AvroSerde()
    found: list[SubjectCall] = []
    for message in messages:
        try:
            record: dict[str, Any] = serde.decode(message.value)
        except SerdeError:
            continue  # the verifier names it; a query reads what it can
        consent, denial = record.get("consent_reference"), record.get("denial_code")
        if record.get("subject_key") != subject_key:
            # A batch call (PeerCallAudit v4) names each subject with its own consent.
            batch = [s for s in record.get("subjects") or () if s["subject_key"] == subject_key]
            if not batch:
                continue
            consent, denial = batch[0]["consent_reference"], batch[0]["denial_code"]
        if not on_china_days(record["at"], since, until):
            continue
        found.append(
            SubjectCall(
                at=record["at"].isoformat(timespec="seconds"),
                direction=str(record["direction"]),
                caller_city=str(record["caller_city"]),
                caller_role=record.get("caller_role"),
                callee_city=str(record["callee_city"]),
                method=str(record["method"]),
                purpose=str(record["purpose"]),
                status_code=str(record["status_code"]),
                denial_code=denial,
                consent_reference=consent,
                chain_key=message.key,
            )
        )
    return found
