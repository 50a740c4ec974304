"""Checkpoints held by peers: every node hands the signed heads of its audit chains to its
peers, and each peer keeps them on its ``audit.checkpoints.v1`` (docs/trust.md,
"Checkpoints held by peers").

A head signature (``signing.py``) shows that the city wrote its chain up to that record, but
not that the chain on the city's topic is still all of it: the city itself, or whoever can
write its topic and holds its key, could cut the tail, delete a chain, or rewrite one and sign
it again. What a peer holds it cannot change. So :func:`verify_chain` given the checkpoints
the peers hold (``checkpoints=``) names each position where the topic and a held head
disagree: ``truncated`` (the chain ends before a head a peer holds), ``chain-deleted`` (no
record of a chain a peer holds a head of), ``rewritten`` (the record at a held head has
another hash).

- :class:`CheckpointHander` (run by the lists node) follows the node's own audit topic and,
  every interval, hands each peer the newest signed head of every chain it has not yet handed
  that peer (``AuditEvidenceService.HandCheckpoints``).
- :class:`AuditEvidenceServicer` receives a peer's heads, checks every signature under the
  peer's published audit keys and keeps them; a head not signed by the caller's city is
  refused (``bad-checkpoint``), so a peer cannot plant evidence about a third city.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import grpc
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.structs import TopicPartition

from creditlink.peer.v1 import audit_evidence_pb2, audit_evidence_pb2_grpc
from services.common.audit.chain import parse_key
from services.common.audit.heads import Checkpoint, signed_heads
from services.common.audit.read import (
    AuditMessage,
    audit_message,
    audit_reader,
    end_offsets,
    read_audit_topic,
    read_range,
)
from services.common.audit.signing import AuditKeyring
from services.common.avro import AvroSerde, SerdeError
from services.common.kafka import EventPublisher
from services.common.peer.call import current_call, deny
from services.common.settings import Settings
from services.common.topic_names import AUDIT_TOPIC, CHECKPOINTS_TOPIC

SCHEMA: Final = "creditlink.v1.AuditCheckpoint"
EVENT_TYPE: Final = "cn.creditlink.audit.checkpoint.v1"
#: At most this many checkpoints per call (the contract's bound).
MAX_PER_CALL: Final = 1000
#: A hander starting again reads back this many records of its own topic for the chains'
#: heads; a chain quiet for longer had its last head handed before the restart.
_RESUME_WINDOW: Final = 5000
PEER_CALL_TIMEOUT_SECONDS: Final = 10.0
HAND_CHECKPOINTS: Final = "/creditlink.peer.v1.AuditEvidenceService/HandCheckpoints"
#: How many recent records per chain the hander keeps to tell an idle chain (one that grew
#: only by peers handing their checkpoints) from one that served calls.
_QUIET_WINDOW: Final = 64
#: The hander's reader asks the broker for at least this much of the topic per fetch, or
#: whatever came within a quarter of the interval (at most 500 ms): the heads are handed once
#: an interval, so reading the busy topic record by record as it is written would only cost
#: the serving node's CPU (a fetch and a signature check per batch written).
_CHUNK_BYTES: Final = 64 * 1024
_CHUNK_WAIT_MS: Final = 500

log = structlog.get_logger()


async def read_checkpoints(settings: Settings, topic: str) -> list[Checkpoint]:
    """Every checkpoint kept on the (physical) ``topic``, oldest first."""
    serde = AvroSerde()
    kept: list[Checkpoint] = []
    for message in await read_audit_topic(settings, topic):
        record = serde.decode(message.value, reader=serde.writer_of(message.value))
        kept.append(
            Checkpoint(
                city=record["city"],
                chain=record["chain"],
                seq=int(record["seq"]),
                hash=record["hash"],
                signature=record["signature"],
                holder=record["holder_city"],
                received_at=record["received_at"],
            )
        )
    return kept


class AuditEvidenceServicer(audit_evidence_pb2_grpc.AuditEvidenceServiceServicer):
    """Keeps the signed heads peers hand over, once each signature verifies."""

    def __init__(
        self,
        *,
        holder: str,
        keyring: AuditKeyring,
        producer: AIOKafkaProducer,
        publisher: EventPublisher,
        settings: Settings,
    ) -> None:
        self._holder = holder
        self._producer = producer
        self._keyring = keyring
        self._publisher = publisher
        self._topic = settings.topic(CHECKPOINTS_TOPIC)

    async def HandCheckpoints(
        self, request: audit_evidence_pb2.HandCheckpointsRequest, context: grpc.aio.ServicerContext
    ) -> audit_evidence_pb2.HandCheckpointsResponse:
        identity = current_call().identity
        assert identity is not None  # the guard identified the caller before this runs
        if len(request.checkpoints) > MAX_PER_CALL:
            await deny(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "too-many-checkpoints",
                f"{len(request.checkpoints)} checkpoints; at most {MAX_PER_CALL} per call",
            )
        received = datetime.now(UTC)
        checkpoints = [
            Checkpoint(
                city=identity.city_code,
                chain=given.chain or None,
                seq=given.seq,
                hash=given.hash,
                signature=given.signature,
                holder=self._holder,
                received_at=received,
            )
            for given in request.checkpoints
        ]
        for checkpoint in checkpoints:
            if (problem := checkpoint.problem(self._keyring)) is not None:
                # Nothing of the call is kept: a peer hands over only heads it signed.
                await deny(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "bad-checkpoint",
                    f"checkpoint {checkpoint.key}: {problem}",
                )
        sent = []
        for checkpoint in checkpoints:
            value, headers = self._publisher.encode(
                SCHEMA, _record(checkpoint), key=checkpoint.key, event_type=EVENT_TYPE
            )
            sent.append(
                await self._producer.send(
                    self._topic, value=value, key=checkpoint.key.encode(), headers=headers
                )
            )
        await asyncio.gather(*sent)  # kept means with the broker before the answer leaves
        return audit_evidence_pb2.HandCheckpointsResponse(kept=len(checkpoints))


def _record(checkpoint: Checkpoint) -> dict[str, Any]:
    return {
        "holder_city": checkpoint.holder,
        "city": checkpoint.city,
        "chain": checkpoint.chain,
        "seq": checkpoint.seq,
        "hash": checkpoint.hash,
        "signature": checkpoint.signature,
        "received_at": checkpoint.received_at,
    }


@dataclass(slots=True)
class _Peer:
    key: str
    channel: Callable[[], grpc.aio.Channel]
    #: chain -> the seq of the newest head this peer confirmed keeping
    handed: dict[str | None, int] = field(default_factory=dict)
    open_channel: grpc.aio.Channel | None = None


class CheckpointHander:
    """Follows the node's own audit topic; every ``interval`` seconds hands each peer the
    newest signed head of each chain that peer has not confirmed yet.

    Only heads whose signature verifies under the node's own key (``own_keys``) are handed:
    a record someone else appended to the topic carries no valid signature, and the peer
    would refuse the whole call for it. A peer that cannot be reached gets the newest heads
    on a later round; heads in between need not reach it, since each head vouches for the
    chain before it. A head after which the chain only recorded peers handing their own
    checkpoints, or this node handing its own, is not handed (:meth:`_only_exchanges`): an
    idle region exchanges nothing.
    """

    def __init__(
        self,
        settings: Settings,
        own_keys: AuditKeyring,
        peers: Mapping[str, Callable[[], grpc.aio.Channel]],
        *,
        interval: float,
    ) -> None:
        self._settings = settings
        self._keys = own_keys
        self._serde = AvroSerde()
        self._peers = [_Peer(key, make) for key, make in peers.items()]
        self._interval = interval
        self._heads: dict[str | None, Checkpoint] = {}
        self._recent: dict[str | None, collections.deque[AuditMessage]] = {}

    async def run(self, stopping: asyncio.Event) -> None:
        consumer = audit_reader(
            self._settings,
            fetch_min_bytes=_CHUNK_BYTES,
            fetch_max_wait_ms=max(1, min(_CHUNK_WAIT_MS, int(self._interval * 250))),
        )
        await consumer.start()
        try:
            partition = TopicPartition(self._settings.topic(AUDIT_TOPIC), 0)
            consumer.assign([partition])
            begin, end = await end_offsets(consumer, partition)
            self.take(await read_range(consumer, partition, max(begin, end - _RESUME_WINDOW), end))
            consumer.seek(partition, end)
            while not stopping.is_set():
                deadline = asyncio.get_running_loop().time() + self._interval
                while (left := deadline - asyncio.get_running_loop().time()) > 0:
                    batch = await consumer.getmany(
                        partition, timeout_ms=int(min(left, 1.0) * 1000), max_records=1000
                    )
                    self.take(audit_message(m) for m in batch.get(partition, []))
                    if stopping.is_set():
                        return
                await self.hand_round()
        finally:
            await consumer.stop()
            for peer in self._peers:
                if peer.open_channel is not None:
                    with contextlib.suppress(Exception):
                        await peer.open_channel.close()

    def take(self, messages: Iterable[AuditMessage]) -> None:
        """Note the records read from the node's audit topic (in topic order)."""
        taken = list(messages)
        for message in taken:
            chain, _seq = parse_key(message.key)
            recent = self._recent.get(chain)
            if recent is None:
                recent = self._recent[chain] = collections.deque(maxlen=_QUIET_WINDOW)
            recent.append(message)
        for chain, head in signed_heads(taken, self._serde).items():
            known = self._heads.get(chain)
            if (known is None or known.seq < head.seq) and head.problem(self._keys) is None:
                self._heads[chain] = head

    def _only_exchanges(self, chain: str | None, after: int, head: int) -> bool:
        """Whether records ``after`` + 1 .. ``head`` of ``chain`` are all checkpoints handed
        (peers handing theirs here, or this node's own hands to them, recorded OUTBOUND):
        then handing that head would only make the peer's own chain grow, and its head come
        back, for ever. Those records are pinned by the next head that
        also covers another call."""
        wanted = set(range(after + 1, head + 1))
        if len(wanted) > _QUIET_WINDOW:
            return False
        found = 0
        for message in self._recent.get(chain, ()):
            if parse_key(message.key)[1] not in wanted:
                continue
            try:
                record = self._serde.decode(
                    message.value, reader=self._serde.writer_of(message.value)
                )
            except (SerdeError, ValueError):
                return False
            if record["method"] != HAND_CHECKPOINTS:
                return False
            found += 1
        return found == len(wanted)

    async def hand_round(self) -> None:
        """Hand every peer what it lacks, concurrently; a failure waits for the next round."""
        await asyncio.gather(*(self._hand(peer) for peer in self._peers))

    def due(self, peer: str) -> list[Checkpoint]:
        """The heads ``peer`` lacks, but for those only peers' hand-overs led to."""
        handed = next(p.handed for p in self._peers if p.key == peer)
        return [
            head
            for chain, head in self._heads.items()
            if handed.get(chain, 0) < head.seq
            and not self._only_exchanges(chain, handed.get(chain, 0), head.seq)
        ]

    async def _hand(self, peer: _Peer) -> None:
        due = self.due(peer.key)
        if not due:
            return
        if peer.open_channel is None:
            peer.open_channel = peer.channel()
        stub = audit_evidence_pb2_grpc.AuditEvidenceServiceStub(peer.open_channel)
        try:
            for start in range(0, len(due), MAX_PER_CALL):
                await stub.HandCheckpoints(
                    audit_evidence_pb2.HandCheckpointsRequest(
                        checkpoints=[_proto(h) for h in due[start : start + MAX_PER_CALL]]
                    ),
                    timeout=PEER_CALL_TIMEOUT_SECONDS,
                )
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "audit_checkpoints_not_handed",
                peer=peer.key,
                code=exc.code().name,
                details=exc.details(),
            )
            return
        for head in due:
            peer.handed[head.chain] = head.seq


def _proto(head: Checkpoint) -> audit_evidence_pb2.AuditCheckpoint:
    return audit_evidence_pb2.AuditCheckpoint(
        chain=head.chain or "", seq=head.seq, hash=head.hash, signature=head.signature
    )
