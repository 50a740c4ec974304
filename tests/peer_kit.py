"""Test helpers for the peer-call security kit: certificates, keys, a fake servicer, a server.

Every test makes its own CA and certificates in a temporary directory, so no test depends on
``make certs`` having run and none can leak a key into the repository.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from creditlink.peer.v1 import (
    common_pb2,
    credit_check_pb2,
    credit_check_pb2_grpc,
    list_sync_pb2,
    list_sync_pb2_grpc,
)
from services.common.audit import AUDIT_TOPIC
from services.common.audit.signing import new_audit_key_files
from services.common.certs import (
    CertifiedKey,
    city_host,
    city_uri,
    issue_city_certificate,
    issue_role_certificate,
    new_ca,
    new_city_ca,
)
from services.common.consent import ConsentIssuer, ConsentKeyring
from services.common.list_digest import (
    DigestLine,
    bucket_count_or_default,
    bucket_digests,
    bucket_of,
)
from services.common.peer import (
    Denied,
    PeerSecurity,
    PeerServer,
    ServiceBinding,
    TlsFiles,
    current_call,
    deny,
    start_peer_server,
)
from services.common.policy import parse_policy
from services.common.pseudonym import DEV_REGION_KEY, key_id_of
from services.common.region import Region, load_region
from services.common.roles import Role
from services.common.settings import REPO_ROOT, Settings, load_settings
from services.common.topics import load_catalogue, provision

REGION = load_region(REPO_ROOT / "deploy" / "config" / "region.yaml")
CODES = {key: city.admin_code for key, city in REGION.cities.items()}

ORG = "L:91320500MA1W8XY409"
# Residents of Suzhou (division 320505) under the development region key.
PERSON = f"N:320505.{key_id_of(DEV_REGION_KEY)}." + "ab" * 32
OTHER_PERSON = f"N:320505.{key_id_of(DEV_REGION_KEY)}." + "cd" * 32
#: A Wuxi resident (division 320211), whose consent only Wuxi can give.
WUXI_PERSON = f"N:320211.{key_id_of(DEV_REGION_KEY)}." + "ef" * 32
#: Departments and a regulator of Suzhou, by their codes (GB 32100-2015 check characters).
SUZHOU_DEPARTMENT = "11320500014160400L"
OTHER_SUZHOU_DEPARTMENT = "11320500014160574X"


def city_regulator(city: str) -> Role:
    """The first regulator of ``city`` in deploy/config/city-roles.yaml (Suzhou's: the market
    supervision bureau, FOOD_DRUG, MEDICAL and MARKET)."""
    from services.common.roles import load_city_roles

    roles = load_city_roles(REPO_ROOT / "deploy/config/city-roles.yaml", cities=REGION.cities)
    return roles.regulator_roles(city)[0]


#: The purpose a plain check (no scenario) needs.
CHECK_PURPOSE = "credit-history"

# Suzhou serves. Wuxi may check subjects (both classes); Changzhou may check organisations
# only; nobody may call CheckSubjects except Wuxi. Jiashan has no rule at all.
TEST_POLICY = {
    "version": 1,
    "data_classes": {"organisation": "orgs", "natural_person": "people", "aggregate": "scales"},
    "rules": [
        {
            "callers": ["wuxi"],
            "methods": ["/creditlink.peer.v1.CreditCheckService/*"],
            "data_classes": ["organisation", "natural_person"],
        },
        {
            "callers": ["changzhou"],
            "methods": ["/creditlink.peer.v1.CreditCheckService/CheckSubject"],
            "data_classes": ["organisation"],
        },
    ],
}


@dataclass(frozen=True)
class PeerPki:
    """A region root with a CA and a certificate per city, plus certificates a peer refuses:
    from a foreign root, expired, of a city outside the region, naming no city or two, signed
    by the root itself, and from a rogue Wuxi CA (real root) naming Suzhou."""

    directory: Path
    ca: CertifiedKey
    city_cas: Mapping[str, CertifiedKey]

    def tls(self, name: str | Role) -> TlsFiles:
        """The files of a city's node or of a misfit certificate by file name; of a
        department or regulator by its role (issued by its city's CA on first use)."""
        if isinstance(name, Role):
            return self.role_tls(name)
        return TlsFiles(
            ca=self.directory / "ca.crt",
            cert=self.directory / f"{name}.crt",
            key=self.directory / f"{name}.key",
        )

    def role_tls(self, role: Role) -> TlsFiles:
        """A department's or regulator's certificate, issued by its city's CA."""
        return TlsFiles.for_role(role, self.directory)


def make_pki(
    directory: Path, cities: tuple[str, ...] = ("suzhou", "wuxi", "changzhou", "jiashan")
) -> PeerPki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = new_ca("test region CA")
    ca.write(directory / "ca.crt", directory / "ca.key")
    city_cas = {city: new_city_ca(ca, city) for city in {*cities, "wuxi", "atlantis"}}
    for city in cities:
        new_audit_key_files(directory, city)
        city_cas[city].write(directory / f"{city}-ca.crt", directory / f"{city}-ca.key")
        issue_city_certificate(city_cas[city], city).write(
            directory / f"{city}.crt", directory / f"{city}.key"
        )
    wuxi_ca = city_cas["wuxi"]
    # A certificate naming Wuxi, from a root the server does not trust.
    foreign = new_city_ca(new_ca("someone else's CA"), "wuxi")
    issue_city_certificate(foreign, "wuxi").write(
        directory / "foreign.crt", directory / "foreign.key"
    )
    # A certificate of Wuxi's CA that expired yesterday.
    now = dt.datetime.now(dt.UTC)
    issue_city_certificate(
        wuxi_ca,
        "wuxi",
        not_before=now - dt.timedelta(days=30),
        not_after=now - dt.timedelta(days=1),
    ).write(directory / "expired.crt", directory / "expired.key")
    # A certificate of the region's hierarchy naming a city that is not in the region.
    issue_city_certificate(city_cas["atlantis"], "atlantis").write(
        directory / "atlantis.crt", directory / "atlantis.key"
    )
    # Certificates of Wuxi's CA that name no city in a URI SAN (only in the CN), or two.
    issue_city_certificate(wuxi_ca, "wuxi", uris=()).write(
        directory / "cn-only.crt", directory / "cn-only.key"
    )
    issue_city_certificate(wuxi_ca, "wuxi", uris=(city_uri("wuxi"), city_uri("changzhou"))).write(
        directory / "two-cities.crt", directory / "two-cities.key"
    )
    # A certificate naming Suzhou signed by the root itself, with no city CA between.
    issue_city_certificate(ca, "suzhou").write(
        directory / "root-signed.crt", directory / "root-signed.key"
    )
    # A rogue CA for Wuxi that the real root signed, naming Suzhou in the URI SAN (its host
    # names stay under Wuxi's, which its name constraints permit, so TLS alone accepts it) ...
    rogue = new_city_ca(ca, "wuxi")
    issue_city_certificate(rogue, "suzhou", hosts=(city_host("wuxi"),)).write(
        directory / "rogue.crt", directory / "rogue.key"
    )
    # ... and naming Suzhou's host names too, which the name constraints refuse.
    issue_city_certificate(rogue, "suzhou").write(
        directory / "rogue-hosts.crt", directory / "rogue-hosts.key"
    )
    # A department certificate naming a Suzhou department, from Wuxi's real CA.
    issue_role_certificate(rogue, Role.department("suzhou", SUZHOU_DEPARTMENT)).write(
        directory / "rogue-department.crt", directory / "rogue-department.key"
    )
    return PeerPki(directory, ca, city_cas)


@dataclass(frozen=True)
class ConsentKit:
    issuers: Mapping[str, ConsentIssuer]
    keyring: ConsentKeyring


def make_consent_kit(cities: tuple[str, ...] = ("suzhou", "wuxi", "changzhou")) -> ConsentKit:
    issuers = {c: ConsentIssuer(CODES[c], Ed25519PrivateKey.generate()) for c in cities}
    keyring = ConsentKeyring({i.city_code: i.private_key.public_key() for i in issuers.values()})
    return ConsentKit(issuers, keyring)


def make_security(keyring: ConsentKeyring, region: Region = REGION) -> PeerSecurity:
    policy = parse_policy(TEST_POLICY, source="test-policy", cities=region.cities.keys())
    return PeerSecurity(city="suzhou", region=region, policy=policy, keyring=keyring)


class FakeCreditCheck(credit_check_pb2_grpc.CreditCheckServiceServicer):
    """Answers from a dict subject_key -> list types; enough to exercise the security kit."""

    def __init__(self, security: PeerSecurity, lists: Mapping[str, list[int]]) -> None:
        self._security = security
        self._lists = lists

    def _memberships(self, subject_key: str) -> list[credit_check_pb2.Membership]:
        return [
            credit_check_pb2.Membership(
                entry_key=f"320500/{common_pb2.ListType.Name(t)}/{subject_key}/0000000000000000",
                list_type=t,
                issuing_city="320500",
                status=common_pb2.LIST_ENTRY_STATUS_ACTIVE,
                version=1,
            )
            for t in self._lists.get(subject_key, [])
        ]

    async def CheckSubject(
        self, request: credit_check_pb2.CheckSubjectRequest, context: grpc.aio.ServicerContext
    ) -> credit_check_pb2.CheckSubjectResponse:
        if not request.purpose:
            await deny(
                context, grpc.StatusCode.INVALID_ARGUMENT, "invalid-argument", "purpose is required"
            )
        return credit_check_pb2.CheckSubjectResponse(
            subject_key=request.subject_key, memberships=self._memberships(request.subject_key)
        )

    async def CheckSubjects(
        self, request: credit_check_pb2.CheckSubjectsRequest, context: grpc.aio.ServicerContext
    ) -> credit_check_pb2.CheckSubjectsResponse:
        if len(request.subjects) > 1000:
            await deny(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "invalid-argument",
                "at most 1000 subjects",
            )
        call = current_call()
        results = []
        for query in request.subjects:
            try:
                self._security.check_batch_subject(call, query.subject_key, query.consent_token)
            except Denied as denied:
                results.append(
                    credit_check_pb2.SubjectCheckResult(
                        subject_key=query.subject_key,
                        error=common_pb2.FieldViolation(
                            field="consent_token", code=denied.denial, message=denied.details
                        ),
                    )
                )
                continue
            results.append(
                credit_check_pb2.SubjectCheckResult(
                    subject_key=query.subject_key, memberships=self._memberships(query.subject_key)
                )
            )
        return credit_check_pb2.CheckSubjectsResponse(results=results)


def credit_check_binding(servicer: FakeCreditCheck) -> ServiceBinding:
    return ServiceBinding(
        servicer,
        credit_check_pb2_grpc.add_CreditCheckServiceServicer_to_server,
        "creditlink.peer.v1.CreditCheckService",
    )


class InMemoryListSync(list_sync_pb2_grpc.ListSyncServiceServicer):
    """A minimal, correct ListSyncService over a fixed list of changes (a reference for the
    conformance runner's list-sync cases; the real one lives in services/lists)."""

    CURSOR_PREFIX = b"mem1:"

    def __init__(self, city_code: str, changes: list[list_sync_pb2.ListChange]) -> None:
        self._city = city_code
        self._changes = changes

    def _entries(self) -> list[list_sync_pb2.ListEntry]:
        latest: dict[str, list_sync_pb2.ListEntry] = {}
        for change in self._changes:
            latest[change.entry.entry_key] = change.entry
        return sorted(latest.values(), key=lambda e: e.entry_key.encode())

    async def StreamListChanges(
        self, request: list_sync_pb2.StreamListChangesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[list_sync_pb2.StreamListChangesResponse]:
        start = 0
        if request.cursor:
            text = request.cursor.removeprefix(self.CURSOR_PREFIX)
            if text == request.cursor or not text.isdigit() or int(text) > len(self._changes):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "cursor not issued here")
            start = int(text)
        for position in range(start, len(self._changes)):
            yield list_sync_pb2.StreamListChangesResponse(
                change=self._changes[position],
                cursor=self.CURSOR_PREFIX + str(position + 1).encode(),
            )
        yield list_sync_pb2.StreamListChangesResponse(
            caught_up=list_sync_pb2.CaughtUp(changes_sent=len(self._changes) - start),
            cursor=self.CURSOR_PREFIX + str(len(self._changes)).encode(),
        )
        if request.follow:
            await asyncio.Event().wait()

    def _bucket_count(self, requested: int) -> int | None:
        try:
            return bucket_count_or_default(requested)
        except ValueError:
            return None

    async def GetListDigest(
        self, request: list_sync_pb2.GetListDigestRequest, context: grpc.aio.ServicerContext
    ) -> list_sync_pb2.GetListDigestResponse:
        count = self._bucket_count(request.bucket_count)
        if count is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad bucket_count")
        assert count is not None
        lines = [
            DigestLine(
                e.entry_key,
                e.version,
                common_pb2.ListEntryStatus.Name(e.status).removeprefix("LIST_ENTRY_STATUS_"),
            )
            for e in self._entries()
        ]
        return list_sync_pb2.GetListDigestResponse(
            issuing_city=self._city,
            bucket_count=count,
            buckets=[
                list_sync_pb2.BucketDigest(
                    bucket=b.bucket, entry_count=b.entry_count, sha256=b.sha256
                )
                for b in bucket_digests(lines, count)
            ],
            cursor=self.CURSOR_PREFIX + str(len(self._changes)).encode(),
        )

    async def ListEntries(
        self, request: list_sync_pb2.ListEntriesRequest, context: grpc.aio.ServicerContext
    ) -> list_sync_pb2.ListEntriesResponse:
        count = self._bucket_count(request.bucket_count)
        if count is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad bucket_count")
        assert count is not None
        wanted = set(request.buckets)
        after = request.page_token
        size = min(request.page_size or 500, 1000)
        chosen = [
            e
            for e in self._entries()
            if (not wanted or bucket_of(e.entry_key, count) in wanted) and e.entry_key > after
        ]
        page = chosen[:size]
        token = page[-1].entry_key if len(chosen) > size else ""
        return list_sync_pb2.ListEntriesResponse(entries=page, next_page_token=token)


async def serve_fake_check(pki: PeerPki, city: str = "suzhou") -> AsyncIterator[PeerServer]:
    """A ``CreditCheckService`` (the fake, ``ORG`` black-listed) behind the real guard and mTLS,
    unaudited, on a free port: the server a client-side contract test talks to."""
    security = make_security(make_consent_kit().keyring)
    servicer = FakeCreditCheck(security, {ORG: [common_pb2.LIST_TYPE_BLACK]})
    node = await start_peer_server(
        bind="127.0.0.1:0",
        tls=pki.tls(city),
        services=[credit_check_binding(servicer)],
        security=security,
        audit=None,
    )
    try:
        yield node
    finally:
        await node.stop(0)


def sample_changes(city_code: str = "320500", count: int = 8) -> list[list_sync_pb2.ListChange]:
    """``count`` changes over ``count // 2`` entries: each designated, half later removed."""
    changes = []
    entries = max(1, count // 2)
    for sequence in range(1, count + 1):
        number = (sequence - 1) % entries
        removed = sequence > entries
        entry = list_sync_pb2.ListEntry(
            entry_key=f"{city_code}/BLACK/L:9132050000000000{number:02d}/{number:016x}",
            list_type=common_pb2.LIST_TYPE_BLACK,
            issuing_city=city_code,
            subject_key=f"L:9132050000000000{number:02d}",
            status=common_pb2.LIST_ENTRY_STATUS_REMOVED
            if removed
            else common_pb2.LIST_ENTRY_STATUS_ACTIVE,
            removal_reason=common_pb2.REMOVAL_REASON_EXPIRED
            if removed
            else common_pb2.REMOVAL_REASON_UNSPECIFIED,
            version=2 if removed else 1,
        )
        changes.append(
            list_sync_pb2.ListChange(
                change_id=f"{city_code}-{sequence}",
                issuing_city=city_code,
                sequence=sequence,
                action=list_sync_pb2.LIST_CHANGE_ACTION_REMOVED
                if removed
                else list_sync_pb2.LIST_CHANGE_ACTION_DESIGNATED,
                entry=entry,
            )
        )
    return changes


def list_sync_binding(servicer: InMemoryListSync) -> ServiceBinding:
    return ServiceBinding(
        servicer,
        list_sync_pb2_grpc.add_ListSyncServiceServicer_to_server,
        "creditlink.peer.v1.ListSyncService",
    )


async def audit_node_settings(kafka_bootstrap: str) -> Settings:
    """Settings of a Suzhou node with a fresh topic prefix whose audit topic exists."""
    settings = load_settings(
        {
            "CREDITLINK_CITY": "suzhou",
            "KAFKA_BOOTSTRAP": kafka_bootstrap,
            "CREDITLINK_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:10]}.",
        }
    )
    audit_only = [spec for spec in load_catalogue() if spec.name == AUDIT_TOPIC]
    await provision(kafka_bootstrap, audit_only, prefix=settings.topic_prefix)
    return settings
