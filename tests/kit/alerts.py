"""Synthetic inputs for the alerts service's tests, benchmark and demo — never production.

    key = org_key("91", "320500", "MA1W8XY4")          # a valid Suzhou-registered company
    record = penalty_record(key, city_code="320400", domain="FOOD_DRUG", serious=True)
    entry = black_entry(key, issuing_city="320500")

Every record passes the CreditRecord schema (the serde encodes it), so the same builders feed
the rules directly and the real broker.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from aiokafka.structs import ConsumerRecord, RecordMetadata

from services.alerts.book import AlertBook
from services.alerts.config import Webhook, load_rules
from services.alerts.engine import RuleEngine
from services.alerts.model import Alert, RulesConfig
from services.alerts.rules import RuleSet
from services.alerts.store import AlertStore
from services.common.avro import AvroSerde, load_example
from services.common.clock import CHINA_STANDARD_TIME
from services.common.identifiers import org_code_check_char, uscc_check_char
from services.common.region import Region, load_region
from services.common.settings import REPO_ROOT, Settings, load_settings


def org_key(prefix: str, division: str, body: str) -> str:
    """``L:`` + a valid USCC: 2-character authority/category ``prefix``, 6-digit GB/T 2260
    ``division``, 8-character organisation-code ``body`` (check characters computed)."""
    first17 = prefix + division + body + org_code_check_char(body)
    return "L:" + first17 + uscc_check_char(first17)


def person_key(seed: str) -> str:
    return "N:" + hashlib.sha256(seed.encode()).hexdigest()


def today_cst() -> date:
    return datetime.now(CHINA_STANDARD_TIME).date()


@cache
def _template() -> dict[str, Any]:
    return load_example("CreditRecord")


def record_id_for(city_code: str, decision_number: str) -> str:
    digest = hashlib.sha256(decision_number.encode()).hexdigest()[:32]
    return f"{city_code}-{digest}"


def demo_city_name(admin_code: str) -> str:
    """The demo region's name of the city with ``admin_code`` (苏州 for 320500)."""
    city = load_region(REPO_ROOT / "deploy" / "config" / "region.yaml").by_admin_code(admin_code)
    if city is None:
        raise KeyError(admin_code)
    return city.name


def base_record(
    subject_key: str,
    *,
    city_code: str,
    decision_number: str,
    decision_date: date | None = None,
    name: str | None = "测试食品有限公司",
    version: int = 1,
) -> dict[str, Any]:
    record = copy.deepcopy(_template())
    decided = decision_date or today_cst() - timedelta(days=2)
    person = subject_key.startswith("N:")
    record.update(
        record_id=record_id_for(city_code, decision_number),
        version=version,
        supersedes_version=version - 1 if version > 1 else None,
        city_code=city_code,
        decision_number=decision_number,
        decision_date=decided,
        report_date=decided,
        accepted_at=datetime.now(UTC).replace(microsecond=0),
        penalty=None,
        licensing=None,
        list_decision=None,
        court=None,
        commitment=None,
        attributes={},
    )
    record["subject"] = {
        "subject_type": "NATURAL_PERSON" if person else "ORGANISATION",
        "subject_key": subject_key,
        "name": name or "某某",
        "uscc": None if person else subject_key[2:],
        "pilot_code": False,
        "legal_representative": None,
        "legal_representative_key": None,
    }
    record["publicity"] = {
        "publicity_start": decided,
        "earliest_repair_date": None,
        "takedown_date": None,
        "severity": None,
    }
    return record


def penalty_record(
    subject_key: str,
    *,
    city_code: str,
    domain: str = "FOOD_DRUG",
    serious: bool = False,
    decision_number: str | None = None,
    decision_date: date | None = None,
    name: str | None = "测试食品有限公司",
    version: int = 1,
) -> dict[str, Any]:
    number = decision_number or f"{city_code}罚〔{domain}〕{subject_key[-6:]}号"
    record = base_record(
        subject_key,
        city_code=city_code,
        decision_number=number,
        decision_date=decision_date,
        name=name,
        version=version,
    )
    decided: date = record["decision_date"]
    record["category"] = "ADMIN_PENALTY"
    # Departments sign with their full name, the city included (苏州市市场监督管理局).
    record["department_name"] = f"{demo_city_name(city_code)}市市场监督管理局"
    record["publicity"].update(
        severity="SERIOUS" if serious else "GENERAL",
        earliest_repair_date=decided + timedelta(days=365 if serious else 90),
        takedown_date=decided + timedelta(days=3 * 365 if serious else 365),
    )
    record["penalty"] = {
        "domain": domain,
        "penalty_types": ["FINE"],
        "fine_amount_fen": 5_000_000,
        "confiscated_amount_fen": None,
        "violation": "经营超过保质期的食品",
        "legal_basis": "《中华人民共和国食品安全法》第一百二十四条",
    }
    return record


