"""Chains verified against the signed heads peers hold (services/common/audit/verify.py,
``checkpoints=``), without a broker: what only a peer's checkpoint can show, named by position.

An altered, deleted or reordered record the chain shows by itself
(tests/unit/test_peer_security_kit.py); these three need the heads a peer holds.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.common.audit import GENESIS_HASH, SCHEMA, AuditMessage, chain_hash, format_key
from services.common.audit import verify_chain as verify
from services.common.audit.checkpoints import HAND_CHECKPOINTS, CheckpointHander
from services.common.audit.heads import Checkpoint, signed_heads
from services.common.audit.signing import (
    AuditKeyring,
    AuditSigner,
    load_audit_signer,
    new_audit_key_files,
)
from services.common.audit.verify import CheckpointsHeld
from services.common.avro import AvroSerde
from services.common.settings import load_settings

SERDE = AvroSerde()
SUZHOU, WUXI = "320500", "320200"
CODES = {"suzhou": SUZHOU, "wuxi": WUXI}
RECEIVED = datetime(2025, 1, 2, 3, 5, tzinfo=UTC)


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
def suzhou(keys: Path) -> AuditSigner:
    return load_audit_signer(keys, "suzhou", SUZHOU)


def _chain(
    signer: AuditSigner | None,
    length: int,
    chain: str = "lists",
    purpose: str = "TENDERING",
    methods: dict[int, str] | None = None,
) -> list[AuditMessage]:
    """A chain of ``length`` records, every third one (and the last) signed as a batch head;
    ``methods`` names the method of some records (by seq), CheckSubject the rest."""
    messages, previous = [], GENESIS_HASH
    for seq in range(1, length + 1):
        record: dict[str, Any] = {
            "seq": seq,
            "node_city": SUZHOU,
            "direction": "INBOUND",
            "caller_city": WUXI,
            "callee_city": SUZHOU,
            "method": (methods or {}).get(
                seq, "/creditlink.peer.v1.CreditCheckService/CheckSubject"
            ),
            "subject_key": "L:91320500MA1W8XY409",
            "purpose": purpose,
            "consent_reference": None,
            "status_code": "OK",
            "denial_code": None,
            "caller_role": "node",
            "latency_ms": seq,
            "trace_id": None,
            "peer_certificate_sha256": None,
            "at": datetime(2025, 1, 2, 3, 4, seq % 60, tzinfo=UTC),
            "prev_hash": previous,
            "hash": "",
        }
        record["hash"] = previous = chain_hash(SERDE, record)
        signature = None
        if signer is not None and (seq % 3 == 0 or seq == length):
            signature = signer.header(chain, seq, record["hash"])[1]
        messages.append(
            AuditMessage(
                offset=seq - 1,
                key=format_key(chain, seq),
                value=SERDE.encode(SCHEMA, record),
                signature=signature,
            )
        )
    return messages


def _held_by_wuxi(messages: list[AuditMessage]) -> list[Checkpoint]:
    """Every signed head of ``messages`` as Wuxi would keep it after each round."""
    return [
        dataclasses.replace(head, holder=WUXI, received_at=RECEIVED)
        for n in range(1, len(messages) + 1)
        for head in signed_heads(messages[:n], SERDE).values()
        if head.seq == n
    ]


def _problems(
    messages: list[AuditMessage], held: list[Checkpoint], keyring: AuditKeyring
) -> list[tuple[str, str | None, int | None, int | None]]:
    report = verify(messages, keyring=keyring, checkpoints=CheckpointsHeld(SUZHOU, held, keyring))
    return [(p.kind, p.chain, p.seq, p.offset) for p in report.problems]


def test_the_intact_chain_passes_through_every_head_its_peer_holds(
    suzhou: AuditSigner, keyring: AuditKeyring
) -> None:
    chain = _chain(suzhou, 10)
    held = _held_by_wuxi(chain)
    assert [h.seq for h in held] == [3, 6, 9, 10]
    assert _problems(chain, held, keyring) == []


def test_a_truncated_tail_is_found_only_through_the_held_head(
    suzhou: AuditSigner, keyring: AuditKeyring
) -> None:
    chain = _chain(suzhou, 10)
    held = _held_by_wuxi(chain)
    cut = chain[:6]  # ends on the signed head seq 6: alone, it verifies
    assert verify(cut, keyring=keyring).ok
    assert _problems(cut, held, keyring) == [("truncated", "lists", 7, 5)]
    report = verify(cut, keyring=keyring, checkpoints=CheckpointsHeld(SUZHOU, held, keyring))
    assert "seq 7..10 are gone" in report.problems[0].detail
    assert WUXI in report.problems[0].detail


def test_a_deleted_chain_is_found_only_through_the_held_head(
    suzhou: AuditSigner, keyring: AuditKeyring
) -> None:
    lists = _chain(suzhou, 6)
    alerts = _chain(suzhou, 4, chain="alerts")
    held = _held_by_wuxi(lists) + _held_by_wuxi(alerts)
    remaining = [dataclasses.replace(m, offset=i) for i, m in enumerate(alerts)]
    assert verify(remaining, keyring=keyring).ok
    assert _problems(remaining, held, keyring) == [("chain-deleted", "lists", 6, None)]
    assert _problems([], held, keyring) == [
        ("chain-deleted", "alerts", 4, None),
        ("chain-deleted", "lists", 6, None),
    ]


def test_a_chain_rewritten_with_valid_hashes_is_found_at_the_first_held_head_it_misses(
    suzhou: AuditSigner, keyring: AuditKeyring
) -> None:
    original = _chain(suzhou, 9)
    held = _held_by_wuxi(original)
    # Rewritten from seq 1 with every hash valid; without the key it carries no signature
    # (which a verifier with the keys also reports: "unsigned").
    forged = _chain(None, 9, purpose="REWRITTEN")
    assert verify(forged).ok  # the hashes alone cannot tell
    assert ("rewritten", "lists", 3, 2) in _problems(forged, held, keyring)
    # Even re-signed with the city's own (stolen) key, it differs from what Wuxi holds.
    resigned = _chain(suzhou, 9, purpose="REWRITTEN")
    assert verify(resigned, keyring=keyring).ok
    assert _problems(resigned, held, keyring) == [("rewritten", "lists", 3, 2)]


def test_a_held_head_not_signed_by_the_city_is_named_and_not_relied_on(
    suzhou: AuditSigner, keyring: AuditKeyring, keys: Path
) -> None:
    chain = _chain(suzhou, 6)
    wuxi = load_audit_signer(keys, "wuxi", WUXI)
    planted = Checkpoint(
        city=SUZHOU,
        chain="lists",
        seq=99,
        hash="cd" * 32,
        signature=wuxi.header("lists", 99, "cd" * 32)[1].decode(),
        holder=WUXI,
    )
    assert _problems(chain, [*_held_by_wuxi(chain), planted], keyring) == [
        ("bad-checkpoint", "lists", 99, None)
    ]


def test_heads_of_another_city_are_not_about_this_chain(
    suzhou: AuditSigner, keyring: AuditKeyring
) -> None:
    chain = _chain(suzhou, 6)
    other = [dataclasses.replace(h, city=WUXI) for h in _held_by_wuxi(_chain(suzhou, 9))]
    assert _problems(chain, other, keyring) == []


def _hander(signer: AuditSigner) -> CheckpointHander:
    """Suzhou's hander with Wuxi as its one peer (no channel is opened: only ``due``)."""
    settings = load_settings({"CREDITLINK_CITY": "suzhou", "KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    return CheckpointHander(settings, AuditKeyring.of(signer), {"wuxi": _no_channel}, interval=1)


def _no_channel() -> Any:
    raise AssertionError("no call is made")


def test_a_chain_that_grew_only_by_peers_handing_checkpoints_is_not_handed_again(
    suzhou: AuditSigner,
) -> None:
    """Each hand-over adds a record to the receiver's chain; if that new head went back, the
    two nodes would exchange checkpoints for ever on an idle region."""
    exchanges = dict.fromkeys((4, 5, 6, 7), HAND_CHECKPOINTS)
    chain = _chain(suzhou, 9, methods=exchanges)  # signed heads at 3, 6, 9
    hander = _hander(suzhou)
    hander.take(chain[:3])
    assert [h.seq for h in hander.due("wuxi")] == [3]
    hander._peers[0].handed["lists"] = 3
    hander.take(chain[3:6])  # 4..6: only peers handing theirs
    assert hander.due("wuxi") == []
    hander.take(chain[6:])  # 7 an exchange too, but 8 and 9 are calls
    assert [h.seq for h in hander.due("wuxi")] == [9]


def test_only_heads_the_node_signed_itself_are_handed(suzhou: AuditSigner, keys: Path) -> None:
    wuxi = load_audit_signer(keys, "wuxi", WUXI)
    hander = _hander(suzhou)
    hander.take(_chain(wuxi, 3))  # records with valid hashes, signed with another key
    assert hander.due("wuxi") == []
