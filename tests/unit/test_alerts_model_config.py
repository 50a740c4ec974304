"""Alerts and status changes survive every encoding; configuration errors are caught at load."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.alerts.config import load_rules, parse_duration, parse_rules, parse_subscriptions
from services.alerts.model import (
    Alert,
    AlertsConfigError,
    Domain,
    RetryPolicy,
    Severity,
    Status,
    StatusChange,
    now_ms,
    transition_problem,
)
from services.common.avro import AvroSerde, load_example
from services.common.settings import REPO_ROOT

RULES_FILE = REPO_ROOT / "deploy" / "config" / "alert-rules.yaml"
SUBSCRIPTIONS_FILE = REPO_ROOT / "deploy" / "config" / "alert-subscriptions.yaml"


def test_alert_round_trips_through_avro_proto_and_json() -> None:
    serde = AvroSerde()
    example = load_example("SupervisionAlert")
    alert = Alert.from_avro(example)
    assert Alert.from_avro(serde.decode(serde.encode(ALERT, alert.to_avro()))) == alert
    assert Alert.from_proto(alert.to_proto()) == alert
    assert Alert.from_json(alert.to_json()) == alert
    assert alert.topic == "supervision.alerts.food-drug.v1"
    assert alert.event_id == f"{alert.alert_id}/0"


ALERT = "creditlink.v1.SupervisionAlert"


def test_status_change_round_trips() -> None:
    serde = AvroSerde()
    change = StatusChange(
        change_id="3f0c1d2e-1111-4222-8333-444455556666",
        alert_id="320400-x",
        status=Status.ACKNOWLEDGED,
        previous_status=Status.RAISED,
        by_city="320500",
        by_regulator="11320500014160400L",
        note="已安排现场检查",
        escalation_level=1,
        at=now_ms(),
    )
    encoded = serde.encode("creditlink.v1.AlertStatusChange", change.to_avro())
    assert StatusChange.from_avro(serde.decode(encoded)) == change
    assert StatusChange.from_proto(change.to_proto()) == change
    assert StatusChange.from_json(change.to_json()) == change


def test_every_domain_has_a_catalogued_topic() -> None:
    catalogue = yaml.safe_load((REPO_ROOT / "schemas" / "topics.yaml").read_text())
    names = {t["name"] for t in catalogue["topics"]}
    assert {d.topic for d in Domain} <= names
    assert Domain.TAX.topic == Domain.MARKET.topic == "supervision.alerts.general.v1"
    assert {Domain.from_proto(d.proto) for d in Domain} == set(Domain)
    assert {Severity.from_proto(s.proto) for s in Severity} == set(Severity)


@pytest.mark.parametrize(
    ("current", "new", "allowed"),
    [
        (Status.RAISED, Status.ACKNOWLEDGED, True),
        (Status.RAISED, Status.RESOLVED, True),
        (Status.ESCALATED, Status.ACKNOWLEDGED, True),
        (Status.ACKNOWLEDGED, Status.IN_PROGRESS, True),
        (Status.RAISED, Status.ESCALATED, True),
        (Status.ACKNOWLEDGED, Status.ACKNOWLEDGED, False),
        (Status.RESOLVED, Status.ACKNOWLEDGED, False),
        (Status.IN_PROGRESS, Status.ACKNOWLEDGED, False),
        (Status.ACKNOWLEDGED, Status.ESCALATED, False),
    ],
)
def test_status_order(current: Status, new: Status, allowed: bool) -> None:
    assert (transition_problem(current, new) is None) is allowed


def test_the_repository_rules_and_subscriptions_load() -> None:
    rules = load_rules(RULES_FILE)
    assert {r.id for r in rules.rules} == {
        "blacklisted-operating-elsewhere.v1",
        "serious-penalty-linkage.v1",
        "cross-region-penalty-notice.v1",
        "repeated-penalties-in-domain.v1",
        "government-dishonest-debtor.v1",
    }
    assert rules.sla.ack[Severity.CRITICAL] == timedelta(hours=4)
    raw = yaml.safe_load(SUBSCRIPTIONS_FILE.read_text(encoding="utf-8"))
    hooks = parse_subscriptions(raw, city="suzhou", source="subs", environ={"CREDITLINK_DEV": "1"})
    assert [h.id for h in hooks] == ["suzhou-amr-food-safety", "suzhou-credit-office"]
    assert hooks[0].wants("status", Domain.FOOD_DRUG, Severity.LOW)
    assert not hooks[1].wants("alert", Domain.FOOD_DRUG, Severity.LOW)


def _rules_doc() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    return doc


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["rules"][0].update(id="no-such-rule.v1"), "no such rule"),
        (lambda d: d["rules"][0]["parameters"].update(thresold=3), "unknown parameters"),
        (lambda d: d["rules"][0].update(explanation="{nobody}"), "explanation uses"),
        (lambda d: d["rules"][0].update(severity="URGENT"), "severity"),
        (lambda d: d["rules"][3]["parameters"].update(threshold=0), "integer >= 1"),
        (lambda d: d["rules"][1]["parameters"].update(domains=["FOOD"]), "not a domain"),
        (lambda d: d["sla"]["ack"].pop("LOW"), "sla.ack.LOW"),
        (lambda d: d["rules"].append(dict(d["rules"][0])), "configured twice"),
    ],
)
def test_rule_configuration_errors_name_the_problem(mutate: Any, message: str) -> None:
    doc = _rules_doc()
    mutate(doc)
    with pytest.raises(AlertsConfigError, match=message):
        parse_rules(doc, source="rules.yaml")


def test_a_webhook_needs_its_secret_outside_dev(tmp_path: Path) -> None:
    raw = yaml.safe_load(SUBSCRIPTIONS_FILE.read_text(encoding="utf-8"))
    with pytest.raises(AlertsConfigError, match="CREDITLINK_WEBHOOK_SECRET_SUZHOU_AMR"):
        parse_subscriptions(raw, city="suzhou", source="subs", environ={})
    hooks = parse_subscriptions(
        raw,
        city="suzhou",
        source="subs",
        environ={
            "CREDITLINK_WEBHOOK_SECRET_SUZHOU_AMR": "s3cret",
            "CREDITLINK_WEBHOOK_SECRET_SUZHOU_CREDIT": "other",
        },
    )
    assert hooks[0].secret == b"s3cret"
    assert "s3cret" not in repr(hooks[0])


def test_durations_and_backoff() -> None:
    assert parse_duration("250ms", "x") == timedelta(milliseconds=250)
    assert parse_duration("4h", "x") == timedelta(hours=4)
    assert parse_duration(2, "x") == timedelta(seconds=2)
    with pytest.raises(AlertsConfigError):
        parse_duration("soon", "x")
    retry = RetryPolicy(initial=timedelta(seconds=1), maximum=timedelta(seconds=10))
    assert [retry.delay(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 10]
    assert retry.delay(1, jitter=0.999) < 1.25
