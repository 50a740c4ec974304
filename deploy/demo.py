"""``make demo``: a three-city region on one machine, with a scenario played through it.

Starts (or reuses) the local broker, issues dev certificates, provisions each city's topics,
starts every service of each city of the region file that runs locally (Suzhou, Wuxi and
Changzhou) as its own process (real gRPC with mutual TLS between them) and plays
``deploy/scenario.py`` through the region. Exits 0 when every outcome is what the scenario
expects; ``--keep`` leaves the region running (``python -m deploy.ops region down`` stops it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

from rich.console import Console

from deploy import region as supervisor
from deploy.broker import REPO_ROOT, Broker, broker_answers
from deploy.ops import consumer_lag, local_broker
from deploy.scenario import Scenario
from services.common.region import Region

# Short refresh periods so a freshly imported score distribution is published within
# seconds, and audit heads reach the peers quickly (production keeps the services' defaults).
DEMO_ENVIRONMENT = {
    "CREDITLINK_SCORES_REFRESH_SECONDS": "2",
    "CREDITLINK_SCORES_PEER_SYNC_SECONDS": "2",
    # Signed audit heads handed to the peers every 2 s, so step 5 has them at once.
    "CREDITLINK_AUDIT_CHECKPOINT_SECONDS": "2",
}


async def import_scores_with(
    bootstrap: str, deployment: supervisor.Deployment, region: Region, city: str, path: Path
) -> int:
    """``python -m services.scores import-scores`` as the operator runs it."""
    node = region.city(city)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.scores",
        "import-scores",
        str(path),
        cwd=REPO_ROOT,
        env={
            **os.environ,
            **deployment.config_environment(),
            "CREDITLINK_TLS_DIR": str(deployment.cert_dir),
            "CREDITLINK_CITY": city,
            "KAFKA_BOOTSTRAP": bootstrap,
            "CREDITLINK_TOPIC_PREFIX": node.topic_prefix,
            "CREDITLINK_DEV": "1",
        },
        stdout=asyncio.subprocess.DEVNULL,
    )
    return await process.wait()


async def play(
    region: Region, bootstrap: str, console: Console, deployment: supervisor.Deployment
) -> Scenario:
    scenario = Scenario(region, bootstrap, console, deployment=deployment)
    try:
        await scenario.start()
        await scenario.disclosure()
        await scenario.blacklist()
        await scenario.scores(
            lambda city, path: import_scores_with(bootstrap, deployment, region, city, path)
        )
        await scenario.alert()
        await scenario.evidence()
    finally:
        await scenario.close()
    return scenario


async def idle_lag(bootstrap: str, region: Region, timeout_s: float = 30.0) -> dict[str, int]:
    """Lag of the region's consumer groups (``region status``), once all are at 0 or after
    ``timeout_s``: an idle region has read everything it was sent."""
    prefixes = tuple(city.topic_prefix for city in region.cities.values())
    deadline = time.monotonic() + timeout_s
    while True:
        lag = dict(await consumer_lag(bootstrap, group_prefixes=prefixes))
        if not any(lag.values()) or time.monotonic() > deadline:
            return lag
        await asyncio.sleep(1.0)


def run_region_scenario(
    bootstrap: str,
    console: Console,
    *,
    data_root: Path,
    keep: bool = False,
    deployment: supervisor.Deployment | None = None,
) -> Scenario:
    """Certificates, topics, every service of the region file's cities, the scenario; then
    stop."""
    deployment = deployment or supervisor.Deployment()
    region = deployment.region()
    started = time.monotonic()
    procs, late = supervisor.up(
        region,
        bootstrap=bootstrap,
        data_root=data_root,
        deployment=deployment,
        extra=DEMO_ENVIRONMENT,
        timeout_s=240,
        report=lambda line: console.print(line, highlight=False),
    )
    try:
        if late:
            for proc in late:
                console.print(f"[red]{proc.name} not healthy; log: {proc.log_file}[/red]")
            raise SystemExit(1)
        console.print(
            f"services   {len(procs)} processes healthy in {time.monotonic() - started:.0f} s "
            f"(logs in {deployment.run_dir / 'logs'})"
        )
        scenario = asyncio.run(play(region, bootstrap, console, deployment))
        scenario.outcomes.idle_lag = asyncio.run(idle_lag(bootstrap, region))
        behind = {group: lag for group, lag in scenario.outcomes.idle_lag.items() if lag}
        console.print(
            f"lag        {len(scenario.outcomes.idle_lag)} consumer groups idle, "
            + (f"[red]behind: {behind}[/red]" if behind else "all at lag 0"),
            highlight=False,
        )
        return scenario
    finally:
        if not keep:
            for proc in procs:
                proc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(prog="make demo")
    parser.add_argument("--keep", action="store_true", help="leave the region running")
    args = parser.parse_args()
    # Wide enough for the tables when the output is a file or a CI log, not a terminal.
    console = Console(width=max(Console().width, 140))
    began = time.monotonic()

    region_broker = local_broker()
    bootstrap = region_broker.bootstrap
    broker: Broker | None = None  # the one this run started, stopped at the end
    if broker_answers(bootstrap):
        console.print(f"broker     {bootstrap} (already running)")
    else:
        broker = region_broker
        broker.up()
        console.print(f"broker     {bootstrap} (started: Kafka KRaft, jars from Maven Central)")
    try:
        scenario = run_region_scenario(
            bootstrap, console, data_root=supervisor.data_root(bootstrap), keep=args.keep
        )
    finally:
        if broker is not None and not args.keep:
            broker.down()
            console.print("broker     stopped")
    ok = scenario.outcomes.ok
    console.print(
        f"\ndemo finished in {time.monotonic() - began:.0f} s: "
        + ("[green]OK[/green]" if ok else "[red]FAILED[/red]")
    )
    if args.keep:
        console.print("region left running: `python -m deploy.ops region status` / `region down`")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
