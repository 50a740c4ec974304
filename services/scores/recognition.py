"""One mutual recognition: a home-city score, linked to the requesting city's scale.

Pure: given the two published scale versions, the score and the incentive catalogue, the
result is fully determined, so any party holding those versions can reproduce it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from creditlink.peer.v1 import score_recognition_pb2 as pb
from services.common.pseudonym import NATURAL_PERSON_PREFIX
from services.scores.linking import link_score
from services.scores.scales import PublishedScale

SCHEMA = "creditlink.v1.ScoreRecognition"
EVENT_TYPE = "cn.creditlink.score.recognized.v1"


@dataclass(frozen=True, slots=True)
class Recognition:
    """What ``RecognizeScore`` answers and ``credit.score-recognitions.v1`` records."""

    request_id: str
    home_city: str
    requesting_city: str
    pseudonym: str
    consent_reference: str
    home_scale_name: str
    home_score: float
    home_percentile: float
    home_distribution_version: str
    requesting_scale_name: str
    linked_score: float
    requesting_distribution_version: str
    common_grade: str
    common_grade_cuts_version: str
    incentives: tuple[str, ...]
    recognised_at: datetime

    @property
    def subject_key(self) -> str:
        return NATURAL_PERSON_PREFIX + self.pseudonym

    def to_record(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "home_city": self.home_city,
            "requesting_city": self.requesting_city,
            "pseudonym": self.pseudonym,
            "consent_reference": self.consent_reference,
            "home_scale_name": self.home_scale_name,
            "home_score": self.home_score,
            "home_percentile": self.home_percentile,
            "home_distribution_version": self.home_distribution_version,
            "requesting_scale_name": self.requesting_scale_name,
            "linked_score": self.linked_score,
            "requesting_distribution_version": self.requesting_distribution_version,
            "common_grade": self.common_grade,
            "common_grade_cuts_version": self.common_grade_cuts_version,
            "incentives": list(self.incentives),
            "recognised_at": self.recognised_at,
        }

    def to_proto(self) -> pb.RecognizeScoreResponse:
        """The contract's response; the percentile in 0–100 as the contract states."""
        at = Timestamp()
        at.FromDatetime(self.recognised_at)
        return pb.RecognizeScoreResponse(
            request_id=self.request_id,
            subject_key=self.subject_key,
            home_city=self.home_city,
            requesting_city=self.requesting_city,
            home_scale_name=self.home_scale_name,
            home_score=self.home_score,
            home_percentile=self.home_percentile * 100.0,
            home_distribution_version=self.home_distribution_version,
            requesting_scale_name=self.requesting_scale_name,
            linked_score=self.linked_score,
            requesting_distribution_version=self.requesting_distribution_version,
            common_grade=self.common_grade,
            common_grade_cuts_version=self.common_grade_cuts_version,
            incentives=list(self.incentives),
            recognised_at=at,
        )


def recognize(
    *,
    score: float,
    home: PublishedScale,
    target: PublishedScale,
    incentives_at: Callable[[str], Iterable[str]],
    request_id: str,
    pseudonym: str,
    consent_reference: str,
    now: datetime,
) -> Recognition:
    """Link ``score`` (on ``home``'s scale) to ``target``'s scale and grade it.

    The common grade comes from the home version's published cuts, applied to the score's
    percentile rank in the home distribution. ``incentives_at(common_grade)`` gives what the
    requesting city grants at that grade.
    """
    percentile = home.quantiles.percentile_rank(score)
    # Continuization reaches half a step past the ends of a scale; a score never does.
    bounds = target.definition
    linked = min(
        max(link_score(score, home.quantiles, target.quantiles), bounds.min_score), bounds.max_score
    )
    grade = home.cuts.grade_for(percentile)
    return Recognition(
        request_id=request_id,
        home_city=home.city_code,
        requesting_city=target.city_code,
        pseudonym=pseudonym,
        consent_reference=consent_reference,
        home_scale_name=home.scale_name,
        home_score=score,
        home_percentile=percentile,
        home_distribution_version=home.distribution_version,
        requesting_scale_name=target.scale_name,
        linked_score=linked,
        requesting_distribution_version=target.distribution_version,
        common_grade=grade,
        common_grade_cuts_version=home.cuts.version,
        incentives=tuple(incentives_at(grade)),
        recognised_at=now.astimezone(UTC).replace(microsecond=(now.microsecond // 1000) * 1000),
    )
