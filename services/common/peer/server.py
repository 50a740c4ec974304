"""The peer server: services behind the guard, health and reflection (:func:`start_peer_server`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.audit import QueuedAuditLog
from services.common.peer.guard import PeerCallGuard, _Registrar
from services.common.peer.issuers import CityIssuers
from services.common.peer.limits import CallerLimits, transport_options
from services.common.peer.names import DEFAULT_GRACE_SECONDS, LatencySink
from services.common.peer.security import PeerSecurity
from services.common.peer.tls import TlsFiles
from services.common.reflection import serve_reflection
from services.common.settings import PeerLimits, load_peer_limits


@dataclass(frozen=True, slots=True)
class ServiceBinding:
    """A servicer, the generated ``add_…_to_server`` function and the full service name."""

    servicer: object
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    service_name: str


class PeerServer:
    """A started server with its health servicer; stop it with :meth:`stop`."""

    def __init__(
        self,
        server: grpc.aio.Server,
        port: int,
        health_servicer: Any,
        services: Sequence[str],
        audit: QueuedAuditLog | None = None,
    ) -> None:
        self.server = server
        self.port = port
        self.health = health_servicer
        self._services = list(services)
        self._audit = audit

    async def stop(self, grace: float = DEFAULT_GRACE_SECONDS) -> None:
        """Report NOT_SERVING, let running calls finish for ``grace`` seconds, then stop and
        wait for the audit records still on their way (a refusal's follows its answer)."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self._audit is not None and self._audit.healthy:
            await self._audit.flush()


async def start_peer_server(
    *,
    bind: str,
    tls: TlsFiles,
    services: Sequence[ServiceBinding],
    security: PeerSecurity,
    audit: QueuedAuditLog | None,
    options: Sequence[tuple[str, Any]] = (),
    latency: LatencySink | None = None,
    limits: PeerLimits | None = None,
) -> PeerServer:
    """Build, bind (mTLS only) and start a server. ``bind`` may use port 0 for a free port.

    Every method of ``services`` is served behind :class:`PeerCallGuard`, which also refuses
    a client certificate that its city's CA did not issue (``issuers.py``); health and
    reflection are not (they carry no credit data and load balancers call them). Call
    latencies go to ``creditlink_grpc_latency_seconds``, or to ``latency`` when given (a
    process that serves beside a node hands them to the node's metrics).

    ``limits`` (default: :func:`load_peer_limits` from the environment, which fails fast on
    a bad value) bound what each peer may take: message size, streams per connection,
    connection age, keep-alive (gRPC options; an entry of ``options`` with the same name
    wins) and each calling city's rate and calls in progress (the guard). See
    docs/design.md §3.3.
    """
    limits = load_peer_limits() if limits is None else limits
    merged = dict(transport_options(limits))
    merged.update(options)
    server = grpc.aio.server(options=list(merged.items()))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    # The roots that verify client certificates also say which city CAs may name which city.
    issuers = CityIssuers.from_pem(tls.ca.read_bytes())
    guard = PeerCallGuard(security, audit, latency, CallerLimits(limits), issuers)
    names = [binding.service_name for binding in services]
    for binding in services:
        registrar = _Registrar()
        binding.add_to_server(binding.servicer, registrar)
        if binding.service_name not in registrar.handlers:
            raise ValueError(
                f"{binding.add_to_server.__name__} registered no methods of "
                f"{binding.service_name} (generated code older than grpcio 1.62?)"
            )
        for service, handlers in registrar.handlers.items():
            guarded = {
                name: guard.wrap(handler, f"/{service}/{name}")
                for name, handler in handlers.items()
            }
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(service, guarded),)
            )
            server.add_registered_method_handlers(service, guarded)
    serve_reflection(server, [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name])
    port = server.add_secure_port(bind, tls.server_credentials())
    if port == 0:
        raise OSError(f"cannot bind {bind}")
    await server.start()
    for name in names:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return PeerServer(server, port, health_servicer, names, audit)
