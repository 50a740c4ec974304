"""Validation and normalisation of intake submissions (no broker)."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import unicodedata
from datetime import UTC, date, datetime
from typing import Any

import pytest

from services.common.avro import AvroSerde
from services.common.pseudonym import DEV_REGION_KEY, pseudonym
from services.intake.encode.events import SubmissionSource, credit_record, encode_credit_record
from services.intake.encode.record_encoding import content_hash, content_of, default_encoding
from services.intake.read.files import flat_to_submission
from services.intake.validate import validation as v
from tests.kit.identifiers import make_pilot_uscc, make_resident_id, make_uscc
from tests.kit.intake_samples import DEPARTMENTS, licensing_row, penalty_row

TODAY = date(2025, 10, 20)
CTX = v.ValidationContext(
    city_code="320500", today=TODAY, pseudonymise=lambda n: pseudonym(n, DEV_REGION_KEY)
)
DEPARTMENT = DEPARTMENTS[0]


def penalty(**changes: Any) -> dict[str, Any]:
    row = penalty_row(
        random.Random(1), decision_date=date(2025, 9, 26), department=DEPARTMENT, serial=123
    )
    row.update(changes)
    return flat_to_submission(row)


def valid(submission: Any) -> v.ValidRecord:
    verdict = v.validate_submission(submission, CTX)
    assert isinstance(verdict, v.ValidRecord), verdict
    return verdict


def invalid(submission: Any) -> dict[str, str]:
    """field -> code of every reason."""
    verdict = v.validate_submission(submission, CTX)
    assert isinstance(verdict, v.InvalidRecord), verdict
    assert verdict.reasons
    for reason in verdict.reasons:
        assert reason.code
        assert reason.message
    return {r.field: r.code for r in verdict.reasons}


def test_a_penalty_is_normalised_to_the_credit_record_shape() -> None:
    record = valid(penalty(fine_amount_yuan="5000.50", penalty_types="警告、罚款"))
    assert record.category == "ADMIN_PENALTY"
    assert record.report_date == TODAY  # empty report date: the day of receipt
    assert record.subject_key.startswith("L:")
    details = record.content["penalty"]
    assert details["penalty_types"] == ["WARNING", "FINE"]
    assert details["fine_amount_fen"] == 500_050
    material = f"{DEPARTMENT.code}|ADMIN_PENALTY|苏市监罚〔2025〕123号"
    assert record.record_id == "320500-" + hashlib.sha256(material.encode()).hexdigest()[:32]


def test_the_accepted_record_encodes_with_the_avro_schema() -> None:
    record = valid(penalty())
    event = credit_record(
        record,
        city_code="320500",
        version=1,
        report_date=record.report_date,
        accepted_at=datetime(2025, 10, 20, tzinfo=UTC),
        source=SubmissionSource("FILE", datetime.now(UTC)),
    )
    serde = AvroSerde()
    assert serde.decode(serde.encode("CreditRecord", event))["record_id"] == record.record_id


@pytest.mark.parametrize("version", [1, 3])
@pytest.mark.parametrize("kind", ["penalty", "licensing", "person"])
def test_the_event_written_around_the_content_is_the_serdes_encoding(
    kind: str, version: int
) -> None:
    rng = random.Random(version)
    if kind == "licensing":
        row = licensing_row(rng, decision_date=date(2025, 9, 26), department=DEPARTMENT)
    else:
        row = penalty_row(
            rng, decision_date=date(2025, 9, 26), person_share=1.0 if kind == "person" else 0.0
        )
    record = valid(flat_to_submission(row))
    parts, digest = content_of(record.content)
    assert parts is not None
    when = datetime(2025, 10, 20, 9, 30, 15, 123456, tzinfo=UTC)
    facts: dict[str, Any] = {
        "city_code": "320500",
        "version": version,
        "report_date": date(2025, 10, 1),
        "accepted_at": when,
        "source": SubmissionSource("FILE", when, file_name="a.csv", line_number=7),
    }
    serde = AvroSerde()
    expected = serde.encode("CreditRecord", credit_record(record, **facts))
    assert encode_credit_record(serde, record, **facts) == expected
    assert encode_credit_record(serde, record, **facts, content_parts=parts) == expected
    # Read back from Kafka, the record has the content hash it was published with.
    assert content_hash(serde.decode(expected)) == digest


def test_the_content_hash_is_the_same_through_fastavro() -> None:
    """Content the compiled writers leave (here a tuple for a list) is hashed through
    fastavro over a schema of the content fields: the same bytes, so the same hash."""
    record = valid(penalty(penalty_types="WARNING;FINE"))
    content = dict(record.content, penalty=dict(record.content["penalty"]))
    content["penalty"]["penalty_types"] = tuple(content["penalty"]["penalty_types"])
    encoding = default_encoding()
    assert encoding.content_parts(content) is None
    parts, digest = content_of(record.content)
    assert b"".join(parts or ()) == encoding.content_encoding(content)
    assert content_hash(content) == digest
    assert content_of(content) == (None, digest)


def test_record_id_ignores_spelling_variants_of_the_decision_number() -> None:
    plain = valid(penalty(decision_number="苏市监罚〔2025〕123号"))
    spaced = valid(penalty(decision_number=" 苏市监罚 〔２０２５〕 123号 "))
    assert plain.record_id == spaced.record_id


def test_content_hash_tells_duplicates_from_corrections() -> None:
    first = valid(penalty())
    again = valid(penalty(report_date="2025-10-01"))  # when it was reported is not content
    corrected = valid(penalty(fine_amount_yuan="9999.00"))
    assert content_hash(first.content) == content_hash(again.content)
    assert content_hash(first.content) != content_hash(corrected.content)
    assert first.record_id == corrected.record_id


def test_a_natural_person_leaves_only_as_a_pseudonym() -> None:
    number = make_resident_id(random.Random(3), birth=date(1990, 3, 7))
    record = valid(
        penalty(
            subject_type="自然人",
            subject_name="王芳",
            subject_uscc="",
            subject_id_number=number,
            legal_representative="",
        )
    )
    assert record.subject_key == "N:" + pseudonym(number, DEV_REGION_KEY)
    assert number not in json.dumps(record.content, default=str, ensure_ascii=False)
    assert record.content["subject"]["uscc"] is None


def test_an_id_number_in_free_text_is_masked_with_a_warning() -> None:
    number = make_resident_id(random.Random(4))
    record = valid(penalty(violation=f"当事人（身份证号{number}）经营过期食品"))
    assert number not in record.content["penalty"]["violation"]
    assert number[:6] + "************" in record.content["penalty"]["violation"]
    assert [w.code for w in record.warnings] == [v.PERSONAL_DATA_MASKED]


def _spellings(number: str) -> list[str]:
    """An ID number as people type it into free text."""
    full_width = "".join(chr(ord(c) + 0xFEE0) for c in number)
    return [
        "ID" + number,
        full_width,
        f"{number[:6]} {number[6:14]} {number[14:]}",
        f"{number[:6]}\u3000{number[6:14]}-{number[14:]}",
    ]


def test_an_id_number_in_any_spelling_is_masked_in_free_text() -> None:
    number = make_resident_id(random.Random(6))
    for spelling in [*_spellings(number), number[:17] + "Ｘ"]:
        record = valid(penalty(violation=f"当事人（身份证号{spelling}）经营过期食品"))
        text = unicodedata.normalize("NFKC", record.content["penalty"]["violation"])
        assert number[6:17] not in "".join(c for c in text if c.isdigit()), spelling
        assert [w.code for w in record.warnings] == [v.PERSONAL_DATA_MASKED], spelling


def test_an_id_number_in_any_spelling_is_refused_as_an_attribute() -> None:
    number = make_resident_id(random.Random(7))
    for spelling in _spellings(number):
        submission = penalty()
        submission["attributes"] = {"holder": spelling}
        assert invalid(submission)["attributes.holder"] == v.PERSONAL_DATA, spelling


def test_an_early_pilot_code_is_flagged_not_dropped() -> None:
    record = valid(penalty(subject_uscc=make_pilot_uscc(random.Random(5))))
    assert record.content["subject"]["pilot_code"] is True
    assert [w.code for w in record.warnings] == [v.LEGACY_PILOT_CODE]


def test_a_wrong_check_character_is_rejected() -> None:
    code = make_uscc(random.Random(6))
    body = code[:8] + ("1" if code[8] != "1" else "2") + code[9:]  # breaks both checks
    assert invalid(penalty(subject_uscc=body))["subject.uscc"] == v.USCC_CHECKSUM
    wrong_id = make_resident_id(random.Random(7))
    wrong_id = wrong_id[:-1] + ("0" if wrong_id[-1] != "0" else "1")
    reasons = invalid(penalty(subject_type="NATURAL_PERSON", subject_id_number=wrong_id))
    assert reasons["subject.resident_id_number"] == v.ID_NUMBER_CHECKSUM


def test_every_missing_penalty_field_is_reported_at_once() -> None:
    reasons = invalid(
        penalty(violation="", legal_basis="", severity="", penalty_types="", domain="")
    )
    assert reasons == {
        "penalty.domain": v.REQUIRED,
        "penalty.penalty_types": v.REQUIRED,
        "penalty.violation": v.REQUIRED,
        "penalty.legal_basis": v.REQUIRED,
        "penalty.severity": v.REQUIRED,
    }


def test_licensing_requires_its_own_fields() -> None:
    row = licensing_row(random.Random(8), decision_date=date(2025, 9, 1), department=DEPARTMENT)
    assert valid(flat_to_submission(row)).content["licensing"]["licence_type"] == "GENERAL"
    row.update(licence_name="", licensed_matter="", valid_from="", valid_to="长期")
    assert invalid(flat_to_submission(row)) == {
        "licensing.valid_from": v.REQUIRED,
        "licensing.licence_name": v.REQUIRED,
        "licensing.licensed_matter": v.REQUIRED,
    }


@pytest.mark.parametrize(
    ("changes", "field", "code"),
    [
        ({"decision_date": "2025-10-21"}, "decision_date", v.DATE_IN_FUTURE),
        ({"decision_date": "2025-02-30"}, "decision_date", v.INVALID_FORMAT),
        ({"decision_date": "1999-12-31"}, "decision_date", v.DATE_OUT_OF_RANGE),
        ({"report_date": "2025-09-25"}, "report_date", v.REPORT_BEFORE_DECISION),
        ({"report_date": "2025-10-21"}, "report_date", v.DATE_IN_FUTURE),
        ({"fine_amount_yuan": "-1"}, "penalty.fine_amount_yuan", v.INVALID_AMOUNT),
        ({"fine_amount_yuan": "1.001"}, "penalty.fine_amount_yuan", v.INVALID_AMOUNT),
        ({"fine_amount_yuan": "abc"}, "penalty.fine_amount_yuan", v.INVALID_AMOUNT),
        ({"fine_amount_yuan": "NaN"}, "penalty.fine_amount_yuan", v.INVALID_AMOUNT),
        ({"fine_amount_yuan": ""}, "penalty.fine_amount_fen", v.REQUIRED),
        (
            {"penalty_types": "WARNING", "fine_amount_yuan": "10"},
            "penalty.fine_amount_fen",
            v.INCONSISTENT,
        ),
        ({"penalty_types": "FINE;鞭刑"}, "penalty.penalty_types[1]", v.INVALID_VALUE),
        ({"severity": "catastrophic"}, "penalty.severity", v.INVALID_VALUE),
        ({"category": "行政奖励"}, "category", v.UNKNOWN_CATEGORY),
        ({"subject_type": "alien"}, "subject.subject_type", v.INVALID_VALUE),
        ({"department_name": "苏州\x00局"}, "department_name", v.INVALID_CHARACTERS),
        ({"subject_name": "x" * 201}, "subject.name", v.TOO_LONG),
        ({"department_code": "12345"}, "department_code", v.INVALID_FORMAT),
    ],
)
def test_each_rule_names_field_and_code(changes: dict[str, str], field: str, code: str) -> None:
    assert invalid(penalty(**changes)).get(field) == code


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-09-26", date(2025, 9, 26)),
        ("2025/9/26", date(2025, 9, 26)),
        ("2025.09.26", date(2025, 9, 26)),
        ("20250926", date(2025, 9, 26)),
        ("2025年9月26日", date(2025, 9, 26)),
        ("2025-09-26 00:00:00", date(2025, 9, 26)),
        ("２０２５－０９－２６", date(2025, 9, 26)),
        ("2025-09-26 13:00:00", None),
        ("26/09/2025", None),
        ("", None),
    ],
)
def test_dates_in_the_spellings_of_departments_exports(text: str, expected: date | None) -> None:
    assert v.parse_day(text) == expected


def test_amounts_in_wan_yuan_as_the_national_standard_writes_them() -> None:
    record = valid(penalty(fine_amount_yuan="", fine_amount_wan_yuan="0.5"))
    assert record.content["penalty"]["fine_amount_fen"] == 500_000
    assert invalid(penalty(fine_amount_wan_yuan="1"))["penalty.fine_amount_yuan"] == v.INCONSISTENT


def test_details_must_match_the_category() -> None:
    submission = penalty()
    submission["licensing"] = {"licence_name": "x"}
    assert invalid(submission)["licensing"] == v.DETAILS_MISMATCH
    del submission["penalty"]
    del submission["licensing"]
    assert invalid(submission)["penalty"] == v.REQUIRED


def test_attributes_never_hold_personal_data() -> None:
    submission = penalty()
    submission["attributes"] = {"case_system_id": "SZ-1"}
    assert valid(submission).content["attributes"] == {"case_system_id": "SZ-1"}
    submission["attributes"] = {"holder": make_resident_id(random.Random(9))}
    assert invalid(submission)["attributes.holder"] == v.PERSONAL_DATA


def _base(category: str, **details: Any) -> dict[str, Any]:
    block = {
        "LIST_DECISION": "list_decision",
        "DISHONEST_JUDGMENT_DEBTOR": "court",
        "CREDIT_COMMITMENT": "commitment",
    }[category]
    return {
        "category": category,
        "department_code": DEPARTMENT.code,
        "department_name": DEPARTMENT.name,
        "decision_number": "(2025)苏05执123号",
        "decision_date": "2025-09-01",
        "subject": {
            "subject_type": "ORGANISATION",
            "name": "苏州市鑫禾食品有限公司",
            "uscc": make_uscc(random.Random(10)),
        },
        block: details,
    }


def test_list_decisions_court_records_and_commitments() -> None:
    designation = _base(
        "LIST_DECISION",
        list_type="BLACK",
        list_name="严重失信主体名单",
        action="DESIGNATE",
        legal_basis="《失信行为纠正后的信用信息修复管理办法（试行）》",
        effective_from="2025-09-01",
        expires_at="2028-08-31",
    )
    record = valid(designation)
    assert record.content["publicity"]["takedown_date"] == date(2028, 8, 31)
    removal = _base(
        "LIST_DECISION",
        list_type="BLACK",
        list_name="严重失信主体名单",
        action="REMOVE",
        legal_basis="x",
        effective_from="2025-09-01",
    )
    assert invalid(removal) == {
        "list_decision.designation_decision_number": v.REQUIRED,
        "list_decision.removal_reason": v.REQUIRED,
    }
    court = _base(
        "DISHONEST_JUDGMENT_DEBTOR",
        court_name="江苏省苏州市中级人民法院",
        case_number="(2025)苏05执123号",
        obligation="支付货款100万元",
        performance="PERFORMANCE_STATUS_NOT_PERFORMED",
        dishonest_conduct="有履行能力而拒不履行",
        filed_on="2025-03-01",
        published_on="2025-02-01",
        debtor_is_government_body="是",
    )
    assert invalid(court) == {"court.published_on": v.DATE_ORDER}
    court["court"]["published_on"] = "2025-04-01"
    assert valid(court).content["court"]["debtor_is_government_body"] is True
    commitment = _base(
        "CREDIT_COMMITMENT", matter="食品经营许可", content="承诺…", committed_on="2025-09-01"
    )
    assert valid(commitment).content["commitment"]["fulfilment"] == "PENDING"


@pytest.mark.parametrize("junk", [None, 42, "text", [], {"subject": "x"}, {"category": {}}])
def test_junk_gets_an_answer(junk: Any) -> None:
    verdict = v.validate_submission(junk, CTX)
    assert isinstance(verdict, v.InvalidRecord)
    assert verdict.reasons
    assert all(r.code != v.UNPROCESSABLE for r in verdict.reasons)


def test_text_read_before_is_checked_again_where_it_would_fail() -> None:
    """Values read cleanly once are remembered; a field where the same value breaks a rule
    still reports it, and an ID-number-shaped value is masked wherever masking applies."""
    long_text = "违法事实" * 60  # 240 characters: fits LONG_TEXT, not SHORT_TEXT
    assert valid(penalty(violation=long_text)).content["penalty"]["violation"] == long_text
    assert invalid(penalty(department_name=long_text)) == {"department_name": v.TOO_LONG}
    resident = make_resident_id(random.Random(5))
    number = f"苏市监罚{resident}号"  # decision numbers are not masked
    assert valid(penalty(decision_number=number)).decision_number == number
    masked = valid(penalty(violation=number))
    assert resident not in masked.content["penalty"]["violation"]
    assert [w.code for w in masked.warnings] == [v.PERSONAL_DATA_MASKED]
    assert valid(penalty(decision_date=" 2025-09-26")).decision_date == date(2025, 9, 26)
    assert valid(penalty(decision_date=" 2025-09-26")).decision_date == date(2025, 9, 26)
    assert invalid(penalty(decision_date="2025-09-26", report_date="2025-09-25")) == {
        "report_date": v.REPORT_BEFORE_DECISION
    }


def test_penalty_types_read_before_give_the_same_symbols_and_the_same_problems() -> None:
    for _ in range(2):
        record = valid(penalty(penalty_types="警告、罚款", fine_amount_yuan="10.00"))
        assert record.content["penalty"]["penalty_types"] == ["WARNING", "FINE"]
        assert invalid(penalty(penalty_types="警告、没有这种", fine_amount_yuan="")) == {
            "penalty.penalty_types[1]": v.INVALID_VALUE
        }
    first = valid(penalty(penalty_types="罚款"))
    first.content["penalty"]["penalty_types"].append("WARNING")  # each record its own list
    assert valid(penalty(penalty_types="罚款")).content["penalty"]["penalty_types"] == ["FINE"]


def test_the_validator_knows_nothing_of_the_wire_format() -> None:
    """Validation yields plain validated records: loading it loads no Avro and no encoding of
    the events (the content hash belongs to services/intake/encode/record_encoding.py)."""
    probe = (
        "import sys, services.intake.validate.validation\n"
        "print(sorted(m for m in sys.modules if 'avro' in m\n"
        "  or m.startswith('services.intake.encode.') and not m.endswith('.publicity')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"
