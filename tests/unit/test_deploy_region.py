"""`region up`/`region status` take their cities from the region file, not a fixed list."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

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


def _exited(pid: int) -> bool:
    """The process has ended (a zombie until its parent reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_supervised_process_that_exited_counts_as_gone_and_its_run_is_logged(
    tmp_path: Path,
) -> None:
    # ``python -m this`` prints the Zen of Python and exits: a service that died at start.
    zen = supervisor.Supervised("zen", "this", run_dir=tmp_path)
    first = zen.start(os.environ)
    assert zen.pid_file.read_text() == str(first)
    deadline = time.monotonic() + 30
    while not _exited(first) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert zen.pid() is None  # a zombie still answers kill(pid, 0), yet it is not running
    assert zen.logged_since_start(b"Beautiful is better than ugly")

    second = zen.start(os.environ)
    assert second != first
    child = zen.child
    assert child is not None
    child.wait(30)
    assert zen.log_text().count("Beautiful is better than ugly") == 2
    assert not zen.logged_since_start(b"not in the log")
    assert zen.stop() is False  # it was not running
    assert not zen.pid_file.exists()
