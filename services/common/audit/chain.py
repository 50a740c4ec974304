"""The chain itself: its constants, keys, hash and the entry the guard hands over."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from services.common.avro import AvroSerde
from services.common.topic_names import AUDIT_TOPIC as AUDIT_TOPIC

SCHEMA: Final = "creditlink.v1.PeerCallAudit"
EVENT_TYPE: Final = "cn.creditlink.audit.peer-call.v1"
GENESIS_HASH: Final = "0" * 64
_TAIL_WINDOW = 500


class AuditUnavailable(RuntimeError):
    """The audit chain cannot be extended; peer calls must be refused until it can."""


def chain_hash(serde: AvroSerde, record: Mapping[str, Any], version: int | None = None) -> str:
    """The ``hash`` a record must carry: SHA-256(prev_hash ASCII + encoding with hash "")."""
    body = serde.encode(SCHEMA, {**record, "hash": ""}, version)
    return hashlib.sha256(str(record["prev_hash"]).encode("ascii") + body).hexdigest()


def format_key(chain: str | None, seq: int) -> str:
    return f"{seq}" if chain is None else f"{chain}:{seq}"


def parse_key(key: str) -> tuple[str | None, int | None]:
    chain, sep, seq = key.rpartition(":")
    if not seq.isdigit():
        return (chain if sep else None), None
    return (chain if sep else None), int(seq)


@dataclass(slots=True)  # not frozen: built on every peer call, and frozen init is slower
class AuditEntry:
    """What the peer-call guard knows about one finished call (the chain fields are added here)."""

    caller_city: str
    callee_city: str
    method: str
    purpose: str
    status_code: str
    latency_ms: int
    at: datetime
    subject_key: str | None = None
    consent_reference: str | None = None
    traceparent: str | None = None
    peer_certificate_sha256: str | None = None
    direction: str = "INBOUND"
    #: The stable code of the refusal that ended the call (the ``creditlink-denial`` trailer;
    #: for an OUTBOUND record, of what this node refused from the peer); None when the call
    #: was not refused.
    denial_code: str | None = None
    #: The caller's role (``node``, ``department:<USCC>``, ``regulator:<USCC>``; PeerCallAudit
    #: v3), None for a caller not identified.
    caller_role: str | None = None
    #: Each subject of a batch call: (subject key, consent reference, denial code)
    #: (PeerCallAudit v4 ``subjects``); empty for a call about one subject or none.
    subjects: tuple[tuple[str, str | None, str | None], ...] = ()
