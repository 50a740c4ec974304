"""``audit export`` and ``verify-export`` from the command line, against chains the writer
signed on the real broker: one China day of a city's audit, checked offline."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from services.common.audit import AuditChainWriter, AuditEntry, cli
from services.common.audit.signing import load_audit_signer, new_audit_key_files
from services.common.settings import Settings
from tests.integration.test_audit_writer import (  # noqa: F401 -- its fixtures
    SUZHOU,
    Writer,
    producer,
    settings,
    writer_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

CHINA = timezone(timedelta(hours=8))


def _entry(day: int, hour: int) -> AuditEntry:
    return AuditEntry(
        caller_city="320200",
        callee_city=SUZHOU,
        method="/creditlink.peer.v1.CreditCheckService/CheckSubject",
        purpose=f"day {day} {hour}h",
        status_code="OK",
        latency_ms=1,
        at=datetime(2024, 3, day, hour, tzinfo=CHINA).astimezone(UTC),
    )


async def _batch(writer: AuditChainWriter, day: int, hours: range) -> None:
    """One batch of the writer (signed at its end if the writer signs)."""
    # Appended together, the entries are linked and sent (and signed) as one batch.
    await asyncio.gather(*(writer.append(_entry(day, hour)) for hour in hours))


async def _started(writer: AuditChainWriter) -> AuditChainWriter:
    await writer.start()
    return writer


def _manifest(bundle: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads(bundle.read_bytes().splitlines()[-1])["manifest"]
    return manifest


async def test_one_china_day_exported_verifies_offline_and_any_change_fails(
    settings: Settings,  # noqa: F811 -- the fixture imported above
    writer_for: Writer,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    for city in ("suzhou", "wuxi"):
        new_audit_key_files(keys, city)
    signer = load_audit_signer(keys, "suzhou", SUZHOU)
    # "lists": day 1 (seq 1..3) and day 2 (4..6) signed; day 2 then ends on 7..8 that no
    # signature covers until the node signs its next batch, on day 3 (9..10).
    lists = await _started(writer_for("lists", signer=signer))
    await _batch(lists, 1, range(9, 12))
    await _batch(lists, 2, range(9, 12))
    await _batch(await _started(writer_for("lists")), 2, range(20, 22))
    await _batch(await _started(writer_for("lists", signer=signer)), 3, range(9, 11))
    # "alerts": day 2 signed (1..2), then 3 not signed yet.
    await _batch(await _started(writer_for("alerts", signer=signer)), 2, range(10, 12))
    await _batch(await _started(writer_for("alerts")), 2, range(12, 13))

    bundle = tmp_path / "suzhou-2024-03-02.audit.jsonl"
    region = ["--region", str(settings.region_file)]
    export = ["export", "--bootstrap", settings.kafka_bootstrap, "--topic", lists.topic]
    export += ["--since", "2024-03-02", "--until", "2024-03-02", "--city", "suzhou", *region]
    assert (
        await asyncio.to_thread(cli.main, [*export, "--key", str(keys), "--out", str(bundle)]) == 0
    )
    chains = {c["chain"]: c for c in _manifest(bundle)["chains"]}
    assert {k: chains["lists"][k] for k in ("first_seq", "last_seq_in_range", "last_seq")} == {
        "first_seq": 4,
        "last_seq_in_range": 8,
        "last_seq": 10,  # run on to the signed head of day 3
    }
    assert (chains["lists"]["anchor_seq"], chains["lists"]["unsigned_from"]) == (3, None)
    assert (chains["alerts"]["last_seq"], chains["alerts"]["unsigned_from"]) == (3, 3)

    def verify(path: Path) -> int:
        return cli.main(["verify-export", "--keys", str(keys), *region, str(path)])

    capsys.readouterr()
    assert verify(bundle) == 0
    out = capsys.readouterr().out
    assert "manifest signature: suzhou's audit key" in out
    assert "chain lists: 7 records, seq 4..10 from the anchor seq 3" in out
    assert "chain alerts: 3 records, seq 1..3 from the anchor seq 0" in out
    assert "seq 3 not yet signed (the manifest says so)" in out
    assert out.rstrip().endswith(f"OK: {bundle}")

    # One changed byte anywhere: records, manifest, its signature, the last line break.
    data = bundle.read_bytes()
    signature_end = len(data) - 3  # inside the signature's encoding, before '"}\n'
    changed = tmp_path / "changed.jsonl"
    for position in sorted({*range(0, len(data), len(data) // 40), signature_end, len(data) - 1}):
        flipped = bytearray(data)
        flipped[position] ^= 0x01
        changed.write_bytes(flipped)
        assert verify(changed) in (1, 2), position
    capsys.readouterr()

    # A record removed.
    lines = data.splitlines(keepends=True)
    changed.write_bytes(b"".join([*lines[:2], *lines[3:]]))
    assert verify(changed) == 1
    assert "REMOVED" in capsys.readouterr().out

    # Signed with another city's key: the export's own check and the verifier both refuse.
    wuxi_key = ["--key", str(keys / "wuxi.audit.key"), "--out", str(changed)]
    assert await asyncio.to_thread(cli.main, [*export, *wuxi_key]) == 1
    assert verify(changed) == 1
    assert "signed with 320200's key" in capsys.readouterr().out

    # Unreadable input is said so, with exit 2.
    assert verify(tmp_path / "missing.jsonl") == 2
    changed.write_bytes(b"not an export\n")
    assert verify(changed) == 2
    assert "not an export's manifest" in capsys.readouterr().err
