"""Bulk files: CSV and JSON Lines, UTF-8 and GB18030, BOMs, broken lines (no broker)."""

from __future__ import annotations

import io
import json
import random
from datetime import date
from pathlib import Path

import pytest

from services.intake.read import files
from tests.kit.identifiers import make_resident_id
from tests.kit.intake_samples import DEPARTMENTS, penalty_row, render_csv, render_jsonl

ROW = penalty_row(
    random.Random(1), decision_date=date(2025, 9, 26), department=DEPARTMENTS[0], serial=7
)


def rows(data: bytes, file_format: files.FileFormat = "csv") -> list[files.FileRow]:
    return list(files.read_rows(io.BytesIO(data), file_format))


def test_utf8_with_and_without_bom_and_gb18030_read_the_same() -> None:
    text = render_csv([ROW, ROW])
    plain = rows(text.encode("utf-8"))
    with_bom = rows(files.UTF8_BOM + text.encode("utf-8"))
    gb = rows(text.encode("gb18030"))
    gb_bom = rows(files.GB18030_BOM + text.encode("gb18030"))
    assert [r.submission for r in plain] == [r.submission for r in with_bom]
    assert [r.submission for r in plain] == [r.submission for r in gb]
    assert [r.submission for r in plain] == [r.submission for r in gb_bom]
    assert plain[0].submission is not None
    assert plain[0].submission["department_name"] == "苏州市市场监督管理局"
    assert [r.line_number for r in plain] == [2, 3]


def test_encoding_is_decided_per_line() -> None:
    header, line = render_csv([ROW]).encode("utf-8").split(b"\n", 1)
    mixed = header + b"\n" + line + render_csv([ROW]).split("\n", 1)[1].encode("gb18030")
    mixed += b"ADMIN_PENALTY,\xff\xfe\xfd broken\n"
    read = rows(mixed)
    assert read[0].submission == read[1].submission
    assert read[2].submission is None
    assert read[2].problem == "the line is neither UTF-8 nor GB18030"
    assert read[1].payload()[1] == "text/csv; charset=GB18030; header=present"


def test_standard_chinese_headers_and_wan_yuan() -> None:
    text = (
        "行政处罚决定书文号,处罚决定日期,行政相对人名称,罚款金额（万元）,备注\n"
        "苏市监罚〔2025〕1号,2025年9月26日,苏州市某某公司,0.5,内部\n"
    )
    ignored: list[str] = []
    (row,) = files.read_rows(io.BytesIO(text.encode("gb18030")), "csv", ignored)
    assert row.submission == {
        "decision_number": "苏市监罚〔2025〕1号",
        "decision_date": "2025年9月26日",
        "subject": {"name": "苏州市某某公司"},
        "penalty": {"fine_amount_wan_yuan": "0.5"},
    }
    assert ignored == ["备注"]


def test_a_quoted_field_may_span_lines_and_blank_lines_are_not_records() -> None:
    text = 'decision_number,violation\n\n"A1","第一行\n第二行"\n\n"A2",x\n'
    read = rows(text.encode())
    assert [r.line_number for r in read] == [3, 6]
    assert read[0].submission is not None
    assert read[0].submission["penalty"]["violation"] == "第一行\n第二行"


def test_broken_rows_are_answered_not_skipped() -> None:
    text = 'decision_number,violation\nA1,x,surplus\n"unterminated,x\n'
    read = rows(text.encode())
    assert [r.problem is not None for r in read] == [True, True]
    assert read[0].problem == "the row has 3 cells, the header 2"


def test_rejection_payloads_keep_the_header_and_mask_id_numbers() -> None:
    number = make_resident_id(random.Random(2))
    broken = {**ROW, "subject_type": "NATURAL_PERSON", "subject_id_number": number[:-2]}
    (row,) = rows(render_csv([broken]).encode("gb18030"))
    payload, encoding = row.payload()
    text = payload.decode("gb18030")
    assert text.startswith("category,department_code")
    assert number[:-2] not in text
    assert number[:6] + "*" * 10 in text
    assert encoding == "text/csv; charset=GB18030; header=present"
    again = files.payload_submission(payload, encoding)
    assert again is not None
    assert again["decision_date"] == "2025-09-26"


def test_utf16_is_refused_as_a_whole() -> None:
    with pytest.raises(files.FileFormatError, match="UTF-16"):
        rows(b"\xff\xfe" + render_csv([ROW]).encode("utf-16-le"))


def test_json_lines_flat_nested_and_broken() -> None:
    nested = {
        "category": "ADMIN_PENALTY",
        "decision_number": "N1",
        "subject": {"subject_type": "NATURAL_PERSON", "resident_id_number": "x"},
    }
    data = (
        render_jsonl([ROW]) + json.dumps(nested) + "\n" + "{not json\n" + "[1, 2]\n" + "\n"
    ).encode()
    read = rows(data, "jsonl")
    assert [r.line_number for r in read] == [1, 2, 3, 4]
    csv_row = rows(render_csv([ROW]).encode())[0].submission
    assert read[0].submission is not None
    assert csv_row is not None
    # The JSON Lines writer leaves empty columns out; the CSV row has them as "".
    assert read[0].submission["penalty"] == csv_row["penalty"]
    assert read[0].submission["subject"]["uscc"] == csv_row["subject"]["uscc"]
    assert read[1].submission == nested
    assert read[2].problem is not None
    assert read[2].problem.startswith("not JSON")
    assert read[3].problem == "a line must hold one JSON object"
    assert files.payload_submission(*read[0].payload()) == read[0].submission


def test_format_from_the_file_name() -> None:
    assert files.format_of(Path("a.CSV")) == "csv"
    assert files.format_of(Path("a.ndjson")) == "jsonl"
    with pytest.raises(files.FileFormatError):
        files.format_of(Path("a.xlsx"))


def same_rows(header: bytes, body: bytes) -> None:
    """The one-pass block reader agrees with the line-by-line reader, or declines."""
    block = files.read_csv_block(header, body)
    if block is None:
        return
    slow = rows(header + body)
    assert [(r.line_number, r.submission, r.problem) for r in block] == [
        (r.line_number, r.submission, r.problem) for r in slow
    ]
    assert [r.payload() for r in block] == [r.payload() for r in slow]


def test_the_block_reader_agrees_with_the_line_reader() -> None:
    header = b"decision_number,violation,subject_id_number\n"
    number = make_resident_id(random.Random(3))
    body = f'A1,"x\r\ny",{number}\r\n\n  \nA2,z,\nA3,too,many,cells\n"A4","q"\n'.encode()
    same_rows(header, body)
    assert files.read_csv_block(header, body) is not None
    assert files.read_csv_block(header, b'A1,"open\n') is None  # csv error: line by line
    assert files.read_csv_block(header, "A1,中".encode("gb18030")) is None


def test_text_cells_read_as_the_general_cell_reader_reads_them() -> None:
    columns = ["category", "subject_name", "domain", "fine_amount_yuan", "licence_name"]
    plan = files.column_plan([*columns, "attributes.batch"])
    rows = [
        ["ADMIN_PENALTY", "甲", "MARKET", "5.00", "", ""],
        ["ADMIN_LICENSING", "", "", "", "许可证", "7"],
        ["", "", "", " ", "", ""],
        ["ADMIN_PENALTY"],
        [],
    ]
    for cells in rows:
        expected = files.cells_to_submission(plan, list(cells))
        assert files.text_cells_to_submission(plan, list(cells)) == expected
        assert list(files.text_cells_to_submission(plan, list(cells))) == list(expected)
