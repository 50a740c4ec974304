"""The hash-chained audit log of peer calls on ``audit.peer-calls.v1``, and its verifier.

Every peer call a node serves is one ``PeerCallAudit`` record (schemas/avro/PeerCallAudit).
Records form a chain: ``seq`` increases by exactly one, ``prev_hash`` is the previous
record's ``hash``, and ``hash`` is the lowercase hex SHA-256 of the ASCII ``prev_hash``
followed by the record's Avro single-object encoding with ``hash`` set to ``""`` (the
schema's own definition). Changing a record breaks its hash, or — if the forger also fixed
that hash — the link from the next record; removing a record leaves a gap in ``seq``;
reordering puts a ``seq`` out of place. :func:`verify_chain` names each such position.

**One writer per chain.** The topic has one partition, so the broker keeps one total order,
but a chain can only be extended by one writer at a time. A node runs several peer-facing
services; each writes its own chain, named in the Kafka key as ``<chain>:<seq>`` (the bare
decimal ``<seq>`` when the node has a single writer and passes ``chain=None``). The verifier
checks every chain of the topic independently. A writer resumes its chain after a restart
from the last record of that chain on the topic.

    python -m services.common.audit verify --bootstrap 127.0.0.1:19092 \\
        --topic suzhou.audit.peer-calls.v1
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from services.common.avro import AvroSerde, SerdeError
from services.common.cloudevents import HeaderTemplate, source_for
from services.common.kafka import make_consumer
from services.common.settings import Settings
from services.common.topic_names import AUDIT_TOPIC as AUDIT_TOPIC

SCHEMA: Final = "creditlink.v1.PeerCallAudit"
EVENT_TYPE: Final = "cn.creditlink.audit.peer-call.v1"
GENESIS_HASH: Final = "0" * 64
_TAIL_WINDOW = 500


class AuditUnavailable(RuntimeError):
    """The audit chain cannot be extended; peer calls must be refused until it can."""


def chain_hash(serde: AvroSerde, record: Mapping[str, Any], version: int | None = None) -> str:
    """The ``hash`` a record must carry: SHA-256(prev_hash ASCII + encoding with hash "")."""
    body = serde.encode(SCHEMA, {**record, "hash": ""}, version)
    return hashlib.sha256(str(record["prev_hash"]).encode("ascii") + body).hexdigest()


def format_key(chain: str | None, seq: int) -> str:
    return f"{seq}" if chain is None else f"{chain}:{seq}"


def parse_key(key: str) -> tuple[str | None, int | None]:
    chain, sep, seq = key.rpartition(":")
    if not seq.isdigit():
        return (chain if sep else None), None
    return (chain if sep else None), int(seq)


@dataclass(slots=True)  # not frozen: built on every peer call, and frozen init is slower
class AuditEntry:
    """What the peer-call guard knows about one finished call (the chain fields are added here)."""

    caller_city: str
    callee_city: str
    method: str
    purpose: str
    status_code: str
    latency_ms: int
    at: datetime
    subject_key: str | None = None
    consent_reference: str | None = None
    traceparent: str | None = None
    peer_certificate_sha256: str | None = None
    direction: str = "INBOUND"


class QueuedAuditLog:
    """Entries queued per call and handed on one batch per ``linger_ms``, in queue order:
    the queue of :class:`AuditChainWriter`. A subclass says
    how a batch is handed on (:meth:`_hand_on`) and sets ``_started`` once it may be."""

    _name = "audit log"

    def __init__(self, *, durable: bool, linger_ms: int) -> None:
        self._durable = durable
        self._linger = linger_ms / 1000
        self._failure: BaseException | None = None
        self._started = False
        self._queued: list[AuditEntry | Callable[[], AuditEntry]] = []
        self._queued_delivered: asyncio.Future[None] | None = None
        self._sender: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        return self._started and self._failure is None

    @property
    def durable(self) -> bool:
        return self._durable

    async def append(self, entry: AuditEntry | Callable[[], AuditEntry]) -> None:
        """Queue ``entry`` for the chain; with ``durable``, wait until it is delivered.

        Raises :class:`AuditUnavailable` when the chain cannot be extended or the record
        cannot be delivered.
        """
        delivered = self.append_nowait(entry)
        if self._durable:
            try:
                await delivered
            except Exception as exc:
                raise AuditUnavailable(f"audit record not delivered: {exc!r}") from exc

    def append_nowait(self, entry: AuditEntry | Callable[[], AuditEntry]) -> asyncio.Future[None]:
        """Queue ``entry`` for the chain; the future settles once its record is delivered.

        ``entry`` may be a function that makes the entry, called when its batch is handed
        on: what only the audit needs is then worked out in the batch, not in the call.
        Raises :class:`AuditUnavailable` when the chain cannot be extended.
        """
        if not self._started:
            raise AuditUnavailable(f"{self._name} not started")
        if self._failure is not None:
            raise AuditUnavailable(f"{self._name} failed: {self._failure!r}")
        self._queued.append(entry)
        if self._queued_delivered is None:
            self._queued_delivered = asyncio.get_running_loop().create_future()
            # Nobody need look at a non-durable delivery: failures also land in _failure.
            self._queued_delivered.add_done_callback(_consume_exception)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send_queued())
        return self._queued_delivered

    async def _send_queued(self) -> None:
        """Hand on what is queued, oldest first, until nothing is (one sender at a time, so
        the chain follows the order of the queue).

        Each round first waits ``linger_ms``, so that under load a batch carries the records
        of many calls: each produce request costs the producing process a fixed ~0.3 ms of
        CPU.
        """
        while self._queued:
            if self._linger:
                await asyncio.sleep(self._linger)
            entries, delivered = self._queued, self._queued_delivered
            self._queued, self._queued_delivered = [], None
            assert delivered is not None
            await self._hand_on(entries, delivered)

    async def _hand_on(
        self,
        entries: list[AuditEntry | Callable[[], AuditEntry]],
        delivered: asyncio.Future[None],
    ) -> None:
        """Deliver one batch; settle ``delivered`` when it is (or failed: set ``_failure``)."""
        raise NotImplementedError

    async def _sent(self) -> None:
        """Wait until everything queued so far has been handed on."""
        while self._sender is not None and not self._sender.done():
            await asyncio.shield(self._sender)

    async def flush(self) -> None:
        """Wait until every entry appended so far is delivered (or has failed)."""
        raise NotImplementedError


class AuditChainWriter(QueuedAuditLog):
    """Appends :class:`AuditEntry` values to one chain.

    :meth:`append_nowait` only queues the entry, in call order. One sender task takes what is
    queued every ``linger_ms``, links each record in that order (its ``seq``, ``prev_hash``
    and ``hash``), encodes it and sends them all as one batch of the audit partition. Doing
    the audit per call, between two calls' gRPC work, cost a peer call several times what
    the same work costs done for fifty records in a row (docs/peer-calls.md).

    ``durable=True`` makes :meth:`append` wait for the broker's acknowledgement of the
    record. The default returns once the entry is queued in this process, so the audit costs
    a peer call microseconds; a record that cannot be linked or delivered marks the writer
    unavailable, and the guard in ``services/common/peer/server.py`` then refuses calls rather
    than serve them unaudited.
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
        durable: bool = False,
        linger_ms: int = 20,
    ) -> None:
        super().__init__(durable=durable, linger_ms=linger_ms)
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
    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last record linked or recovered (:meth:`flush` links all)."""
        return self._seq, self._hash

    async def start(self) -> None:
        """Recover the chain's tail from the topic, so a restart continues the same chain."""
        tail = await read_chain_tail(self._settings, self._topic, self._chain)
        if tail is not None:
            self._seq, self._hash = int(tail["seq"]), str(tail["hash"])
        self._started = True

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
            "status_code": entry.status_code,
            "latency_ms": entry.latency_ms,
            "trace_id": entry.traceparent.split("-")[1] if entry.traceparent else None,
            "peer_certificate_sha256": entry.peer_certificate_sha256,
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
        delivered: asyncio.Future[None],
    ) -> None:
        """Link and send one batch of the audit partition."""
        try:
            deliveries = await self._send_batches([self._link(e) for e in entries])
        except Exception as exc:
            self._failure = exc
            delivered.set_exception(exc)
            return
        asyncio.gather(*deliveries).add_done_callback(
            functools.partial(self._on_delivery, delivered)
        )

    async def _send_batches(
        self, records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]
    ) -> list[asyncio.Future[Any]]:
        deliveries: list[asyncio.Future[Any]] = []
        batch = self._producer.create_batch()
        for key, value, headers in records:
            if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                deliveries.append(await self._producer.send_batch(batch, self._topic, partition=0))
                batch = self._producer.create_batch()
                batch.append(key=key, value=value, timestamp=None, headers=headers)
        deliveries.append(await self._producer.send_batch(batch, self._topic, partition=0))
        return deliveries

    def _on_delivery(self, delivered: asyncio.Future[None], outcome: asyncio.Future[Any]) -> None:
        if outcome.cancelled():
            self._failure = asyncio.CancelledError("audit delivery cancelled")
            delivered.cancel()
        elif (error := outcome.exception()) is not None:
            self._failure = error
            delivered.set_exception(error)
        else:
            delivered.set_result(None)

    async def flush(self) -> None:
        """Wait until every entry appended so far is linked and with the broker."""
        await self._sent()
        await self._producer.flush()


