"""Appending to a chain: entries queued per call, then linked and sent one batch at a time,
each call waiting for its batch's acknowledgement (:class:`AuditChainWriter`)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, TypeAlias

from aiokafka import AIOKafkaProducer
from aiokafka.producer.message_accumulator import BatchBuilder

from services.common.audit.chain import (
    EVENT_TYPE,
    GENESIS_HASH,
    SCHEMA,
    AuditEntry,
    AuditUnavailable,
    format_key,
)
from services.common.audit.read import read_chain_tail
from services.common.audit.signing import AuditSigner
from services.common.avro import AvroSerde
from services.common.cloudevents import HeaderTemplate, source_for
from services.common.settings import Settings
from services.common.topic_names import AUDIT_TOPIC as AUDIT_TOPIC

#: How long a batch waits for more calls before it is sent. Every call of the batch waits
#: this plus the broker's acknowledgement before it is answered; shorter, the batches get
#: small and their produce requests cost CPU (``python -m bench lists``: 0-1 ms cost more
#: server CPU per call, 20 ms fewer calls/s than 5-10 ms; docs/peer-calls.md).
LINGER_MS = 5

#: Where a record went: its chain, ``seq`` and ``hash`` (what a receipt names).
Position: TypeAlias = tuple[str | None, int, str]


class QueuedAuditLog:
    """Entries queued per call and handed on one batch at a time, in queue order: the queue
    of :class:`AuditChainWriter`. :meth:`append` returns once the entry's batch is
    delivered (for the writer: acknowledged by the broker). A subclass says how a batch is
    delivered (:meth:`_hand_on`) and sets ``_started`` once it may be."""

    _name = "audit log"

    def __init__(self, *, linger_ms: int) -> None:
        self._linger = linger_ms / 1000
        self._failure: BaseException | None = None
        self._started = False
        self._queued: list[AuditEntry | Callable[[], AuditEntry]] = []
        self._queued_delivered: asyncio.Future[list[Position]] | None = None
        self._sender: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        return self._started and self._failure is None

    @property
    def signer(self) -> AuditSigner | None:
        """The key that signs receipts of the calls this log records, if any."""
        return None

    async def append(self, entry: AuditEntry | Callable[[], AuditEntry]) -> Position:
        """Queue ``entry`` for the chain, wait until its record is delivered, and say where
        it went.

        ``entry`` may be a function that makes the entry, called when its batch is handed
        on: what only the audit needs is then worked out in the batch, not in the call.
        Raises :class:`AuditUnavailable` when the chain cannot be extended or the record
        cannot be delivered.
        """
        if not self._started:
            raise AuditUnavailable(f"{self._name} not started")
        if self._failure is not None:
            raise AuditUnavailable(f"{self._name} failed: {self._failure!r}")
        index = len(self._queued)
        self._queued.append(entry)
        delivered = self._queued_delivered
        if delivered is None:
            delivered = self._queued_delivered = asyncio.get_running_loop().create_future()
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send_queued())
        try:
            # Shielded: every call of the batch waits on this one future, and a call cancelled
            # (its caller went away) must not cancel it under the others.
            positions = await asyncio.shield(delivered)
        except Exception as exc:
            raise AuditUnavailable(f"audit record not delivered: {exc!r}") from exc
        return positions[index]

    async def _send_queued(self) -> None:
        """Deliver what is queued, one batch at a time and oldest first, until nothing is
        (one sender, so the chain follows the order of the queue).

        The next batch is taken only once the broker has acknowledged this one: the calls
        that end meanwhile wait for the acknowledgement anyway, and so go together in the
        next batch, which grows with the load. Each round first waits ``linger_ms`` for
        more: each produce request costs the producing process a fixed ~0.3 ms of CPU.
        """
        while self._queued:
            if self._linger:
                await asyncio.sleep(self._linger)
            entries, delivered = self._queued, self._queued_delivered
            self._queued, self._queued_delivered = [], None
            assert delivered is not None
            if self._failure is not None:
                # Sent after a batch that was not delivered, these would follow a gap.
                delivered.set_exception(AuditUnavailable(f"{self._name} failed"))
                continue
            await self._hand_on(entries, delivered)

    async def _hand_on(
        self,
        entries: list[AuditEntry | Callable[[], AuditEntry]],
        delivered: asyncio.Future[list[Position]],
    ) -> None:
        """Deliver one batch; settle ``delivered`` with each entry's position when it is (or
        failed: set ``_failure``)."""
        raise NotImplementedError

    async def flush(self) -> None:
        """Wait until every entry appended so far is delivered (or has failed)."""
        while self._sender is not None and not self._sender.done():
            await asyncio.shield(self._sender)


class AuditChainWriter(QueuedAuditLog):
    """Appends :class:`AuditEntry` values to one chain.

    :meth:`append` queues the entry, in call order, and returns once the broker has
    acknowledged its record (the producer's ``acks``; ``services/common/kafka.py`` makes every
    producer ``acks=all``). One sender task takes what is queued, ``linger_ms`` after the
    previous batch was acknowledged, links each record in that order (its ``seq``,
    ``prev_hash`` and ``hash``), encodes it and sends them all as one batch of the audit
    partition: the calls of a batch share one produce request and one wait. Doing the audit
    per call, between two calls' gRPC work, cost a peer call several times what the same
    work costs done for fifty records in a row (docs/peer-calls.md).

    A record that cannot be linked or is not acknowledged fails the :meth:`append` of every
    call in its batch and marks the writer unavailable: later batches are not sent (they
    would follow a gap), and the guard in ``services/common/peer/guard.py`` refuses calls
    rather than serve them unaudited.
    """

    _name = "audit writer"

    def __init__(
        self,
        settings: Settings,
        serde: AvroSerde,
        producer: AIOKafkaProducer,
        *,
        node_city: str,
        chain: str | None = None,
        service: str = "peer-gateway",
        linger_ms: int = LINGER_MS,
        signer: AuditSigner | None = None,
    ) -> None:
        super().__init__(linger_ms=linger_ms)
        #: Signs the head of every batch sent (signing.py); None writes an unsigned chain,
        #: which a verifier with the city's keys reports.
        self._signer = signer
        self._settings = settings
        self._serde = serde
        self._producer = producer
        self._topic = settings.topic(AUDIT_TOPIC)
        self._node_city = node_city
        self._chain = chain
        self._headers = HeaderTemplate(
            event_type=EVENT_TYPE,
            source=source_for(node_city, service),
            data_schema=serde.data_schema_uri(SCHEMA),
        )
        _check_hash_is_last(serde)
        self._seq = 0
        self._hash = GENESIS_HASH

    @property
    def topic(self) -> str:
        return self._topic

    @property
    def signer(self) -> AuditSigner | None:
        """The key that signs this chain's heads, and the receipts of calls it records."""
        return self._signer

    @property
    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last record linked or recovered (:meth:`flush` links all)."""
        return self._seq, self._hash

    async def start(self) -> None:
        """Recover the chain's tail from the topic, so a restart continues the same chain."""
        await self._recover_tail()
        self._started = True

    async def _recover_tail(self) -> None:
        tail = await read_chain_tail(self._settings, self._topic, self._chain)
        if tail is not None:
            self._seq, self._hash = int(tail["seq"]), str(tail["hash"])
        else:
            self._seq, self._hash = 0, GENESIS_HASH

    def _link(
        self, queued: AuditEntry | Callable[[], AuditEntry]
    ) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
        """The next record of the chain, made from ``queued``: key, value and headers."""
        entry = queued if isinstance(queued, AuditEntry) else queued()
        record: dict[str, Any] = {
            "seq": self._seq + 1,
            "node_city": self._node_city,
            "direction": entry.direction,
            "caller_city": entry.caller_city,
            "callee_city": entry.callee_city,
            "method": entry.method,
            "subject_key": entry.subject_key,
            "purpose": entry.purpose,
            "consent_reference": entry.consent_reference,
            "subjects": [
                {"subject_key": key, "consent_reference": consent, "denial_code": denial}
                for key, consent, denial in entry.subjects
            ],
            "status_code": entry.status_code,
            "denial_code": entry.denial_code,
            "caller_role": entry.caller_role,
            "latency_ms": entry.latency_ms,
            "trace_id": entry.traceparent.split("-")[1] if entry.traceparent else None,
            "peer_certificate_sha256": entry.peer_certificate_sha256,
            "exchange_sha256": entry.exchange_sha256,
            "receipt": entry.receipt.as_record() if entry.receipt is not None else None,
            "at": entry.at,
            "prev_hash": self._hash,
            "hash": "",
        }
        digest, value = _hashed_encoding(self._serde, record)
        key = format_key(self._chain, record["seq"])
        headers = self._headers.headers(
            # The chain position is unique per source, and a record re-sent keeps it.
            event_id=key,
            time=entry.at,
            subject=key,
            # A call that came without trace context gets one named after its record (not
            # sampled: nothing else traced it), not a random one per record.
            traceparent=entry.traceparent or f"00-{digest[:32]}-{digest[32:48]}-00",
        )
        self._seq, self._hash = record["seq"], digest
        return key.encode(), value, headers

    async def _hand_on(
        self,
        entries: list[AuditEntry | Callable[[], AuditEntry]],
        delivered: asyncio.Future[list[Position]],
    ) -> None:
        """Link, send and wait for the acknowledgement of one batch of the audit partition."""
        positions: list[Position] = []
        try:
            records = []
            for queued in entries:
                records.append(self._link(queued))
                positions.append((self._chain, self._seq, self._hash))
            if self._signer is not None and records:
                # One signature per batch, over its last record: the chain hashes vouch for
                # the rest (a signature costs more than the rest of a record's audit).
                key, value, headers = records[-1]
                signature = self._signer.header(self._chain, self._seq, self._hash)
                records[-1] = (key, value, [*headers, signature])
            await asyncio.gather(*await self._send_batches(records))
        except Exception as exc:
            self._failure = exc
            delivered.set_exception(exc)
            return
        except asyncio.CancelledError:
            self._failure = asyncio.CancelledError("audit delivery cancelled")
            delivered.cancel()
            raise
        delivered.set_result(positions)

    async def _send_batches(
        self, records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]
    ) -> list[asyncio.Future[Any]]:
        deliveries: list[asyncio.Future[Any]] = []
        batch = self._producer.create_batch()
        for key, value, headers in records:
            if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                deliveries.append(await self._send(batch))
                batch = self._producer.create_batch()
                batch.append(key=key, value=value, timestamp=None, headers=headers)
        deliveries.append(await self._send(batch))
        return deliveries

    async def _send(self, batch: BatchBuilder) -> asyncio.Future[Any]:
        # Closed, a batch goes with the producer's next request instead of waiting out the
        # producer's own linger: this one has lingered in the writer already, and its calls
        # are waiting for the acknowledgement.
        batch.close()
        future: asyncio.Future[Any] = await self._producer.send_batch(
            batch, self._topic, partition=0
        )
        return future


