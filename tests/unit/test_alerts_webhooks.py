"""Regulators' webhooks against a real HTTP server on 127.0.0.1: signed, idempotent, retried,
and dead-lettered with the reason when they never recover."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from services.alerts.config import Webhook
from services.alerts.model import Domain, RetryPolicy, Severity, Status, StatusChange, now_ms
from services.alerts.webhooks import (
    IDEMPOTENCY_HEADER,
    WebhookDispatcher,
    dead_letters,
    verify,
)
from services.common.settings import REPO_ROOT
from tests.kit.alerts import OfflineNode, offline_node, org_key, penalty_record

SZ, CZ = "320500", "320400"
SUZHOU_CO = org_key("91", "320506", "MA1W8XY4")
SECRET = b"regulator-shared-secret"


@dataclass
class Receiver:
    """A regulator's endpoint: per path, how many of the first calls fail, and with what."""

    failures: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (count, status)
    calls: list[tuple[str, dict[str, str], bytes, int]] = field(default_factory=list)
    processed: dict[str, list[str]] = field(default_factory=dict)  # path -> idempotency keys
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            done = sum(1 for p, *_ in self.calls if p == path)
            count, status = self.failures.get(path, (0, 200))
            code = status if done < count else 200
            self.calls.append((path, headers, body, code))
            if code == 200:
                key = headers[IDEMPOTENCY_HEADER]
                seen = self.processed.setdefault(path, [])
                if key not in seen:  # what a receiver does with the idempotency key
                    seen.append(key)
            return code

    def attempts(self, path: str) -> list[tuple[dict[str, str], bytes, int]]:
        with self.lock:
            return [(h, b, c) for p, h, b, c in self.calls if p == path]


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            code = state.answer(self.path, dict(self.headers.items()), body)
            payload = b"ok" if code == 200 else b"upstream database unavailable"
            self.send_response(code)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def hook(hook_id: str, url: str, **overrides: object) -> Webhook:
    options: dict[str, object] = {
        "id": hook_id,
        "url": url,
        "secret": SECRET,
        "domains": frozenset({Domain.FOOD_DRUG}),
        "min_severity": Severity.LOW,
        "events": frozenset({"alert"}),
        "max_attempts": 4,
        "retry": RetryPolicy(
            initial=timedelta(milliseconds=50), maximum=timedelta(milliseconds=200)
        ),
        "timeout": timedelta(seconds=2),
    }
    options.update(overrides)
    return Webhook(**options)


async def deliver_one_alert(node: OfflineNode) -> str:
    """Changzhou raises a serious food-safety alert for a Suzhou company; Suzhou receives it."""
    origin = offline_node("changzhou", node.settings.data_dir.parent / "cz-origin")
    (alert,) = await origin.record(
        penalty_record(SUZHOU_CO, city_code=CZ, domain="FOOD_DRUG", serious=True)
    )
    origin.close()
    assert await node.book.receive(alert)
    return alert.event_id


async def run_until_settled(dispatcher: WebhookDispatcher, node: OfflineNode) -> None:
    task = asyncio.create_task(dispatcher.run())
    try:
        for _ in range(200):
            if not list(node.store.scan("hook/")):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # anything sent after settling would show up now
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await dispatcher.close()


async def test_fails_three_times_then_receives_the_alert_exactly_once(
    tmp_path: Path, receiver: tuple[Receiver, str]
) -> None:
    state, base = receiver
    state.failures["/flaky"] = (3, 503)
    hooks = [hook("suzhou-food", f"{base}/flaky")]
    node = offline_node("suzhou", tmp_path / "sz", webhooks=hooks)
    event_id = await deliver_one_alert(node)
    dispatcher = WebhookDispatcher(store=node.store, webhooks=hooks, source="/cities/320500/alerts")
    await run_until_settled(dispatcher, node)

    attempts = state.attempts("/flaky")
    assert [code for *_, code in attempts] == [503, 503, 503, 200]
    assert {h[IDEMPOTENCY_HEADER] for h, *_ in attempts} == {event_id}
    assert state.processed["/flaky"] == [event_id]  # received exactly once
    headers, body, _ = attempts[-1]
    assert verify(SECRET, headers, body)
    assert not verify(b"wrong secret", headers, body)
    assert not verify(SECRET, headers, body.replace(b"320400", b"320200"))
    event = json.loads(body)
    assert event["specversion"] == "1.0"
    assert event["type"] == "cn.creditlink.supervision.alert.raised.v1"
    assert event["data"]["target_cities"] == [SZ]
    assert headers["Content-Type"].startswith("application/cloudevents+json")
    assert list(node.store.scan("dead/")) == []
    node.close()


