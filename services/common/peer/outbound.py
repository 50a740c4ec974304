"""The caller's side of the evidence: every call a node makes to a peer is one OUTBOUND
record of its own chain, with the receipt the callee returned (docs/trust.md, "Receipts").

:class:`OutboundEvidence` is a client interceptor of the channel :func:`secure_channel`
opens. After each call it appends an OUTBOUND record: the method, the subject, the status, the
denial code of a refusal, the digest of the exchange as this node sent and received it
(``exchange_sha256``) and the callee's ``creditlink-receipt`` trailer as received. The answer
reaches the code that made the call only once that record is acknowledged, so a node that
acted on an answer has its record, as a callee has its record of every call it answered.

Whether the receipt is honest is for ``audit verify`` to say (``verify.py``): its signature
under the callee city's published key, its exchange digest against the caller's, and, with
the callee's chain at hand, the callee's record at the receipt's position.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc

from services.common.audit.chain import (
    RECEIPT_TRAILER,
    AuditEntry,
    AuditUnavailable,
    Receipt,
    encoded_message,
    exchange_digest,
)
from services.common.audit.writer import QueuedAuditLog
from services.common.logging import get_logger
from services.common.peer.names import DENIAL_TRAILER
from services.common.peer.purpose import _field, _metadata_value, _purpose
from services.common.policy import subject_key_problem

log = get_logger(component="outbound")


# grpc.aio ships no type stubs: its interceptor bases are Any to mypy.
class OutboundEvidence(
    grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.aio.UnaryStreamClientInterceptor,  # type: ignore[misc]
):
    """Records each call made on a channel to ``callee_city`` as an OUTBOUND audit record."""

    def __init__(self, audit: QueuedAuditLog, *, node_city: str, callee_city: str) -> None:
        self._audit = audit
        self._node = node_city
        self._callee = callee_city
        #: Streams' records being appended (the loop keeps only weak references to tasks).
        self._recording: set[asyncio.Task[None]] = set()

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        started = time.monotonic()
        call = await continuation(client_call_details, request)
        method = _method(client_call_details)
        response: Any = None
        # A failed call is recorded below too, then raised to the code that made it.
        with contextlib.suppress(grpc.aio.AioRpcError):
            response = await call
        code = await call.code()
        trailers = await call.trailing_metadata()
        exchange = (
            exchange_digest(method, (encoded_message(request), encoded_message(response)))
            if code is grpc.StatusCode.OK
            else None
        )
        await self._audit.append(self._entry(method, request, code, trailers, started, exchange))
        return call

    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        """A stream is recorded once, when it ends, with the receipt its trailers carry; the
        caller does not digest the messages itself (its code reads them from the call), so
        the record's ``exchange_sha256`` is the callee's, from the receipt."""
        started = time.monotonic()
        call = await continuation(client_call_details, request)
        method = _method(client_call_details)

        def ended(done: Any) -> None:
            async def record() -> None:
                code = await done.code()
                trailers = await done.trailing_metadata()
                try:
                    await self._audit.append(
                        self._entry(method, request, code, trailers, started, None)
                    )
                except AuditUnavailable as exc:
                    # Nobody waits for a stream's record: say it is missing, where people look.
                    log.error("outbound.stream_unrecorded", method=method, error=str(exc))

            task = asyncio.get_running_loop().create_task(record())
            self._recording.add(task)
            task.add_done_callback(self._recording.discard)

        call.add_done_callback(ended)
        return call

    def _entry(
        self,
        method: str,
        request: Any,
        code: grpc.StatusCode,
        trailers: Any,
        started: float,
        exchange: str | None,
    ) -> AuditEntry:
        trailers = tuple(trailers or ())
        raw = _metadata_value(trailers, RECEIPT_TRAILER)
        receipt = Receipt.parse(raw) if raw is not None else None
        subject = _field(request, "subject_key")
        if not isinstance(subject, str) or not subject or subject_key_problem(subject):
            subject = None  # a malformed key (perhaps a raw ID number) is never recorded
        return AuditEntry(
            caller_city=self._node,
            callee_city=self._callee,
            method=method,
            purpose=_purpose(request, (), method),
            status_code=code.name,
            latency_ms=int((time.monotonic() - started) * 1000),
            at=datetime.now(UTC),
            subject_key=subject,
            direction="OUTBOUND",
            denial_code=_metadata_value(trailers, DENIAL_TRAILER),
            caller_role="node",
            exchange_sha256=exchange
            if exchange is not None
            else (receipt.exchange_sha256 if receipt is not None else None),
            receipt=receipt,
        )


def _method(details: grpc.aio.ClientCallDetails) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)