def licence_record(
    subject_key: str,
    *,
    city_code: str,
    licence_name: str = "食品经营许可证",
    decision_number: str | None = None,
) -> dict[str, Any]:
    record = base_record(
        subject_key,
        city_code=city_code,
        decision_number=decision_number or f"{city_code}许〔{subject_key[-6:]}〕号",
    )
    record["category"] = "ADMIN_LICENSING"
    record["licensing"] = {
        "licence_type": "GENERAL",
        "licence_name": licence_name,
        "licence_number": "JY1" + subject_key[-8:],
        "licensed_matter": "预包装食品销售",
        "valid_from": record["decision_date"],
        "valid_to": None,
    }
    return record


def debtor_record(
    subject_key: str,
    *,
    city_code: str,
    government_flag: bool = False,
    performance: str = "NOT_PERFORMED",
    case_number: str | None = None,
    name: str = "某区住房和城乡建设局",
) -> dict[str, Any]:
    case = case_number or f"(2025)苏执{subject_key[-5:]}号"
    record = base_record(subject_key, city_code=city_code, decision_number=case, name=name)
    decided: date = record["decision_date"]
    record["category"] = "DISHONEST_JUDGMENT_DEBTOR"
    record["court"] = {
        "court_name": "常州市中级人民法院",
        "case_number": case,
        "enforcement_basis": None,
        "obligation": "支付工程款人民币120万元",
        "performance": performance,
        "dishonest_conduct": "有履行能力而拒不履行生效法律文书确定义务",
        "filed_on": decided - timedelta(days=60),
        "published_on": decided,
        "debtor_is_government_body": government_flag,
    }
    return record


def black_entry(
    subject_key: str,
    *,
    issuing_city: str,
    status: str = "ACTIVE",
    version: int = 1,
    list_name: str = "严重失信主体名单",
    reference: str = "信〔2025〕1号",
    list_type: str = "BLACK",
    subject_name: str | None = "测试食品有限公司",
) -> dict[str, Any]:
    digest = hashlib.sha256(f"dept|{reference}".encode()).hexdigest()[:16]
    return {
        "entry_key": f"{issuing_city}/{list_type}/{subject_key}/{digest}",
        "list_type": list_type,
        "list_name": list_name,
        "issuing_city": issuing_city,
        "issuing_department_code": "11320500014160400L",
        "issuing_department_name": "市场监督管理局",
        "subject_key": subject_key,
        "subject_type": "NATURAL_PERSON" if subject_key.startswith("N:") else "ORGANISATION",
        "subject_name": None if subject_key.startswith("N:") else subject_name,
        "legal_basis": "《严重违法失信名单管理办法》",
        "decision_reference": reference,
        "effective_from": today_cst() - timedelta(days=10),
        "expires_at": None,
        "status": status,
        "removal_reason": "REPAIRED" if status == "REMOVED" else None,
        "version": version,
        "updated_at": datetime.now(UTC).replace(microsecond=0),
        "source_record_id": None,
        "attributes": {},
    }


def list_change(entry: dict[str, Any], sequence: int) -> dict[str, Any]:
    action = {"ACTIVE": "DESIGNATED", "OBJECTION_PENDING": "OBJECTION_FILED"}.get(
        entry["status"], "REMOVED"
    )
    return {
        "change_id": f"{entry['issuing_city']}:{sequence}",
        "issuing_city": entry["issuing_city"],
        "sequence": sequence,
        "action": action,
        "entry": entry,
        "changed_at": entry["updated_at"],
    }