async def test_a_webhook_that_never_recovers_ends_in_the_dead_letter_with_its_reason(
    tmp_path: Path, receiver: tuple[Receiver, str]
) -> None:
    state, base = receiver
    state.failures["/broken"] = (1_000, 500)
    state.failures["/gone"] = (1_000, 410)
    hooks = [hook("suzhou-broken", f"{base}/broken"), hook("suzhou-gone", f"{base}/gone")]
    node = offline_node("suzhou", tmp_path / "sz", webhooks=hooks)
    event_id = await deliver_one_alert(node)
    dispatcher = WebhookDispatcher(store=node.store, webhooks=hooks, source="/cities/320500/alerts")
    await run_until_settled(dispatcher, node)

    assert len(state.attempts("/broken")) == 4  # max_attempts, then no more
    assert len(state.attempts("/gone")) == 1  # 410 is not worth retrying
    letters = {entry["webhook"]: entry for entry in dead_letters(node.store)}
    broken = letters["suzhou-broken"]
    assert broken["reason"].startswith("gave up after 4 attempts; last: HTTP 500")
    assert "upstream database unavailable" in broken["reason"]
    assert (broken["event"], broken["attempts"], broken["last_status"]) == (event_id, 4, 500)
    assert letters["suzhou-gone"]["reason"].startswith("not retryable: HTTP 410")
    assert list(node.store.scan("hook/")) == []

    # An operator finds them with the CLI, next to the (still open) store.
    env = {
        **os.environ,
        "CREDITLINK_CITY": "suzhou",
        "CREDITLINK_DATA_DIR": str(node.settings.data_dir),
        "CREDITLINK_LOG_LEVEL": "error",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.alerts",
        "dead-letters",
        env=env,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    listing = out.decode()
    assert "suzhou-broken" in listing
    assert "HTTP 500" in listing
    assert "suzhou-gone" in listing
    assert "HTTP 410" in listing
    node.close()


async def test_status_changes_reach_webhooks_that_ask_for_them(
    tmp_path: Path, receiver: tuple[Receiver, str]
) -> None:
    state, base = receiver
    hooks = [
        hook("with-status", f"{base}/with", events=frozenset({"alert", "status"})),
        hook("alerts-only", f"{base}/only"),
        hook("medical-only", f"{base}/medical", domains=frozenset({Domain.MEDICAL})),
    ]
    node = offline_node("suzhou", tmp_path / "sz", webhooks=hooks)
    await deliver_one_alert(node)
    (alert_id,) = [key.removeprefix("alert/") for key, _ in node.store.scan("alert/")]
    assert node.book.held(alert_id) is not None
    await node.book.record_change(
        StatusChange(
            change_id="6a1e4b8e-4a59-4d6c-9a0e-2b9f3c1d7e55",
            alert_id=alert_id,
            status=Status.ACKNOWLEDGED,
            previous_status=Status.RAISED,
            by_city=SZ,
            at=now_ms(),
        )
    )
    dispatcher = WebhookDispatcher(store=node.store, webhooks=hooks, source="/cities/320500/alerts")
    await run_until_settled(dispatcher, node)
    types = [json.loads(b)["type"] for _, b, _ in state.attempts("/with")]
    assert types == [
        "cn.creditlink.supervision.alert.raised.v1",
        "cn.creditlink.supervision.alert-status.changed.v1",
    ]
    assert len(state.attempts("/only")) == 1
    assert state.attempts("/medical") == []
    node.close()
