"""``python -m services.common.avro``: check schemas and examples, print fingerprints."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from services.common.avro.compatibility import check_catalogue, read_catalogue_bindings
from services.common.avro.store import SCHEMA_DIR, TOPICS_FILE, SchemaStore, SchemaStoreError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.common.avro",
        description="Check every topic's value schema history against its compatibility mode.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="check schemas against schemas/topics.yaml")
    check.add_argument("--schemas", type=Path, default=SCHEMA_DIR, help="schema directory")
    check.add_argument("--topics", type=Path, default=TOPICS_FILE, help="topic catalogue")
    args = parser.parse_args(argv)

    try:
        store = SchemaStore.load(args.schemas)
    except SchemaStoreError as exc:
        print(f"ERROR    {exc}")
        return 1
    lines, problem_count = check_catalogue(store, read_catalogue_bindings(args.topics))
    for line in lines:
        print(line)
    print(f"{len(store.names())} schemas, {problem_count} problems")
    return 1 if problem_count else 0


if __name__ == "__main__":
    sys.exit(main())