#: How long a batch waits for another process's batch of the same chain before its calls
#: fail (:class:`ChainLock`): a holder holds the lock for one batch, which its producer's
#: request timeout (30 s, services/common/kafka.py) bounds.
LOCK_WAIT_S = 60.0
_LOCK_POLL_S = 0.01


class ChainLock:
    """An exclusive ``fcntl`` lock on a file, for writers of one chain in several processes of
    one host; the file names the writer whose view of the chain's tail is current.

    :meth:`held` polls (``LOCK_NB``) rather than blocking a thread, so a cancelled wait
    leaves no thread behind that would take the lock later and keep it. Closing the file
    descriptor releases the lock, also when the process dies.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.asynccontextmanager
    async def held(self, *, wait_s: float = LOCK_WAIT_S) -> AsyncIterator[HeldLock]:
        """Hold the lock. Raises :class:`AuditUnavailable` when another writer holds it for
        ``wait_s`` seconds."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = _read_token(fd) or "unknown"
                        raise AuditUnavailable(
                            f"{self.path}: another writer of the chain (last: {holder}) has "
                            f"held it for {wait_s:.0f} s"
                        ) from None
                    await asyncio.sleep(_LOCK_POLL_S)
            yield HeldLock(fd)
        finally:
            os.close(fd)


