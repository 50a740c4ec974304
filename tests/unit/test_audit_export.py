"""An export of a city's audit (services/common/audit/export.py) and chains checked from an
anchor (verify.py), without a broker: the chains are made here as the writer makes them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.common.audit import GENESIS_HASH, SCHEMA, AuditMessage, chain_hash, format_key
from services.common.audit.export import BundleUnreadable, build_bundle, verify_bundle
from services.common.audit.signing import AuditKeyring, AuditSigner
from services.common.audit.verify import verify_chain
from services.common.avro import AvroSerde

SUZHOU, WUXI = "320500", "320200"
CODES = {"suzhou": SUZHOU, "wuxi": WUXI}
CHINA = timezone(timedelta(hours=8))
SERDE = AvroSerde()


def _at(day: int, hour: int) -> datetime:
    return datetime(2024, 3, day, hour, tzinfo=CHINA).astimezone(UTC)


def _chains(plan: Sequence[tuple[str, datetime, bool]], signer: AuditSigner) -> list[AuditMessage]:
    """Topic messages of ``plan`` (chain, the call's time, whether the record is a batch's
    signed head), in that order."""
    heads: dict[str, tuple[int, str]] = {}
    messages = []
    for offset, (chain, at, signed) in enumerate(plan):
        seq, prev_hash = heads.get(chain, (0, GENESIS_HASH))
        record: dict[str, Any] = {
            "seq": seq + 1,
            "node_city": signer.node_city,
            "direction": "INBOUND",
            "caller_city": WUXI,
            "callee_city": signer.node_city,
            "method": "/creditlink.peer.v1.CreditCheckService/CheckSubject",
            "subject_key": None,
            "purpose": f"call {offset}",
            "consent_reference": None,
            "status_code": "OK",
            "denial_code": None,
            "caller_role": "node",
            "latency_ms": 1,
            "trace_id": None,
            "peer_certificate_sha256": None,
            "at": at,
            "prev_hash": prev_hash,
            "hash": "",
        }
        record["hash"] = chain_hash(SERDE, record)
        heads[chain] = (seq + 1, record["hash"])
        header = signer.header(chain, seq + 1, record["hash"])[1] if signed else None
        messages.append(
            AuditMessage(offset, format_key(chain, seq + 1), SERDE.encode(SCHEMA, record), header)
        )
    return messages


@pytest.fixture
def signer() -> AuditSigner:
    return AuditSigner(SUZHOU, Ed25519PrivateKey.generate())


@pytest.fixture
def keyring(signer: AuditSigner) -> AuditKeyring:
    return AuditKeyring({signer.key_id: (SUZHOU, signer.private_key.public_key())})


# Three China days of chain "lists" (the 2nd's first call is at midnight in China, still the
# 1st in UTC), the 2nd ending on records no signature covers until a batch of the 3rd; chain
# "alerts" ends on the 2nd with records not signed yet.
PLAN = [
    ("lists", _at(1, 10), False),
    ("lists", _at(1, 23), True),
    ("lists", _at(2, 0), False),
    ("alerts", _at(2, 1), True),
    ("lists", _at(2, 9), True),
    ("lists", _at(2, 18), False),
    ("alerts", _at(2, 19), False),
    ("lists", _at(2, 20), False),
    ("lists", _at(3, 8), False),
    ("lists", _at(3, 9), True),
    ("lists", _at(3, 10), False),
]


def _export(signer: AuditSigner, keyring: AuditKeyring, messages: list[AuditMessage]) -> bytes:
    return build_bundle(
        messages,
        city="suzhou",
        city_code=SUZHOU,
        topic="suzhou.audit.peer-calls.v1",
        since=date(2024, 3, 2),
        until=date(2024, 3, 2),
        signer=signer,
        keyring=keyring,
        exported_at=datetime(2024, 3, 4, tzinfo=UTC),
        serde=SERDE,
    )


def _manifest(bundle: bytes) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads(bundle.splitlines()[-1])["manifest"]
    return manifest


def test_a_chain_from_an_anchor_verifies_without_the_records_before_it(
    signer: AuditSigner, keyring: AuditKeyring
) -> None:
    chain = _chains([("lists", _at(1, h), h == 6) for h in range(1, 7)], signer)
    anchor = SERDE.decode(chain[2].value)
    tail = chain[3:]
    assert verify_chain(tail, SERDE, keyring, {"lists": (3, anchor["hash"])}).ok
    [gap] = verify_chain(tail, SERDE, keyring).problems
    assert (gap.kind, gap.seq, gap.detail) == (
        "removed",
        4,
        "seq 1..3 missing between the start and this record",
    )
    [link] = verify_chain(tail, SERDE, keyring, {"lists": (3, "ab" * 32)}).problems
    assert (link.kind, link.seq) == ("changed", 4)
    assert "the anchor's hash" in link.detail
    [before] = verify_chain(chain[2:], SERDE, keyring, {"lists": (3, anchor["hash"])}).problems
    assert (before.kind, before.seq) == ("reordered", 3)


def test_an_export_holds_the_days_each_chain_anchored_and_covered_by_a_signature(
    signer: AuditSigner, keyring: AuditKeyring
) -> None:
    messages = _chains(PLAN, signer)
    bundle = _export(signer, keyring, messages)
    manifest = _manifest(bundle)
    lists, alerts = sorted(manifest["chains"], key=lambda c: c["chain"] != "lists")
    # China day 2 of "lists" is seq 3..6; 6 is unsigned, so the run goes on to the signed 8.
    assert (lists["first_seq"], lists["last_seq_in_range"], lists["last_seq"]) == (3, 6, 8)
    assert (lists["anchor_seq"], lists["anchor_hash"]) == (
        2,
        SERDE.decode(messages[1].value)["hash"],
    )
    assert lists["unsigned_from"] is None
    # Nothing signs "alerts" after its seq 1 yet: the manifest says so.
    assert (alerts["first_seq"], alerts["last_seq"], alerts["unsigned_from"]) == (1, 2, 2)
    assert alerts["anchor_hash"] == GENESIS_HASH
    assert manifest["records"] == 8
    assert [json.loads(line)["offset"] for line in bundle.splitlines()[:-1]] == [*range(2, 10)]
    check = verify_bundle(bundle, keyring, CODES, SERDE)
    assert check.ok, check.problems
    assert any("seq 2 not yet signed" in line for line in check.checked)


def test_every_changed_byte_fails(signer: AuditSigner, keyring: AuditKeyring) -> None:
    bundle = _export(signer, keyring, _chains(PLAN, signer))
    manifest_at = bundle.rindex(b"\n", 0, len(bundle) - 1) + 1
    # Every byte of the manifest line (its signature's encoding too), every 7th of the records.
    positions = sorted({*range(0, manifest_at, 7), *range(manifest_at, len(bundle))})
    for position in positions:
        for flip in (0x01, 0x20):
            changed = bytearray(bundle)
            changed[position] ^= flip
            try:
                check = verify_bundle(bytes(changed), keyring, CODES, SERDE)
            except BundleUnreadable:
                continue
            assert not check.ok, (position, flip)


def test_a_removed_record_or_another_citys_key_fails(
    signer: AuditSigner, keyring: AuditKeyring
) -> None:
    bundle = _export(signer, keyring, _chains(PLAN, signer))
    lines = bundle.splitlines(keepends=True)
    removed = b"".join(lines[:3] + lines[4:])
    check = verify_bundle(removed, keyring, CODES, SERDE)
    assert any("SHA-256" in p for p in check.problems)
    assert any("REMOVED" in p for p in check.problems)
    wuxi = AuditSigner(SUZHOU, Ed25519PrivateKey.generate())  # Wuxi's key, signing as Suzhou
    both = AuditKeyring({**keyring.keys, wuxi.key_id: (WUXI, wuxi.private_key.public_key())})
    forged = _export(wuxi, both, _chains(PLAN, signer))
    [problem] = verify_bundle(forged, both, CODES, SERDE).problems
    assert f"signed with {WUXI}'s key {wuxi.key_id}, not {SUZHOU}'s" in problem
    # Wuxi's export of Suzhou's records: the manifest verifies, no record is Wuxi's.
    as_wuxi = AuditSigner(WUXI, wuxi.private_key)
    other = build_bundle(
        _chains(PLAN, signer),
        city="wuxi",
        city_code=WUXI,
        topic="suzhou.audit.peer-calls.v1",
        since=date(2024, 3, 2),
        until=date(2024, 3, 2),
        signer=as_wuxi,
        keyring=both,
        exported_at=datetime(2024, 3, 4, tzinfo=UTC),
    )
    problems = verify_bundle(other, both, CODES, SERDE).problems
    assert len(problems) == 6
    assert all(
        "OTHER-CITY" in p and "written by 320500's node, not 320200's" in p for p in problems
    )


def test_what_is_no_export_is_unreadable(signer: AuditSigner, keyring: AuditKeyring) -> None:
    for data in (b"", b"\n", b'{"offset":1}\n', _export(signer, keyring, [])[:-1]):
        with pytest.raises(BundleUnreadable):
            verify_bundle(data, keyring, CODES, SERDE)
    assert verify_bundle(_export(signer, keyring, []), keyring, CODES, SERDE).ok
