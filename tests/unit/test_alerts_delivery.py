"""Settling the DeliverAlerts outbox (services/alerts/delivery.py) against a fake peer: results
are matched by alert id, an alert without a result is retried with capped exponential backoff,
never sent again at once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from creditlink.peer.v1 import alert_exchange_pb2
from services.alerts.delivery import PeerDelivery
from services.alerts.model import Alert, Domain, RetryPolicy, Severity, now_ms, to_ms
from services.alerts.store import AlertStore

SUZHOU, WUXI = "320500", "320200"


class FewerResultsPeer:
    """A peer that answers for only some alerts, in reverse order."""

    def __init__(self, answer_for: int) -> None:
        self.answer_for = answer_for
        self.sent: list[list[str]] = []

    async def DeliverAlerts(
        self, request: alert_exchange_pb2.DeliverAlertsRequest, **call: float
    ) -> alert_exchange_pb2.DeliverAlertsResponse:
        ids = [a.alert_id for a in request.alerts]
        self.sent.append(ids)
        return alert_exchange_pb2.DeliverAlertsResponse(
            results=[
                alert_exchange_pb2.AlertDeliveryResult(alert_id=alert_id, accepted=True)
                for alert_id in reversed(ids[: self.answer_for])
            ]
        )


class Clients:
    def __init__(self, peer: FewerResultsPeer) -> None:
        self.peer = peer

    def stub(self, city_code: str) -> Any:
        return self.peer


def _alert(n: int) -> Alert:
    raised = datetime(2024, 7, 1, 2, 0, tzinfo=UTC)
    return Alert(
        alert_id=f"a-{n}",
        rule_id="repeat-offender",
        domain=Domain.FOOD_DRUG,
        severity=Severity.HIGH,
        origin_city=SUZHOU,
        target_cities=(SUZHOU, WUXI),
        subject_key="L:91320500MA1W8XY409",
        subject_name=None,
        explanation="three penalties in a year",
        evidence_record_ids=(f"r-{n}",),
        raised_at=raised,
        ack_deadline=raised + timedelta(days=1),
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AlertStore]:
    store = AlertStore(tmp_path / "alerts")
    batch = store.batch()
    for n in range(4):
        alert = _alert(n)
        batch.put(f"alert/{alert.alert_id}", {"alert": alert.to_json()})
        batch.put(f"out/{WUXI}/{alert.alert_id}", {"level": 0, "attempts": 0, "next_at": 0})
    store.write(batch)
    try:
        yield store
    finally:
        store.close()


def _delivery(store: AlertStore, peer: FewerResultsPeer) -> PeerDelivery:
    return PeerDelivery(
        store=store,
        clients=Clients(peer),  # type: ignore[arg-type]
        retry=RetryPolicy(initial=timedelta(seconds=1), maximum=timedelta(seconds=8)),
        rng=lambda: 0.0,
    )


def _outbox(store: AlertStore) -> dict[str, dict[str, Any]]:
    return {key.rsplit("/", 1)[1]: entry for key, entry in store.scan(f"out/{WUXI}/")}


async def test_results_settle_the_alerts_they_name_and_the_rest_back_off(
    store: AlertStore,
) -> None:
    peer = FewerResultsPeer(answer_for=2)
    delivery = _delivery(store, peer)
    started = to_ms(now_ms())
    await delivery.deliver_city(WUXI, delivery._due(started)[WUXI])
    assert peer.sent == [["a-0", "a-1", "a-2", "a-3"]]
    left = _outbox(store)
    assert sorted(left) == ["a-2", "a-3"]  # the answered ones are settled, whatever the order
    assert delivery.delivered == 2
    for entry in left.values():
        assert entry["attempts"] == 1
        assert entry["next_at"] >= started + 1000
        assert "no result" in entry["last_error"]
    assert delivery._due(started + 500) == {}  # not sent again at once


async def test_an_alert_never_answered_backs_off_exponentially_up_to_the_cap(
    store: AlertStore,
) -> None:
    peer = FewerResultsPeer(answer_for=0)
    delivery = _delivery(store, peer)
    delays = []
    for _ in range(6):
        sent_at = to_ms(now_ms())
        due = delivery._due(sent_at + 3_600_000)[WUXI]  # as if the wait had passed
        await delivery.deliver_city(WUXI, due)
        delays.append(round((_outbox(store)["a-0"]["next_at"] - sent_at) / 1000))
    assert delays == [1, 2, 4, 8, 8, 8]
    assert len(peer.sent) == 6
