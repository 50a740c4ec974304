"""Wiring of the scores service of one city node: Kafka, the score table, the scale catalogue,
the distribution publisher, the peer-scale sync and the mTLS gRPC server.

Example (what ``python -m services.scores`` does)::

    node = ScoresNode.from_environment()      # or ScoresNode(settings, region, ...) in tests
    await run_until_signalled(node, grace=STOP_GRACE_SECONDS, ops=ops_server(city, SERVICE))

The producer, the audit chain and the peer server are the common node bootstrap's
(``services/common/node.py``, docs/design.md §3.4); what is wired here is the scores' own.

What runs, once started:

- **score table** (``stream.py``): faust agent ``track_scores`` keeps ``pseudonym_to_score``
  and the in-memory population from ``credit.scores.v1``;
- **scale catalogue**: a reader of ``credit.score-scales.v1`` from the beginning (own versions
  and mirrored peer versions), caught up before the server answers;
- **distribution refresh**: every ``refresh_seconds`` the population is turned into a
  candidate version and published when :class:`~services.scores.scales.RefreshPolicy` says so;
- **peer-scale sync**: every ``peer_sync_seconds`` each connected peer's current scale is
  fetched with ``GetScoreScale`` over mTLS and, when new, mirrored onto the own scales topic,
  so ``RecognizeScore`` can link to the caller's scale; a peer whose scale stays the same is
  polled less and less often (:meth:`ScoresNode.poll_peer_scales`);
- **gRPC server**: ``ScoreRecognitionService`` behind the common bootstrap (mTLS, policy,
  consent, hash-chained audit on ``audit.peer-calls.v1``, health, reflection).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import grpc
from aiokafka import AIOKafkaConsumer

from creditlink.peer.v1 import score_recognition_pb2 as pb
from creditlink.peer.v1 import score_recognition_pb2_grpc as pb_grpc
from services.common.avro import AvroSerde, SerdeError
from services.common.kafka import EventPublisher, make_consumer
from services.common.logging import get_logger
from services.common.node import NodeBootstrap, node_trust
from services.common.peer import (
    OutboundEvidence,
    PeerSecurity,
    PeerServer,
    TlsFiles,
    secure_channel,
)
from services.common.region import Region, load_region
from services.common.revocations import follow_revocations
from services.common.settings import Settings, load_settings
from services.common.topic_names import RECOGNITIONS_TOPIC, SCALES_TOPIC
from services.scores.config import ScoresConfig, ScoresOptions, load_scores_config
from services.scores.linking import DEFAULT_QUANTILE_POINTS
from services.scores.recognition import EVENT_TYPE as RECOGNIZED_EVENT
from services.scores.recognition import SCHEMA as RECOGNITION_SCHEMA
from services.scores.recognition import Recognition
from services.scores.scales import (
    PublishedScale,
    RefreshPolicy,
    ScaleCatalogue,
    ScaleDefinition,
    ScaleError,
    ScorePopulation,
    publish_scale,
)
from services.scores.servicer import ScoreRecognitionServicer
from services.scores.stream import ScoreStream, build_score_stream

SERVICE: Final = "scores"
SCALE_SCHEMA: Final = "creditlink.v1.ScoreScale"
SCALE_PUBLISHED_EVENT: Final = "cn.creditlink.score-scale.published.v1"
SCALE_MIRRORED_EVENT: Final = "cn.creditlink.score-scale.mirrored.v1"
PEER_CALL_TIMEOUT_SECONDS: Final = 5.0
#: How long a stop on SIGTERM lets calls in progress finish.
STOP_GRACE_SECONDS: Final = 5.0
RECOVERY_TIMEOUT_SECONDS: Final = 120.0
#: A peer's unchanged scale is polled at most this many sync intervals apart (30 s: 4 min).
SCALE_POLL_BACKOFF: Final = 8


class KafkaRecognitionRecorder:
    """Writes each recognition to ``credit.score-recognitions.v1`` and waits for ``acks=all``."""

    def __init__(self, publisher: EventPublisher) -> None:
        self._publisher = publisher

    async def record(self, recognition: Recognition) -> None:
        await self._publisher.publish(
            RECOGNITIONS_TOPIC,
            RECOGNITION_SCHEMA,
            recognition.to_record(),
            key=recognition.pseudonym,
            event_type=RECOGNIZED_EVENT,
        )


class ScaleFollower:
    """Reads ``credit.score-scales.v1`` from the beginning into a :class:`ScaleCatalogue`."""

    def __init__(
        self,
        settings: Settings,
        serde: AvroSerde,
        catalogue: ScaleCatalogue,
        steps: Mapping[str, float],
    ) -> None:
        self._settings = settings
        self._serde = serde
        self._catalogue = catalogue
        self._steps = steps
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._log = get_logger(component="scale-follower")

    async def start(self) -> None:
        """Assign every partition, read up to the end offsets, then follow in the background."""
        # Without a group, a subscribed consumer is assigned every partition of the topic.
        consumer = make_consumer(self._settings, SCALES_TOPIC, group_id=None)
        await consumer.start()
        self._consumer = consumer
        for _ in range(100):
            if consumer.assignment():
                break
            await asyncio.sleep(0.05)
        assigned = sorted(consumer.assignment())
        if not assigned:
            raise RuntimeError(
                f"topic {self._settings.topic(SCALES_TOPIC)} has no partitions; "
                "provision the node's topics"
            )
        ends = await consumer.end_offsets(assigned)
        for partition in assigned:
            while await consumer.position(partition) < ends[partition]:
                await self._read_batch(timeout_ms=500)
        self._task = asyncio.create_task(self._follow(), name="scale-follower")

    async def _follow(self) -> None:
        while True:
            await self._read_batch(timeout_ms=1000)

    async def _read_batch(self, *, timeout_ms: int) -> None:
        assert self._consumer is not None
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=500)
        for messages in batches.values():
            for message in messages:
                if message.value is None:
                    continue
                try:
                    record = self._serde.decode(message.value, reader=SCALE_SCHEMA)
                    scale = PublishedScale.from_record(
                        record, step=self._steps.get(str(record["city_code"]), 0.0)
                    )
                except (SerdeError, ScaleError) as exc:
                    self._log.error(
                        "unreadable scale version", offset=message.offset, error=str(exc)
                    )
                    continue
                self._catalogue.add(scale)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


@dataclass
class ScoresNode:
    """One city's scores service. ``peer_targets`` maps peer city keys to ``host:port``."""

    settings: Settings
    region: Region
    config: ScoresConfig
    security: PeerSecurity
    tls: TlsFiles
    bind: str
    peer_targets: Mapping[str, str]
    policy: RefreshPolicy = field(default_factory=RefreshPolicy)
    refresh_seconds: float = 60.0
    peer_sync_seconds: float = 30.0
    quantile_points: int = DEFAULT_QUANTILE_POINTS
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    catalogue: ScaleCatalogue = field(default_factory=ScaleCatalogue, init=False)
    population: ScorePopulation = field(default_factory=ScorePopulation, init=False)
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list, init=False)
    _channels: dict[str, grpc.aio.Channel] = field(default_factory=dict, init=False)
    #: Per peer city: when its scale is next polled, and the interval it is polled at.
    _scale_polls: dict[str, tuple[float, float]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.city_code = self.region.city(self.settings.city).admin_code
        self.definition: ScaleDefinition = self.config.scale_of(self.settings.city)
        self.serde = AvroSerde()
        self.log = get_logger(component="scores-node")
        self.kit = NodeBootstrap(
            self.settings,
            self.serde,
            service=SERVICE,
            city_code=self.city_code,
            tls=self.tls,
            security=self.security,
        )
        self.publisher = EventPublisher(
            self.kit.producer, self.serde, self.settings, service=SERVICE
        )
        # Served calls are INBOUND records, calls to peers (scale polls) OUTBOUND ones.
        self.audit = self.kit.audit_chain(SERVICE)
        self._follower: ScaleFollower | None = None
        self._stream: ScoreStream | None = None

    @classmethod
    def from_environment(cls) -> ScoresNode:
        settings = load_settings()
        region = load_region(settings.region_file)
        options = ScoresOptions.from_env(region, settings.city)
        config = load_scores_config(region=region)
        tls, security = node_trust(settings, region, options.certs_dir)
        peers = {
            city.key: city.endpoint(SERVICE)
            for city in region.peers_of(settings.city)
            if SERVICE in city.endpoints
        }
        return cls(
            settings=settings,
            region=region,
            config=config,
            security=security,
            tls=tls,
            bind=options.bind,
            peer_targets=peers,
            policy=RefreshPolicy(min_population=options.min_population),
            refresh_seconds=options.refresh_seconds,
            peer_sync_seconds=options.peer_sync_seconds,
        )

    # --- parts ---------------------------------------------------------------------------

    @property
    def server(self) -> PeerServer:
        if self.kit.server is None:
            raise RuntimeError("scores node not started")
        return self.kit.server

    @property
    def stream(self) -> ScoreStream:
        if self._stream is None:
            raise RuntimeError("scores node not started")
        return self._stream

    def health_checks(self) -> dict[str, Callable[[], bool]]:
        """What ``/healthz`` reports: the audit chain is writable and the score stream runs.

        A city without a published scale yet (fewer scored residents than the minimum) is
        healthy: restarting would not help, and its RecognizeScore answers UNAVAILABLE with
        the reason. A peer whose scale is unknown shows in the logs ("peer scale
        unavailable") and in that peer's FAILED_PRECONDITION answers.
        """
        return {"audit": lambda: self.audit.healthy}

    def incentives_for(self, requesting_city_code: str, common_grade: str) -> tuple[str, ...]:
        city = self.region.by_admin_code(requesting_city_code)
        if city is None:
            return ()
        return tuple(i.name for i in self.config.incentives_for(city.key, common_grade))

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await self.kit.start()
        steps = {d.city_code: d.step for d in self.config.scales.values()}
        self._follower = ScaleFollower(self.settings, self.serde, self.catalogue, steps)
        await self._follower.start()

        self._stream = build_score_stream(self.settings, self.definition, self.population)
        await self._stream.start()
        await asyncio.wait_for(self._stream.recovered(), RECOVERY_TIMEOUT_SECONDS)
        await self.refresh_distribution()
        # No consent is honoured before every revocation written so far is known
        # (services/common/revocations.py; the lists node mirrors the peers' into the topic).
        self._tasks.append(
            asyncio.create_task(
                follow_revocations(self.settings, self.serde, self.security.revocations),
                name="revocations",
            )
        )
        await self.security.revocations.caught_up.wait()

        servicer = ScoreRecognitionServicer(
            city_code=self.city_code,
            catalogue=self.catalogue,
            scores=self._stream,
            recorder=KafkaRecognitionRecorder(self.publisher),
            incentives_for=self.incentives_for,
            clock=self.clock,
        )
        server = await self.kit.serve(self.bind, [servicer.binding()], audit=self.audit)
        self._tasks.append(
            asyncio.create_task(self._every(self.refresh_seconds, self.refresh_distribution))
        )
        self._tasks.append(
            asyncio.create_task(
                self._every(self.peer_sync_seconds, self.poll_peer_scales, first_delay=0.0)
            )
        )
        self.log.info(
            "scores node serving",
            bind=self.bind,
            port=server.port,
            scale=self.definition.scale_name,
        )

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        # NOT_SERVING and the grace for calls in progress while the table and the
        # revocations still run (docs/design.md §3.4), then the loops.
        await self.kit.stop_serving(grace)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        if self._stream is not None:
            await self._stream.stop()
        if self._follower is not None:
            await self._follower.stop()
        await self.kit.close()

    async def _every(
        self, seconds: float, job: Callable[[], Any], *, first_delay: float | None = None
    ) -> None:
        await asyncio.sleep(seconds if first_delay is None else first_delay)
        while True:
            try:
                await job()
            except Exception as exc:  # one failed round must not stop the loop
                self.log.error("periodic job failed", job=job.__name__, error=repr(exc))
            await asyncio.sleep(seconds)

    # --- jobs ----------------------------------------------------------------------------

    async def refresh_distribution(self) -> PublishedScale | None:
        """Publish a new distribution version if the policy asks for one; return it."""
        counts = self.population.snapshot()
        if not counts:
            return None
        candidate = publish_scale(
            self.definition, counts, self.config.cuts, now=self.clock(), points=self.quantile_points
        )
        reason = self.policy.decide(self.catalogue.current(self.city_code), candidate)
        if reason is None:
            return None
        await self.publisher.publish(
            SCALES_TOPIC,
            SCALE_SCHEMA,
            candidate.to_record(),
            key=candidate.key,
            event_type=SCALE_PUBLISHED_EVENT,
        )
        self.catalogue.add(candidate)
        self.log.info(
            "score distribution published",
            distribution_version=candidate.distribution_version,
            reason=str(reason),
            population=candidate.population,
        )
        return candidate

    def _channel(self, city: str) -> grpc.aio.Channel:
        channel = self._channels.get(city)
        if channel is None:
            # Each call to a peer is an OUTBOUND record of this node's chain, with its receipt.
            evidence = OutboundEvidence(
                self.audit,
                node_city=self.city_code,
                callee_city=self.region.city(city).admin_code,
            )
            channel = secure_channel(
                self.peer_targets[city],
                self.tls,
                expect_city=city,
                service="scores",
                interceptors=(evidence,),
            )
            self._channels[city] = channel
        return channel

    async def poll_peer_scales(self) -> None:
        """:meth:`sync_peer_scales` for the peers due. A peer whose scale came back unchanged
        is polled half as often, down to once every ``SCALE_POLL_BACKOFF`` intervals; one that
        sent a new version, or none yet, every interval again. Each poll is a peer call on
        both cities' audit chains, and a city publishes a new scale rarely: an idle region
        would otherwise fill its evidence with polls (docs/score-linking.md)."""
        now = time.monotonic()
        due = [c for c in self.peer_targets if self._scale_polls.get(c, (now, 0.0))[0] <= now]
        if not due:
            return
        mirrored = {scale.city_code for scale in await self.sync_peer_scales(due)}
        base = self.peer_sync_seconds
        for city in due:
            code = self.region.city(city).admin_code
            interval = self._scale_polls.get(city, (now, base / 2))[1]
            if code in mirrored or self.catalogue.current(code) is None:
                interval = base
            else:
                interval = min(interval * 2, base * SCALE_POLL_BACKOFF)
            self._scale_polls[city] = (now + interval - base / 10, interval)

    async def sync_peer_scales(self, cities: Iterable[str] | None = None) -> list[PublishedScale]:
        """Fetch each peer's (of ``cities``, default all) current scale; mirror the versions
        not yet known. Return them."""
        mirrored: list[PublishedScale] = []
        for city in sorted(self.peer_targets if cities is None else cities):
            expected = self.region.city(city).admin_code
            stub = pb_grpc.ScoreRecognitionServiceStub(self._channel(city))
            try:
                response = await stub.GetScoreScale(
                    pb.GetScoreScaleRequest(), timeout=PEER_CALL_TIMEOUT_SECONDS
                )
                scale = PublishedScale.from_proto(response.scale)
            except grpc.aio.AioRpcError as exc:
                self.log.warning("peer scale unavailable", peer=city, status=exc.code().name)
                continue
            except ScaleError as exc:
                self.log.error("peer sent an unusable scale", peer=city, error=str(exc))
                continue
            if scale.city_code != expected:
                self.log.error("peer sent another city's scale", peer=city, got=scale.city_code)
                continue
            if self.catalogue.version(scale.city_code, scale.distribution_version) is not None:
                continue
            await self.publisher.publish(
                SCALES_TOPIC,
                SCALE_SCHEMA,
                scale.to_record(),
                key=scale.key,
                event_type=SCALE_MIRRORED_EVENT,
            )
            self.catalogue.add(scale)
            mirrored.append(scale)
            self.log.info(
                "peer scale mirrored", peer=city, distribution_version=scale.distribution_version
            )
        return mirrored
