"""The demo's scenario through a whole three-city region: what `make demo` shows must hold.

The region is the demo's configuration on ports and topic prefixes of this run
(tests/kit/deployment.py), so that it does not meet another run's demo."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from deploy.broker import Broker
from deploy.demo import run_region_scenario
from tests.kit.deployment import RunRegion

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(600)]


def test_demo_scenario_outcomes(kafka_broker: Broker, tmp_path: Path) -> None:
    with (tmp_path / "demo.txt").open("w", encoding="utf-8") as transcript:
        console = Console(file=transcript, width=140)
        scenario = run_region_scenario(
            kafka_broker.bootstrap,
            console,
            data_root=tmp_path / "data",
            deployment=RunRegion(tmp_path).deployment,
        )
    outcomes = scenario.outcomes

    # 双公示: 7 records submitted in Suzhou, one with a corrupted code.
    assert outcomes.submitted["suzhou"] >= 7
    assert "uscc-checksum" in outcomes.rejection_codes
    figures = {q["department_name"]: q for q in outcomes.quality}
    market = figures["苏州市市场监督管理局"]
    assert (market["submitted_count"], market["valid_count"]) == (5, 4)
    assert market["reported_on_time_count"] == 3  # one penalty reported 11 working days late
    assert market["compliance_rate"] == pytest.approx(0.8)
    assert market["timeliness_rate"] == pytest.approx(0.6)
    assert figures["苏州市卫生健康委员会"]["timeliness_rate"] == pytest.approx(1.0)

    # The black-listing is seen in all three cities with its measures, Wuxi cannot remove
    # Suzhou's entry, and the repair removes it everywhere.
    assert outcomes.blacklisted_seen_in == {"suzhou": True, "wuxi": True, "changzhou": True}
    assert all(outcomes.measures_seen[city] for city in outcomes.measures_seen)
    assert outcomes.foreign_removal_refused
    assert outcomes.removed_everywhere == {"suzhou": True, "wuxi": True, "changzhou": True}

    # A Suzhou resident's score is recognised by Wuxi with Wuxi's incentives.
    recognition = outcomes.recognition
    assert recognition["common_grade"] == "A"
    assert recognition["incentives"]
    assert recognition["home_version"]
    assert recognition["requesting_version"]
    # The resident withdraws the consent at Suzhou's consent service; Wuxi's next request is
    # refused as revoked, within the bound of docs/trust.md.
    assert outcomes.revocation["denial"] == "consent-revoked"
    assert outcomes.revocation["seconds"] <= 5.0

    # The food-safety alert reaches Suzhou's regulator and the acknowledgement Changzhou.
    assert outcomes.alert["origin"] == "320400"
    assert "320500" in outcomes.alert["targets"]
    assert outcomes.ack_seen_at_origin
    # The evidence: each city's audit passes through the signed heads its peers hold.
    assert set(outcomes.evidence) == {"suzhou", "wuxi", "changzhou"}
    assert all(
        e["ok"] and e["heads_held"] > 0 and e["records"] > 0 for e in outcomes.evidence.values()
    )
    # And every city's calls to its peers are on its own chain with receipts that match the
    # peers' records (list mirrors, checkpoints, scales, alert delivery all call peers).
    assert all(e["receipts"] > 0 and e["receipts_ok"] for e in outcomes.evidence.values()), (
        outcomes.evidence
    )
    # The scenario's own calls, as each city's node, departments and regulators, are on that
    # city's `scenario` chain, those answered with the callee's receipt (matched above).
    assert all(
        e["scenario_calls"][0] >= e["scenario_calls"][1] > 0 for e in outcomes.evidence.values()
    ), outcomes.evidence
    assert outcomes.ok

    # Idle after the scenario, every consumer group of the region is at lag 0 (`region status`
    # counts records, not the transaction markers after them).
    assert outcomes.idle_lag, "no consumer group of the region found"
    assert {group: lag for group, lag in outcomes.idle_lag.items() if lag} == {}
