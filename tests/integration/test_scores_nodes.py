"""Two city nodes recognise each other's scores: real broker, real faust table (RocksDB),
real gRPC with mutual TLS on real sockets, certificates and consent keys from
``services.common.certs`` in a temporary directory, the deploy policy file.

Suzhou (桂花分, 0–1000) and Wuxi (阿福分, 350–950) each import their residents' scores,
publish their distributions, fetch each other's scale, and answer each other's
``RecognizeScore``. Then Suzhou's distribution moves, a new version is published, and the
old recognition keeps naming the version it used. Finally Suzhou restarts and comes back
with the same table, population and catalogue.
"""

from __future__ import annotations

import asyncio
import random
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from contracts.conformance import Endpoint
from contracts.conformance import run as conformance_run
from creditlink.peer.v1 import score_recognition_pb2 as pb
from creditlink.peer.v1 import score_recognition_pb2_grpc as pb_grpc
from services.common.audit import read_audit_topic, verify_chain
from services.common.avro import AvroSerde
from services.common.certs import issue_dev_certificates, service_host
from services.common.consent import ConsentIssuer, load_private_key
from services.common.kafka import make_consumer
from services.common.peer import PeerSecurity, TlsFiles, secure_channel
from services.common.policy import is_valid_subject_key
from services.common.region import load_region
from services.common.settings import REPO_ROOT, Settings, load_settings
from services.common.topics import load_catalogue, provision
from services.scores.config import load_scores_config
from services.scores.importer import ScoreUpdate, publish_scores
from services.scores.linking import link_score
from services.scores.node import RECOGNITIONS_TOPIC, SCALES_TOPIC, ScoresNode
from services.scores.scales import RefreshPolicy
from tests.kit.identifiers import make_resident_id

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]

REGION = load_region(REPO_ROOT / "deploy/config/region.yaml")
CONFIG = load_scores_config(REPO_ROOT / "deploy/config/score-incentives.yaml", region=REGION)
CITIES = ("suzhou", "wuxi")
RESIDENTS = 300
# Pseudonyms (without "N:") of a Suzhou and a Wuxi resident: the division names the home city.
SUZHOU_RESIDENT = "320505.6a8f48cd." + "1" * 64
WUXI_RESIDENT = "320211.6a8f48cd." + "2" * 64


def _scores(city: str, seed: int, shift: float = 0.0) -> list[ScoreUpdate]:
    definition = CONFIG.scale_of(city)
    rng = random.Random(seed)
    mean = (definition.min_score + definition.max_score) / 2 + shift
    spread = (definition.max_score - definition.min_score) / 6
    updates = []
    for index in range(RESIDENTS):
        key = f"{index:062x}{'0a' if city == 'suzhou' else '0b'}"
        score = round(min(max(rng.gauss(mean, spread), definition.min_score), definition.max_score))
        updates.append(_update(city, key, float(score)))
    return updates


def _update(city: str, person: str, score: float) -> ScoreUpdate:
    definition = CONFIG.scale_of(city)
    return ScoreUpdate(
        person,
        {
            "pseudonym": person,
            "subject_key": f"N:{person}",
            "city_code": definition.city_code,
            "scale_name": definition.scale_name,
            "score": score,
            "grade": definition.local_grade(score),
            "model_version": "test",
            "computed_at": datetime.now(UTC),
        },
    )


