"""Regulators' HTTP webhooks: signed, retried with backoff, idempotent, dead-lettered.

Each alert (and, if the webhook asks, each status change) for this city becomes an outbox
entry ``hook/<webhook>/<event>`` in the same store batch as the alert itself. The dispatcher
POSTs it as a CloudEvents 1.0 JSON event (structured mode) with

* ``Idempotency-Key``: the event id (``<alert_id>/<escalation_level>``, or the change id),
  the same on every retry, so a receiver that stores it processes each event once even when
  our retry crosses its slow success;
* ``X-Creditlink-Timestamp``: Unix seconds of this attempt;
* ``X-Creditlink-Signature``: ``sha256=`` + hex HMAC-SHA256 under the webhook's secret of
  ``<timestamp>.<body>`` (receivers reject stale timestamps to stop replays).

Events go to one webhook one at a time, oldest first, so an alert arrives before its status
changes; an event waiting for its retry does not hold up the ones behind it (receivers
still order by the event's ``time`` and must not assume more). A 2xx response settles the
event. 408, 429, 5xx, timeouts and connection errors retry with
exponential backoff (``Retry-After`` is honoured up to the backoff cap); any other status,
or ``max_attempts`` failures, moves the event to the dead letter ``dead/<webhook>/<event>``
with the reason, where ``python -m services.alerts dead-letters`` lists it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import httpx
import structlog

from services.alerts.config import Webhook
from services.alerts.model import Alert, StatusChange, from_ms, now_ms, rfc3339, to_ms
from services.alerts.store import AlertStore, feed_key

SIGNATURE_HEADER: Final = "X-Creditlink-Signature"
TIMESTAMP_HEADER: Final = "X-Creditlink-Timestamp"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
WEBHOOK_HEADER: Final = "X-Creditlink-Webhook"
CONTENT_TYPE: Final = "application/cloudevents+json; charset=utf-8"
RETRYABLE_STATUSES: Final = frozenset({408, 425, 429})
IDLE_WAIT_S: Final = 5.0
MAX_IN_FLIGHT: Final = 16

# A lazy proxy: it picks up configure_logging() however early this module is imported.
log = structlog.get_logger()


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def verify(
    secret: bytes,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: float = 300,
    now: float | None = None,
) -> bool:
    """What a receiver does (and the tests): constant-time check of signature and age."""
    lowered = {k.lower(): v for k, v in headers.items()}
    timestamp = lowered.get(TIMESTAMP_HEADER.lower(), "")
    signature = lowered.get(SIGNATURE_HEADER.lower(), "")
    if not timestamp.isdigit():
        return False
    if abs((now or time.time()) - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def cloud_event(entry: Mapping[str, Any], *, source: str) -> tuple[str, dict[str, Any]]:
    """(event id, CloudEvents JSON) of a feed entry."""
    if entry["kind"] == "alert":
        alert = Alert.from_json(entry["alert"])
        return alert.event_id, {
            "specversion": "1.0",
            "id": alert.event_id,
            "source": source,
            "type": (
                "cn.creditlink.supervision.alert.escalated.v1"
                if alert.escalation_level
                else "cn.creditlink.supervision.alert.raised.v1"
            ),
            "subject": alert.alert_id,
            "time": rfc3339(alert.raised_at),
            "datacontenttype": "application/json",
            "data": alert.to_public_json(),
        }
    change = StatusChange.from_json(entry["change"])
    return change.change_id, {
        "specversion": "1.0",
        "id": change.change_id,
        "source": source,
        "type": "cn.creditlink.supervision.alert-status.changed.v1",
        "subject": change.alert_id,
        "time": rfc3339(change.at),
        "datacontenttype": "application/json",
        "data": change.to_public_json(),
    }


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of one POST."""

    ok: bool
    retryable: bool
    reason: str
    status: int | None = None
    retry_after: float | None = None


