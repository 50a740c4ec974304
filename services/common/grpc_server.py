"""The gRPC bootstrap every peer-facing service uses: mTLS, identity, authorization, consent,
audit, health, reflection and graceful shutdown, so a servicer only implements its methods.

Example::

    security = PeerSecurity.from_files(settings, region)           # policy + consent keyring
    audit = AuditChainWriter(settings, serde, producer, node_city="320500", chain="lists")
    await audit.start()
    server = await start_peer_server(
        bind="127.0.0.1:24151",
        tls=TlsFiles.for_city("suzhou"),
        services=[ServiceBinding(CheckServicer(...), add_CreditCheckServiceServicer_to_server,
                                 "creditlink.peer.v1.CreditCheckService")],
        security=security,
        audit=audit,
    )
    await server.serve_until_signalled()      # SIGTERM/SIGINT -> NOT_SERVING, stop(grace)

**Who is calling.** The calling city comes only from the client certificate the TLS
handshake verified against the region CA (``context.auth_context()``): the URI SAN
``spiffe://creditlink/city/<key>``, or the CN when the certificate has no such SAN. It must be
a city of the region registry. No request field or metadata can change it.

**What a call may do.** :class:`AuthorizationInterceptor` asks the policy
(``policy.py``) whether the caller may call the method, and for a request about one subject
(a top-level ``subject_key`` field) whether it may see that subject's data class. A
natural-person subject also needs a valid consent token for the caller (the request's
``consent_token`` field). Refusals are ``PERMISSION_DENIED`` (``UNAUTHENTICATED`` when the
certificate names no known city) with a ``creditlink-denial`` trailer carrying a stable code.
Batch methods check each item in the servicer with :meth:`PeerSecurity.check_subject`.

**What is audited.** :class:`AuditInterceptor` writes one hash-chained record per peer call,
allowed or refused (``audit.py``). The subject key is the request's top-level
``subject_key`` (none for batch and stream requests); the purpose is, in this order: the
``scenario`` enum name and/or the ``purpose`` text of the request (``"TENDERING: WXZB-2024-1"``),
the ``creditlink-purpose`` metadata entry, or the method's default (``LIST_SYNC`` …).
Health and reflection calls are neither authorized nor audited.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import inspect
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.audit import AuditChainWriter, AuditEntry, AuditUnavailable
from services.common.certs import CITY_URI_PREFIX, DEFAULT_OUT
from services.common.cloudevents import is_valid_traceparent
from services.common.consent import ConsentError, ConsentGrant, ConsentKeyring
from services.common.logging import mask_resident_ids
from services.common.observability import GRPC_LATENCY
from services.common.policy import NATURAL_PERSON, Decision, Policy, data_class_of, load_policy
from services.common.region import Region
from services.common.settings import Settings

DENIAL_TRAILER: Final = "creditlink-denial"
PURPOSE_METADATA: Final = "creditlink-purpose"
DEFAULT_GRACE_SECONDS: Final = 5.0
EXEMPT_SERVICES: Final = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
DEFAULT_PURPOSES: Final = {
    "creditlink.peer.v1.ListSyncService": "LIST_SYNC",
    "creditlink.peer.v1.CreditCheckService": "CREDIT_CHECK",
    "creditlink.peer.v1.ScoreRecognitionService": "SCORE_RECOGNITION",
    "creditlink.peer.v1.AlertExchangeService": "ALERT_EXCHANGE",
    "creditlink.peer.v1.RecordIntakeService": "RECORD_INTAKE",
}
_MAX_PURPOSE_CHARS = 200

Handler = Callable[..., Any]


# --- TLS ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files of one party: the region CA it trusts, its certificate and its key."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def for_city(cls, city: str, directory: Path = DEFAULT_OUT) -> TlsFiles:
        """The files ``make certs`` writes for ``city``."""
        return cls(
            ca=directory / "ca.crt", cert=directory / f"{city}.crt", key=directory / f"{city}.key"
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        """Server side: present our certificate, *require* a client certificate from the CA."""
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.ca.read_bytes(),
            require_client_auth=True,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Client side: trust only the region CA and present our certificate."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes(),
            certificate_chain=self.cert.read_bytes(),
        )


def secure_channel(
    target: str,
    tls: TlsFiles,
    *,
    server_name: str | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """An mTLS channel to a peer. ``server_name`` overrides the name checked in its certificate
    (for example ``wuxi.creditlink.local`` when dialling an IP the certificate does not list).
    """
    all_options = list(options)
    if server_name:
        all_options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(target, tls.channel_credentials(), options=all_options)


# --- identity -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """The calling city as its verified certificate names it."""

    city: str
    city_code: str
    certificate_sha256: str | None


def _auth_values(context: grpc.aio.ServicerContext, name: str) -> list[str]:
    values = context.auth_context().get(name, [])
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


def certificate_city(context: grpc.aio.ServicerContext) -> str | None:
    """The city key the verified client certificate names, or None without a certificate."""
    if not _auth_values(context, "x509_pem_cert"):
        return None
    for san in _auth_values(context, "x509_subject_alternative_name"):
        if san.startswith(CITY_URI_PREFIX):
            return san.removeprefix(CITY_URI_PREFIX)
    common_names = _auth_values(context, "x509_common_name")
    return common_names[0] if common_names else None


def _certificate_sha256(context: grpc.aio.ServicerContext) -> str | None:
    pems = _auth_values(context, "x509_pem_cert")
    return _pem_sha256(pems[0]) if pems else None


@functools.lru_cache(maxsize=256)
def _pem_sha256(pem: str) -> str:
    """SHA-256 of the certificate's DER form. Cached: a peer presents the same certificate on
    every call, and parsing it costs more than the rest of the identity check."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER)
    return hashlib.sha256(der).hexdigest()


