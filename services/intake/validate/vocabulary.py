"""The closed vocabularies a submission may use, and every spelling departments send for them.

Each table maps an accepted spelling to the Avro symbol of ``schemas/avro/CreditRecord``.
Departments' systems export the same value in several ways — the Avro symbol
(``ADMIN_PENALTY``), the protobuf name (``RECORD_CATEGORY_ADMIN_PENALTY``), or the Chinese
term of the public-disclosure data standard (``行政处罚``) — and all of them mean one thing.
Spellings are compared after :func:`spelling_key` (NFKC, trimmed, upper case, spaces and
hyphens as underscores), so ``admin-penalty`` and ``ＡＤＭＩＮ_ＰＥＮＡＬＴＹ`` are accepted too.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final


def spelling_key(raw: str) -> str:
    """The form every spelling is compared in."""
    # Vocabulary values repeat from record to record; only short ones are kept, so a
    # hostile file cannot fill the cache with large cells.
    return _cached_spelling_key(raw) if len(raw) <= 64 else _spelling_key(raw)


def _spelling_key(raw: str) -> str:
    text = unicodedata.normalize("NFKC", raw).strip().upper()
    return text.replace(" ", "_").replace("-", "_")


_cached_spelling_key = functools.lru_cache(maxsize=4096)(_spelling_key)


def _table(
    symbols: Iterable[str], proto_prefix: str, aliases: Mapping[str, str] | None = None
) -> Mapping[str, str]:
    table: dict[str, str] = {}
    for symbol in symbols:
        table[symbol] = symbol
        table[f"{proto_prefix}_{symbol}"] = symbol
    for alias, symbol in (aliases or {}).items():
        table[spelling_key(alias)] = symbol
    return MappingProxyType(table)


#: The two 双公示 categories: the only ones bulk files carry and quality figures count.
DISCLOSURE_CATEGORIES: Final = frozenset({"ADMIN_LICENSING", "ADMIN_PENALTY"})

CATEGORY: Final = _table(
    (
        "ADMIN_LICENSING",
        "ADMIN_PENALTY",
        "LIST_DECISION",
        "DISHONEST_JUDGMENT_DEBTOR",
        "CREDIT_COMMITMENT",
    ),
    "RECORD_CATEGORY",
    {
        "行政许可": "ADMIN_LICENSING",
        "licensing": "ADMIN_LICENSING",
        "licence": "ADMIN_LICENSING",
        "行政处罚": "ADMIN_PENALTY",
        "penalty": "ADMIN_PENALTY",
        "红黑名单认定": "LIST_DECISION",
        "名单认定": "LIST_DECISION",
        "失信被执行人": "DISHONEST_JUDGMENT_DEBTOR",
        "信用承诺": "CREDIT_COMMITMENT",
    },
)

SUBJECT_TYPE: Final = _table(
    ("ORGANISATION", "NATURAL_PERSON"),
    "SUBJECT_TYPE",
    {
        # Public-disclosure data standard: 行政相对人类别.
        "法人及非法人组织": "ORGANISATION",
        "法人": "ORGANISATION",
        "非法人组织": "ORGANISATION",
        "个体工商户": "ORGANISATION",
        "organization": "ORGANISATION",
        "自然人": "NATURAL_PERSON",
        "person": "NATURAL_PERSON",
    },
)

SEVERITY: Final = _table(
    ("GENERAL", "SERIOUS"),
    "SEVERITY",
    {"一般失信": "GENERAL", "一般": "GENERAL", "严重失信": "SERIOUS", "严重": "SERIOUS"},
)

DOMAIN: Final = _table(
    (
        "MEDICAL",
        "FOOD_DRUG",
        "URBAN_MANAGEMENT",
        "CONSTRUCTION",
        "ENVIRONMENT",
        "LABOUR",
        "MARKET",
        "TAX",
        "OTHER",
    ),
    "SUPERVISION_DOMAIN",
    {
        "医疗": "MEDICAL",
        "医疗卫生": "MEDICAL",
        "食品药品": "FOOD_DRUG",
        "城市管理": "URBAN_MANAGEMENT",
        "城管": "URBAN_MANAGEMENT",
        "建筑": "CONSTRUCTION",
        "住房城乡建设": "CONSTRUCTION",
        "生态环境": "ENVIRONMENT",
        "环境": "ENVIRONMENT",
        "劳动保障": "LABOUR",
        "市场监管": "MARKET",
        "税务": "TAX",
        "其他": "OTHER",
    },
)

# Administrative Penalty Law art. 9, with the standard's Chinese terms.
PENALTY_TYPE: Final = _table(
    (
        "OTHER",
        "WARNING",
        "NOTICE_OF_CRITICISM",
        "FINE",
        "CONFISCATION_OF_ILLEGAL_GAINS",
        "CONFISCATION_OF_ILLEGAL_PROPERTY",
        "SUSPENSION_OF_LICENCE",
        "DEMOTION_OF_QUALIFICATION",
        "REVOCATION_OF_LICENCE",
        "RESTRICTION_OF_BUSINESS",
        "ORDER_TO_SUSPEND_BUSINESS",
        "ORDER_TO_CLOSE",
        "EMPLOYMENT_RESTRICTION",
        "ADMINISTRATIVE_DETENTION",
    ),
    "PENALTY_TYPE",
    {
        "其他": "OTHER",
        "警告": "WARNING",
        "通报批评": "NOTICE_OF_CRITICISM",
        "罚款": "FINE",
        "没收违法所得": "CONFISCATION_OF_ILLEGAL_GAINS",
        "没收非法财物": "CONFISCATION_OF_ILLEGAL_PROPERTY",
        "暂扣许可证件": "SUSPENSION_OF_LICENCE",
        "降低资质等级": "DEMOTION_OF_QUALIFICATION",
        "吊销许可证件": "REVOCATION_OF_LICENCE",
        "限制开展生产经营活动": "RESTRICTION_OF_BUSINESS",
        "责令停产停业": "ORDER_TO_SUSPEND_BUSINESS",
        "责令关闭": "ORDER_TO_CLOSE",
        "限制从业": "EMPLOYMENT_RESTRICTION",
        "行政拘留": "ADMINISTRATIVE_DETENTION",
    },
)

LICENCE_TYPE: Final = _table(
    ("OTHER", "GENERAL", "FRANCHISE", "RECOGNITION", "APPROVAL", "REGISTRATION"),
    "LICENCE_TYPE",
    {
        "其他": "OTHER",
        "普通": "GENERAL",
        "特许": "FRANCHISE",
        "认可": "RECOGNITION",
        "核准": "APPROVAL",
        "登记": "REGISTRATION",
    },
)

LIST_TYPE: Final = _table(
    ("RED", "BLACK", "WATCH"),
    "LIST_TYPE",
    {"红名单": "RED", "黑名单": "BLACK", "严重失信主体名单": "BLACK", "重点关注名单": "WATCH"},
)

LIST_ACTION: Final = _table(
    ("DESIGNATE", "REMOVE", "OBJECTION_FILED", "OBJECTION_DECIDED", "REPAIR"),
    "LIST_ACTION",
    {
        "列入": "DESIGNATE",
        "移出": "REMOVE",
        "异议受理": "OBJECTION_FILED",
        "异议处理完毕": "OBJECTION_DECIDED",
        "信用修复完成": "REPAIR",
    },
)

REMOVAL_REASON: Final = _table(
    ("EXPIRED", "REPAIRED", "OBJECTION_UPHELD", "REVOKED"),
    "REMOVAL_REASON",
    {"到期": "EXPIRED", "信用修复": "REPAIRED", "异议成立": "OBJECTION_UPHELD", "撤销": "REVOKED"},
)

PERFORMANCE: Final = _table(
    ("NOT_PERFORMED", "PARTIALLY_PERFORMED", "PERFORMED"),
    "PERFORMANCE_STATUS",
    {"全部未履行": "NOT_PERFORMED", "部分履行": "PARTIALLY_PERFORMED", "全部履行": "PERFORMED"},
)

COMMITMENT_TYPE: Final = _table(
    (
        "OTHER",
        "APPROVAL_SUBSTITUTE",
        "CERTIFICATE_NOTIFICATION",
        "CREDIT_REPAIR",
        "INDUSTRY_SELF_DISCIPLINE",
        "VOLUNTARY",
    ),
    "COMMITMENT_TYPE",
    {
        "其他": "OTHER",
        "审批替代型": "APPROVAL_SUBSTITUTE",
        "证明事项告知承诺": "CERTIFICATE_NOTIFICATION",
        "信用修复型": "CREDIT_REPAIR",
        "行业自律型": "INDUSTRY_SELF_DISCIPLINE",
        "主动型": "VOLUNTARY",
    },
)

FULFILMENT: Final = _table(
    ("PENDING", "FULFILLED", "BREACHED"),
    "FULFILMENT_STATUS",
    {"待履行": "PENDING", "已履行": "FULFILLED", "违诺": "BREACHED", "未履行": "BREACHED"},
)

#: Spellings of "no end date" in the validity columns of licence exports (长期有效).
OPEN_ENDED: Final = frozenset({"长期", "长期有效", "永久", "无期限", "9999-12-31"})
