"""Receipts both sides keep (PeerCallAudit v5; services/common/audit/verify.py), without a
broker: a forged or mismatched receipt is found by ``verify`` on the caller's chain alone,
and a callee whose record no longer matches the receipt by checking the two chains against
each other, from either side, each named by position.

The path over real mutual TLS, with a node killed, is tests/integration/test_audit_crash.py.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.common.audit import GENESIS_HASH, SCHEMA, AuditMessage, chain_hash, format_key
from services.common.audit import verify_chain as verify
from services.common.audit.chain import Receipt, exchange_digest
from services.common.audit.signing import (
    AuditKeyring,
    AuditSigner,
    load_audit_signer,
    new_audit_key_files,
)
from services.common.audit.verify import check_receipts
from services.common.avro import AvroSerde

SERDE = AvroSerde()
SUZHOU, WUXI = "320500", "320200"
CODES = {"suzhou": SUZHOU, "wuxi": WUXI}
CHECK = "/creditlink.peer.v1.CreditCheckService/CheckSubject"
CALLS = 4


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    for city in CODES:
        new_audit_key_files(directory, city)
    return directory


@pytest.fixture(scope="module")
def keyring(keys: Path) -> AuditKeyring:
    return AuditKeyring.from_directory(keys, CODES)


@pytest.fixture(scope="module")
def signers(keys: Path) -> dict[str, AuditSigner]:
    return {code: load_audit_signer(keys, city, code) for city, code in CODES.items()}


def _record(seq: int, node: str, direction: str, n: int, **fields: Any) -> dict[str, Any]:
    return {
        "seq": seq,
        "node_city": node,
        "direction": direction,
        "caller_city": WUXI,
        "callee_city": SUZHOU,
        "method": CHECK,
        "subject_key": "L:91320500MA1W8XY409",
        "purpose": f"TENDERING {n}",
        "consent_reference": None,
        "subjects": [],
        "status_code": "OK",
        "denial_code": None,
        "caller_role": "node",
        "latency_ms": 3,
        "trace_id": None,
        "peer_certificate_sha256": None,
        "exchange_sha256": exchange_digest(CHECK, (f"request {n}".encode(), b"answer")),
        "receipt": None,
        "at": datetime(2025, 1, 2, 3, 4, n, tzinfo=UTC),
        "prev_hash": "",
        "hash": "",
        **fields,
    }


def _messages(records: list[dict[str, Any]], chain: str, signer: AuditSigner) -> list[AuditMessage]:
    """Link ``records`` into ``chain`` and sign its last record as the head."""
    messages, previous = [], GENESIS_HASH
    for record in records:
        record["prev_hash"] = previous
        record["hash"] = previous = chain_hash(SERDE, record)
    for offset, record in enumerate(records):
        signature = None
        if record is records[-1]:
            signature = signer.header(chain, record["seq"], record["hash"])[1]
        key = format_key(chain, record["seq"])
        messages.append(AuditMessage(offset, key, SERDE.encode(SCHEMA, record), signature))
    return messages


def _two_sides(
    signers: dict[str, AuditSigner],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Suzhou's records of CALLS calls from Wuxi, and Wuxi's OUTBOUND records of them, each
    with the receipt Suzhou signed."""
    callee = [_record(n + 1, SUZHOU, "INBOUND", n) for n in range(CALLS)]
    _messages(callee, "lists", signers[SUZHOU])
    caller = []
    for n, theirs in enumerate(callee):
        exchange = theirs["exchange_sha256"]
        signature = signers[SUZHOU].receipt_signature(
            "lists", theirs["seq"], theirs["hash"], exchange
        )
        receipt = Receipt("lists", theirs["seq"], theirs["hash"], exchange, signature)
        caller.append(_record(n + 1, WUXI, "OUTBOUND", n, receipt=receipt.as_record()))
    return callee, caller


def test_honest_receipts_verify_on_both_sides(
    signers: dict[str, AuditSigner], keyring: AuditKeyring
) -> None:
    callee, caller = _two_sides(signers)
    theirs = _messages(callee, "lists", signers[SUZHOU])
    ours = _messages(caller, "lists-mirror", signers[WUXI])
    assert verify(ours, keyring=keyring).ok
    assert verify(theirs, keyring=keyring).ok
    assert check_receipts(ours, theirs) == []
    assert check_receipts(theirs, ours) == []


