"""Signed audit chain heads (services/common/audit/signing.py), without a broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.audit.signing import (
    AuditKeyring,
    load_audit_signer,
    new_audit_key_files,
)

CODES = {"suzhou": "320500", "wuxi": "320200"}
HASH = "ab" * 32


def test_published_keys_are_named_by_city_and_a_rotated_key_stays(tmp_path: Path) -> None:
    new_audit_key_files(tmp_path, "suzhou")
    old = load_audit_signer(tmp_path, "suzhou", "320500")
    (tmp_path / "suzhou.audit.pub").rename(tmp_path / f"suzhou.audit.{old.key_id}.pub")
    new_audit_key_files(tmp_path, "suzhou")
    new = load_audit_signer(tmp_path, "suzhou", "320500")
    new_audit_key_files(tmp_path, "atlantis")  # not a city of the region: not published here
    keyring = AuditKeyring.from_directory(tmp_path, CODES)
    assert set(keyring.keys) == {old.key_id, new.key_id}
    for signer in (old, new):
        _name, value = signer.header("lists", 7, HASH)
        assert keyring.problem(value, "320500", "lists", 7, HASH) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seq": 8}, "does not verify"),
        ({"chain": "alerts"}, "does not verify"),
        ({"record_hash": "cd" * 32}, "does not verify"),
        ({"node_city": "320200"}, "not 320200's"),
    ],
)
def test_a_signature_covers_city_chain_position_and_hash(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    new_audit_key_files(tmp_path, "suzhou")
    signer = load_audit_signer(tmp_path, "suzhou", "320500")
    keyring = AuditKeyring.from_directory(tmp_path, CODES)
    _name, value = signer.header("lists", 7, HASH)
    head: dict[str, object] = {
        "node_city": "320500",
        "chain": "lists",
        "seq": 7,
        "record_hash": HASH,
        **change,
    }
    problem = keyring.problem(value, **head)  # type: ignore[arg-type]
    assert problem is not None
    assert message in problem


def test_an_unknown_key_or_garbage_is_named_not_raised(tmp_path: Path) -> None:
    keyring = AuditKeyring({})
    assert "no published audit key" in (
        keyring.problem(b"deadbeef.AAAA", "320500", None, 1, HASH) or ""
    )
    new_audit_key_files(tmp_path, "suzhou")
    keyring = AuditKeyring.from_directory(tmp_path, CODES)
    key_id = next(iter(keyring.keys))
    assert "does not verify" in (
        keyring.problem(f"{key_id}.!!".encode(), "320500", None, 1, HASH) or ""
    )


def test_a_node_without_its_audit_key_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="make certs"):
        load_audit_signer(tmp_path, "suzhou", "320500")
