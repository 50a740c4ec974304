"""The calling city and its role, read from the verified client certificate (never from a
request field)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.common.roles import Role, is_creditlink_uri


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """The calling city, and its role there, as its verified certificate names them."""

    city: str
    city_code: str
    certificate_sha256: str | None
    #: The role in the city (services/common/roles.py): the city's node, a department or a
    #: regulator.
    role: Role


def _text(values: Sequence[Any]) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


def _identities_named(auth: Mapping[str, Sequence[Any]]) -> list[str]:
    """Every creditlink URI SAN of the certificate. Only these name the caller: never the CN,
    and a certificate must have exactly one (``PeerSecurity.identify``)."""
    return [
        san
        for san in _text(auth.get("x509_subject_alternative_name", ()))
        if is_creditlink_uri(san)
    ]


def _pem_sha256(pem: str) -> str:
    """SHA-256 of the certificate's DER form."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER)
    return hashlib.sha256(der).hexdigest()