def test_a_forged_receipt_is_found_on_the_callers_chain(
    signers: dict[str, AuditSigner], keyring: AuditKeyring
) -> None:
    """The caller (or whoever wrote its topic) claims a receipt Suzhou never signed: one of
    Wuxi's own key, and one with Suzhou's signature moved onto another record's hash."""
    _, caller = _two_sides(signers)
    by_wuxi = Receipt.from_record(caller[1]["receipt"])
    caller[1]["receipt"] = dataclasses.replace(
        by_wuxi,
        signature=signers[WUXI].receipt_signature(
            "lists", by_wuxi.callee_seq, by_wuxi.callee_hash, by_wuxi.exchange_sha256
        ),
    ).as_record()
    moved = Receipt.from_record(caller[2]["receipt"])
    caller[2]["receipt"] = dataclasses.replace(moved, callee_hash="f" * 64).as_record()
    report = verify(_messages(caller, "lists-mirror", signers[WUXI]), keyring=keyring)
    found = [(p.kind, p.seq, p.offset) for p in report.problems]
    assert found == [("bad-receipt", 2, 1), ("bad-receipt", 3, 2)], report.problems
    assert "320200's key" in report.problems[0].detail


def test_a_receipt_for_another_exchange_is_found_on_the_callers_chain(
    signers: dict[str, AuditSigner], keyring: AuditKeyring
) -> None:
    """Suzhou signed a receipt, but for an exchange other than the one Wuxi sent and got."""
    _, caller = _two_sides(signers)
    caller[3]["exchange_sha256"] = exchange_digest(CHECK, (b"request 3", b"another answer"))
    report = verify(_messages(caller, "lists-mirror", signers[WUXI]), keyring=keyring)
    assert [(p.kind, p.seq, p.offset) for p in report.problems] == [("receipt-mismatch", 4, 3)]


def test_a_callee_record_rewritten_or_removed_fails_the_receipts_from_either_side(
    signers: dict[str, AuditSigner], keyring: AuditKeyring
) -> None:
    """Suzhou rewrote its record of the second call and re-signed the chain with its own key,
    so its chain verifies alone (re-linked, the third record's hash changed too); and dropped
    the fourth. Wuxi's receipts show each."""
    callee, caller = _two_sides(signers)
    ours = _messages(caller, "lists-mirror", signers[WUXI])
    callee[1]["purpose"] = "SOMETHING ELSE"
    theirs = _messages(callee[:3], "lists", signers[SUZHOU])
    assert verify(theirs, keyring=keyring).ok  # on its own the rewrite holds
    from_caller = check_receipts(ours, theirs)
    assert [(p.kind, p.seq, p.offset) for p in from_caller] == [
        ("receipt-mismatch", 2, 1),
        ("receipt-mismatch", 3, 2),
        ("receipt-unmatched", 4, 3),
    ]
    assert "seq 2" in from_caller[0].detail
    assert "seq 4" in from_caller[2].detail
    from_callee = check_receipts(theirs, ours, names=("suzhou", "wuxi"))
    assert [(p.kind, p.seq) for p in from_callee] == [(p.kind, p.seq) for p in from_caller]
    assert all("receipt on wuxi" in p.detail for p in from_callee)


def test_a_receipt_trailer_round_trips_and_rejects_what_is_not_one(
    signers: dict[str, AuditSigner],
) -> None:
    receipt = Receipt(
        "lists",
        7,
        "a" * 64,
        "b" * 64,
        signers[SUZHOU].receipt_signature("lists", 7, "a" * 64, "b" * 64),
    )
    assert Receipt.parse(receipt.trailer()) == receipt
    assert Receipt.parse(dataclasses.replace(receipt, callee_chain=None).trailer()) == (
        dataclasses.replace(receipt, callee_chain=None)
    )
    assert Receipt.parse("lists;seven;a;b;c") is None
    assert Receipt.parse("lists;7;a;b") is None
