"""``RecordIntakeService`` over gRPC: departments submit records, one result per record.

The servicer adapts calls to the pipeline and nothing else: requests become submissions,
outcomes become ``RecordResult`` messages. mTLS, the authorization policy (only the city's
own departments), the audit of every call, health, reflection and graceful shutdown come from
:mod:`services.common.peer`. A department's certificate submits only the records of its own
department code, or of those ``city-roles.yaml`` lets it act for: any other record is
rejected (``not-your-department``) and lands on the rejected topic like every rejection.

One writer, one producer, one transaction at a time: calls are served concurrently, but their
batches go through the pipeline one after another (a stream is cut into micro-batches so
many records share a transaction). Background tasks keep the ledger in step with other
writers (a bulk import running next to the server), publish the 双公示 figures of the
department-days touched since the last flush, and republish figures whose due date has just
passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import grpc
from google.protobuf.message import DecodeError

from creditlink.peer.v1 import record_intake_pb2, record_intake_pb2_grpc
from services.common.avro import AvroSerde
from services.common.clock import china_today
from services.common.logging import get_logger
from services.common.node import NodeBootstrap
from services.common.observability import Check
from services.common.peer import (
    PeerSecurity,
    ServiceBinding,
    TlsFiles,
    current_call,
)
from services.common.pseudonym import check_region_key, load_region_key
from services.common.region import Region
from services.common.roles import DEPARTMENT, CityRoles
from services.common.settings import Settings
from services.common.workdays import CalendarNotCovered
from services.intake.classify.decide import Accepted, Outcome
from services.intake.encode.events import SubmissionSource
from services.intake.node import IntakeNode, intake_node
from services.intake.pipeline import Submission, disclosure_day_of
from services.intake.prepare import Submitter
from services.intake.read import grpc_codec
from services.intake.read.files import mask_payload_bytes

SERVICE: Final = "intake"
SERVICE_NAME: Final = "creditlink.peer.v1.RecordIntakeService"
#: How long a stop on SIGTERM lets calls in progress finish.
STOP_GRACE_SECONDS: Final = 5.0
MAX_BATCH: Final = 1000
MAX_OUTSTANDING: Final = 10_000
STREAM_MICRO_BATCH: Final = 500
STREAM_LINGER_S: Final = 0.005
REFRESH_INTERVAL_S: Final = 2.0
QUALITY_INTERVAL_S: Final = 2.0
DUE_SWEEP_INTERVAL_S: Final = 3600.0


def record_result(index: int, outcome: Outcome) -> record_intake_pb2.RecordResult:
    if isinstance(outcome, Accepted):
        return record_intake_pb2.RecordResult(
            index=index,
            accepted=record_intake_pb2.RecordAccepted(
                record_id=outcome.record_id,
                version=outcome.version,
                duplicate=outcome.duplicate,
                subject_key=outcome.subject_key,
                warnings=[grpc_codec.field_violation(w) for w in outcome.warnings],
            ),
        )
    return record_intake_pb2.RecordResult(
        index=index,
        rejected=record_intake_pb2.RecordRejected(
            reasons=[grpc_codec.field_violation(r) for r in outcome.reasons]
        ),
    )


def _submission(record: record_intake_pb2.CreditRecord, source: SubmissionSource) -> Submission:
    def render() -> tuple[bytes, str]:
        return grpc_codec.rejection_payload(record), grpc_codec.PAYLOAD_ENCODING

    return Submission(
        content=grpc_codec.submission_from_proto(record), render_payload=render, source=source
    )


def _stream_submission(
    message: record_intake_pb2.SubmitRecordStreamRequest | Undecodable, source: SubmissionSource
) -> Submission:
    if isinstance(message, Undecodable):
        return Submission(
            content=None,
            render_payload=lambda: (mask_payload_bytes(message.data), "application/octet-stream"),
            source=source,
            problem=f"the stream message is not a SubmitRecordStreamRequest: {message.error}",
        )
    return _submission(message.record, source)


def _metadata(context: grpc.aio.ServicerContext, name: str) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == name and isinstance(value, str) and value:
            return value
    return None


class RecordIntakeServicer(record_intake_pb2_grpc.RecordIntakeServiceServicer):
    """Batch and stream submission; see the module docstring."""

    def __init__(self, node: IntakeNode, roles: CityRoles | None = None) -> None:
        self._node = node
        self._roles = roles or CityRoles()
        self._lock = asyncio.Lock()
        self._touched: set[tuple[str, date]] = set()
        self._log = get_logger(component="grpc")

    async def submit(
        self, submissions: Sequence[Submission], traceparent: str | None
    ) -> list[Outcome]:
        pipeline = self._node.pipeline
        verdicts = pipeline.validate(submissions, self._submitter())
        async with self._lock:
            outcomes = await pipeline.submit(
                submissions, verdicts=verdicts, traceparent=traceparent
            )
        for verdict in verdicts:
            day = disclosure_day_of(verdict)
            if day is not None:
                self._touched.add(day)
        return outcomes

    def _submitter(self) -> Submitter | None:
        """The department the calling certificate names. The policy admits departments only;
        any other caller a looser policy lets in may submit for no department. None outside a
        guarded call (unit tests of the servicer)."""
        try:
            identity = current_call().identity
        except RuntimeError:
            return None
        role = identity.role if identity is not None else None
        if role is None or role.kind != DEPARTMENT or role.department_code is None:
            return Submitter(role.principal if role else "unknown", frozenset())
        code = role.department_code
        return Submitter(code, self._roles.departments_of(role.city, code))

    async def SubmitRecords(
        self,
        request: record_intake_pb2.SubmitRecordsRequest | Undecodable,
        context: grpc.aio.ServicerContext,
    ) -> record_intake_pb2.SubmitRecordsResponse:
        if isinstance(request, Undecodable):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request is not a SubmitRecordsRequest: {request.error}",
            )
            return record_intake_pb2.SubmitRecordsResponse()  # not reached: abort raises
        count = len(request.records)
        if not 1 <= count <= MAX_BATCH:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"a batch holds 1 to {MAX_BATCH} records, this one {count}",
            )
        source = SubmissionSource(
            channel="GRPC",
            submitted_at=datetime.now(UTC),
            request_id=_metadata(context, "x-request-id") or str(uuid.uuid4()),
        )
        outcomes = await self.submit(
            [_submission(record, source) for record in request.records],
            _metadata(context, "traceparent"),
        )
        return record_intake_pb2.SubmitRecordsResponse(
            results=[record_result(i, o) for i, o in enumerate(outcomes)]
        )

    async def SubmitRecordStream(
        self,
        request_iterator: AsyncIterator[record_intake_pb2.SubmitRecordStreamRequest | Undecodable],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[record_intake_pb2.SubmitRecordStreamResponse]:
        request_id = _metadata(context, "x-request-id") or str(uuid.uuid4())
        traceparent = _metadata(context, "traceparent")
        inbox: asyncio.Queue[record_intake_pb2.SubmitRecordStreamRequest | Undecodable | None]
        inbox = asyncio.Queue(MAX_OUTSTANDING)

        async def receive() -> None:
            try:
                async for message in request_iterator:
                    await inbox.put(message)
            finally:
                await inbox.put(None)

        reader = asyncio.create_task(receive())
        index = 0
        try:
            finished = False
            while not finished:
                first = await inbox.get()
                if first is None:
                    break
                batch = [first]
                await asyncio.sleep(STREAM_LINGER_S)
                while len(batch) < STREAM_MICRO_BATCH and not inbox.empty():
                    message = inbox.get_nowait()
                    if message is None:
                        finished = True
                        break
                    batch.append(message)
                source = SubmissionSource(
                    channel="GRPC", submitted_at=datetime.now(UTC), request_id=request_id
                )
                outcomes = await self.submit(
                    [_stream_submission(m, source) for m in batch], traceparent
                )
                for message, outcome in zip(batch, outcomes, strict=True):
                    yield record_intake_pb2.SubmitRecordStreamResponse(
                        result=record_result(index, outcome),
                        client_reference=""
                        if isinstance(message, Undecodable)
                        else message.client_reference,
                    )
                    index += 1
            await reader
        finally:
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader

    # --- background work ------------------------------------------------------------------

    async def flush_quality(self) -> int:
        """Publish the figures of the department-days touched since the last flush."""
        if not self._touched:
            return 0
        days, self._touched = self._touched, set()
        async with self._lock:
            try:
                return await self._node.pipeline.publish_quality(days)
            except Exception:
                self._touched |= days
                raise

    async def refresh(self) -> int:
        """Take in what other writers of the node published."""
        async with self._lock:
            return await self._node.follower.catch_up()

    def recently_due(self, today: date) -> set[tuple[str, date]]:
        """Department-days whose due date is yesterday or later: not yet final, or just
        become final (``due_date_passed`` flips the day after the due date)."""
        calendar = self._node.pipeline.calendar
        days: set[tuple[str, date]] = set()
        for department, day in self._node.ledger.department_days():
            if day < today - timedelta(days=40):
                continue  # 7 working days never span more than about four weeks
            try:
                due = calendar.disclosure_deadline(day)
            except CalendarNotCovered:
                continue
            if due >= today - timedelta(days=1):
                days.add((department, day))
        return days

    async def run_background(self) -> None:
        """Refresh, flush and sweep until cancelled; failures are logged and retried."""
        next_sweep = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self.refresh()
                if loop.time() >= next_sweep:
                    self._touched |= self.recently_due(china_today())
                    next_sweep = loop.time() + DUE_SWEEP_INTERVAL_S
                await self.flush_quality()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._log.warning("background_failed", error=repr(exc))
            await asyncio.sleep(min(REFRESH_INTERVAL_S, QUALITY_INTERVAL_S))


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A request message the protobuf runtime could not parse: the reason, and the bytes."""

    error: str
    data: bytes