def _consume_exception(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


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


# --- reading ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditMessage:
    """One message of the audit topic, undecoded."""

    offset: int
    key: str
    value: bytes


async def _end_offsets(consumer: AIOKafkaConsumer, partition: TopicPartition) -> tuple[int, int]:
    begin = (await consumer.beginning_offsets([partition]))[partition]
    end = (await consumer.end_offsets([partition]))[partition]
    return begin, end


async def _read_range(
    consumer: AIOKafkaConsumer, partition: TopicPartition, start: int, end: int
) -> list[AuditMessage]:
    messages: list[AuditMessage] = []
    if start >= end:
        return messages
    consumer.seek(partition, start)
    while True:
        batch = await consumer.getmany(partition, timeout_ms=1000, max_records=1000)
        records = batch.get(partition, [])
        for message in records:
            if message.offset >= end:
                return messages
            messages.append(
                AuditMessage(
                    offset=message.offset,
                    key=message.key.decode("utf-8", "replace") if message.key else "",
                    value=bytes(message.value or b""),
                )
            )
        if messages and messages[-1].offset >= end - 1:
            return messages
        if not records and await consumer.position(partition) >= end:
            return messages


def _reader(settings: Settings) -> AIOKafkaConsumer:
    # Uncommitted reads: a writer recovering its tail must see its own records even if a
    # transaction marker is pending; the audit producer is not transactional anyway.
    return make_consumer(settings, group_id=None, isolation_level="read_uncommitted")


async def read_audit_topic(settings: Settings, topic: str) -> list[AuditMessage]:
    """Every message of the (physical) audit topic, oldest first, up to its current end."""
    consumer = _reader(settings)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        begin, end = await _end_offsets(consumer, partition)
        return await _read_range(consumer, partition, begin, end)
    finally:
        await consumer.stop()


async def read_chain_tail(
    settings: Settings, topic: str, chain: str | None
) -> dict[str, Any] | None:
    """The last record of ``chain`` on ``topic`` (decoded), or None for a new chain."""
    serde = AvroSerde()
    consumer = _reader(settings)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        begin, end = await _end_offsets(consumer, partition)
        stop = end
        while stop > begin:
            start = max(begin, stop - _TAIL_WINDOW)
            window = await _read_range(consumer, partition, start, stop)
            for message in reversed(window):
                if parse_key(message.key)[0] == chain:
                    return serde.decode(message.value, reader=serde.writer_of(message.value))
            stop = start
        return None
    finally:
        await consumer.stop()


# --- verification -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainProblem:
    """One place where the chain is not what its writer wrote."""

    kind: str  # changed | removed | reordered | duplicated | undecodable | bad-key
    chain: str | None
    offset: int
    seq: int | None
    detail: str

    def __str__(self) -> str:
        chain = "" if self.chain is None else f"chain {self.chain!r} "
        seq = "" if self.seq is None else f"seq {self.seq} "
        return f"{self.kind.upper()}: {chain}{seq}at offset {self.offset}: {self.detail}"


@dataclass(slots=True)
class ChainSummary:
    chain: str | None
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None


@dataclass(slots=True)
class VerifyReport:
    problems: list[ChainProblem] = field(default_factory=list)
    chains: dict[str | None, ChainSummary] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(slots=True)
class _Decoded:
    offset: int
    seq: int
    record: dict[str, Any]
    hash_ok: bool


def verify_chain(messages: Iterable[AuditMessage], serde: AvroSerde | None = None) -> VerifyReport:
    """Check every chain in ``messages`` (in topic order); name each broken position."""
    serde = serde or AvroSerde()
    report = VerifyReport()
    by_chain: dict[str | None, list[_Decoded]] = {}
    for message in messages:
        chain, key_seq = parse_key(message.key)
        try:
            writer = serde.writer_of(message.value)
            record = serde.decode(message.value, reader=writer)
            expected_hash = chain_hash(serde, record, writer.version)
        except (SerdeError, KeyError, TypeError, ValueError) as exc:
            report.problems.append(
                ChainProblem("undecodable", chain, message.offset, key_seq, f"{exc}")
            )
            continue
        seq = int(record["seq"])
        if key_seq != seq:
            report.problems.append(
                ChainProblem(
                    "bad-key",
                    chain,
                    message.offset,
                    seq,
                    f"message key {message.key!r} does not carry the record's seq {seq}",
                )
            )
        hash_ok = expected_hash == record["hash"]
        if not hash_ok:
            report.problems.append(
                ChainProblem(
                    "changed",
                    chain,
                    message.offset,
                    seq,
                    "record content does not match its hash",
                )
            )
        by_chain.setdefault(chain, []).append(_Decoded(message.offset, seq, record, hash_ok))
    for chain, entries in by_chain.items():
        report.problems.extend(_check_links(chain, entries))
        summary = ChainSummary(chain=chain, records=len(entries))
        seqs = [e.seq for e in entries]
        summary.first_seq, summary.last_seq = min(seqs), max(seqs)
        report.chains[chain] = summary
    report.problems.sort(key=lambda p: (p.offset, p.kind))
    return report


def _check_links(chain: str | None, entries: Sequence[_Decoded]) -> list[ChainProblem]:
    problems: list[ChainProblem] = []
    present = {e.seq for e in entries}
    seen: dict[int, _Decoded] = {}
    previous: _Decoded | None = None
    expected = 1
    for entry in entries:
        if entry.seq in seen:
            problems.append(
                ChainProblem(
                    "duplicated",
                    chain,
                    entry.offset,
                    entry.seq,
                    f"seq {entry.seq} already appeared at offset {seen[entry.seq].offset}",
                )
            )
            continue
        seen[entry.seq] = entry
        if entry.seq < expected:
            assert previous is not None  # expected > 1 only after a record
            problems.append(
                ChainProblem(
                    "reordered",
                    chain,
                    entry.offset,
                    entry.seq,
                    f"seq {entry.seq} comes after seq {previous.seq} (offset {previous.offset})",
                )
            )
            continue
        if entry.seq > expected:
            gone = [s for s in range(expected, entry.seq) if s not in present]
            if gone:
                span = f"{gone[0]}" if len(gone) == 1 else f"{gone[0]}..{gone[-1]}"
                after = "the start" if previous is None else f"offset {previous.offset}"
                problems.append(
                    ChainProblem(
                        "removed",
                        chain,
                        entry.offset,
                        entry.seq,
                        f"seq {span} missing between {after} and this record",
                    )
                )
        elif previous is not None and entry.record["prev_hash"] != previous.record["hash"]:
            # The previous record was changed and its own hash recomputed by the forger.
            problems.append(
                ChainProblem(
                    "changed",
                    chain,
                    previous.offset,
                    previous.seq,
                    f"hash no longer matches the prev_hash of seq {entry.seq} "
                    f"(offset {entry.offset})",
                )
            )
        elif previous is None and entry.seq == 1 and entry.record["prev_hash"] != GENESIS_HASH:
            problems.append(
                ChainProblem("changed", chain, entry.offset, 1, "seq 1 must chain to 64 zeros")
            )
        previous = entry
        expected = entry.seq + 1
    return problems


async def verify_topic(settings: Settings, topic: str) -> VerifyReport:
    return verify_chain(await read_audit_topic(settings, topic))


def main(argv: list[str] | None = None) -> int:
    from services.common.settings import load_settings

    parser = argparse.ArgumentParser(prog="python -m services.common.audit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="check every chain on an audit topic")
    verify.add_argument("--bootstrap", required=True, help="Kafka bootstrap host:port")
    verify.add_argument(
        "--topic", required=True, help="physical topic, e.g. suzhou.audit.peer-calls.v1"
    )
    args = parser.parse_args(argv)
    settings = load_settings({"KAFKA_BOOTSTRAP": args.bootstrap})
    report = asyncio.run(verify_topic(settings, args.topic))
    for summary in report.chains.values():
        name = "(default)" if summary.chain is None else summary.chain
        print(
            f"chain {name}: {summary.records} records, seq {summary.first_seq}..{summary.last_seq}"
        )
    for problem in report.problems:
        print(problem)
    checked = datetime.now(UTC).isoformat(timespec="seconds")
    if report.ok:
        print(f"OK: {args.topic} verified at {checked}")
        return 0
    print(f"FAILED: {len(report.problems)} problem(s) on {args.topic} at {checked}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
