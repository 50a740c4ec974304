"""Synthetic 双公示 records for tests, the benchmark and the demo — never production data.

Rows use the documented flat columns (``docs/intake-file-format.md``); every generator takes
the caller's ``random.Random`` so a seed reproduces a file::

    rng = random.Random(7)
    rows = [penalty_row(rng, decision_date=date(2025, 9, 26)) for _ in range(1000)]
    write_rows(Path("penalties.csv"), rows)                       # UTF-8 CSV
    write_rows(Path("penalties.jsonl"), rows, encoding="gb18030")  # GB18030 JSON Lines
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Final

from services.common.identifiers import org_code_check_char, uscc_check_char
from services.intake.read.files import COLUMNS
from tests.kit.identifiers import make_resident_id, make_uscc


def government_uscc(division: str, body: str) -> str:
    """A valid code of a government body (registration authority 1, category 1: 机关)."""
    first17 = "11" + division + body + org_code_check_char(body)
    return first17 + uscc_check_char(first17)


@dataclass(frozen=True, slots=True)
class Department:
    code: str
    name: str
    prefix: str  # of its decision numbers, e.g. 苏市监罚


DEPARTMENTS: Final = (
    Department(government_uscc("320500", "01416040"), "苏州市市场监督管理局", "苏市监罚"),
    Department(government_uscc("320500", "01416111"), "苏州市生态环境局", "苏环罚"),
    Department(government_uscc("320500", "01416222"), "苏州市住房和城乡建设局", "苏住建"),
)

_COMPANY_WORDS: Final = ("鑫禾", "恒通", "华瑞", "金阳", "远航", "德润", "嘉信", "优品")
_TRADES: Final = ("食品", "建材", "环保科技", "物流", "餐饮管理", "医药", "机械")
_SURNAMES: Final = ("王", "李", "张", "刘", "陈", "杨", "赵", "吴")
_GIVEN: Final = ("伟", "芳", "娜", "敏", "静", "强", "磊", "洋", "艳", "军")
_VIOLATIONS: Final = (
    "经营超过保质期的食品原料",
    "未按规定设置污染防治设施",
    "未取得施工许可证擅自施工",
    "销售不符合安全标准的产品",
)


def _company(rng: random.Random) -> str:
    return f"苏州市{rng.choice(_COMPANY_WORDS)}{rng.choice(_TRADES)}有限公司"


def _person(rng: random.Random) -> str:
    return rng.choice(_SURNAMES) + rng.choice(_GIVEN) + rng.choice(("", *_GIVEN))


def _subject(rng: random.Random, person_share: float) -> dict[str, str]:
    if rng.random() < person_share:
        return {
            "subject_type": "NATURAL_PERSON",
            "subject_name": _person(rng),
            "subject_id_number": make_resident_id(rng),
        }
    return {
        "subject_type": "ORGANISATION",
        "subject_name": _company(rng),
        "subject_uscc": make_uscc(rng, "320500"),
        "legal_representative": _person(rng),
    }


def penalty_row(
    rng: random.Random,
    *,
    decision_date: date,
    report_date: date | None = None,
    department: Department | None = None,
    serial: int | None = None,
    person_share: float = 0.1,
) -> dict[str, str]:
    """A valid administrative penalty record (flat columns)."""
    department = department or rng.choice(DEPARTMENTS)
    serial = serial if serial is not None else rng.randrange(1, 10**7)
    fine = rng.randrange(1, 500) * 1000
    return {
        "category": "ADMIN_PENALTY",
        "department_code": department.code,
        "department_name": department.name,
        "decision_number": f"{department.prefix}〔{decision_date.year}〕{serial}号",
        "decision_date": decision_date.isoformat(),
        "report_date": report_date.isoformat() if report_date else "",
        **_subject(rng, person_share),
        "domain": rng.choice(("MARKET", "FOOD_DRUG", "ENVIRONMENT", "CONSTRUCTION")),
        "penalty_types": "WARNING;FINE" if rng.random() < 0.5 else "FINE",
        "fine_amount_yuan": f"{fine}.00",
        "violation": rng.choice(_VIOLATIONS),
        "legal_basis": "《中华人民共和国食品安全法》第一百二十四条",
        "severity": "SERIOUS" if rng.random() < 0.1 else "GENERAL",
    }


def licensing_row(
    rng: random.Random,
    *,
    decision_date: date,
    report_date: date | None = None,
    department: Department | None = None,
    serial: int | None = None,
) -> dict[str, str]:
    """A valid administrative licensing record (flat columns)."""
    department = department or rng.choice(DEPARTMENTS)
    serial = serial if serial is not None else rng.randrange(1, 10**7)
    return {
        "category": "ADMIN_LICENSING",
        "department_code": department.code,
        "department_name": department.name,
        "decision_number": f"{department.prefix}许〔{decision_date.year}〕{serial}号",
        "decision_date": decision_date.isoformat(),
        "report_date": report_date.isoformat() if report_date else "",
        **_subject(rng, 0.0),
        "licence_type": "GENERAL",
        "licence_name": "食品经营许可证",
        "licence_number": f"JY1320500{serial:07d}",
        "licensed_matter": "预包装食品（含冷藏冷冻食品）销售",
        "valid_from": decision_date.isoformat(),
        "valid_to": date(decision_date.year + 5, decision_date.month, 1).isoformat(),
    }


def render_csv(rows: Iterable[Mapping[str, str]], columns: Iterable[str] | None = None) -> str:
    names = list(columns) if columns is not None else list(COLUMNS)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=names, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return buffer.getvalue()


def render_jsonl(rows: Iterable[Mapping[str, str]]) -> str:
    return "".join(
        json.dumps({k: v for k, v in row.items() if v != ""}, ensure_ascii=False) + "\n"
        for row in rows
    )


def write_rows(path: Path, rows: Iterable[Mapping[str, str]], *, encoding: str = "utf-8") -> None:
    """Write rows as CSV or JSON Lines (by extension) in ``encoding``."""
    text = render_jsonl(rows) if path.suffix == ".jsonl" else render_csv(rows)
    path.write_bytes(text.encode(encoding))
