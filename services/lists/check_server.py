"""``CreditCheckService``: region-wide memberships of a subject and the measures of a scenario.

Answers come from this node's store (own and mirrored entries), so a check never waits on a
peer. The peer-call guard (``services/common/peer/guard.py``) has already checked the
caller, the policy, and — for ``CheckSubject`` about a natural person — the consent token;
``CheckSubjects`` checks each subject here and reports a refusal in that subject's result
only.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Final

import grpc

from creditlink.peer.v1 import common_pb2, credit_check_pb2, credit_check_pb2_grpc
from services.common.clock import china_today
from services.common.memo import BoundedMemo
from services.common.peer import Denied, PeerSecurity, current_call, deny
from services.common.policy import subject_key_problem
from services.common.region import City
from services.lists.book import BookView
from services.lists.convert import measures_to_proto, membership, timestamp
from services.lists.measures import MeasuresCatalogue
from services.lists.model import ChinaDay, ListEntry

MAX_BATCH: Final = 1000
#: Longer than any catalogue code (deploy/config/measures.yaml); a longer one is refused
#: before it is looked at, so a peer cannot make the node hash or echo megabytes.
MAX_SCENARIO_CODE: Final = 64
_CACHED_ANSWERS: Final = 100_000
_CACHED_ANSWER_BYTES: Final = 64 * 1024 * 1024
#: What an answer depends on: the subject key (validated), the catalogue's scenario code
#: (None for no scenario) and include removed — never the request's own spelling of them.
_AnswerKey = tuple[str, str | None, bool]
#: Scenario enum value -> the catalogue's code (``SCENARIO_GOVERNMENT_PROCUREMENT`` ->
#: ``GOVERNMENT_PROCUREMENT``); UNSPECIFIED and OTHER are handled apart.
_SCENARIO_CODES: Final = {
    number: name.removeprefix("SCENARIO_")
    for name, number in credit_check_pb2.Scenario.items()
    if number not in (credit_check_pb2.SCENARIO_UNSPECIFIED, credit_check_pb2.SCENARIO_OTHER)
}


class CreditCheckServicer(credit_check_pb2_grpc.CreditCheckServiceServicer):
    def __init__(
        self,
        book: BookView,
        catalogue: MeasuresCatalogue,
        security: PeerSecurity,
        peers: Sequence[City],
    ) -> None:
        self._book = book
        self._store = book.store
        self._catalogue = catalogue
        self._security = security
        self._peers = list(peers)
        self._answers: BoundedMemo[
            _AnswerKey, tuple[int, date, credit_check_pb2.CheckSubjectResponse]
        ] = BoundedMemo(_CACHED_ANSWERS, max_bytes=_CACHED_ANSWER_BYTES)
        self._day = ChinaDay()
        self._freshness_of: tuple[int, int] = (-1, -1)
        self._freshness_answer: list[credit_check_pb2.MirrorFreshness] = []

    def _scenario(
        self, scenario: credit_check_pb2.Scenario.ValueType, scenario_code: str
    ) -> str | None:
        """The catalogue's scenario code; None for no scenario; ValueError if unknown."""
        if len(scenario_code) > MAX_SCENARIO_CODE:
            raise ValueError(f"scenario_code is longer than {MAX_SCENARIO_CODE} characters")
        if scenario == credit_check_pb2.SCENARIO_UNSPECIFIED:
            return None
        if scenario == credit_check_pb2.SCENARIO_OTHER:
            code = scenario_code.strip().upper()
            if not self._catalogue.knows(code):
                raise ValueError(f"scenario_code {scenario_code!r} is not in this city's catalogue")
            return code
        known = _SCENARIO_CODES.get(scenario)
        if known is None:
            raise ValueError(f"unknown scenario {scenario}")
        return known

    def _entries(self, subject_key: str, include_removed: bool) -> list[ListEntry]:
        entries = self._store.entries_of_subject(subject_key)
        if not include_removed:
            entries = [e for e in entries if not e.removed]
        return entries

    def _cached(self, key: _AnswerKey, today: date) -> credit_check_pb2.CheckSubjectResponse | None:
        cached = self._answers.get(key)
        if cached is not None and cached[0] == self._store.generation and cached[1] == today:
            return cached[2]
        return None

    def _answer(self, key: _AnswerKey, today: date) -> credit_check_pb2.CheckSubjectResponse:
        """A response carrying the subject's key, memberships and measures, and nothing else.

        Kept, under (subject, scenario, include removed), until the store changes or the day
        does (measures depend on the date): building the messages is most of a check's own
        cost, and the same subjects are checked again and again. The memo is bounded by
        entries and by the answers' encoded size. Callers copy from it and never change it.
        """
        cached = self._cached(key, today)
        if cached is not None:
            return cached
        subject_key, scenario, include_removed = key
        entries = self._entries(subject_key, include_removed)
        measures = (
            self._catalogue.measures_for(scenario, entries, today=today)
            if scenario is not None and entries
            else []
        )
        answer = credit_check_pb2.CheckSubjectResponse(
            subject_key=subject_key,
            memberships=[membership(e) for e in entries],
            measures=measures_to_proto(measures),
        )
        # The encoded size stands for the message's memory (a few times more in objects, the
        # same for every answer), plus the key.
        size = answer.ByteSize() + len(subject_key) + len(scenario or "")
        self._answers.remember(key, (self._store.generation, today, answer), size)
        return answer

    def _freshness(self) -> list[credit_check_pb2.MirrorFreshness]:
        # Built again only when a mirror moved on: its sync time, or what the store holds.
        moved = (self._book.synced_moves, self._store.generation)
        if moved != self._freshness_of:
            synced_at = [self._book.peer_synced_at(peer.admin_code) for peer in self._peers]
            self._freshness_answer = [
                credit_check_pb2.MirrorFreshness(city=peer.admin_code, synced_at=timestamp(synced))
                for peer, synced in zip(self._peers, synced_at, strict=True)
                if synced is not None
            ]
            self._freshness_of = moved
        return self._freshness_answer

    async def CheckSubject(
        self, request: credit_check_pb2.CheckSubjectRequest, context: grpc.aio.ServicerContext
    ) -> credit_check_pb2.CheckSubjectResponse:
        if not request.purpose.strip():
            await deny(
                context, grpc.StatusCode.INVALID_ARGUMENT, "purpose-required", "purpose is required"
            )
        try:
            scenario = self._scenario(request.scenario, request.scenario_code)
        except ValueError as exc:
            await deny(context, grpc.StatusCode.INVALID_ARGUMENT, "unknown-scenario", str(exc))
        now = self._book.now()
        today = self._day.of(now)
        key = (request.subject_key, scenario, request.include_removed)
        # Only valid subject keys are ever kept, so a key answered before needs no check.
        answer = self._cached(key, today)
        if answer is None:
            if (problem := subject_key_problem(request.subject_key)) is not None:
                await deny(
                    context, grpc.StatusCode.INVALID_ARGUMENT, "invalid-subject-key", problem
                )
            answer = self._answer(key, today)
        response = credit_check_pb2.CheckSubjectResponse()
        response.CopyFrom(answer)
        response.checked_at.CopyFrom(timestamp(now))
        response.mirror_freshness.extend(self._freshness())
        return response

    async def CheckSubjects(
        self, request: credit_check_pb2.CheckSubjectsRequest, context: grpc.aio.ServicerContext
    ) -> credit_check_pb2.CheckSubjectsResponse:
        if not request.subjects or len(request.subjects) > MAX_BATCH:
            await deny(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "batch-size",
                f"a batch has 1 to {MAX_BATCH} subjects, not {len(request.subjects)}",
            )
        if not request.purpose.strip():
            await deny(
                context, grpc.StatusCode.INVALID_ARGUMENT, "purpose-required", "purpose is required"
            )
        try:
            scenario = self._scenario(request.scenario, request.scenario_code)
        except ValueError as exc:
            await deny(context, grpc.StatusCode.INVALID_ARGUMENT, "unknown-scenario", str(exc))
        call = current_call()
        today = china_today(self._book.now())
        results = []
        for index, query in enumerate(request.subjects):
            key = query.subject_key
            if (problem := subject_key_problem(key)) is not None:
                results.append(
                    _failed(key, f"subjects[{index}].subject_key", "invalid-subject-key", problem)
                )
                continue
            try:
                self._security.check_batch_subject(call, key, query.consent_token)
            except Denied as denied:
                results.append(
                    _failed(key, f"subjects[{index}].consent_token", denied.denial, denied.details)
                )
                continue
            answer = self._answer((key, scenario, request.include_removed), today)
            results.append(
                credit_check_pb2.SubjectCheckResult(
                    subject_key=key, memberships=answer.memberships, measures=answer.measures
                )
            )
        return credit_check_pb2.CheckSubjectsResponse(
            results=results, checked_at=timestamp(self._book.now())
        )


def _failed(key: str, field: str, code: str, message: str) -> credit_check_pb2.SubjectCheckResult:
    return credit_check_pb2.SubjectCheckResult(
        subject_key=key, error=common_pb2.FieldViolation(field=field, code=code, message=message)
    )
