"""``ScoreRecognitionService`` behind the real security bootstrap: real sockets, mutual TLS
with certificates made in a temporary directory, real consent tokens. No broker: scores come
from a dict and recognitions are recorded in a list (the Kafka wiring is tested in
tests/integration/test_scores_nodes.py).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from creditlink.peer.v1 import score_recognition_pb2 as pb
from creditlink.peer.v1 import score_recognition_pb2_grpc as pb_grpc
from services.common.peer import (
    DENIAL_TRAILER,
    PeerSecurity,
    secure_channel,
    start_peer_server,
)
from services.common.policy import load_policy
from services.common.settings import REPO_ROOT
from services.scores.config import load_scores_config
from services.scores.linking import QuantileFunction
from services.scores.recognition import Recognition
from services.scores.scales import PublishedScale, ScaleCatalogue
from services.scores.servicer import ScoreRecognitionServicer
from tests.peer_kit import (
    CODES,
    OTHER_PERSON,
    PERSON,
    REGION,
    ConsentKit,
    PeerPki,
    make_consent_kit,
    make_pki,
)

pytestmark = pytest.mark.timeout(60)

CONFIG = load_scores_config(REPO_ROOT / "deploy/config/score-incentives.yaml", region=REGION)
NOW = datetime(2026, 11, 27, 4, 0, tzinfo=UTC)
SUZHOU, WUXI, CHANGZHOU = CODES["suzhou"], CODES["wuxi"], CODES["changzhou"]


def _scale(
    city: str, points: list[tuple[float, float]], version: str, at: datetime
) -> PublishedScale:
    return PublishedScale(
        definition=CONFIG.scale_of(city),
        distribution_version=version,
        quantiles=QuantileFunction.from_points(points),
        population=5000,
        cuts=CONFIG.cuts,
        published_at=at,
    )


SUZHOU_V1 = _scale("suzhou", [(0.0, 0.0), (0.5, 600.0), (1.0, 1000.0)], "sz-v1", NOW)
WUXI_V1 = _scale("wuxi", [(0.0, 350.0), (0.5, 650.0), (1.0, 950.0)], "wx-v1", NOW)


@dataclass
class ListRecorder:
    recorded: list[Recognition] = field(default_factory=list)
    failing: bool = False

    async def record(self, recognition: Recognition) -> None:
        if self.failing:
            raise ConnectionError("broker unreachable")
        self.recorded.append(recognition)


@dataclass
class Node:
    pki: PeerPki
    consent: ConsentKit
    catalogue: ScaleCatalogue
    scores: dict[str, float]
    recorder: ListRecorder
    port: int

    def stub(self, caller: str) -> tuple[grpc.aio.Channel, pb_grpc.ScoreRecognitionServiceStub]:
        channel = secure_channel(
            f"127.0.0.1:{self.port}", self.pki.tls(caller), expect_city="suzhou", service="scores"
        )
        return channel, pb_grpc.ScoreRecognitionServiceStub(channel)

    def token(
        self,
        *,
        audience: str = "wuxi",
        subject: str = PERSON,
        issuer: str = "suzhou",
        now: int | None = None,
        lifetime: int = 3600,
    ) -> str:
        return self.consent.issuers[issuer].issue(
            subject_key=subject,
            audience_city=CODES[audience],
            lifetime_seconds=lifetime,
            purpose="score-recognition",
            now=now,
        )

    async def recognize(self, caller: str = "wuxi", **fields: str) -> pb.RecognizeScoreResponse:
        fields.setdefault("subject_key", PERSON)
        fields.setdefault("purpose", "deposit waiver, city library")
        channel, stub = self.stub(caller)
        async with channel:
            response: pb.RecognizeScoreResponse = await stub.RecognizeScore(
                pb.RecognizeScoreRequest(**fields), timeout=10
            )
            return response


class SimpleScores:
    def __init__(self, scores: dict[str, float]) -> None:
        self.scores = scores

    def score_of(self, pseudonym: str) -> float | None:
        return self.scores.get(pseudonym)


@pytest.fixture(scope="module")
async def node(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Node]:
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    consent = make_consent_kit()
    security = PeerSecurity(
        city="suzhou",
        region=REGION,
        policy=load_policy(REPO_ROOT / "deploy/config/peer-policy.yaml", cities=REGION.cities),
        keyring=consent.keyring,
    )
    catalogue = ScaleCatalogue()
    catalogue.add(SUZHOU_V1)
    catalogue.add(WUXI_V1)
    scores = {PERSON.removeprefix("N:"): 800.0}
    recorder = ListRecorder()
    servicer = ScoreRecognitionServicer(
        city_code=SUZHOU,
        catalogue=catalogue,
        scores=SimpleScores(scores),
        recorder=recorder,
        incentives_for=lambda city, grade: tuple(
            i.name
            for i in CONFIG.incentives_for(REGION.by_admin_code(city).key, grade)  # type: ignore[union-attr]
        ),
        clock=lambda: NOW,
    )
    server = await start_peer_server(
        bind="127.0.0.1:0",
        tls=pki.tls("suzhou"),
        services=[servicer.binding()],
        security=security,
        audit=None,
    )
    try:
        yield Node(pki, consent, catalogue, scores, recorder, server.port)
    finally:
        await server.stop(0)


async def _refusal(
    node: Node, caller: str = "wuxi", **fields: str
) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await node.recognize(caller, **fields)
    error = raised.value
    trailers = dict(error.trailing_metadata() or ())
    return error.code(), str(trailers.get(DENIAL_TRAILER)), str(error.details())


async def test_a_peer_with_consent_gets_its_equivalent(node: Node) -> None:
    response = await node.recognize(consent_token=node.token(), request_id="req-ok")
    assert response.home_city == SUZHOU
    assert response.requesting_city == WUXI
    assert response.home_scale_name == "桂花分"
    assert response.requesting_scale_name == "阿福分"
    assert response.home_score == 800.0
    assert response.home_percentile == pytest.approx(75.0)
    assert response.linked_score == pytest.approx(800.0)
    assert response.common_grade == "B"
    assert list(response.incentives) == ["图书馆免押金借阅", "医院先诊疗后付费"]
    assert (response.home_distribution_version, response.requesting_distribution_version) == (
        "sz-v1",
        "wx-v1",
    )
    recorded = node.recorder.recorded[-1]
    assert recorded.request_id == "req-ok"
    assert recorded.consent_reference
    assert recorded.pseudonym == PERSON.removeprefix("N:")


async def test_a_repeated_request_gets_the_first_answer_and_is_recorded_once(node: Node) -> None:
    token = node.token()
    before = len(node.recorder.recorded)
    first = await node.recognize(consent_token=token, request_id="req-replay")
    again = await node.recognize(consent_token=token, request_id="req-replay")
    assert first == again
    assert len(node.recorder.recorded) == before + 1


@pytest.mark.parametrize(
    ("case", "denial", "message"),
    [
        ("missing", "consent-missing", "no consent token"),
        ("expired", "consent-expired", "expired"),
        ("wrong-city", "consent-wrong-city", "another city"),
        ("wrong-subject", "consent-wrong-subject", "another subject"),
        ("wrong-issuer", "consent-wrong-issuer", "home city 320500 may consent, not 320200"),
        ("forged", "consent-bad-signature", "signature"),
    ],
)
async def test_consent_refusals(node: Node, case: str, denial: str, message: str) -> None:
    tokens = {
        "missing": "",
        "expired": node.token(now=int(time.time()) - 7200, lifetime=600),
        "wrong-city": node.token(audience="changzhou"),
        "wrong-subject": node.token(subject=OTHER_PERSON),
        "wrong-issuer": node.token(issuer="wuxi"),
        "forged": node.token()[:-6] + "AAAAAA",
    }
    before = len(node.recorder.recorded)
    code, trailer, details = await _refusal(node, consent_token=tokens[case])
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert trailer == denial
    assert message in details
    assert len(node.recorder.recorded) == before  # nothing answered, nothing recorded


async def test_a_subject_without_a_score_is_not_found(node: Node) -> None:
    code, trailer, _ = await _refusal(
        node, subject_key=OTHER_PERSON, consent_token=node.token(subject=OTHER_PERSON)
    )
    assert (code, trailer) == (grpc.StatusCode.NOT_FOUND, "no-score")


async def test_a_caller_whose_scale_is_unknown_must_publish_first(node: Node) -> None:
    code, trailer, details = await _refusal(
        node, "changzhou", consent_token=node.token(audience="changzhou")
    )
    assert (code, trailer) == (grpc.StatusCode.FAILED_PRECONDITION, "requester-scale-unknown")
    assert "publish" in details


async def test_purpose_is_required(node: Node) -> None:
    code, trailer, _ = await _refusal(node, consent_token=node.token(), purpose=" ")
    assert (code, trailer) == (grpc.StatusCode.INVALID_ARGUMENT, "invalid-purpose")


async def test_organisations_have_no_personal_score(node: Node) -> None:
    code, trailer, _ = await _refusal(node, subject_key="L:91320500MA1W8XY409")
    assert (code, trailer) == (grpc.StatusCode.PERMISSION_DENIED, "data-class-denied")


async def test_an_unrecorded_recognition_is_not_answered(node: Node) -> None:
    node.recorder.failing = True
    try:
        code, trailer, _ = await _refusal(node, consent_token=node.token(), request_id="req-fail")
    finally:
        node.recorder.failing = False
    assert (code, trailer) == (grpc.StatusCode.UNAVAILABLE, "recognition-not-recorded")
    # Retrying with the same request_id once recording works answers normally.
    assert (await node.recognize(consent_token=node.token(), request_id="req-fail")).home_score


async def test_get_score_scale_current_and_by_version(node: Node) -> None:
    channel, stub = node.stub("changzhou")
    async with channel:
        current = await stub.GetScoreScale(pb.GetScoreScaleRequest(), timeout=10)
        assert PublishedScale.from_proto(current.scale).quantiles == SUZHOU_V1.quantiles
        named = await stub.GetScoreScale(
            pb.GetScoreScaleRequest(distribution_version="sz-v1"), timeout=10
        )
        assert named.scale.distribution_version == "sz-v1"
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.GetScoreScale(
                pb.GetScoreScaleRequest(distribution_version="nope"), timeout=10
            )
        assert raised.value.code() is grpc.StatusCode.NOT_FOUND


async def test_after_a_scale_update_new_recognitions_use_the_new_version(node: Node) -> None:
    old = await node.recognize(consent_token=node.token(), request_id="req-before-update")
    old_record = node.recorder.recorded[-1]
    # Suzhou publishes a new distribution (everybody scored higher), Wuxi a new one too.
    node.catalogue.add(
        _scale(
            "suzhou", [(0.0, 100.0), (0.5, 800.0), (1.0, 1000.0)], "sz-v2", NOW + timedelta(days=1)
        )
    )
    node.catalogue.add(
        _scale("wuxi", [(0.0, 350.0), (0.5, 700.0), (1.0, 950.0)], "wx-v2", NOW + timedelta(days=1))
    )
    new = await node.recognize(consent_token=node.token(), request_id="req-after-update")
    assert (new.home_distribution_version, new.requesting_distribution_version) == (
        "sz-v2",
        "wx-v2",
    )
    assert new.home_percentile == pytest.approx(50.0)  # 800 is now the median
    assert new.linked_score == pytest.approx(700.0)
    # The earlier answer and its record keep naming the versions they used.
    assert (old.home_distribution_version, old.requesting_distribution_version) == (
        "sz-v1",
        "wx-v1",
    )
    assert old_record.home_distribution_version == "sz-v1"
    assert (await node.recognize(consent_token=node.token(), request_id="req-before-update")) == old
    # The old version stays retrievable, so the old answer can be reproduced.
    channel, stub = node.stub("wuxi")
    async with channel:
        again = await stub.GetScoreScale(
            pb.GetScoreScaleRequest(distribution_version="sz-v1"), timeout=10
        )
    assert PublishedScale.from_proto(again.scale).quantiles.percentile_rank(800.0) == pytest.approx(
        old.home_percentile / 100
    )
