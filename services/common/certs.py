"""Development certificates for mutual TLS between city nodes, made with ``cryptography``.

``make certs`` (``python -m services.common.certs issue``) writes to ``deploy/local/certs/``
(gitignored; never committed):

==========================  =====================================================================
file                        what
==========================  =====================================================================
``ca.crt``, ``ca.key``      the region's development CA
``<city>.crt/.key``         the city's certificate, for its servers *and* as its client
                            certificate: CN ``<city>``, URI SAN ``spiffe://creditlink/city/<city>``,
                            DNS SANs ``localhost`` and ``<city>.creditlink.local``, IP SAN 127.0.0.1
``<city>.consent.key/.pub`` the city consent service's Ed25519 signing key (see ``consent.py``)
==========================  =====================================================================

It is idempotent: files that are present, signed by the current CA, name the right city and
stay valid for at least :data:`RENEW_BEFORE` are kept; anything else is (re)issued. A new CA
reissues every city certificate.

In production each city's certificate comes from the region's PKI; the server code only
needs the three PEM paths (see ``services.common.peer.TlsFiles``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.common.region import load_region
from services.common.settings import REPO_ROOT

DEFAULT_OUT = REPO_ROOT / "deploy" / "local" / "certs"
CITY_URI_PREFIX = "spiffe://creditlink/city/"
CA_NAME = "creditlink development region CA"
CA_DAYS = 3650
CITY_DAYS = 825
RENEW_BEFORE = dt.timedelta(days=30)
DEFAULT_HOSTS = ("localhost", "127.0.0.1")


def city_uri(city: str) -> str:
    return f"{CITY_URI_PREFIX}{city}"


@dataclass(frozen=True, slots=True)
class CertifiedKey:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def write(self, cert_path: Path, key_path: Path) -> None:
        _write_private(key_path, self.key_pem())
        cert_path.write_bytes(self.cert_pem())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def new_ca(
    name: str = CA_NAME,
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> CertifiedKey:
    """A self-signed CA that may sign end-entity certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or _now() - dt.timedelta(minutes=5)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(not_after or start + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertifiedKey(key, certificate)


def issue_city_certificate(
    ca: CertifiedKey,
    city: str,
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    uris: Sequence[str] | None = None,
) -> CertifiedKey:
    """A certificate naming ``city`` (CN and URI SAN), usable as TLS server and client.

    ``uris`` replaces the URI SANs (default: ``city``'s one), for certificates a peer must
    refuse: none, or several cities (services/common/peer/security.py).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or _now() - dt.timedelta(minutes=5)
    chosen = (city_uri(city),) if uris is None else tuple(uris)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri) for uri in chosen]
    for host in (*hosts, f"{city}.creditlink.local"):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "creditlink"),
                    x509.NameAttribute(NameOID.COMMON_NAME, city),
                ]
            )
        )
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(not_after or start + dt.timedelta(days=CITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return CertifiedKey(key, certificate)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _load(cert_path: Path, key_path: Path) -> CertifiedKey | None:
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    return CertifiedKey(key, certificate)


def _fresh(certificate: x509.Certificate) -> bool:
    return certificate.not_valid_after_utc - _now() > RENEW_BEFORE


def _names_city(certificate: x509.Certificate, city: str) -> bool:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return False
    return city_uri(city) in san.value.get_values_for_type(x509.UniformResourceIdentifier)


def _signed_by(certificate: x509.Certificate, ca: CertifiedKey) -> bool:
    try:
        certificate.verify_directly_issued_by(ca.certificate)
    except (ValueError, TypeError, Exception):  # InvalidSignature is not a ValueError
        return False
    return True


def issue_dev_certificates(out: Path, cities: Sequence[str]) -> list[str]:
    """Make sure ``out`` holds a current CA and a certificate and consent key per city.

    Returns one line per file written or kept, for the operator.
    """
    out.mkdir(parents=True, exist_ok=True)
    report: list[str] = []
    ca = _load(out / "ca.crt", out / "ca.key")
    if ca is None or not _fresh(ca.certificate):
        ca = new_ca()
        ca.write(out / "ca.crt", out / "ca.key")
        report.append(f"issued  {out / 'ca.crt'}")
    else:
        report.append(f"kept    {out / 'ca.crt'}")
    for city in cities:
        cert_path, key_path = out / f"{city}.crt", out / f"{city}.key"
        current = _load(cert_path, key_path)
        if (
            current is None
            or not _fresh(current.certificate)
            or not _names_city(current.certificate, city)
            or not _signed_by(current.certificate, ca)
        ):
            issue_city_certificate(ca, city).write(cert_path, key_path)
            report.append(f"issued  {cert_path}")
        else:
            report.append(f"kept    {cert_path}")
        consent_key, consent_pub = out / f"{city}.consent.key", out / f"{city}.consent.pub"
        if not consent_key.exists() or not consent_pub.exists():
            signing = Ed25519PrivateKey.generate()
            _write_private(
                consent_key,
                signing.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            )
            consent_pub.write_bytes(
                signing.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
            report.append(f"issued  {consent_key}")
        else:
            report.append(f"kept    {consent_key}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.common.certs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    issue = sub.add_parser("issue", help="create or renew the dev CA and per-city certificates")
    issue.add_argument("--out", type=Path, default=DEFAULT_OUT)
    issue.add_argument(
        "--region", type=Path, default=REPO_ROOT / "deploy" / "config" / "region.yaml"
    )
    args = parser.parse_args(argv)
    region = load_region(args.region)
    for line in issue_dev_certificates(args.out, sorted(region.cities)):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
