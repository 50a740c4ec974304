"""Conformance cases for the creditlink peer contracts, runnable against any endpoint.

A peer city points it at its own implementation (or ours) with the certificate of a city the
endpoint's policy lets call it::

    python -m contracts.conformance --target 127.0.0.1:24151 --caller wuxi --serving suzhou \\
        --ca deploy/local/certs/ca.crt --cert deploy/local/certs/wuxi.crt \\
        --key deploy/local/certs/wuxi.key --consent-key deploy/local/certs/wuxi.consent.key \\
        --denied-cert deploy/local/certs/jiashan.crt --denied-key deploy/local/certs/jiashan.key \\
        --server-name lists.suzhou.creditlink.local [--region deploy/config/region.yaml] \\
        [--only list-sync]

``--consent-key`` is the calling city's own consent signing key: with it the runner makes a
genuine token for one of the caller's residents (which the endpoint must honour), the same token
with a broken signature, and a token for one of the serving city's residents (which the endpoint
must refuse: only a person's home city may consent). ``--denied-cert`` is the certificate of a
region city the endpoint's policy names for nothing: every call with it must be refused. Without
them those cases FAIL: the runner cannot show the endpoint checks who gave consent or applies a
policy, and a pass would claim what was not tested.

It prints one line per case — ``PASS``, ``FAIL`` (with the reason) or ``SKIP`` (the endpoint
does not serve that service, or has no data the case needs) — then a summary line
``N passed, N failed, N skipped``, and exits 1 if any case failed.

The cases use only what the contracts promise: status codes and ``creditlink-denial``
trailers of refusals, shapes of answers, resumable streams, and the digest algorithm. They
need no data in the endpoint except where they say so (and then skip without it).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from creditlink.peer.v1 import (
    alert_exchange_pb2,
    alert_exchange_pb2_grpc,
    common_pb2,
    credit_check_pb2,
    credit_check_pb2_grpc,
    list_sync_pb2,
    list_sync_pb2_grpc,
    score_recognition_pb2,
    score_recognition_pb2_grpc,
)
from services.common.consent import ConsentIssuer, load_private_key
from services.common.list_digest import DigestLine, bucket_digests, bucket_of
from services.common.region import load_region

DENIAL_TRAILER = "creditlink-denial"
TIMEOUT = 10.0
ORG_KEY = "L:91320500MA1W8XY409"
UNKNOWN_PERSON = "N:" + "0" * 63 + "1"
# Malformed without being personal data: the case must not send a resident ID number, which
# the endpoint would have to keep out of its audit records (docs/design.md §4.8).
MALFORMED_KEY = "X:not-a-subject-key"
PACKAGE = "creditlink.peer.v1."
HISTORY_PURPOSE = "credit-history"
SCORE_PURPOSE = "score-recognition"  # deploy/config/consent-purposes.yaml: a plain check
DIGEST_VECTORS = Path(__file__).resolve().parent / "vectors" / "list-digest.json"


class CaseFailed(AssertionError):
    """The endpoint did not do what the contract says."""


class CaseSkipped(Exception):
    """The case does not apply to this endpoint."""


@dataclass(frozen=True)
class Endpoint:
    target: str
    ca: Path
    cert: Path
    key: Path
    server_name: str | None = None
    #: The calling and serving cities' codes and the region's pseudonym key id, which the
    #: consent cases need to name a resident of either city.
    caller_code: str = ""
    serving_code: str = ""
    pseudonym_key_id: str = ""
    #: The calling city's consent signing key (PEM, Ed25519).
    consent_key: Path | None = None
    #: A certificate and key of a region city the endpoint's policy names for nothing.
    denied_cert: Path | None = None
    denied_key: Path | None = None
    #: An alert the serving city raised that targets the calling city, which the runner may
    #: acknowledge (one the operator raised for the run).
    alert_id: str = ""

    def credentials(
        self, *, cert: Path | None = None, key: Path | None = None, with_client_cert: bool = True
    ) -> grpc.ChannelCredentials:
        if not with_client_cert:
            return grpc.ssl_channel_credentials(root_certificates=self.ca.read_bytes())
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=(key or self.key).read_bytes(),
            certificate_chain=(cert or self.cert).read_bytes(),
        )

    def channel(self, credentials: grpc.ChannelCredentials | None = None) -> grpc.aio.Channel:
        options: list[tuple[str, Any]] = []
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return grpc.aio.secure_channel(
            self.target, credentials or self.credentials(), options=options
        )


@dataclass
class Session:
    """What every case may use: the endpoint, an open channel, the services it serves."""

    endpoint: Endpoint
    channel: grpc.aio.Channel
    services: set[str] = field(default_factory=set)

    def require(self, service: str) -> None:
        if PACKAGE + service not in self.services:
            raise CaseSkipped(f"endpoint does not serve {service}")


Case = Callable[[Session], Awaitable[None]]


@dataclass(frozen=True)
class CaseResult:
    name: str
    outcome: str  # PASS | FAIL | SKIP
    detail: str = ""

    def line(self) -> str:
        return f"{self.outcome} {self.name}" + (f" - {self.detail}" if self.detail else "")


CASES: list[tuple[str, Case]] = []


def case(name: str) -> Callable[[Case], Case]:
    def register(function: Case) -> Case:
        CASES.append((name, function))
        return function

    return register


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CaseFailed(message)


async def expect_status(
    call: Awaitable[Any], code: grpc.StatusCode, *, denial_prefix: str | None = None
) -> grpc.aio.AioRpcError:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        expect(
            error.code() == code,
            f"expected {code.name}, got {error.code().name}: {error.details()}",
        )
        if denial_prefix is not None:
            denial = dict(error.trailing_metadata() or ()).get(DENIAL_TRAILER)
            expect(
                isinstance(denial, str) and denial.startswith(denial_prefix),
                f"expected a {DENIAL_TRAILER} trailer starting {denial_prefix!r}, got {denial!r}",
            )
        return error
    raise CaseFailed(f"expected {code.name}, the call succeeded")


async def reflected_services(channel: grpc.aio.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    call = stub.ServerReflectionInfo(iter([request]), timeout=TIMEOUT)
    async for response in call:
        return {service.name for service in response.list_services_response.service}
    return set()


# --- transport ----------------------------------------------------------------------------


@case("transport.health-serving")
async def _health(session: Session) -> None:
    answer = await health_pb2_grpc.HealthStub(session.channel).Check(
        health_pb2.HealthCheckRequest(), timeout=TIMEOUT
    )
    expect(answer.status == health_pb2.HealthCheckResponse.SERVING, f"health is {answer.status}")


@case("transport.reflection-lists-peer-services")
async def _reflection(session: Session) -> None:
    expect(
        "grpc.health.v1.Health" in session.services, f"reflection lists {sorted(session.services)}"
    )
    expect(
        any(s.startswith(PACKAGE) for s in session.services),
        "no creditlink.peer.v1 service reflected",
    )


@case("transport.no-client-certificate-refused")
async def _no_cert(session: Session) -> None:
    async with session.endpoint.channel(
        session.endpoint.credentials(with_client_cert=False)
    ) as channel:
        await expect_status(
            health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=TIMEOUT
            ),
            grpc.StatusCode.UNAVAILABLE,
        )


@case("transport.foreign-ca-certificate-refused")
async def _foreign(session: Session) -> None:
    from services.common.certs import issue_city_certificate, new_ca, new_city_ca

    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp) / "foreign.crt", Path(tmp) / "foreign.key"
        foreign = new_city_ca(new_ca("conformance foreign CA"), "wuxi")
        issue_city_certificate(foreign, "wuxi").write(cert, key)
        async with session.endpoint.channel(
            session.endpoint.credentials(cert=cert, key=key)
        ) as channel:
            await expect_status(
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=TIMEOUT
                ),
                grpc.StatusCode.UNAVAILABLE,
            )


# --- CreditCheckService -------------------------------------------------------------------


def _check_stub(session: Session) -> credit_check_pb2_grpc.CreditCheckServiceStub:
    session.require("CreditCheckService")
    return credit_check_pb2_grpc.CreditCheckServiceStub(session.channel)


@case("credit-check.organisation-answered")
async def _check_org(session: Session) -> None:
    response = await _check_stub(session).CheckSubject(
        credit_check_pb2.CheckSubjectRequest(
            subject_key=ORG_KEY,
            scenario=credit_check_pb2.SCENARIO_GOVERNMENT_PROCUREMENT,
            purpose="conformance",
        ),
        timeout=TIMEOUT,
    )
    expect(response.subject_key == ORG_KEY, "subject_key not echoed")
    for membership in response.memberships:
        expect(membership.entry_key != "", "membership without entry_key")
        expect(
            membership.list_type != common_pb2.LIST_TYPE_UNSPECIFIED, "membership without list_type"
        )
        expect(
            len(membership.issuing_city) == 6 and membership.issuing_city.isdigit(),
            "issuing_city is not a code",
        )
        expect(
            membership.status != common_pb2.LIST_ENTRY_STATUS_UNSPECIFIED,
            "membership without status",
        )
        expect(
            membership.objection_pending
            == (membership.status == common_pb2.LIST_ENTRY_STATUS_OBJECTION_PENDING),
            "objection_pending disagrees with status",
        )


@case("credit-check.empty-purpose-invalid-argument")
async def _check_no_purpose(session: Session) -> None:
    await expect_status(
        _check_stub(session).CheckSubject(
            credit_check_pb2.CheckSubjectRequest(subject_key=ORG_KEY), timeout=TIMEOUT
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


@case("credit-check.malformed-subject-invalid-argument")
async def _check_bad_key(session: Session) -> None:
    await expect_status(
        _check_stub(session).CheckSubject(
            credit_check_pb2.CheckSubjectRequest(subject_key=MALFORMED_KEY, purpose="conformance"),
            timeout=TIMEOUT,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        denial_prefix="invalid-subject-key",
    )


@case("credit-check.person-without-consent-permission-denied")
async def _check_no_consent(session: Session) -> None:
    await expect_status(
        _check_stub(session).CheckSubject(
            credit_check_pb2.CheckSubjectRequest(subject_key=UNKNOWN_PERSON, purpose="conformance"),
            timeout=TIMEOUT,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        denial_prefix="consent-missing",
    )


@case("credit-check.person-with-forged-consent-permission-denied")
async def _check_forged(session: Session) -> None:
    forged = "clc1.eyJ2IjoxfQ.AAAA"
    await expect_status(
        _check_stub(session).CheckSubject(
            credit_check_pb2.CheckSubjectRequest(
                subject_key=UNKNOWN_PERSON, purpose="conformance", consent_token=forged
            ),
            timeout=TIMEOUT,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        denial_prefix="consent-",
    )


@case("credit-check.batch-answers-each-subject-in-order")
async def _check_batch(session: Session) -> None:
    keys = [ORG_KEY, UNKNOWN_PERSON, "L:91320200MA1MXXXX0X"]
    response = await _check_stub(session).CheckSubjects(
        credit_check_pb2.CheckSubjectsRequest(
            subjects=[credit_check_pb2.SubjectQuery(subject_key=k) for k in keys],
            purpose="conformance",
        ),
        timeout=TIMEOUT,
    )
    expect(
        [r.subject_key for r in response.results] == keys, "results not one per subject in order"
    )
    expect(
        response.results[1].error.code == "consent-missing",
        f"person without consent: {response.results[1].error}",
    )
    expect(
        response.results[0].error.code == "", f"organisation refused: {response.results[0].error}"
    )


@case("credit-check.batch-over-1000-invalid-argument")
async def _check_batch_limit(session: Session) -> None:
    await expect_status(
        _check_stub(session).CheckSubjects(
            credit_check_pb2.CheckSubjectsRequest(
                subjects=[credit_check_pb2.SubjectQuery(subject_key=ORG_KEY)] * 1001,
                purpose="conformance",
            ),
            timeout=TIMEOUT,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


@case("credit-check.oversized-request-resource-exhausted")
async def _check_oversized(session: Session) -> None:
    await expect_status(
        _check_stub(session).CheckSubject(
            credit_check_pb2.CheckSubjectRequest(
                subject_key=ORG_KEY, purpose="x" * (5 * 1024 * 1024)
            ),
            timeout=TIMEOUT,
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )


# --- ListSyncService ----------------------------------------------------------------------


def _resident_of(session: Session, city_code: str, seed: str) -> str:
    """The subject key of a (made-up) resident whose number was issued in ``city_code``: the
    division in the key names their home city."""
    key_id = session.endpoint.pseudonym_key_id or "0" * 8
    digest = hashlib.sha256(f"conformance {seed}".encode()).hexdigest()
    return f"N:{city_code}.{key_id}.{digest}"


def _caller_issuer(session: Session) -> ConsentIssuer:
    endpoint = session.endpoint
    if endpoint.consent_key is None or not endpoint.caller_code or not endpoint.serving_code:
        raise CaseFailed(
            "not shown: give --consent-key (the calling city's consent key), --caller and "
            "--serving, so that the runner can test who may consent"
        )
    return ConsentIssuer(endpoint.caller_code, load_private_key(endpoint.consent_key))


def _check_person(
    session: Session, subject_key: str, token: str
) -> Awaitable[credit_check_pb2.CheckSubjectResponse]:
    call: Awaitable[credit_check_pb2.CheckSubjectResponse] = _check_stub(session).CheckSubject(
        credit_check_pb2.CheckSubjectRequest(
            subject_key=subject_key, purpose="conformance", consent_token=token
        ),
        timeout=TIMEOUT,
    )
    return call


def _home_token(session: Session, issuer: ConsentIssuer, subject_key: str) -> str:
    return issuer.issue(
        subject_key=subject_key,
        audience_city=session.endpoint.caller_code,
        lifetime_seconds=600,
        purpose=HISTORY_PURPOSE,
    )


@case("consent.home-city-consent-answered")
async def _consent_home(session: Session) -> None:
    issuer = _caller_issuer(session)
    resident = _resident_of(session, session.endpoint.caller_code, "caller resident")
    response = await _check_person(session, resident, _home_token(session, issuer, resident))
    expect(response.subject_key == resident, "subject_key not echoed")


@case("consent.well-formed-token-with-a-broken-signature-permission-denied")
async def _consent_forged(session: Session) -> None:
    issuer = _caller_issuer(session)
    resident = _resident_of(session, session.endpoint.caller_code, "caller resident")
    head, body, signature = _home_token(session, issuer, resident).split(".")
    # Every claim is right and the key id is the caller's own: only the signature is not.
    broken = ("A" if signature[0] != "A" else "B") + signature[1:]
    await expect_status(
        _check_person(session, resident, f"{head}.{body}.{broken}"),
        grpc.StatusCode.PERMISSION_DENIED,
        denial_prefix="consent-",
    )


@case("consent.caller-consenting-for-the-serving-citys-resident-permission-denied")
async def _consent_self_issued(session: Session) -> None:
    issuer = _caller_issuer(session)
    resident = _resident_of(session, session.endpoint.serving_code, "serving resident")
    await expect_status(
        _check_person(session, resident, _home_token(session, issuer, resident)),
        grpc.StatusCode.PERMISSION_DENIED,
        denial_prefix="consent-",
    )


@case("policy.caller-the-policy-names-for-nothing-permission-denied")
async def _policy_denied(session: Session) -> None:
    session.require("CreditCheckService")
    endpoint = session.endpoint
    if endpoint.denied_cert is None or endpoint.denied_key is None:
        raise CaseFailed(
            "not shown: give --denied-cert/--denied-key (a region city the endpoint's policy "
            "names for nothing), so that the runner can test the policy denies by default"
        )
    credentials = endpoint.credentials(cert=endpoint.denied_cert, key=endpoint.denied_key)
    async with endpoint.channel(credentials) as channel:
        await expect_status(
            credit_check_pb2_grpc.CreditCheckServiceStub(channel).CheckSubject(
                credit_check_pb2.CheckSubjectRequest(subject_key=ORG_KEY, purpose="conformance"),
                timeout=TIMEOUT,
            ),
            grpc.StatusCode.PERMISSION_DENIED,
        )


@case("credit-check.listed-subject-has-its-membership")
async def _check_listed(session: Session) -> None:
    check = _check_stub(session)
    entries = await _all_entries(_sync_stub(session), 16, 500)
    listed = [e for e in entries if e.subject_key.startswith("L:")]
    if not listed:
        raise CaseSkipped("the endpoint lists no organisation to check")
    for entry in listed[:3]:
        response = await check.CheckSubject(
            credit_check_pb2.CheckSubjectRequest(
                subject_key=entry.subject_key, purpose="conformance", include_removed=True
            ),
            timeout=TIMEOUT,
        )
        expect(
            entry.entry_key in {m.entry_key for m in response.memberships},
            f"{entry.entry_key} is listed (ListEntries) but CheckSubject of "
            f"{entry.subject_key} does not return it",
        )


def _sync_stub(session: Session) -> list_sync_pb2_grpc.ListSyncServiceStub:
    session.require("ListSyncService")
    return list_sync_pb2_grpc.ListSyncServiceStub(session.channel)


async def _all_entries(
    stub: list_sync_pb2_grpc.ListSyncServiceStub, bucket_count: int, page_size: int
) -> list[list_sync_pb2.ListEntry]:
    entries: list[list_sync_pb2.ListEntry] = []
    token = ""
    for _ in range(100_000):
        page = await stub.ListEntries(
            list_sync_pb2.ListEntriesRequest(
                bucket_count=bucket_count, page_size=page_size, page_token=token
            ),
            timeout=TIMEOUT,
        )
        entries.extend(page.entries)
        token = page.next_page_token
        if not token:
            return entries
    raise CaseFailed("ListEntries paging never ended")


@case("list-sync.digest-algorithm-matches-published-vectors")
async def _digest_vectors(session: Session) -> None:
    """The runner's own digest against contracts/vectors/list-digest.json, so a peer and this
    runner cannot agree on a wrong algorithm."""
    vectors = json.loads(DIGEST_VECTORS.read_text(encoding="utf-8"))
    lines = [DigestLine(e["entry_key"], e["version"], e["status"]) for e in vectors["entries"]]
    for vector in vectors["cases"]:
        count = vector["bucket_count"]
        for key, bucket in vector["bucket_of"].items():
            expect(bucket_of(key, count) == bucket, f"bucket of {key} at {count} buckets")
        got = [
            {"bucket": b.bucket, "entry_count": b.entry_count, "sha256": b.sha256.hex()}
            for b in bucket_digests(lines, count)
        ]
        expect(got == vector["buckets"], f"digest at {count} buckets differs from the vectors")


@case("list-sync.digest-shape")
async def _digest_shape(session: Session) -> None:
    digest = await _sync_stub(session).GetListDigest(
        list_sync_pb2.GetListDigestRequest(bucket_count=16), timeout=TIMEOUT
    )
    expect(digest.bucket_count == 16, f"bucket_count {digest.bucket_count}")
    expect(
        [b.bucket for b in digest.buckets] == list(range(16)), "not one digest per bucket in order"
    )
    expect(all(len(b.sha256) == 32 for b in digest.buckets), "bucket hash is not 32 bytes")
    expect(
        len(digest.issuing_city) == 6 and digest.issuing_city.isdigit(),
        "issuing_city is not a code",
    )


@case("list-sync.digest-bad-bucket-count-invalid-argument")
async def _digest_bad(session: Session) -> None:
    await expect_status(
        _sync_stub(session).GetListDigest(
            list_sync_pb2.GetListDigestRequest(bucket_count=3), timeout=TIMEOUT
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


@case("list-sync.entries-match-digest")
async def _entries_match(session: Session) -> None:
    stub = _sync_stub(session)
    digest = await stub.GetListDigest(
        list_sync_pb2.GetListDigestRequest(bucket_count=16), timeout=TIMEOUT
    )
    entries = await _all_entries(stub, 16, 500)
    lines = [
        DigestLine(
            e.entry_key,
            e.version,
            common_pb2.ListEntryStatus.Name(e.status).removeprefix("LIST_ENTRY_STATUS_"),
        )
        for e in entries
    ]
    ours = bucket_digests(lines, 16)
    for theirs, mine in zip(digest.buckets, ours, strict=True):
        expect(
            (theirs.entry_count, theirs.sha256) == (mine.entry_count, mine.sha256),
            f"bucket {mine.bucket}: digest says {theirs.entry_count} entries "
            f"({theirs.sha256.hex()[:12]}), ListEntries gives {mine.entry_count} "
            f"({mine.sha256.hex()[:12]})",
        )


@case("list-sync.entries-paging-complete-and-ordered")
async def _entries_paging(session: Session) -> None:
    stub = _sync_stub(session)
    whole = await _all_entries(stub, 16, 1000)
    if len(whole) < 2:
        raise CaseSkipped("fewer than 2 entries to page through")
    # Small pages, but at most ~50 calls: a peer's per-caller rate limit is not the subject.
    size = max(1, len(whole) // 50)
    paged = await _all_entries(stub, 16, size)
    keys = [e.entry_key for e in paged]
    expect(
        keys == sorted(keys, key=lambda k: k.encode()),
        "page entries not in ascending entry_key order",
    )
    expect(len(set(keys)) == len(keys), "an entry appears on two pages")
    expect(
        set(keys) == {e.entry_key for e in whole},
        f"page_size {size} and page_size 1000 give different entries",
    )


@case("list-sync.stream-bad-cursor-invalid-argument")
async def _stream_bad_cursor(session: Session) -> None:
    async def first() -> None:
        call = _sync_stub(session).StreamListChanges(
            list_sync_pb2.StreamListChangesRequest(cursor=b"\x00not-a-cursor-we-issued"),
            timeout=TIMEOUT,
        )
        async for _ in call:
            break

    await expect_status(first(), grpc.StatusCode.INVALID_ARGUMENT)


async def _backlog(
    stub: list_sync_pb2_grpc.ListSyncServiceStub, cursor: bytes
) -> tuple[list[tuple[str, bytes]], bool]:
    changes: list[tuple[str, bytes]] = []
    caught_up = False
    call = stub.StreamListChanges(
        list_sync_pb2.StreamListChangesRequest(cursor=cursor, follow=False), timeout=TIMEOUT
    )
    async for message in call:
        if message.HasField("change"):
            expect(not caught_up, "a change after the caught_up marker without follow")
            expect(message.cursor != b"", "change without a cursor")
            changes.append((message.change.change_id, message.cursor))
        elif message.HasField("caught_up"):
            caught_up = True
    return changes, caught_up


@case("list-sync.stream-resumes-without-gap-or-duplicate")
async def _stream_resume(session: Session) -> None:
    stub = _sync_stub(session)
    changes, caught_up = await _backlog(stub, b"")
    expect(caught_up, "the backlog did not end with a caught_up marker")
    if len(changes) < 2:
        raise CaseSkipped("fewer than 2 retained changes to resume between")
    middle = len(changes) // 2
    resumed, _ = await _backlog(stub, changes[middle - 1][1])
    expect(
        [c for c, _ in resumed] == [c for c, _ in changes[middle:]],
        f"resuming after change {middle} gave {len(resumed)} changes, "
        f"expected {len(changes) - middle}",
    )


@case("list-sync.follow-sends-caught-up")
async def _stream_follow(session: Session) -> None:
    call = _sync_stub(session).StreamListChanges(
        list_sync_pb2.StreamListChangesRequest(follow=True), timeout=TIMEOUT
    )
    try:
        async for message in call:
            if message.HasField("caught_up"):
                return
    finally:
        call.cancel()
    raise CaseFailed("the followed stream ended without a caught_up marker")


# --- ScoreRecognitionService --------------------------------------------------------------


def _score_stub(session: Session) -> score_recognition_pb2_grpc.ScoreRecognitionServiceStub:
    session.require("ScoreRecognitionService")
    return score_recognition_pb2_grpc.ScoreRecognitionServiceStub(session.channel)


@case("score.scale-shape")
async def _scale(session: Session) -> None:
    scale = (
        await _score_stub(session).GetScoreScale(
            score_recognition_pb2.GetScoreScaleRequest(), timeout=TIMEOUT
        )
    ).scale
    expect(scale.scale_name != "", "scale without a name")
    expect(scale.min_score < scale.max_score, "min_score is not below max_score")
    ps = [q.p for q in scale.quantiles]
    expect(
        len(ps) >= 2 and ps == sorted(ps) and ps[0] == 0 and ps[-1] == 1,
        "quantiles do not run from p=0 to p=1",
    )


@case("score.unknown-version-not-found")
async def _scale_missing(session: Session) -> None:
    await expect_status(
        _score_stub(session).GetScoreScale(
            score_recognition_pb2.GetScoreScaleRequest(
                distribution_version=f"no-such-{uuid.uuid4().hex}"
            ),
            timeout=TIMEOUT,
        ),
        grpc.StatusCode.NOT_FOUND,
    )


@case("score.recognize-without-consent-permission-denied")
async def _recognize(session: Session) -> None:
    await expect_status(
        _score_stub(session).RecognizeScore(
            score_recognition_pb2.RecognizeScoreRequest(
                subject_key=UNKNOWN_PERSON, purpose="conformance"
            ),
            timeout=TIMEOUT,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        denial_prefix="consent-missing",
    )


@case("score.recognize-with-home-city-consent-passes-the-consent-check")
async def _recognize_home(session: Session) -> None:
    """The caller's own resident, with the caller's own consent: the endpoint must get past
    consent (answer, or NOT_FOUND without a score here, or FAILED_PRECONDITION without the
    caller's scale), never refuse it as PERMISSION_DENIED."""
    stub = _score_stub(session)
    issuer = _caller_issuer(session)
    resident = _resident_of(session, session.endpoint.caller_code, "caller resident")
    token = issuer.issue(
        subject_key=resident,
        audience_city=session.endpoint.caller_code,
        lifetime_seconds=600,
        purpose=SCORE_PURPOSE,
    )
    try:
        await stub.RecognizeScore(
            score_recognition_pb2.RecognizeScoreRequest(
                subject_key=resident, consent_token=token, purpose="conformance"
            ),
            timeout=TIMEOUT,
        )
    except grpc.aio.AioRpcError as error:
        expect(
            error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION),
            f"home-city consent refused: {error.code().name} {error.details()}",
        )


