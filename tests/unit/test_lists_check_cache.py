"""The credit-check answer memo (services/lists/check_server.py): keyed only by what an answer
depends on, bounded by bytes as well as entries, and never fed an oversized scenario code."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import grpc
import pytest

from creditlink.peer.v1 import credit_check_pb2
from services.common.avro import AvroSerde
from services.common.peer import DENIAL_TRAILER, PeerSecurity
from services.common.policy import load_policy
from services.lists import check_server
from services.lists.book import ListBook
from services.lists.check_server import MAX_SCENARIO_CODE, CreditCheckServicer
from services.lists.measures import load_measures
from services.lists.store import ListStore
from tests.kit.lists import (
    SUZHOU,
    Clock,
    MemoryChangelog,
    RefusalRecorder,
    incoming,
    list_decision,
    organisation_key,
)
from tests.peer_kit import REGION, make_consent_kit


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, denial: str | None) -> None:
        super().__init__(code, denial)
        self.code = code
        self.denial = denial


class Context:
    """Enough of a servicer context for CheckSubject: abort raises what it was told."""

    async def abort(
        self, code: grpc.StatusCode, details: str, trailing_metadata: Any = ()
    ) -> NoReturn:
        raise Aborted(code, dict(trailing_metadata).get(DENIAL_TRAILER))


async def _servicer(directory: Path) -> CreditCheckServicer:
    changelog = MemoryChangelog()
    book = ListBook(
        ListStore(directory, AvroSerde(), own_city=SUZHOU),
        changelog,
        RefusalRecorder(),
        changelog,
        own_city=SUZHOU,
        changelog_topic="credit.list-changes.v1",
        clock=Clock(),
    )
    await book.apply_records(
        [
            incoming(list_decision(organisation_key(n), decision_number=f"D{n}"), offset=n)
            for n in range(20)
        ]
    )
    security = PeerSecurity(
        city="suzhou",
        region=REGION,
        policy=load_policy(cities=REGION.cities.keys()),
        keyring=make_consent_kit().keyring,
    )
    return CreditCheckServicer(book, load_measures(), security, REGION.peers_of("suzhou"))


def _request(subject: int = 0, **fields: Any) -> credit_check_pb2.CheckSubjectRequest:
    given: dict[str, Any] = {"scenario": credit_check_pb2.SCENARIO_TENDERING, "purpose": "ZB-1"}
    return credit_check_pb2.CheckSubjectRequest(
        subject_key=organisation_key(subject), **(given | fields)
    )


async def test_codes_the_answer_ignores_share_one_cached_answer(tmp_path: Path) -> None:
    """With a contract scenario the answer ignores scenario_code; distinct codes must not each
    pin an answer."""
    servicer = await _servicer(tmp_path)
    for n in range(50):
        answer = await servicer.CheckSubject(_request(scenario_code=f"X{n}"), Context())
        assert [m.entry_key for m in answer.memberships] != []
    assert len(servicer._answers) == 1


async def test_an_oversized_scenario_code_is_refused_and_not_kept(tmp_path: Path) -> None:
    servicer = await _servicer(tmp_path)
    for scenario in (credit_check_pb2.SCENARIO_TENDERING, credit_check_pb2.SCENARIO_OTHER):
        with pytest.raises(Aborted) as refused:
            await servicer.CheckSubject(
                _request(scenario=scenario, scenario_code="Q" * (MAX_SCENARIO_CODE + 1)),
                Context(),
            )
        assert (refused.value.code, refused.value.denial) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown-scenario",
        )
    assert len(servicer._answers) == 0


async def test_the_answers_are_bounded_by_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(check_server, "_CACHED_ANSWER_BYTES", 2_000)
    servicer = await _servicer(tmp_path)
    for subject in range(20):
        answer = await servicer.CheckSubject(_request(subject), Context())
        assert len(answer.memberships) == 1
        assert servicer._answers.held_bytes <= 2_000
    assert 0 < len(servicer._answers) < 20
