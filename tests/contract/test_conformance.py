"""The conformance runner against a node built from the common bootstrap (real mTLS sockets),
through its Python API and through its command line, as a peer city would run it."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import json
import re
import subprocess
import sys
import unicodedata
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization

from contracts import conformance
from contracts.conformance import DIGEST_VECTORS, CaseResult, Endpoint, run
from creditlink.peer.v1 import (
    alert_exchange_pb2,
    alert_exchange_pb2_grpc,
    common_pb2,
    credit_check_pb2,
    list_sync_pb2,
)
from services.common.certs import service_host
from services.common.consent import ConsentGrant, ConsentKeyring
from services.common.peer import (
    Denied,
    PeerCall,
    PeerSecurity,
    PeerServer,
    ServiceBinding,
    current_call,
    deny,
    start_peer_server,
)
from services.common.policy import DEFAULT_POLICY_FILE, load_policy, parse_policy
from services.common.settings import REPO_ROOT
from tests.peer_kit import (
    CODES,
    REGION,
    ConsentKit,
    FakeCreditCheck,
    InMemoryListSync,
    PeerPki,
    credit_check_binding,
    list_sync_binding,
    make_consent_kit,
    make_pki,
    sample_changes,
)

pytestmark = pytest.mark.timeout(120)


class BrokenListSync(InMemoryListSync):
    """Claims a digest that does not match its entries, and loses a change on resume."""

    async def GetListDigest(
        self, request: list_sync_pb2.GetListDigestRequest, context: grpc.aio.ServicerContext
    ) -> list_sync_pb2.GetListDigestResponse:
        response = await super().GetListDigest(request, context)
        response.buckets[0].entry_count += 1
        return response

    async def StreamListChanges(
        self, request: list_sync_pb2.StreamListChangesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[list_sync_pb2.StreamListChangesResponse]:
        skipped = False
        async for message in super().StreamListChanges(request, context):
            if request.cursor and message.HasField("change") and not skipped:
                skipped = True
                continue
            yield message


class ListBackedCheck(FakeCreditCheck):
    """Answers CheckSubject from the entries its list sync serves, as a real node does."""

    def __init__(self, security: PeerSecurity, list_sync: InMemoryListSync) -> None:
        super().__init__(security, {})
        self._list_sync = list_sync

    def _memberships(self, subject_key: str) -> list[credit_check_pb2.Membership]:
        return [
            credit_check_pb2.Membership(
                entry_key=e.entry_key,
                list_type=e.list_type,
                issuing_city=e.issuing_city,
                status=e.status,
                version=e.version,
            )
            for e in self._list_sync._entries()
            if e.subject_key == subject_key
        ]


class AlwaysEmptyCheck(ListBackedCheck):
    """Wrong: answers every subject with no memberships, whatever its lists hold."""

    def _memberships(self, subject_key: str) -> list[credit_check_pb2.Membership]:
        return []


class WrongDigestListSync(InMemoryListSync):
    """Wrong: hashes its buckets over another line format (no status)."""

    async def GetListDigest(
        self, request: list_sync_pb2.GetListDigestRequest, context: grpc.aio.ServicerContext
    ) -> list_sync_pb2.GetListDigestResponse:
        response = await super().GetListDigest(request, context)
        for bucket in response.buckets:
            lines = sorted(
                (
                    e
                    for e in self._entries()
                    if conformance.bucket_of(e.entry_key, 16) == bucket.bucket
                ),
                key=lambda e: e.entry_key.encode(),
            )
            bucket.sha256 = hashlib.sha256(
                "".join(f"{e.entry_key}|{e.version}\n" for e in lines).encode()
            ).digest()
        return response


class _AnySignature:
    """Wrong: a consent key that accepts every signature."""

    def verify(self, signature: bytes, data: bytes) -> None:
        return None


def _unchecked_signatures(kit: ConsentKit) -> ConsentKeyring:
    keyring = ConsentKeyring()
    for issuer in kit.issuers.values():
        keyring.add(issuer.city_code, issuer.private_key.public_key())
    keyring._keys = {kid: (city, _AnySignature()) for kid, (city, _) in keyring._keys.items()}  # type: ignore[misc]
    return keyring


class SelfIssuedConsentSecurity(PeerSecurity):
    """Wrong: honours a genuine token whoever issued it (no home-city check)."""

    def check_subject(
        self, call: PeerCall, subject_key: str, consent_token: str | None
    ) -> ConsentGrant | None:
        try:
            return super().check_subject(call, subject_key, consent_token)
        except Denied as denied:
            if denied.denial == "consent-wrong-issuer":
                return None
            raise


class FakeAlerts(alert_exchange_pb2_grpc.AlertExchangeServiceServicer):
    """Enough of AlertExchangeService for the runner's alert cases: deliveries checked for
    origin and target and idempotent by alert id; no alert to update; cursors refused."""

    def __init__(self, city_code: str, *, check_origin: bool = True) -> None:
        self._city = city_code
        self._check_origin = check_origin
        self._held: set[str] = set()

    async def DeliverAlerts(
        self,
        request: alert_exchange_pb2.DeliverAlertsRequest,
        context: grpc.aio.ServicerContext,
    ) -> alert_exchange_pb2.DeliverAlertsResponse:
        caller = current_call().identity
        assert caller is not None
        results = []
        for alert in request.alerts:
            reasons = []
            if self._check_origin and alert.origin_city != caller.city_code:
                reasons.append(common_pb2.FieldViolation(field="origin_city", code="not-origin"))
            if self._city not in alert.target_cities:
                reasons.append(common_pb2.FieldViolation(field="target_cities", code="not-target"))
            duplicate = alert.alert_id in self._held
            if not reasons:
                self._held.add(alert.alert_id)
            results.append(
                alert_exchange_pb2.AlertDeliveryResult(
                    alert_id=alert.alert_id,
                    accepted=not reasons,
                    duplicate=duplicate and not reasons,
                    reasons=reasons,
                )
            )
        return alert_exchange_pb2.DeliverAlertsResponse(results=results)

    async def UpdateAlertStatus(
        self,
        request: alert_exchange_pb2.UpdateAlertStatusRequest,
        context: grpc.aio.ServicerContext,
    ) -> alert_exchange_pb2.UpdateAlertStatusResponse:
        await deny(context, grpc.StatusCode.NOT_FOUND, "unknown-alert", "no such alert")
        raise AssertionError("unreachable")

    async def SubscribeAlerts(
        self,
        request: alert_exchange_pb2.SubscribeAlertsRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[alert_exchange_pb2.SubscribeAlertsResponse]:
        if request.cursor:
            await deny(context, grpc.StatusCode.INVALID_ARGUMENT, "invalid-cursor", "not ours")
        return
        yield


async def _node(
    pki: PeerPki,
    list_sync: InMemoryListSync,
    *,
    consent: ConsentKit,
    check: type[ListBackedCheck] = ListBackedCheck,
    alerts: FakeAlerts | None = None,
    security_class: type[PeerSecurity] = PeerSecurity,
    keyring: ConsentKeyring | None = None,
    open_policy: bool = False,
) -> PeerServer:
    if open_policy:
        policy = parse_policy(
            {
                "version": 1,
                "data_classes": {"organisation": "o", "natural_person": "p", "aggregate": "a"},
                "rules": [
                    {
                        "description": "everyone, everything",
                        "callers": sorted(REGION.cities),
                        "methods": [
                            "/creditlink.peer.v1.CreditCheckService/*",
                            "/creditlink.peer.v1.ListSyncService/*",
                            "/creditlink.peer.v1.AlertExchangeService/*",
                        ],
                        "data_classes": ["organisation", "natural_person", "aggregate"],
                    }
                ],
            },
            source="open-policy",
            cities=REGION.cities.keys(),
        )
    else:
        policy = load_policy(DEFAULT_POLICY_FILE, cities=REGION.cities.keys())
    security = security_class(
        city="suzhou", region=REGION, policy=policy, keyring=keyring or consent.keyring
    )
    servicer = check(security, list_sync)
    return await start_peer_server(
        bind="127.0.0.1:0",
        tls=pki.tls("suzhou"),
        services=[
            credit_check_binding(servicer),
            list_sync_binding(list_sync),
            ServiceBinding(
                alerts or FakeAlerts("320500"),
                alert_exchange_pb2_grpc.add_AlertExchangeServiceServicer_to_server,
                "creditlink.peer.v1.AlertExchangeService",
            ),
        ],
        security=security,
        audit=None,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PeerPki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def consent(pki: PeerPki) -> ConsentKit:
    """Consent keys of the three cities; each private key also written where the runner, run
    as that city, reads its own (``<city>.consent.key``)."""
    kit = make_consent_kit()
    for city, issuer in kit.issuers.items():
        (pki.directory / f"{city}.consent.key").write_bytes(
            issuer.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return kit


def _changes() -> list[list_sync_pb2.ListChange]:
    """The sample changes (every entry removed by the end) and one entry still active."""
    changes = sample_changes()
    entry = list_sync_pb2.ListEntry(
        entry_key="320500/BLACK/L:91320500MA1W8XY409/00000000000000aa",
        list_type=common_pb2.LIST_TYPE_BLACK,
        issuing_city="320500",
        subject_key="L:91320500MA1W8XY409",
        status=common_pb2.LIST_ENTRY_STATUS_ACTIVE,
        version=1,
    )
    sequence = len(changes) + 1
    designated = list_sync_pb2.ListChange(
        change_id=f"320500-{sequence}",
        issuing_city="320500",
        sequence=sequence,
        action=list_sync_pb2.LIST_CHANGE_ACTION_DESIGNATED,
        entry=entry,
    )
    return [*changes, designated]


@pytest.fixture(scope="module")
async def server(pki: PeerPki, consent: ConsentKit) -> AsyncIterator[PeerServer]:
    node = await _node(pki, InMemoryListSync("320500", _changes()), consent=consent)
    try:
        yield node
    finally:
        await node.stop(0)


def _endpoint(pki: PeerPki, port: int, caller: str = "wuxi") -> Endpoint:
    tls = pki.tls(caller)
    denied = pki.tls("jiashan")
    return Endpoint(
        f"127.0.0.1:{port}",
        tls.ca,
        tls.cert,
        tls.key,
        service_host("suzhou", "lists"),
        caller_code=CODES[caller],
        serving_code=CODES["suzhou"],
        pseudonym_key_id=REGION.pseudonym_key_ids[0],
        consent_key=pki.directory / f"{caller}.consent.key",
        denied_cert=denied.cert,
        denied_key=denied.key,
    )


def _by_name(results: list[CaseResult]) -> dict[str, CaseResult]:
    return {r.name: r for r in results}


async def test_runner_passes_against_our_node_and_reports_every_case(
    pki: PeerPki, server: PeerServer
) -> None:
    results = await run(_endpoint(pki, server.port))
    assert [r.name for r in results] == [name for name, _ in conformance.CASES]
    failed = [r.line() for r in results if r.outcome == "FAIL"]
    assert failed == []
    outcomes = _by_name(results)
    # What the node serves is exercised, what it does not serve is skipped, not passed.
    # Only the serving city's own certificate may subscribe: that case is for a run as Suzhou.
    # The positive UpdateAlertStatus case needs an alert the node raised for the caller
    # (--alert-id; run against a real node in tests/integration/test_alerts_region.py).
    as_server_only = {
        "alerts.subscribe-bad-cursor-invalid-argument",
        "alerts.update-status-of-a-targeting-alert-recorded-once",
    }
    assert all(
        r.outcome == "PASS"
        for n, r in outcomes.items()
        if n.startswith(("credit-check", "list-sync", "transport", "consent", "policy", "alerts"))
        and n not in as_server_only
    )
    assert all(
        r.outcome == "SKIP"
        for n, r in outcomes.items()
        if n.startswith("score") or n in as_server_only
    )


async def test_runner_fails_an_implementation_that_breaks_the_contract(
    pki: PeerPki, consent: ConsentKit
) -> None:
    broken = await _node(pki, BrokenListSync("320500", sample_changes()), consent=consent)
    try:
        results = _by_name(await run(_endpoint(pki, broken.port), only=["list-sync"]))
    finally:
        await broken.stop(0)
    assert results["list-sync.entries-match-digest"].outcome == "FAIL"
    assert "bucket 0" in results["list-sync.entries-match-digest"].detail
    assert results["list-sync.stream-resumes-without-gap-or-duplicate"].outcome == "FAIL"
    assert results["list-sync.digest-shape"].outcome == "PASS"


@pytest.mark.parametrize(
    ("wrong", "failing"),
    [
        (
            "signature-not-checked",
            "consent.well-formed-token-with-a-broken-signature-permission-denied",
        ),
        (
            "self-issued-consent-accepted",
            "consent.caller-consenting-for-the-serving-citys-resident-permission-denied",
        ),
        (
            "no-policy",
            "policy.caller-the-policy-names-for-nothing-permission-denied"
            " alerts.subscribe-by-another-city-permission-denied",
        ),
        ("always-empty-memberships", "credit-check.listed-subject-has-its-membership"),
        ("wrong-digest", "list-sync.entries-match-digest"),
        ("forged-origin-accepted", "alerts.deliver-with-another-citys-origin-refused"),
    ],
)
async def test_runner_fails_each_wrong_implementation_naming_the_case(
    pki: PeerPki, consent: ConsentKit, wrong: str, failing: str
) -> None:
    options: dict[str, Any] = {"consent": consent}
    list_sync = InMemoryListSync("320500", _changes())
    if wrong == "signature-not-checked":
        options["keyring"] = _unchecked_signatures(consent)
    elif wrong == "self-issued-consent-accepted":
        options["security_class"] = SelfIssuedConsentSecurity
    elif wrong == "no-policy":
        options["open_policy"] = True
    elif wrong == "always-empty-memberships":
        options["check"] = AlwaysEmptyCheck
    elif wrong == "forged-origin-accepted":
        options["alerts"] = FakeAlerts("320500", check_origin=False)
    elif wrong == "wrong-digest":
        list_sync = WrongDigestListSync("320500", _changes())
    node = await _node(pki, list_sync, **options)
    try:
        results = await run(_endpoint(pki, node.port))
    finally:
        await node.stop(0)
    failed = {r.name for r in results if r.outcome == "FAIL"}
    # Exactly the cases this wrong implementation breaks fail, each by name.
    assert failed == set(failing.split()), [r.line() for r in results if r.outcome == "FAIL"]


async def test_without_the_keys_to_test_consent_and_policy_those_cases_fail(
    pki: PeerPki, server: PeerServer
) -> None:
    tls = pki.tls("wuxi")
    bare = Endpoint(
        f"127.0.0.1:{server.port}", tls.ca, tls.cert, tls.key, service_host("suzhou", "lists")
    )
    results = _by_name(await run(bare, only=["consent", "policy"]))
    assert {r.outcome for r in results.values()} == {"FAIL"}
    assert all("not shown" in r.detail for r in results.values())


def test_the_published_digest_vectors_follow_the_written_algorithm() -> None:
    """Recomputed here from the contract's words with hashlib alone, not with the digest
    module the server and the runner share."""
    vectors = json.loads(DIGEST_VECTORS.read_text(encoding="utf-8"))
    for vector in vectors["cases"]:
        count = vector["bucket_count"]
        buckets: dict[int, list[dict[str, Any]]] = {b: [] for b in range(count)}
        for entry in vectors["entries"]:
            key = entry["entry_key"]
            number = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % count
            assert vector["bucket_of"][key] == number
            buckets[number].append(entry)
        for published in vector["buckets"]:
            lines = sorted(buckets[published["bucket"]], key=lambda e: e["entry_key"].encode())
            text = "".join(f"{e['entry_key']}|{e['version']}|{e['status']}\n" for e in lines)
            assert published["sha256"] == hashlib.sha256(text.encode()).hexdigest()
            assert published["entry_count"] == len(lines)
    assert len(vectors["cases"]) >= 3


async def test_caller_denied_by_policy_fails_the_cases(pki: PeerPki, server: PeerServer) -> None:
    results = _by_name(
        await run(_endpoint(pki, server.port, caller="jiashan"), only=["credit-check"])
    )
    assert results["credit-check.organisation-answered"].outcome == "FAIL"
    assert "PERMISSION_DENIED" in results["credit-check.organisation-answered"].detail


async def test_command_line_prints_a_line_per_case_and_exits_by_outcome(
    pki: PeerPki, server: PeerServer, consent: ConsentKit
) -> None:
    tls = pki.tls("wuxi")

    def run_cli(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "contracts.conformance",
                "--target",
                f"127.0.0.1:{server.port}",
                "--ca",
                str(tls.ca),
                "--cert",
                str(tls.cert),
                "--key",
                str(tls.key),
                "--caller",
                "wuxi",
                "--serving",
                "suzhou",
                "--server-name",
                service_host("suzhou", "lists"),
                "--consent-key",
                str(pki.directory / "wuxi.consent.key"),
                "--denied-cert",
                str(pki.tls("jiashan").cert),
                "--denied-key",
                str(pki.tls("jiashan").key),
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
            cwd=REPO_ROOT,
        )

    done = await asyncio.to_thread(run_cli)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(conformance.CASES) + 1
    assert all(line.split()[0] in {"PASS", "SKIP"} for line in lines[:-1])
    skipped = sum(line.startswith("SKIP") for line in lines)
    assert lines[-1] == f"{len(lines) - 1 - skipped} passed, 0 failed, {skipped} skipped"
    jiashan = pki.tls("jiashan")
    denied = await asyncio.to_thread(
        run_cli, "--cert", str(jiashan.cert), "--key", str(jiashan.key), "--only", "credit-check"
    )
    assert denied.returncode == 1
    assert "FAIL credit-check.organisation-answered" in denied.stdout


def test_cases_have_unique_names() -> None:
    names = [name for name, _ in conformance.CASES]
    assert len(names) == len(set(names))
    assert Path(conformance.__file__).is_file()


def test_the_runner_sends_no_resident_id_number() -> None:
    """A raw ID number sent as a subject key would land in the endpoint's permanent audit
    topic; no text in the runner may hold one, in any spelling of its digits."""
    source = Path(conformance.__file__).read_text(encoding="utf-8")
    shaped = re.compile(r"(?<![0-9])[0-9]{17}[0-9X](?![0-9])")
    texts = [
        unicodedata.normalize("NFKC", node.value).upper()
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]
    assert [text for text in texts if shaped.search(text)] == []