def _tolerant(message_type: Any) -> Callable[[bytes], Any]:
    """A request deserializer that hands undecodable bytes to the servicer instead of failing
    the call with UNKNOWN: a batch is refused with INVALID_ARGUMENT, a stream message gets a
    rejection of its own."""

    def deserialize(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except DecodeError as exc:
            return Undecodable(str(exc), data)

    return deserialize


def _add_to_server(servicer: RecordIntakeServicer, server: grpc.aio.Server) -> None:
    """Like the generated ``add_RecordIntakeServiceServicer_to_server``, with tolerant
    request deserializers."""
    handlers = {
        "SubmitRecords": grpc.unary_unary_rpc_method_handler(
            servicer.SubmitRecords,
            request_deserializer=_tolerant(record_intake_pb2.SubmitRecordsRequest),
            response_serializer=record_intake_pb2.SubmitRecordsResponse.SerializeToString,
        ),
        "SubmitRecordStream": grpc.stream_stream_rpc_method_handler(
            servicer.SubmitRecordStream,
            request_deserializer=_tolerant(record_intake_pb2.SubmitRecordStreamRequest),
            response_serializer=record_intake_pb2.SubmitRecordStreamResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


def binding(servicer: RecordIntakeServicer) -> ServiceBinding:
    return ServiceBinding(servicer, _add_to_server, SERVICE_NAME)


class ServingIntakeNode:
    """The city's intake writer serving ``RecordIntakeService``, as
    :func:`~services.common.node.run_until_signalled` runs it::

        tls, security = node_trust(settings, region, certs)
        node = ServingIntakeNode(settings, region, bind=bind, tls=tls, security=security)
        await run_until_signalled(node, grace=STOP_GRACE_SECONDS, ops=ops_server(city, SERVICE))

    The producer of the audit chain and the peer server are the common node bootstrap's
    (``services/common/node.py``, docs/design.md §3.4); the transactional writer, its ledger
    and the background work are the intake's own (:func:`~services.intake.node.intake_node`).
    """

    def __init__(
        self,
        settings: Settings,
        region: Region,
        *,
        bind: str,
        tls: TlsFiles,
        security: PeerSecurity,
        writer: str = "server",
    ) -> None:
        self.settings = settings
        self.bind = bind
        self.writer = writer
        # Trust first (docs/design.md §3.4): a missing or unknown region key stops the node
        # before anything is started.
        self.region_key = load_region_key()
        check_region_key(self.region_key, region.pseudonym_key_ids)
        self.kit = NodeBootstrap(
            settings,
            AvroSerde(),
            service=SERVICE,
            city_code=region.city(settings.city).admin_code,
            tls=tls,
            security=security,
            client_id=f"intake-audit-{settings.city}",
        )
        # Every call, and so every refusal (a certificate that is not one of the city's
        # departments), goes on the city's audit topic like the other services' calls.
        self.audit = self.kit.audit_chain(SERVICE)
        self.servicer: RecordIntakeServicer | None = None
        self._writer = contextlib.AsyncExitStack()
        self._background: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """The audit chain's tail, the writer caught up with its ledger, the server, then the
        background work. On failure everything started so far is stopped again."""
        try:
            await self._start()
        except BaseException:
            await self.stop(0)
            raise

    async def _start(self) -> None:
        await self.kit.start()
        node = await self._writer.enter_async_context(
            intake_node(self.settings, writer=self.writer, region_key=self.region_key)
        )
        self.servicer = RecordIntakeServicer(node, self.kit.security.city_roles)
        server = await self.kit.serve(self.bind, [binding(self.servicer)], audit=self.audit)
        get_logger(component="grpc").info("serving", bind=self.bind, port=server.port)
        self._background = asyncio.create_task(self.servicer.run_background())

    def health_checks(self) -> Mapping[str, Check]:
        """What ``/healthz`` reports: the audit chain is writable and the background work
        (ledger refresh, figures) runs."""
        return {
            "audit": lambda: self.audit.healthy,
            "background": lambda: self._background is not None and not self._background.done(),
        }

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        await self.kit.stop_serving(grace)
        if self._background is not None:
            self._background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._background
            self._background = None
        if self.servicer is not None:
            # The figures of the days touched since the last flush; a broker that is away
            # must not keep the writer and the producers from stopping.
            with contextlib.suppress(Exception):
                await self.servicer.flush_quality()
        await self.kit.close()
        await self._writer.aclose()
