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

**What a call may do.** :class:`PeerCallGuard` asks the policy
(``policy.py``) whether the caller may call the method, and for a request about one subject
(a top-level ``subject_key`` field) whether it may see that subject's data class. A
natural-person subject also needs a valid consent token for the caller (the request's
``consent_token`` field). Refusals are ``PERMISSION_DENIED`` (``UNAUTHENTICATED`` when the
certificate names no known city) with a ``creditlink-denial`` trailer carrying a stable code.
Batch methods check each item in the servicer with :meth:`PeerSecurity.check_subject`.

**What is audited.** :class:`PeerCallGuard` writes one hash-chained record per peer call,
allowed or refused (``services/common/audit/``). The subject key is the request's top-level
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
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, NoReturn

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.audit import AuditEntry, AuditUnavailable, QueuedAuditLog
from services.common.certs import CITY_URI_PREFIX, DEFAULT_OUT
from services.common.cloudevents import is_valid_traceparent
from services.common.consent import ConsentError, ConsentGrant, ConsentKeyring
from services.common.logging import mask_resident_ids
from services.common.memo import BoundedMemo
from services.common.observability import GRPC_LATENCY
from services.common.policy import NATURAL_PERSON, Decision, Policy, data_class_of, load_policy
from services.common.reflection import serve_reflection
from services.common.region import Region
from services.common.settings import Settings
from services.common.signals import until_signalled

DENIAL_TRAILER: Final = "creditlink-denial"
PURPOSE_METADATA: Final = "creditlink-purpose"
DEFAULT_GRACE_SECONDS: Final = 5.0
DEFAULT_PURPOSES: Final = {
    "creditlink.peer.v1.ListSyncService": "LIST_SYNC",
    "creditlink.peer.v1.CreditCheckService": "CREDIT_CHECK",
    "creditlink.peer.v1.ScoreRecognitionService": "SCORE_RECOGNITION",
    "creditlink.peer.v1.AlertExchangeService": "ALERT_EXCHANGE",
    "creditlink.peer.v1.RecordIntakeService": "RECORD_INTAKE",
}
_MAX_PURPOSE_CHARS = 200
_MAX_KNOWN_CERTIFICATES = 256

Handler = Callable[..., Any]
#: (full method name, status code name, seconds) of one served call.
LatencySink = Callable[[str, str, float], None]


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


def _text(values: Sequence[Any]) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


def _city_named(auth: Mapping[str, Sequence[Any]]) -> str | None:
    for san in _text(auth.get("x509_subject_alternative_name", ())):
        if san.startswith(CITY_URI_PREFIX):
            return san.removeprefix(CITY_URI_PREFIX)
    common_names = _text(auth.get("x509_common_name", ()))
    return common_names[0] if common_names else None


def _pem_sha256(pem: str) -> str:
    """SHA-256 of the certificate's DER form."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER)
    return hashlib.sha256(der).hexdigest()


# --- per-call state -----------------------------------------------------------------------


@dataclass(slots=True)
class PeerCall:
    """What the peer-call guard learnt about the current call; servicers read it.

    ``purpose`` and ``traceparent`` are worked out from the request and its metadata when
    first read: the audit record needs them, and it is made after the call is answered.
    """

    method: str
    started: float
    identity: PeerIdentity | None = None
    decision: Decision | None = None
    subject_key: str | None = None
    consent: ConsentGrant | None = None
    request: object = None
    metadata: Sequence[tuple[str, Any]] = ()
    _purpose: str | None = None
    _traceparent: tuple[str | None] | None = None

    def may_see(self, data_class: str) -> bool:
        return self.decision is not None and self.decision.permits(data_class)

    @property
    def purpose(self) -> str:
        if self._purpose is None:
            self._purpose = _purpose(self.request, self.metadata, self.method)
        return self._purpose

    @property
    def traceparent(self) -> str | None:
        """The caller's W3C ``traceparent``, if it sent a valid one."""
        if self._traceparent is None:
            raw = _metadata_value(self.metadata, "traceparent")
            self._traceparent = (raw if raw is not None and is_valid_traceparent(raw) else None,)
        return self._traceparent[0]


_current_call: contextvars.ContextVar[PeerCall | None] = contextvars.ContextVar(
    "creditlink_peer_call", default=None
)


