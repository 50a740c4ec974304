"""``AlertExchangeService`` (contracts/proto/creditlink/peer/v1/alert_exchange.proto).

Behind the common peer-call guard (mTLS identity, policy, audit), so the calling city here is
always the one its certificate names (``current_call().identity``).

* ``DeliverAlerts``: a peer hands us alerts it raised; each is checked (origin is the caller,
  we are a target, the subject may cross the border), republished on our own domain topic
  for local regulators, and answered accepted / duplicate / refused with reasons.
* ``SubscribeAlerts``: our regulators' feed (alerts raised or received here and their status
  changes) from the store, resumable from an opaque cursor; a stream ends after
  ``follow_max_age`` (docs/design.md §3.3) and the regulator resumes from its last cursor.
  The policy admits only this city's regulators; behind it, every caller gets only the
  entries its :class:`~services.alerts.audience.Audience` sees (a regulator: its domains).
* ``UpdateAlertStatus``: at the origin it applies the change; at a target, for the city's own
  regulators (recorded as the regulator their certificate names), it relays the change to the
  origin (same ``change_id``) and records the origin's answer locally, so both cities show the
  same history. An alert the caller may not see answers as an unknown one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Final

import grpc
import structlog

from creditlink.peer.v1 import alert_exchange_pb2, alert_exchange_pb2_grpc, common_pb2
from services.alerts.audience import Audience
from services.alerts.book import AlertBook, AlertNotFound, StatusConflict
from services.alerts.delivery import PeerClients
from services.alerts.engine import RuleEngine
from services.alerts.model import REGULATOR_STATUSES, Alert, Domain, Severity, Status, StatusChange
from services.alerts.store import AlertStore
from services.common.peer import Denied, PeerSecurity, current_call, deny
from services.common.policy import subject_key_problem
from services.common.roles import NODE, REGULATOR
from services.common.settings import PeerLimits

MAX_DELIVER: Final = 500
CURSOR_VERSION: Final = 1
CURSOR_LENGTH: Final = 17
RELAY_ATTEMPTS: Final = 3
RELAY_TIMEOUT_S: Final = 10.0
FEED_BATCH: Final = 500
FEED_POLL_S: Final = 5.0
_PASS_THROUGH: Final = frozenset(
    {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)

# A lazy proxy: it picks up configure_logging() however early this module is imported.
log = structlog.get_logger()


def encode_cursor(epoch: str, seq: int) -> bytes:
    """Version byte, the store's 8-byte epoch, the 8-byte feed sequence number."""
    return bytes([CURSOR_VERSION]) + bytes.fromhex(epoch) + seq.to_bytes(8, "big")


def decode_cursor(cursor: bytes) -> tuple[str, int]:
    if len(cursor) != CURSOR_LENGTH or cursor[0] != CURSOR_VERSION:
        raise ValueError("not a cursor of this service")
    return cursor[1:9].hex(), int.from_bytes(cursor[9:], "big")


def _violation(code: str, message: str, field: str = "") -> common_pb2.FieldViolation:
    return common_pb2.FieldViolation(field=field, code=code, message=message)


