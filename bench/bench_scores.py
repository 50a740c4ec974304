"""Scores figures: ``RecognizeScore`` against a trivial grpc.aio unary echo, same run, same mTLS.

Both servers run in this process on the same certificates (region CA, Suzhou's server
certificate, Wuxi's client certificate); 16 callers share one channel and call as fast as
they can for a fixed time. ``RecognizeScore`` runs the real Suzhou scores node: identity from
the certificate, policy, Ed25519 consent verification, hash-chained audit record, linking, and
the recognition written to ``credit.score-recognitions.v1`` with ``acks=all`` before the
answer. The echo does none of that, so the ratio is the price of all of it.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import grpc

from bench.harness import BenchContext, Comparison, benchmark, percentile
from creditlink.peer.v1 import score_recognition_pb2 as pb
from creditlink.peer.v1 import score_recognition_pb2_grpc as pb_grpc
from services.common.certs import issue_dev_certificates
from services.common.consent import ConsentIssuer, load_private_key
from services.common.peer import PeerSecurity, TlsFiles, secure_channel
from services.common.region import load_region
from services.common.settings import REPO_ROOT, load_settings
from services.common.topics import load_catalogue, provision
from services.scores.config import load_scores_config
from services.scores.importer import ScoreUpdate, publish_scores
from services.scores.node import ScoresNode
from services.scores.scales import RefreshPolicy, publish_scale

CALLERS = 16
RESIDENTS = 2_000
ECHO_METHOD = "/creditlink.bench.Echo/Echo"


async def _drive(
    call: Callable[[int], Awaitable[object]], seconds: float
) -> tuple[float, list[float]]:
    """QPS and per-call latencies (ms) of CALLERS concurrent loops over ``seconds``."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def caller() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await call(next(counter))
            latencies.append((time.perf_counter() - started) * 1000)

    begin = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(CALLERS)))
    return len(latencies) / (time.perf_counter() - begin), latencies


async def _echo_server(tls: TlsFiles) -> tuple[grpc.aio.Server, int]:
    def echo(request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "creditlink.bench.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                echo, request_deserializer=None, response_serializer=None
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port("127.0.0.1:0", tls.server_credentials())
    await server.start()
    return server, port


@benchmark("scores")
async def scores(ctx: BenchContext) -> list[Comparison]:
    seconds = 1.5 if ctx.quick else 6.0
    region = load_region(REPO_ROOT / "deploy/config/region.yaml")
    config = load_scores_config(region=region)
    certs = ctx.scratch / "scores-certs"
    issue_dev_certificates(certs, ["suzhou", "wuxi"])
    settings = load_settings(
        {
            "CREDITLINK_CITY": "suzhou",
            "KAFKA_BOOTSTRAP": ctx.kafka_bootstrap,
            "CREDITLINK_TOPIC_PREFIX": f"bench{uuid.uuid4().hex[:6]}.suzhou.",
            "CREDITLINK_DATA_DIR": str(ctx.scratch / "scores-data"),
        }
    )
    await provision(ctx.kafka_bootstrap, load_catalogue(), prefix=settings.topic_prefix)

    suzhou = config.scale_of("suzhou")
    rng = random.Random(6)
    # Suzhou residents (division 320505): Suzhou's consent is the one honoured for them.
    residents = [f"320505.6a8f48cd.{i:064x}" for i in range(1, RESIDENTS + 1)]
    await publish_scores(
        settings,
        [
            ScoreUpdate(
                person,
                {
                    "pseudonym": person,
                    "subject_key": f"N:{person}",
                    "city_code": suzhou.city_code,
                    "scale_name": suzhou.scale_name,
                    "score": (score := float(min(1000, max(0, round(rng.gauss(650, 120)))))),
                    "grade": suzhou.local_grade(score),
                    "model_version": "bench",
                    "computed_at": datetime.now(UTC),
                },
            )
            for person in residents
        ],
    )
    node = ScoresNode(
        settings=settings,
        region=region,
        config=config,
        security=PeerSecurity.from_files(settings, region, keys_dir=certs),
        tls=TlsFiles.for_city("suzhou", certs),
        bind="127.0.0.1:0",
        peer_targets={},
        policy=RefreshPolicy(min_population=100),
        refresh_seconds=3600,
        peer_sync_seconds=3600,
    )
    await node.start()
    echo_server, echo_port = await _echo_server(TlsFiles.for_city("suzhou", certs))
    try:
        for _ in range(600):  # the table fills within seconds; give up after a minute
            if node.population.total >= RESIDENTS:
                break
            await asyncio.sleep(0.1)
        await node.refresh_distribution()
        wuxi = config.scale_of("wuxi")
        node.catalogue.add(
            publish_scale(
                wuxi,
                {float(s): 1 + (s % 7) for s in range(400, 900)},
                config.cuts,
                now=datetime.now(UTC),
                points=1001,
            )
        )
        issuer = ConsentIssuer(suzhou.city_code, load_private_key(certs / "suzhou.consent.key"))
        tokens = {
            person: issuer.issue(
                subject_key=f"N:{person}",
                audience_city=wuxi.city_code,
                lifetime_seconds=3600,
                purpose="score-recognition",
            )
            for person in residents[:256]
        }
        people = list(tokens)
        client_tls = TlsFiles.for_city("wuxi", certs)

        async with (
            # The echo server presents Suzhou's certificate too.
            secure_channel(
                f"127.0.0.1:{node.server.port}", client_tls, expect_city="suzhou", service="scores"
            ) as scores_channel,
            secure_channel(
                f"127.0.0.1:{echo_port}", client_tls, expect_city="suzhou", service="scores"
            ) as echo_channel,
        ):
            stub = pb_grpc.ScoreRecognitionServiceStub(scores_channel)
            echo = echo_channel.unary_unary(ECHO_METHOD)
            payload = b"x" * 200

            async def recognize(n: int) -> object:
                person = people[n % len(people)]
                return await stub.RecognizeScore(
                    pb.RecognizeScoreRequest(
                        subject_key=f"N:{person}",
                        consent_token=tokens[person],
                        purpose="bench",
                        request_id=f"b-{n}",
                    ),
                    timeout=30,
                )

            async def echo_once(_n: int) -> object:
                return await echo(payload, timeout=30)

            # Warm up both paths (TLS sessions, producer ids, caches) outside the clock.
            await _drive(echo_once, 0.5)
            await _drive(recognize, 0.5)
            base_qps, base_lat = await _drive(echo_once, seconds)
            ours_qps, ours_lat = await _drive(recognize, seconds)
    finally:
        await echo_server.stop(0)
        await node.stop()

    return [
        Comparison(
            f"RecognizeScore QPS @{CALLERS}",
            ours_qps,
            base_qps,
            "req/s",
            "grpc.aio unary echo, same mTLS",
            target=0.25,
            notes="ours: authz + consent + audit + linking + acks=all record per call",
        ),
        Comparison(
            f"RecognizeScore p99 @{CALLERS}",
            percentile(ours_lat, 99),
            percentile(base_lat, 99),
            "ms",
            "grpc.aio unary echo, same mTLS",
            higher_is_better=False,
            target=0.25,
        ),
        Comparison(
            f"RecognizeScore p50 @{CALLERS}",
            percentile(ours_lat, 50),
            percentile(base_lat, 50),
            "ms",
            "grpc.aio unary echo, same mTLS",
            higher_is_better=False,
        ),
    ]
