"""The node bootstrap every service shares: its TLS files and the serving city's decisions,
its producer and audit chains, its peer server, its ops endpoint and its stop signals.

A service's node keeps only what is its own (its servicers, its Kafka loops, its extra
chains) and calls these steps in this order (docs/design.md §3.4 says why this order)::

    tls, security = node_trust(settings, region, tls_dir)
    kit = NodeBootstrap(settings, serde, service="lists", city_code="320500",
                        tls=tls, security=security)
    audit = kit.audit_chain("lists")              # before start: the tail is read at start
    await kit.start()                             # producer, then each chain's tail
    ...                                           # the node's own catch-up
    server = await kit.serve(bind, [binding], audit=audit)
    ...                                           # the node's own loops
    # stopping:
    await kit.stop_serving(grace)                 # NOT_SERVING, drain, stop, flush the chain
    ...                                           # the node's own loops and clients
    await kit.close()                             # flush every chain, stop the producer

``python -m services.<name>`` runs its node with :func:`run_until_signalled`: start, the ops
endpoint (``/healthz``, ``/metrics``, :func:`ops_server`), SIGTERM or SIGINT, stop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

from aiokafka import AIOKafkaProducer

from services.common.audit import AuditChainWriter
from services.common.avro import AvroSerde
from services.common.kafka import make_producer
from services.common.observability import Check, OpsServer
from services.common.peer import (
    PeerSecurity,
    PeerServer,
    ServiceBinding,
    TlsFiles,
    start_peer_server,
)
from services.common.region import City, Region
from services.common.settings import PeerLimits, Settings, load_peer_limits
from services.common.signals import until_signalled


class NodeTrust(NamedTuple):
    """What a node proves and decides with: its certificate files and the serving city's
    policy, consent keyring, roles and audit key."""

    tls: TlsFiles
    security: PeerSecurity


def node_trust(settings: Settings, region: Region, directory: Path) -> NodeTrust:
    """Both from one directory (``CREDITLINK_TLS_DIR``): ``ca.crt``, ``<city>.crt/.key``,
    the cities' consent and audit keys."""
    return NodeTrust(
        TlsFiles.for_city(settings.city, directory),
        PeerSecurity.from_files(settings, region, keys_dir=directory),
    )


class NodeBootstrap:
    """The producer, audit chains and peer server of one service's node, started and stopped
    in the order every node needs.

    ``limits`` default to :func:`load_peer_limits`, read here so that a bad value stops the
    node before anything is started. ``client_id`` names the producer (default: the
    service).
    """

    def __init__(
        self,
        settings: Settings,
        serde: AvroSerde,
        *,
        service: str,
        city_code: str,
        tls: TlsFiles,
        security: PeerSecurity,
        limits: PeerLimits | None = None,
        client_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.serde = serde
        self.service = service
        self.city_code = city_code
        self.tls = tls
        self.security = security
        self.limits = load_peer_limits() if limits is None else limits
        self.producer: AIOKafkaProducer = make_producer(settings, client_id=client_id or service)
        self.server: PeerServer | None = None
        self._chains: list[AuditChainWriter] = []

    def audit_chain(self, chain: str) -> AuditChainWriter:
        """A writer of ``chain`` on the node's producer, signed with the city's audit key;
        :meth:`start` recovers its tail. One writer per chain: the writer numbers and links
        the records."""
        writer = AuditChainWriter(
            self.settings,
            self.serde,
            self.producer,
            node_city=self.city_code,
            chain=chain,
            service=self.service,
            signer=self.security.audit_signer,
        )
        self._chains.append(writer)
        return writer

    async def start(self) -> None:
        """Start the producer, then recover each chain's tail from the audit topic, so that
        nothing (a served call, a call to a peer) appends before its chain continues where
        the last run left it."""
        await self.producer.start()
        for chain in self._chains:
            await chain.start()

    async def serve(
        self,
        bind: str,
        services: Sequence[ServiceBinding],
        *,
        audit: AuditChainWriter | None,
    ) -> PeerServer:
        """Start the peer server (mTLS, the guard, health, reflection) with the node's
        security and limits; every call it serves goes on ``audit``."""
        self.server = await start_peer_server(
            bind=bind,
            tls=self.tls,
            services=services,
            security=self.security,
            audit=audit,
            limits=self.limits,
        )
        return self.server

    async def stop_serving(self, grace: float) -> None:
        """NOT_SERVING, let calls in progress finish for ``grace`` seconds, stop the server
        and wait for the audit records of the calls it answered."""
        if self.server is not None:
            await self.server.stop(grace)

    async def close(self) -> None:
        """Wait for every chain's records still on their way, then stop the producer: call
        it once nothing that writes to the chains or the producer runs any more."""
        for chain in self._chains:
            # A failed chain has failed its callers already; it must not keep the producer
            # from stopping.
            with contextlib.suppress(Exception):
                await chain.flush()
        await self.producer.stop()


class ServingNode(Protocol):
    """A service's node as :func:`run_until_signalled` runs it."""

    async def start(self) -> None: ...

    async def stop(self, grace: float) -> None: ...

    def health_checks(self) -> Mapping[str, Check]: ...


def ops_server(city: City, service: str) -> OpsServer | None:
    """The ops endpoint the region file gives ``service`` of ``city`` (``ops:``), if any."""
    address = city.ops.get(service)
    if not address:
        return None
    host, _, port = address.rpartition(":")
    return OpsServer(service=service, city=city.key, host=host, port=int(port))


async def run_until_signalled(
    node: ServingNode, *, grace: float, ops: OpsServer | None = None
) -> None:
    """Start ``node`` and then ``ops`` with the node's health checks, serve until SIGTERM or
    SIGINT, then stop the node (``grace`` seconds for calls in progress) and last ``ops``,
    which answers ``/healthz`` and ``/metrics`` until the node has stopped."""
    await node.start()
    try:
        if ops is not None:
            for name, check in node.health_checks().items():
                ops.add_check(name, check)
            await ops.start()
        await until_signalled()
    finally:
        await node.stop(grace)
        if ops is not None:
            await ops.stop()
