"""``python -m services.common.audit verify``: verify a topic's chains from the command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime

from services.common.audit.verify import verify_topic
from services.common.topic_names import AUDIT_TOPIC as AUDIT_TOPIC


def main(argv: list[str] | None = None) -> int:
    from services.common.settings import load_settings

    parser = argparse.ArgumentParser(prog="python -m services.common.audit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="check every chain on an audit topic")
    verify.add_argument("--bootstrap", required=True, help="Kafka bootstrap host:port")
    verify.add_argument(
        "--topic", required=True, help="physical topic, e.g. suzhou.audit.peer-calls.v1"
    )
    args = parser.parse_args(argv)
    settings = load_settings({"KAFKA_BOOTSTRAP": args.bootstrap})
    report = asyncio.run(verify_topic(settings, args.topic))
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


if __name__ == "__main__":
    sys.exit(main())
