"""Which city a caller's certificate may name: its issuing CA's (docs/trust.md, "Certificates").

The TLS handshake has verified the client's chain to the region root, and the root's name
constraints on each city CA keep its certificates to that city's host names; but a constraint
cannot bind the city in a URI SAN's path (``spiffe://creditlink/city/<city>``, RFC 5280
§4.2.1.10 constrains a URI by its host). So the server reads the chain the client presented
(gRPC's ``x509_pem_cert_chain``: on a server, the certificates after the client's own), finds
the city CA that signed the client's certificate and that a region root signed, and refuses a
certificate whose city is not that CA's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from cryptography import x509

from services.common.certs import ca_city
from services.common.memo import BoundedMemo
from services.common.peer.call import Denied
from services.common.peer.identity import PeerIdentity
from services.common.peer.names import _MAX_KNOWN_CERTIFICATES

#: The certificate was not issued by a city CA of the region (a root signed it directly, the
#: chain did not come with it, or its CA is confined to no one city).
NOT_FROM_A_CITY_CA = "issuer-not-a-city-ca"
#: The city CA that issued the certificate is another city's.
ISSUED_BY_ANOTHER_CITY = "issuer-of-another-city"


def _signed(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except Exception:  # InvalidSignature, a name mismatch (ValueError), an unusable key (TypeError)
        return False
    return True


def _certificates(values: Sequence[Any]) -> list[x509.Certificate]:
    text = "".join(v.decode("ascii", "replace") if isinstance(v, bytes) else str(v) for v in values)
    try:
        return x509.load_pem_x509_certificates(text.encode()) if text.strip() else []
    except ValueError:
        return []


class CityIssuers:
    """The region's root CAs, and the rule that a city's certificate comes from its city's CA.

    Example::

        issuers = CityIssuers.from_pem(Path("deploy/local/certs/ca.crt").read_bytes())
        identity = security.identify(context)
        issuers.check(context, identity)   # Denied unless the city's own CA issued it
    """

    def __init__(self, roots: Sequence[x509.Certificate]) -> None:
        self._roots = tuple(roots)
        # Certificate SHA-256 -> (the issuing CA's city or None): worked out once per
        # certificate, like the identity (services/common/peer/security.py).
        self._known: BoundedMemo[str, tuple[str | None]] = BoundedMemo(_MAX_KNOWN_CERTIFICATES)

    @classmethod
    def from_pem(cls, bundle: bytes) -> CityIssuers:
        """From the PEM bundle the server trusts client certificates with (``ca.crt``)."""
        return cls(x509.load_pem_x509_certificates(bundle))

    def issuing_city(self, leaf: x509.Certificate, chain: Sequence[x509.Certificate]) -> str | None:
        """The city of the city CA in ``chain`` that issued ``leaf`` and that a root signed."""
        for candidate in chain:
            city = ca_city(candidate)
            if (
                city is not None
                and _signed(leaf, candidate)
                and any(_signed(candidate, root) for root in self._roots)
            ):
                return city
        return None

    def check(self, context: grpc.aio.ServicerContext, identity: PeerIdentity) -> None:
        """Refuse (UNAUTHENTICATED) a client certificate naming ``identity.city`` that the
        city's CA did not issue."""
        # Looked up by the certificate's digest, which identify() has already worked out, so a
        # known certificate costs no decoding and no auth context.
        key = identity.certificate_sha256 or ""
        known = self._known.get(key)
        if known is None:
            auth = context.auth_context()
            leaves = _certificates(auth.get("x509_pem_cert", ())[:1])
            chain = _certificates(auth.get("x509_pem_cert_chain", ()))
            known = (self.issuing_city(leaves[0], chain) if leaves else None,)
            if key:
                self._known.remember(key, known)
        (issuing,) = known
        if issuing is None:
            raise Denied(
                grpc.StatusCode.UNAUTHENTICATED,
                NOT_FROM_A_CITY_CA,
                "the client certificate was not issued by a city CA of the region "
                "(send the city CA after the certificate)",
            )
        if issuing != identity.city:
            raise Denied(
                grpc.StatusCode.UNAUTHENTICATED,
                ISSUED_BY_ANOTHER_CITY,
                f"the client certificate names {identity.city} but {issuing}'s CA issued it",
            )