class AlertExchangeServicer(alert_exchange_pb2_grpc.AlertExchangeServiceServicer):
    def __init__(
        self,
        *,
        city_code: str,
        book: AlertBook,
        engine: RuleEngine | None,
        store: AlertStore,
        security: PeerSecurity,
        clients: PeerClients,
        follow_max_age: float = PeerLimits().follow_stream_max_age,
    ) -> None:
        self._city = city_code
        self._follow_max_age = follow_max_age
        self._book = book
        self._engine = engine
        self._store = store
        self._security = security
        self._clients = clients

    # --- DeliverAlerts ----------------------------------------------------------------------

    def _check(
        self, index: int, message: alert_exchange_pb2.Alert, caller: str
    ) -> tuple[Alert | None, list[common_pb2.FieldViolation]]:
        where = f"alerts[{index}]"
        reasons: list[common_pb2.FieldViolation] = []
        if message.origin_city != caller:
            reasons.append(
                _violation(
                    "not-origin",
                    f"origin_city {message.origin_city} is not the calling city {caller}",
                    f"{where}.origin_city",
                )
            )
        if not message.alert_id.startswith(f"{message.origin_city}-"):
            reasons.append(
                _violation(
                    "invalid-alert-id",
                    "alert_id must start with '<origin_city>-'",
                    f"{where}.alert_id",
                )
            )
        if self._city not in message.target_cities:
            reasons.append(
                _violation(
                    "not-target",
                    f"{self._city} is not a target of this alert",
                    f"{where}.target_cities",
                )
            )
        if (problem := subject_key_problem(message.subject_key)) is not None:
            reasons.append(_violation("invalid-subject-key", problem, f"{where}.subject_key"))
        else:
            try:
                self._security.check_subject(current_call(), message.subject_key, None)
            except Denied as denied:
                reasons.append(_violation(denied.denial, denied.details, f"{where}.subject_key"))
        alert: Alert | None = None
        try:
            alert = Alert.from_proto(message)
        except ValueError as exc:
            reasons.append(_violation("required", str(exc), where))
        return (alert if not reasons else None), reasons

    async def DeliverAlerts(
        self,
        request: alert_exchange_pb2.DeliverAlertsRequest,
        context: grpc.aio.ServicerContext,
    ) -> alert_exchange_pb2.DeliverAlertsResponse:
        if not 1 <= len(request.alerts) <= MAX_DELIVER:
            await deny(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "invalid-argument",
                f"between 1 and {MAX_DELIVER} alerts per call",
            )
        call = current_call()
        assert call.identity is not None  # the peer-call guard identified the caller
        checked = [
            self._check(index, message, call.identity.city_code)
            for index, message in enumerate(request.alerts)
        ]
        accepted = [alert for alert, _ in checked if alert is not None]
        fresh = iter(await self._book.receive_many(accepted) if accepted else [])
        results = []
        for message, (alert, reasons) in zip(request.alerts, checked, strict=True):
            if alert is None:
                results.append(
                    alert_exchange_pb2.AlertDeliveryResult(
                        alert_id=message.alert_id, accepted=False, reasons=reasons
                    )
                )
                continue
            is_new = next(fresh)
            if self._engine is not None:
                # Also for a redelivery: if learning from it failed the first time (the call
                # then failed and the origin retried), this is the second chance. Idempotent.
                await self._engine.observe_peer_alert(alert)
            results.append(
                alert_exchange_pb2.AlertDeliveryResult(
                    alert_id=alert.alert_id, accepted=True, duplicate=not is_new
                )
            )
        return alert_exchange_pb2.DeliverAlertsResponse(results=results)

    # --- SubscribeAlerts ----------------------------------------------------------------------

    async def SubscribeAlerts(
        self,
        request: alert_exchange_pb2.SubscribeAlertsRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[alert_exchange_pb2.SubscribeAlertsResponse]:
        seq = 0
        if request.cursor:
            try:
                epoch, seq = decode_cursor(request.cursor)
            except ValueError as exc:
                await deny(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "invalid-cursor",
                    f"invalid cursor: {exc}",
                )
            if epoch != self._store.epoch or seq > self._store.feed_seq:
                await deny(
                    context,
                    grpc.StatusCode.OUT_OF_RANGE,
                    "cursor-from-another-feed",
                    "cursor is from another incarnation of this node's feed; resubscribe "
                    "without a cursor",
                )
            if seq + 1 < self._store.first_feed_seq():
                await deny(
                    context,
                    grpc.StatusCode.OUT_OF_RANGE,
                    "cursor-expired",
                    "cursor is older than the feed",
                )
        try:
            domains = {Domain.from_proto(d).value for d in request.domains if d}
            min_rank = Severity.from_proto(request.min_severity).rank if request.min_severity else 0
        except ValueError:
            await deny(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "invalid-argument",
                "unknown domain or severity",
            )
        audience = Audience.of_call(serving_city=self._city, call=current_call())
        ends_at = time.monotonic() + self._follow_max_age
        while True:
            changed = self._store.feed_changed
            entries = self._store.feed_after(seq, FEED_BATCH)
            for entry_seq, entry in entries:
                # A filtered entry moves the stream on too: the cursor of the next message sent
                # is past it, and a resume from an earlier cursor filters it again.
                seq = entry_seq
                if domains and entry["domain"] not in domains:
                    continue
                if Severity(entry["severity"]).rank < min_rank:
                    continue
                message = self._feed_message(entry, audience)
                if message is None:
                    continue
                message.cursor = encode_cursor(self._store.epoch, entry_seq)
                yield message
            if not entries:
                remaining = ends_at - time.monotonic()
                if remaining <= 0:
                    return  # the regulator resumes from the last cursor it got
                with contextlib.suppress(TimeoutError):
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                    # that races the event, and the node would never stop.
                    async with asyncio.timeout(min(FEED_POLL_S, remaining)):
                        await changed.wait()

    def _feed_message(
        self, entry: dict[str, Any], audience: Audience
    ) -> alert_exchange_pb2.SubscribeAlertsResponse | None:
        """The feed entry as a message for ``audience``, or ``None`` if it may not see it."""
        if entry["kind"] == "alert":
            alert = Alert.from_json(entry["alert"])
            if not audience.sees(alert):
                return None
            return alert_exchange_pb2.SubscribeAlertsResponse(alert=alert.to_proto())
        change = StatusChange.from_json(entry["change"])
        # The book appends a change to the feed only for an alert it holds (book._apply_change).
        held = self._book.held(change.alert_id)
        if held is None or not audience.sees(held.alert):
            return None
        return alert_exchange_pb2.SubscribeAlertsResponse(status_change=change.to_proto())

    # --- UpdateAlertStatus --------------------------------------------------------------------

    async def UpdateAlertStatus(
        self,
        request: alert_exchange_pb2.UpdateAlertStatusRequest,
        context: grpc.aio.ServicerContext,
    ) -> alert_exchange_pb2.UpdateAlertStatusResponse:
        if not request.status or Status.from_proto(request.status) not in REGULATOR_STATUSES:
            await deny(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "invalid-argument",
                "status must be ACKNOWLEDGED, IN_PROGRESS or RESOLVED",
            )
        try:
            uuid.UUID(request.change_id)
        except ValueError:
            await deny(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "invalid-argument",
                "change_id must be a UUID",
            )
        call = current_call()
        audience = Audience.of_call(serving_city=self._city, call=call)
        caller = audience.caller_city
        assert call.identity is not None  # the guard identified the caller
        # A regulator's own call records the regulator its certificate names, whatever the
        # request says; a target city's node relays the regulator it recorded that way.
        role = call.identity.role
        if role.kind == REGULATOR:
            request.regulator = role.regulator or ""
        elif role.kind != NODE or caller == self._city:
            await deny(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "not-a-regulator",
                "only a regulator's certificate, or a target city's node relaying one, reports "
                "an alert's handling",
            )
        regulator = request.regulator or None
        known = self._book.change(request.change_id)
        if known is not None:
            known_alert = self._book.held(known.alert_id)
            if known.by_city == caller or (
                known_alert is not None and audience.sees(known_alert.alert)
            ):
                return alert_exchange_pb2.UpdateAlertStatusResponse(change=known.to_proto())
        held = self._book.held(request.alert_id)
        # An alert the caller may not see answers as an unknown one: the answer tells a city
        # nothing about alerts that do not concern it, not even that they exist.
        if known is not None or held is None or not audience.sees(held.alert):
            await deny(
                context, grpc.StatusCode.NOT_FOUND, "unknown-alert", f"no alert {request.alert_id}"
            )
        if held.alert.origin_city == self._city:
            try:
                change = await self._book.update_status(
                    alert_id=request.alert_id,
                    status=Status.from_proto(request.status),
                    by_city=caller,
                    change_id=request.change_id,
                    regulator=regulator,
                    note=request.note or None,
                    expected=(
                        Status.from_proto(request.expected_status)
                        if request.expected_status
                        else None
                    ),
                )
            except AlertNotFound:
                await deny(
                    context,
                    grpc.StatusCode.NOT_FOUND,
                    "unknown-alert",
                    f"no alert {request.alert_id}",
                )
            except StatusConflict as exc:
                await deny(
                    context, grpc.StatusCode.FAILED_PRECONDITION, "status-conflict", str(exc)
                )
            return alert_exchange_pb2.UpdateAlertStatusResponse(change=change.to_proto())
        if caller != self._city:
            await deny(
                context,
                grpc.StatusCode.NOT_FOUND,
                "report-at-origin",
                f"alert {request.alert_id} was raised by {held.alert.origin_city}; report there",
            )
        change = await self._relay(held.alert.origin_city, request, context)
        await self._book.record_change(change)
        return alert_exchange_pb2.UpdateAlertStatusResponse(change=change.to_proto())

    async def _relay(
        self,
        origin: str,
        request: alert_exchange_pb2.UpdateAlertStatusRequest,
        context: grpc.aio.ServicerContext,
    ) -> StatusChange:
        """Report our regulator's change to the origin city; its answer is authoritative."""
        stub = self._clients.stub(origin)
        if stub is None:
            await deny(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                "origin-not-connected",
                f"origin city {origin} is not connected",
            )
        last: grpc.aio.AioRpcError | None = None
        for attempt in range(RELAY_ATTEMPTS):
            try:
                response = await stub.UpdateAlertStatus(request, timeout=RELAY_TIMEOUT_S)
                return StatusChange.from_proto(response.change)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in _PASS_THROUGH:
                    await deny(
                        context, exc.code(), "origin-refused", f"origin {origin}: {exc.details()}"
                    )
                last = exc
                await asyncio.sleep(0.2 * 2**attempt)
        assert last is not None
        log.warning(
            "status_relay_failed", origin=origin, alert_id=request.alert_id, error=str(last)
        )
        await deny(
            context,
            grpc.StatusCode.UNAVAILABLE,
            "origin-unreachable",
            f"origin {origin} unreachable ({last.code().name}); retry with the same change_id",
        )
        raise AssertionError("unreachable")  # deny raises
