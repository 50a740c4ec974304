"""Property tests: whatever arrives — bytes, types, values — every input gets an answer.

The validator must never raise and never fall back to its ``UNPROCESSABLE`` safety net (that
would be a bug it hides); an accepted record must always encode with the Avro schema and
never carry a raw resident ID number; the file readers must turn any bytes into rows or a
file-level :class:`~services.intake.read.files.FileFormatError`.
"""

from __future__ import annotations

import io
import os
import random
from datetime import UTC, date, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from creditlink.peer.v1 import record_intake_pb2
from services.common.avro import AvroSerde
from services.common.pseudonym import DEV_REGION_KEY, pseudonym
from services.intake.encode.events import SubmissionSource, credit_record, encode_credit_record
from services.intake.encode.record_encoding import content_hash, content_of
from services.intake.prepare import chunk_rows, split_file
from services.intake.read import files, grpc_codec
from services.intake.validate import validation as v
from tests.kit.identifiers import make_resident_id
from tests.kit.intake_samples import licensing_row, penalty_row

SERDE = AvroSerde()
CTX = v.ValidationContext(
    city_code="320500",
    today=date(2025, 10, 20),
    pseudonymise=lambda n: pseudonym(n, DEV_REGION_KEY),
)
NOW = datetime(2025, 10, 20, tzinfo=UTC)
FUZZ = settings(
    max_examples=int(os.environ.get("INTAKE_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(["", " ", "2025-09-26", "FINE", "GENERAL", "自然人", "0", "1e999", "NaN"])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def check(submission: Any) -> None:
    verdict = v.validate_submission(submission, CTX)
    if isinstance(verdict, v.InvalidRecord):
        assert verdict.reasons
        for reason in verdict.reasons:
            assert reason.code != v.UNPROCESSABLE, reason
            assert reason.code
            assert reason.message
        return
    facts: dict[str, Any] = {
        "city_code": "320500",
        "version": 1,
        "report_date": verdict.report_date,
        "accepted_at": NOW,
        "source": SubmissionSource("GRPC", NOW),
    }
    encoded = SERDE.encode("CreditRecord", credit_record(verdict, **facts))
    # Written around the content encoding: the same bytes; read back: the same content hash.
    parts, digest = content_of(verdict.content)
    assert parts is not None
    assert encoded == encode_credit_record(SERDE, verdict, **facts, content_parts=parts)
    assert content_hash(SERDE.decode(encoded)) == digest
    subject = submission.get("subject") if isinstance(submission, dict) else None
    raw_id = subject.get("resident_id_number") if isinstance(subject, dict) else None
    if isinstance(raw_id, str) and len(raw_id.strip()) == 18:
        assert raw_id.strip().encode() not in encoded


@FUZZ
@given(values)
def test_any_value_gets_an_answer(submission: Any) -> None:
    check(submission)


def _valid_submissions() -> list[dict[str, Any]]:
    rng = random.Random(11)
    rows = [
        penalty_row(rng, decision_date=date(2025, 9, 26), person_share=1.0),
        penalty_row(rng, decision_date=date(2025, 9, 26), person_share=0.0),
        licensing_row(rng, decision_date=date(2025, 9, 1)),
    ]
    return [files.flat_to_submission(row) for row in rows]


@FUZZ
@given(st.sampled_from(_valid_submissions()), st.data())
def test_near_valid_records_get_an_answer(base: dict[str, Any], data: st.DataObject) -> None:
    """Start from a valid record and break a few of its fields."""
    submission = {k: dict(x) if isinstance(x, dict) else x for k, x in base.items()}
    paths = [(None, k) for k in submission if not isinstance(submission[k], dict)] + [
        (k, f) for k, x in submission.items() if isinstance(x, dict) for f in x
    ]
    for block, name in data.draw(st.lists(st.sampled_from(paths), max_size=4, unique=True)):
        target = submission if block is None else submission[block]
        if data.draw(st.booleans()):
            target.pop(name, None)
        else:
            target[name] = data.draw(values)
    check(submission)


@FUZZ
@given(st.binary(max_size=600), st.sampled_from(["csv", "jsonl"]))
def test_any_bytes_read_as_rows_or_a_file_error(data: bytes, file_format: str) -> None:
    try:
        rows = list(files.read_rows(io.BytesIO(data), file_format))  # type: ignore[arg-type]
    except files.FileFormatError:
        return
    for row in rows:
        assert (row.submission is None) == (row.problem is not None)
        payload, encoding = row.payload()
        assert isinstance(payload, bytes)
        assert encoding
        if row.submission is not None:
            check(row.submission)


csv_bodies = st.lists(
    st.sampled_from(
        ["A1", '"a,b"', '"x\ny"', "", " ", '"', "x" * 5, "中文", "\r", "320505199001011234"]
    ),
    max_size=12,
).map(lambda cells: ",".join(cells))


@FUZZ
@given(st.lists(csv_bodies, max_size=8), st.sampled_from(["\n", "\r\n"]))
def test_the_block_reader_agrees_with_the_line_reader(lines: list[str], newline: str) -> None:
    header = b"decision_number,violation,subject_id_number,category\n"
    body = "".join(line + newline for line in lines).encode()
    block = files.read_csv_block(header, body)
    if block is None:
        return
    slow = list(files.read_rows(io.BytesIO(header + body), "csv"))
    assert [(r.line_number, r.submission, r.problem) for r in block] == [
        (r.line_number, r.submission, r.problem) for r in slow
    ]
    assert [r.payload() for r in block] == [r.payload() for r in slow]


file_lines = st.lists(
    st.sampled_from(
        [
            b"decision_number,violation,category",
            b"A1,x,ADMIN_PENALTY",
            b'"A2","multi',
            b'line",ADMIN_PENALTY',
            b"",
            "中文,甲,乙".encode("gb18030"),
            "中文,甲,乙".encode(),
            b"\xff\xfe\xfd",
            b'{"decision_number": "J1"}',
            b"[1]",
            b"\xef\xbb\xbfA3,y,z",
            b'"head',
            b'er",x,"q""uote"',
            b'a"b,c',
            b"\xff\xfeA",
        ]
    )
    | st.binary(max_size=20),
    max_size=14,
)


@FUZZ
@given(file_lines, st.sampled_from(["csv", "jsonl"]), st.integers(1, 4))
def test_reading_in_chunks_equals_reading_whole(
    lines: list[bytes], file_format: str, chunk_lines: int
) -> None:
    """Cutting a file into chunks (for worker processes) changes no row, no line number."""
    data = b"\n".join(lines) + b"\n"
    try:
        whole = list(files.read_rows(io.BytesIO(data), file_format))  # type: ignore[arg-type]
    except files.FileFormatError:
        whole = None
    try:
        chunks = list(split_file(io.BytesIO(data), file_format, "f", chunk_lines))  # type: ignore[arg-type]
        pieces = [row for chunk in chunks for row in chunk_rows(chunk)]
    except files.FileFormatError:
        pieces = None
    if whole is None or pieces is None:
        assert whole is None
        assert pieces is None
        return
    assert [(r.line_number, r.submission, r.problem) for r in pieces] == [
        (r.line_number, r.submission, r.problem) for r in whole
    ]


@FUZZ
@given(st.binary(max_size=300))
def test_any_protobuf_bytes_get_an_answer(data: bytes) -> None:
    message = record_intake_pb2.CreditRecord()
    try:
        message.ParseFromString(data)
    except Exception:
        return  # the gRPC layer refuses undecodable requests before the servicer
    check(grpc_codec.submission_from_proto(message))
    grpc_codec.rejection_payload(message)


def test_id_numbers_never_reach_a_rejection_payload() -> None:
    number = make_resident_id(random.Random(1))
    message = record_intake_pb2.CreditRecord()
    message.subject.resident_id_number = number
    message.subject.legal_representative_id_number = number[:-1]
    message.penalty.violation = f"身份证{number}"
    message.attributes["note"] = number
    payload = grpc_codec.rejection_payload(message)
    assert number.encode() not in payload
    assert number[:-1].encode() not in payload
