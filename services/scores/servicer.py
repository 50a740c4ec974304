"""``ScoreRecognitionService``: the serving (home) city's scale and score recognition.

The common bootstrap (``services.common.peer``) has already, before a method runs:
identified the calling city from its verified client certificate, applied the peer policy,
and for ``RecognizeScore`` verified the consent token against the calling city, the
subject, the subject's home city (the only issuer honoured) and the ``score-recognition``
purpose (missing, malformed, expired, wrong city, wrong subject, wrong issuer, wrong purpose →
PERMISSION_DENIED with a ``creditlink-denial`` trailer). It audits every call. This servicer
adds what is specific to scores: the request must be well-formed, and every answer is recorded
on ``credit.score-recognitions.v1`` before it is sent.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final, Protocol

import grpc

from creditlink.peer.v1 import score_recognition_pb2 as pb
from creditlink.peer.v1 import score_recognition_pb2_grpc as pb_grpc
from services.common.logging import get_logger
from services.common.peer import Denied, ServiceBinding, current_call
from services.common.policy import is_valid_subject_key
from services.scores.recognition import Recognition, recognize
from services.scores.scales import ScaleCatalogue

SERVICE_NAME: Final = "creditlink.peer.v1.ScoreRecognitionService"
MAX_PURPOSE_CHARS: Final = 200
MAX_REQUEST_ID_CHARS: Final = 64
REPLAY_CACHE_SIZE: Final = 10_000


class ScoreLookup(Protocol):
    """Where the servicer finds a resident's current score.

    Example::

        class Fixed:
            def score_of(self, pseudonym: str) -> float | None:
                return {"ab" * 32: 731.0}.get(pseudonym)
    """

    def score_of(self, pseudonym: str) -> float | None: ...


class RecognitionRecorder(Protocol):
    """Records a recognition durably; raising refuses the call (nothing unrecorded leaves)."""

    async def record(self, recognition: Recognition) -> None: ...


class RecordingFailed(RuntimeError):
    """The recognition could not be written to ``credit.score-recognitions.v1``."""


def _refuse(code: grpc.StatusCode, denial: str, details: str) -> Denied:
    return Denied(code, denial, details)


class ScoreRecognitionServicer(pb_grpc.ScoreRecognitionServiceServicer):
    def __init__(
        self,
        *,
        city_code: str,
        catalogue: ScaleCatalogue,
        scores: ScoreLookup,
        recorder: RecognitionRecorder,
        incentives_for: Callable[[str, str], tuple[str, ...]],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """``incentives_for(requesting_city_code, common_grade)`` names what that city grants."""
        self._city_code = city_code
        self._catalogue = catalogue
        self._scores = scores
        self._recorder = recorder
        self._incentives_for = incentives_for
        self._clock = clock
        # (caller city, request_id) -> answer: a repeated request gets the first answer.
        self._answered: OrderedDict[tuple[str, str], Recognition] = OrderedDict()
        self._log = get_logger(component="score-recognition")

    def binding(self) -> ServiceBinding:
        return ServiceBinding(
            self, pb_grpc.add_ScoreRecognitionServiceServicer_to_server, SERVICE_NAME
        )

    async def GetScoreScale(
        self, request: pb.GetScoreScaleRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetScoreScaleResponse:
        wanted = request.distribution_version
        if wanted:
            scale = self._catalogue.version(self._city_code, wanted)
            if scale is None:
                await _refuse(
                    grpc.StatusCode.NOT_FOUND,
                    "unknown-distribution-version",
                    f"no distribution version {wanted!r} of {self._city_code}",
                ).abort(context)
        else:
            scale = self._catalogue.current(self._city_code)
            if scale is None:
                await _refuse(
                    grpc.StatusCode.UNAVAILABLE,
                    "no-distribution-yet",
                    "this city has not published a score distribution yet; retry later",
                ).abort(context)
        assert scale is not None  # abort() raised otherwise
        return pb.GetScoreScaleResponse(scale=scale.to_proto())

    async def RecognizeScore(
        self, request: pb.RecognizeScoreRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecognizeScoreResponse:
        try:
            recognition = await self._recognize(request)
        except Denied as denied:
            await denied.abort(context)
            raise  # unreachable: abort() raises
        return recognition.to_proto()

    async def _recognize(self, request: pb.RecognizeScoreRequest) -> Recognition:
        call = current_call()
        identity, grant = call.identity, call.consent
        if identity is None or grant is None:
            # The peer-call guard refuses these first; this only guards a misconfigured server.
            raise _refuse(
                grpc.StatusCode.PERMISSION_DENIED, "consent-missing", "a consent token is required"
            )
        subject_key = request.subject_key
        if not is_valid_subject_key(subject_key) or not subject_key.startswith("N:"):
            raise _refuse(
                grpc.StatusCode.INVALID_ARGUMENT,
                "invalid-subject-key",
                "subject_key must be N: followed by a pseudonym",
            )
        purpose = request.purpose.strip()
        if not purpose or len(purpose) > MAX_PURPOSE_CHARS:
            raise _refuse(
                grpc.StatusCode.INVALID_ARGUMENT,
                "invalid-purpose",
                f"purpose is required (at most {MAX_PURPOSE_CHARS} characters)",
            )
        if len(request.request_id) > MAX_REQUEST_ID_CHARS:
            raise _refuse(
                grpc.StatusCode.INVALID_ARGUMENT,
                "invalid-request-id",
                f"request_id is at most {MAX_REQUEST_ID_CHARS} characters",
            )
        request_id = request.request_id or str(uuid.uuid4())
        replay_key = (identity.city_code, request_id)
        earlier = self._answered.get(replay_key)
        if earlier is not None:
            if earlier.subject_key != subject_key:
                raise _refuse(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "request-id-reused",
                    "request_id was already used for another subject",
                )
            return earlier

        home = self._catalogue.current(self._city_code)
        if home is None:
            raise _refuse(
                grpc.StatusCode.UNAVAILABLE,
                "no-distribution-yet",
                "this city has not published a score distribution yet; retry later",
            )
        target = self._catalogue.current(identity.city_code)
        if target is None:
            raise _refuse(
                grpc.StatusCode.FAILED_PRECONDITION,
                "requester-scale-unknown",
                f"no published score scale of {identity.city_code} is known here; publish "
                "your scale (GetScoreScale) first",
            )
        pseudonym = subject_key.removeprefix("N:")
        score = self._scores.score_of(pseudonym)
        if score is None:
            raise _refuse(
                grpc.StatusCode.NOT_FOUND, "no-score", "this city holds no score for the subject"
            )
        requester = identity.city_code
        recognition = recognize(
            score=score,
            home=home,
            target=target,
            incentives_at=lambda grade: self._incentives_for(requester, grade),
            request_id=request_id,
            pseudonym=pseudonym,
            consent_reference=grant.token_id,
            now=self._clock(),
        )
        try:
            await self._recorder.record(recognition)
        except Exception as exc:
            self._log.error("recognition not recorded", subject_key=subject_key, error=repr(exc))
            raise _refuse(
                grpc.StatusCode.UNAVAILABLE,
                "recognition-not-recorded",
                "the recognition could not be recorded; retry with the same request_id",
            ) from exc
        self._answered[replay_key] = recognition
        if len(self._answered) > REPLAY_CACHE_SIZE:
            self._answered.popitem(last=False)
        return recognition
