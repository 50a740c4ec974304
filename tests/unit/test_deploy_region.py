"""`region up`/`region status` take their cities from the region file, not a fixed list."""

from __future__ import annotations

from dataclasses import replace

from deploy import region as supervisor
from deploy.broker import REPO_ROOT
from services.common.region import load_region

REGION_FILE = REPO_ROOT / "deploy" / "config" / "region.yaml"


def test_the_local_cities_are_those_of_the_region_file_with_ops_endpoints() -> None:
    region = load_region(REGION_FILE)
    assert supervisor.local_cities(region) == ("suzhou", "wuxi", "changzhou")
    assert {p.city.key for p in supervisor.processes(region)} == {"suzhou", "wuxi", "changzhou"}


def test_a_city_given_ops_endpoints_in_the_region_file_joins_the_local_region() -> None:
    region = load_region(REGION_FILE)
    qingpu = replace(
        region.city("qingpu"),
        ops={service: f"127.0.0.1:{9400 + n}" for n, service in enumerate(supervisor.SERVICES)},
    )
    grown = replace(region, cities={**region.cities, "qingpu": qingpu})
    assert supervisor.local_cities(grown) == ("suzhou", "wuxi", "changzhou", "qingpu")
    assert len(supervisor.processes(grown)) == 4 * len(supervisor.SERVICES)
