"""Changzhou and Suzhou alerts nodes over the real broker (a topic prefix per city) and real
gRPC with mutual TLS: a serious food-safety penalty in Changzhou for a company operating in
Suzhou reaches a Suzhou regulator's SubscribeAlerts stream and webhook; Suzhou's
acknowledgement is visible in Changzhou; an unacknowledged alert escalates; a Suzhou node
that was down gets its alerts when it comes back, and its regulator resumes from a cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
import yaml

from contracts.conformance import Endpoint
from contracts.conformance import run as conformance_run
from creditlink.peer.v1 import alert_exchange_pb2, alert_exchange_pb2_grpc, common_pb2
from deploy.broker import free_port
from services.alerts.config import Webhook, parse_rules
from services.alerts.model import Domain, RetryPolicy, Severity
from services.alerts.node import AlertsNode, NodeOptions
from services.alerts.webhooks import IDEMPOTENCY_HEADER, verify
from services.common.audit import AUDIT_TOPIC
from services.common.avro import AvroSerde
from services.common.certs import service_host
from services.common.kafka import EventPublisher, make_consumer, make_producer
from services.common.peer import DENIAL_TRAILER, PeerSecurity, TlsFiles, secure_channel
from services.common.policy import load_policy
from services.common.region import Region, load_region
from services.common.roles import Role
from services.common.settings import REPO_ROOT, Settings, load_settings
from services.common.topics import load_catalogue, provision
from tests.kit.alerts import org_key, penalty_record
from tests.kit.lists_region import eventually
from tests.peer_kit import PeerPki, city_regulator, make_consent_kit, make_pki

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]

SZ, WX, CZ = "320500", "320200", "320400"
SECRET = b"suzhou-amr-secret"
RECORD_SCHEMA = "creditlink.v1.CreditRecord"
ACCEPTED = "cn.creditlink.credit.record.accepted.v1"


# --- a regulator's webhook receiver ------------------------------------------------------------


@dataclass
class Inbox:
    deliveries: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    down: bool = False

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(body) for _, body in self.deliveries]


@pytest.fixture(scope="module")
def inbox() -> Iterator[tuple[Inbox, str]]:
    state = Inbox()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            code = 503 if state.down else 204
            if code == 204:
                with state.lock:
                    state.deliveries.append((dict(self.headers.items()), body))
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/hooks/suzhou-amr"
    server.shutdown()
    server.server_close()


# --- the region -----------------------------------------------------------------------------


@dataclass
class RegionUnderTest:
    region: Region
    pki: PeerPki
    settings: dict[str, Settings]
    nodes: dict[str, AlertsNode]
    options: dict[str, NodeOptions]
    records: EventPublisher
    serde: AvroSerde = field(default_factory=AvroSerde)

    def stub(
        self, at: str, as_city: str
    ) -> tuple[grpc.aio.Channel, alert_exchange_pb2_grpc.AlertExchangeServiceStub]:
        """A channel to ``at`` as ``as_city``'s node, or, when they are the same city, as its
        regulator (the serving city's own caller)."""
        endpoint = self.region.city(at).endpoints["alerts"]
        caller = city_regulator(at) if as_city == at else as_city
        channel = secure_channel(endpoint, self.pki.tls(caller), expect_city=at, service="alerts")
        return channel, alert_exchange_pb2_grpc.AlertExchangeServiceStub(channel)

    async def submit(self, record: dict[str, Any]) -> None:
        """What Changzhou's intake does with an accepted record."""
        await self.records.publish(
            "credit.records.v1",
            RECORD_SCHEMA,
            record,
            key=record["subject"]["subject_key"],
            event_type=ACCEPTED,
        )

    async def restart(self, city: str) -> None:
        await self.nodes[city].stop(0)
        node = AlertsNode(self.settings[city], self.region, self.options[city])
        await node.start()
        self.nodes[city] = node

    async def topic_values(self, city: str, logical: str) -> list[dict[str, Any]]:
        consumer = make_consumer(self.settings[city], logical, group_id=None)
        await consumer.start()
        try:
            batches = await consumer.getmany(timeout_ms=2000)
            return [self.serde.decode(m.value) for ms in batches.values() for m in ms]
        finally:
            await consumer.stop()


def fast_rules() -> Any:
    doc = yaml.safe_load((REPO_ROOT / "deploy/config/alert-rules.yaml").read_text("utf-8"))
    doc["sla"]["ack"] = {"LOW": "1h", "MEDIUM": "1h", "HIGH": "3s", "CRITICAL": "3s"}
    doc["sla"]["escalation"] = {"max_level": 1, "check_interval": "200ms"}
    doc["delivery"] = {"retry_initial": "200ms", "retry_max": "1s"}
    return parse_rules(doc, source="integration")


@pytest.fixture(scope="module")
async def region(
    kafka_bootstrap: str,
    tmp_path_factory: pytest.TempPathFactory,
    inbox: tuple[Inbox, str],
) -> AsyncIterator[RegionUnderTest]:
    base = load_region(REPO_ROOT / "deploy" / "config" / "region.yaml")
    cities = dict(base.cities)
    for key in ("suzhou", "changzhou", "wuxi"):
        cities[key] = dataclasses.replace(
            cities[key], endpoints={"alerts": f"127.0.0.1:{free_port()}"}
        )
    region = Region(id=base.id, name=base.name, cities=cities)
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    consent = make_consent_kit()
    run = uuid.uuid4().hex[:8]
    settings: dict[str, Settings] = {}
    options: dict[str, NodeOptions] = {}
    rules = fast_rules()
    for city in ("changzhou", "suzhou"):
        settings[city] = load_settings(
            {
                "CREDITLINK_CITY": city,
                "KAFKA_BOOTSTRAP": kafka_bootstrap,
                "CREDITLINK_TOPIC_PREFIX": f"t{run}{city}.",
                "CREDITLINK_DATA_DIR": str(tmp_path_factory.mktemp(city)),
            }
        )
        await provision(kafka_bootstrap, load_catalogue(), prefix=settings[city].topic_prefix)
        hooks = []
        if city == "suzhou":
            hooks.append(
                Webhook(
                    id="suzhou-amr-food-safety",
                    url=inbox[1],
                    secret=SECRET,
                    domains=frozenset({Domain.FOOD_DRUG}),
                    min_severity=Severity.MEDIUM,
                    max_attempts=20,
                    retry=RetryPolicy(
                        initial=timedelta(milliseconds=100), maximum=timedelta(milliseconds=500)
                    ),
                )
            )
        options[city] = NodeOptions(
            bind=region.city(city).endpoints["alerts"],
            tls=pki.tls(city),
            security=PeerSecurity(
                city=city,
                region=region,
                policy=load_policy(cities=region.cities.keys()),
                keyring=consent.keyring,
            ),
            rules=rules,
            webhooks=hooks,
        )
    nodes = {}
    for city in ("changzhou", "suzhou"):
        nodes[city] = AlertsNode(settings[city], region, options[city])
        await nodes[city].start()
    producer = make_producer(settings["changzhou"], client_id="intake")
    await producer.start()
    records = EventPublisher(producer, AvroSerde(), settings["changzhou"], service="intake")
    test_region = RegionUnderTest(region, pki, settings, nodes, options, records)
    try:
        yield test_region
    finally:
        await producer.stop()
        for node in test_region.nodes.values():
            await node.stop(0)


# --- a regulator's stream ---------------------------------------------------------------------


class Stream:
    """A regulator following SubscribeAlerts in the background."""

    def __init__(
        self,
        region: RegionUnderTest,
        *,
        at: str,
        as_city: str,
        cursor: bytes = b"",
        domains: tuple[int, ...] = (),
        min_severity: int = 0,
    ) -> None:
        self.channel, stub = region.stub(at, as_city)
        self.call = stub.SubscribeAlerts(
            alert_exchange_pb2.SubscribeAlertsRequest(
                domains=domains, min_severity=min_severity, cursor=cursor
            )
        )
        self.received: asyncio.Queue[alert_exchange_pb2.SubscribeAlertsResponse] = asyncio.Queue()
        self.cursor = cursor
        self.seen: list[alert_exchange_pb2.SubscribeAlertsResponse] = []
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for message in self.call:
                await self.received.put(message)

    async def next_matching(
        self, predicate: Any, within_s: float = 20.0
    ) -> alert_exchange_pb2.SubscribeAlertsResponse:
        async with asyncio.timeout(within_s):
            while True:
                message = await self.received.get()
                self.seen.append(message)
                self.cursor = message.cursor
                if predicate(message):
                    return message

    def drain(self) -> list[alert_exchange_pb2.SubscribeAlertsResponse]:
        items = []
        while not self.received.empty():
            items.append(self.received.get_nowait())
        return items

    async def close(self) -> None:
        self.call.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.channel.close()


def is_alert(subject_key: str, level: int | None = None) -> Any:
    def check(message: alert_exchange_pb2.SubscribeAlertsResponse) -> bool:
        if message.WhichOneof("event") != "alert":
            return False
        return message.alert.subject_key == subject_key and (
            level is None or message.alert.escalation_level == level
        )

    return check


def is_status(alert_id: str, status: int) -> Any:
    def check(message: alert_exchange_pb2.SubscribeAlertsResponse) -> bool:
        return (
            message.WhichOneof("event") == "status_change"
            and message.status_change.alert_id == alert_id
            and message.status_change.status == status
        )

    return check


def subject(n: int) -> str:
    return org_key("91", "320505", f"MA1W{n:04d}")  # registered in Suzhou (Huqiu district)


# --- the tests ----------------------------------------------------------------------------------


async def test_serious_penalty_in_changzhou_reaches_suzhou_and_the_ack_goes_back(
    region: RegionUnderTest, inbox: tuple[Inbox, str]
) -> None:
    food = (common_pb2.SUPERVISION_DOMAIN_FOOD_DRUG,)
    suzhou_regulator = Stream(
        region,
        at="suzhou",
        as_city="suzhou",
        domains=food,
        min_severity=alert_exchange_pb2.ALERT_SEVERITY_HIGH,
    )
    changzhou_regulator = Stream(region, at="changzhou", as_city="changzhou")
    record = penalty_record(subject(1), city_code=CZ, domain="FOOD_DRUG", serious=True)
    await region.submit(record)

    message = await suzhou_regulator.next_matching(is_alert(subject(1)))
    alert = message.alert
    assert alert.rule_id == "serious-penalty-linkage.v1"
    assert alert.origin_city == CZ
    assert list(alert.target_cities) == [SZ]
    assert list(alert.evidence_record_ids) == [record["record_id"]]
    assert alert.severity == alert_exchange_pb2.ALERT_SEVERITY_HIGH
    assert alert.subject_key == subject(1)

    # The Suzhou regulator's webhook has it too, signed, keyed by the alert's event id.
    for _ in range(100):
        if any(e["subject"] == alert.alert_id for e in inbox[0].events()):
            break
        await asyncio.sleep(0.1)
    with inbox[0].lock:
        (headers, body) = next(
            (h, b) for h, b in inbox[0].deliveries if json.loads(b)["subject"] == alert.alert_id
        )
    assert verify(SECRET, headers, body)
    assert headers[IDEMPOTENCY_HEADER] == f"{alert.alert_id}/0"

    # On Kafka: raised on Changzhou's food-drug topic, republished on Suzhou's.
    raised = await region.topic_values("changzhou", "supervision.alerts.food-drug.v1")
    received = await region.topic_values("suzhou", "supervision.alerts.food-drug.v1")
    assert alert.alert_id in {a["alert_id"] for a in raised}
    assert alert.alert_id in {a["alert_id"] for a in received}

    # The Suzhou regulator acknowledges at its own node; the change is relayed to Changzhou.
    channel, stub = region.stub("suzhou", "suzhou")
    change_id = str(uuid.uuid4())
    async with channel:
        response = await stub.UpdateAlertStatus(
            alert_exchange_pb2.UpdateAlertStatusRequest(
                alert_id=alert.alert_id,
                status=alert_exchange_pb2.ALERT_STATUS_ACKNOWLEDGED,
                regulator="11320500014160400L",
                note="已安排属地市场监管所核查",
                expected_status=alert_exchange_pb2.ALERT_STATUS_RAISED,
                change_id=change_id,
            ),
            timeout=10,
        )
        assert response.change.by_city == SZ
        # Repeating the same change is harmless; going backwards is refused by the origin.
        again = await stub.UpdateAlertStatus(
            alert_exchange_pb2.UpdateAlertStatusRequest(
                alert_id=alert.alert_id,
                status=alert_exchange_pb2.ALERT_STATUS_ACKNOWLEDGED,
                change_id=change_id,
            ),
            timeout=10,
        )
        assert again.change == response.change
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.UpdateAlertStatus(
                alert_exchange_pb2.UpdateAlertStatusRequest(
                    alert_id=alert.alert_id,
                    status=alert_exchange_pb2.ALERT_STATUS_ACKNOWLEDGED,
                    change_id=str(uuid.uuid4()),
                ),
                timeout=10,
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # Visible in Changzhou: its regulators' stream, its store, its status topic.
    seen = await changzhou_regulator.next_matching(
        is_status(alert.alert_id, alert_exchange_pb2.ALERT_STATUS_ACKNOWLEDGED)
    )
    assert seen.status_change.by_city == SZ
    assert seen.status_change.by_regulator == "11320500014160400L"
    held = region.nodes["changzhou"].book.held(alert.alert_id)
    assert held is not None
    assert held.status.value == "ACKNOWLEDGED"
    statuses = await region.topic_values("changzhou", "supervision.alert-status.v1")
    assert ("ACKNOWLEDGED", SZ) in {
        (s["status"], s["by_city"]) for s in statuses if s["alert_id"] == alert.alert_id
    }
    # ... and in Suzhou's own stream.
    await suzhou_regulator.next_matching(
        is_status(alert.alert_id, alert_exchange_pb2.ALERT_STATUS_ACKNOWLEDGED)
    )

    # Replaying the same record raises nothing new.
    await region.submit(record)
    await asyncio.sleep(1.5)
    assert [m for m in suzhou_regulator.drain() if is_alert(subject(1))(m)] == []
    raised_again = await region.topic_values("changzhou", "supervision.alerts.food-drug.v1")
    assert [a["alert_id"] for a in raised_again].count(alert.alert_id) == 1

    await suzhou_regulator.close()
    await changzhou_regulator.close()


async def test_an_unacknowledged_alert_escalates(region: RegionUnderTest) -> None:
    suzhou_regulator = Stream(region, at="suzhou", as_city="suzhou")
    await region.submit(penalty_record(subject(2), city_code=CZ, domain="MEDICAL", serious=True))
    first = await suzhou_regulator.next_matching(is_alert(subject(2), level=0))
    # HIGH must be acknowledged within 3 s (test SLA); nobody does, so Changzhou escalates
    # and delivers the escalated alert to Suzhou.
    escalated = await suzhou_regulator.next_matching(is_alert(subject(2), level=1), within_s=15)
    assert escalated.alert.ack_deadline.ToMilliseconds() > first.alert.ack_deadline.ToMilliseconds()
    statuses = await region.topic_values("changzhou", "supervision.alert-status.v1")
    assert ("ESCALATED", 1) in {
        (s["status"], s["escalation_level"])
        for s in statuses
        if s["alert_id"] == first.alert.alert_id
    }
    await suzhou_regulator.close()


async def test_a_suzhou_node_that_was_down_catches_up_and_its_regulator_resumes(
    region: RegionUnderTest,
) -> None:
    stream = Stream(region, at="suzhou", as_city="suzhou")
    await region.submit(penalty_record(subject(3), city_code=CZ, serious=True))
    before = await stream.next_matching(is_alert(subject(3)))
    cursor = before.cursor
    await stream.close()

    await region.nodes["suzhou"].stop(0)
    missed = penalty_record(subject(4), city_code=CZ, domain="MEDICAL", serious=True)
    await region.submit(missed)
    await asyncio.sleep(1.5)  # Changzhou raises it and keeps retrying delivery
    await region.restart("suzhou")

    resumed = Stream(region, at="suzhou", as_city="suzhou", cursor=cursor)
    message = await resumed.next_matching(is_alert(subject(4)), within_s=20)
    assert list(message.alert.evidence_record_ids) == [missed["record_id"]]
    # Nothing at or before the cursor comes again.
    assert all(m.cursor[9:] > cursor[9:] for m in resumed.seen)
    replayed = (before.alert.alert_id, before.alert.escalation_level)
    assert replayed not in {(m.alert.alert_id, m.alert.escalation_level) for m in resumed.seen}
    await resumed.close()


async def test_peers_are_held_to_the_contract(region: RegionUnderTest) -> None:
    channel, stub = region.stub("suzhou", "wuxi")
    forged = alert_exchange_pb2.Alert(
        alert_id="320400-forged",
        rule_id="serious-penalty-linkage.v1",
        domain=common_pb2.SUPERVISION_DOMAIN_FOOD_DRUG,
        severity=alert_exchange_pb2.ALERT_SEVERITY_HIGH,
        origin_city=CZ,
        target_cities=[SZ],
        subject_key=subject(5),
        explanation="x",
    )
    async with channel:
        response = await stub.DeliverAlerts(
            alert_exchange_pb2.DeliverAlertsRequest(alerts=[forged]), timeout=10
        )
        (result,) = response.results
        assert not result.accepted
        assert "not-origin" in {r.code for r in result.reasons}
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.UpdateAlertStatus(
                alert_exchange_pb2.UpdateAlertStatusRequest(
                    alert_id="320500-nope",
                    status=alert_exchange_pb2.ALERT_STATUS_RESOLVED,
                    change_id=str(uuid.uuid4()),
                ),
                timeout=10,
            )
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        assert (DENIAL_TRAILER, "unknown-alert") in tuple(unknown.value.trailing_metadata())
    # A node's feed is for its own city's regulators: Suzhou's own certificate gets a
    # cursor checked, and Wuxi's is refused by the policy before anything is read.
    channel, stub = region.stub("suzhou", "suzhou")
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as bad_cursor:
            async for _ in stub.SubscribeAlerts(
                alert_exchange_pb2.SubscribeAlertsRequest(cursor=b"garbage")
            ):
                pass
        assert bad_cursor.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (DENIAL_TRAILER, "invalid-cursor") in tuple(bad_cursor.value.trailing_metadata())
    # Without a certificate from the region's CA nobody gets in.
    foreign = TlsFiles(
        ca=region.pki.directory / "ca.crt",
        cert=region.pki.directory / "foreign.crt",
        key=region.pki.directory / "foreign.key",
    )
    channel = secure_channel(
        region.region.city("suzhou").endpoints["alerts"],
        foreign,
        expect_city="suzhou",
        service="alerts",
    )
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await alert_exchange_pb2_grpc.AlertExchangeServiceStub(channel).DeliverAlerts(
                alert_exchange_pb2.DeliverAlertsRequest(alerts=[forged]), timeout=5
            )


async def test_wuxi_subscribing_to_suzhous_alerts_is_refused_and_audited(
    region: RegionUnderTest,
) -> None:
    channel, stub = region.stub("suzhou", "wuxi")
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in stub.SubscribeAlerts(alert_exchange_pb2.SubscribeAlertsRequest()):
                pass
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (DENIAL_TRAILER, "policy-denied") in tuple(refused.value.trailing_metadata())
    subscribe = "/creditlink.peer.v1.AlertExchangeService/SubscribeAlerts"

    async def audited() -> list[dict[str, Any]]:
        return [
            record
            for record in await region.topic_values("suzhou", AUDIT_TOPIC)
            if (record["caller_city"], record["method"]) == (WX, subscribe)
        ]

    records = await eventually(audited, within=20)
    assert [(r["status_code"], r["callee_city"]) for r in records] == [("PERMISSION_DENIED", SZ)]


@pytest.mark.parametrize(
    ("caller", "passed", "skipped"),
    [
        (
            "wuxi",
            {
                "alerts.update-unknown-alert-not-found",
                "alerts.deliver-accepted-once",
                "alerts.deliver-with-another-citys-origin-refused",
                "alerts.subscribe-by-another-city-permission-denied",
            },
            {
                "alerts.subscribe-bad-cursor-invalid-argument",
                # No --alert-id: test_the_runner_reports_handling_of_an_alert_that_targets_it.
                "alerts.update-status-of-a-targeting-alert-recorded-once",
            },
        ),
        (
            "suzhou",
            {
                "alerts.update-unknown-alert-not-found",
                "alerts.subscribe-bad-cursor-invalid-argument",
            },
            {
                "alerts.deliver-accepted-once",
                "alerts.deliver-with-another-citys-origin-refused",
                "alerts.subscribe-by-another-city-permission-denied",
                "alerts.update-status-of-a-targeting-alert-recorded-once",
            },
        ),
    ],
)
async def test_the_conformance_runner_passes_against_a_real_alerts_node(
    region: RegionUnderTest, caller: str, passed: set[str], skipped: set[str]
) -> None:
    # As the serving city, the runner calls as one of its regulators.
    endpoint = _runner_endpoint(
        region, "suzhou", city_regulator("suzhou") if caller == "suzhou" else caller, caller
    )
    results = await conformance_run(endpoint, only=["alerts"])
    assert {r.name for r in results if r.outcome == "PASS"} == passed, [r.line() for r in results]
    assert {r.name for r in results if r.outcome == "SKIP"} == skipped


def _runner_endpoint(
    region: RegionUnderTest, serving: str, certificate: str | Role, caller: str, **options: str
) -> Endpoint:
    """The conformance runner's endpoint: ``serving``'s alerts node, called with the
    certificate of ``certificate`` (a city's node or a role) as city ``caller``."""
    tls = region.pki.tls(certificate)
    return Endpoint(
        region.region.city(serving).endpoints["alerts"],
        tls.ca,
        tls.cert,
        tls.key,
        service_host(serving, "alerts"),
        caller_code=region.region.city(caller).admin_code,
        serving_code=region.region.city(serving).admin_code,
        **options,
    )


async def test_the_runner_reports_handling_of_an_alert_that_targets_it(
    region: RegionUnderTest,
) -> None:
    """The positive UpdateAlertStatus case, against Changzhou's real node as Suzhou: a
    serious penalty in Changzhou raises an alert for Suzhou, which the runner acknowledges."""
    stream = Stream(region, at="suzhou", as_city="suzhou")
    await region.submit(penalty_record(subject(61), city_code=CZ, serious=True))
    message = await stream.next_matching(is_alert(subject(61)))
    await stream.close()
    endpoint = _runner_endpoint(
        region, "changzhou", "suzhou", "suzhou", alert_id=message.alert.alert_id
    )
    case = "alerts.update-status-of-a-targeting-alert-recorded-once"
    [result] = await conformance_run(endpoint, only=[case])
    assert result.outcome == "PASS", result.line()
    # Without an alert to acknowledge the case says what it needs.
    [skipped] = await conformance_run(dataclasses.replace(endpoint, alert_id=""), only=[case])
    assert skipped.outcome == "SKIP"
    assert "--alert-id" in skipped.detail