# --- AlertExchangeService -----------------------------------------------------------------


def _alert_stub(session: Session) -> alert_exchange_pb2_grpc.AlertExchangeServiceStub:
    session.require("AlertExchangeService")
    return alert_exchange_pb2_grpc.AlertExchangeServiceStub(session.channel)


@case("alerts.update-unknown-alert-not-found")
async def _alert_missing(session: Session) -> None:
    await expect_status(
        _alert_stub(session).UpdateAlertStatus(
            alert_exchange_pb2.UpdateAlertStatusRequest(
                alert_id=f"conformance-{uuid.uuid4().hex}",
                status=alert_exchange_pb2.ALERT_STATUS_ACKNOWLEDGED,
                change_id=str(uuid.uuid4()),
            ),
            timeout=TIMEOUT,
        ),
        grpc.StatusCode.NOT_FOUND,
    )


@case("alerts.update-status-of-a-targeting-alert-recorded-once")
async def _alert_update(session: Session) -> None:
    """The calling city, a target of the alert, reports its regulators' handling at the
    origin: the change is recorded as the caller's, and the same change id answers the same
    change again (docs/alerts.md)."""
    stub = _deliver_stub(session)
    endpoint = session.endpoint
    if not endpoint.alert_id:
        raise CaseSkipped(
            "give --alert-id: an alert the serving city raised for the calling city, which "
            "the runner may acknowledge"
        )
    request = alert_exchange_pb2.UpdateAlertStatusRequest(
        alert_id=endpoint.alert_id,
        status=alert_exchange_pb2.ALERT_STATUS_ACKNOWLEDGED,
        regulator="conformance",
        note="联动监管协议一致性测试 (conformance test)",
        change_id=str(uuid.uuid4()),
    )
    first = (await stub.UpdateAlertStatus(request, timeout=TIMEOUT)).change
    expect(
        (first.alert_id, first.change_id, first.status, first.by_city)
        == (
            request.alert_id,
            request.change_id,
            alert_exchange_pb2.ALERT_STATUS_ACKNOWLEDGED,
            endpoint.caller_code,
        ),
        f"the change was not recorded as asked, by the calling city: {first}",
    )
    again = (await stub.UpdateAlertStatus(request, timeout=TIMEOUT)).change
    expect(again == first, f"the same change id answered another change: {again} vs {first}")


