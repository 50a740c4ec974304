"""``ConsentService``: the city's consent service, served by its lists node.

It issues tokens only for the city's own residents (the division in the subject key names the
city: docs/trust.md), revokes tokens the city signed, and streams the city's revocations to
its peers. The lists node hosts it because lists answers most consent-bearing calls
(``CheckSubject``) and already follows every peer; who may call which method is the peer
policy's (``deploy/config/peer-policy.yaml``: issuing and revoking for the city itself,
revocations for every connected city).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc

from creditlink.peer.v1 import consent_pb2, consent_pb2_grpc
from services.common.consent import ConsentError, ConsentIssuer
from services.common.kafka import EventPublisher
from services.common.peer import PeerSecurity, deny
from services.common.policy import subject_key_problem
from services.common.revocations import Revocation, Revocations, publish_revocation
from services.lists.convert import timestamp


def _proto(revocation: Revocation) -> consent_pb2.ConsentRevocation:
    return consent_pb2.ConsentRevocation(
        token_id=revocation.token_id,
        issuer_city=revocation.issuer_city,
        revoked_at=timestamp(revocation.revoked_at),
        expires_at=timestamp(revocation.expires_at),
    )


class ConsentServicer(consent_pb2_grpc.ConsentServiceServicer):
    def __init__(
        self,
        *,
        city_code: str,
        issuer: ConsentIssuer | None,
        security: PeerSecurity,
        revocations: Revocations,
        publisher: EventPublisher,
        follow_max_age: float,
    ) -> None:
        self._city = city_code
        self._issuer = issuer
        self._security = security
        self._revocations = revocations
        self._publisher = publisher
        self._follow_max_age = follow_max_age

    async def IssueConsent(
        self, request: consent_pb2.IssueConsentRequest, context: grpc.aio.ServicerContext
    ) -> consent_pb2.IssueConsentResponse:
        if self._issuer is None:
            await deny(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                "no-consent-key",
                "this node holds no consent signing key",
            )
        assert self._issuer is not None
        security = self._security
        problem = subject_key_problem(request.subject_key)
        if problem is not None or not request.subject_key.startswith("N:"):
            await deny(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "invalid-subject-key",
                problem or "consent is for natural persons (N: keys)",
            )
        if security.home_city(request.subject_key) != self._city:
            await deny(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "not-a-resident",
                f"only the subject's home city may consent; that is not {self._city}",
            )
        if not any(c.admin_code == request.audience_city for c in security.region.cities.values()):
            await deny(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "unknown-city",
                "audience_city is not a city of the region",
            )
        if request.purpose not in security.purposes:
            await deny(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "unknown-purpose",
                f"purpose must be one of {', '.join(security.purposes.codes())}",
            )
        cap = security.keyring.max_lifetime_seconds
        if not 0 < request.lifetime_seconds <= cap:
            await deny(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "invalid-lifetime",
                f"lifetime_seconds must be 1..{cap}",
            )
        now, token_id = int(time.time()), secrets.token_hex(16)
        token = self._issuer.issue(
            subject_key=request.subject_key,
            audience_city=request.audience_city,
            lifetime_seconds=request.lifetime_seconds,
            purpose=request.purpose,
            now=now,
            token_id=token_id,
        )
        expires_at = datetime.fromtimestamp(now + request.lifetime_seconds, UTC)
        return consent_pb2.IssueConsentResponse(
            token=token, token_id=token_id, expires_at=timestamp(expires_at)
        )

    async def RevokeConsent(
        self, request: consent_pb2.RevokeConsentRequest, context: grpc.aio.ServicerContext
    ) -> consent_pb2.RevokeConsentResponse:
        try:
            claims = self._security.keyring.signed_claims(request.token)
        except ConsentError as exc:
            await deny(context, grpc.StatusCode.INVALID_ARGUMENT, exc.failure.value, str(exc))
            raise  # unreachable: deny aborts
        if claims["iss"] != self._city:
            await deny(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "not-issued-here",
                f"only the issuing city {claims['iss']} can revoke this token",
            )
        earlier = self._revocations.get(claims["jti"])
        if earlier is not None:
            return consent_pb2.RevokeConsentResponse(revocation=_proto(earlier))
        revocation = Revocation(
            token_id=claims["jti"],
            issuer_city=self._city,
            revoked_at=datetime.now(UTC),
            expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        )
        # On the node's topic before the answer: every local process and every peer's mirror
        # learn it from there, and a restart does not forget it.
        await publish_revocation(self._publisher, revocation)
        self._revocations.add(revocation)
        return consent_pb2.RevokeConsentResponse(revocation=_proto(revocation))

    async def StreamRevocations(
        self, request: consent_pb2.StreamRevocationsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[consent_pb2.StreamRevocationsResponse]:
        position, fresh = self._revocations.added_since(0, issuer_city=self._city)
        for revocation in fresh:
            yield consent_pb2.StreamRevocationsResponse(revocation=_proto(revocation))
        yield consent_pb2.StreamRevocationsResponse(caught_up=True)
        if not request.follow:
            return
        # Ends after the follow-stream age (docs/design.md §3.3); the follower reconnects and
        # receives the live set again, which changes nothing it holds.
        ends_at = time.monotonic() + self._follow_max_age
        while (remaining := ends_at - time.monotonic()) > 0:
            await self._revocations.wait_for_more(min(remaining, 5.0))
            position, fresh = self._revocations.added_since(position, issuer_city=self._city)
            for revocation in fresh:
                yield consent_pb2.StreamRevocationsResponse(revocation=_proto(revocation))
