"""What a calling city sees of a node's alerts, over real mutual TLS and the real broker.

A Suzhou alerts node holds alerts it raised for Wuxi, for Changzhou and about a natural person
(a Wuxi resident, which stays in Suzhou: docs/design.md §4.8), alerts Changzhou delivered to
Suzhou and Wuxi or to Suzhou only, and status changes of them. The node runs under a
*permissive* policy file (every city may call every AlertExchangeService method, as the
deployed policy once allowed), so only the servicer's own rule stands between Wuxi and
Suzhou's feed: Wuxi sees exactly the alerts that target it and their status changes, and its
cursors resume without gap or duplicate. Suzhou's own subscription sees the whole feed and
resumes from any of its cursors. The deployed policy's refusal of Wuxi is in
test_alerts_region.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from creditlink.peer.v1 import alert_exchange_pb2, alert_exchange_pb2_grpc
from deploy.broker import free_port
from services.alerts.config import load_rules
from services.alerts.model import Alert, Domain, Severity
from services.alerts.node import AlertsNode, NodeOptions
from services.common.audit import AUDIT_TOPIC, parse_key, read_audit_topic
from services.common.avro import AvroSerde
from services.common.kafka import EventPublisher, make_producer
from services.common.peer import DENIAL_TRAILER, PeerSecurity, secure_channel
from services.common.policy import DEFAULT_POLICY_FILE, load_policy
from services.common.region import Region, load_region
from services.common.roles import Role
from services.common.settings import REPO_ROOT, load_peer_limits, load_settings
from services.common.topics import load_catalogue, provision
from tests.kit.alerts import org_key, penalty_record
from tests.kit.lists_region import eventually
from tests.peer_kit import WUXI_PERSON, PeerPki, city_regulator, make_consent_kit, make_pki

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]

SZ, WX, CZ = "320500", "320200", "320400"
RECORD_SCHEMA = "creditlink.v1.CreditRecord"
ACCEPTED = "cn.creditlink.credit.record.accepted.v1"
ALERTS_SERVICE = "/creditlink.peer.v1.AlertExchangeService/*"
#: Short, so that a stream read to its end returns everything the caller may see, then OK.
FOLLOW_AGE_S = 3.0

WUXI_COMPANY = org_key("91", "320211", "MA1X0001")  # registered in Wuxi (Binhu)
CHANGZHOU_COMPANY = org_key("91", "320411", "MA1X0002")  # registered in Changzhou (Xinbei)
FOR_SUZHOU_AND_WUXI = org_key("91", "320505", "MA1X0003")
FOR_SUZHOU_ONLY = org_key("91", "320505", "MA1X0004")


def permissive_policy(directory: Path) -> Path:
    """The deployed policy with its alerts rules replaced by one that lets every connected
    city call every AlertExchangeService method."""
    doc = yaml.safe_load(DEFAULT_POLICY_FILE.read_text(encoding="utf-8"))
    doc["rules"] = [
        rule
        for rule in doc["rules"]
        if not any("AlertExchangeService" in method for method in rule["methods"])
    ] + [
        {
            "description": "Test only: every city may call every alerts method.",
            "callers": ["suzhou", "wuxi", "changzhou", "self/regulator"],
            "methods": [ALERTS_SERVICE],
            "data_classes": ["organisation", "natural_person"],
        }
    ]
    path = directory / "permissive-peer-policy.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


@dataclasses.dataclass
class Suzhou:
    region: Region
    pki: PeerPki
    node: AlertsNode
    #: Alert ids by what they are: "wuxi", "changzhou", "person", "delivered-both",
    #: "delivered-suzhou".
    alerts: dict[str, str]
    #: Status changes applied at Suzhou, by the alert's name above.
    changes: dict[str, str]
    #: A folder of the test's own.
    scratch: Path

    def stub(self, as_city: str) -> tuple[grpc.aio.Channel, Any]:
        """A channel as ``as_city``'s node; "suzhou" is Suzhou's regulator (the serving city's
        own caller)."""
        channel = secure_channel(
            self.region.city("suzhou").endpoints["alerts"],
            self.pki.tls(city_regulator("suzhou") if as_city == "suzhou" else as_city),
            expect_city="suzhou",
            service="alerts",
        )
        return channel, alert_exchange_pb2_grpc.AlertExchangeServiceStub(channel)

    async def read_feed(
        self, as_city: str, cursor: bytes = b""
    ) -> list[alert_exchange_pb2.SubscribeAlertsResponse]:
        """Everything the stream sends until it ends on its age."""
        channel, stub = self.stub(as_city)
        async with channel:
            call = stub.SubscribeAlerts(alert_exchange_pb2.SubscribeAlertsRequest(cursor=cursor))
            return [message async for message in call]


def alert_id_of(message: alert_exchange_pb2.SubscribeAlertsResponse) -> str:
    if message.WhichOneof("event") == "alert":
        return str(message.alert.alert_id)
    return str(message.status_change.alert_id)


def seq_of(message: alert_exchange_pb2.SubscribeAlertsResponse) -> int:
    """The feed position in the cursor (version byte, 8-byte epoch, 8-byte sequence)."""
    return int.from_bytes(message.cursor[9:], "big")


def delivered(alert_name: str, subject_key: str, targets: tuple[str, ...]) -> Alert:
    now = datetime.now(UTC).replace(microsecond=0)
    return Alert(
        alert_id=f"{CZ}-{uuid.uuid5(uuid.NAMESPACE_URL, alert_name + str(uuid.uuid4()))}",
        rule_id="serious-penalty-linkage.v1",
        domain=Domain.FOOD_DRUG,
        severity=Severity.HIGH,
        origin_city=CZ,
        target_cities=targets,
        subject_key=subject_key,
        subject_name="测试食品有限公司",
        explanation="常州市对该主体作出严重食品安全行政处罚",
        evidence_record_ids=(f"{CZ}-{uuid.uuid4().hex}",),
        raised_at=now,
        ack_deadline=now + timedelta(hours=4),
    )


@pytest.fixture(scope="module")
async def suzhou(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Suzhou]:
    base = load_region(REPO_ROOT / "deploy" / "config" / "region.yaml")
    cities = dict(base.cities)
    # Wuxi and Changzhou are connected but never answer: Suzhou's deliveries stay queued.
    for key in ("suzhou", "wuxi", "changzhou"):
        cities[key] = dataclasses.replace(
            cities[key], endpoints={"alerts": f"127.0.0.1:{free_port()}"}
        )
    region = Region(id=base.id, name=base.name, cities=cities)
    scratch = tmp_path_factory.mktemp("scope")
    pki = make_pki(scratch / "pki")
    settings = load_settings(
        {
            "CREDITLINK_CITY": "suzhou",
            "KAFKA_BOOTSTRAP": kafka_bootstrap,
            "CREDITLINK_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:8]}sz.",
            "CREDITLINK_DATA_DIR": str(scratch / "data"),
        }
    )
    await provision(kafka_bootstrap, load_catalogue(), prefix=settings.topic_prefix)
    options = NodeOptions(
        bind=region.city("suzhou").endpoints["alerts"],
        tls=pki.tls("suzhou"),
        security=PeerSecurity(
            city="suzhou",
            region=region,
            policy=load_policy(permissive_policy(scratch), cities=region.cities.keys()),
            keyring=make_consent_kit().keyring,
        ),
        rules=load_rules(REPO_ROOT / "deploy" / "config" / "alert-rules.yaml"),
        limits=dataclasses.replace(load_peer_limits(), follow_stream_max_age=FOLLOW_AGE_S),
    )
    node = AlertsNode(settings, region, options)
    await node.start()
    producer = make_producer(settings, client_id="intake")
    await producer.start()
    try:
        records = EventPublisher(producer, AvroSerde(), settings, service="intake")
        penalties = [
            penalty_record(WUXI_COMPANY, city_code=SZ, domain="FOOD_DRUG", serious=True),
            penalty_record(CHANGZHOU_COMPANY, city_code=SZ, domain="FOOD_DRUG", serious=True),
            *(
                penalty_record(
                    WUXI_PERSON,
                    city_code=SZ,
                    domain="FOOD_DRUG",
                    decision_number=f"苏市监罚〔2026〕{n}号",
                    name="张某",
                )
                for n in (101, 102, 103)
            ),
        ]
        for record in penalties:
            await records.publish(
                "credit.records.v1",
                RECORD_SCHEMA,
                record,
                key=record["subject"]["subject_key"],
                event_type=ACCEPTED,
            )

        async def raised(subject_key: str) -> str | None:
            assert node.store is not None
            for _, value in node.store.scan("alert/"):
                alert = Alert.from_json(value["alert"])
                if alert.subject_key == subject_key and alert.origin_city == SZ:
                    return alert.alert_id
            return None

        alerts = {
            "wuxi": await eventually(lambda: raised(WUXI_COMPANY)),
            "changzhou": await eventually(lambda: raised(CHANGZHOU_COMPANY)),
            "person": await eventually(lambda: raised(WUXI_PERSON)),
        }
        # Changzhou delivers two alerts of its own, one also for Wuxi.
        both = delivered("both", FOR_SUZHOU_AND_WUXI, (SZ, WX))
        only = delivered("only", FOR_SUZHOU_ONLY, (SZ,))
        channel = secure_channel(
            region.city("suzhou").endpoints["alerts"],
            pki.tls("changzhou"),
            expect_city="suzhou",
            service="alerts",
        )
        async with channel:
            response = await alert_exchange_pb2_grpc.AlertExchangeServiceStub(
                channel
            ).DeliverAlerts(
                alert_exchange_pb2.DeliverAlertsRequest(alerts=[both.to_proto(), only.to_proto()]),
                timeout=10,
            )
        assert [r.accepted for r in response.results] == [True, True]
        alerts |= {"delivered-both": both.alert_id, "delivered-suzhou": only.alert_id}
        # Suzhou's regulators acknowledge what Suzhou raised (at the origin: no relay).
        changes = {}
        channel = secure_channel(
            region.city("suzhou").endpoints["alerts"],
            pki.tls(city_regulator("suzhou")),
            expect_city="suzhou",
            service="alerts",
        )
        async with channel:
            stub = alert_exchange_pb2_grpc.AlertExchangeServiceStub(channel)
            for name in ("wuxi", "changzhou", "person"):
                changes[name] = str(uuid.uuid4())
                await stub.UpdateAlertStatus(
                    alert_exchange_pb2.UpdateAlertStatusRequest(
                        alert_id=alerts[name],
                        status=alert_exchange_pb2.ALERT_STATUS_ACKNOWLEDGED,
                        regulator="苏州市市场监督管理局",
                        change_id=changes[name],
                    ),
                    timeout=10,
                )
        yield Suzhou(region, pki, node, alerts, changes, scratch)
    finally:
        await producer.stop()
        await node.stop(0)


async def test_suzhou_sees_its_whole_feed_and_resumes_from_its_cursor(suzhou: Suzhou) -> None:
    feed = await suzhou.read_feed("suzhou")
    assert {alert_id_of(m) for m in feed if m.HasField("alert")} == set(suzhou.alerts.values())
    assert {m.status_change.change_id for m in feed if m.HasField("status_change")} >= set(
        suzhou.changes.values()
    )
    seqs = [seq_of(m) for m in feed]
    assert seqs == sorted(set(seqs))
    # From any cursor: exactly what followed it, nothing twice.
    for middle in (1, len(feed) // 2, len(feed) - 1):
        resumed = await suzhou.read_feed("suzhou", cursor=feed[middle - 1].cursor)
        assert resumed == feed[middle:]


async def test_wuxi_sees_only_the_alerts_that_target_it_and_their_status_changes(
    suzhou: Suzhou,
) -> None:
    feed = await suzhou.read_feed("suzhou")
    seen = await suzhou.read_feed("wuxi")
    for_wuxi = {suzhou.alerts["wuxi"], suzhou.alerts["delivered-both"]}
    assert {m.alert.alert_id for m in seen if m.HasField("alert")} == for_wuxi
    assert {alert_id_of(m) for m in seen} == for_wuxi
    assert all(WX in m.alert.target_cities for m in seen if m.HasField("alert"))
    # No alert about a natural person reaches Wuxi, not even about a Wuxi resident.
    assert not any(m.alert.subject_key.startswith("N:") for m in seen if m.HasField("alert"))
    assert WUXI_PERSON not in str(seen)
    # The status change of the Wuxi alert comes with it; the others' do not.
    assert [m.status_change.change_id for m in seen if m.HasField("status_change")] == [
        suzhou.changes["wuxi"]
    ]
    # Wuxi's messages are Suzhou's feed filtered, at the same positions: the cursors move
    # past what Wuxi does not see.
    assert seen == [m for m in feed if alert_id_of(m) in for_wuxi]


async def test_wuxi_resumes_without_gap_or_duplicate_over_filtered_entries(
    suzhou: Suzhou,
) -> None:
    feed = await suzhou.read_feed("suzhou")
    seen = await suzhou.read_feed("wuxi")
    assert len(seen) >= 3
    for held in range(1, len(seen)):
        assert await suzhou.read_feed("wuxi", cursor=seen[held - 1].cursor) == seen[held:]
    # A cursor just before entries Wuxi does not see: the next message is its next own one.
    hidden = next(
        index
        for index, m in enumerate(feed)
        if index > 0 and alert_id_of(m) not in {alert_id_of(s) for s in seen}
    )
    after = await suzhou.read_feed("wuxi", cursor=feed[hidden - 1].cursor)
    assert after == [m for m in seen if seq_of(m) > seq_of(feed[hidden - 1])]


async def test_alerts_tail_follows_suzhous_feed_as_its_regulator(suzhou: Suzhou) -> None:
    """The operator CLI subscribes with a regulator's certificate (its city's first in
    city-roles.yaml, issued by the city's CA), which the policy admits."""
    feed = await suzhou.read_feed("suzhou")
    config = suzhou.scratch / "ops-config"
    config.mkdir(exist_ok=True)
    doc = yaml.safe_load((REPO_ROOT / "deploy/config/region.yaml").read_text(encoding="utf-8"))
    doc["cities"]["suzhou"]["endpoints"]["alerts"] = suzhou.region.city("suzhou").endpoints[
        "alerts"
    ]
    # The CLI records its stream on Suzhou's audit topic: the node's, of this run.
    doc["cities"]["suzhou"]["topic_prefix"] = suzhou.node.settings.topic_prefix
    (config / "region.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), "utf-8")
    shutil.copy(REPO_ROOT / "deploy/config/city-roles.yaml", config / "city-roles.yaml")
    tail = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "deploy.ops",
        "alerts-tail",
        "--city",
        "suzhou",
        "--limit",
        str(len(feed)),
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "CREDITLINK_CONFIG_DIR": str(config),
            "CREDITLINK_TLS_DIR": str(suzhou.pki.directory),
            "CREDITLINK_RUN_DIR": str(suzhou.scratch / "ops-run"),
            "KAFKA_BOOTSTRAP": suzhou.node.settings.kafka_bootstrap,
            "COLUMNS": "400",
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(tail.communicate(), timeout=60)
    assert tail.returncode == 0, err.decode()
    lines = [line.split()[:2] for line in out.decode().splitlines() if line.strip()]
    assert lines == [
        ["ALERT", m.alert.alert_id] if m.HasField("alert") else ["STATUS", m.status_change.alert_id]
        for m in feed
    ]
    # The stream is on Suzhou's `operator` chain, as the regulator whose certificate it used.
    settings = suzhou.node.settings
    serde = AvroSerde()
    [record] = [
        serde.decode(m.value, reader=serde.writer_of(m.value))
        for m in await read_audit_topic(settings, settings.topic(AUDIT_TOPIC))
        if parse_key(m.key)[0] == "operator"
    ]
    assert record["direction"] == "OUTBOUND"
    assert record["method"] == "/creditlink.peer.v1.AlertExchangeService/SubscribeAlerts"
    assert record["caller_role"] == city_regulator("suzhou").audit_role
    assert (record["caller_city"], record["callee_city"]) == (SZ, SZ)


async def test_status_answers_only_about_alerts_the_caller_may_see(suzhou: Suzhou) -> None:
    channel, stub = suzhou.stub("wuxi")
    async with channel:
        for name in ("changzhou", "person", "delivered-suzhou"):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.UpdateAlertStatus(
                    alert_exchange_pb2.UpdateAlertStatusRequest(
                        alert_id=suzhou.alerts[name],
                        status=alert_exchange_pb2.ALERT_STATUS_RESOLVED,
                        change_id=str(uuid.uuid4()),
                    ),
                    timeout=10,
                )
            # The same answer as for an alert that does not exist.
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND, name
            assert (DENIAL_TRAILER, "unknown-alert") in tuple(refused.value.trailing_metadata())
            # Suzhou's own change is not answered back to Wuxi for a change id it learnt.
            with pytest.raises(grpc.aio.AioRpcError) as replayed:
                await stub.UpdateAlertStatus(
                    alert_exchange_pb2.UpdateAlertStatusRequest(
                        alert_id=suzhou.alerts[name],
                        status=alert_exchange_pb2.ALERT_STATUS_ACKNOWLEDGED,
                        change_id=suzhou.changes.get(name, str(uuid.uuid4())),
                    ),
                    timeout=10,
                )
            assert replayed.value.code() == grpc.StatusCode.NOT_FOUND, name
        # The alert that targets Wuxi is Wuxi's to handle at its origin.
        answer = await stub.UpdateAlertStatus(
            alert_exchange_pb2.UpdateAlertStatusRequest(
                alert_id=suzhou.alerts["wuxi"],
                status=alert_exchange_pb2.ALERT_STATUS_IN_PROGRESS,
                regulator="无锡市市场监督管理局",
                change_id=str(uuid.uuid4()),
            ),
            timeout=10,
        )
        assert answer.change.by_city == WX


async def test_a_regulator_sees_and_handles_only_alerts_of_its_domains_and_city(
    suzhou: Suzhou,
) -> None:
    """Every alert of the fixture is a food-safety one: Suzhou's urban-management regulator
    sees none of them and cannot acknowledge one; the market regulator's changes record the
    regulator its certificate names, not the request's text; other roles cannot act."""
    urban = Role.regulator_of("suzhou", "11320500014160574X", ["URBAN_MANAGEMENT"])
    market = city_regulator("suzhou")
    held = await suzhou.read_feed("suzhou")
    fixture_changes = set(suzhou.changes.values())
    changes = [
        m.status_change
        for m in held
        if m.HasField("status_change") and m.status_change.change_id in fixture_changes
    ]
    assert len(changes) == len(fixture_changes)
    assert {c.by_regulator for c in changes} == {market.regulator}, changes

    def channel_as(caller: Role | str) -> grpc.aio.Channel:
        return secure_channel(
            suzhou.region.city("suzhou").endpoints["alerts"],
            suzhou.pki.tls(caller),
            expect_city="suzhou",
            service="alerts",
        )

    async def update(caller: Role | str, alert: str) -> grpc.aio.AioRpcError:
        async with channel_as(caller) as channel:
            stub = alert_exchange_pb2_grpc.AlertExchangeServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.UpdateAlertStatus(
                    alert_exchange_pb2.UpdateAlertStatusRequest(
                        alert_id=alert,
                        status=alert_exchange_pb2.ALERT_STATUS_RESOLVED,
                        regulator=market.regulator or "",
                        change_id=str(uuid.uuid4()),
                    ),
                    timeout=10,
                )
        return refused.value

    async with channel_as(urban) as channel:
        stub = alert_exchange_pb2_grpc.AlertExchangeServiceStub(channel)
        feed = stub.SubscribeAlerts(alert_exchange_pb2.SubscribeAlertsRequest())
        assert [m async for m in feed] == []
    # Outside its domains: answered as an unknown alert.
    refused = await update(urban, suzhou.alerts["wuxi"])
    assert refused.code() == grpc.StatusCode.NOT_FOUND
    assert (DENIAL_TRAILER, "unknown-alert") in tuple(refused.trailing_metadata())
    # Another city's regulator, with every domain: not a caller of Suzhou's node at all.
    wuxi = Role.regulator_of("wuxi", "11320200014320507N", ["FOOD_DRUG", "MEDICAL"])
    refused = await update(wuxi, suzhou.alerts["wuxi"])
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (DENIAL_TRAILER, "policy-denied") in tuple(refused.trailing_metadata())
    # Suzhou's own node certificate (which the policy admits here) is no regulator.
    refused = await update("suzhou", suzhou.alerts["wuxi"])
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (DENIAL_TRAILER, "not-a-regulator") in tuple(refused.trailing_metadata())