# --- per-call state -----------------------------------------------------------------------


@dataclass(slots=True)
class PeerCall:
    """What the interceptors learnt about the current call; servicers read it."""

    method: str
    started: float
    identity: PeerIdentity | None = None
    decision: Decision | None = None
    subject_key: str | None = None
    purpose: str = ""
    consent: ConsentGrant | None = None
    traceparent: str | None = None
    extra_consents: list[str] = field(default_factory=list)

    def may_see(self, data_class: str) -> bool:
        return self.decision is not None and self.decision.permits(data_class)


_current_call: contextvars.ContextVar[PeerCall | None] = contextvars.ContextVar(
    "creditlink_peer_call", default=None
)


def current_call() -> PeerCall:
    """The call being served; only inside a servicer method behind the interceptors."""
    call = _current_call.get()
    if call is None:
        raise RuntimeError("current_call() outside a peer call (interceptors not installed?)")
    return call


class Denied(Exception):
    """A refusal with its status and stable denial code."""

    def __init__(self, code: grpc.StatusCode, denial: str, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.denial = denial
        self.details = details

    async def abort(self, context: grpc.aio.ServicerContext) -> None:
        await context.abort(
            self.code, self.details, trailing_metadata=((DENIAL_TRAILER, self.denial),)
        )


# --- the security decisions ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerSecurity:
    """The serving city's policy and consent keyring, and the region that names the cities."""

    city: str
    region: Region
    policy: Policy
    keyring: ConsentKeyring

    @classmethod
    def from_files(
        cls,
        settings: Settings,
        region: Region,
        *,
        policy_file: Path | None = None,
        keys_dir: Path = DEFAULT_OUT,
    ) -> PeerSecurity:
        codes = {key: city.admin_code for key, city in region.cities.items()}
        return cls(
            city=settings.city,
            region=region,
            policy=load_policy(policy_file, cities=region.cities.keys()),
            keyring=ConsentKeyring.from_directory(keys_dir, codes),
        )

    @property
    def city_code(self) -> str:
        return self.region.city(self.city).admin_code

    def identify(self, context: grpc.aio.ServicerContext) -> PeerIdentity:
        city = certificate_city(context)
        if city is None:
            raise Denied(
                grpc.StatusCode.UNAUTHENTICATED,
                "no-client-certificate",
                "a client certificate is required",
            )
        if city not in self.region.cities:
            raise Denied(
                grpc.StatusCode.UNAUTHENTICATED,
                "unknown-city",
                "the client certificate names no city of the region",
            )
        return PeerIdentity(
            city=city,
            city_code=self.region.city(city).admin_code,
            certificate_sha256=_certificate_sha256(context),
        )

    def authorize(self, identity: PeerIdentity, method: str) -> Decision:
        decision = self.policy.decide(server=self.city, caller=identity.city, method=method)
        if not decision.allowed:
            raise Denied(
                grpc.StatusCode.PERMISSION_DENIED,
                "policy-denied",
                f"{identity.city} may not call {method}",
            )
        return decision

    def check_subject(
        self, call: PeerCall, subject_key: str, consent_token: str | None
    ) -> ConsentGrant | None:
        """Check one subject of a call: its data class and, for a person, the consent token.

        Raises :class:`Denied` (PERMISSION_DENIED; INVALID_ARGUMENT for a malformed key).
        Servicers of batch methods call this per item and turn a refusal into an item error.
        """
        data_class = data_class_of(subject_key)
        if data_class is None:
            raise Denied(
                grpc.StatusCode.INVALID_ARGUMENT,
                "invalid-subject-key",
                "subject_key must start with L: or N:",
            )
        if call.decision is None or not call.decision.permits(data_class):
            raise Denied(
                grpc.StatusCode.PERMISSION_DENIED,
                "data-class-denied",
                f"the policy does not let this city see {data_class} data through {call.method}",
            )
        if data_class != NATURAL_PERSON:
            return None
        assert call.identity is not None  # authorize() ran first
        try:
            return self.keyring.verify(
                consent_token, audience_city=call.identity.city_code, subject_key=subject_key
            )
        except ConsentError as exc:
            raise Denied(grpc.StatusCode.PERMISSION_DENIED, exc.failure.value, str(exc)) from None


def _field(request: object, name: str) -> Any:
    if not isinstance(request, Message):
        return None
    descriptor = request.DESCRIPTOR.fields_by_name.get(name)
    if descriptor is None:
        return None
    return getattr(request, name)


def _purpose(request: object, context: grpc.aio.ServicerContext, method: str) -> str:
    parts: list[str] = []
    scenario = _field(request, "scenario")
    if isinstance(scenario, int) and scenario and isinstance(request, Message):
        enum = request.DESCRIPTOR.fields_by_name["scenario"].enum_type
        if enum is not None and scenario in enum.values_by_number:
            parts.append(enum.values_by_number[scenario].name.removeprefix("SCENARIO_"))
    text = _field(request, "purpose")
    if isinstance(text, str) and text.strip():
        parts.append(text.strip())
    if not parts:
        metadata = dict(context.invocation_metadata() or ())
        declared = metadata.get(PURPOSE_METADATA)
        if isinstance(declared, str) and declared.strip():
            parts.append(declared.strip())
    if not parts:
        parts.append(DEFAULT_PURPOSES.get(method.strip("/").rsplit("/", 1)[0], "PEER_CALL"))
    # Caller-supplied text goes into a permanent log: never let a resident ID ride along.
    return mask_resident_ids(": ".join(parts))[:_MAX_PURPOSE_CHARS]


def _is_exempt(method: str) -> bool:
    return method.strip("/").rsplit("/", 1)[0] in EXEMPT_SERVICES


# --- handler wrapping ---------------------------------------------------------------------

Before = Callable[[PeerCall, object, grpc.aio.ServicerContext], Awaitable[None]]
After = Callable[[PeerCall, grpc.StatusCode], Awaitable[None]]


def _status_of(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def _wrap(
    handler: grpc.RpcMethodHandler, method: str, before: Before | None, after: After | None
) -> grpc.RpcMethodHandler:
    """The handler with ``before`` run ahead of the behaviour and ``after`` once it ended."""

    def call_state() -> PeerCall:
        call = _current_call.get()
        if call is None or call.method != method:
            call = PeerCall(method=method, started=time.monotonic())
            _current_call.set(call)
        return call

    async def finish(
        call: PeerCall, context: grpc.aio.ServicerContext, error: BaseException | None
    ) -> None:
        if after is not None:
            await after(call, _status_of(context, error))

    if handler.unary_unary or handler.stream_unary:
        inner = handler.unary_unary or handler.stream_unary

        async def unary_response(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = call_state()
            error: BaseException | None = None
            try:
                if before is not None:
                    await before(call, request, context)
                return await inner(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                await finish(call, context, error)

        factory = (
            grpc.unary_unary_rpc_method_handler
            if handler.unary_unary
            else grpc.stream_unary_rpc_method_handler
        )
        return factory(unary_response, handler.request_deserializer, handler.response_serializer)

    inner_stream = handler.unary_stream or handler.stream_stream

    async def streamed_response(
        request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        call = call_state()
        error: BaseException | None = None
        try:
            if before is not None:
                await before(call, request, context)
            produced = inner_stream(request, context)
            if inspect.isasyncgen(produced):
                async for message in produced:
                    yield message
            else:
                await produced  # a behaviour that writes with context.write()
        except BaseException as exc:
            error = exc
            raise
        finally:
            await finish(call, context, error)

    factory = (
        grpc.unary_stream_rpc_method_handler
        if handler.unary_stream
        else grpc.stream_stream_rpc_method_handler
    )
    return factory(streamed_response, handler.request_deserializer, handler.response_serializer)


class _WrappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Runs a subclass's ``before``/``after`` hooks around every peer method's handler.

    A method's handler never changes once the server runs, so each is wrapped once and the
    wrapped handler reused, not rebuilt per call. Health and reflection pass through.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def hooks(self, method: str) -> tuple[Before | None, After | None]:
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if (cached := self._wrapped.get(method)) is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None or _is_exempt(method):
            return handler
        wrapped = self._wrapped[method] = _wrap(handler, method, *self.hooks(method))
        return wrapped


class AuthorizationInterceptor(_WrappingInterceptor):
    """Identity from the certificate, the policy decision, the subject's class and consent;
    and the call's latency by method and status (``creditlink_grpc_latency_seconds``)."""

    def __init__(self, security: PeerSecurity) -> None:
        super().__init__()
        self._security = security

    def hooks(self, method: str) -> tuple[Before | None, After | None]:
        security = self._security

        async def before(
            call: PeerCall, request: object, context: grpc.aio.ServicerContext
        ) -> None:
            call.purpose = _purpose(request, context, method)
            raw_traceparent = dict(context.invocation_metadata() or ()).get("traceparent")
            if isinstance(raw_traceparent, str) and is_valid_traceparent(raw_traceparent):
                call.traceparent = raw_traceparent
            try:
                call.identity = security.identify(context)
                call.decision = security.authorize(call.identity, method)
                subject_key = _field(request, "subject_key")
                if isinstance(subject_key, str) and subject_key:
                    call.subject_key = subject_key
                    token = _field(request, "consent_token")
                    call.consent = security.check_subject(
                        call, subject_key, token if isinstance(token, str) else None
                    )
            except Denied as denied:
                await denied.abort(context)

        async def after(call: PeerCall, status: grpc.StatusCode) -> None:
            GRPC_LATENCY.labels(city=security.city, method=method, code=status.name).observe(
                time.monotonic() - call.started
            )

        return before, after


class AuditInterceptor(_WrappingInterceptor):
    """One hash-chained audit record per peer call, whatever its outcome.

    Install it *before* :class:`AuthorizationInterceptor` so refusals are audited too. When
    the chain cannot be extended the call is refused with UNAVAILABLE: a node does not serve
    peer calls it cannot account for.
    """

    def __init__(self, writer: AuditChainWriter, *, node_city_code: str) -> None:
        super().__init__()
        self._writer = writer
        self._node = node_city_code

    def hooks(self, method: str) -> tuple[Before | None, After | None]:
        writer = self._writer

        async def before(
            call: PeerCall, request: object, context: grpc.aio.ServicerContext
        ) -> None:
            if not writer.healthy:
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    "audit log unavailable",
                    trailing_metadata=((DENIAL_TRAILER, "audit-unavailable"),),
                )

        async def after(call: PeerCall, status: grpc.StatusCode) -> None:
            identity = call.identity
            entry = AuditEntry(
                caller_city=identity.city_code if identity else "unknown",
                callee_city=self._node,
                method=method,
                purpose=call.purpose
                or DEFAULT_PURPOSES.get(method.strip("/").rsplit("/", 1)[0], "PEER_CALL"),
                status_code=status.name,
                latency_ms=int((time.monotonic() - call.started) * 1000),
                at=datetime.now(UTC),
                subject_key=call.subject_key,
                consent_reference=call.consent.token_id if call.consent else None,
                traceparent=call.traceparent,
                peer_certificate_sha256=identity.certificate_sha256 if identity else None,
            )
            try:
                await writer.append(entry)
            except AuditUnavailable:
                if status is grpc.StatusCode.OK:
                    raise

        return before, after


# --- the server ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceBinding:
    """A servicer, the generated ``add_…_to_server`` function and the full service name."""

    servicer: object
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    service_name: str


class PeerServer:
    """A started server with its health servicer; stop it with :meth:`stop`."""

    def __init__(
        self, server: grpc.aio.Server, port: int, health_servicer: Any, services: Sequence[str]
    ) -> None:
        self.server = server
        self.port = port
        self.health = health_servicer
        self._services = list(services)

    async def stop(self, grace: float = DEFAULT_GRACE_SECONDS) -> None:
        """Report NOT_SERVING, let running calls finish for ``grace`` seconds, then stop."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)

    async def serve_until_signalled(self, grace: float = DEFAULT_GRACE_SECONDS) -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        try:
            await stopping.wait()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        await self.stop(grace)


async def start_peer_server(
    *,
    bind: str,
    tls: TlsFiles,
    services: Sequence[ServiceBinding],
    security: PeerSecurity,
    audit: AuditChainWriter | None,
    extra_interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    options: Sequence[tuple[str, Any]] = (),
) -> PeerServer:
    """Build, bind (mTLS only) and start a server. ``bind`` may use port 0 for a free port."""
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if audit is not None:
        interceptors.append(AuditInterceptor(audit, node_city_code=security.city_code))
    interceptors.append(AuthorizationInterceptor(security))
    interceptors.extend(extra_interceptors)
    server = grpc.aio.server(interceptors=interceptors, options=list(options))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [binding.service_name for binding in services]
    for binding in services:
        binding.add_to_server(binding.servicer, server)
    reflection.enable_server_reflection(
        [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    port = server.add_secure_port(bind, tls.server_credentials())
    if port == 0:
        raise OSError(f"cannot bind {bind}")
    await server.start()
    for name in names:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return PeerServer(server, port, health_servicer, names)
