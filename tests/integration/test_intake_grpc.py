"""``RecordIntakeService`` end to end: ``python -m services.intake serve`` as its own process,
mutual TLS with certificates of the tests' own CA, the repository's authorization policy,
the real broker; a department client on a plain synchronous channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import grpc
import pytest
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from creditlink.peer.v1 import common_pb2, record_intake_pb2, record_intake_pb2_grpc
from services.common.audit import AUDIT_TOPIC, read_audit_topic
from services.common.avro import AvroSerde
from services.common.certs import service_host
from services.common.clock import china_today
from services.common.peer import DENIAL_TRAILER
from services.common.roles import Role
from services.common.settings import REPO_ROOT, Settings, load_settings
from tests.kit.identifiers import make_pilot_uscc, make_resident_id, make_uscc
from tests.kit.intake_samples import DEPARTMENTS
from tests.peer_kit import OTHER_SUZHOU_DEPARTMENT, PeerPki, make_pki

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]

DEPARTMENT = DEPARTMENTS[1]
TODAY = china_today()  # the day the validator judges "future" by (UTC+8)
DECIDED = TODAY - timedelta(days=2)


@dataclass
class IntakeServer:
    target: str
    pki: PeerPki
    settings: Settings
    process: subprocess.Popen[bytes]

    def channel(self, caller: str | Role | None = None) -> grpc.Channel:
        """A channel with ``caller``'s certificate: by default, DEPARTMENT's."""
        tls = self.pki.tls(caller or Role.department("suzhou", DEPARTMENT.code))
        credentials = grpc.ssl_channel_credentials(
            root_certificates=tls.ca.read_bytes(),
            private_key=tls.key.read_bytes(),
            certificate_chain=tls.cert.read_bytes(),
        )
        # The intake process serves Suzhou's certificate (CREDITLINK_CITY below).
        return grpc.secure_channel(
            self.target,
            credentials,
            options=[("grpc.ssl_target_name_override", service_host("suzhou", "intake"))],
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IntakeServer]:
    prefix = f"t{uuid.uuid4().hex[:10]}."
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CREDITLINK_CITY": "suzhou",
        "CREDITLINK_TOPIC_PREFIX": prefix,
        "CREDITLINK_DEV": "1",
        "CREDITLINK_LOG_LEVEL": "warning",
    }
    subprocess.run(
        [sys.executable, "-m", "services.common.topics", "apply", "--prefix", prefix],
        cwd=REPO_ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    target = f"127.0.0.1:{_free_port()}"
    log = tmp_path_factory.mktemp("log") / "intake.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.intake",
                "serve",
                "--bind",
                target,
                "--certs",
                str(pki.directory),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    intake = IntakeServer(target, pki, load_settings(env), process)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                with intake.channel() as channel:
                    answer = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(
                            service="creditlink.peer.v1.RecordIntakeService"
                        ),
                        timeout=2,
                    )
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield intake
    finally:
        process.terminate()
        try:
            stopped: int | None = process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            stopped = None
    # SIGTERM is the graceful stop (services.common.node.run_until_signalled): exit status 0.
    assert stopped == 0, log.read_text()


def penalty(serial: int, **changes: object) -> record_intake_pb2.CreditRecord:
    rng = random.Random(serial)
    record = record_intake_pb2.CreditRecord(
        category=record_intake_pb2.RECORD_CATEGORY_ADMIN_PENALTY,
        department_code=DEPARTMENT.code,
        department_name=DEPARTMENT.name,
        decision_number=f"{DEPARTMENT.prefix}〔{DECIDED.year}〕{serial}号",
        decision_date=DECIDED.isoformat(),
        subject=record_intake_pb2.RecordSubject(
            subject_type=common_pb2.SUBJECT_TYPE_ORGANISATION,
            name="苏州市远航物流有限公司",
            uscc=make_uscc(rng),
        ),
        penalty=record_intake_pb2.PenaltyDetails(
            domain=common_pb2.SUPERVISION_DOMAIN_ENVIRONMENT,
            penalty_types=[record_intake_pb2.PENALTY_TYPE_FINE],
            fine_amount_fen=2_000_000,
            violation="未按规定设置污染防治设施",
            legal_basis="《中华人民共和国环境保护法》第五十九条",
            severity=record_intake_pb2.SEVERITY_GENERAL,
        ),
    )
    for name, value in changes.items():
        target, _, field = name.rpartition("__")
        holder = getattr(record, target) if target else record
        if isinstance(value, Message):
            getattr(holder, field).CopyFrom(value)
        else:
            setattr(holder, field, value)
    return record


def submit(
    server: IntakeServer, records: list[record_intake_pb2.CreditRecord], **kwargs: object
) -> list[record_intake_pb2.RecordResult]:
    with server.channel() as channel:
        stub = record_intake_pb2_grpc.RecordIntakeServiceStub(channel)
        response = stub.SubmitRecords(
            record_intake_pb2.SubmitRecordsRequest(records=records), timeout=30, **kwargs
        )
    return list(response.results)


def test_a_batch_gets_one_result_per_record_in_order(server: IntakeServer) -> None:
    person = make_resident_id(random.Random(5))
    records = [
        penalty(1),
        penalty(2, decision_date=(TODAY + timedelta(days=1)).isoformat()),
        penalty(1),  # the same again: a duplicate
        penalty(1, penalty__fine_amount_fen=3_000_000),  # a correction
        penalty(3, subject__uscc=make_pilot_uscc(random.Random(3))),
        penalty(
            4,
            subject=record_intake_pb2.RecordSubject(
                subject_type=common_pb2.SUBJECT_TYPE_NATURAL_PERSON,
                name="李娜",
                resident_id_number=person,
            ),
        ),
        record_intake_pb2.CreditRecord(),
    ]
    results = submit(server, records, metadata=[("x-request-id", "dept-req-1")])
    assert [r.index for r in results] == list(range(len(records)))
    assert [r.WhichOneof("outcome") for r in results] == [
        "accepted",
        "rejected",
        "accepted",
        "accepted",
        "accepted",
        "accepted",
        "rejected",
    ]
    first, _, again, corrected, pilot, natural, empty = results
    assert (first.accepted.version, first.accepted.duplicate) == (1, False)
    assert (again.accepted.record_id, again.accepted.duplicate) == (first.accepted.record_id, True)
    assert (corrected.accepted.version, corrected.accepted.duplicate) == (2, False)
    assert [w.code for w in pilot.accepted.warnings] == ["legacy-pilot-code"]
    assert natural.accepted.subject_key.startswith("N:")
    assert person not in str(natural)
    assert [(v.field, v.code) for v in results[1].rejected.reasons] == [
        ("decision_date", "date-in-future")
    ]
    assert ("category", "required") in {(v.field, v.code) for v in empty.rejected.reasons}

    # Submitting the same records again publishes nothing: the first content is a duplicate of
    # version 1 (superseded, not reinstated), the corrected one of version 2.
    repeat = submit(server, [records[0], records[3]])
    assert [(r.accepted.version, r.accepted.duplicate) for r in repeat] == [(1, True), (2, True)]


def test_the_days_figures_are_published_and_queryable(server: IntakeServer) -> None:
    submit(server, [penalty(30_001)])
    command = [
        sys.executable,
        "-m",
        "services.intake",
        "quality",
        "--department",
        DEPARTMENT.code,
        "--day",
        DECIDED.isoformat(),
        "--json",
    ]
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": server.settings.kafka_bootstrap,
        "CREDITLINK_TOPIC_PREFIX": server.settings.topic_prefix,
    }
    deadline = time.monotonic() + 30
    while True:  # the server flushes figures every few seconds
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        if done.returncode == 0:
            figure = json.loads(done.stdout)
            if figure["valid_count"] >= 1:
                break
        assert time.monotonic() < deadline, done.stderr
        time.sleep(0.5)
    assert figure["department_day"] == f"{DEPARTMENT.code}:{DECIDED.isoformat()}"
    assert figure["compliance_rate"] is not None


def test_batch_size_limits(server: IntakeServer) -> None:
    for size in (0, 1001):
        with pytest.raises(grpc.RpcError) as refused:
            submit(server, [penalty(9)] * size)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_stream_answers_every_record_in_order(server: IntakeServer) -> None:
    count = 1200
    requests = (
        record_intake_pb2.SubmitRecordStreamRequest(
            record=penalty(10_000 + i) if i % 10 else record_intake_pb2.CreditRecord(),
            client_reference=f"line-{i}",
        )
        for i in range(count)
    )
    with server.channel() as channel:
        stub = record_intake_pb2_grpc.RecordIntakeServiceStub(channel)
        responses = list(stub.SubmitRecordStream(requests, timeout=60))
    assert [r.client_reference for r in responses] == [f"line-{i}" for i in range(count)]
    assert [r.result.index for r in responses] == list(range(count))
    rejected = [r.result.index for r in responses if r.result.WhichOneof("outcome") == "rejected"]
    assert rejected == list(range(0, count, 10))


def test_a_corrupt_stream_message_is_rejected_on_its_own(server: IntakeServer) -> None:
    good = record_intake_pb2.SubmitRecordStreamRequest(record=penalty(20_001)).SerializeToString()
    with server.channel() as channel:
        call = channel.stream_stream(
            "/creditlink.peer.v1.RecordIntakeService/SubmitRecordStream",
            request_serializer=None,
            response_deserializer=record_intake_pb2.SubmitRecordStreamResponse.FromString,
        )
        responses = list(call(iter([good, b"\xff\xff\xff", good]), timeout=30))
    assert [r.result.WhichOneof("outcome") for r in responses] == [
        "accepted",
        "rejected",
        "accepted",
    ]
    assert responses[1].result.rejected.reasons[0].code == "unparseable"


@pytest.mark.parametrize(
    ("caller", "code", "denial"),
    [
        # Another city's node or department, and the serving city's own node certificate:
        # only a department of the city submits.
        ("wuxi", grpc.StatusCode.PERMISSION_DENIED, "policy-denied"),
        (Role.department("wuxi", "113202000143201878"), grpc.StatusCode.PERMISSION_DENIED, None),
        ("suzhou", grpc.StatusCode.PERMISSION_DENIED, "policy-denied"),
        (Role.regulator_of("suzhou", "11320500014160400L", ["FOOD_DRUG"]), None, None),
        # A Suzhou department certificate that Wuxi's CA issued.
        ("rogue-department", grpc.StatusCode.UNAUTHENTICATED, "issuer-of-another-city"),
    ],
)
def test_only_the_citys_own_departments_may_submit(
    server: IntakeServer, caller: str | Role, code: grpc.StatusCode | None, denial: str | None
) -> None:
    with server.channel(caller) as channel:
        stub = record_intake_pb2_grpc.RecordIntakeServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.SubmitRecords(record_intake_pb2.SubmitRecordsRequest(records=[penalty(1)]))
    assert refused.value.code() == (code or grpc.StatusCode.PERMISSION_DENIED)
    trailers = dict(refused.value.trailing_metadata() or ())  # type: ignore[attr-defined]
    if denial is not None:
        assert trailers[DENIAL_TRAILER] == denial
    # Each refusal is on the city's audit topic, with its reason.
    serde = AvroSerde()

    async def audited() -> list[dict[str, object]]:
        topic = server.settings.topic(AUDIT_TOPIC)
        for _ in range(50):
            records = [
                serde.decode(m.value) for m in await read_audit_topic(server.settings, topic)
            ]
            found = [r for r in records if r["denial_code"] == trailers[DENIAL_TRAILER]]
            if found:
                return found
            await asyncio.sleep(0.2)
        return []

    found = asyncio.run(audited())
    assert found, f"no audit record of {trailers[DENIAL_TRAILER]}"
    assert {r["status_code"] for r in found} == {refused.value.code().name}
    assert {r["method"] for r in found} == {"/creditlink.peer.v1.RecordIntakeService/SubmitRecords"}


def test_a_department_submits_only_its_own_records_and_those_it_acts_for(
    server: IntakeServer,
) -> None:
    own = penalty(9101)
    # Another Suzhou department (not named in city-roles.yaml) submits DEPARTMENT's record.
    other = Role.department("suzhou", OTHER_SUZHOU_DEPARTMENT)
    with server.channel(other) as channel:
        stub = record_intake_pb2_grpc.RecordIntakeServiceStub(channel)
        answer = stub.SubmitRecords(record_intake_pb2.SubmitRecordsRequest(records=[own]))
    [result] = answer.results
    assert result.HasField("rejected")
    assert [r.code for r in result.rejected.reasons] == ["not-your-department"]
    assert OTHER_SUZHOU_DEPARTMENT in result.rejected.reasons[0].message
    # The city's credit office acts for every department (deploy/config/city-roles.yaml).
    office = Role.department("suzhou", "11320500014160128E")
    with server.channel(office) as channel:
        stub = record_intake_pb2_grpc.RecordIntakeServiceStub(channel)
        answer = stub.SubmitRecords(record_intake_pb2.SubmitRecordsRequest(records=[own]))
    assert answer.results[0].HasField("accepted"), answer.results[0]


text = st.text(max_size=30) | st.sampled_from(["", DEPARTMENT.code, DECIDED.isoformat(), "FINE"])
records = st.builds(
    lambda category, department, number, decided, reported, types, fine, name, uscc, pid, raw: (
        _fuzzed(category, department, number, decided, reported, types, fine, name, uscc, pid, raw)
    ),
    st.integers(0, 9),
    text,
    text,
    text,
    text,
    st.lists(st.integers(0, 20), max_size=4),
    st.none() | st.integers(-(2**63), 2**63 - 1),
    text,
    text,
    text,
    st.binary(max_size=40),
)


def _fuzzed(
    category: int,
    department: str,
    number: str,
    decided: str,
    reported: str,
    types: list[int],
    fine: int | None,
    name: str,
    uscc: str,
    pid: str,
    raw: bytes,
) -> record_intake_pb2.CreditRecord:
    # Numbers outside the enums are deliberate: proto3 enums are open.
    record = record_intake_pb2.CreditRecord(
        category=record_intake_pb2.RecordCategory.ValueType(category),
        department_code=department,
        decision_number=number,
        decision_date=decided,
        report_date=reported,
        subject=record_intake_pb2.RecordSubject(
            subject_type=common_pb2.SubjectType.ValueType(category % 3),
            name=name,
            uscc=uscc,
            resident_id_number=pid,
        ),
    )
    record.penalty.penalty_types.extend(record_intake_pb2.PenaltyType.ValueType(t) for t in types)
    if fine is not None:
        record.penalty.fine_amount_fen = fine
    with contextlib.suppress(DecodeError):
        record.MergeFromString(raw)  # arbitrary extra fields, possibly unknown ones
    return record


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(records, min_size=1, max_size=5))
def test_fuzzed_records_each_get_an_answer(
    server: IntakeServer, batch: list[record_intake_pb2.CreditRecord]
) -> None:
    results = submit(server, batch)
    assert [r.index for r in results] == list(range(len(batch)))
    for result in results:
        assert result.WhichOneof("outcome") in ("accepted", "rejected")
        if result.WhichOneof("outcome") == "rejected":
            assert result.rejected.reasons
            assert all(v.code != "unprocessable" for v in result.rejected.reasons)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=200))
def test_arbitrary_request_bytes_get_an_answer(server: IntakeServer, body: bytes) -> None:
    with server.channel() as channel:
        call = channel.unary_unary(
            "/creditlink.peer.v1.RecordIntakeService/SubmitRecords",
            request_serializer=None,
            response_deserializer=None,
        )
        try:
            reply = call(body, timeout=30)
        except grpc.RpcError as error:
            refusal = error
        else:
            refusal = None
    if refusal is not None:
        # An undecodable, empty or oversized batch is refused as a whole.
        assert refusal.code() == grpc.StatusCode.INVALID_ARGUMENT, refusal
        return
    response = record_intake_pb2.SubmitRecordsResponse.FromString(reply)
    request = record_intake_pb2.SubmitRecordsRequest.FromString(body)
    assert len(response.results) == len(request.records)