@dataclass
class FakeProducer:
    """Stands in for ``AIOKafkaProducer`` in broker-free tests: records every send."""

    sent: list[tuple[str, bytes, bytes | None, list[tuple[str, bytes]]]] = field(
        default_factory=list
    )
    fail: bool = False
    _offsets: dict[tuple[str, int], int] = field(default_factory=dict)

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        **_: Any,
    ) -> asyncio.Future[RecordMetadata]:
        if self.fail:
            raise ConnectionError("broker unavailable")
        partition = 0
        offset = self._offsets.get((topic, partition), 0)
        self._offsets[(topic, partition)] = offset + 1
        self.sent.append((topic, key or b"", value, list(headers or [])))
        future: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        future.set_result(RecordMetadata(topic, partition, None, offset, -1, -1, None))
        return future

    def topics(self) -> list[str]:
        return [topic for topic, *_ in self.sent]


def consumer_record(
    topic: str, offset: int, key: str | None, value: bytes | None, partition: int = 0
) -> ConsumerRecord[bytes, bytes]:
    """A message as ``AIOKafkaConsumer.getmany`` returns it, for broker-free engine tests."""
    return ConsumerRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=key.encode() if key is not None else None,
        value=value,
        checksum=None,
        serialized_key_size=len(key or ""),
        serialized_value_size=len(value or b""),
        headers=(),
    )


@dataclass
class OfflineNode:
    """Store, book and engine of one city with a fake producer: the whole state machine of
    a node without a broker or a network."""

    settings: Settings
    store: AlertStore
    book: AlertBook
    engine: RuleEngine
    producer: FakeProducer
    serde: AvroSerde
    offset: int = 0

    async def feed(
        self, logical_topic: str, key: str | None, value: dict[str, Any] | None
    ) -> list[Alert]:
        schema = {
            "credit.records.v1": "creditlink.v1.CreditRecord",
            "credit.lists.v1": "creditlink.v1.ListEntry",
            "credit.list-changes.v1": "creditlink.v1.ListChange",
        }[logical_topic]
        encoded = None if value is None else self.serde.encode(schema, value)
        self.offset += 1
        message = consumer_record(self.settings.topic(logical_topic), self.offset, key, encoded)
        return await self.engine.handle([message])

    async def record(self, record: dict[str, Any]) -> list[Alert]:
        return await self.feed("credit.records.v1", record["subject"]["subject_key"], record)

    async def entry(self, entry: dict[str, Any]) -> list[Alert]:
        return await self.feed("credit.lists.v1", entry["entry_key"], entry)

    def published_alerts(self) -> list[dict[str, Any]]:
        return [
            self.serde.decode(value)
            for topic, _, value, _ in self.producer.sent
            if value is not None and ".alerts." in topic
        ]

    def close(self) -> None:
        self.store.close()


def offline_node(
    city: str,
    data_dir: Path,
    *,
    rules: RulesConfig | None = None,
    webhooks: Sequence[Webhook] = (),
    region: Region | None = None,
) -> OfflineNode:
    chosen_region = region or load_region(REPO_ROOT / "deploy" / "config" / "region.yaml")
    settings = load_settings(
        {
            "CREDITLINK_CITY": city,
            "KAFKA_BOOTSTRAP": "127.0.0.1:9",
            "CREDITLINK_TOPIC_PREFIX": f"{city}.",
            "CREDITLINK_DATA_DIR": str(data_dir),
        }
    )
    config = rules or load_rules(REPO_ROOT / "deploy" / "config" / "alert-rules.yaml")
    serde = AvroSerde()
    store = AlertStore(data_dir / "alerts" / "store")
    producer = FakeProducer()
    city_code = chosen_region.city(city).admin_code
    book = AlertBook(
        settings=settings,
        city_code=city_code,
        store=store,
        serde=serde,
        producer=producer,  # duck-typed stand-in
        sla=config.sla,
        webhooks=webhooks,
    )
    engine = RuleEngine(
        settings=settings,
        region=chosen_region,
        city_code=city_code,
        store=store,
        serde=serde,
        rules=RuleSet(config),
        book=book,
    )
    return OfflineNode(settings, store, book, engine, producer, serde)
