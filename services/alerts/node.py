"""One city's alerts service: store, rule engine, alert book, gRPC server, delivery, webhooks,
SLA escalation — started and stopped together.

Example (what ``python -m services.alerts`` does)::

    node = AlertsNode(settings, region, NodeOptions.from_environment(settings, region))
    await run_until_signalled(node, grace=STOP_GRACE_SECONDS, ops=ops_server(city, SERVICE))

The producer, the audit chain and the peer server are the common node bootstrap's
(``services/common/node.py``, docs/design.md §3.4); what is wired here is the alerts' own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog
from aiokafka import AIOKafkaProducer

from creditlink.peer.v1 import alert_exchange_pb2_grpc
from services.alerts.book import AlertBook
from services.alerts.config import DEFAULT_TLS_DIR, Webhook, load_rules, load_subscriptions
from services.alerts.delivery import PeerClients, PeerDelivery
from services.alerts.engine import RuleEngine
from services.alerts.model import RulesConfig
from services.alerts.rules import RuleSet
from services.alerts.servicer import AlertExchangeServicer
from services.alerts.store import AlertStore
from services.alerts.webhooks import WebhookDispatcher
from services.common.avro import AvroSerde
from services.common.cloudevents import source_for
from services.common.node import NodeBootstrap, node_trust
from services.common.observability import Check
from services.common.peer import PeerSecurity, PeerServer, ServiceBinding, TlsFiles
from services.common.region import Region
from services.common.settings import PeerLimits, Settings, load_peer_limits

SERVICE = "alerts"
#: How long a stop on SIGTERM lets calls in progress finish.
STOP_GRACE_SECONDS: Final = 5.0
LOOP_RESTART_MAX_S = 30.0
# A lazy proxy: it picks up configure_logging() however early this module is imported.
log = structlog.get_logger()


@dataclass(frozen=True)
class NodeOptions:
    """What the node needs beyond :class:`Settings`; tests build it directly."""

    bind: str
    tls: TlsFiles
    security: PeerSecurity
    rules: RulesConfig
    webhooks: Sequence[Webhook] = ()
    audit: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    limits: PeerLimits = field(default_factory=load_peer_limits)

    @classmethod
    def from_environment(cls, settings: Settings, region: Region) -> NodeOptions:
        city = region.city(settings.city)
        tls, security = node_trust(
            settings, region, Path(os.environ.get("CREDITLINK_TLS_DIR", DEFAULT_TLS_DIR))
        )
        return cls(
            bind=os.environ.get("CREDITLINK_ALERTS_BIND") or city.endpoint(SERVICE),
            tls=tls,
            security=security,
            rules=load_rules(),
            webhooks=load_subscriptions(settings.city),
        )


class AlertsNode:
    def __init__(self, settings: Settings, region: Region, options: NodeOptions) -> None:
        self.settings = settings
        self.region = region
        self.options = options
        self.city_code = region.city(settings.city).admin_code
        self.serde = AvroSerde()
        self.kit = NodeBootstrap(
            settings,
            self.serde,
            service=SERVICE,
            city_code=self.city_code,
            tls=options.tls,
            security=options.security,
            limits=options.limits,
        )
        self.producer: AIOKafkaProducer = self.kit.producer
        self.audit = self.kit.audit_chain(SERVICE) if options.audit else None
        self.store: AlertStore | None = None
        self.book: AlertBook | None = None
        self.engine: RuleEngine | None = None
        self.server: PeerServer | None = None
        self.clients = PeerClients(region, options.tls)
        self.delivery: PeerDelivery | None = None
        self.webhooks: WebhookDispatcher | None = None
        self.servicer: AlertExchangeServicer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.failures: dict[str, int] = {}

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    async def start(self) -> None:
        """Open the store, catch up the output topics, start every loop and the server.
        On failure everything started so far is stopped again."""
        try:
            await self._start()
        except BaseException:
            await self.stop(0)
            raise

    async def _start(self) -> None:
        store = self.store = AlertStore(self.settings.data_dir / SERVICE / "store")
        await self.kit.start()
        if self.audit is not None:
            # Calls to peers (deliveries, status updates at the origin) are OUTBOUND records.
            self.clients.evidence = (self.audit, self.city_code)
        book = self.book = AlertBook(
            settings=self.settings,
            city_code=self.city_code,
            store=store,
            serde=self.serde,
            producer=self.producer,
            sla=self.options.rules.sla,
            webhooks=self.options.webhooks,
        )
        await book.recover()
        engine = self.engine = RuleEngine(
            settings=self.settings,
            region=self.region,
            city_code=self.city_code,
            store=store,
            serde=self.serde,
            rules=RuleSet(self.options.rules),
            book=book,
        )
        self.delivery = PeerDelivery(
            store=store, clients=self.clients, retry=self.options.rules.delivery
        )
        self.webhooks = WebhookDispatcher(
            store=store,
            webhooks=self.options.webhooks,
            source=source_for(self.city_code, SERVICE),
        )
        self.servicer = AlertExchangeServicer(
            city_code=self.city_code,
            book=book,
            engine=engine,
            store=store,
            security=self.options.security,
            clients=self.clients,
            follow_max_age=self.options.limits.follow_stream_max_age,
        )
        self.server = await self.kit.serve(
            self.options.bind,
            [
                ServiceBinding(
                    self.servicer,
                    alert_exchange_pb2_grpc.add_AlertExchangeServiceServicer_to_server,
                    "creditlink.peer.v1.AlertExchangeService",
                )
            ],
            audit=self.audit,
        )
        self._spawn(engine.run, "engine")
        self._spawn(self.delivery.run, "delivery")
        self._spawn(self.webhooks.run, "webhooks")
        self._spawn(self._escalate_forever, "escalation")
        log.info(
            "alerts_node_started",
            port=self.server.port,
            rules=[r.id for r in self.options.rules.rules if r.enabled],
            webhooks=[h.id for h in self.options.webhooks],
        )

    def _spawn(self, loop: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        task = asyncio.create_task(self._supervise(loop, name), name=f"alerts-{name}")
        self._tasks.append(task)

    async def _supervise(self, loop: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        """Run a loop for ever: a failure (broker away, topic not there yet) is logged and
        the loop restarts after a backoff, from the state in the store."""
        failures = 0
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                self.failures[name] = failures
                delay = min(LOOP_RESTART_MAX_S, 0.5 * 2 ** min(failures, 8))
                log.error("alerts_loop_failed", loop=name, error=repr(exc), restart_in_s=delay)
                await asyncio.sleep(delay)

    @property
    def healthy(self) -> bool:
        return bool(self._tasks) and all(not t.done() for t in self._tasks)

    def health_checks(self) -> Mapping[str, Check]:
        """What ``/healthz`` reports: every loop runs."""
        return {"loops": lambda: self.healthy}

    async def _escalate_forever(self) -> None:
        assert self.book is not None
        interval = self.options.rules.sla.check_interval.total_seconds()
        while True:
            await asyncio.sleep(interval)
            try:
                await self.book.escalate_due()
            except Exception as exc:  # a broker hiccup must not stop the SLA clock
                log.error("escalation_failed", error=repr(exc))

    async def stop(self, grace: float = 1.0) -> None:
        await self.kit.stop_serving(grace)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()
        if self.webhooks is not None:
            await self.webhooks.close()
        await self.clients.close()
        await self.kit.close()
        if self.store is not None:
            self.store.close()
            self.store = None
