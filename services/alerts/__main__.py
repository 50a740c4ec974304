"""``python -m services.alerts`` — run a city's alerts service, or look into its state.

    python -m services.alerts                  # run (CREDITLINK_CITY, KAFKA_BOOTSTRAP, …)
    python -m services.alerts check-config     # validate rules and webhooks, print them
    python -m services.alerts dead-letters     # webhook events given up on, with the reason
    python -m services.alerts outbox           # deliveries and webhook events still pending

``dead-letters`` and ``outbox`` open the store read-only next to a running service.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from services.alerts.config import load_rules, load_subscriptions
from services.alerts.model import AlertsConfigError
from services.alerts.node import SERVICE, STOP_GRACE_SECONDS, AlertsNode, NodeOptions
from services.alerts.store import AlertStore
from services.alerts.webhooks import dead_letters, format_dead_letter
from services.common.logging import configure_logging, get_logger
from services.common.node import ops_server, run_until_signalled
from services.common.region import load_region
from services.common.settings import Settings, SettingsError, load_settings


async def _run(settings: Settings) -> int:
    region = load_region(settings.region_file)
    node = AlertsNode(settings, region, NodeOptions.from_environment(settings, region))
    ops = ops_server(region.city(settings.city), SERVICE)
    await run_until_signalled(node, grace=STOP_GRACE_SECONDS, ops=ops)
    return 0


def _store(settings: Settings) -> AlertStore:
    return AlertStore(settings.data_dir / SERVICE / "store", read_only=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.alerts", description=__doc__)
    parser.add_argument(
        "command",
        nargs="?",
        default="run",
        choices=["run", "check-config", "dead-letters", "outbox"],
    )
    parser.add_argument("--json", action="store_true", help="JSON lines instead of text")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    configure_logging(city=settings.city, service=SERVICE, level=settings.log_level)
    try:
        if args.command == "check-config":
            rules = load_rules()
            hooks = load_subscriptions(settings.city)
            for rule in rules.rules:
                state = "on " if rule.enabled else "off"
                print(f"rule     {state} {rule.id}  {rule.severity}  {rule.summary[:70]}")
            for hook in hooks:
                domains = ",".join(sorted(d.value for d in hook.domains)) or "all"
                print(f"webhook  {hook.id}  {hook.url}  domains={domains} min={hook.min_severity}")
            return 0
        if args.command == "dead-letters":
            store = _store(settings)
            for entry in dead_letters(store):
                print(
                    json.dumps(entry, ensure_ascii=False)
                    if args.json
                    else format_dead_letter(entry)
                )
            return 0
        if args.command == "outbox":
            store = _store(settings)
            for prefix in ("out/", "hook/", "undelivered/"):
                for key, entry in store.scan(prefix):
                    print(json.dumps({"key": key, **entry}, ensure_ascii=False))
            return 0
        return asyncio.run(_run(settings))
    except AlertsConfigError as exc:
        get_logger().error("alerts_config_invalid", error=str(exc))
        print(exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