def _conformance_alert(
    origin_city: str, target_city: str, *, alert_id: str | None = None
) -> alert_exchange_pb2.Alert:
    """A well-formed alert about an organisation, marked as the runner's, which a regulator
    can tell apart and ignore."""
    now = time.time()
    raised, deadline = Timestamp(), Timestamp()
    raised.FromSeconds(int(now))
    deadline.FromSeconds(int(now) + 2 * 86400)
    return alert_exchange_pb2.Alert(
        alert_id=alert_id or f"{origin_city}-{uuid.uuid4()}",
        rule_id="conformance",
        domain=common_pb2.SUPERVISION_DOMAIN_FOOD_DRUG,
        severity=alert_exchange_pb2.ALERT_SEVERITY_LOW,
        origin_city=origin_city,
        target_cities=[target_city],
        subject_key=ORG_KEY,
        explanation="联动监管协议一致性测试，无需处置 (conformance test, no action needed)",
        raised_at=raised,
        ack_deadline=deadline,
    )


def _deliver_stub(session: Session) -> alert_exchange_pb2_grpc.AlertExchangeServiceStub:
    stub = _alert_stub(session)
    endpoint = session.endpoint
    if not endpoint.caller_code or not endpoint.serving_code:
        raise CaseFailed("not shown: give --caller and --serving (an alert names both)")
    if endpoint.caller_code == endpoint.serving_code:
        raise CaseSkipped("alerts are delivered between cities; the runner calls as the server")
    return stub


