"""Roles in certificates and the city roles file (services/common/roles.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from services.common.certs import issue_role_certificate, new_ca, new_city_ca
from services.common.roles import (
    CityRoles,
    Role,
    RoleError,
    load_city_roles,
    parse_city_roles,
    parse_role_uri,
)
from services.common.settings import REPO_ROOT

CITIES = ("suzhou", "wuxi", "changzhou")
OFFICE = "11320500014160128E"
BUREAU = "11320500014160400L"
OTHER = "11320500014160574X"


@pytest.mark.parametrize(
    "role",
    [
        Role.node("suzhou"),
        Role.department("suzhou", BUREAU),
        Role.regulator_of("wuxi", "11320200014320507N", ["FOOD_DRUG", "MEDICAL"]),
    ],
)
def test_a_role_survives_its_uri(role: Role) -> None:
    assert parse_role_uri(role.uri()) == role


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://creditlink/city/",
        "spiffe://creditlink/city/Suzhou",
        "spiffe://creditlink/city/suzhou/department",
        "spiffe://creditlink/city/suzhou/department/32050519900307123X",  # an ID number
        "spiffe://creditlink/city/suzhou/department/11320500014160400L/extra",
        "spiffe://creditlink/city/suzhou/regulator/11320500014160400L",  # no domains
        "spiffe://creditlink/city/suzhou/regulator/11320500014160400L/domains/",
        "spiffe://creditlink/city/suzhou/regulator/11320500014160400L/domains/food",
        "spiffe://creditlink/city/suzhou/regulator/11320500014160400L/domains/TAX.TAX",
        "spiffe://creditlink/city/suzhou/mayor/11320500014160400L",
        "spiffe://creditlink/cities/suzhou",
    ],
)
def test_a_malformed_role_uri_names_no_one(uri: str) -> None:
    assert parse_role_uri(uri) is None


def test_the_policy_names_roles_by_city_and_role_and_files_by_code() -> None:
    department = Role.department("suzhou", BUREAU)
    assert department.principal == "suzhou/department"
    assert department.name == f"suzhou.department.{BUREAU}"
    assert Role.node("wuxi").principal == "wuxi"
    with pytest.raises(RoleError, match="unified social credit code"):
        Role.department("suzhou", "not-a-code")
    with pytest.raises(RoleError, match="supervision domains"):
        Role.regulator_of("suzhou", BUREAU, [])


def test_a_role_certificate_has_one_uri_no_host_and_client_use_only() -> None:
    city_ca = new_city_ca(new_ca("test root"), "suzhou")
    role = Role.regulator_of("suzhou", BUREAU, ["FOOD_DRUG"])
    certificate = issue_role_certificate(city_ca, role).certificate
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [role.uri()]
    assert san.get_values_for_type(x509.DNSName) == []
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    certificate.verify_directly_issued_by(city_ca.certificate)


def test_the_deployed_roles_load_and_the_credit_office_acts_for_every_department() -> None:
    roles = load_city_roles(REPO_ROOT / "deploy/config/city-roles.yaml", cities=CITIES)
    assert roles.may_act_for("suzhou", actor=OFFICE, owner=BUREAU)
    assert roles.may_act_for("suzhou", actor=BUREAU, owner=BUREAU)
    assert not roles.may_act_for("suzhou", actor=OTHER, owner=BUREAU)
    # Acting for every department of Suzhou is not acting for Wuxi's.
    assert not roles.may_act_for("wuxi", actor=OFFICE, owner=BUREAU)
    assert all(role.kind == "regulator" for city in CITIES for role in roles.regulator_roles(city))


def test_a_department_acts_for_those_named_only() -> None:
    raw = {
        "version": 1,
        "cities": {"suzhou": {"departments": [{"code": OFFICE, "acts_for": [BUREAU]}]}},
    }
    roles = parse_city_roles(raw, source="test", cities=CITIES)
    assert roles.departments_of("suzhou", OFFICE) == {OFFICE, BUREAU}
    assert roles.departments_of("suzhou", OTHER) == {OTHER}
    assert CityRoles().departments_of("suzhou", OTHER) == {OTHER}


@pytest.mark.parametrize(
    ("cities", "message"),
    [
        ({"atlantis": {}}, "not a city of the region"),
        ({"suzhou": {"departments": [{"code": "x"}]}}, "unified social credit code"),
        (
            {"suzhou": {"departments": [{"code": OFFICE, "acts_for": ["everyone"]}]}},
            "not a department code",
        ),
        ({"suzhou": {"regulators": [{"code": BUREAU, "domains": []}]}}, "supervision domains"),
    ],
)
def test_a_malformed_roles_file_is_refused_with_where(cities: object, message: str) -> None:
    with pytest.raises(RoleError, match=message):
        parse_city_roles({"version": 1, "cities": cities}, source="roles.yaml", cities=CITIES)


def test_an_unreadable_roles_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(RoleError, match="cannot read city roles"):
        load_city_roles(tmp_path / "missing.yaml", cities=CITIES)
