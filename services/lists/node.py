"""One city node's lists service, wired: store, book, Kafka, gRPC server, peer mirrors.

Start order matters: the book catches up from the changelog before the server answers or
any input is read, so nothing is served or decided on a state that is behind its own log.

Example::

    node = ListsNode(settings, region, load_lists_config(settings, region))
    await node.start()
    await node.serve_until_signalled()        # SIGTERM: stop reading, drain calls, close
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any, Final

import grpc
import structlog

from services.common.audit import AuditChainWriter
from services.common.audit_relay import AuditRelay
from services.common.avro import AvroSerde
from services.common.kafka import make_producer
from services.common.peer import (
    PeerSecurity,
    PeerServer,
    TlsFiles,
    secure_channel,
    start_peer_server,
)
from services.common.region import City, Region
from services.common.settings import Settings
from services.lists.book import ListBook
from services.lists.config import ListsConfig
from services.lists.kafka_io import (
    CHANGES_TOPIC,
    KafkaChangelog,
    KafkaChangeSink,
    KafkaRefusals,
    feed_records,
)
from services.lists.measures import load_measures
from services.lists.mirror import Backoff, PeerMirror
from services.lists.serving import (
    SERVER_OPTIONS,
    SERVICE,
    ServingProcesses,
    peer_services,
    store_path,
)
from services.lists.store import ListStore

PRUNE_EVERY_SECONDS: Final = 3600.0
#: Keep-alive pings let a follower notice a dead peer connection (half-open TCP) quickly.
CHANNEL_OPTIONS: Final = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)

log = structlog.get_logger()


class ListsNode:
    """The lists service of one city node."""

    def __init__(self, settings: Settings, region: Region, config: ListsConfig) -> None:
        self.settings = settings
        self.region = region
        self.config = config
        self.city: City = region.city(settings.city)
        self.serde = AvroSerde()
        self.catalogue = load_measures(config.measures_file)
        self.security = PeerSecurity.from_files(settings, region, keys_dir=config.tls_dir)
        self.tls = TlsFiles.for_city(settings.city, config.tls_dir)
        self.store = ListStore(store_path(settings), self.serde, own_city=self.city.admin_code)
        self.producer = make_producer(settings, client_id=SERVICE)
        # Credit checks are the region's hot path: their audit chain is linked and produced
        # by a helper process, off the serving thread (services/common/audit_relay.py).
        self.audit: AuditRelay | AuditChainWriter
        if os.environ.get("CREDITLINK_AB_AUDIT_RELAY", "1") == "0":
            self.audit = AuditChainWriter(
                settings,
                self.serde,
                self.producer,
                node_city=self.city.admin_code,
                chain=SERVICE,
                service=SERVICE,
            )
        else:
            self.audit = AuditRelay(
                settings, node_city=self.city.admin_code, chain=SERVICE, service=SERVICE
            )
        # Refusals of what peers send are OUTBOUND records of a second chain (one writer each).
        self.mirror_audit = AuditChainWriter(
            settings,
            self.serde,
            self.producer,
            node_city=self.city.admin_code,
            chain=f"{SERVICE}-mirror",
            service=SERVICE,
        )
        self.book = ListBook(
            self.store,
            KafkaChangeSink(self.producer, self.serde, settings, city_code=self.city.admin_code),
            KafkaRefusals(
                self.producer,
                self.serde,
                settings,
                city_code=self.city.admin_code,
                audit=self.mirror_audit,
            ),
            KafkaChangelog(settings, self.serde),
            own_city=self.city.admin_code,
            changelog_topic=settings.topic(CHANGES_TOPIC),
        )
        self.mirrors = [
            PeerMirror(
                self.book,
                peer,
                self._channel_factory(peer),
                own_city_key=settings.city,
                reconcile_seconds=config.reconcile_seconds,
            )
            for peer in region.peers_of(settings.city)
            if "lists" in peer.endpoints
        ]
        self.server: PeerServer | None = None
        self.serving: ServingProcesses | None = None
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.feed_started = asyncio.Event()

    def _channel_factory(self, peer: City) -> Callable[[], grpc.aio.Channel]:
        def make() -> grpc.aio.Channel:
            return secure_channel(peer.endpoint("lists"), self.tls, options=CHANNEL_OPTIONS)

        return make

    async def start(self) -> None:
        # The relay's helper process starts (imports, connects, reads the chain's head)
        # while this process catches up.
        relay = asyncio.create_task(self.audit.start())
        try:
            await self.producer.start()
            await self.mirror_audit.start()
            caught_up = await self.book.catch_up()
            await self.book.expire_due()
        except BaseException:
            relay.cancel()
            with contextlib.suppress(BaseException):
                await relay
            if isinstance(self.audit, AuditRelay):
                await self.audit.close()
            raise
        await relay
        self.server = await start_peer_server(
            bind=self.config.bind,
            tls=self.tls,
            services=peer_services(
                self.book, self.catalogue, self.security, self.region.peers_of(self.settings.city)
            ),
            security=self.security,
            audit=self.audit,
            options=SERVER_OPTIONS,
        )
        if self.config.serving_processes > 1:
            host = self.config.bind.rpartition(":")[0]
            self.serving = ServingProcesses(
                self.settings,
                self.book,
                count=self.config.serving_processes - 1,
                bind=f"{host}:{self.server.port}",
                city=self.settings.city,
            )
            await self.serving.start()
        self._spawn("records", self._feed)
        for mirror in self.mirrors:
            self._spawn(f"follow-{mirror.peer.key}", mirror.follow)
            self._spawn(f"reconcile-{mirror.peer.key}", mirror.reconcile_forever)
        self._spawn("expiry", self._expire_forever)
        self._spawn("prune", self._prune_forever)
        log.info(
            "lists_started",
            bind=self.config.bind,
            port=self.server.port,
            own_sequence=self.store.own_sequence(),
            entries=sum(self.store.entry_count(c.admin_code) for c in self.region.cities.values()),
            caught_up=caught_up,
            peers=[m.peer.key for m in self.mirrors],
            serving_processes=self.config.serving_processes,
        )

    def _spawn(self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._tasks.append(asyncio.create_task(self._supervise(name, loop), name=name))

    async def _supervise(self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``loop``; after an unexpected error log it and restart it with backoff."""
        backoff = Backoff(initial=0.5, maximum=10.0)
        failures = 0
        while not self._stopping.is_set():
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.error("lists_loop_failed", loop=name, error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(backoff.delay(failures))

    async def _feed(self) -> None:
        await feed_records(
            self.book, self.settings, self.serde, stopping=self._stopping, started=self.feed_started
        )

    async def _expire_forever(self) -> None:
        while not self._stopping.is_set():
            await asyncio.sleep(self.config.expiry_seconds)
            await self.book.expire_due()

    async def _prune_forever(self) -> None:
        retention = timedelta(days=self.config.retention_days)
        while not self._stopping.is_set():
            await self.book.prune_retained(retention)
            await asyncio.sleep(PRUNE_EVERY_SECONDS)

    def health_checks(self) -> dict[str, Callable[[], bool]]:
        return {
            "audit": lambda: self.audit.healthy,
            "loops": lambda: all(not t.done() for t in self._tasks),
            "serving": lambda: self.serving is None or self.serving.alive,
        }

    async def stop(self, grace: float = 2.0) -> None:
        self._stopping.set()
        stops = [] if self.server is None else [self.server.stop(grace)]
        if self.serving is not None:
            stops.append(self.serving.close())
        await asyncio.gather(*stops)
        # The record feed ends after its current step; the other loops run until cancelled.
        # (A step cut short is no harm either: the next start catches up from the changelog.)
        if self._tasks:
            await asyncio.wait(self._tasks[:1], timeout=grace)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for mirror in self.mirrors:
            await mirror.close()
        with contextlib.suppress(Exception):
            if isinstance(self.audit, AuditRelay):
                await self.audit.close()
            else:
                await self.audit.flush()
        await self.producer.stop()
        self.store.close()

    async def serve_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            await self.stop()
