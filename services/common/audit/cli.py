"""``python -m services.common.audit verify``: verify a topic's chains from the command line;
``query``: the calls about one subject (who checked it, when, from which city and role, for
which purpose)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from services.common.audit.signing import AuditKeyring
from services.common.audit.verify import verify_topic
from services.common.topic_names import AUDIT_TOPIC as AUDIT_TOPIC
from services.common.topic_names import CHECKPOINTS_TOPIC

if TYPE_CHECKING:
    from services.common.audit.verify import CheckpointsHeld
    from services.common.region import Region
    from services.common.settings import Settings


def main(argv: list[str] | None = None) -> int:
    from services.common.settings import load_settings

    parser = argparse.ArgumentParser(prog="python -m services.common.audit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="check every chain on an audit topic")
    verify.add_argument("--bootstrap", required=True, help="Kafka bootstrap host:port")
    verify.add_argument(
        "--topic", required=True, help="physical topic, e.g. suzhou.audit.peer-calls.v1"
    )
    verify.add_argument(
        "--keys",
        type=Path,
        help="folder of the cities' published audit keys (<city>.audit[.<key id>].pub): "
        "also check every record is signed by its city",
    )
    verify.add_argument(
        "--region", type=Path, help="the region file naming the cities' codes (with --keys)"
    )
    verify.add_argument(
        "--against-peers",
        action="store_true",
        help="also check the chains against the signed heads the city's peers hold (with "
        "--keys): finds a truncated tail, a deleted chain, a rewritten chain",
    )
    verify.add_argument(
        "--city", help="the city whose topic it is (default: the one whose topic prefix it has)"
    )
    verify.add_argument(
        "--checkpoints",
        action="append",
        metavar="TOPIC",
        help="a peer's checkpoint topic to read (repeatable; default: every other city's "
        "<prefix>audit.checkpoints.v1)",
    )
    query = sub.add_parser("query", help="the calls about one subject, oldest first")
    query.add_argument("--bootstrap", required=True, help="Kafka bootstrap host:port")
    query.add_argument("--topic", required=True, help="physical topic")
    query.add_argument("--subject", required=True, help="subject key: L:<USCC> or N:<pseudonym>")
    query.add_argument("--since", type=date.fromisoformat, help="first China day (YYYY-MM-DD)")
    query.add_argument("--until", type=date.fromisoformat, help="last China day (YYYY-MM-DD)")
    args = parser.parse_args(argv)
    settings = load_settings({"KAFKA_BOOTSTRAP": args.bootstrap})
    if args.command == "query":
        return _query(settings, args)
    keyring = None
    held = None
    if args.keys is not None:
        from services.common.region import load_region

        region = load_region(args.region or settings.region_file)
        codes = {key: city.admin_code for key, city in region.cities.items()}
        keyring = AuditKeyring.from_directory(args.keys, codes)
        print(f"signatures: {len(keyring.keys)} published audit key(s) in {args.keys}")
        if args.against_peers:
            held = _checkpoints_held(settings, region, keyring, args)
            if held is None:
                return 2
    else:
        print("signatures: not checked (give --keys)")
        if args.against_peers:
            print("error: --against-peers needs --keys", file=sys.stderr)
            return 2
    report = asyncio.run(verify_topic(settings, args.topic, keyring, held))
    for summary in report.chains.values():
        name = "(default)" if summary.chain is None else summary.chain
        print(
            f"chain {name}: {summary.records} records, seq {summary.first_seq}..{summary.last_seq}"
        )
    for problem in report.problems:
        print(problem)
    checked = datetime.now(UTC).isoformat(timespec="seconds")
    if report.ok:
        print(f"OK: {args.topic} verified at {checked}")
        return 0
    print(f"FAILED: {len(report.problems)} problem(s) on {args.topic} at {checked}")
    return 1


def _checkpoints_held(
    settings: Settings, region: Region, keyring: AuditKeyring, args: argparse.Namespace
) -> CheckpointsHeld | None:
    """The heads of the topic's city that its peers hold, read from their checkpoint topics."""
    from services.common.audit.checkpoints import read_checkpoints
    from services.common.audit.verify import CheckpointsHeld

    key = args.city or next(
        (k for k, c in region.cities.items() if args.topic.startswith(c.topic_prefix)), None
    )
    if key is None or key not in region.cities:
        print(f"error: which city's topic is {args.topic}? give --city", file=sys.stderr)
        return None
    topics = args.checkpoints or [
        f"{city.topic_prefix}{CHECKPOINTS_TOPIC}" for k, city in region.cities.items() if k != key
    ]
    city = region.city(key).admin_code
    checkpoints = []
    for topic in topics:
        try:
            kept = asyncio.run(read_checkpoints(settings, topic))
        except Exception as exc:  # a peer's topic missing or unreadable: say so, go on
            print(f"checkpoints: {topic} not read ({type(exc).__name__}: {exc})")
            continue
        about = [c for c in kept if c.city == city]
        newest: dict[str | None, int] = {}
        for checkpoint in about:
            newest[checkpoint.chain] = max(newest.get(checkpoint.chain, 0), checkpoint.seq)
        heads = ", ".join(f"{c or '(default)'} seq {s}" for c, s in sorted(newest.items(), key=str))
        print(f"checkpoints: {len(about)} of {key}'s heads on {topic}; newest: {heads or 'none'}")
        checkpoints.extend(about)
    if not checkpoints:
        print(f"checkpoints: no peer holds a head of {key}'s chains yet")
    return CheckpointsHeld(city, checkpoints, keyring)


def _query(settings: Settings, args: argparse.Namespace) -> int:
    from services.common.audit.query import calls_about
    from services.common.audit.read import read_audit_topic

    messages = asyncio.run(read_audit_topic(settings, args.topic))
    try:
        calls = calls_about(messages, args.subject, since=args.since, until=args.until)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)  # never the key itself: it may be an ID number
        return 2
    for call in calls:
        print(call.line())
    print(f"{len(calls)} call(s) about the subject on {args.topic}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