@case("alerts.deliver-accepted-once")
async def _alert_deliver(session: Session) -> None:
    stub = _deliver_stub(session)
    endpoint = session.endpoint
    alert = _conformance_alert(endpoint.caller_code, endpoint.serving_code)
    request = alert_exchange_pb2.DeliverAlertsRequest(alerts=[alert])
    first = await stub.DeliverAlerts(request, timeout=TIMEOUT)
    expect(
        [(r.alert_id, r.accepted) for r in first.results] == [(alert.alert_id, True)],
        f"a well-formed alert from the calling city was not accepted: {list(first.results)}",
    )
    again = await stub.DeliverAlerts(request, timeout=TIMEOUT)
    expect(
        [(r.alert_id, r.accepted, r.duplicate) for r in again.results]
        == [(alert.alert_id, True, True)],
        f"delivering the same alert again is not an accepted duplicate: {list(again.results)}",
    )


@case("alerts.deliver-with-another-citys-origin-refused")
async def _alert_forged_origin(session: Session) -> None:
    stub = _deliver_stub(session)
    endpoint = session.endpoint
    # The calling city claims the alert was raised by the serving city itself.
    forged = _conformance_alert(endpoint.serving_code, endpoint.serving_code)
    try:
        answer = await stub.DeliverAlerts(
            alert_exchange_pb2.DeliverAlertsRequest(alerts=[forged]), timeout=TIMEOUT
        )
    except grpc.aio.AioRpcError as error:
        expect(
            error.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT),
            f"a forged origin_city failed with {error.code().name}, not a refusal",
        )
        return
    expect(
        [(r.alert_id, r.accepted) for r in answer.results] == [(forged.alert_id, False)],
        f"an alert whose origin_city is not the caller was accepted: {list(answer.results)}",
    )
    expect(bool(answer.results[0].reasons), "the refusal gives no reason")


