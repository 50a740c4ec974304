"""Health and Prometheus metrics over HTTP, one small endpoint per service process.

``GET /healthz`` answers 200 with ``{"status": "up", ...checks}`` while every check passes and
503 with the failing checks otherwise; ``GET /metrics`` is the Prometheus text format. The
operator CLI's ``region status`` polls ``/healthz``; Prometheus scrapes ``/metrics``.

Example::

    ops = OpsServer(service="lists", city="suzhou", port=9151)
    ops.add_check("kafka", lambda: consumer_running)
    await ops.start()
    RECORDS_ACCEPTED.labels(city="suzhou").inc()
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

# One registry per process (the default): each service runs in its own process.
RECORDS_ACCEPTED = Counter(
    "creditlink_records_accepted_total", "Credit records accepted by intake.", ["city"]
)
RECORDS_REJECTED = Counter(
    "creditlink_records_rejected_total",
    "Credit records rejected by intake, by first reason code.",
    ["city", "code"],
)
RECORDS_DUPLICATE = Counter(
    "creditlink_records_duplicate_total", "Resubmissions recognised as duplicates.", ["city"]
)
REPLICATION_LAG = Gauge(
    "creditlink_replication_lag_seconds",
    "Age of the newest list change applied from each peer city.",
    ["city", "peer"],
)
ALERT_LATENCY = Histogram(
    "creditlink_alert_latency_seconds",
    "From the triggering record's acceptance to the alert being published.",
    ["city", "domain"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
GRPC_LATENCY = Histogram(
    "creditlink_grpc_latency_seconds",
    "Server-side latency of peer gRPC calls, by method and status code.",
    ["city", "method", "code"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

Check = Callable[[], bool | Awaitable[bool]]


class OpsServer:
    """``/healthz`` and ``/metrics`` for one service process."""

    def __init__(self, *, service: str, city: str, port: int, host: str = "127.0.0.1") -> None:
        self.service = service
        self.city = city
        self.port = port
        self.host = host
        self._checks: dict[str, Check] = {}
        self._started = time.time()
        self._runner: web.AppRunner | None = None

    def add_check(self, name: str, check: Check) -> None:
        self._checks[name] = check

    async def _health(self, _request: web.Request) -> web.Response:
        results: dict[str, bool] = {}
        for name, check in self._checks.items():
            try:
                outcome = check()
                if isinstance(outcome, Awaitable):
                    outcome = await outcome
                results[name] = bool(outcome)
            except Exception:
                results[name] = False
        up = all(results.values())
        body: dict[str, Any] = {
            "status": "up" if up else "down",
            "service": self.service,
            "city": self.city,
            "uptime_s": round(time.time() - self._started, 1),
            "checks": results,
        }
        return web.Response(
            status=200 if up else 503, text=json.dumps(body), content_type="application/json"
        )

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
