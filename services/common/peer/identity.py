"""The calling city, read from the verified client certificate (never from a request field)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.common.certs import CITY_URI_PREFIX


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """The calling city as its verified certificate names it."""

    city: str
    city_code: str
    certificate_sha256: str | None


def _text(values: Sequence[Any]) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


def _cities_named(auth: Mapping[str, Sequence[Any]]) -> list[str]:
    """The city of every creditlink URI SAN of the certificate. Only these name the caller:
    never the CN, and a certificate must have exactly one (``PeerSecurity.identify``)."""
    return [
        san.removeprefix(CITY_URI_PREFIX)
        for san in _text(auth.get("x509_subject_alternative_name", ()))
        if san.startswith(CITY_URI_PREFIX)
    ]


def _pem_sha256(pem: str) -> str:
    """SHA-256 of the certificate's DER form."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER)
    return hashlib.sha256(der).hexdigest()