async def _first_alert(session: Session, cursor: bytes = b"") -> None:
    call = _alert_stub(session).SubscribeAlerts(
        alert_exchange_pb2.SubscribeAlertsRequest(cursor=cursor), timeout=TIMEOUT
    )
    async for _ in call:
        break


def _calls_as_serving_city(session: Session) -> bool:
    endpoint = session.endpoint
    if not endpoint.caller_code or not endpoint.serving_code:
        raise CaseFailed(
            "not shown: give --caller and --serving, so that the runner knows whether it may "
            "subscribe (only the serving city's own regulators may)"
        )
    return endpoint.caller_code == endpoint.serving_code


@case("alerts.subscribe-by-another-city-permission-denied")
async def _alert_subscribe_peer(session: Session) -> None:
    _alert_stub(session)
    if _calls_as_serving_city(session):
        raise CaseSkipped("the runner calls as the serving city, whose regulators may subscribe")
    await expect_status(_first_alert(session), grpc.StatusCode.PERMISSION_DENIED)


@case("alerts.subscribe-bad-cursor-invalid-argument")
async def _alert_cursor(session: Session) -> None:
    _alert_stub(session)
    if not _calls_as_serving_city(session):
        raise CaseSkipped("only the serving city's own certificate may subscribe")
    await expect_status(
        _first_alert(session, b"\x00not-a-cursor-we-issued"), grpc.StatusCode.INVALID_ARGUMENT
    )


