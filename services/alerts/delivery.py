"""Delivering raised alerts to their target cities with ``DeliverAlerts`` (peer → peer).

The outbox (``out/<city>/<alert_id>`` in the store, written by the book in the same batch as
the alert) survives restarts. Per target city, due entries go out in one call of up to 500
alerts; each result settles its entry: accepted or duplicate removes it (the peer is
idempotent by alert id and escalation level), a refusal with reasons removes it and records
why under ``undelivered/<city>/<alert_id>``, and a failed call — or an answer without a
result for that alert id — retries it with exponential backoff capped at the retry policy's
maximum, for ever: a peer down for a day gets its alerts when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, cast

import grpc
import structlog

from creditlink.peer.v1 import alert_exchange_pb2, alert_exchange_pb2_grpc
from services.alerts.model import Alert, RetryPolicy, now_ms, to_ms
from services.alerts.store import AlertStore
from services.common.audit import QueuedAuditLog
from services.common.peer import OutboundEvidence, TlsFiles, secure_channel
from services.common.region import City, Region

if TYPE_CHECKING:
    from creditlink.peer.v1.alert_exchange_pb2_grpc import AlertExchangeServiceAsyncStub

MAX_BATCH: Final = 500
CALL_TIMEOUT_S: Final = 10.0
IDLE_WAIT_S: Final = 5.0
# gRPC backs off reconnecting to a peer that was down by up to 120 s by default; our own
# outbox retry policy decides the pace, so the channel reconnects promptly when asked.
CHANNEL_OPTIONS: Final = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
)

# A lazy proxy: it picks up configure_logging() however early this module is imported.
log = structlog.get_logger()


class PeerClients:
    """One mTLS channel per peer city's alerts endpoint, created on first use; with
    ``evidence`` (the node's audit chain), each call made on one is an OUTBOUND record of
    it, with the callee's receipt (services/common/peer/outbound.py)."""

    def __init__(self, region: Region, tls: TlsFiles) -> None:
        self._region = region
        self._tls = tls
        self._channels: dict[str, Any] = {}
        self.evidence: tuple[QueuedAuditLog, str] | None = None

    def endpoint(self, city_code: str) -> str | None:
        city = self._city(city_code)
        return city.endpoints.get("alerts") if city is not None else None

    def _city(self, city_code: str) -> City | None:
        for city in self._region.cities.values():
            if city.admin_code == city_code:
                return city
        return None

    def stub(self, city_code: str) -> AlertExchangeServiceAsyncStub | None:
        city = self._city(city_code)
        endpoint = city.endpoints.get("alerts") if city is not None else None
        if city is None or endpoint is None:
            return None
        channel = self._channels.get(endpoint)
        if channel is None:
            interceptors: tuple[OutboundEvidence, ...] = ()
            if self.evidence is not None:
                audit, node_city = self.evidence
                interceptors = (
                    OutboundEvidence(audit, node_city=node_city, callee_city=city.admin_code),
                )
            channel = secure_channel(
                endpoint,
                self._tls,
                expect_city=city.key,
                service="alerts",
                options=CHANNEL_OPTIONS,
                interceptors=interceptors,
            )
            self._channels[endpoint] = channel
        return cast(
            "AlertExchangeServiceAsyncStub",
            alert_exchange_pb2_grpc.AlertExchangeServiceStub(channel),
        )

    async def close(self) -> None:
        for channel in self._channels.values():
            with contextlib.suppress(Exception):
                await channel.close()
        self._channels.clear()


class PeerDelivery:
    def __init__(
        self,
        *,
        store: AlertStore,
        clients: PeerClients,
        retry: RetryPolicy,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._store = store
        self._clients = clients
        self._retry = retry
        self._rng = rng
        self.delivered = 0

    def _due(self, now_ms_: int) -> dict[str, list[tuple[str, dict[str, Any]]]]:
        by_city: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for key, entry in self._store.scan("out/"):
            if int(entry["next_at"]) <= now_ms_:
                city = key.split("/")[1]
                if len(by_city.setdefault(city, [])) < MAX_BATCH:
                    by_city[city].append((key, entry))
        return by_city

    def _next_due_in(self, now_ms_: int) -> float | None:
        soonest = min((int(e["next_at"]) for _, e in self._store.scan("out/")), default=None)
        return None if soonest is None else max(0.0, (soonest - now_ms_) / 1000)

    def _settle(self, key: str, sent_level: int, outcome: str | None) -> None:
        """Remove a delivered entry unless a newer escalation level arrived meanwhile."""
        batch = self._store.batch()
        current = self._store.get(key)
        if current is not None and int(current["level"]) > sent_level:
            batch.put(key, {**current, "attempts": 0, "next_at": 0})
        else:
            batch.delete(key)
        if outcome is not None:
            batch.put("undelivered/" + key.removeprefix("out/"), {"reason": outcome})
        self._store.write(batch)

    def _backoff(self, key: str, entry: dict[str, Any], error: str) -> None:
        attempts = int(entry["attempts"]) + 1
        delay = self._retry.delay(attempts, self._rng())
        batch = self._store.batch()
        current = self._store.get(key)
        if current is not None:
            batch.put(
                key,
                {
                    **current,
                    "attempts": attempts,
                    "next_at": to_ms(now_ms()) + int(delay * 1000),
                    "last_error": error,
                },
            )
            self._store.write(batch)

    async def deliver_city(self, city: str, entries: list[tuple[str, dict[str, Any]]]) -> None:
        stub = self._clients.stub(city)
        if stub is None:
            for key, entry in entries:
                log.error("alert_undeliverable", city=city, key=key, reason="city-not-connected")
                self._settle(key, int(entry["level"]), "city-not-connected: no alerts endpoint")
            return
        alerts: list[tuple[str, dict[str, Any], Alert]] = []
        for key, entry in entries:
            held = self._store.get(f"alert/{key.split('/', 2)[2]}")
            if held is None:
                self._settle(key, int(entry["level"]), None)
                continue
            alerts.append((key, entry, Alert.from_json(held["alert"])))
        if not alerts:
            return
        request = alert_exchange_pb2.DeliverAlertsRequest(
            alerts=[a.to_proto() for _, _, a in alerts]
        )
        try:
            response = await stub.DeliverAlerts(request, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            error = f"{exc.code().name}: {exc.details()}"
            log.warning("alert_delivery_failed", city=city, alerts=len(alerts), error=error)
            for key, entry, _ in alerts:
                self._backoff(key, entry, error)
            return
        # Matched by alert id, never by position: a peer that answers fewer (or reordered)
        # results must not settle the wrong alert, and an alert it did not answer for is
        # retried with backoff like a failed call, not sent again at once.
        results = {result.alert_id: result for result in response.results}
        missing = 0
        for key, entry, alert in alerts:
            result = results.get(alert.alert_id)
            level = alert.escalation_level
            if result is None:
                missing += 1
                self._backoff(key, entry, "no result for this alert in the peer's answer")
            elif result.accepted:
                self.delivered += 1
                self._settle(key, level, None)
            else:
                reasons = "; ".join(f"{r.code}: {r.message}" for r in result.reasons)
                log.error(
                    "alert_delivery_refused", city=city, alert_id=alert.alert_id, reasons=reasons
                )
                self._settle(key, level, reasons or "refused")
        if missing:
            log.warning("alert_delivery_unanswered", city=city, alerts=missing)

    async def run(self) -> None:
        while True:
            changed = self._store.outbox_changed
            changed.clear()
            now = to_ms(now_ms())
            due = self._due(now)
            if due:
                await asyncio.gather(*(self.deliver_city(c, e) for c, e in due.items()))
                continue
            wait = self._next_due_in(now)
            with contextlib.suppress(TimeoutError):
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that races the event, and the node would never stop.
                async with asyncio.timeout(IDLE_WAIT_S if wait is None else wait):
                    await changed.wait()
