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

:class:`OutboundChains` gives the same evidence to the programs that call nodes with a city's
certificates but are no node: the operator CLI (``deploy/ops.py``, chain ``operator``) and the
demo's scenario client (``deploy/scenario.py``, chain ``scenario``). Example::

    chains = OutboundChains(region, chain="operator", cert_dir=certs, lock_dir=run / "audit-locks",
                            settings_of=settings_of, cities=["suzhou"])
    async with chains:
        stub = CreditCheckServiceStub(chains.channel("suzhou", "suzhou", "lists"))
        answer = await stub.CheckSubject(request, timeout=10)   # recorded, with its receipt
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
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
from services.common.audit.signing import load_audit_signer
from services.common.audit.writer import ChainLock, QueuedAuditLog, SharedChainWriter
from services.common.avro import AvroSerde
from services.common.kafka import make_producer
from services.common.logging import get_logger
from services.common.peer.names import DENIAL_TRAILER
from services.common.peer.purpose import _field, _metadata_value, _purpose
from services.common.peer.tls import TlsFiles, secure_channel
from services.common.policy import subject_key_problem
from services.common.region import Region
from services.common.roles import NODE, Role
from services.common.settings import Settings
from services.common.topic_names import AUDIT_TOPIC

log = get_logger(component="outbound")


# grpc.aio ships no type stubs: its interceptor bases are Any to mypy.
class OutboundEvidence(
    grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.aio.UnaryStreamClientInterceptor,  # type: ignore[misc]
):
    """Records each call made on a channel to ``callee_city`` as an OUTBOUND audit record.

    Give the channel :meth:`interceptors`, not the evidence alone: given alone, grpc.aio
    uses it for unary calls only."""

    def __init__(
        self,
        audit: QueuedAuditLog,
        *,
        node_city: str,
        callee_city: str,
        caller_role: str = NODE,
    ) -> None:
        self._audit = audit
        self._node = node_city
        self._callee = callee_city
        #: Who calls, as the callee's record names it (``Role.audit_role``): the node, or a
        #: department or regulator of the city (the operator CLI, the demo's client).
        self._role = caller_role
        #: Streams' records being appended (the loop keeps only weak references to tasks).
        self._recording: set[asyncio.Task[None]] = set()
        #: Streams started whose record is not yet appended (:meth:`drain` waits for them).
        self._unrecorded: set[asyncio.Future[None]] = set()

    def interceptors(self) -> tuple[Any, ...]:
        """What to give the channel so that its streams are recorded too: grpc.aio files
        an interceptor under the first kind it is an instance of (``grpc.aio.Channel``:
        unary-unary first), so this one alone would never see a unary-stream call."""
        return (self, _StreamEvidence(self))

    async def drain(self, within_s: float) -> int:
        """Wait until every stream started on this channel has ended and its record is
        appended (or failed, which is logged); call it once the channel is closed, which
        ends its streams. Returns how many streams were still unrecorded after
        ``within_s`` seconds (each logged), 0 when none."""
        pending = set(self._unrecorded)
        if not pending:
            return 0
        _, late = await asyncio.wait(pending, timeout=within_s)
        for _ in late:
            log.error("outbound.stream_unrecorded", error=f"not ended within {within_s} s")
        return len(late)

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
        recorded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._unrecorded.add(recorded)

        def ended(done: Any) -> None:
            async def record() -> None:
                try:
                    code = await done.code()
                    trailers = await done.trailing_metadata()
                    await self._audit.append(
                        self._entry(method, request, code, trailers, started, None)
                    )
                except AuditUnavailable as exc:
                    # Nobody waits for a stream's record: say it is missing, where people look.
                    log.error("outbound.stream_unrecorded", method=method, error=str(exc))
                finally:
                    self._unrecorded.discard(recorded)
                    if not recorded.done():
                        recorded.set_result(None)

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
            caller_role=self._role,
            exchange_sha256=exchange
            if exchange is not None
            else (receipt.exchange_sha256 if receipt is not None else None),
            receipt=receipt,
        )


class _StreamEvidence(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """The unary-stream side of an :class:`OutboundEvidence`, as an interceptor of that kind
    alone (:meth:`OutboundEvidence.interceptors`)."""

    def __init__(self, evidence: OutboundEvidence) -> None:
        self._evidence = evidence

    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await self._evidence.intercept_unary_stream(
            continuation, client_call_details, request
        )


def _method(details: grpc.aio.ClientCallDetails) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)


