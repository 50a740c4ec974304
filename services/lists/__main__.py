"""``python -m services.lists``: run this city node's lists service.

    python -m services.lists                 # serve (CREDITLINK_CITY, KAFKA_BOOTSTRAP, …)
    python -m services.lists check-config    # validate configuration and measures, print them
    python -m services.lists digest          # per issuing city: entries and digest of the store

Configuration: the common settings (``services/common/settings.py``) and the service's own
(``services/lists/config.py``). Exit status 2 on a configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence

from services.common.avro import AvroSerde
from services.common.logging import configure_logging, get_logger
from services.common.node import ops_server, run_until_signalled
from services.common.region import RegionConfigError, load_region
from services.common.settings import Settings, SettingsError, load_settings
from services.lists.config import load_lists_config
from services.lists.measures import MeasuresError, load_measures
from services.lists.node import SERVICE, STOP_GRACE_SECONDS, ListsNode
from services.lists.store import ListStore


async def _serve(settings: Settings) -> None:
    region = load_region(settings.region_file)
    node = ListsNode(settings, region, load_lists_config(settings, region))
    ops = ops_server(region.city(settings.city), SERVICE)
    await run_until_signalled(node, grace=STOP_GRACE_SECONDS, ops=ops)


def _check_config(settings: Settings) -> None:
    region = load_region(settings.region_file)
    config = load_lists_config(settings, region)
    catalogue = load_measures(config.measures_file)
    print(
        f"city      {settings.city} ({region.city(settings.city).admin_code})  bind {config.bind}"
    )
    print(f"peers     {', '.join(p.key for p in region.peers_of(settings.city)) or '-'}")
    for rule in catalogue.rules:
        print(
            f"measure   {rule.code:<28} {rule.kind:<10} "
            f"{'/'.join(sorted(rule.list_types))} × {', '.join(sorted(rule.scenarios))}"
        )


def _digest(settings: Settings) -> int:
    """Compare a mirror with its issuer: run this on both nodes (works beside a running node)."""
    region = load_region(settings.region_file)
    path = settings.data_dir / SERVICE / "store"
    if not (path / "CURRENT").is_file():
        print(f"lists: no store at {path} (CREDITLINK_DATA_DIR)", file=sys.stderr)
        return 1
    store = ListStore(
        path,
        AvroSerde(),
        own_city=region.city(settings.city).admin_code,
        read_only=True,
    )
    try:
        for issuer in store.issuers():
            summary = {
                "issuing_city": issuer,
                "entries": store.entry_count(issuer),
                "digest": store.digest_summary(issuer),
            }
            print(json.dumps(summary))
    finally:
        store.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.lists",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command", nargs="?", default="serve", choices=["serve", "check-config", "digest"]
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        if args.command == "check-config":
            _check_config(settings)
            return 0
        if args.command == "digest":
            return _digest(settings)
        configure_logging(city=settings.city, service=SERVICE, level=settings.log_level)
        if settings.log_level != "debug":
            # aiokafka narrates every (re)subscription and coordinator lookup at INFO.
            logging.getLogger("aiokafka").setLevel(logging.WARNING)
        asyncio.run(_serve(settings))
    except (SettingsError, RegionConfigError, MeasuresError) as exc:
        get_logger().error("lists_config_invalid", error=str(exc))
        print(f"lists: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
