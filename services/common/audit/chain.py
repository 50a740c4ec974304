"""The chain itself: its constants, keys, hash and the entry the guard hands over."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
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


_EXCHANGE_DOMAIN: Final = b"creditlink-exchange-v1"
RECEIPT_TRAILER: Final = "creditlink-receipt"


def exchange_digest(method: str, messages: Iterable[bytes]) -> str:
    """The ``exchange_sha256`` of a call: SHA-256 over the domain, the method, then each
    message as exchanged (the request, then every response), each as its length in 8
    big-endian bytes and its deterministic protobuf encoding (PeerCallAudit v5). Both sides
    compute it, each from what it sent and received."""
    digest = ExchangeDigest(method)
    for message in messages:
        digest.add(message)
    return digest.hexdigest()


def encoded_message(message: Any) -> bytes:
    """A protobuf message as the exchange digest takes it: its deterministic encoding."""
    encoded: bytes = message.SerializeToString(deterministic=True)
    return encoded


class ExchangeDigest:
    """:func:`exchange_digest` fed one message at a time (a stream's)."""

    __slots__ = ("_digest",)

    def __init__(self, method: str) -> None:
        self._digest = hashlib.sha256(_EXCHANGE_DOMAIN + b"|" + method.encode() + b"|")

    def add(self, message: bytes) -> None:
        self._digest.update(len(message).to_bytes(8, "big"))
        self._digest.update(message)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Receipt:
    """The callee's signed receipt of one call: the chain position and hash of its record of
    the call, the exchange digest it recorded, and its audit key's signature over them
    (``signing.receipt_message``). Sent as the ``creditlink-receipt`` trailer of an answered
    call; the caller keeps it in its OUTBOUND record (PeerCallAudit v5 ``receipt``)."""

    callee_chain: str | None
    callee_seq: int
    callee_hash: str
    exchange_sha256: str
    signature: str

    def trailer(self) -> str:
        """``<chain>;<seq>;<hash>;<exchange>;<key id>.<signature>`` (ASCII, no ``;`` inside)."""
        return ";".join(
            (
                self.callee_chain or "",
                str(self.callee_seq),
                self.callee_hash,
                self.exchange_sha256,
                self.signature,
            )
        )

    @classmethod
    def parse(cls, value: str) -> Receipt | None:
        """The receipt a trailer carries, None when it is not one (recorded as none)."""
        parts = value.split(";")
        if len(parts) != 5 or not parts[1].isdigit():
            return None
        chain, seq, record_hash, exchange, signature = parts
        return cls(chain or None, int(seq), record_hash, exchange, signature)

    def as_record(self) -> dict[str, Any]:
        return {
            "callee_chain": self.callee_chain,
            "callee_seq": self.callee_seq,
            "callee_hash": self.callee_hash,
            "exchange_sha256": self.exchange_sha256,
            "signature": self.signature,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Receipt:
        return cls(
            record.get("callee_chain"),
            int(record["callee_seq"]),
            str(record["callee_hash"]),
            str(record["exchange_sha256"]),
            str(record["signature"]),
        )


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
    #: The call as exchanged (:func:`exchange_digest`; PeerCallAudit v5), None when no
    #: answer completed it.
    exchange_sha256: str | None = None
    #: OUTBOUND: the callee's receipt, as received (None: it returned none).
    receipt: Receipt | None = None