#: How long :meth:`OutboundChains.close` waits for the streams of its closed channels to end
#: and be recorded.
DRAIN_TIMEOUT_S = 10.0


class OutboundChains:
    """The OUTBOUND chain ``chain`` of each calling city, for a program that calls nodes with
    that city's certificates (its node's, a department's, a regulator's) but is no node.

    For each city of ``cities``: a producer of its own Kafka (``settings_of(city)``), a
    :class:`SharedChainWriter` of ``chain`` on the city's audit topic signed with the city's
    audit key (``<cert_dir>/<city>.audit.key``), and the chain's lock file in ``lock_dir``.
    The chain is the program's own, so it never meets a node's chains (each node writes its
    own, one writer each); two runs of the program at once take turns per batch on its lock
    (``SharedChainWriter``). :meth:`channel` opens an mTLS channel whose every call is an
    OUTBOUND record of the calling city's chain, with the callee's receipt, before the answer
    reaches the program (:class:`OutboundEvidence`). :meth:`close` closes the channels, waits
    for their streams' records and for every record on its way, then stops the producers:
    nothing the program was answered is left unrecorded.
    """

    def __init__(
        self,
        region: Region,
        *,
        chain: str,
        cert_dir: Path,
        lock_dir: Path,
        settings_of: Callable[[str], Settings],
        cities: Iterable[str],
        serde: AvroSerde | None = None,
    ) -> None:
        self.region = region
        self.chain = chain
        self.cert_dir = cert_dir
        self.lock_dir = lock_dir
        self._settings_of = settings_of
        self._cities = list(dict.fromkeys(cities))
        self._serde = serde or AvroSerde()
        self.writers: dict[str, SharedChainWriter] = {}
        self._producers: list[Any] = []
        self._channels: list[grpc.aio.Channel] = []
        self._evidence: list[OutboundEvidence] = []

    async def start(self) -> None:
        """Start each city's producer and chain (its tail read from the topic). Raises
        :class:`AuditUnavailable` (or the producer's error) when a chain cannot be started:
        a program that cannot record its calls makes none."""
        for city in self._cities:
            settings = self._settings_of(city)
            code = self.region.city(city).admin_code
            producer = make_producer(settings, client_id=self.chain)
            self._producers.append(producer)
            await producer.start()
            topic = settings.topic(AUDIT_TOPIC)
            writer = SharedChainWriter(
                settings,
                self._serde,
                producer,
                lock=ChainLock(self.lock_dir / f"{topic}.{self.chain}.lock"),
                node_city=code,
                chain=self.chain,
                service=self.chain,
                signer=load_audit_signer(self.cert_dir, city, code),
            )
            await writer.start()
            self.writers[city] = writer

    def channel(self, caller: str | Role, city: str, service: str) -> grpc.aio.Channel:
        """An mTLS channel from ``caller`` (a city's node by its key, or a role, by its
        certificate: development ones are issued on first use) to ``city``'s ``service``;
        each call on it is recorded on the calling city's chain."""
        role = caller if isinstance(caller, Role) else Role.node(caller)
        writer = self.writers.get(role.city)
        if writer is None:
            raise ValueError(
                f"no {self.chain!r} chain started for {role.city}: its calls would go unrecorded"
            )
        tls = (
            TlsFiles.for_city(role.city, self.cert_dir)
            if role.kind == NODE
            else TlsFiles.for_role(role, self.cert_dir)
        )
        evidence = OutboundEvidence(
            writer,
            node_city=self.region.city(role.city).admin_code,
            callee_city=self.region.city(city).admin_code,
            caller_role=role.audit_role,
        )
        self._evidence.append(evidence)
        channel = secure_channel(
            self.region.city(city).endpoint(service),
            tls,
            expect_city=city,
            service=service,
            interceptors=evidence.interceptors(),
        )
        self._channels.append(channel)
        return channel

    async def close(self) -> None:
        """Close every channel (ending its streams), wait for the streams' records, then for
        every record still on its way, then stop the producers."""
        for channel in self._channels:
            await channel.close()
        self._channels.clear()
        for evidence in self._evidence:
            await evidence.drain(DRAIN_TIMEOUT_S)
        self._evidence.clear()
        for writer in self.writers.values():
            # A failed chain has failed its calls already; it must not keep the producers.
            with contextlib.suppress(Exception):
                await writer.flush()
        for producer in self._producers:
            await producer.stop()
        self._producers.clear()

    async def __aenter__(self) -> OutboundChains:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