def current_call() -> PeerCall:
    """The call being served; only inside a servicer method behind the peer-call guard."""
    call = _current_call.get()
    if call is None:
        raise RuntimeError("current_call() outside a peer call (not served by start_peer_server?)")
    return call


async def deny(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, denial: str, details: str
) -> NoReturn:
    """End a peer call refused: the status ``code`` and ``details`` for people, and the
    contract's ``creditlink-denial`` trailer with ``denial``, the stable lower-kebab reason
    a peer's code can act on. The one way every servicer refuses a call."""
    await context.abort(code, details, trailing_metadata=((DENIAL_TRAILER, denial),))
    raise AssertionError("context.abort returned")  # abort always raises


class Denied(Exception):
    """A refusal with its status and stable denial code."""

    def __init__(self, code: grpc.StatusCode, denial: str, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.denial = denial
        self.details = details

    async def abort(self, context: grpc.aio.ServicerContext) -> NoReturn:
        await deny(context, self.code, self.denial, self.details)


# --- the security decisions ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerSecurity:
    """The serving city's policy and consent keyring, and the region that names the cities."""

    city: str
    region: Region
    policy: Policy
    keyring: ConsentKeyring
    # (caller, method) -> decision: the policy is fixed for the server's life.
    _decisions: dict[tuple[str, str], Decision] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _identities: BoundedMemo[bytes, PeerIdentity] = field(
        default_factory=lambda: BoundedMemo(_MAX_KNOWN_CERTIFICATES),
        init=False,
        repr=False,
        compare=False,
    )

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
        auth = context.auth_context()
        pems = auth.get("x509_pem_cert")
        if not pems:
            raise Denied(
                grpc.StatusCode.UNAUTHENTICATED,
                "no-client-certificate",
                "a client certificate is required",
            )
        # A peer presents the same verified certificate on every call, and the names in it
        # do not change: what it identifies is worked out once per certificate (looked up
        # by the certificate as gRPC gives it, without decoding it first).
        known = self._identities.get(pems[0])
        if known is not None:
            return known
        city = _city_named(auth)
        if city is None or city not in self.region.cities:
            raise Denied(
                grpc.StatusCode.UNAUTHENTICATED,
                "unknown-city",
                "the client certificate names no city of the region",
            )
        identity = PeerIdentity(
            city=city,
            city_code=self.region.city(city).admin_code,
            certificate_sha256=_pem_sha256(_text(pems)[0]),
        )
        return self._identities.remember(pems[0], identity)

    def authorize(self, identity: PeerIdentity, method: str) -> Decision:
        decision = self._decisions.get((identity.city, method))
        if decision is None:
            decision = self.policy.decide(server=self.city, caller=identity.city, method=method)
            self._decisions[(identity.city, method)] = decision
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


_FIELD_NAMES: dict[type, frozenset[str]] = {}


def _field(request: object, name: str) -> Any:
    """The request's field ``name``, or None when its message type has no such field."""
    if not isinstance(request, Message):
        return None
    names = _FIELD_NAMES.get(type(request))
    if names is None:
        names = _FIELD_NAMES[type(request)] = frozenset(request.DESCRIPTOR.fields_by_name)
    return getattr(request, name) if name in names else None


def _metadata_value(metadata: Sequence[tuple[str, Any]], name: str) -> str | None:
    for key, value in metadata:
        if key == name and isinstance(value, str):
            return value
    return None


def _default_purpose(method: str) -> str:
    return DEFAULT_PURPOSES.get(method.strip("/").rsplit("/", 1)[0], "PEER_CALL")


def _purpose(request: object, metadata: Sequence[tuple[str, Any]], method: str) -> str:
    scenario = _field(request, "scenario")
    text = _field(request, "purpose")
    declared = _metadata_value(metadata, PURPOSE_METADATA)
    # Callers state the same few purposes again and again, and working one out (the enum's
    # name, masking) costs more than the rest of the audit record; short ones are kept.
    key = (type(request), scenario, text, declared, method)
    known = _PURPOSES.get(key)
    if known is None:
        known = _work_out_purpose(request, scenario, text, declared, method)
        if len(text or "") + len(declared or "") <= _REMEMBERED_PURPOSE_CHARS:
            _PURPOSES.remember(key, known)
    return known


_REMEMBERED_PURPOSES: Final = 4096
_PURPOSES: BoundedMemo[tuple[Any, ...], str] = BoundedMemo(_REMEMBERED_PURPOSES)
_REMEMBERED_PURPOSE_CHARS: Final = 2 * _MAX_PURPOSE_CHARS


def _work_out_purpose(
    request: object, scenario: Any, text: Any, declared: str | None, method: str
) -> str:
    parts: list[str] = []
    if isinstance(scenario, int) and scenario and isinstance(request, Message):
        enum = request.DESCRIPTOR.fields_by_name["scenario"].enum_type
        if enum is not None and scenario in enum.values_by_number:
            parts.append(enum.values_by_number[scenario].name.removeprefix("SCENARIO_"))
    if isinstance(text, str) and text.strip():
        parts.append(text.strip())
    if not parts and declared is not None and declared.strip():
        parts.append(declared.strip())
    if not parts:
        parts.append(_default_purpose(method))
    # Caller-supplied text goes into a permanent log: never let a resident ID ride along.
    return mask_resident_ids(": ".join(parts))[:_MAX_PURPOSE_CHARS]


# --- the guard around every peer method -----------------------------------------------------


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


class PeerCallGuard:
    """Authorization, audit and latency around each peer method's handler.

    In order, for every call: refuse with UNAVAILABLE when the audit chain cannot be extended
    (a node does not serve peer calls it cannot account for); identity from the certificate,
    the policy decision, the subject's class and consent (refusals abort with their denial
    code); the servicer's behaviour; then, whatever the outcome (refusals too), the latency
    by method and status (``creditlink_grpc_latency_seconds``) and one hash-chained audit
    record.

    The guard wraps each method handler once, when :func:`start_peer_server` registers the
    servicer, rather than being a ``grpc.aio.ServerInterceptor``: grpc.aio runs interceptors
    as a chain of coroutines on every call, and with two of them that chain cost more CPU
    than the authorization and the audit themselves (``python -m bench lists``, see
    docs/peer-calls.md).
    """

    def __init__(
        self,
        security: PeerSecurity,
        audit: QueuedAuditLog | None,
        latency: LatencySink | None = None,
    ) -> None:
        self._security = security
        self._audit = audit
        self._node = security.city_code
        self._latency_sink = latency

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """``handler`` (of the full method name ``/package.Service/Method``) behind the guard."""
        enter = functools.partial(self._enter, method=method)
        leave = functools.partial(self._leave, latency=self._latency(method))

        if handler.unary_unary or handler.stream_unary:
            inner = handler.unary_unary or handler.stream_unary

            async def unary_response(request: Any, context: grpc.aio.ServicerContext) -> Any:
                call = PeerCall(method=method, started=time.monotonic())
                _current_call.set(call)  # grpc.aio serves each call in its own task
                error: BaseException | None = None
                try:
                    if (refusal := enter(call, request, context)) is not None:
                        await refusal.abort(context)
                    return await inner(request, context)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    if (delivered := leave(call, _status_of(context, error))) is not None:
                        await delivered

            factory = (
                grpc.unary_unary_rpc_method_handler
                if handler.unary_unary
                else grpc.stream_unary_rpc_method_handler
            )
            return factory(
                unary_response, handler.request_deserializer, handler.response_serializer
            )

        inner_stream = handler.unary_stream or handler.stream_stream

        async def streamed_response(
            request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            call = PeerCall(method=method, started=time.monotonic())
            _current_call.set(call)
            error: BaseException | None = None
            try:
                if (refusal := enter(call, request, context)) is not None:
                    await refusal.abort(context)
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
                if (delivered := leave(call, _status_of(context, error))) is not None:
                    await delivered

        factory = (
            grpc.unary_stream_rpc_method_handler
            if handler.unary_stream
            else grpc.stream_stream_rpc_method_handler
        )
        return factory(streamed_response, handler.request_deserializer, handler.response_serializer)

    def _latency(self, method: str) -> Callable[[grpc.StatusCode, float], None]:
        """Where a call of ``method`` reports its latency: the histogram child per status
        (looked up once per status), or the server's latency sink."""
        sink = self._latency_sink
        if sink is not None:
            return lambda status, elapsed: sink(method, status.name, elapsed)
        children: dict[grpc.StatusCode, Any] = {}
        city = self._security.city

        def observe(status: grpc.StatusCode, elapsed: float) -> None:
            found = children.get(status)
            if found is None:
                found = children[status] = GRPC_LATENCY.labels(
                    city=city, method=method, code=status.name
                )
            found.observe(elapsed)

        return observe

    def _enter(
        self, call: PeerCall, request: object, context: grpc.aio.ServicerContext, *, method: str
    ) -> Denied | None:
        """Fill ``call`` in; the refusal to abort the call with, if any."""
        if self._audit is not None and not self._audit.healthy:
            return Denied(grpc.StatusCode.UNAVAILABLE, "audit-unavailable", "audit log unavailable")
        security = self._security
        call.request = request
        call.metadata = context.invocation_metadata() or ()
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
            return denied
        return None

    def _leave(
        self,
        call: PeerCall,
        status: grpc.StatusCode,
        *,
        latency: Callable[[grpc.StatusCode, float], None],
    ) -> Awaitable[None] | None:
        """Record the latency and append the audit record; what to await before answering
        (a durable audit writer's delivery), if anything."""
        elapsed = time.monotonic() - call.started
        latency(status, elapsed)
        if self._audit is None:
            return None
        # The record is made when the writer links it, after the call is answered.
        entry = functools.partial(
            _audit_entry, call, status, elapsed, datetime.now(UTC), self._node
        )
        refuse = status is grpc.StatusCode.OK  # a call that failed anyway still answers
        if self._audit.durable:
            return _audited(self._audit.append(entry), refuse=refuse)
        try:
            self._audit.append_nowait(entry)
        except AuditUnavailable:
            if refuse:
                raise
        return None


def _audit_entry(
    call: PeerCall, status: grpc.StatusCode, elapsed: float, at: datetime, node: str
) -> AuditEntry:
    identity = call.identity
    return AuditEntry(
        caller_city=identity.city_code if identity else "unknown",
        callee_city=node,
        method=call.method,
        purpose=call.purpose or _default_purpose(call.method),
        status_code=status.name,
        latency_ms=int(elapsed * 1000),
        at=at,
        subject_key=call.subject_key,
        consent_reference=call.consent.token_id if call.consent else None,
        traceparent=call.traceparent,
        peer_certificate_sha256=identity.certificate_sha256 if identity else None,
    )


async def _audited(appended: Awaitable[None], *, refuse: bool) -> None:
    """Wait for a durable audit record; a record that cannot be written fails a call that
    had succeeded."""
    try:
        await appended
    except AuditUnavailable:
        if refuse:
            raise


class _Registrar:
    """Stands in for the server while a generated ``add_…_to_server`` function registers a
    servicer, so that :class:`PeerCallGuard` can wrap each method handler before the real
    server sees it. Generated code hands the same handlers to both methods below."""

    def __init__(self) -> None:
        self.handlers: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.handlers.setdefault(service, {}).update(handlers)

    def add_generic_rpc_handlers(self, generic_handlers: Sequence[object]) -> None:
        """Ignored: the generated code also passes every handler to the method above."""


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
        hand the audit records of the last calls to the broker."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self._audit is not None and self._audit.healthy:
            await self._audit.flush()

    async def serve_until_signalled(self, grace: float = DEFAULT_GRACE_SECONDS) -> None:
        await until_signalled()
        await self.stop(grace)


async def start_peer_server(
    *,
    bind: str,
    tls: TlsFiles,
    services: Sequence[ServiceBinding],
    security: PeerSecurity,
    audit: QueuedAuditLog | None,
    options: Sequence[tuple[str, Any]] = (),
    latency: LatencySink | None = None,
) -> PeerServer:
    """Build, bind (mTLS only) and start a server. ``bind`` may use port 0 for a free port.

    Every method of ``services`` is served behind :class:`PeerCallGuard`; health and
    reflection are not (they carry no credit data and load balancers call them). Call
    latencies go to ``creditlink_grpc_latency_seconds``, or to ``latency`` when given (a
    process that serves beside a node hands them to the node's metrics).
    """
    server = grpc.aio.server(options=list(options))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    guard = PeerCallGuard(security, audit, latency)
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
