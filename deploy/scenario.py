"""The demo scenario, played through a running region: what `make demo` shows and what
``tests/integration/test_demo.py`` asserts.

Everything goes through the services' real interfaces: departments submit records to their
city's intake over gRPC with mutual TLS, each with its own department certificate (issued by
its city's development CA on first use, docs/trust.md "Roles"); credit checks and score
recognitions are peer calls between city nodes; regulators follow the alert stream and
acknowledge with their own certificates. Data is generated (seeded) but shaped like the real
thing: valid unified social credit codes and resident ID numbers, departments that report
late, an invalid code.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import grpc
import yaml
from rich.console import Console
from rich.table import Table

from creditlink.peer.v1 import (
    alert_exchange_pb2,
    alert_exchange_pb2_grpc,
    common_pb2,
    consent_pb2,
    consent_pb2_grpc,
    credit_check_pb2,
    credit_check_pb2_grpc,
    record_intake_pb2,
    record_intake_pb2_grpc,
    score_recognition_pb2,
    score_recognition_pb2_grpc,
)
from deploy.region import Deployment
from services.common.audit import (
    AUDIT_TOPIC,
    AuditMessage,
    parse_key,
    read_audit_topic,
    verify_chain,
)
from services.common.audit.checkpoints import read_checkpoints
from services.common.audit.signing import AuditKeyring
from services.common.audit.verify import CheckpointsHeld, check_receipts_of
from services.common.avro import AvroSerde
from services.common.clock import china_today
from services.common.identifiers import is_resident_id, org_code_check_char, uscc_check_char
from services.common.peer import OutboundChains
from services.common.pseudonym import load_region_key, pseudonym
from services.common.region import Region
from services.common.roles import Role, load_city_roles
from services.common.settings import Settings, load_settings
from services.common.topic_names import CHECKPOINTS_TOPIC
from services.common.workdays import add_working_days
from services.intake.figures.queries import query_quality
from tests.kit.identifiers import make_resident_id

T = TypeVar("T")
#: The cities the demo runs, each calling as its node, departments and regulators.
CITIES = ("suzhou", "wuxi", "changzhou")
#: The scenario client's OUTBOUND chain on each of their audit topics (docs/trust.md).
SCENARIO_CHAIN = "scenario"
ORG_BODY_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"


def make_code(rng: random.Random, category: str, division: str) -> str:
    """A unified social credit code (GB 32100-2015) of the given registration authority and
    category (``11`` organ of state, ``91`` enterprise) in ``division``."""
    while True:
        body = "".join(rng.choice("0123456789") for _ in range(8))
        org = body + org_code_check_char(body)
        first17 = category + division + org
        code = first17 + uscc_check_char(first17)
        # An all-digit code whose last digit also passes the resident-ID check has the shape
        # of an ID number, which no certificate or record may carry: draw again.
        if not is_resident_id(code):
            return code


def corrupt(code: str) -> str:
    """The same code with its check character wrong (and not a pilot code: position 17 too)."""
    swapped = "0" if code[16] != "0" else "1"
    return code[:16] + swapped + code[17]


@dataclass
class Outcomes:
    """What the scenario observed; the demo prints it and the test asserts it."""

    submitted: dict[str, int] = field(default_factory=dict)
    accepted: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    rejection_codes: list[str] = field(default_factory=list)
    quality: list[dict[str, Any]] = field(default_factory=list)
    blacklisted_seen_in: dict[str, bool] = field(default_factory=dict)
    measures_seen: dict[str, list[str]] = field(default_factory=dict)
    removed_everywhere: dict[str, bool] = field(default_factory=dict)
    foreign_removal_refused: bool = False
    recognition: dict[str, Any] = field(default_factory=dict)
    alert: dict[str, Any] = field(default_factory=dict)
    ack_seen_at_origin: bool = False
    #: Wuxi's recognition request after the resident withdrew consent at Suzhou.
    revocation: dict[str, Any] = field(default_factory=dict)
    #: Per city: its audit verified against the heads its peers hold (records, heads, ok).
    evidence: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Consumer lag of every group of the region once it is idle after the scenario.
    idle_lag: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            bool(self.quality)
            and all(self.blacklisted_seen_in.values())
            and len(self.blacklisted_seen_in) == 3
            and all(self.removed_everywhere.values())
            and len(self.removed_everywhere) == 3
            and bool(self.recognition.get("incentives"))
            and bool(self.alert)
            and self.ack_seen_at_origin
            and self.revocation.get("denial") == "consent-revoked"
            and len(self.evidence) == 3
            and all(
                e["ok"] and e["heads_held"] and e["receipts_ok"] and e["scenario_calls"][1]
                for e in self.evidence.values()
            )
        )


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, within: float, every: float = 0.3
) -> T | None:
    """Poll ``probe`` until it returns something, or give up after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(grpc.aio.AioRpcError):
            if (value := await probe()) is not None:
                return value
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(every)


