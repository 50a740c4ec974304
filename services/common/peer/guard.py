"""The guard around every peer method: audit availability, identity, policy, consent,
latency and the audit record."""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc

from services.common.audit import AuditEntry, AuditUnavailable, QueuedAuditLog
from services.common.audit.chain import (
    RECEIPT_TRAILER,
    ExchangeDigest,
    Receipt,
    encoded_message,
)
from services.common.audit.signing import AuditSigner
from services.common.audit.writer import Position
from services.common.observability import GRPC_LATENCY
from services.common.peer.call import Denied, PeerCall, Refused, _current_call, send_refusal
from services.common.peer.issuers import CityIssuers
from services.common.peer.limits import CallerLimits
from services.common.peer.names import LatencySink
from services.common.peer.purpose import _default_purpose, _field
from services.common.peer.security import PeerSecurity, check_subject_key

_AUDIT_UNAVAILABLE = Denied(
    grpc.StatusCode.UNAVAILABLE, "audit-unavailable", "audit log unavailable"
)


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
    (a node does not serve peer calls it cannot account for); identity from the certificate
    and its issuing CA's city (``issuers.py``), the caller's rate and calls in progress
    (``limits.py``), the policy decision, the subject's class and consent (refusals abort
    with their denial code); the servicer's behaviour; then, whatever the outcome (refusals
    too), the latency by method and status (``creditlink_grpc_latency_seconds``) and one
    hash-chained audit record, which names the denial code of a refusal.

    An answered call (status OK) also carries the node's signed receipt, the
    ``creditlink-receipt`` trailer: where its record went and the digest of the exchange it
    recorded (``Receipt``), signed with the city's audit key, so the caller can keep it in
    its own OUTBOUND record (``outbound.py``). A stream's receipt covers the request and
    every message it sent, and comes with its end (docs/trust.md, "Receipts").

    A call is answered only once the broker has acknowledged its record, so a node that
    crashes has recorded every call it served. A call whose record is not acknowledged
    fails (UNAVAILABLE, ``audit-unavailable``), though it had succeeded. A refusal waits for
    its record too: the guard's own refusals and a servicer's (:func:`deny` raises
    :class:`Refused` to the guard) are sent, with their status and denial trailer, once the
    record is acknowledged; one whose record cannot be written is still sent (a refusal
    serves nothing), and its record's absence is the writer's failure, which then refuses
    every call (step 1).

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
        limits: CallerLimits | None = None,
        issuers: CityIssuers | None = None,
    ) -> None:
        self._security = security
        self._issuers = issuers
        self._audit = audit
        self._node = security.city_code
        self._latency_sink = latency
        self._limits = limits
        self._signer: AuditSigner | None = audit.signer if audit is not None else None

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """``handler`` (of the full method name ``/package.Service/Method``) behind the guard."""
        enter = functools.partial(self._enter, method=method)
        leave = functools.partial(self._leave, latency=self._latency(method))
        # Receipts for calls with one request message; a client stream's requests are read
        # by the servicer, not seen here, so such calls are recorded without one.
        receipts = (
            self._signer is not None
            and self._audit is not None
            and (handler.unary_unary is not None or handler.unary_stream is not None)
        )

        if handler.unary_unary or handler.stream_unary:
            inner = handler.unary_unary or handler.stream_unary

            async def unary_response(request: Any, context: grpc.aio.ServicerContext) -> Any:
                call = PeerCall(method=method, started=time.monotonic())
                _current_call.set(call)  # grpc.aio serves each call in its own task
                error: BaseException | None = None
                refused: Denied | None = None
                response: Any = None
                try:
                    if (refusal := enter(call, request, context)) is not None:
                        call.denial = refusal.denial
                        raise Refused(refusal)
                    # The request as received, encoded before the servicer runs: a servicer
                    # may fill in a field (UpdateAlertStatus records the regulator from its
                    # certificate), and the caller digests what it sent. A request that did
                    # not decode (intake's Undecodable) is refused by the servicer: no receipt.
                    encodes = receipts and hasattr(request, "SerializeToString")
                    received = encoded_message(request) if encodes else None
                    response = await inner(request, context)
                    if received is not None:
                        exchange = ExchangeDigest(method)
                        exchange.add(received)
                        exchange.add(encoded_message(response))
                        call.exchange = exchange
                except Refused as made:
                    refused = made.denied
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    status = refused.code if refused else _status_of(context, error)
                    if (delivered := leave(call, context, status)) is not None:
                        await delivered
                if refused is not None:  # sent now that its record is acknowledged
                    await send_refusal(context, refused.code, refused.denial, refused.details)
                return response

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
            refused: Denied | None = None
            try:
                if (refusal := enter(call, request, context)) is not None:
                    call.denial = refusal.denial
                    raise Refused(refusal)
                exchange = call.exchange = ExchangeDigest(method) if receipts else None
                if exchange is not None:
                    exchange.add(encoded_message(request))
                produced = inner_stream(request, context)
                if inspect.isasyncgen(produced):
                    async for message in produced:
                        if exchange is not None:
                            exchange.add(encoded_message(message))
                        yield message
                else:
                    # A behaviour that writes with context.write() sends nothing the guard
                    # sees: its stream gets no exchange digest and no receipt.
                    call.exchange = None
                    await produced
            except Refused as made:
                refused = made.denied
            except BaseException as exc:
                error = exc
                raise
            finally:
                status = refused.code if refused else _status_of(context, error)
                if (delivered := leave(call, context, status)) is not None:
                    await delivered
            if refused is not None:  # sent now that its record is acknowledged
                await send_refusal(context, refused.code, refused.denial, refused.details)

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
            return _AUDIT_UNAVAILABLE
        security = self._security
        call.request = request
        call.metadata = context.invocation_metadata() or ()
        try:
            identity = security.identify(context)
            if self._issuers is not None:
                self._issuers.check(context, identity)
            call.identity = identity
            if self._limits is not None:
                self._limits.admit(call, call.identity.city_code)
            call.decision = security.authorize(call.identity, method)
            subject_key = _field(request, "subject_key")
            if isinstance(subject_key, str) and subject_key:
                # Checked before it is recorded: the audit topic keeps a malformed key (perhaps
                # a raw ID number) forever, so its refusal is audited without it.
                call.subject_key = check_subject_key(subject_key)
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
        context: grpc.aio.ServicerContext,
        status: grpc.StatusCode,
        *,
        latency: Callable[[grpc.StatusCode, float], None],
    ) -> Awaitable[None] | None:
        """Record the latency and append the audit record; what to await before answering
        (the record's acknowledgement), if anything."""
        elapsed = time.monotonic() - call.started
        if call.limited_as is not None and self._limits is not None:
            self._limits.release(call)
        latency(status, elapsed)
        if self._audit is None:
            return None
        # The record is made when the writer links it, after the call is answered.
        answered = status is grpc.StatusCode.OK  # a call that failed anyway still answers
        exchange = call.exchange.hexdigest() if answered and call.exchange is not None else None
        entry = functools.partial(
            _audit_entry, call, status, elapsed, datetime.now(UTC), self._node, exchange
        )
        signer = self._signer if exchange is not None else None
        return _audited(
            self._audit.append(entry), context, refuse=answered, signer=signer, exchange=exchange
        )


