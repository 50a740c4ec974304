"""The supervision rules (docs/design.md §4.7), as plain logic over per-subject state.

Nothing here touches Kafka, RocksDB or the network: the engine (``engine.py``) folds each
event into a :class:`SubjectState`, asks the :class:`RuleSet` what to raise, and persists
both. The rules are therefore tested without a broker, and a replay of the same input gives
the same drafts with the same dedupe keys, hence the same alert ids.

Implemented rules (ids carry a version; configuration in ``deploy/config/alert-rules.yaml``):

=====================================  ===========================================================
``blacklisted-operating-elsewhere.v1``  a subject on another city's black list is registered in,
                                        or holds records in, this city
``repeated-penalties-in-domain.v1``     N penalties in one domain within a sliding window,
                                        counted region-wide at the subject's home city
``serious-penalty-linkage.v1``          a serious penalty in a linked domain here → the subject's
                                        other cities
``cross-region-penalty-notice.v1``      a penalty here for a subject registered in another
                                        connected city → that city (feeds the region-wide count)
``government-dishonest-debtor.v1``      a government body recorded as a dishonest judgment debtor
=====================================  ===========================================================

Which node raises what, so that two nodes never raise the same alert: every rule fires in
the node that *observes* the triggering record or list entry, and the repeated-penalties
count runs only at the subject's home (registration) city when that city is a connected node
— every other city sends it a penalty notice. See docs/alerts.md, "Who raises what".

Adding a rule: subclass :class:`Rule`, declare ``id``, ``facts`` (placeholders its
explanation may use) and ``defaults`` (its parameters), override the hooks it needs, and
register it in :data:`RULE_TYPES`. Example::

    class LicenceRevokedElsewhere(Rule):
        id = "licence-revoked-elsewhere.v1"
        facts = frozenset({"subject_name", "city_name"})
        defaults = {"domains": ["FOOD_DRUG"]}

        def on_record(self, ctx, state, record, raised):
            if record.licence_name is None:
                return []
            return self.draft(ctx, state, dedupe_key=record.record_id, ...)
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, ClassVar, Final

from services.alerts.model import (
    LINKED_DOMAINS,
    AlertsConfigError,
    Domain,
    RuleConfig,
    RulesConfig,
    Severity,
    city_codes,
    rule_alert_id,
)
from services.common.identifiers import check_uscc
from services.common.region import Region

NATURAL_PERSON_PREFIX: Final = "N:"
ORGANISATION_PREFIX: Final = "L:"
RECENT_RECORDS_KEPT: Final = 5

# Attribute names an alert carries when it reports one penalty; a receiving node turns them
# into a penalty observation for the region-wide repeated-penalties count.
PENALTY_RECORD_ID: Final = "penalty_record_id"
PENALTY_CITY: Final = "penalty_city"
PENALTY_DOMAIN: Final = "penalty_domain"
PENALTY_DECISION_DATE: Final = "penalty_decision_date"
PENALTY_SEVERITY: Final = "penalty_severity"


# --- inputs --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordFacts:
    """What the rules read of one ``CreditRecord`` (decoded Avro)."""

    record_id: str
    version: int
    category: str
    city_code: str
    subject_key: str
    subject_name: str | None
    decision_number: str
    decision_date: date
    department_name: str = ""
    penalty_domain: Domain | None = None
    dishonesty: str | None = None  # GENERAL | SERIOUS (publicity severity)
    takedown_date: date | None = None
    licence_name: str | None = None
    court_government_flag: bool = False
    court_performance: str | None = None
    court_name: str | None = None
    case_number: str | None = None

    @property
    def is_penalty(self) -> bool:
        return self.category == "ADMIN_PENALTY" and self.penalty_domain is not None

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> RecordFacts:
        subject = record["subject"]
        publicity = record.get("publicity") or {}
        penalty = record.get("penalty")
        licensing = record.get("licensing")
        court = record.get("court")
        is_person = subject["subject_type"] == "NATURAL_PERSON"
        return cls(
            record_id=str(record["record_id"]),
            version=int(record["version"]),
            category=str(record["category"]),
            city_code=str(record["city_code"]),
            subject_key=str(subject["subject_key"]),
            # Natural persons' names never leave the home node (CreditRecord.subject.name).
            subject_name=None if is_person else str(subject["name"]),
            decision_number=str(record["decision_number"]),
            decision_date=record["decision_date"],
            department_name=str(record.get("department_name", "")),
            penalty_domain=Domain(penalty["domain"]) if penalty else None,
            dishonesty=publicity.get("severity"),
            takedown_date=publicity.get("takedown_date"),
            licence_name=str(licensing["licence_name"]) if licensing else None,
            court_government_flag=bool(court.get("debtor_is_government_body")) if court else False,
            court_performance=str(court["performance"]) if court else None,
            court_name=str(court["court_name"]) if court else None,
            case_number=str(court["case_number"]) if court else None,
        )


@dataclass(slots=True)
class EntryView:
    """A list entry as the rules need it (``ListEntry``, own or mirrored)."""

    entry_key: str
    issuing_city: str
    list_type: str
    list_name: str
    status: str  # ACTIVE | OBJECTION_PENDING | REMOVED
    version: int
    domain: Domain | None = None

    @classmethod
    def from_avro(cls, entry: Mapping[str, Any]) -> EntryView:
        domain_raw = (entry.get("attributes") or {}).get("domain")
        try:
            domain = Domain(domain_raw) if domain_raw else None
        except ValueError:
            domain = None
        return cls(
            entry_key=str(entry["entry_key"]),
            issuing_city=str(entry["issuing_city"]),
            list_type=str(entry["list_type"]),
            list_name=str(entry["list_name"]),
            status=str(entry["status"]),
            version=int(entry["version"]),
            domain=domain,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "entry_key": self.entry_key,
            "issuing_city": self.issuing_city,
            "list_type": self.list_type,
            "list_name": self.list_name,
            "status": self.status,
            "version": self.version,
            "domain": self.domain.value if self.domain else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EntryView:
        return cls(**{**data, "domain": Domain(data["domain"]) if data.get("domain") else None})


@dataclass(slots=True)
class PenaltyObservation:
    """One penalty the node knows of, from its own records or reported by a peer's alert."""

    record_id: str
    city: str
    domain: Domain
    decision_date: date
    serious: bool = False
    used_by: str | None = None  # the repeated-penalties alert that counted it

    def to_json(self) -> dict[str, Any]:
        return {
            "record_id": self.record_id,
            "city": self.city,
            "domain": self.domain.value,
            "decision_date": self.decision_date.isoformat(),
            "serious": self.serious,
            "used_by": self.used_by,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PenaltyObservation:
        return cls(
            record_id=str(data["record_id"]),
            city=str(data["city"]),
            domain=Domain(data["domain"]),
            decision_date=date.fromisoformat(str(data["decision_date"])),
            serious=bool(data.get("serious", False)),
            used_by=data.get("used_by"),
        )

    @classmethod
    def from_alert_attributes(cls, attributes: Mapping[str, str]) -> PenaltyObservation | None:
        """The penalty an alert reports (see ``PENALTY_*``), or None if it reports none."""
        try:
            return cls(
                record_id=attributes[PENALTY_RECORD_ID],
                city=attributes[PENALTY_CITY],
                domain=Domain(attributes[PENALTY_DOMAIN]),
                decision_date=date.fromisoformat(attributes[PENALTY_DECISION_DATE]),
                serious=attributes.get(PENALTY_SEVERITY) == "SERIOUS",
            )
        except (KeyError, ValueError):
            return None


def penalty_attributes(record: RecordFacts) -> dict[str, str]:
    assert record.penalty_domain is not None
    return {
        PENALTY_RECORD_ID: record.record_id,
        PENALTY_CITY: record.city_code,
        PENALTY_DOMAIN: record.penalty_domain.value,
        PENALTY_DECISION_DATE: record.decision_date.isoformat(),
        PENALTY_SEVERITY: record.dishonesty or "GENERAL",
    }


# --- state ---------------------------------------------------------------------------------


@dataclass(slots=True)
class SubjectState:
    """Everything the rules remember about one subject (key ``sub/<subject_key>``)."""

    subject_key: str
    subject_name: str | None = None
    local_records: int = 0
    recent_local_records: list[str] = field(default_factory=list)
    local_licences: list[str] = field(default_factory=list)
    entries: dict[str, EntryView] = field(default_factory=dict)
    penalties: dict[str, PenaltyObservation] = field(default_factory=dict)
    # City code -> how the node learnt the subject is active there (e.g. "alert:<rule>").
    peer_cities: dict[str, str] = field(default_factory=dict)

    @property
    def is_natural_person(self) -> bool:
        return self.subject_key.startswith(NATURAL_PERSON_PREFIX)

    def to_json(self) -> dict[str, Any]:
        return {
            "subject_key": self.subject_key,
            "subject_name": self.subject_name,
            "local_records": self.local_records,
            "recent_local_records": self.recent_local_records,
            "local_licences": self.local_licences,
            "entries": {k: v.to_json() for k, v in self.entries.items()},
            "penalties": {k: v.to_json() for k, v in self.penalties.items()},
            "peer_cities": self.peer_cities,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SubjectState:
        return cls(
            subject_key=str(data["subject_key"]),
            subject_name=data.get("subject_name"),
            local_records=int(data.get("local_records", 0)),
            recent_local_records=list(data.get("recent_local_records", [])),
            local_licences=list(data.get("local_licences", [])),
            entries={k: EntryView.from_json(v) for k, v in data.get("entries", {}).items()},
            penalties={
                k: PenaltyObservation.from_json(v) for k, v in data.get("penalties", {}).items()
            },
            peer_cities=dict(data.get("peer_cities", {})),
        )

    # --- folding events in ------------------------------------------------------------

    def apply_record(self, record: RecordFacts, *, city_code: str, first_version: bool) -> None:
        """Fold in a new record (or a newer version of one). Local records are presence."""
        if record.subject_name:
            self.subject_name = record.subject_name
        if record.city_code == city_code:
            if first_version:
                self.local_records += 1
            if record.record_id not in self.recent_local_records:
                self.recent_local_records = [
                    *self.recent_local_records[-(RECENT_RECORDS_KEPT - 1) :],
                    record.record_id,
                ]
            if record.licence_name and record.licence_name not in self.local_licences:
                self.local_licences = [
                    *self.local_licences[-(RECENT_RECORDS_KEPT - 1) :],
                    record.licence_name,
                ]
        elif record.city_code:
            self.peer_cities.setdefault(record.city_code, "record")
        existing = self.penalties.get(record.record_id)
        if record.is_penalty:
            assert record.penalty_domain is not None
            observation = PenaltyObservation(
                record_id=record.record_id,
                city=record.city_code,
                domain=record.penalty_domain,
                decision_date=record.decision_date,
                serious=record.dishonesty == "SERIOUS",
                used_by=existing.used_by if existing else None,
            )
            self.penalties[record.record_id] = observation
        elif existing is not None and existing.used_by is None:
            # A correction turned the penalty into something else: it no longer counts.
            del self.penalties[record.record_id]

    def apply_entry(self, entry: EntryView) -> bool:
        """Fold in a list entry state; True when a newer version leaves it on the list, so
        the rules look at it again (an objection dismissed puts it back in force; the alert
        ids keep a re-evaluation from raising twice)."""
        known = self.entries.get(entry.entry_key)
        if known is not None and known.version >= entry.version:
            return False
        self.entries[entry.entry_key] = entry
        return entry.status != "REMOVED"

    def remove_entry(self, entry_key: str) -> None:
        """A tombstone on ``credit.lists.v1``: the issuer removed the entry."""
        known = self.entries.get(entry_key)
        if known is not None:
            known.status = "REMOVED"

    def apply_observation(self, observation: PenaltyObservation) -> bool:
        """Fold in a penalty reported by a peer; True when it is new."""
        if observation.record_id in self.penalties:
            return False
        self.penalties[observation.record_id] = observation
        return True

    def prune(self, *, today: date, keep_days: int) -> None:
        """Forget penalties older than any rule can still count."""
        horizon = today - timedelta(days=keep_days)
        self.penalties = {k: v for k, v in self.penalties.items() if v.decision_date >= horizon}


# --- rule framework ------------------------------------------------------------------------


@functools.lru_cache(maxsize=65_536)
def registration_division(uscc: str) -> str | None:
    """GB/T 2260 division of a valid (or tolerated pilot) USCC; cached, as several rules ask
    about the same subject for every record."""
    return check_uscc(uscc).division


@dataclass(frozen=True, slots=True)
class RuleContext:
    """Where and when the rules run."""

    city_code: str
    region: Region
    today: date

    def city_name(self, code: str) -> str:
        for city in self.region.cities.values():
            if city.admin_code == code:
                return city.name
        return code

    def is_region_city(self, code: str) -> bool:
        return any(c.admin_code == code for c in self.region.cities.values())

    def is_connected(self, code: str) -> bool:
        return any(c.admin_code == code and c.connected for c in self.region.cities.values())

    def home_city(self, subject_key: str) -> str | None:
        """The region city an organisation is registered in: USCC positions 3–8 are the
        registering authority's GB/T 2260 division code (GB 32100-2015)."""
        if not subject_key.startswith(ORGANISATION_PREFIX):
            return None
        division = registration_division(subject_key[len(ORGANISATION_PREFIX) :])
        if division is None:
            return None
        city = self.region.by_admin_code(division)
        return city.admin_code if city is not None else None


@dataclass(frozen=True, slots=True)
class AlertDraft:
    """What a rule wants raised; the engine turns it into an :class:`~model.Alert`."""

    rule_id: str
    dedupe_key: str
    domain: Domain
    severity: Severity
    target_cities: tuple[str, ...]
    subject_key: str
    subject_name: str | None
    explanation: str
    evidence_record_ids: tuple[str, ...] = ()
    evidence_list_entry_keys: tuple[str, ...] = ()
    attributes: Mapping[str, str] = field(default_factory=dict)
    # When intake accepted the record that triggered the draft (latency metric only).
    trigger_accepted_at: datetime | None = None

    def alert_id(self, origin_city: str) -> str:
        return rule_alert_id(origin_city, self.rule_id, self.dedupe_key)


class _SafeFacts(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


class Rule:
    """Base class of a rule; hooks return the drafts to raise (usually none)."""

    id: ClassVar[str]
    facts: ClassVar[frozenset[str]]
    defaults: ClassVar[Mapping[str, Any]]

    def __init__(self, config: RuleConfig) -> None:
        self.config = config
        self.params = config.parameters

    @classmethod
    def validate(cls, config: RuleConfig, where: str) -> None:
        """Check parameter values; raise :class:`AlertsConfigError`. Override to extend."""
        for name in ("domains",):
            if name in config.parameters:
                for value in config.parameters[name]:
                    try:
                        Domain(value)
                    except ValueError:
                        raise AlertsConfigError(
                            f"{where}: parameters.{name}: {value!r} is not a domain"
                        ) from None
        for name, default in cls.defaults.items():
            value = config.parameters.get(name, default)
            if isinstance(default, bool) and not isinstance(value, bool):
                raise AlertsConfigError(f"{where}: parameters.{name} must be true or false")
            is_count = isinstance(default, int) and not isinstance(default, bool)
            if is_count and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise AlertsConfigError(f"{where}: parameters.{name} must be an integer >= 1")

    def on_record(
        self,
        ctx: RuleContext,
        state: SubjectState,
        record: RecordFacts,
        raised: Sequence[AlertDraft],
    ) -> list[AlertDraft]:
        """A new record (or version) was folded into ``state``; ``raised`` holds what
        earlier rules drafted for the same record."""
        return []

    def on_list_entry(
        self, ctx: RuleContext, state: SubjectState, entry: EntryView
    ) -> list[AlertDraft]:
        """A list entry came into force (own or mirrored)."""
        return []

    def on_observation(
        self, ctx: RuleContext, state: SubjectState, observation: PenaltyObservation
    ) -> list[AlertDraft]:
        """A peer reported a penalty of this subject (folded into ``state``)."""
        return []

    def draft(
        self,
        ctx: RuleContext,
        state: SubjectState,
        *,
        dedupe_key: str,
        domain: Domain,
        targets: Sequence[str],
        facts: Mapping[str, str],
        evidence_record_ids: Sequence[str] = (),
        evidence_list_entry_keys: Sequence[str] = (),
        attributes: Mapping[str, str] | None = None,
    ) -> list[AlertDraft]:
        """One draft, or none when no target is left.

        Natural persons: docs/design.md §4.8 lets personal data cross a border only with the
        subject's consent, which a supervision alert does not have, so an alert about a person
        goes to the regulators of the city that raised it only.
        """
        chosen = city_codes([t for t in targets if ctx.is_region_city(t)])
        if state.is_natural_person:
            chosen = tuple(t for t in chosen if t == ctx.city_code)
        if not chosen:
            return []
        return [
            AlertDraft(
                rule_id=self.id,
                dedupe_key=dedupe_key,
                domain=self.config.domain or domain,
                severity=self.config.severity,
                target_cities=chosen,
                subject_key=state.subject_key,
                subject_name=None if state.is_natural_person else state.subject_name,
                explanation=self.config.explanation.format_map(_SafeFacts(facts)),
                evidence_record_ids=tuple(evidence_record_ids),
                evidence_list_entry_keys=tuple(evidence_list_entry_keys),
                attributes=dict(attributes or {}),
            )
        ]

    def subject_label(self, state: SubjectState) -> str:
        return state.subject_name or "该主体"


def _in_force(record: RecordFacts, ctx: RuleContext, max_age_days: int) -> bool:
    """Recent enough to act on, and not past its publicity take-down date."""
    if record.decision_date < ctx.today - timedelta(days=max_age_days):
        return False
    return record.takedown_date is None or record.takedown_date >= ctx.today


# --- the rules -----------------------------------------------------------------------------


class BlacklistedOperatingElsewhere(Rule):
    """A subject on another city's black list that is registered in, or holds records in,
    this city. Raised by the city where it operates (it holds the mirrored entry and the
    local records); the issuing city is told too when ``notify_issuing_city``."""

    id = "blacklisted-operating-elsewhere.v1"
    facts = frozenset(
        {
            "subject_name",
            "issuing_city_name",
            "list_name",
            "operating_city_name",
            "presence",
            "entry_key",
        }
    )
    defaults: ClassVar[Mapping[str, Any]] = {
        "list_types": ["BLACK"],
        "include_objection_pending": False,
        "notify_issuing_city": True,
        "default_domain": "OTHER",
        # Licence-name keyword -> domain, to file the alert where the subject operates.
        "licence_domains": {},
    }

    @classmethod
    def validate(cls, config: RuleConfig, where: str) -> None:
        super().validate(config, where)
        for value in [
            config.parameters["default_domain"],
            *config.parameters["licence_domains"].values(),
        ]:
            try:
                Domain(value)
            except ValueError:
                raise AlertsConfigError(f"{where}: {value!r} is not a domain") from None

    def _counts(self, entry: EntryView, ctx: RuleContext) -> bool:
        if entry.issuing_city == ctx.city_code or entry.list_type not in self.params["list_types"]:
            return False
        if entry.status == "ACTIVE":
            return True
        return entry.status == "OBJECTION_PENDING" and bool(
            self.params["include_objection_pending"]
        )

    def _domain(self, state: SubjectState, entry: EntryView, record: RecordFacts | None) -> Domain:
        if record is not None and record.penalty_domain is not None:
            return record.penalty_domain
        licences = [record.licence_name] if record and record.licence_name else state.local_licences
        for licence in reversed(licences):
            for keyword, domain in self.params["licence_domains"].items():
                if keyword in licence:
                    return Domain(domain)
        return entry.domain or Domain(self.params["default_domain"])

    def _raise(
        self,
        ctx: RuleContext,
        state: SubjectState,
        entry: EntryView,
        record: RecordFacts | None,
    ) -> list[AlertDraft]:
        registered_here = ctx.home_city(state.subject_key) == ctx.city_code
        if not registered_here and state.local_records == 0:
            return []
        operating = ctx.city_name(ctx.city_code)
        presence = f"在{operating}登记注册" if registered_here else f"在{operating}持有信用记录"
        if state.local_licences:
            presence += f"（持有{state.local_licences[-1]}）"
        targets = [ctx.city_code]
        if self.params["notify_issuing_city"]:
            targets.append(entry.issuing_city)
        evidence = [record.record_id] if record is not None else state.recent_local_records
        return self.draft(
            ctx,
            state,
            dedupe_key=f"{entry.entry_key}|{ctx.city_code}",
            domain=self._domain(state, entry, record),
            targets=targets,
            facts={
                "subject_name": self.subject_label(state),
                "issuing_city_name": ctx.city_name(entry.issuing_city),
                "list_name": entry.list_name,
                "operating_city_name": operating,
                "presence": presence,
                "entry_key": entry.entry_key,
            },
            evidence_record_ids=evidence,
            evidence_list_entry_keys=[entry.entry_key],
            attributes={
                "operating_city": ctx.city_code,
                "issuing_city": entry.issuing_city,
                "presence": "registration" if registered_here else "records",
            },
        )

    def on_record(
        self,
        ctx: RuleContext,
        state: SubjectState,
        record: RecordFacts,
        raised: Sequence[AlertDraft],
    ) -> list[AlertDraft]:
        if record.city_code != ctx.city_code:
            return []
        drafts: list[AlertDraft] = []
        for entry in state.entries.values():
            if self._counts(entry, ctx):
                drafts.extend(self._raise(ctx, state, entry, record))
        return drafts

    def on_list_entry(
        self, ctx: RuleContext, state: SubjectState, entry: EntryView
    ) -> list[AlertDraft]:
        return self._raise(ctx, state, entry, None) if self._counts(entry, ctx) else []


class RepeatedPenaltiesInDomain(Rule):
    """``threshold`` penalties of one subject in one domain with decision dates within
    ``window_days`` of each other, anywhere in the region. Each penalty counts towards one
    alert at most, so a fourth penalty does not re-raise the first three.

    A sliding window over the penalties themselves rather than a faust windowed counter: a
    correction or a replay must not count twice, and a 180-day window hopping by a day would
    write 180 window keys per penalty (docs/alerts.md)."""

    id = "repeated-penalties-in-domain.v1"
    facts = frozenset(
        {
            "subject_name",
            "count",
            "window_days",
            "domain_name",
            "city_names",
            "first_date",
            "last_date",
        }
    )
    defaults: ClassVar[Mapping[str, Any]] = {
        "threshold": 3,
        "window_days": 180,
        "max_age_days": 180,
        "domains": sorted(d.value for d in LINKED_DOMAINS),
        "aggregate_at_home": True,
    }

    def _aggregates_here(self, ctx: RuleContext, state: SubjectState) -> bool:
        home = ctx.home_city(state.subject_key)
        if not self.params["aggregate_at_home"] or home is None or not ctx.is_connected(home):
            return True
        return home == ctx.city_code

    def _evaluate(
        self, ctx: RuleContext, state: SubjectState, trigger: PenaltyObservation
    ) -> list[AlertDraft]:
        if trigger.domain.value not in self.params["domains"] or trigger.used_by is not None:
            return []
        if not self._aggregates_here(ctx, state):
            return []
        threshold = int(self.params["threshold"])
        window = timedelta(days=int(self.params["window_days"]))
        candidates = sorted(
            (
                p
                for p in state.penalties.values()
                if p.domain == trigger.domain and p.used_by is None
            ),
            key=lambda p: (p.decision_date, p.record_id),
        )
        chosen: list[PenaltyObservation] = []
        for start, first in enumerate(candidates):
            span = [
                p for p in candidates[start:] if p.decision_date - first.decision_date <= window
            ]
            if len(span) >= threshold and trigger in span:
                chosen = span
                break
        if not chosen:
            return []
        if chosen[-1].decision_date < ctx.today - timedelta(days=int(self.params["max_age_days"])):
            return []
        ids = [p.record_id for p in chosen]
        dedupe_key = f"{state.subject_key}|{trigger.domain.value}|{','.join(sorted(ids))}"
        drafts = self.draft(
            ctx,
            state,
            dedupe_key=dedupe_key,
            domain=trigger.domain,
            targets=[ctx.city_code, *(p.city for p in chosen)],
            facts={
                "subject_name": self.subject_label(state),
                "count": str(len(chosen)),
                "window_days": str(self.params["window_days"]),
                "domain_name": DOMAIN_NAMES[trigger.domain],
                "city_names": "、".join(
                    ctx.city_name(c) for c in city_codes([p.city for p in chosen])
                ),
                "first_date": chosen[0].decision_date.isoformat(),
                "last_date": chosen[-1].decision_date.isoformat(),
            },
            evidence_record_ids=ids,
            attributes={
                "penalty_count": str(len(chosen)),
                "window_days": str(self.params["window_days"]),
                "cities": ",".join(city_codes([p.city for p in chosen])),
            },
        )
        alert_id = rule_alert_id(ctx.city_code, self.id, dedupe_key)
        for penalty in chosen:
            penalty.used_by = alert_id
        return drafts

    def on_record(
        self,
        ctx: RuleContext,
        state: SubjectState,
        record: RecordFacts,
        raised: Sequence[AlertDraft],
    ) -> list[AlertDraft]:
        observation = state.penalties.get(record.record_id)
        return self._evaluate(ctx, state, observation) if observation is not None else []

    def on_observation(
        self, ctx: RuleContext, state: SubjectState, observation: PenaltyObservation
    ) -> list[AlertDraft]:
        return self._evaluate(ctx, state, observation)


class SeriousPenaltyLinkage(Rule):
    """A serious (严重失信) penalty here in a linked domain → the subject's other cities:
    where it is registered, whose lists name it, whose alerts or records showed it active."""

    id = "serious-penalty-linkage.v1"
    facts = frozenset(
        {
            "subject_name",
            "city_name",
            "department_name",
            "decision_number",
            "domain_name",
            "violation_date",
        }
    )
    defaults: ClassVar[Mapping[str, Any]] = {
        "domains": ["MEDICAL", "FOOD_DRUG", "URBAN_MANAGEMENT"],
        "max_age_days": 365,
    }

    def on_record(
        self,
        ctx: RuleContext,
        state: SubjectState,
        record: RecordFacts,
        raised: Sequence[AlertDraft],
    ) -> list[AlertDraft]:
        if (
            not record.is_penalty
            or record.dishonesty != "SERIOUS"
            or record.city_code != ctx.city_code
            or record.penalty_domain is None
            or record.penalty_domain.value not in self.params["domains"]
            or not _in_force(record, ctx, int(self.params["max_age_days"]))
        ):
            return []
        others = [ctx.home_city(state.subject_key) or ""]
        others += [e.issuing_city for e in state.entries.values()]
        others += list(state.peer_cities)
        targets = [c for c in others if c and c != ctx.city_code]
        return self.draft(
            ctx,
            state,
            dedupe_key=record.record_id,
            domain=record.penalty_domain,
            targets=targets,
            facts={
                "subject_name": self.subject_label(state),
                "city_name": ctx.city_name(ctx.city_code),
                "department_name": record.department_name,
                "decision_number": record.decision_number,
                "domain_name": DOMAIN_NAMES[record.penalty_domain],
                "violation_date": record.decision_date.isoformat(),
            },
            evidence_record_ids=[record.record_id],
            attributes=penalty_attributes(record),
        )


class CrossRegionPenaltyNotice(Rule):
    """A penalty here for an organisation registered in another connected city → that city,
    so the home city sees every penalty of its subjects and counts them region-wide. Not
    raised when an earlier rule already told the home city about the same penalty."""

    id = "cross-region-penalty-notice.v1"
    facts = frozenset(
        {
            "subject_name",
            "city_name",
            "home_city_name",
            "department_name",
            "decision_number",
            "domain_name",
        }
    )
    defaults: ClassVar[Mapping[str, Any]] = {
        "domains": sorted(d.value for d in LINKED_DOMAINS),
        "max_age_days": 365,
    }

    def on_record(
        self,
        ctx: RuleContext,
        state: SubjectState,
        record: RecordFacts,
        raised: Sequence[AlertDraft],
    ) -> list[AlertDraft]:
        home = ctx.home_city(state.subject_key)
        if (
            not record.is_penalty
            or record.penalty_domain is None
            or record.penalty_domain.value not in self.params["domains"]
            or record.city_code != ctx.city_code
            or home is None
            or home == ctx.city_code
            or not ctx.is_connected(home)
            or not _in_force(record, ctx, int(self.params["max_age_days"]))
        ):
            return []
        if any(
            home in d.target_cities and record.record_id in d.evidence_record_ids for d in raised
        ):
            return []
        return self.draft(
            ctx,
            state,
            dedupe_key=record.record_id,
            domain=record.penalty_domain,
            targets=[home],
            facts={
                "subject_name": self.subject_label(state),
                "city_name": ctx.city_name(ctx.city_code),
                "home_city_name": ctx.city_name(home),
                "department_name": record.department_name,
                "decision_number": record.decision_number,
                "domain_name": DOMAIN_NAMES[record.penalty_domain],
            },
            evidence_record_ids=[record.record_id],
            attributes=penalty_attributes(record),
        )


class GovernmentDishonestDebtor(Rule):
    """A government body recorded as a dishonest judgment debtor (政府机构失信, the plan's
    "dynamic zero" target). Government bodies are recognised by the first two characters of
    their unified social credit code — GB 32100-2015 registration-authority code (登记管理部门
    代码) '1' = 机构编制 (organ-staffing authorities), with organisation-category code (机构类别
    代码) '1' = 机关 (organs of state) and '2' = 事业单位 (public institutions) — or by the
    court's own ``debtor_is_government_body`` flag."""

    id = "government-dishonest-debtor.v1"
    facts = frozenset({"subject_name", "court_name", "case_number", "city_name", "published_on"})
    defaults: ClassVar[Mapping[str, Any]] = {
        "uscc_prefixes": ["11", "12"],
        "trust_court_flag": True,
        "skip_performed": True,
    }

    def on_record(
        self,
        ctx: RuleContext,
        state: SubjectState,
        record: RecordFacts,
        raised: Sequence[AlertDraft],
    ) -> list[AlertDraft]:
        if record.category != "DISHONEST_JUDGMENT_DEBTOR" or record.city_code != ctx.city_code:
            return []
        if not state.subject_key.startswith(ORGANISATION_PREFIX):
            return []
        uscc = state.subject_key[len(ORGANISATION_PREFIX) :]
        by_code = uscc[:2] in self.params["uscc_prefixes"]
        by_flag = bool(self.params["trust_court_flag"]) and record.court_government_flag
        if not (by_code or by_flag):
            return []
        if self.params["skip_performed"] and record.court_performance == "PERFORMED":
            return []
        home = ctx.home_city(state.subject_key)
        return self.draft(
            ctx,
            state,
            dedupe_key=record.record_id,
            domain=Domain.OTHER,
            targets=[ctx.city_code, home or ""],
            facts={
                "subject_name": self.subject_label(state),
                "court_name": record.court_name or "",
                "case_number": record.case_number or "",
                "city_name": ctx.city_name(ctx.city_code),
                "published_on": record.decision_date.isoformat(),
            },
            evidence_record_ids=[record.record_id],
            attributes={
                "recognised_by": "uscc" if by_code else "court_flag",
                "performance": record.court_performance or "UNKNOWN",
            },
        )


DOMAIN_NAMES: Final = {
    Domain.MEDICAL: "医疗",
    Domain.FOOD_DRUG: "食品药品",
    Domain.URBAN_MANAGEMENT: "城市管理",
    Domain.CONSTRUCTION: "建筑",
    Domain.ENVIRONMENT: "生态环境",
    Domain.LABOUR: "劳动保障",
    Domain.MARKET: "市场监管",
    Domain.TAX: "税务",
    Domain.OTHER: "其他",
}

RULE_TYPES: Final[Mapping[str, type[Rule]]] = {
    rule.id: rule
    for rule in (
        BlacklistedOperatingElsewhere,
        SeriousPenaltyLinkage,
        CrossRegionPenaltyNotice,
        RepeatedPenaltiesInDomain,
        GovernmentDishonestDebtor,
    )
}


class RuleSet:
    """The enabled rules in configuration order (a rule sees what earlier ones drafted)."""

    def __init__(self, config: RulesConfig) -> None:
        self.rules = [RULE_TYPES[r.id](r) for r in config.rules if r.enabled]
        # Penalties older than every window and age limit can be forgotten.
        self.keep_days = max(
            [
                int(r.params.get(name, 0))
                for r in self.rules
                for name in ("window_days", "max_age_days")
            ]
            + [1]
        )

    def on_record(
        self, ctx: RuleContext, state: SubjectState, record: RecordFacts
    ) -> list[AlertDraft]:
        drafts: list[AlertDraft] = []
        for rule in self.rules:
            drafts.extend(rule.on_record(ctx, state, record, drafts))
        return drafts

    def on_list_entry(
        self, ctx: RuleContext, state: SubjectState, entry: EntryView
    ) -> list[AlertDraft]:
        return [d for rule in self.rules for d in rule.on_list_entry(ctx, state, entry)]

    def on_observation(
        self, ctx: RuleContext, state: SubjectState, observation: PenaltyObservation
    ) -> list[AlertDraft]:
        return [d for rule in self.rules for d in rule.on_observation(ctx, state, observation)]
