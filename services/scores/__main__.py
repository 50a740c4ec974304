"""``python -m services.scores``: run the scores service of this node (``serve``, the default),
or load a file of local scores (``import-scores FILE``).

Configuration comes from the environment: the common settings (``services.common.settings``)
and the service's own (``services.scores.config``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from services.common.logging import configure_logging
from services.common.pseudonym import PseudonymKeyError, check_region_key, load_region_key
from services.common.region import load_region
from services.common.settings import SettingsError, load_settings
from services.scores.config import ScoresConfigError, load_scores_config


async def _serve() -> None:
    from services.common.node import ops_server, run_until_signalled
    from services.scores.node import SERVICE, STOP_GRACE_SECONDS, ScoresNode

    node = ScoresNode.from_environment()
    ops = ops_server(node.region.city(node.settings.city), SERVICE)
    await run_until_signalled(node, grace=STOP_GRACE_SECONDS, ops=ops)


def _import(path: Path) -> int:
    from services.scores.importer import publish_scores, read_score_file

    settings = load_settings()
    region = load_region(settings.region_file)
    definition = load_scores_config(region=region).scale_of(settings.city)
    region_key = load_region_key()
    check_region_key(region_key, region.pseudonym_key_ids)
    updates, problems = read_score_file(path, definition=definition, region_key=region_key)
    if problems:
        for problem in problems:
            print(f"{path}: {problem}", file=sys.stderr)
        print(f"{path}: {len(problems)} unusable row(s); nothing imported", file=sys.stderr)
        return 1
    count = asyncio.run(publish_scores(settings, updates))
    print(
        f"imported {count} score(s) of {definition.scale_name} onto "
        f"{settings.topic('credit.scores.v1')}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.scores", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the service (default)")
    importer = sub.add_parser("import-scores", help="publish a CSV/JSONL file of scores")
    importer.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "import-scores":
            return _import(args.file)
        settings = load_settings()
        configure_logging(city=settings.city, service="scores", level=settings.log_level)
        if settings.log_level != "debug":
            # faust and mode narrate every start step at INFO; keep their warnings and errors.
            for chatty in ("faust", "mode"):
                logging.getLogger(chatty).setLevel(logging.WARNING)
        asyncio.run(_serve())
    except (SettingsError, ScoresConfigError, PseudonymKeyError, OSError) as exc:
        print(f"scores: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
