"""Development certificates for mutual TLS between city nodes, made with ``cryptography``.

``make certs`` (``python -m services.common.certs issue``) writes to ``deploy/local/certs/``
(gitignored; never committed):

==========================  =====================================================================
file                        what
==========================  =====================================================================
``ca.crt``, ``ca.key``      the region's development root CA: it signs city CAs only
``<city>-ca.crt/.key``      the city's issuing CA, signed by the root and confined by X.509 name
                            constraints to the city's host names (``<city>.creditlink.local`` and
                            below) and to the ``creditlink`` trust domain
``<city>.crt/.key``         the city's certificate, followed in ``.crt`` by its city CA (the chain a
                            peer needs to reach the root), for its servers *and* as its client
                            certificate: CN ``<city>``, URI SAN ``spiffe://creditlink/city/<city>``,
                            DNS SANs ``<city>.creditlink.local`` and, per node service,
                            ``<service>.<city>.creditlink.local``; no ``localhost``, no IP address
``<city>.consent.key/.pub`` the city consent service's Ed25519 signing key (see ``consent.py``)
``<city>.audit.key/.pub``   the city node's Ed25519 audit key, which signs its chain heads
                            (``services/common/audit/signing.py``)
``<city>.department.<USCC>``  a department's or regulator's client certificate and key, by their
``<city>.regulator.<USCC>``   city's CA (``.crt``/``.key``): one URI SAN naming the city and the
                            role (services/common/roles.py), no host names, client use only;
                            for every department and regulator of ``city-roles.yaml``, and on
                            demand (:func:`ensure_role_certificate`) for others
==========================  =====================================================================

It is idempotent: files that are present, signed by their current issuer, name the right
city and host names and stay valid for at least :data:`RENEW_BEFORE` are kept; anything else is
(re)issued. A new root reissues every city CA, and a new city CA its city's certificate.

In production the region holds the root and signs each city's CA; the city keeps its CA's
key and issues its own certificates, which the name constraints and the peers' check of the
issuing CA's city (``services/common/peer/issuers.py``) keep to that city. The server code
only needs the three PEM paths (see ``services.common.peer.TlsFiles``). docs/trust.md,
"Certificates".
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import ipaddress
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.common.audit.signing import new_audit_key_files
from services.common.region import load_region
from services.common.roles import CITY_URI_PREFIX, NODE, Role, load_city_roles
from services.common.settings import REPO_ROOT

DEFAULT_OUT = REPO_ROOT / "deploy" / "local" / "certs"
#: The host part of every creditlink URI SAN: what a URI name constraint can bind (RFC 5280
#: §4.2.1.10 constrains a URI by its host, never by its path, so a city's CA cannot be confined
#: to ``spiffe://creditlink/city/<city>`` by the constraint itself).
TRUST_DOMAIN = "creditlink"
#: Every city's host names end with this; a city CA may name hosts under its city's only.
HOST_SUFFIX = ".creditlink.local"
#: The node services a city's certificate names a host for (``<service>.<city>.creditlink.local``),
#: as the region file names their endpoints.
NODE_SERVICES = ("lists", "scores", "alerts", "intake")
CA_NAME = "creditlink development region CA"
CA_DAYS = 3650
CITY_CA_DAYS = 1825
CITY_DAYS = 825
RENEW_BEFORE = dt.timedelta(days=30)


def city_uri(city: str) -> str:
    return f"{CITY_URI_PREFIX}{city}"


def city_host(city: str) -> str:
    """The host name a city's certificates may name, and the hosts under it."""
    return f"{city}{HOST_SUFFIX}"


def service_host(city: str, service: str) -> str:
    """The name a client checks in the certificate of ``city``'s ``service``."""
    return f"{service}.{city_host(city)}"


def city_hosts(city: str) -> tuple[str, ...]:
    """The DNS SANs of a development city certificate."""
    return (city_host(city), *(service_host(city, service) for service in NODE_SERVICES))


