"""The serving city's decisions: who may call what, about whom, and for which purpose."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc

from services.common.audit.signing import AuditSigner, load_audit_signer
from services.common.certs import DEFAULT_OUT
from services.common.consent import (
    DAY_SECONDS,
    ConsentError,
    ConsentFailure,
    ConsentGrant,
    ConsentKeyring,
)
from services.common.consent_purposes import ConsentPurposes, load_purposes
from services.common.memo import BoundedMemo
from services.common.peer.call import Denied, PeerCall
from services.common.peer.identity import (
    PeerIdentity,
    _identities_named,
    _pem_sha256,
    _text,
)
from services.common.peer.names import (
    _MAX_KNOWN_CERTIFICATES,
)
from services.common.peer.purpose import _scenario_name
from services.common.policy import (
    NATURAL_PERSON,
    Decision,
    Policy,
    data_class_of,
    load_policy,
    subject_key_problem,
)
from services.common.pseudonym import PersonKey, parse_person_key
from services.common.region import Region
from services.common.revocations import Revocations
from services.common.roles import (
    CITY_URI_PREFIX,
    CityRoles,
    load_city_roles,
    parse_role_uri,
)
from services.common.settings import Settings

ISSUE_CONSENT = "/creditlink.peer.v1.ConsentService/IssueConsent"


@dataclass(frozen=True, slots=True)
class PeerSecurity:
    """The serving city's policy, consent keyring and purposes, and the region that names the
    cities."""

    city: str
    region: Region
    policy: Policy
    keyring: ConsentKeyring
    purposes: ConsentPurposes = field(default_factory=load_purposes)
    #: Tokens their home cities have withdrawn, kept current by the node
    #: (services/common/revocations.py).
    revocations: Revocations = field(default_factory=Revocations)
    #: Which departments act for which others (deploy/config/city-roles.yaml).
    city_roles: CityRoles = field(default_factory=CityRoles)
    #: The node's audit key (services/common/audit/signing.py): every audit writer of the
    #: node signs its chain heads with it. Required by :meth:`from_files`.
    audit_signer: AuditSigner | None = None
    # (caller, method) -> decision: the policy is fixed for the server's life.
    _decisions: dict[tuple[str, str], Decision] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _identities: BoundedMemo[bytes, PeerIdentity] = field(
        default_factory=lambda: BoundedMemo(_MAX_KNOWN_CERTIFICATES),
        init=False,
        repr=False,
        compare=False,
    )

    @classmethod
    def from_files(
        cls,
        settings: Settings,
        region: Region,
        *,
        policy_file: Path | None = None,
        keys_dir: Path = DEFAULT_OUT,
        purposes_file: Path | None = None,
        roles_file: Path | None = None,
    ) -> PeerSecurity:
        codes = {key: city.admin_code for key, city in region.cities.items()}
        return cls(
            city=settings.city,
            region=region,
            policy=load_policy(policy_file, cities=region.cities.keys()),
            keyring=ConsentKeyring.from_directory(
                keys_dir, codes, max_lifetime_seconds=settings.consent_max_days * DAY_SECONDS
            ),
            purposes=load_purposes(purposes_file),
            city_roles=load_city_roles(roles_file, cities=region.cities.keys()),
            audit_signer=load_audit_signer(
                keys_dir, settings.city, region.city(settings.city).admin_code
            ),
        )

    @property
    def city_code(self) -> str:
        return self.region.city(self.city).admin_code

    def identify(self, context: grpc.aio.ServicerContext) -> PeerIdentity:
        auth = context.auth_context()
        pems = auth.get("x509_pem_cert")
        if not pems:
            raise Denied(
                grpc.StatusCode.UNAUTHENTICATED,
                "no-client-certificate",
                "a client certificate is required",
            )
        # A peer presents the same verified certificate on every call, and the names in it
        # do not change: what it identifies is worked out once per certificate (looked up
        # by the certificate as gRPC gives it, without decoding it first).
        known = self._identities.get(pems[0])
        if known is not None:
            return known
        names = _identities_named(auth)
        if not names:
            raise Denied(
                grpc.StatusCode.UNAUTHENTICATED,
                "no-city-name",
                f"the client certificate has no {CITY_URI_PREFIX}<city> URI SAN",
            )
        if len(names) > 1:
            raise Denied(
                grpc.StatusCode.UNAUTHENTICATED,
                "several-city-names",
                f"the client certificate has more than one {CITY_URI_PREFIX}<city> URI SAN",
            )
        role = parse_role_uri(names[0])
        if role is None:
            raise Denied(
                grpc.StatusCode.UNAUTHENTICATED,
                "malformed-role",
                "the client certificate's creditlink URI SAN names no well-formed role "
                '(docs/trust.md, "Roles")',
            )
        if role.city not in self.region.cities:
            raise Denied(
                grpc.StatusCode.UNAUTHENTICATED,
                "unknown-city",
                "the client certificate names no city of the region",
            )
        identity = PeerIdentity(
            city=role.city,
            city_code=self.region.city(role.city).admin_code,
            certificate_sha256=_pem_sha256(_text(pems)[0]),
            role=role,
        )
        return self._identities.remember(pems[0], identity)

    def authorize(self, identity: PeerIdentity, method: str) -> Decision:
        principal = identity.role.principal
        decision = self._decisions.get((principal, method))
        if decision is None:
            decision = self.policy.decide(server=self.city, caller=principal, method=method)
            self._decisions[(principal, method)] = decision
        if not decision.allowed:
            raise Denied(
                grpc.StatusCode.PERMISSION_DENIED,
                "policy-denied",
                f"{principal} may not call {method}",
            )
        return decision

    def check_subject(
        self, call: PeerCall, subject_key: str, consent_token: str | None
    ) -> ConsentGrant | None:
        """Check one subject of a call: its data class and, for a person, the consent token.

        Raises :class:`Denied` (PERMISSION_DENIED; INVALID_ARGUMENT for a malformed key, see
        :func:`check_subject_key`). Servicers of batch methods call this per item and turn a
        refusal into an item error.
        """
        data_class = data_class_of(check_subject_key(subject_key))
        if call.decision is None or not call.decision.permits(data_class):
            raise Denied(
                grpc.StatusCode.PERMISSION_DENIED,
                "data-class-denied",
                f"the policy does not let this city see {data_class} data through {call.method}",
            )
        if data_class != NATURAL_PERSON:
            return None
        key_ids = self.region.pseudonym_key_ids
        person = parse_person_key(subject_key)
        if key_ids and person is not None and person.key_id not in (None, *key_ids):
            # Made under a key this region does not use: it matches nobody here, and the
            # caller should know its key is wrong rather than read "no entries".
            raise Denied(
                grpc.StatusCode.INVALID_ARGUMENT,
                "pseudonym-key-unknown",
                f"the subject key was made under pseudonym key {person.key_id}, "
                f"which the region does not use",
            )
        if call.method == ISSUE_CONSENT:
            # The call that makes a resident's consent cannot need it: the policy lets only the
            # home city's own callers make it, and the servicer checks the subject is its own.
            return None
        assert call.identity is not None  # authorize() ran first
        try:
            grant = self.keyring.verify(
                consent_token,
                audience_city=call.identity.city_code,
                subject_key=subject_key,
                home_city=self._home_of(person),
                purposes=self.purposes.covering(call.method, _scenario_name(call.request)),
            )
        except ConsentError as exc:
            raise Denied(grpc.StatusCode.PERMISSION_DENIED, exc.failure.value, str(exc)) from None
        if grant.token_id in self.revocations:
            raise Denied(
                grpc.StatusCode.PERMISSION_DENIED,
                ConsentFailure.REVOKED.value,
                "the subject's home city has withdrawn this consent",
            )
        return grant

    def check_batch_subject(
        self, call: PeerCall, subject_key: str, consent_token: str | None
    ) -> ConsentGrant | None:
        """:meth:`check_subject` for one subject of a batch call, noted on the call (with the
        consent honoured or the reason refused) for the call's audit record; a malformed key
        is not noted: it may be a raw ID number, which the audit never holds."""
        try:
            grant = self.check_subject(call, subject_key, consent_token)
        except Denied as denied:
            if subject_key_problem(subject_key) is None:
                call.answered(subject_key, None, denied.denial)
            raise
        call.answered(subject_key, grant, None)
        return grant

    def home_city(self, subject_key: str) -> str | None:
        """The code of the region city a natural person's key names as their home (the only
        city whose consent is honoured for them), or None."""
        return self._home_of(parse_person_key(subject_key))

    def _home_of(self, person: PersonKey | None) -> str | None:
        if person is None or person.division is None:
            return None
        city = self.region.by_admin_code(person.division)
        return city.admin_code if city is not None else None


def check_subject_key(subject_key: str) -> str:
    """``subject_key`` if it is well formed; else :class:`Denied` INVALID_ARGUMENT
    ``invalid-subject-key``, whose details never repeat the key (it may be a raw ID number,
    which must reach no log or topic, docs/design.md §4.8)."""
    problem = subject_key_problem(subject_key)
    if problem is not None:
        raise Denied(grpc.StatusCode.INVALID_ARGUMENT, "invalid-subject-key", problem)
    return subject_key