# --- running ------------------------------------------------------------------------------


async def run(endpoint: Endpoint, only: Sequence[str] = ()) -> list[CaseResult]:
    results: list[CaseResult] = []
    async with endpoint.channel() as channel:
        session = Session(endpoint, channel)
        try:
            session.services = await reflected_services(channel)
        except grpc.aio.AioRpcError as error:
            results.append(
                CaseResult("transport.connect", "FAIL", f"{error.code().name}: {error.details()}")
            )
            return results
        for name, function in CASES:
            if only and not any(name.startswith(prefix) for prefix in only):
                continue
            try:
                await function(session)
            except CaseSkipped as skipped:
                results.append(CaseResult(name, "SKIP", str(skipped)))
            except CaseFailed as failed:
                results.append(CaseResult(name, "FAIL", str(failed)))
            except grpc.aio.AioRpcError as error:
                results.append(
                    CaseResult(name, "FAIL", f"unexpected {error.code().name}: {error.details()}")
                )
            else:
                results.append(CaseResult(name, "PASS"))
    return results


def summary(results: Sequence[CaseResult]) -> str:
    count = {
        outcome: sum(r.outcome == outcome for r in results) for outcome in ("PASS", "FAIL", "SKIP")
    }
    return f"{count['PASS']} passed, {count['FAIL']} failed, {count['SKIP']} skipped"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m contracts.conformance",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--target", required=True, help="host:port of the endpoint")
    parser.add_argument(
        "--ca", type=Path, required=True, help="CA certificate the endpoint's certificate chains to"
    )
    parser.add_argument(
        "--cert", type=Path, required=True, help="client certificate of a city the endpoint serves"
    )
    parser.add_argument("--key", type=Path, required=True, help="its private key")
    parser.add_argument(
        "--server-name",
        help="name to check in the endpoint's certificate instead of the host: "
        "<service>.<city>.creditlink.local of the city dialled",
    )
    parser.add_argument(
        "--only", action="append", default=[], help="run only cases whose name starts with this"
    )
    parser.add_argument("--caller", help="city key of --cert in the region file")
    parser.add_argument("--serving", help="city key of the endpoint in the region file")
    parser.add_argument(
        "--region",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "deploy/config/region.yaml",
        help="the region file (city codes, pseudonym key ids)",
    )
    parser.add_argument("--consent-key", type=Path, help="the calling city's consent key (PEM)")
    parser.add_argument(
        "--denied-cert", type=Path, help="certificate of a city the policy names for nothing"
    )
    parser.add_argument("--denied-key", type=Path, help="its private key")
    parser.add_argument(
        "--alert-id",
        default="",
        help="an alert the serving city raised for the calling city, which the runner may "
        "acknowledge (the positive UpdateAlertStatus case)",
    )
    args = parser.parse_args(argv)
    region = load_region(args.region)
    endpoint = Endpoint(
        args.target,
        args.ca,
        args.cert,
        args.key,
        args.server_name,
        caller_code=region.city(args.caller).admin_code if args.caller else "",
        serving_code=region.city(args.serving).admin_code if args.serving else "",
        pseudonym_key_id=next(iter(region.pseudonym_key_ids), ""),
        consent_key=args.consent_key,
        denied_cert=args.denied_cert,
        denied_key=args.denied_key,
        alert_id=args.alert_id,
    )
    results = asyncio.run(run(endpoint, args.only))
    for result in results:
        print(result.line())
    print(summary(results))
    return 1 if any(r.outcome == "FAIL" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