def _scales(deployment: Deployment) -> dict[str, Any]:
    """Each city's score scale, from the deployment's ``score-incentives.yaml``."""
    path = Path(deployment.config_environment()["CREDITLINK_SCORES_CONFIG"])
    scales: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))["scales"]
    return scales


class Scenario:
    def __init__(
        self,
        region: Region,
        bootstrap: str,
        console: Console,
        *,
        seed: int | None = None,
        deployment: Deployment | None = None,
        cities: Sequence[str] = CITIES,
    ) -> None:
        """``cities``: the ones the scenario calls as (the demo's three by default)."""
        # A fresh seed per run: a region kept between runs already holds the last run's
        # subjects, and reusing them would replay its alerts and double its quality counts.
        self.seed = seed if seed is not None else time.time_ns() % 1_000_000
        self.region = region
        self.bootstrap = bootstrap
        self.console = console
        self.deployment = deployment or Deployment()
        self.rng = random.Random(self.seed)  # noqa: S311 -- demo data, not secrets
        self.today = china_today()
        self.outcomes = Outcomes()
        #: Every call the scenario makes, as a city's node, department or regulator, is an
        #: OUTBOUND record of that city's ``scenario`` chain, with the callee's receipt.
        self.outbound = OutboundChains(
            region,
            chain=SCENARIO_CHAIN,
            cert_dir=self.deployment.cert_dir,
            lock_dir=self.deployment.run_dir / "audit-locks",
            settings_of=self.settings_of,
            cities=cities,
        )
        self._channels: dict[tuple[str, str, str], grpc.aio.Channel] = {}

    # --- plumbing ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the calling cities' ``scenario`` chains: no call is made unrecorded."""
        await self.outbound.start()

    def settings_of(self, city: str) -> Settings:
        """``city``'s Kafka and topic prefix, as the region file gives them."""
        return load_settings(
            {
                "CREDITLINK_CITY": city,
                "KAFKA_BOOTSTRAP": self.bootstrap,
                "CREDITLINK_TOPIC_PREFIX": self.region.city(city).topic_prefix,
            }
        )

    def channel(self, caller: str | Role, city: str, service: str) -> grpc.aio.Channel:
        """An mTLS channel from ``caller`` (a city's node or a role, by its certificate) to
        ``city``'s ``service``, its calls recorded on the caller's city's chain."""
        key = (caller.name if isinstance(caller, Role) else caller, city, service)
        if key not in self._channels:
            self._channels[key] = self.outbound.channel(caller, city, service)
        return self._channels[key]

    async def close(self) -> None:
        """Close the channels and wait for the records of every call they made."""
        await self.outbound.close()

    def code_of(self, city: str) -> str:
        return self.region.city(city).admin_code

    def say(self, text: str) -> None:
        self.console.print(text)

    # --- records ---------------------------------------------------------------------------
    def penalty(
        self,
        *,
        department: tuple[str, str],
        code: str,
        name: str,
        number: str,
        decided: date,
        reported: date,
        domain: common_pb2.SupervisionDomain.ValueType,
        severity: record_intake_pb2.Severity.ValueType,
        violation: str,
    ) -> record_intake_pb2.CreditRecord:
        return record_intake_pb2.CreditRecord(
            category=record_intake_pb2.RECORD_CATEGORY_ADMIN_PENALTY,
            department_code=department[0],
            department_name=department[1],
            subject=record_intake_pb2.RecordSubject(
                subject_type=common_pb2.SUBJECT_TYPE_ORGANISATION,
                name=name,
                uscc=code,
                legal_representative="王建国",
            ),
            decision_number=number,
            decision_date=decided.isoformat(),
            report_date=reported.isoformat(),
            penalty=record_intake_pb2.PenaltyDetails(
                domain=domain,
                penalty_types=[record_intake_pb2.PENALTY_TYPE_FINE],
                fine_amount_fen=self.rng.randrange(5_000, 200_000) * 100,
                violation=violation,
                legal_basis="《中华人民共和国行政处罚法》第二十八条",
                severity=severity,
            ),
        )

    def licence(
        self,
        *,
        department: tuple[str, str],
        code: str,
        name: str,
        number: str,
        decided: date,
        reported: date,
    ) -> record_intake_pb2.CreditRecord:
        return record_intake_pb2.CreditRecord(
            category=record_intake_pb2.RECORD_CATEGORY_ADMIN_LICENSING,
            department_code=department[0],
            department_name=department[1],
            subject=record_intake_pb2.RecordSubject(
                subject_type=common_pb2.SUBJECT_TYPE_ORGANISATION,
                name=name,
                uscc=code,
                legal_representative="李秀英",
            ),
            decision_number=number,
            decision_date=decided.isoformat(),
            report_date=reported.isoformat(),
            licensing=record_intake_pb2.LicensingDetails(
                licence_type=record_intake_pb2.LICENCE_TYPE_GENERAL,
                licence_name="食品经营许可证",
                licence_number=f"JY1{self.rng.randrange(10**12, 10**13)}",
                licensed_matter="预包装食品销售",
                valid_from=decided.isoformat(),
                valid_to=decided.replace(year=decided.year + 5).isoformat(),
            ),
        )

    def regulator(self, city: str, domain: str) -> Role:
        """A regulator of ``city`` acting in ``domain``, from deploy/config/city-roles.yaml."""
        roles = load_city_roles(
            self.deployment.config_dir / "city-roles.yaml", cities=self.region.cities.keys()
        )
        role = roles.regulator_for(city, [domain])
        if role is None:
            raise ValueError(f"city-roles.yaml names no regulator of {city} acting in {domain}")
        return role

    async def submit(
        self, city: str, records: list[record_intake_pb2.CreditRecord]
    ) -> list[record_intake_pb2.RecordResult]:
        """Each record as its department submits it: with the department's own certificate."""
        by_department: dict[str, list[int]] = {}
        for index, record in enumerate(records):
            by_department.setdefault(record.department_code, []).append(index)
        answered: dict[int, record_intake_pb2.RecordResult] = {}
        for department, indexes in by_department.items():
            channel = self.channel(Role.department(city, department), city, "intake")
            response = await record_intake_pb2_grpc.RecordIntakeServiceStub(channel).SubmitRecords(
                record_intake_pb2.SubmitRecordsRequest(records=[records[i] for i in indexes]),
                timeout=30,
            )
            answered.update(zip(indexes, response.results, strict=True))
        results = [answered[index] for index in range(len(records))]
        self.outcomes.submitted[city] = self.outcomes.submitted.get(city, 0) + len(results)
        for result in results:
            if result.HasField("accepted"):
                self.outcomes.accepted[city] = self.outcomes.accepted.get(city, 0) + 1
            else:
                self.outcomes.rejected[city] = self.outcomes.rejected.get(city, 0) + 1
                self.outcomes.rejection_codes += [r.code for r in result.rejected.reasons]
        return results

    # --- 1. 双公示 ------------------------------------------------------------------------
    async def disclosure(self) -> None:
        self.say("\n[bold]1. 双公示: departments report licensing and penalty decisions[/bold]")
        division = "320505"  # 苏州高新区
        market = (make_code(self.rng, "11", "320500"), "苏州市市场监督管理局")
        health = (make_code(self.rng, "11", "320500"), "苏州市卫生健康委员会")
        self.departments = {market[0]: market[1], health[0]: health[1]}
        decided = add_working_days(self.today, -15)
        on_time = add_working_days(decided, 3)
        late = add_working_days(decided, 11)
        companies = [
            (make_code(self.rng, "91", division), name)
            for name in (
                "苏州市姑苏区老字号糕团有限公司",
                "苏州工业园区星海餐饮管理有限公司",
                "苏州高新区枫桥生鲜超市有限公司",
                "苏州吴中区太湖水产贸易有限公司",
                "苏州相城区阳澄湖大闸蟹专业合作社",
            )
        ]
        self.companies = companies
        records = [
            self.licence(
                department=market,
                code=c,
                name=n,
                number=f"苏市监许〔{decided.year}〕{i + 101}号",
                decided=decided,
                reported=on_time,
            )
            for i, (c, n) in enumerate(companies[:3])
        ]
        records.append(
            self.penalty(
                department=market,
                code=companies[3][0],
                name=companies[3][1],
                number=f"苏市监罚〔{decided.year}〕2201号",
                decided=decided,
                reported=late,
                domain=common_pb2.SUPERVISION_DOMAIN_FOOD_DRUG,
                severity=record_intake_pb2.SEVERITY_GENERAL,
                violation="经营超过保质期的食品",
            )
        )
        records.append(  # a typo in the code: rejected with the reason, not lost
            self.licence(
                department=market,
                code=corrupt(companies[4][0]),
                name=companies[4][1],
                number=f"苏市监许〔{decided.year}〕105号",
                decided=decided,
                reported=on_time,
            )
        )
        records += [
            self.penalty(
                department=health,
                code=c,
                name=n,
                number=f"苏卫罚〔{decided.year}〕{31 + i}号",
                decided=decided,
                reported=on_time,
                domain=common_pb2.SUPERVISION_DOMAIN_MEDICAL,
                severity=record_intake_pb2.SEVERITY_GENERAL,
                violation="未按规定公示医疗服务价格",
            )
            for i, (c, n) in enumerate(companies[:2])
        ]
        results = await self.submit("suzhou", records)
        table = Table("decision", "department", "subject", "outcome")
        for record, result in zip(records, results, strict=True):
            outcome = (
                f"accepted v{result.accepted.version}"
                if result.HasField("accepted")
                else "[red]rejected[/red]: "
                + "; ".join(dict.fromkeys(f"{r.field} {r.code}" for r in result.rejected.reasons))
            )
            table.add_row(
                record.decision_number, record.department_name, record.subject.name, outcome
            )
        self.console.print(table)

        settings = load_settings(
            {
                "CREDITLINK_CITY": "suzhou",
                "KAFKA_BOOTSTRAP": self.bootstrap,
                "CREDITLINK_TOPIC_PREFIX": self.region.city("suzhou").topic_prefix,
            }
        )
        serde = AvroSerde()
        expected = {market[0]: 5, health[0]: 2}
        quality = Table(
            "department",
            "decision day",
            "submitted",
            "valid",
            "on time",
            "compliance",
            "timeliness",
            title="双公示 quality (quality.disclosure.v1)",
        )
        for code, name in self.departments.items():

            async def figures(code: str = code) -> dict[str, Any] | None:
                found = await query_quality(settings, serde, code, decided)
                if found and found["submitted_count"] == expected[code]:
                    return found
                return None

            found = await eventually(figures, within=60, every=1.0)
            if found is None:
                continue
            self.outcomes.quality.append(found)
            quality.add_row(
                name,
                decided.isoformat(),
                str(found["submitted_count"]),
                str(found["valid_count"]),
                str(found["reported_on_time_count"]),
                _percent(found["compliance_rate"]),
                _percent(found["timeliness_rate"]),
            )
        self.console.print(quality)

    # --- 2. black list across the region ---------------------------------------------------
    def list_decision(
        self,
        action: record_intake_pb2.ListAction.ValueType,
        number: str,
        *,
        reason: common_pb2.RemovalReason.ValueType = common_pb2.REMOVAL_REASON_UNSPECIFIED,
        designation: str = "",
    ) -> record_intake_pb2.CreditRecord:
        code, name = self.black_subject
        return record_intake_pb2.CreditRecord(
            category=record_intake_pb2.RECORD_CATEGORY_LIST_DECISION,
            department_code=self.black_department[0],
            department_name=self.black_department[1],
            subject=record_intake_pb2.RecordSubject(
                subject_type=common_pb2.SUBJECT_TYPE_ORGANISATION, name=name, uscc=code
            ),
            decision_number=number,
            decision_date=self.today.isoformat(),
            report_date=self.today.isoformat(),
            list_decision=record_intake_pb2.ListDecisionDetails(
                list_type=common_pb2.LIST_TYPE_BLACK,
                list_name="严重失信主体名单",
                action=action,
                removal_reason=reason,
                designation_decision_number=designation,
                legal_basis="《市场监督管理严重违法失信名单管理办法》第二条",
                effective_from=self.today.isoformat(),
                expires_at=self.today.replace(year=self.today.year + 3).isoformat(),
            ),
        )

    async def memberships(self, city: str, caller: str) -> list[credit_check_pb2.Membership]:
        stub = credit_check_pb2_grpc.CreditCheckServiceStub(self.channel(caller, city, "lists"))
        answer = await stub.CheckSubject(
            credit_check_pb2.CheckSubjectRequest(
                subject_key=f"L:{self.black_subject[0]}",
                scenario=credit_check_pb2.SCENARIO_GOVERNMENT_PROCUREMENT,
                purpose="demo: government procurement bid evaluation",
            ),
            timeout=10,
        )
        self._last_measures = [m.description or m.measure_code for m in answer.measures]
        return list(answer.memberships)

    async def blacklist(self) -> None:
        self.say("\n[bold]2. A black-listing in Suzhou, seen region-wide, then repaired[/bold]")
        self.black_subject = (
            make_code(self.rng, "91", "320506"),
            "苏州吴中区某建材贸易有限公司",
        )
        self.black_department = (make_code(self.rng, "11", "320500"), "苏州市市场监督管理局")
        designation = f"苏市监严失〔{self.today.year}〕7号"
        results = await self.submit(
            "suzhou",
            [self.list_decision(record_intake_pb2.LIST_ACTION_DESIGNATE, designation)],
        )
        if not results[0].HasField("accepted"):
            self.say(f"[red]designation rejected: {results[0].rejected.reasons}[/red]")
            return
        table = Table("checked in", "list", "issuer", "status", "measures in procurement")
        for city in ("suzhou", "wuxi", "changzhou"):

            async def active(city: str = city) -> list[credit_check_pb2.Membership] | None:
                found = [
                    m
                    for m in await self.memberships(city, city)
                    if m.status == common_pb2.LIST_ENTRY_STATUS_ACTIVE
                ]
                return found or None

            seen = await eventually(active, within=60)
            self.outcomes.blacklisted_seen_in[city] = bool(seen)
            self.outcomes.measures_seen[city] = list(self._last_measures)
            membership = seen[0] if seen else None
            table.add_row(
                self.region.city(city).name,
                membership.list_name if membership else "[red]not visible[/red]",
                membership.issuing_city if membership else "-",
                common_pb2.ListEntryStatus.Name(membership.status).removeprefix(
                    "LIST_ENTRY_STATUS_"
                )
                if membership
                else "-",
                "; ".join(self._last_measures) or "-",
            )
        self.console.print(table)

        # Wuxi cannot change Suzhou's entry: its intake refuses a removal of a Suzhou entry,
        # and a list change from Wuxi about it would be refused by every mirror (tested in
        # tests/integration/test_lists_region.py).
        foreign = self.list_decision(
            record_intake_pb2.LIST_ACTION_REMOVE,
            f"锡市监撤〔{self.today.year}〕1号",
            reason=common_pb2.REMOVAL_REASON_REVOKED,
            designation=designation,
        )
        foreign.department_code = make_code(self.rng, "11", "320200")
        foreign.department_name = "无锡市市场监督管理局"
        await self.submit("wuxi", [foreign])
        await asyncio.sleep(2.0)
        still = [
            m
            for m in await self.memberships("changzhou", "changzhou")
            if m.status == common_pb2.LIST_ENTRY_STATUS_ACTIVE
        ]
        self.outcomes.foreign_removal_refused = bool(still)
        self.say(
            "Wuxi tries to remove Suzhou's entry: "
            + (
                "[green]refused — the entry stays active everywhere[/green]"
                if still
                else "[red]it was removed![/red]"
            )
        )

        repaired = await self.submit(
            "suzhou",
            [
                self.list_decision(
                    record_intake_pb2.LIST_ACTION_REPAIR,
                    f"苏信修〔{self.today.year}〕12号",
                    designation=designation,
                )
            ],
        )
        if not repaired[0].HasField("accepted"):
            self.say(f"credit repair rejected: {[r.message for r in repaired[0].rejected.reasons]}")
        table = Table("checked in", "active memberships after the repair")
        for city in ("suzhou", "wuxi", "changzhou"):

            async def gone(city: str = city) -> bool | None:
                active = [
                    m
                    for m in await self.memberships(city, city)
                    if m.status == common_pb2.LIST_ENTRY_STATUS_ACTIVE
                ]
                return True if not active else None

            cleared = await eventually(gone, within=60)
            self.outcomes.removed_everywhere[city] = bool(cleared)
            table.add_row(
                self.region.city(city).name, "none" if cleared else "[red]still listed[/red]"
            )
        self.console.print(table)

    # --- 3. scores ---------------------------------------------------------------------------
    async def scores(self, import_scores: Callable[[str, Path], Awaitable[int]]) -> None:
        self.say("\n[bold]3. Personal credit scores recognised across cities[/bold]")
        scales = _scales(self.deployment)
        key = load_region_key({"CREDITLINK_DEV": "1"})
        residents: dict[str, list[tuple[str, float]]] = {}
        with tempfile.TemporaryDirectory() as scratch:
            for city, division in (("suzhou", "320505"), ("wuxi", "320211")):
                scale = scales[city]
                low, high = float(scale["min_score"]), float(scale["max_score"])
                middle, spread = (low + high) / 2, (high - low) / 6
                people = [
                    (
                        make_resident_id(self.rng, division),
                        round(min(high, max(low, self.rng.gauss(middle, spread)))),
                    )
                    for _ in range(400)
                ]
                residents[city] = [(rid, float(score)) for rid, score in people]
                path = Path(scratch) / f"{city}-scores.csv"
                path.write_text(
                    "resident_id,score\n" + "".join(f"{r},{s}\n" for r, s in people),
                    encoding="utf-8",
                )
                status = await import_scores(city, path)
                self.say(
                    f"{self.region.city(city).name}: imported {len(people)} scores (exit {status})"
                )

        # A Suzhou resident near the top of 桂花分 asks Wuxi to recognise their score.
        resident, _score = max(residents["suzhou"], key=lambda p: p[1])
        subject = f"N:{pseudonym(resident, key)}"
        # The resident consents at Suzhou's counter: Suzhou's consent service signs the token
        # (only the home city may), for Wuxi, for score recognition, for ten minutes.
        consent = consent_pb2_grpc.ConsentServiceStub(self.channel("suzhou", "suzhou", "lists"))
        issued = await consent.IssueConsent(
            consent_pb2.IssueConsentRequest(
                subject_key=subject,
                audience_city=self.code_of("wuxi"),
                purpose="score-recognition",
                lifetime_seconds=600,
            ),
            timeout=10,
        )
        token = issued.token
        stub = score_recognition_pb2_grpc.ScoreRecognitionServiceStub(
            self.channel("wuxi", "suzhou", "scores")
        )

        async def recognise() -> score_recognition_pb2.RecognizeScoreResponse | None:
            answer: score_recognition_pb2.RecognizeScoreResponse = await stub.RecognizeScore(
                score_recognition_pb2.RecognizeScoreRequest(
                    subject_key=subject,
                    consent_token=token,
                    purpose="无锡人才公寓免押金申请",
                    request_id=f"demo-{subject[:12]}",
                ),
                timeout=10,
            )
            return answer

        answer = await eventually(recognise, within=90, every=1.0)
        if answer is None:
            self.say("[red]no recognition: the scales were not published in time[/red]")
            return
        self.outcomes.recognition = {
            "home_score": answer.home_score,
            "home_percentile": answer.home_percentile,
            "linked_score": answer.linked_score,
            "common_grade": answer.common_grade,
            "home_version": answer.home_distribution_version,
            "requesting_version": answer.requesting_distribution_version,
            "incentives": list(answer.incentives),
        }
        table = Table("", "value", title="RecognizeScore: Suzhou resident, asked by Wuxi")
        table.add_row("subject", f"{subject[:18]}… (pseudonym; the ID number never left Suzhou)")
        table.add_row(
            answer.home_scale_name,
            f"{answer.home_score:g} (percentile {answer.home_percentile:.1f})",
        )
        table.add_row(
            answer.requesting_scale_name, f"{answer.linked_score:.0f} (equipercentile link)"
        )
        table.add_row("common grade", answer.common_grade)
        table.add_row(
            "distributions",
            f"{answer.home_distribution_version} → {answer.requesting_distribution_version}",
        )
        table.add_row("Wuxi grants", "; ".join(answer.incentives) or "-")
        self.console.print(table)

        # The resident withdraws the consent at Suzhou; Wuxi's next request is refused.
        started = time.monotonic()
        await consent.RevokeConsent(consent_pb2.RevokeConsentRequest(token=token), timeout=10)

        async def refused() -> str | None:
            try:
                await recognise()
            except grpc.aio.AioRpcError as exc:
                return dict(exc.trailing_metadata() or ()).get("creditlink-denial")
            return None

        denial = None
        deadline = started + 30
        while denial is None and time.monotonic() < deadline:
            denial = await refused()
            if denial is None:
                await asyncio.sleep(0.1)
        self.outcomes.revocation = {
            "denial": denial,
            "seconds": round(time.monotonic() - started, 2),
        }
        self.say(
            f"consent withdrawn at Suzhou: Wuxi's next request refused ({denial}) after "
            f"{self.outcomes.revocation['seconds']} s"
        )

    # --- 4. alerts ---------------------------------------------------------------------------
    async def alert(self) -> None:
        self.say("\n[bold]4. A serious food-safety penalty in Changzhou, alerted to Suzhou[/bold]")
        code, name = make_code(self.rng, "91", "320507"), "苏州相城区某食品加工有限公司"
        department = (make_code(self.rng, "11", "320400"), "常州市市场监督管理局")
        # Each city's food-safety regulator, with its own certificate.
        subscribe = alert_exchange_pb2_grpc.AlertExchangeServiceStub(
            self.channel(self.regulator("suzhou", "FOOD_DRUG"), "suzhou", "alerts")
        )
        origin = alert_exchange_pb2_grpc.AlertExchangeServiceStub(
            self.channel(self.regulator("changzhou", "FOOD_DRUG"), "changzhou", "alerts")
        )
        request = alert_exchange_pb2.SubscribeAlertsRequest(
            domains=[common_pb2.SUPERVISION_DOMAIN_FOOD_DRUG]
        )
        suzhou_stream = subscribe.SubscribeAlerts(request)
        changzhou_stream = origin.SubscribeAlerts(request)
        started = time.monotonic()
        await self.submit(
            "changzhou",
            [
                self.penalty(
                    department=department,
                    code=code,
                    name=name,
                    number=f"常市监罚〔{self.today.year}〕3301号",
                    decided=self.today,
                    reported=self.today,
                    domain=common_pb2.SUPERVISION_DOMAIN_FOOD_DRUG,
                    severity=record_intake_pb2.SEVERITY_SERIOUS,
                    violation="生产经营致病性微生物超标的食品",
                )
            ],
        )

        async def next_alert(stream: Any, subject_key: str) -> alert_exchange_pb2.Alert | None:
            async for message in stream:
                if message.HasField("alert") and message.alert.subject_key == subject_key:
                    found: alert_exchange_pb2.Alert = message.alert
                    return found
            return None

        try:
            alert = await asyncio.wait_for(next_alert(suzhou_stream, f"L:{code}"), timeout=60)
        except TimeoutError:
            alert = None
        if alert is None:
            self.say("[red]no alert reached the Suzhou regulator[/red]")
            suzhou_stream.cancel()
            changzhou_stream.cancel()
            return
        latency = time.monotonic() - started
        self.outcomes.alert = {
            "alert_id": alert.alert_id,
            "rule_id": alert.rule_id,
            "origin": alert.origin_city,
            "targets": list(alert.target_cities),
            "latency_s": latency,
        }
        table = Table("", "value", title="At the Suzhou regulator (SubscribeAlerts)")
        table.add_row("alert", alert.alert_id)
        table.add_row("rule", alert.rule_id)
        domain = common_pb2.SupervisionDomain.Name(alert.domain)
        severity = alert_exchange_pb2.AlertSeverity.Name(alert.severity)
        table.add_row("domain / severity", f"{domain} / {severity}")
        table.add_row("from → to", f"{alert.origin_city} → {', '.join(alert.target_cities)}")
        table.add_row("subject", f"{alert.subject_name} ({alert.subject_key})")
        table.add_row("why", alert.explanation)
        table.add_row("seconds from submission", f"{latency:.2f}")
        self.console.print(table)

        await subscribe.UpdateAlertStatus(
            alert_exchange_pb2.UpdateAlertStatusRequest(
                alert_id=alert.alert_id,
                status=alert_exchange_pb2.ALERT_STATUS_ACKNOWLEDGED,
                # The node records the regulator its certificate names, not this field.
                note="已接收，安排属地核查",
                change_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"ack:{alert.alert_id}")),
            ),
            timeout=10,
        )

        async def ack_at_origin() -> alert_exchange_pb2.AlertStatusChange | None:
            async for message in changzhou_stream:
                if (
                    message.HasField("status_change")
                    and message.status_change.alert_id == alert.alert_id
                    and message.status_change.status == alert_exchange_pb2.ALERT_STATUS_ACKNOWLEDGED
                ):
                    change: alert_exchange_pb2.AlertStatusChange = message.status_change
                    return change
            return None

        try:
            change = await asyncio.wait_for(ack_at_origin(), timeout=60)
        except TimeoutError:
            change = None
        suzhou_stream.cancel()
        changzhou_stream.cancel()
        self.outcomes.ack_seen_at_origin = change is not None
        self.say(
            "Acknowledged in Suzhou; Changzhou sees: "
            + (
                f"[green]{alert_exchange_pb2.AlertStatus.Name(change.status)} by {change.by_city} "
                f"({change.by_regulator}: {change.note})[/green]"
                if change
                else "[red]nothing[/red]"
            )
        )

    async def evidence(self) -> None:
        """Each city's audit chains, checked as an outsider would: signed by the city's key,
        passing through every signed head the other cities hold, and each receipt of its
        calls to peers matching the peer's record (docs/trust.md)."""
        self.say("\n[bold]5. The evidence: each city's audit against what its peers hold[/bold]")
        cert_dir = self.deployment.cert_dir
        codes = {key: city.admin_code for key, city in self.region.cities.items()}
        keyring = AuditKeyring.from_directory(cert_dir, codes)
        local = CITIES
        settings_of = self.settings_of
        # The scenario's own calls are all answered and recorded: nothing is left to write.
        for writer in self.outbound.writers.values():
            await writer.flush()

        for city in local:
            code = codes[city]

            async def verified(city: str = city, code: str = code) -> tuple[Any, int] | None:
                held = []
                for peer in (p for p in local if p != city):
                    peer_settings = settings_of(peer)
                    kept = await read_checkpoints(
                        peer_settings, peer_settings.topic(CHECKPOINTS_TOPIC)
                    )
                    held += [c for c in kept if c.city == code]
                if not held:
                    return None  # heads are handed every few seconds
                own = settings_of(city)
                messages = await read_audit_topic(own, own.topic(AUDIT_TOPIC))
                report = verify_chain(
                    messages, keyring=keyring, checkpoints=CheckpointsHeld(code, held, keyring)
                )
                # A batch still being written can leave its first records unsigned a moment.
                return (report, len(held)) if report.ok else None

            found = await eventually(verified, within=30, every=1.0)
            report, heads = found if found is not None else (None, 0)
            records = sum(s.records for s in report.chains.values()) if report else 0
            # Its calls to peers, and the scenario's calls as the city to its own node: each
            # receipt it keeps names the callee's record of the call.
            own = settings_of(city)
            calls = await read_audit_topic(own, own.topic(AUDIT_TOPIC))
            receipts, receipt_problems = 0, []
            for callee in local:
                callee_settings = settings_of(callee)
                answered = await read_audit_topic(
                    callee_settings, callee_settings.topic(AUDIT_TOPIC)
                )
                count, problems = check_receipts_of(calls, answered)
                receipts += count
                receipt_problems += problems
            scenario_calls = _receipts_on(calls, SCENARIO_CHAIN)
            for problem in receipt_problems:
                self.say(f"[red]{problem}[/red]")
            self.outcomes.evidence[city] = {
                "records": records,
                "heads_held": heads,
                "ok": report is not None,
                "receipts": receipts,
                "receipts_ok": not receipt_problems,
                # The scenario client's own calls as the city: (recorded, with a receipt).
                "scenario_calls": scenario_calls,
            }
            self.say(
                f"{self.region.city(city).name}: {records} audit records, "
                + (
                    f"[green]signed and through all {heads} heads its peers hold[/green]"
                    if report
                    else "[red]not verified against its peers' heads[/red]"
                )
                + (
                    f"; {receipts} calls to nodes, each receipt matching the callee's record"
                    if not receipt_problems
                    else f"; [red]{len(receipt_problems)} receipt problem(s)[/red]"
                )
                + f" ({scenario_calls[0]} of them the scenario's own, on chain "
                f"{SCENARIO_CHAIN!r})"
            )


def _receipts_on(messages: list[AuditMessage], chain: str) -> tuple[int, int]:
    """How many OUTBOUND records ``chain`` holds on an audit topic, and how many of them keep
    the callee's receipt."""
    serde = AvroSerde()
    records = [
        serde.decode(m.value, reader=serde.writer_of(m.value))
        for m in messages
        if parse_key(m.key)[0] == chain
    ]
    outbound = [r for r in records if r["direction"] == "OUTBOUND"]
    return len(outbound), sum(1 for r in outbound if r.get("receipt") is not None)


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.0f}%"
