"""``python -m services.common.audit verify``: verify a topic's chains from the command line;
``query``: the calls about one subject (who checked it, when, from which city and role, for
which purpose); ``export``: some China days of a city's audit as one signed file;
``verify-export``: check such a file offline (docs/audit-export.md)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from services.common.audit.read import AuditMessage, read_audit_topic
from services.common.audit.signing import AuditKeyring
from services.common.audit.verify import check_receipts, check_receipts_of, verify_topic
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
    verify.add_argument(
        "--receipts-with",
        action="append",
        metavar="TOPIC",
        help="another city's audit topic (repeatable): the receipts each side keeps of calls "
        "to the other must match the other's records, both ways; the topic itself: the "
        "receipts of the city's calls to its own node",
    )
    query = sub.add_parser("query", help="the calls about one subject, oldest first")
    query.add_argument("--bootstrap", required=True, help="Kafka bootstrap host:port")
    query.add_argument("--topic", required=True, help="physical topic")
    query.add_argument("--subject", required=True, help="subject key: L:<USCC> or N:<pseudonym>")
    query.add_argument("--since", type=date.fromisoformat, help="first China day (YYYY-MM-DD)")
    query.add_argument("--until", type=date.fromisoformat, help="last China day (YYYY-MM-DD)")
    export = sub.add_parser("export", help="some China days of a city's audit, one signed file")
    export.add_argument("--bootstrap", required=True, help="Kafka bootstrap host:port")
    export.add_argument("--topic", required=True, help="physical topic")
    export.add_argument("--since", type=date.fromisoformat, required=True, help="first China day")
    export.add_argument("--until", type=date.fromisoformat, required=True, help="last China day")
    export.add_argument(
        "--key",
        type=Path,
        required=True,
        help="the city's <city>.audit.key, or its folder (whose published keys tell which "
        "head signatures are valid)",
    )
    export.add_argument("--city", required=True, help="the city's key, e.g. suzhou")
    export.add_argument("--region", type=Path, help="the region file naming the cities' codes")
    export.add_argument("--out", type=Path, required=True, help="the file to write")
    verify_export = sub.add_parser("verify-export", help="check an export offline")
    verify_export.add_argument(
        "--keys", type=Path, required=True, help="folder of the published audit keys"
    )
    verify_export.add_argument("--region", type=Path, help="the region file")
    verify_export.add_argument("bundle", type=Path, help="the file export wrote")
    args = parser.parse_args(argv)
    if args.command == "verify-export":
        return _verify_export(args)
    if args.command == "export" and args.since > args.until:
        parser.error("--since is after --until")
    settings = load_settings({"KAFKA_BOOTSTRAP": args.bootstrap})
    if args.command == "query":
        return _query(settings, args)
    if args.command == "export":
        return _export(settings, args)
    keyring = None
    held = None
    if args.keys is not None:
        keyring = AuditKeyring.from_directory(args.keys, _codes(args.region))
        print(f"signatures: {len(keyring.keys)} published audit key(s) in {args.keys}")
        if args.against_peers:
            held = _checkpoints_held(settings, _region(args.region), keyring, args)
            if held is None:
                return 2
    else:
        print("signatures: not checked (give --keys)")
        if args.against_peers:
            print("error: --against-peers needs --keys", file=sys.stderr)
            return 2
    report = asyncio.run(verify_topic(settings, args.topic, keyring, held))
    for other in args.receipts_with or ():
        if other == args.topic:
            # A city's calls to its own node (its operator CLI's): both sides on one topic,
            # so one way covers them.
            ours = asyncio.run(read_audit_topic(settings, args.topic))
            _, problems = check_receipts_of(ours, ours, name=args.topic)
            print(f"receipts: {args.topic} checked against itself")
        else:
            ours, theirs = asyncio.run(_both(settings, args.topic, other))
            problems = check_receipts(ours, theirs, names=(args.topic, other))
            print(f"receipts: {args.topic} and {other} checked against each other")
        report.problems.extend(problems)
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


async def _both(
    settings: Settings, ours: str, theirs: str
) -> tuple[list[AuditMessage], list[AuditMessage]]:
    return await read_audit_topic(settings, ours), await read_audit_topic(settings, theirs)


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


def _region(region_file: Path | None) -> Region:
    """The region of ``region_file``, or of the default one."""
    from services.common.region import load_region
    from services.common.settings import load_settings

    return load_region(region_file or load_settings({}).region_file)


def _codes(region_file: Path | None) -> dict[str, str]:
    """City key -> division code, from ``region_file`` or the default one."""
    return {key: city.admin_code for key, city in _region(region_file).cities.items()}


def _export(settings: Settings, args: argparse.Namespace) -> int:
    from services.common.audit.export import build_bundle
    from services.common.audit.read import read_audit_topic
    from services.common.audit.signing import load_audit_signer

    codes = _codes(args.region)
    if args.city not in codes:
        print(f"error: {args.city!r} is no city of the region file", file=sys.stderr)
        return 2
    try:
        signer = load_audit_signer(args.key, args.city, codes[args.city])
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    published = AuditKeyring.from_directory(
        args.key if args.key.is_dir() else args.key.parent, codes
    )
    # The key counts as the city's where its public half is not published beside it; where
    # it is published, as the key of the city it is published for (so an export signed with
    # another city's key fails its own check).
    keyring = AuditKeyring({**AuditKeyring.of(signer).keys, **published.keys})
    messages = asyncio.run(read_audit_topic(settings, args.topic))
    bundle = build_bundle(
        messages,
        city=args.city,
        city_code=signer.node_city,
        topic=args.topic,
        since=args.since,
        until=args.until,
        signer=signer,
        keyring=keyring,
        exported_at=datetime.now(UTC),
    )
    args.out.write_bytes(bundle)
    print(f"wrote {args.out} ({len(bundle)} bytes); checking it as a verifier would:")
    return _check_bundle(bundle, keyring, codes, str(args.out))


def _verify_export(args: argparse.Namespace) -> int:
    try:
        bundle = args.bundle.read_bytes()
    except OSError as exc:
        print(f"error: {args.bundle}: cannot be read ({exc})", file=sys.stderr)
        return 2
    codes = _codes(args.region)
    keyring = AuditKeyring.from_directory(args.keys, codes)
    print(f"signatures: {len(keyring.keys)} published audit key(s) in {args.keys}")
    return _check_bundle(bundle, keyring, codes, str(args.bundle))


def _check_bundle(bundle: bytes, keyring: AuditKeyring, codes: dict[str, str], name: str) -> int:
    from services.common.audit.export import BundleUnreadable, verify_bundle

    try:
        check = verify_bundle(bundle, keyring, codes)
    except BundleUnreadable as exc:
        print(f"error: {name}: {exc}", file=sys.stderr)
        return 2
    for line in [*check.checked, *check.problems]:
        print(line)
    if check.ok:
        print(f"OK: {name}")
        return 0
    print(f"FAILED: {len(check.problems)} problem(s) in {name}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