class WebhookDispatcher:
    def __init__(
        self,
        *,
        store: AlertStore,
        webhooks: Sequence[Webhook],
        source: str,
        client: httpx.AsyncClient | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._store = store
        self._hooks = {hook.id: hook for hook in webhooks}
        self._source = source
        self._client = client or httpx.AsyncClient(follow_redirects=False)
        self._own_client = client is None
        self._rng = rng
        self._in_flight: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.delivered = 0
        self.dead = 0

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._own_client:
            await self._client.aclose()

    async def post(self, hook: Webhook, event_id: str, body: bytes) -> Attempt:
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": CONTENT_TYPE,
            IDEMPOTENCY_HEADER: event_id,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(hook.secret, timestamp, body),
            WEBHOOK_HEADER: hook.id,
            "User-Agent": "creditlink-alerts/1",
        }
        try:
            response = await self._client.post(
                hook.url, content=body, headers=headers, timeout=hook.timeout.total_seconds()
            )
        except httpx.TimeoutException as exc:
            return Attempt(False, True, f"timeout after {hook.timeout.total_seconds():g}s: {exc!r}")
        except httpx.HTTPError as exc:
            return Attempt(False, True, f"{type(exc).__name__}: {exc}")
        if 200 <= response.status_code < 300:
            return Attempt(True, False, "delivered", response.status_code)
        snippet = response.text[:200].replace("\n", " ")
        reason = f"HTTP {response.status_code}: {snippet}".rstrip(": ")
        retry_after = None
        header = response.headers.get("Retry-After", "")
        if header.isdigit():
            retry_after = float(header)
        retryable = response.status_code in RETRYABLE_STATUSES or response.status_code >= 500
        return Attempt(False, retryable, reason, response.status_code, retry_after)

    async def _attempt(self, key: str) -> None:
        try:
            entry = self._store.get(key)
            hook_id = key.split("/", 2)[1]
            hook = self._hooks.get(hook_id)
            if entry is None:
                return
            if hook is None:  # the webhook was removed from the configuration
                self._settle(key, None)
                return
            feed_entry = self._store.get(feed_key(int(entry["seq"])))
            if feed_entry is None:
                self._dead(key, hook, entry, "event no longer in the feed", None)
                return
            event_id, payload = cloud_event(feed_entry, source=self._source)
            body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
            attempt = await self.post(hook, event_id, body)
            attempts = int(entry["attempts"]) + 1
            if attempt.ok:
                self.delivered += 1
                log.info("webhook_delivered", webhook=hook.id, event_id=event_id, attempts=attempts)
                self._settle(key, None)
            elif not attempt.retryable or attempts >= hook.max_attempts:
                why = (
                    f"gave up after {attempts} attempts; last: {attempt.reason}"
                    if attempt.retryable
                    else f"not retryable: {attempt.reason}"
                )
                self._dead(key, hook, {**entry, "attempts": attempts}, why, attempt.status)
            else:
                delay = hook.retry.delay(attempts, self._rng())
                if attempt.retry_after is not None:
                    delay = min(max(delay, attempt.retry_after), hook.retry.maximum.total_seconds())
                now = to_ms(now_ms())
                batch = self._store.batch()
                batch.put(
                    key,
                    {
                        **entry,
                        "attempts": attempts,
                        "next_at": now + int(delay * 1000),
                        "first_at": entry.get("first_at") or now,
                        "last_error": attempt.reason,
                    },
                )
                self._store.write(batch)
                log.warning(
                    "webhook_retry",
                    webhook=hook.id,
                    event_id=event_id,
                    attempts=attempts,
                    retry_in_s=round(delay, 3),
                    reason=attempt.reason,
                )
        finally:
            self._in_flight.discard(key)
            self._slots.release()
            self._store.hooks_changed.set()

    def _settle(self, key: str, _: object) -> None:
        batch = self._store.batch()
        batch.delete(key)
        self._store.write(batch)

    def _dead(
        self, key: str, hook: Webhook, entry: Mapping[str, Any], reason: str, status: int | None
    ) -> None:
        now = to_ms(now_ms())
        event_key = key.split("/", 2)[2]
        batch = self._store.batch()
        batch.delete(key)
        batch.put(
            f"dead/{hook.id}/{event_key}",
            {
                "webhook": hook.id,
                "url": hook.url,
                "event": event_key,
                "seq": entry.get("seq"),
                "attempts": entry.get("attempts"),
                "first_attempt_at": entry.get("first_at") or now,
                "dead_at": now,
                "last_status": status,
                "reason": reason,
            },
        )
        self._store.write(batch)
        self.dead += 1
        log.error("webhook_dead_letter", webhook=hook.id, event=event_key, reason=reason)

    async def run(self) -> None:
        while True:
            changed = self._store.hooks_changed
            changed.clear()
            now = to_ms(now_ms())
            soonest: int | None = None
            # One event in flight per webhook, the oldest due one first: a regulator gets an
            # alert before its status changes. An event waiting to retry does not hold up
            # the events behind it.
            busy = {key.split("/", 2)[1] for key in self._in_flight}
            oldest_due: dict[str, tuple[int, str]] = {}
            for key, entry in self._store.scan("hook/"):
                hook_id = key.split("/", 2)[1]
                if hook_id in busy:
                    continue
                due_at = int(entry["next_at"])
                if due_at > now:
                    soonest = due_at if soonest is None else min(soonest, due_at)
                    continue
                seq = int(entry["seq"])
                if hook_id not in oldest_due or seq < oldest_due[hook_id][0]:
                    oldest_due[hook_id] = (seq, key)
            for _, key in oldest_due.values():
                await self._slots.acquire()
                self._in_flight.add(key)
                task = asyncio.create_task(self._attempt(key))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            wait = IDLE_WAIT_S if soonest is None else max(0.0, (soonest - now) / 1000)
            with contextlib.suppress(TimeoutError):
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that races the event, and the node would never stop.
                async with asyncio.timeout(min(wait, IDLE_WAIT_S)):
                    await changed.wait()


def dead_letters(store: AlertStore) -> list[dict[str, Any]]:
    """Every webhook dead letter, oldest webhook/event key first."""
    return [entry for _, entry in store.scan("dead/")]


def format_dead_letter(entry: Mapping[str, Any]) -> str:
    at = entry.get("dead_at")
    when = rfc3339(from_ms(int(at))) if at else "?"
    return (
        f"{when}  {entry['webhook']}  {entry['event']}  attempts={entry.get('attempts')}  "
        f"last_status={entry.get('last_status')}  reason={entry['reason']}"
    )
