"""Which alerts a calling city sees (services/alerts/audience.py), without a network."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.alerts.audience import Audience
from services.alerts.model import Alert, Domain, Severity
from services.common.peer import PeerCall, PeerIdentity
from services.common.policy import Decision
from services.common.roles import Role
from tests.kit.alerts import org_key
from tests.peer_kit import WUXI_PERSON

SZ, WX, CZ = "320500", "320200", "320400"
COMPANY = org_key("91", "320505", "MA1W0001")


def alert(origin: str, targets: tuple[str, ...], subject_key: str = COMPANY) -> Alert:
    now = datetime(2026, 11, 27, 4, 0, tzinfo=UTC)
    return Alert(
        alert_id=f"{origin}-x",
        rule_id="serious-penalty-linkage.v1",
        domain=Domain.FOOD_DRUG,
        severity=Severity.HIGH,
        origin_city=origin,
        target_cities=targets,
        subject_key=subject_key,
        subject_name=None,
        explanation="x",
        evidence_record_ids=(),
        raised_at=now,
        ack_deadline=now + timedelta(hours=1),
    )


def audience(caller: str, *, persons: bool = True) -> Audience:
    return Audience(serving_city=SZ, caller_city=caller, may_see_persons=persons)


@pytest.mark.parametrize(
    ("held", "suzhou", "wuxi", "changzhou"),
    [
        (alert(SZ, (WX,)), True, True, False),  # raised here for Wuxi
        (alert(SZ, (SZ, CZ)), True, False, True),  # raised here for here and Changzhou
        (alert(CZ, (SZ,)), True, False, False),  # received, for Suzhou only
        (alert(CZ, (SZ, WX)), True, True, False),  # received, for Suzhou and Wuxi
        (alert(SZ, (SZ,), WUXI_PERSON), True, False, False),  # a person: Suzhou only
    ],
)
def test_each_city_sees_what_targets_it_and_the_serving_city_its_feed(
    held: Alert, suzhou: bool, wuxi: bool, changzhou: bool
) -> None:
    assert audience(SZ).sees(held) is suzhou
    assert audience(WX).sees(held) is wuxi
    # The origin of a received alert is not thereby a target of it here.
    assert audience(CZ).sees(held) is changzhou


def test_a_person_needs_the_data_class_even_where_the_alert_targets_the_caller() -> None:
    about_a_person = alert(SZ, (SZ, WX), WUXI_PERSON)
    assert audience(WX).sees(about_a_person)
    assert not audience(WX, persons=False).sees(about_a_person)
    assert not audience(SZ, persons=False).sees(about_a_person)
    assert audience(SZ, persons=False).sees(alert(SZ, (SZ,)))


def test_the_audience_of_a_call_is_its_certificate_city_and_policy_grant() -> None:
    call = PeerCall(
        method="/creditlink.peer.v1.AlertExchangeService/SubscribeAlerts",
        started=0.0,
        identity=PeerIdentity(
            city="wuxi", city_code=WX, certificate_sha256=None, role=Role.node("wuxi")
        ),
        decision=Decision(allowed=True, data_classes=frozenset({"organisation"})),
    )
    assert Audience.of_call(serving_city=SZ, call=call) == Audience(
        serving_city=SZ, caller_city=WX, may_see_persons=False
    )
