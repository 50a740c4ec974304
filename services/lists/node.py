"""One city node's lists service, wired: store, book, Kafka, gRPC server, peer mirrors.

Start order matters: the book catches up from the changelog before the server answers or
any input is read, so nothing is served or decided on a state that is behind its own log.

Example::

    node = ListsNode(settings, region, load_lists_config(settings, region))
    # SIGTERM: stop reading, drain the calls in progress, close.
    await run_until_signalled(node, grace=STOP_GRACE_SECONDS, ops=ops_server(city, SERVICE))
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Coroutine, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import grpc
import structlog

from creditlink.peer.v1 import (
    audit_evidence_pb2_grpc,
    consent_pb2_grpc,
    credit_check_pb2_grpc,
    list_sync_pb2_grpc,
)
from services.common.audit.checkpoints import AuditEvidenceServicer, CheckpointHander
from services.common.audit.signing import AuditKeyring
from services.common.avro import AvroSerde
from services.common.consent import ConsentIssuer, load_private_key
from services.common.kafka import EventPublisher
from services.common.node import NodeBootstrap, node_trust
from services.common.peer import (
    OutboundEvidence,
    PeerSecurity,
    PeerServer,
    ServiceBinding,
    secure_channel,
)
from services.common.region import City, Region
from services.common.revocations import follow_revocations
from services.common.roles import CityRoles
from services.common.settings import PeerLimits, Settings, load_peer_limits
from services.lists.book import BookView, ListBook
from services.lists.check_server import CreditCheckServicer
from services.lists.config import ListsConfig
from services.lists.consent_server import ConsentServicer
from services.lists.kafka_io import (
    CHANGES_TOPIC,
    KafkaChangelog,
    KafkaChangeSink,
    KafkaRefusals,
    feed_records,
)
from services.lists.measures import MeasuresCatalogue, load_measures
from services.lists.mirror import Backoff, PeerMirror
from services.lists.revocation_mirror import RevocationMirror
from services.lists.store import ListStore
from services.lists.sync_server import ListSyncServicer

SERVICE: Final = "lists"
PRUNE_EVERY_SECONDS: Final = 3600.0
#: How long a stop lets calls in progress, and the record feed's current step, finish.
STOP_GRACE_SECONDS: Final = 2.0
#: Keep-alive pings let a follower notice a dead peer connection (half-open TCP) quickly;
#: peer servers accept them every 5 s and more (services/common/peer/limits.py).
CHANNEL_OPTIONS: Final = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)

log = structlog.get_logger()


def peer_services(
    book: BookView,
    catalogue: MeasuresCatalogue,
    security: PeerSecurity,
    peers: Sequence[City],
    limits: PeerLimits,
) -> list[ServiceBinding]:
    """The peer-facing services of a lists node, answered from ``book``."""
    return [
        ServiceBinding(
            ListSyncServicer(book, follow_max_age=limits.follow_stream_max_age),
            list_sync_pb2_grpc.add_ListSyncServiceServicer_to_server,
            "creditlink.peer.v1.ListSyncService",
        ),
        ServiceBinding(
            CreditCheckServicer(book, catalogue, security, peers),
            credit_check_pb2_grpc.add_CreditCheckServiceServicer_to_server,
            "creditlink.peer.v1.CreditCheckService",
        ),
    ]


def store_path(settings: Settings) -> Path:
    return settings.data_dir / SERVICE / "store"


class ListsNode:
    """The lists service of one city node."""

    def __init__(self, settings: Settings, region: Region, config: ListsConfig) -> None:
        self.settings = settings
        self.region = region
        self.config = config
        self.limits = load_peer_limits()  # fails fast, before anything is started
        self.city: City = region.city(settings.city)
        self.serde = AvroSerde()
        self.catalogue = load_measures(config.measures_file)
        self.tls, self.security = node_trust(settings, region, config.tls_dir)
        self.store = ListStore(store_path(settings), self.serde, own_city=self.city.admin_code)
        self.kit = NodeBootstrap(
            settings,
            self.serde,
            service=SERVICE,
            city_code=self.city.admin_code,
            tls=self.tls,
            security=self.security,
            limits=self.limits,
        )
        self.producer = self.kit.producer
        self.audit = self.kit.audit_chain(SERVICE)
        # Calls to peers, and refusals of what they send, are OUTBOUND records of a second
        # chain (one writer each).
        self.mirror_audit = self.kit.audit_chain(f"{SERVICE}-mirror")
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
            acts_for=functools.partial(_acts_for, self.security.city_roles, settings.city),
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
        # Consent: issued and revoked here for the city's residents, peers' revocations
        # mirrored in, all enforced by the guard (services/common/revocations.py).
        self.revocations = self.security.revocations
        self.publisher = EventPublisher(self.producer, self.serde, settings, service=SERVICE)
        consent_key = config.tls_dir / f"{settings.city}.consent.key"
        self.consent_issuer = (
            ConsentIssuer(self.city.admin_code, load_private_key(consent_key))
            if consent_key.is_file()
            else None
        )
        self.revocation_mirrors = [
            RevocationMirror(peer, self._channel_factory(peer), self.revocations, self.publisher)
            for peer in region.peers_of(settings.city)
            if "lists" in peer.endpoints
        ]
        # Evidence both ways: this node's signed audit heads handed to every peer, and the
        # peers' heads kept here (services/common/audit/checkpoints.py).
        signer = self.security.audit_signer
        self.checkpoints = (
            CheckpointHander(
                settings,
                AuditKeyring.of(signer),
                {
                    peer.key: self._channel_factory(peer)
                    for peer in region.peers_of(settings.city)
                    if "lists" in peer.endpoints
                },
                interval=config.checkpoint_seconds,
            )
            if signer is not None
            else None
        )
        self.server: PeerServer | None = None
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.feed_started = asyncio.Event()

    def _channel_factory(self, peer: City) -> Callable[[], grpc.aio.Channel]:
        # Every call to the peer is an OUTBOUND record of the mirror chain, with its receipt.
        evidence = OutboundEvidence(
            self.mirror_audit, node_city=self.city.admin_code, callee_city=peer.admin_code
        )

        def make() -> grpc.aio.Channel:
            return secure_channel(
                peer.endpoint("lists"),
                self.tls,
                expect_city=peer.key,
                service="lists",
                options=CHANNEL_OPTIONS,
                interceptors=(evidence,),
            )

        return make

    async def start(self) -> None:
        await self.kit.start()
        caught_up = await self.book.catch_up()
        await self.book.expire_due()
        # No consent is honoured before every revocation written so far is known.
        self._spawn("revocations", self._follow_revocations)
        await self.revocations.caught_up.wait()
        self.server = await self.kit.serve(
            self.config.bind,
            [
                *peer_services(
                    self.book,
                    self.catalogue,
                    self.security,
                    self.region.peers_of(self.settings.city),
                    self.limits,
                ),
                ServiceBinding(
                    ConsentServicer(
                        city_code=self.city.admin_code,
                        issuer=self.consent_issuer,
                        security=self.security,
                        revocations=self.revocations,
                        publisher=self.publisher,
                        follow_max_age=self.limits.follow_stream_max_age,
                    ),
                    consent_pb2_grpc.add_ConsentServiceServicer_to_server,
                    "creditlink.peer.v1.ConsentService",
                ),
                ServiceBinding(
                    AuditEvidenceServicer(
                        holder=self.city.admin_code,
                        keyring=AuditKeyring.from_directory(
                            self.config.tls_dir,
                            {k: c.admin_code for k, c in self.region.cities.items()},
                        ),
                        producer=self.producer,
                        publisher=self.publisher,
                        settings=self.settings,
                    ),
                    audit_evidence_pb2_grpc.add_AuditEvidenceServiceServicer_to_server,
                    "creditlink.peer.v1.AuditEvidenceService",
                ),
            ],
            audit=self.audit,
        )
        self._spawn("records", self._feed)
        for mirror in self.mirrors:
            self._spawn(f"follow-{mirror.peer.key}", mirror.follow)
            self._spawn(f"reconcile-{mirror.peer.key}", mirror.reconcile_forever)
        for revocation_mirror in self.revocation_mirrors:
            self._spawn(f"revocations-{revocation_mirror.peer.key}", revocation_mirror.follow)
        if self.checkpoints is not None:
            self._spawn("audit-checkpoints", self._hand_checkpoints)
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

    async def _follow_revocations(self) -> None:
        await follow_revocations(self.settings, self.serde, self.revocations)

    async def _hand_checkpoints(self) -> None:
        assert self.checkpoints is not None
        await self.checkpoints.run(self._stopping)

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
        }

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        self._stopping.set()
        await self.kit.stop_serving(grace)
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
        await self.kit.close()
        self.store.close()


def _acts_for(roles: CityRoles, city: str, actor: str, owner: str) -> bool:
    return roles.may_act_for(city, actor=actor, owner=owner)