def _audit_entry(
    call: PeerCall,
    status: grpc.StatusCode,
    elapsed: float,
    at: datetime,
    node: str,
    exchange: str | None = None,
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
        # A call that ended OK was not refused, whatever a servicer noted on the way.
        denial_code=call.denial if status is not grpc.StatusCode.OK else None,
        caller_role=identity.role.audit_role if identity else None,
        consent_reference=call.consent.token_id if call.consent else None,
        subjects=tuple(call.subjects),
        traceparent=call.traceparent,
        peer_certificate_sha256=identity.certificate_sha256 if identity else None,
        exchange_sha256=exchange,
    )


async def _audited(
    appended: Awaitable[Position],
    context: grpc.aio.ServicerContext,
    *,
    refuse: bool,
    signer: AuditSigner | None,
    exchange: str | None,
) -> None:
    """Wait for the broker's acknowledgement of a call's audit record, then (with ``signer``)
    send the call's receipt as a trailer; a record that cannot be written fails a call that
    had succeeded (``refuse``), as a call is refused while the audit is unavailable. (That
    failure is sent at once: its call's record is already the one that failed.)"""
    try:
        chain, seq, record_hash = await appended
    except AuditUnavailable:
        if refuse:
            unavailable = _AUDIT_UNAVAILABLE
            await send_refusal(context, unavailable.code, unavailable.denial, unavailable.details)
        return
    if signer is not None and exchange is not None:
        signature = signer.receipt_signature(chain, seq, record_hash, exchange)
        receipt = Receipt(chain, seq, record_hash, exchange, signature)
        context.set_trailing_metadata(((RECEIPT_TRAILER, receipt.trailer()),))


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
