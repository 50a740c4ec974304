"""The development CA hierarchy (services/common/certs.py, docs/trust.md "Certificates")."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from services.common.certs import (
    NODE_SERVICES,
    ca_city,
    city_uri,
    issue_city_certificate,
    issue_dev_certificates,
    new_ca,
    new_city_ca,
)
from services.common.peer.issuers import CityIssuers


def _sans(certificate: x509.Certificate) -> x509.SubjectAlternativeName:
    return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def test_each_city_certificate_names_its_own_hosts_only_and_carries_its_city_ca(
    tmp_path: Path,
) -> None:
    issue_dev_certificates(tmp_path, ["suzhou", "wuxi"])
    root = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    for city in ("suzhou", "wuxi"):
        leaf, city_ca = x509.load_pem_x509_certificates((tmp_path / f"{city}.crt").read_bytes())
        sans = _sans(leaf)
        assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [city_uri(city)]
        assert sorted(sans.get_values_for_type(x509.DNSName)) == sorted(
            [f"{city}.creditlink.local", *(f"{s}.{city}.creditlink.local" for s in NODE_SERVICES)]
        )
        assert sans.get_values_for_type(x509.IPAddress) == []
        leaf.verify_directly_issued_by(city_ca)
        city_ca.verify_directly_issued_by(root)
        assert ca_city(city_ca) == city
        assert city_ca.public_bytes(Encoding.PEM) == ((tmp_path / f"{city}-ca.crt").read_bytes())
    assert ca_city(root) is None


def test_an_older_layout_is_reissued_and_a_current_one_kept(tmp_path: Path) -> None:
    root = new_ca()
    root.write(tmp_path / "ca.crt", tmp_path / "ca.key")
    # Signed by the root itself and naming localhost: what the region used to issue.
    issue_city_certificate(root, "suzhou", hosts=("localhost", "127.0.0.1")).write(
        tmp_path / "suzhou.crt", tmp_path / "suzhou.key"
    )
    first = issue_dev_certificates(tmp_path, ["suzhou"])
    assert f"kept    {tmp_path / 'ca.crt'}" in first
    assert f"issued  {tmp_path / 'suzhou-ca.crt'}" in first
    assert f"issued  {tmp_path / 'suzhou.crt'}" in first
    second = issue_dev_certificates(tmp_path, ["suzhou"])
    assert all(line.startswith("kept") for line in second), second


def test_the_issuing_city_is_read_from_a_chain_only_through_a_root() -> None:
    root, other_root = new_ca("root"), new_ca("another root")
    suzhou_ca, wuxi_ca = new_city_ca(root, "suzhou"), new_city_ca(root, "wuxi")
    issuers = CityIssuers([root.certificate])
    leaf = issue_city_certificate(suzhou_ca, "suzhou").certificate
    assert issuers.issuing_city(leaf, [suzhou_ca.certificate]) == "suzhou"
    # Extra certificates in the chain do not matter; only the one that signed the leaf does.
    assert issuers.issuing_city(leaf, [wuxi_ca.certificate, suzhou_ca.certificate]) == "suzhou"
    assert issuers.issuing_city(leaf, [wuxi_ca.certificate]) is None
    assert issuers.issuing_city(leaf, []) is None
    # A city CA that no root of the region signed.
    impostor = new_city_ca(other_root, "wuxi")
    rogue_leaf = issue_city_certificate(impostor, "suzhou", hosts=()).certificate
    assert issuers.issuing_city(rogue_leaf, [impostor.certificate]) is None
