"""Raised → acknowledged → in progress → resolved, escalation on a missed SLA, and what each
step leaves in the store (feed, outbox, SLA index) — without a broker."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.alerts.book import AlertNotFound, StatusConflict
from services.alerts.config import parse_rules
from services.alerts.model import Alert, Status
from services.common.settings import REPO_ROOT
from tests.kit.alerts import OfflineNode, offline_node, org_key, penalty_record

SZ, CZ = "320500", "320400"
SUZHOU_CO = org_key("91", "320506", "MA1W8XY4")


def fast_rules(max_level: int = 2) -> Any:
    doc = yaml.safe_load((REPO_ROOT / "deploy/config/alert-rules.yaml").read_text("utf-8"))
    doc["sla"]["ack"] = {s: "2s" for s in ("LOW", "MEDIUM", "HIGH", "CRITICAL")}
    doc["sla"]["escalation"] = {"max_level": max_level, "check_interval": "100ms"}
    return parse_rules(doc, source="fast")


@pytest.fixture
def changzhou(tmp_path: Path) -> Iterator[OfflineNode]:
    node = offline_node("changzhou", tmp_path / "cz", rules=fast_rules())
    yield node
    node.close()


async def raise_one(node: OfflineNode) -> Alert:
    (alert,) = await node.record(
        penalty_record(SUZHOU_CO, city_code=CZ, domain="FOOD_DRUG", serious=True)
    )
    return alert


def feed_kinds(node: OfflineNode) -> list[str]:
    return [entry["kind"] for _, entry in node.store.feed_after(0)]


async def test_raising_publishes_the_alert_and_its_raised_status(changzhou: OfflineNode) -> None:
    alert = await raise_one(changzhou)
    topics = changzhou.producer.topics()
    assert topics == [
        "changzhou.supervision.alerts.food-drug.v1",
        "changzhou.supervision.alert-status.v1",
    ]
    headers = dict(changzhou.producer.sent[0][3])
    assert headers["ce_id"] == f"{alert.alert_id}/0".encode()
    assert headers["ce_source"] == b"/cities/320400/alerts"
    assert changzhou.store.get(f"out/{SZ}/{alert.alert_id}") == {
        "level": 0,
        "attempts": 0,
        "next_at": 0,
    }
    assert feed_kinds(changzhou) == ["alert"]
    assert changzhou.book.held(alert.alert_id).status is Status.RAISED


async def test_status_moves_forward_only_and_is_idempotent(changzhou: OfflineNode) -> None:
    alert = await raise_one(changzhou)
    ack_id = str(uuid.uuid4())
    ack = await changzhou.book.update_status(
        alert_id=alert.alert_id,
        status=Status.ACKNOWLEDGED,
        by_city=SZ,
        change_id=ack_id,
        regulator="11320500014160400L",
        note="已接收",
    )
    assert (ack.previous_status, ack.status, ack.by_city) == (
        Status.RAISED,
        Status.ACKNOWLEDGED,
        SZ,
    )
    again = await changzhou.book.update_status(
        alert_id=alert.alert_id, status=Status.ACKNOWLEDGED, by_city=SZ, change_id=ack_id
    )
    assert again == ack  # the same change id: the recorded answer, nothing new
    with pytest.raises(StatusConflict, match="does not move it forward"):
        await changzhou.book.update_status(
            alert_id=alert.alert_id,
            status=Status.ACKNOWLEDGED,
            by_city=SZ,
            change_id=str(uuid.uuid4()),
        )
    with pytest.raises(StatusConflict, match="expected"):
        await changzhou.book.update_status(
            alert_id=alert.alert_id,
            status=Status.IN_PROGRESS,
            by_city=SZ,
            change_id=str(uuid.uuid4()),
            expected=Status.RAISED,
        )
    await changzhou.book.update_status(
        alert_id=alert.alert_id, status=Status.RESOLVED, by_city=SZ, change_id=str(uuid.uuid4())
    )
    with pytest.raises(StatusConflict):
        await changzhou.book.update_status(
            alert_id=alert.alert_id,
            status=Status.IN_PROGRESS,
            by_city=SZ,
            change_id=str(uuid.uuid4()),
        )
    with pytest.raises(AlertNotFound):
        await changzhou.book.update_status(
            alert_id="320400-nope", status=Status.RESOLVED, by_city=SZ, change_id=str(uuid.uuid4())
        )
    assert feed_kinds(changzhou) == ["alert", "status", "status"]
    assert changzhou.book.held(alert.alert_id).status is Status.RESOLVED


async def test_unacknowledged_alert_escalates_until_the_maximum(changzhou: OfflineNode) -> None:
    alert = await raise_one(changzhou)
    assert await changzhou.book.escalate_due(alert.raised_at + timedelta(seconds=1)) == []
    (first,) = await changzhou.book.escalate_due(alert.raised_at + timedelta(seconds=3))
    assert first.escalation_level == 1
    assert first.ack_deadline == alert.raised_at + timedelta(seconds=5)
    assert changzhou.store.get(f"out/{SZ}/{alert.alert_id}")["level"] == 1
    held = changzhou.book.held(alert.alert_id)
    assert held is not None
    assert held.status is Status.ESCALATED
    assert feed_kinds(changzhou) == ["alert", "alert", "status"]
    # Not due again until the new deadline; then level 2 = max_level, and no further.
    assert await changzhou.book.escalate_due(alert.raised_at + timedelta(seconds=4)) == []
    (second,) = await changzhou.book.escalate_due(alert.raised_at + timedelta(seconds=6))
    assert second.escalation_level == 2
    assert await changzhou.book.escalate_due(alert.raised_at + timedelta(hours=1)) == []
    assert list(changzhou.store.scan("due/")) == []
    escalations = [
        changzhou.serde.decode(v)
        for t, _, v, _ in changzhou.producer.sent
        if t.endswith("alert-status.v1") and v is not None
    ]
    assert [e["status"] for e in escalations] == ["RAISED", "ESCALATED", "ESCALATED"]


async def test_an_acknowledged_alert_does_not_escalate(changzhou: OfflineNode) -> None:
    alert = await raise_one(changzhou)
    await changzhou.book.update_status(
        alert_id=alert.alert_id, status=Status.ACKNOWLEDGED, by_city=SZ, change_id=str(uuid.uuid4())
    )
    assert await changzhou.book.escalate_due(alert.raised_at + timedelta(minutes=5)) == []


async def test_a_target_holds_each_escalation_level_once(tmp_path: Path) -> None:
    origin = offline_node("changzhou", tmp_path / "cz", rules=fast_rules())
    target = offline_node("suzhou", tmp_path / "sz", rules=fast_rules())
    alert = await raise_one(origin)
    assert await target.book.receive(alert) is True
    assert await target.book.receive(alert) is False  # a redelivery
    (escalated,) = await origin.book.escalate_due(alert.raised_at + timedelta(seconds=3))
    assert await target.book.receive(escalated) is True
    assert await target.book.receive(alert) is False  # an older level arriving late
    assert [t for t, *_ in target.producer.sent] == ["suzhou.supervision.alerts.food-drug.v1"] * 2
    assert target.store.get(f"out/{CZ}/{alert.alert_id}") is None  # targets never deliver
    assert list(target.store.scan("due/")) == []  # nor escalate
    held = target.book.held(alert.alert_id)
    assert held is not None
    assert held.status is Status.ESCALATED
    origin.close()
    target.close()
