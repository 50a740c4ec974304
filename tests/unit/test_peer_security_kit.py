"""Unit tests of the security kit: consent tokens, pseudonyms, the policy, certificates and the
audit chain verifier (no broker, no sockets)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from creditlink.peer.v1 import credit_check_pb2, list_sync_pb2
from services.common.audit import (
    GENESIS_HASH,
    SCHEMA,
    AuditMessage,
    chain_hash,
    format_key,
    parse_key,
    verify_chain,
)
from services.common.audit.writer import _hashed_encoding
from services.common.avro import AvroSerde
from services.common.certs import city_uri, issue_dev_certificates
from services.common.consent import ConsentError, ConsentFailure, ConsentIssuer, ConsentKeyring
from services.common.consent_purposes import load_purposes
from services.common.peer import DENIAL_TRAILER, Denied, PeerCall, deny
from services.common.peer import purpose as grpc_server
from services.common.peer.call import Refused, _current_call
from services.common.peer.guard import _audit_entry
from services.common.policy import (
    DEFAULT_POLICY_FILE,
    PolicyError,
    data_class_of,
    is_valid_subject_key,
    load_policy,
    parse_policy,
    subject_key_problem,
)
from services.common.pseudonym import (
    DEV_REGION_KEY,
    InvalidResidentId,
    PseudonymKeyError,
    key_id_of,
    load_region_key,
    parse_person_key,
    person_subject_key,
    pseudonym,
)
from tests.peer_kit import (
    CODES,
    OTHER_PERSON,
    PERSON,
    REGION,
    TEST_POLICY,
    WUXI_PERSON,
    make_security,
)

SUZHOU, WUXI, CHANGZHOU = CODES["suzhou"], CODES["wuxi"], CODES["changzhou"]
NOW = 1_760_000_000

# --- consent tokens -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def issuer() -> ConsentIssuer:
    return ConsentIssuer(SUZHOU, Ed25519PrivateKey.generate())


@pytest.fixture(scope="module")
def keyring(issuer: ConsentIssuer) -> ConsentKeyring:
    return ConsentKeyring({SUZHOU: issuer.private_key.public_key()})


def _failure(keyring: ConsentKeyring, token: str | None, **overrides: Any) -> ConsentFailure:
    args: dict[str, Any] = {
        "audience_city": WUXI,
        "subject_key": PERSON,
        "home_city": SUZHOU,
        "purposes": {"credit-history"},
        "now": NOW,
    } | overrides
    with pytest.raises(ConsentError) as refused:
        keyring.verify(token, **args)
    return refused.value.failure


def test_valid_token_grants_its_claims(issuer: ConsentIssuer, keyring: ConsentKeyring) -> None:
    token = issuer.issue(
        subject_key=PERSON,
        audience_city=WUXI,
        lifetime_seconds=3600,
        purpose="credit-check.financing",
        now=NOW,
    )
    grant = keyring.verify(
        token,
        audience_city=WUXI,
        subject_key=PERSON,
        home_city=SUZHOU,
        purposes={"credit-check.financing"},
        now=NOW + 10,
    )
    assert (grant.issuer_city, grant.audience_city, grant.subject_key, grant.purpose) == (
        SUZHOU,
        WUXI,
        PERSON,
        "credit-check.financing",
    )
    assert grant.expires_at == NOW + 3600
    assert len(grant.token_id) == 32


def test_each_failure_has_its_own_reason(issuer: ConsentIssuer, keyring: ConsentKeyring) -> None:
    def token(**overrides: Any) -> str:
        args: dict[str, Any] = {
            "subject_key": PERSON,
            "audience_city": WUXI,
            "lifetime_seconds": 600,
            "purpose": "credit-history",
            "now": NOW,
        } | overrides
        return issuer.issue(**args)

    assert _failure(keyring, None) is ConsentFailure.MISSING
    assert _failure(keyring, "") is ConsentFailure.MISSING
    assert _failure(keyring, "clc1.x") is ConsentFailure.MALFORMED
    assert _failure(keyring, "clc1.!!!.???") is ConsentFailure.MALFORMED
    assert _failure(keyring, token(), now=NOW + 600 + 61) is ConsentFailure.EXPIRED
    assert _failure(keyring, token(now=NOW + 3600)) is ConsentFailure.NOT_YET_VALID
    assert _failure(keyring, token(audience_city=CHANGZHOU)) is ConsentFailure.WRONG_CITY
    assert _failure(keyring, token(subject_key=OTHER_PERSON)) is ConsentFailure.WRONG_SUBJECT
    too_long = token(lifetime_seconds=31 * 86400)
    assert _failure(keyring, too_long) is ConsentFailure.LIFETIME_TOO_LONG
    assert _failure(keyring, token(purpose="anything")) is ConsentFailure.WRONG_PURPOSE
    assert _failure(keyring, token(), home_city=None) is ConsentFailure.NO_HOME_CITY
    stranger = ConsentIssuer(SUZHOU, Ed25519PrivateKey.generate())
    forged = stranger.issue(
        subject_key=PERSON, audience_city=WUXI, lifetime_seconds=60, purpose="x", now=NOW
    )
    assert _failure(keyring, forged) is ConsentFailure.UNKNOWN_ISSUER


def test_a_token_with_altered_claims_fails_its_signature(
    issuer: ConsentIssuer, keyring: ConsentKeyring
) -> None:
    import base64
    import json

    good = issuer.issue(
        subject_key=PERSON,
        audience_city=CHANGZHOU,
        lifetime_seconds=600,
        purpose="credit-history",
        now=NOW,
    )
    head, body, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["aud"] = WUXI  # redirect the consent to another city
    altered = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert _failure(keyring, f"{head}.{altered}.{signature}") is ConsentFailure.BAD_SIGNATURE


def test_issuer_claim_must_match_the_signing_key(keyring: ConsentKeyring) -> None:
    # Suzhou's key registered, but a token claiming Wuxi as issuer signed with... Suzhou's key
    # would need Suzhou's private key; a kid of Suzhou's with iss=Wuxi is refused outright.
    impostor = ConsentIssuer(WUXI, Ed25519PrivateKey.generate())
    ring = ConsentKeyring({SUZHOU: impostor.private_key.public_key()})
    token = impostor.issue(
        subject_key=PERSON, audience_city=WUXI, lifetime_seconds=60, purpose="x", now=NOW
    )
    assert _failure(ring, token) is ConsentFailure.UNKNOWN_ISSUER


@given(st.text(max_size=300))
def test_arbitrary_strings_never_crash_verification(text: str) -> None:
    ring = ConsentKeyring({SUZHOU: Ed25519PrivateKey.generate().public_key()})
    with pytest.raises(ConsentError):
        ring.verify(
            text,
            audience_city=WUXI,
            subject_key=PERSON,
            home_city=SUZHOU,
            purposes={"credit-history"},
            now=NOW,
        )


# --- pseudonyms ---------------------------------------------------------------------------

RESIDENT_ID = "11010519491231002X"  # the GB 11643 standard's worked example


def test_pseudonym_is_keyed_hmac_of_the_normalised_number() -> None:
    import hashlib
    import hmac

    digest = hmac.new(DEV_REGION_KEY, RESIDENT_ID.encode(), hashlib.sha256).hexdigest()
    key_id = hashlib.sha256(DEV_REGION_KEY).hexdigest()[:8]
    expected = f"110105.{key_id}.{digest}"
    assert pseudonym(RESIDENT_ID, DEV_REGION_KEY) == expected
    assert pseudonym(" 11010519491231002x ", DEV_REGION_KEY) == expected
    assert pseudonym("１１０１０５１９４９１２３１００２Ｘ", DEV_REGION_KEY) == expected
    assert pseudonym(RESIDENT_ID, b"k" * 32) != expected
    key = person_subject_key(RESIDENT_ID, DEV_REGION_KEY)
    assert is_valid_subject_key(key)
    assert key == "N:" + expected


def test_invalid_numbers_are_not_pseudonymised_and_not_echoed() -> None:
    with pytest.raises(InvalidResidentId) as refused:
        pseudonym("110105194912310021", DEV_REGION_KEY)
    assert "110105" not in str(refused.value)


def test_region_key_comes_from_the_environment(tmp_path: Path) -> None:
    key = bytes(range(32))
    assert load_region_key({"CREDITLINK_PSEUDONYM_KEY": key.hex()}) == key
    key_file = tmp_path / "region.key"
    key_file.write_text(key.hex() + "\n")
    assert load_region_key({"CREDITLINK_PSEUDONYM_KEY_FILE": str(key_file)}) == key
    assert load_region_key({"CREDITLINK_DEV": "1"}) == DEV_REGION_KEY
    with pytest.raises(PseudonymKeyError, match="CREDITLINK_PSEUDONYM_KEY"):
        load_region_key({})
    with pytest.raises(PseudonymKeyError, match="at least 32"):
        load_region_key({"CREDITLINK_PSEUDONYM_KEY": "00" * 8})


# --- policy -------------------------------------------------------------------------------

CITIES = REGION.cities.keys()
CHECK = "/creditlink.peer.v1.CreditCheckService/CheckSubject"
BATCH = "/creditlink.peer.v1.CreditCheckService/CheckSubjects"


def test_policy_denies_by_default_and_grants_per_method_and_class() -> None:
    policy = parse_policy(TEST_POLICY, source="test", cities=CITIES)
    wuxi = policy.decide(server="suzhou", caller="wuxi", method=BATCH)
    assert wuxi.permits("organisation")
    assert wuxi.permits("natural_person")
    changzhou = policy.decide(server="suzhou", caller="changzhou", method=CHECK)
    assert changzhou.permits("organisation")
    assert not changzhou.permits("natural_person")
    assert not policy.decide(server="suzhou", caller="changzhou", method=BATCH).allowed
    assert not policy.decide(server="suzhou", caller="jiashan", method=CHECK).allowed
    assert not policy.decide(
        server="suzhou", caller="wuxi", method="/creditlink.peer.v1.ListSyncService/ListEntries"
    ).allowed


def test_self_and_servers_scope_rules() -> None:
    raw = {
        "version": 1,
        "data_classes": {"organisation": "orgs"},
        "rules": [
            {
                "callers": ["self"],
                "methods": ["/creditlink.peer.v1.RecordIntakeService/*"],
                "data_classes": ["organisation"],
            },
            {
                "servers": ["wuxi"],
                "callers": ["suzhou"],
                "methods": [CHECK],
                "data_classes": ["organisation"],
            },
        ],
    }
    policy = parse_policy(raw, source="test", cities=CITIES)
    intake = "/creditlink.peer.v1.RecordIntakeService/SubmitRecords"
    assert policy.decide(server="suzhou", caller="suzhou", method=intake).allowed
    assert not policy.decide(server="suzhou", caller="wuxi", method=intake).allowed
    # "self" is the node; "self/<role>" a role of the serving city, never of another.
    assert not policy.decide(server="suzhou", caller="suzhou/department", method=intake).allowed
    roles = parse_policy(
        {**raw, "rules": [{**raw["rules"][0], "callers": ["self/department"]}]},
        source="test",
        cities=CITIES,
    )
    assert roles.decide(server="suzhou", caller="suzhou/department", method=intake).allowed
    assert not roles.decide(server="suzhou", caller="wuxi/department", method=intake).allowed
    assert not roles.decide(server="suzhou", caller="suzhou", method=intake).allowed
    with pytest.raises(PolicyError, match="unknown caller"):
        parse_policy(
            {**raw, "rules": [{**raw["rules"][0], "callers": ["self/mayor"]}]},
            source="test",
            cities=CITIES,
        )
    assert policy.decide(server="wuxi", caller="suzhou", method=CHECK).allowed
    assert not policy.decide(server="changzhou", caller="suzhou", method=CHECK).allowed


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"callers": ["gotham"]}, "unknown caller"),
        ({"data_classes": ["secrets"]}, "unknown data class"),
        ({"methods": ["CheckSubject"]}, "is not '/package.Service/Method'"),
        ({"callers": []}, "non-empty list"),
    ],
)
def test_malformed_policy_refuses_to_load(rule: dict[str, Any], message: str) -> None:
    base = {"callers": ["wuxi"], "methods": [CHECK], "data_classes": ["organisation"]} | rule
    raw = {"version": 1, "data_classes": {"organisation": "orgs"}, "rules": [base]}
    with pytest.raises(PolicyError, match=message):
        parse_policy(raw, source="test", cities=CITIES)


def test_deployed_policy_lets_only_the_serving_city_follow_its_alerts() -> None:
    policy = load_policy(DEFAULT_POLICY_FILE, cities=CITIES)
    alerts = "/creditlink.peer.v1.AlertExchangeService/"
    for server in ("suzhou", "wuxi", "changzhou"):
        for caller in ("suzhou", "wuxi", "changzhou"):
            for role in ("", "/regulator", "/department"):
                subscribe = policy.decide(
                    server=server, caller=caller + role, method=alerts + "SubscribeAlerts"
                )
                # Only the serving city's regulators: not its node, not its departments.
                expected = caller == server and role == "/regulator"
                assert subscribe.allowed is expected, (server, caller, role)
            # Deliveries from the origin and the target's status relay back to it.
            for method in ("DeliverAlerts", "UpdateAlertStatus"):
                assert policy.decide(server=server, caller=caller, method=alerts + method).allowed


def test_deployed_policy_loads_and_keeps_intake_internal() -> None:
    policy = load_policy(DEFAULT_POLICY_FILE, cities=CITIES)
    intake = "/creditlink.peer.v1.RecordIntakeService/SubmitRecords"
    assert policy.decide(server="suzhou", caller="suzhou/department", method=intake).allowed
    # Not the city's node certificate, not its regulators, not another city's departments.
    assert not policy.decide(server="suzhou", caller="suzhou", method=intake).allowed
    assert not policy.decide(server="suzhou", caller="suzhou/regulator", method=intake).allowed
    assert not policy.decide(server="suzhou", caller="wuxi/department", method=intake).allowed
    assert not policy.decide(server="suzhou", caller="wuxi", method=intake).allowed
    scale = "/creditlink.peer.v1.ScoreRecognitionService/GetScoreScale"
    assert policy.decide(server="suzhou", caller="wuxi", method=scale).data_classes == {"aggregate"}
    assert not policy.decide(server="suzhou", caller="jiashan", method=CHECK).allowed
    # Every rule names methods that exist in the contracts.
    from creditlink.peer.v1 import (
        alert_exchange_pb2,
        audit_evidence_pb2,
        consent_pb2,
        credit_check_pb2,
        list_sync_pb2,
        record_intake_pb2,
        score_recognition_pb2,
    )

    services = [
        service
        for module in (
            alert_exchange_pb2,
            audit_evidence_pb2,
            consent_pb2,
            credit_check_pb2,
            list_sync_pb2,
            record_intake_pb2,
            score_recognition_pb2,
        )
        for service in module.DESCRIPTOR.services_by_name.values()
    ]
    known = {f"/{s.full_name}/{m.name}" for s in services for m in s.methods}
    known |= {f"/{s.full_name}/*" for s in services}
    raw = yaml.safe_load(DEFAULT_POLICY_FILE.read_text(encoding="utf-8"))
    for rule in raw["rules"]:
        assert set(rule["methods"]) <= known, rule["methods"]


def test_data_class_of_subject_keys() -> None:
    assert data_class_of("L:91320500MA1W8XY409") == "organisation"
    assert data_class_of(PERSON) == "natural_person"
    assert data_class_of("320500199001011234") is None


RESIDENT = "32050519900307123X"  # a valid GB 11643 number (check character X)
HMAC = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    "key",
    [
        "L:91320500MA1W8XY409",
        "L:91320500MA1W8XY408",  # an early pilot code: its check character fails, still legal
        "L:913205001234567890",
        "N:" + HMAC,
        "N:320500." + "0a1b2c3d." + HMAC,  # home division, key id, HMAC
    ],
)
def test_well_formed_subject_keys_have_no_problem(key: str) -> None:
    assert subject_key_problem(key) is None
    assert is_valid_subject_key(key)


@pytest.mark.parametrize(
    "key",
    [
        RESIDENT,
        "X:" + RESIDENT,
        "N:" + RESIDENT,
        "L:" + RESIDENT,  # the shape of a code, but a valid resident ID number
        "L:" + RESIDENT.lower(),
        "L:３２０５０５１９９００３０７１２３Ｘ",
        "N: " + HMAC,
        "N:" + HMAC.upper(),
        "N:" + HMAC + "0",
        "N:" + HMAC[:-1],
        "N:320500." + "0A1B2C3D." + HMAC,
        "N:32050." + "0a1b2c3d." + HMAC,
        "N:320500." + "0a1b2c3d." + HMAC + "\n",
        "L:91320500MA1W8XY40",
        "L:91320500MA1W8XY4090",
        "L:91320500MA1W8XYI09",  # I is not in the GB 32100 alphabet
        "L:91320500ma1w8xy409",
        "l:91320500MA1W8XY409",
        "N:" + "0" * 10_000,
        "",
    ],
)
def test_malformed_subject_keys_are_named_without_being_repeated(key: str) -> None:
    problem = subject_key_problem(key)
    assert problem is not None
    assert RESIDENT[6:14] not in problem
    assert not is_valid_subject_key(key)


# --- certificates -------------------------------------------------------------------------


def test_dev_certificates_name_the_city_and_are_idempotent(tmp_path: Path) -> None:
    first = issue_dev_certificates(tmp_path, ["suzhou", "wuxi"])
    assert all(line.startswith("issued") for line in first)
    cert = x509.load_pem_x509_certificate((tmp_path / "wuxi.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [city_uri("wuxi")]
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "wuxi"
    assert (tmp_path / "wuxi.key").stat().st_mode & 0o077 == 0
    before = (tmp_path / "wuxi.crt").read_bytes()
    second = issue_dev_certificates(tmp_path, ["suzhou", "wuxi"])
    assert all(line.startswith("kept") for line in second)
    assert (tmp_path / "wuxi.crt").read_bytes() == before
    # A new CA invalidates every city certificate.
    (tmp_path / "ca.crt").unlink()
    third = issue_dev_certificates(tmp_path, ["suzhou", "wuxi"])
    assert [line.split()[0] for line in third[:2]] == ["issued", "issued"]


# --- the audit chain ----------------------------------------------------------------------

SERDE = AvroSerde()


def _record(seq: int, prev_hash: str, **overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "seq": seq,
        "node_city": SUZHOU,
        "direction": "INBOUND",
        "caller_city": WUXI,
        "callee_city": SUZHOU,
        "method": CHECK,
        "subject_key": "L:91320500MA1W8XY409",
        "purpose": "TENDERING",
        "consent_reference": None,
        "status_code": "OK",
        "denial_code": None,
        "latency_ms": 3,
        "trace_id": None,
        "peer_certificate_sha256": None,
        "at": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        "prev_hash": prev_hash,
        "hash": "",
    } | overrides
    record["hash"] = chain_hash(SERDE, record)
    return record


def _chain(length: int, chain: str | None = None, start_offset: int = 0) -> list[AuditMessage]:
    messages = []
    previous = GENESIS_HASH
    for seq in range(1, length + 1):
        record = _record(seq, previous, latency_ms=seq)
        previous = record["hash"]
        messages.append(
            AuditMessage(
                offset=start_offset + seq - 1,
                key=format_key(chain, seq),
                value=SERDE.encode(SCHEMA, record),
            )
        )
    return messages


def _decode(message: AuditMessage) -> dict[str, Any]:
    return SERDE.decode(message.value)


def _replace(message: AuditMessage, record: dict[str, Any]) -> AuditMessage:
    return dataclasses.replace(message, value=SERDE.encode(SCHEMA, record))


def _renumber(messages: list[AuditMessage]) -> list[AuditMessage]:
    """Offsets as the broker would assign them to the tampered copy."""
    return [dataclasses.replace(m, offset=i) for i, m in enumerate(messages)]


@pytest.mark.parametrize("seq", [1, 2, 300, 2**40])
def test_single_encoding_with_the_hash_equals_encoding_the_finished_record(seq: int) -> None:
    record = _record(seq, GENESIS_HASH if seq == 1 else "ab" * 32, purpose="审计 " * (seq % 7))
    record["hash"] = ""
    digest, value = _hashed_encoding(SERDE, record)
    assert digest == chain_hash(SERDE, record)
    assert value == SERDE.encode(SCHEMA, {**record, "hash": digest})


def test_intact_chain_verifies() -> None:
    report = verify_chain(_chain(6))
    assert report.ok
    assert report.chains[None].records == 6


def test_changed_record_is_named() -> None:
    messages = _chain(6)
    record = _decode(messages[3]) | {"status_code": "PERMISSION_DENIED"}
    messages[3] = _replace(messages[3], record)
    report = verify_chain(messages)
    assert [(p.kind, p.seq, p.offset) for p in report.problems] == [("changed", 4, 3)]
    assert "seq 4 at offset 3" in str(report.problems[0])


def test_changed_record_with_recomputed_hash_is_named_by_the_broken_link() -> None:
    messages = _chain(6)
    forged = _record(4, _decode(messages[3])["prev_hash"], latency_ms=4, caller_city=CHANGZHOU)
    messages[3] = _replace(messages[3], forged)
    report = verify_chain(messages)
    assert [(p.kind, p.seq, p.offset) for p in report.problems] == [("changed", 4, 3)]
    assert "prev_hash of seq 5" in report.problems[0].detail


def test_removed_record_is_named() -> None:
    messages = _renumber([m for m in _chain(6) if parse_key(m.key)[1] != 3])
    report = verify_chain(messages)
    assert [(p.kind, p.seq, p.offset) for p in report.problems] == [("removed", 4, 2)]
    assert "seq 3 missing" in report.problems[0].detail


def test_removed_first_record_is_named() -> None:
    report = verify_chain(_renumber(_chain(4)[1:]))
    assert [(p.kind, p.detail) for p in report.problems] == [
        ("removed", "seq 1 missing between the start and this record")
    ]


def test_reordered_records_are_named() -> None:
    messages = _chain(6)
    messages[2], messages[3] = messages[3], messages[2]
    report = verify_chain(_renumber(messages))
    assert [(p.kind, p.seq, p.offset) for p in report.problems] == [("reordered", 3, 3)]
    assert "comes after seq 4 (offset 2)" in report.problems[0].detail


def test_duplicated_record_is_named() -> None:
    messages = _chain(4)
    report = verify_chain(_renumber([*messages, messages[1]]))
    assert [(p.kind, p.seq, p.offset) for p in report.problems] == [("duplicated", 2, 4)]


def test_key_must_carry_the_seq() -> None:
    messages = _chain(3)
    messages[1] = dataclasses.replace(messages[1], key="7")
    report = verify_chain(messages)
    assert [(p.kind, p.seq) for p in report.problems] == [("bad-key", 2)]


def test_garbage_is_reported_not_raised() -> None:
    messages = [*_chain(2), AuditMessage(offset=2, key="3", value=b"not avro")]
    report = verify_chain(messages)
    assert [(p.kind, p.offset) for p in report.problems] == [("undecodable", 2)]


def test_interleaved_chains_verify_independently() -> None:
    lists = _chain(3, "lists")
    alerts = _chain(3, "alerts")
    interleaved = _renumber([m for pair in zip(lists, alerts, strict=True) for m in pair])
    assert verify_chain(interleaved).ok
    tampered = [m for m in interleaved if m.key != "alerts:2"]
    report = verify_chain(_renumber(tampered))
    assert [(p.kind, p.chain, p.seq) for p in report.problems] == [("removed", "alerts", 3)]


def _versioned_chain(versions: list[int], **overrides: Any) -> list[AuditMessage]:
    """A chain whose record ``n`` is written with schema version ``versions[n]``, as a node
    upgraded midway writes it: v1 records have no ``denial_code``, v2 records carry
    ``overrides``."""
    messages = []
    previous = GENESIS_HASH
    for seq, version in enumerate(versions, start=1):
        record = _record(seq, previous, latency_ms=seq)
        if version == 1:
            del record["denial_code"]
        else:
            record |= overrides
        record["hash"] = chain_hash(SERDE, record, version)
        previous = record["hash"]
        value = SERDE.encode(SCHEMA, record, version)
        messages.append(AuditMessage(offset=seq - 1, key=format_key(None, seq), value=value))
    return messages


def test_a_chain_written_with_v1_then_v2_verifies() -> None:
    """Each record is hashed under its own writer schema, so upgrading the writer neither
    breaks the chain nor rewrites what was written before."""
    messages = _versioned_chain(
        [1, 1, 2, 2], status_code="PERMISSION_DENIED", denial_code="policy-denied"
    )
    assert [SERDE.writer_of(m.value).version for m in messages] == [1, 1, 2, 2]
    report = verify_chain(messages)
    assert report.ok, [str(p) for p in report.problems]
    assert [_decode(m)["denial_code"] for m in messages] == [None, None, *["policy-denied"] * 2]


def test_a_changed_denial_code_is_named() -> None:
    messages = _versioned_chain([1, 2, 2], status_code="NOT_FOUND", denial_code="unknown-alert")
    record = _decode(messages[1]) | {"denial_code": "origin-refused"}
    messages[1] = _replace(messages[1], record)
    report = verify_chain(messages)
    assert [(p.kind, p.seq) for p in report.problems] == [("changed", 2)]


def test_readers_of_either_version_read_records_of_either_version() -> None:
    """FULL_TRANSITIVE (schemas/topics.yaml): the audit topic is read from the beginning by
    readers of every age."""
    v1_record, v2_record = _versioned_chain([1, 2], denial_code="consent-missing")
    v1 = SERDE.store.version(SCHEMA, 1)
    assert SERDE.decode(v1_record.value)["denial_code"] is None
    assert SERDE.decode(v2_record.value)["denial_code"] == "consent-missing"
    old_reader = SERDE.decode(v2_record.value, reader=v1)
    assert "denial_code" not in old_reader
    assert old_reader["hash"] == _decode(v2_record)["hash"]


class _Aborted(Exception):
    """What ``context.abort`` raises in grpc.aio (``AbortError``), in these tests."""


class _AbortingContext:
    def __init__(self) -> None:
        self.trailers: tuple[tuple[str, str], ...] = ()

    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: Any = ()) -> None:
        self.trailers = tuple(trailing_metadata)
        raise _Aborted(details)


@pytest.mark.parametrize("refused_by", ["servicer", "guard"])
async def test_the_audit_entry_carries_the_denial_code_of_the_refusal(refused_by: str) -> None:
    context = _AbortingContext()
    servicer_context = cast(grpc.aio.ServicerContext, context)
    refusal = Denied(grpc.StatusCode.INVALID_ARGUMENT, "unknown-scenario", "no scenario X")
    call = PeerCall(method=CHECK, started=0.0)
    token = _current_call.set(call)
    try:
        refused = (
            deny(servicer_context, refusal.code, refusal.denial, refusal.details)
            if refused_by == "servicer"
            else refusal.abort(servicer_context)
        )
        # Behind the guard the refusal goes to the guard, which sends it once recorded.
        with pytest.raises(Refused) as raised:
            await refused
    finally:
        _current_call.reset(token)
    assert context.trailers == ()
    assert raised.value.denied.denial == "unknown-scenario"
    # Outside a guarded call, deny sends the refusal itself.
    with pytest.raises(_Aborted):
        await deny(servicer_context, refusal.code, refusal.denial, refusal.details)
    assert context.trailers == ((DENIAL_TRAILER, "unknown-scenario"),)
    at = datetime(2025, 1, 2, tzinfo=UTC)
    entry = _audit_entry(call, grpc.StatusCode.INVALID_ARGUMENT, 0.002, at, SUZHOU)
    assert (entry.status_code, entry.denial_code) == ("INVALID_ARGUMENT", "unknown-scenario")
    answered = _audit_entry(
        PeerCall(method=CHECK, started=0.0), grpc.StatusCode.OK, 0.0, at, SUZHOU
    )
    assert answered.denial_code is None
    # A call that failed without being refused (a servicer's bug) carries no denial code.
    failed = _audit_entry(
        PeerCall(method=CHECK, started=0.0), grpc.StatusCode.UNKNOWN, 0.0, at, SUZHOU
    )
    assert failed.denial_code is None


# --- the purpose an audit record states ---------------------------------------------------

CHECK_METHOD = "/creditlink.peer.v1.CreditCheckService/CheckSubject"
SYNC_METHOD = "/creditlink.peer.v1.ListSyncService/StreamListChanges"
DECLARED = grpc_server.PURPOSE_METADATA


@pytest.mark.parametrize(
    ("request_", "metadata", "method", "expected"),
    [
        (
            credit_check_pb2.CheckSubjectRequest(
                scenario=credit_check_pb2.SCENARIO_TENDERING, purpose=" WXZB-1 "
            ),
            (),
            CHECK_METHOD,
            "TENDERING: WXZB-1",
        ),
        (credit_check_pb2.CheckSubjectRequest(purpose="bench"), (), CHECK_METHOD, "bench"),
        # An enum number this build does not know names nothing: the declared purpose counts.
        (
            credit_check_pb2.CheckSubjectRequest(scenario=77),
            ((DECLARED, " 贷款审批 "),),
            CHECK_METHOD,
            "贷款审批",
        ),
        (credit_check_pb2.CheckSubjectRequest(), ((DECLARED, "  "),), CHECK_METHOD, "CREDIT_CHECK"),
        (list_sync_pb2.StreamListChangesRequest(), (), SYNC_METHOD, "LIST_SYNC"),
        (
            credit_check_pb2.CheckSubjectRequest(purpose="核查 320102199001011234 的记录"),
            (),
            CHECK_METHOD,
            "核查 320102************ 的记录",
        ),
    ],
)
def test_purpose_is_the_same_whether_worked_out_or_remembered(
    request_: Any, metadata: tuple[tuple[str, str], ...], method: str, expected: str
) -> None:
    grpc_server._PURPOSES.clear()
    first = grpc_server._purpose(request_, metadata, method)
    assert grpc_server._PURPOSES  # remembered ...
    assert grpc_server._purpose(request_, metadata, method) == first == expected  # ... alike


def test_long_purposes_are_worked_out_but_not_remembered() -> None:
    grpc_server._PURPOSES.clear()
    long_text = "x" * (grpc_server._REMEMBERED_PURPOSE_CHARS + 1)
    request_ = credit_check_pb2.CheckSubjectRequest(purpose=long_text)
    purpose = grpc_server._purpose(request_, (), CHECK_METHOD)
    assert purpose == long_text[: grpc_server._MAX_PURPOSE_CHARS]
    assert not grpc_server._PURPOSES
    for n in range(grpc_server._REMEMBERED_PURPOSES + 5):
        grpc_server._purpose(
            credit_check_pb2.CheckSubjectRequest(purpose=f"p{n}"), (), CHECK_METHOD
        )
    assert len(grpc_server._PURPOSES) <= grpc_server._REMEMBERED_PURPOSES


# --- who may consent, and for what ----------------------------------------------------------


def test_a_city_cannot_consent_for_another_citys_resident(
    issuer: ConsentIssuer, keyring: ConsentKeyring
) -> None:
    """Wuxi's own, genuine consent key, a Suzhou resident, Wuxi as the audience: refused,
    because only Suzhou (the division in the key) may consent for its resident."""
    wuxi = ConsentIssuer(WUXI, Ed25519PrivateKey.generate())
    ring = ConsentKeyring(
        {SUZHOU: issuer.private_key.public_key(), WUXI: wuxi.private_key.public_key()}
    )
    security = make_security(ring)
    assert security.home_city(PERSON) == SUZHOU
    assert security.home_city(WUXI_PERSON) == WUXI
    assert security.home_city("N:" + "ab" * 32) is None  # a key that names no division
    assert security.home_city("N:110105.0123abcd." + "ab" * 32) is None  # outside the region
    self_issued = wuxi.issue(
        subject_key=PERSON, audience_city=WUXI, lifetime_seconds=600, purpose="credit-history"
    )
    assert _failure(ring, self_issued, now=None) is ConsentFailure.WRONG_ISSUER
    own_resident = wuxi.issue(
        subject_key=WUXI_PERSON, audience_city=WUXI, lifetime_seconds=600, purpose="credit-history"
    )
    grant = ring.verify(
        own_resident,
        audience_city=WUXI,
        subject_key=WUXI_PERSON,
        home_city=security.home_city(WUXI_PERSON),
        purposes={"credit-history"},
    )
    assert grant.issuer_city == WUXI


def test_the_lifetime_cap_is_configurable_within_the_ceiling(issuer: ConsentIssuer) -> None:
    week = ConsentKeyring({SUZHOU: issuer.private_key.public_key()}, max_lifetime_seconds=7 * 86400)
    eight_days = issuer.issue(
        subject_key=PERSON,
        audience_city=WUXI,
        lifetime_seconds=8 * 86400,
        purpose="credit-history",
        now=NOW,
    )
    assert _failure(week, eight_days) is ConsentFailure.LIFETIME_TOO_LONG
    with pytest.raises(ValueError, match="lifetime cap"):
        ConsentKeyring(max_lifetime_seconds=400 * 86400)


def test_every_purpose_names_real_methods_and_scenarios() -> None:
    from creditlink.peer.v1 import score_recognition_pb2

    purposes = load_purposes()
    files = (credit_check_pb2, score_recognition_pb2)
    methods = {
        f"/{service.full_name}/{method.name}"
        for module in files
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    scenarios = set(credit_check_pb2.Scenario.keys())
    for code in purposes.codes():
        purpose = purposes[code]
        assert purpose.methods <= methods, code
        assert purpose.scenarios is None or purpose.scenarios <= scenarios, code
    check = "/creditlink.peer.v1.CreditCheckService/CheckSubject"
    assert purposes.covering(check, "SCENARIO_CIVIL_SERVICE_HIRING") == {
        "credit-check.civil-service-hiring"
    }
    assert purposes.covering(check, "SCENARIO_UNSPECIFIED") == {"credit-history"}
    recognize = "/creditlink.peer.v1.ScoreRecognitionService/RecognizeScore"
    assert purposes.covering(recognize, None) == {"score-recognition"}


def test_pseudonym_parts_are_parsed_and_malformed_keys_refused() -> None:
    key = person_subject_key(RESIDENT_ID, DEV_REGION_KEY)
    parts = parse_person_key(key)
    assert parts is not None
    assert (parts.division, parts.key_id) == ("110105", key_id_of(DEV_REGION_KEY))
    for bad in (
        "N:" + RESIDENT_ID,
        "N:110105." + "ab" * 32,
        "N:11010x.0123abcd." + "ab" * 32,
        "N:110105.0123ABCD." + "ab" * 32,
        "N:110105.0123abcd." + "ab" * 31,
        "X:" + RESIDENT_ID,
    ):
        assert parse_person_key(bad) is None, bad
        assert not is_valid_subject_key(bad), bad


def test_a_key_made_under_another_pseudonym_key_is_found_out() -> None:
    from services.common.pseudonym import PseudonymKeyError, check_region_key

    assert REGION.pseudonym_key_ids == (key_id_of(DEV_REGION_KEY),)
    check_region_key(DEV_REGION_KEY, REGION.pseudonym_key_ids)
    with pytest.raises(PseudonymKeyError, match="not one the region uses"):
        check_region_key(b"k" * 32, REGION.pseudonym_key_ids)
    check_region_key(b"k" * 32, ())  # a region that states no ids checks nothing


def test_the_operator_reads_the_key_id_never_the_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from deploy.ops import main as ops_main

    monkeypatch.setenv("CREDITLINK_PSEUDONYM_KEY", (b"k" * 32).hex())
    assert ops_main(["pseudonym-key-id"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == key_id_of(b"k" * 32)
    assert (b"k" * 32).hex() not in out