class HeldLock:
    """A :class:`ChainLock` while held: who had the chain's tail last, and the claim."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        #: The token of the writer that claimed the chain last ("" for none).
        self.previous = _read_token(fd)

    def claim(self, token: str) -> None:
        """Name ``token`` as the writer whose view of the tail is current: call it once that
        writer's tail is the topic's, before it sends."""
        if token != self.previous:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, token.encode("utf-8"), 0)
            self.previous = token


def _read_token(fd: int) -> str:
    return os.pread(fd, 256, 0).decode("utf-8", "replace").strip()


class SharedChainWriter(AuditChainWriter):
    """An :class:`AuditChainWriter` of a chain that more than one process may extend, one
    batch at a time: the tools that call nodes as a city (the operator CLI, the demo's client;
    ``services/common/peer/outbound.py``), of which an operator may run two at once.

    Each batch is linked and sent holding the chain's :class:`ChainLock`. If another process
    held it since this writer last did, the chain's tail is read again from the topic first,
    so the batch continues the chain where the other's acknowledged batch ended: the two
    writers' batches follow each other on one chain, never two records with one ``seq``. Only
    writers that take the same lock file are serialised, so every writer of the chain must
    (the lock is a file of the host: one host's tools per chain, docs/trust.md).
    """

    _name = "shared audit writer"

    def __init__(
        self,
        settings: Settings,
        serde: AvroSerde,
        producer: AIOKafkaProducer,
        *,
        lock: ChainLock,
        node_city: str,
        chain: str,
        service: str,
        signer: AuditSigner | None = None,
        linger_ms: int = LINGER_MS,
        lock_wait_s: float = LOCK_WAIT_S,
    ) -> None:
        super().__init__(
            settings,
            serde,
            producer,
            node_city=node_city,
            chain=chain,
            service=service,
            linger_ms=linger_ms,
            signer=signer,
        )
        self._lock = lock
        self._lock_wait = lock_wait_s
        #: Names this writer in the lock file: the pid says who, the uuid tells a writer
        #: from an earlier one of a reused pid.
        self._token = f"pid {os.getpid()} writer {uuid.uuid4().hex[:12]}"

    async def start(self) -> None:
        async with self._lock.held(wait_s=self._lock_wait) as held:
            await self._recover_tail()
            held.claim(self._token)
        self._started = True

    async def _hand_on(
        self,
        entries: list[AuditEntry | Callable[[], AuditEntry]],
        delivered: asyncio.Future[list[Position]],
    ) -> None:
        try:
            async with self._lock.held(wait_s=self._lock_wait) as held:
                if held.previous != self._token:
                    await self._recover_tail()
                    held.claim(self._token)
                await super()._hand_on(entries, delivered)
        except Exception as exc:
            # The lock not had or the tail not read: nothing was linked, so no gap follows
            # and the next batch may try again; these calls fail.
            if not delivered.done():
                delivered.set_exception(exc)


def _check_hash_is_last(serde: AvroSerde) -> None:
    """:func:`_hashed_encoding` relies on ``hash`` being the schema's last field, a string."""
    fields = serde.writer_schema(SCHEMA).schema["fields"]
    if fields[-1]["name"] != "hash" or fields[-1]["type"] != "string":
        raise RuntimeError(f"{SCHEMA}: 'hash' must be the last field, a string")


def _hashed_encoding(serde: AvroSerde, record: Mapping[str, Any]) -> tuple[str, bytes]:
    """The chain hash of ``record`` (whose ``hash`` is "") and its encoding carrying it.

    Encodes once: an Avro string is its zig-zag varint length then its bytes, so the
    encoding with ``hash`` = "" ends in the single byte 0x00, and the one with the 64-digit
    hash ends in 0x80 0x01 (64, zig-zagged) followed by the digits. A test checks the result
    against encoding the finished record.
    """
    body = serde.encode(SCHEMA, record)
    digest = hashlib.sha256(str(record["prev_hash"]).encode("ascii") + body).hexdigest()
    return digest, body[:-1] + b"\x80\x01" + digest.encode("ascii")