@dataclass(frozen=True, slots=True)
class CertifiedKey:
    """A key, its certificate and the CA certificates between it and the root (not the root:
    peers hold it), nearest first."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def cert_pem(self) -> bytes:
        """The certificate followed by its chain: what TLS presents, and what peer tools
        (grpcurl, ghz, the Go interop client) load as the certificate file."""
        return b"".join(
            certificate.public_bytes(serialization.Encoding.PEM)
            for certificate in (self.certificate, *self.chain)
        )

    @property
    def self_signed(self) -> bool:
        return self.certificate.issuer == self.certificate.subject

    def chain_below(self) -> tuple[x509.Certificate, ...]:
        """The chain of a certificate this CA signs: this CA and its own chain, unless it is
        a root (which peers hold, and which a chain does not carry)."""
        return () if self.self_signed else (self.certificate, *self.chain)

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
    """A self-signed region root CA. It signs city CAs (:func:`new_city_ca`), which sign
    end-entity certificates: path length 1."""
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
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertifiedKey(key, certificate)


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def new_city_ca(
    root: CertifiedKey,
    city: str,
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> CertifiedKey:
    """``city``'s issuing CA, signed by the region ``root``: it signs end-entity certificates
    only (path length 0), and its name constraints (critical, RFC 5280 §4.2.1.10) permit the
    hosts under ``<city>.creditlink.local`` and URIs of the ``creditlink`` trust domain only.

    TLS enforces the constraints (a certificate of this CA naming another city's host fails
    the handshake); the city in the URI SAN's path is beyond what a constraint can say, so
    every peer also refuses a certificate whose city is not its CA's
    (``services/common/peer/issuers.py``), reading the CA's city from the DNS constraint
    (:func:`ca_city`).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or _now() - dt.timedelta(minutes=5)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "creditlink"),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"creditlink {city} CA"),
                ]
            )
        )
        .issuer_name(root.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(not_after or start + dt.timedelta(days=CITY_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(
            x509.NameConstraints(
                permitted_subtrees=[
                    x509.DNSName(city_host(city)),
                    x509.UniformResourceIdentifier(TRUST_DOMAIN),
                ],
                excluded_subtrees=None,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root.key.public_key()),
            critical=False,
        )
        .sign(root.key, hashes.SHA256())
    )
    return CertifiedKey(key, certificate, root.chain_below())


def ca_city(certificate: x509.Certificate) -> str | None:
    """The city a city CA may issue for: the one host subtree ``<city>.creditlink.local`` its
    name constraints permit. None for a certificate that is no such CA (a root, a leaf, a CA
    permitted several cities' hosts or none)."""
    try:
        if not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return None
        constraints = certificate.extensions.get_extension_for_class(x509.NameConstraints)
    except x509.ExtensionNotFound:
        return None
    permitted = [
        name.value
        for name in constraints.value.permitted_subtrees or ()
        if isinstance(name, x509.DNSName)
    ]
    if len(permitted) != 1 or not permitted[0].endswith(HOST_SUFFIX):
        return None
    city = permitted[0].removesuffix(HOST_SUFFIX)
    return city if city and "." not in city else None


def issue_city_certificate(
    ca: CertifiedKey,
    city: str,
    *,
    hosts: Sequence[str] | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    uris: Sequence[str] | None = None,
) -> CertifiedKey:
    """A certificate naming ``city`` (CN and URI SAN), usable as TLS server and client, signed
    by ``ca`` (``city``'s CA from :func:`new_city_ca`) and carrying its chain.

    ``hosts`` replaces the DNS (or IP) SANs (default: :func:`city_hosts`); ``uris`` the URI
    SANs (default: ``city``'s one), for certificates a peer must refuse: none, or several
    cities (services/common/peer/security.py), or issued by another city's CA.
    """
    chosen = (city_uri(city),) if uris is None else tuple(uris)
    return _issue(
        ca,
        common_name=city,
        uris=chosen,
        hosts=city_hosts(city) if hosts is None else hosts,
        usages=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
        not_before=not_before,
        not_after=not_after,
    )


def issue_role_certificate(
    ca: CertifiedKey,
    role: Role,
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> CertifiedKey:
    """A department's or regulator's client certificate, signed by its city's CA (``ca``):
    one URI SAN naming the role (services/common/roles.py), no host names, client use only."""
    return _issue(
        ca,
        common_name=role.name,
        uris=(role.uri(),),
        hosts=(),
        usages=(ExtendedKeyUsageOID.CLIENT_AUTH,),
        not_before=not_before,
        not_after=not_after,
    )


def _issue(
    ca: CertifiedKey,
    *,
    common_name: str,
    uris: Sequence[str],
    hosts: Sequence[str],
    usages: Sequence[x509.ObjectIdentifier],
    not_before: dt.datetime | None,
    not_after: dt.datetime | None,
) -> CertifiedKey:
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or _now() - dt.timedelta(minutes=5)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri) for uri in uris]
    for host in hosts:
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
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name),
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
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return CertifiedKey(key, certificate, ca.chain_below())


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _load(cert_path: Path, key_path: Path) -> CertifiedKey | None:
    try:
        certificate, *chain = x509.load_pem_x509_certificates(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    return CertifiedKey(key, certificate, tuple(chain))


def _fresh(certificate: x509.Certificate) -> bool:
    return certificate.not_valid_after_utc - _now() > RENEW_BEFORE


def _names_city(certificate: x509.Certificate, city: str) -> bool:
    """Names ``city`` and exactly its development host names (a certificate of an older
    layout, with ``localhost`` or without the service hosts, is reissued)."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return False
    return city_uri(city) in san.value.get_values_for_type(x509.UniformResourceIdentifier) and (
        sorted(san.value.get_values_for_type(x509.DNSName)) == sorted(city_hosts(city))
        and not san.value.get_values_for_type(x509.IPAddress)
    )


def _confined_to(certificate: x509.Certificate, city: str) -> bool:
    return ca_city(certificate) == city


def _signed_by(certificate: x509.Certificate, ca: CertifiedKey) -> bool:
    try:
        certificate.verify_directly_issued_by(ca.certificate)
    except (ValueError, TypeError, Exception):  # InvalidSignature is not a ValueError
        return False
    return True


def _current(
    held: CertifiedKey | None, issuer: CertifiedKey, check: Callable[[x509.Certificate], bool]
) -> bool:
    return (
        held is not None
        and _fresh(held.certificate)
        and check(held.certificate)
        and _signed_by(held.certificate, issuer)
        and held.chain == issuer.chain_below()
    )


def _names_role(certificate: x509.Certificate, role: Role) -> bool:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return False
    return san.value.get_values_for_type(x509.UniformResourceIdentifier) == [role.uri()]


def role_files(out: Path, role: Role) -> tuple[Path, Path]:
    """Where the development certificate and key of ``role`` are (``<role name>.crt/.key``)."""
    return out / f"{role.name}.crt", out / f"{role.name}.key"


def ensure_role_certificate(out: Path, role: Role) -> tuple[Path, Path]:
    """The development certificate of ``role`` in ``out``, issued by its city's CA there if it
    is missing, stale or names something else; the city CA must exist (``make certs``).

    How a city's CA issues them in production: docs/trust.md, "Roles"."""
    if role.kind == NODE:
        raise ValueError("a city node's certificate is made by issue_dev_certificates")
    cert_path, key_path = role_files(out, role)
    city_ca = _load(out / f"{role.city}-ca.crt", out / f"{role.city}-ca.key")
    if city_ca is None:
        raise FileNotFoundError(f"no CA of {role.city} in {out}: run make certs first")
    if not _current(_load(cert_path, key_path), city_ca, functools.partial(_names_role, role=role)):
        issue_role_certificate(city_ca, role).write(cert_path, key_path)
    return cert_path, key_path


def issue_dev_certificates(
    out: Path, cities: Sequence[str], roles: Sequence[Role] = ()
) -> list[str]:
    """Make sure ``out`` holds a current root CA and, per city, a city CA, a certificate and a
    consent key; and a certificate for each of ``roles``.

    Returns one line per file written or kept, for the operator.
    """
    out.mkdir(parents=True, exist_ok=True)
    report: list[str] = []
    root = _load(out / "ca.crt", out / "ca.key")
    if root is None or not _fresh(root.certificate) or not root.self_signed:
        root = new_ca()
        root.write(out / "ca.crt", out / "ca.key")
        report.append(f"issued  {out / 'ca.crt'}")
    else:
        report.append(f"kept    {out / 'ca.crt'}")
    for city in cities:
        ca_cert, ca_key = out / f"{city}-ca.crt", out / f"{city}-ca.key"
        held = _load(ca_cert, ca_key)
        if held is not None and _current(held, root, functools.partial(_confined_to, city=city)):
            city_ca = held
            report.append(f"kept    {ca_cert}")
        else:
            city_ca = new_city_ca(root, city)
            city_ca.write(ca_cert, ca_key)
            report.append(f"issued  {ca_cert}")
        cert_path, key_path = out / f"{city}.crt", out / f"{city}.key"
        if not _current(
            _load(cert_path, key_path), city_ca, functools.partial(_names_city, city=city)
        ):
            issue_city_certificate(city_ca, city).write(cert_path, key_path)
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
        audit_key, audit_pub = out / f"{city}.audit.key", out / f"{city}.audit.pub"
        if not audit_key.exists() or not audit_pub.exists():
            new_audit_key_files(out, city)
            report.append(f"issued  {audit_key}")
        else:
            report.append(f"kept    {audit_key}")
    for role in roles:
        if role.city in cities:
            report.append(f"ready   {ensure_role_certificate(out, role)[0]}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.common.certs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    issue = sub.add_parser(
        "issue", help="create or renew the dev root CA, city CAs and city certificates"
    )
    issue.add_argument("--out", type=Path, default=DEFAULT_OUT)
    issue.add_argument(
        "--region", type=Path, default=REPO_ROOT / "deploy" / "config" / "region.yaml"
    )
    args = parser.parse_args(argv)
    region = load_region(args.region)
    city_roles = load_city_roles(cities=region.cities.keys())
    roles = [
        *(Role.department(city, code) for city, code in sorted(city_roles.acts_for)),
        *(role for city in sorted(region.cities) for role in city_roles.regulator_roles(city)),
    ]
    for line in issue_dev_certificates(args.out, sorted(region.cities), roles):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