async def _eventually(check: Callable[[], bool], what: str, within: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@dataclass
class Region2:
    settings: dict[str, Settings]
    certs: Path
    nodes: dict[str, ScoresNode]

    def make_node(self, city: str) -> ScoresNode:
        settings = self.settings[city]
        return ScoresNode(
            settings=settings,
            region=REGION,
            config=CONFIG,
            security=PeerSecurity.from_files(
                settings,
                REGION,
                policy_file=REPO_ROOT / "deploy/config/peer-policy.yaml",
                keys_dir=self.certs,
            ),
            tls=TlsFiles.for_city(city, self.certs),
            bind="127.0.0.1:0",
            peer_targets={},
            policy=RefreshPolicy(min_population=50),
            refresh_seconds=3600,
            peer_sync_seconds=3600,
            quantile_points=201,
        )

    def connect(self) -> None:
        for city, node in self.nodes.items():
            node.peer_targets = {
                peer: f"127.0.0.1:{other.server.port}"
                for peer, other in self.nodes.items()
                if peer != city
            }

    def consent(self, home: str, audience: str, subject: str) -> str:
        issuer = ConsentIssuer(
            REGION.city(home).admin_code, load_private_key(self.certs / f"{home}.consent.key")
        )
        return issuer.issue(
            subject_key=f"N:{subject}",
            audience_city=REGION.city(audience).admin_code,
            lifetime_seconds=600,
            purpose="score-recognition",
        )

    async def recognize(
        self, caller: str, home: str, subject: str, request_id: str
    ) -> pb.RecognizeScoreResponse:
        channel = secure_channel(
            f"127.0.0.1:{self.nodes[home].server.port}",
            TlsFiles.for_city(caller, self.certs),
            expect_city=home,
            service="scores",
        )
        async with channel:
            stub = pb_grpc.ScoreRecognitionServiceStub(channel)
            response: pb.RecognizeScoreResponse = await stub.RecognizeScore(
                pb.RecognizeScoreRequest(
                    subject_key=f"N:{subject}",
                    consent_token=self.consent(home, caller, subject),
                    purpose="deposit-free bike rental",
                    request_id=request_id,
                ),
                timeout=10,
            )
            return response


async def _read_topic(settings: Settings, topic: str) -> list[tuple[str, dict[str, Any]]]:
    serde = AvroSerde()
    consumer = make_consumer(settings, topic, group_id=None)  # no group: every partition
    await consumer.start()
    try:
        await _eventually(lambda: bool(consumer.assignment()), "partition assignment", 10)
        partitions = sorted(consumer.assignment())
        ends = await consumer.end_offsets(partitions)
        found: list[tuple[str, dict[str, Any]]] = []
        for tp in partitions:
            while await consumer.position(tp) < ends[tp]:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                for message in batch.get(tp, []):
                    if message.value is not None:
                        found.append((message.key.decode(), serde.decode(message.value)))
        return found
    finally:
        await consumer.stop()


@pytest.fixture
async def region2(kafka_bootstrap: str, tmp_path: Path) -> AsyncIterator[Region2]:
    run = uuid.uuid4().hex[:8]
    settings = {
        city: load_settings(
            {
                "CREDITLINK_CITY": city,
                "KAFKA_BOOTSTRAP": kafka_bootstrap,
                "CREDITLINK_TOPIC_PREFIX": f"t{run}.{city}.",
                "CREDITLINK_DATA_DIR": str(tmp_path / city),
            }
        )
        for city in CITIES
    }
    catalogue = load_catalogue()
    await asyncio.gather(
        *(provision(kafka_bootstrap, catalogue, prefix=s.topic_prefix) for s in settings.values())
    )
    certs = tmp_path / "certs"
    issue_dev_certificates(certs, list(CITIES))
    world = Region2(settings, certs, {})
    try:
        yield world
    finally:
        for node in world.nodes.values():
            await node.stop()


async def _start(world: Region2, city: str) -> ScoresNode:
    node = world.make_node(city)
    world.nodes[city] = node  # stopped by the fixture even if start fails half-way
    await node.start()
    return node


async def test_two_cities_recognise_each_others_scores(region2: Region2) -> None:
    world = region2
    sz_updates = [*_scores("suzhou", 1), _update("suzhou", SUZHOU_RESIDENT, 812.0)]
    wx_updates = [*_scores("wuxi", 2), _update("wuxi", WUXI_RESIDENT, 600.0)]
    await publish_scores(world.settings["suzhou"], sz_updates)
    await publish_scores(world.settings["wuxi"], wx_updates)

    suzhou, wuxi = await _start(world, "suzhou"), await _start(world, "wuxi")
    for node in (suzhou, wuxi):
        await _eventually(lambda n=node: n.population.total == RESIDENTS + 1, "score table")  # type: ignore[misc]
        assert await node.refresh_distribution() is not None
    world.connect()
    assert [s.city_code for s in await suzhou.sync_peer_scales()] == ["320200"]
    assert [s.city_code for s in await wuxi.sync_peer_scales()] == ["320500"]
    assert await suzhou.sync_peer_scales() == []  # nothing new the second time
    assert all(check() for check in suzhou.health_checks().values())

    sz_v1 = suzhou.catalogue.current("320500")
    wx_v1 = wuxi.catalogue.current("320200")
    assert sz_v1 is not None
    assert wx_v1 is not None

    # Wuxi asks Suzhou about a Suzhou resident, and the other way round.
    answer = await world.recognize("wuxi", "suzhou", SUZHOU_RESIDENT, "wx-asks-1")
    assert (answer.home_city, answer.requesting_city) == ("320500", "320200")
    assert answer.home_score == 812.0
    assert answer.home_distribution_version == sz_v1.distribution_version
    assert answer.requesting_distribution_version == wx_v1.distribution_version
    expected = link_score(812.0, sz_v1.quantiles, wx_v1.quantiles)
    assert answer.linked_score == pytest.approx(expected)
    assert answer.home_percentile == pytest.approx(sz_v1.quantiles.percentile_rank(812.0) * 100)
    assert answer.common_grade == CONFIG.cuts.grade_for(answer.home_percentile / 100)
    assert list(answer.incentives) == [
        i.name for i in CONFIG.incentives_for("wuxi", answer.common_grade)
    ]
    back = await world.recognize("suzhou", "wuxi", WUXI_RESIDENT, "sz-asks-1")
    assert back.home_city == "320200"
    assert back.requesting_scale_name == "桂花分"
    assert back.linked_score == pytest.approx(link_score(600.0, wx_v1.quantiles, sz_v1.quantiles))

    # A peer presenting consent for somebody else is refused.
    channel = secure_channel(
        f"127.0.0.1:{suzhou.server.port}",
        TlsFiles.for_city("wuxi", world.certs),
        expect_city="suzhou",
        service="scores",
    )
    async with channel:
        probe = pb.RecognizeScoreRequest(
            subject_key=f"N:{SUZHOU_RESIDENT}",
            consent_token=world.consent("suzhou", "wuxi", WUXI_RESIDENT),
            purpose="probe",
        )
        stub = pb_grpc.ScoreRecognitionServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.RecognizeScore(probe, timeout=10)
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED

    # Suzhou's residents improve: a new distribution version; Wuxi's next answer uses it.
    shifted = _scores("suzhou", 1, shift=120.0)
    await publish_scores(world.settings["suzhou"], shifted)
    shifted_counts = Counter(u.entry["score"] for u in shifted if u.entry)
    shifted_counts[812.0] += 1
    await _eventually(lambda: suzhou.population.counts == shifted_counts, "the shifted scores")
    sz_v2 = await suzhou.refresh_distribution()
    assert sz_v2 is not None
    assert sz_v2.distribution_version != sz_v1.distribution_version
    again = await world.recognize("wuxi", "suzhou", SUZHOU_RESIDENT, "wx-asks-2")
    assert again.home_distribution_version == sz_v2.distribution_version
    assert again.home_percentile < answer.home_percentile  # same score, better peers

    # Every recognition is on Suzhou's topic naming the versions it used, and audited.
    recognitions = {
        r["request_id"]: r
        for _, r in await _read_topic(world.settings["suzhou"], RECOGNITIONS_TOPIC)
    }
    assert recognitions["wx-asks-1"]["home_distribution_version"] == sz_v1.distribution_version
    assert recognitions["wx-asks-2"]["home_distribution_version"] == sz_v2.distribution_version
    assert recognitions["wx-asks-1"]["requesting_distribution_version"] == (
        wx_v1.distribution_version
    )
    scale_keys = {k for k, _ in await _read_topic(world.settings["suzhou"], SCALES_TOPIC)}
    assert {sz_v1.key, sz_v2.key, wx_v1.key} <= scale_keys

    assert suzhou.audit is not None
    await suzhou.audit.flush()
    audit = await read_audit_topic(world.settings["suzhou"], suzhou.audit.topic)
    report = verify_chain(audit)
    assert report.ok, report
    serde = AvroSerde()
    calls = [serde.decode(m.value) for m in audit]
    recognize_calls = [c for c in calls if c["method"].endswith("/RecognizeScore")]
    assert [(c["status_code"], c["denial_code"]) for c in recognize_calls] == [
        ("OK", None),
        ("PERMISSION_DENIED", "consent-wrong-subject"),
        ("OK", None),
    ]
    assert all(c["caller_city"] == "320200" for c in recognize_calls)
    assert recognize_calls[0]["consent_reference"]
    assert recognize_calls[0]["subject_key"] == f"N:{SUZHOU_RESIDENT}"

    # Suzhou restarts: table, population and every version come back; nothing republished.
    population = dict(suzhou.population.counts)
    versions = [s.distribution_version for s in suzhou.catalogue.versions("320500")]
    await suzhou.stop()
    del world.nodes["suzhou"]
    restarted = await _start(world, "suzhou")
    assert restarted.population.counts == population
    assert [s.distribution_version for s in restarted.catalogue.versions("320500")] == versions
    assert restarted.catalogue.current("320200") is not None  # the mirrored Wuxi scale
    assert await restarted.refresh_distribution() is None
    assert restarted.stream.score_of(SUZHOU_RESIDENT) == 812.0

    # The conformance runner, as Wuxi, against the real scores node: every score case passes
    # (the services this endpoint does not serve are skipped).
    issue_dev_certificates(world.certs, ["jiashan"])
    results = await conformance_run(
        Endpoint(
            f"127.0.0.1:{restarted.server.port}",
            world.certs / "ca.crt",
            world.certs / "wuxi.crt",
            world.certs / "wuxi.key",
            service_host("suzhou", "scores"),
            caller_code="320200",
            serving_code="320500",
            pseudonym_key_id=REGION.pseudonym_key_ids[0],
            consent_key=world.certs / "wuxi.consent.key",
            denied_cert=world.certs / "jiashan.crt",
            denied_key=world.certs / "jiashan.key",
        )
    )
    assert [r.line() for r in results if r.outcome == "FAIL"] == []
    scored = {r.name: r.outcome for r in results if r.name.startswith("score.")}
    assert set(scored.values()) == {"PASS"}, scored
    assert "score.recognize-with-home-city-consent-passes-the-consent-check" in scored


async def test_import_scores_command(region2: Region2, tmp_path: Path) -> None:
    settings = region2.settings["suzhou"]
    scores = tmp_path / "scores.csv"
    resident = make_resident_id(random.Random(7))
    scores.write_text(
        f"resident_id,score\n11010519491231002X,731\n{resident},200\n", encoding="utf-8"
    )
    env = {
        "CREDITLINK_CITY": "suzhou",
        "KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CREDITLINK_TOPIC_PREFIX": settings.topic_prefix,
        "CREDITLINK_DEV": "1",
        "PATH": "/usr/bin:/bin",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.scores",
        "import-scores",
        str(scores),
        env=env,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    stdout, stderr = out.decode(), err.decode()
    assert process.returncode == 0, stderr
    assert "imported 2 score(s) of 桂花分" in stdout
    entries = await _read_topic(settings, "credit.scores.v1")
    assert sorted(e["score"] for _, e in entries) == [200.0, 731.0]
    assert all(e["city_code"] == "320500" for _, e in entries)
    assert all(is_valid_subject_key(f"N:{k}") for k, _ in entries)
    assert "11010519491231002X" not in stdout + stderr
    assert resident not in stdout + stderr
