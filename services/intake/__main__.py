"""``python -m services.intake``: the intake service and its operator commands.

    python -m services.intake                        # serve RecordIntakeService (gRPC, mTLS)
    python -m services.intake import a.csv b.jsonl  # bulk import, safe to re-run
    python -m services.intake quality --department 11320500014160400L --day 2025-09-26
    python -m services.intake overdue --department 11320500014160400L
    python -m services.intake declare --department 11320500014160400L --day 2025-09-26 --count 42

Configuration comes from the environment (``services/common/settings.py``); the region
pseudonym key from ``CREDITLINK_PSEUDONYM_KEY`` or ``CREDITLINK_PSEUDONYM_KEY_FILE``
(``services/common/pseudonym.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from services.common.avro import AvroSerde
from services.common.certs import DEFAULT_OUT
from services.common.clock import china_today
from services.common.logging import configure_logging
from services.common.node import node_trust, ops_server, run_until_signalled
from services.common.pseudonym import PseudonymKeyError
from services.common.region import load_region
from services.common.settings import Settings, SettingsError, load_settings
from services.common.workdays import default_calendar
from services.intake.figures.queries import list_overdue, query_quality
from services.intake.importer import DEFAULT_CHUNK, default_workers, import_files, progress_bar
from services.intake.node import intake_node
from services.intake.publish.publisher import PublishFailed
from services.intake.read.files import FileFormatError


class Exit(Exception):
    """End the command with ``code`` (its message already printed)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


console = Console()
errors = Console(stderr=True)


def _settings(level: str | None = None) -> Settings:
    try:
        settings = load_settings()
    except SettingsError as exc:
        errors.print(str(exc))
        raise Exit(2) from None
    configure_logging(city=settings.city, service="intake", level=level or settings.log_level)
    return settings


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _bounded(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            span = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{value} is not {span}")
        return value

    return parse


def _existing(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    return path


def _run(coroutine: Any) -> Any:
    try:
        return asyncio.run(coroutine)
    except PseudonymKeyError as exc:
        errors.print(f"pseudonym key: {exc}")
        raise Exit(2) from None
    except FileFormatError as exc:
        errors.print(f"file: {exc}")
        raise Exit(2) from None
    except LookupError as exc:
        errors.print(str(exc))
        raise Exit(2) from None
    except PublishFailed as exc:
        errors.print(f"stopped: {exc}; the import can be re-run safely")
        raise Exit(1) from None


def serve(bind: str | None, certs: Path, writer: str) -> None:
    """Serve RecordIntakeService over mutual TLS until SIGTERM."""
    settings = _settings()
    region = load_region(settings.region_file)
    city = region.city(settings.city)
    tls, security = node_trust(settings, region, certs)

    async def run() -> None:
        from services.intake.server import SERVICE, STOP_GRACE_SECONDS, ServingIntakeNode

        node = ServingIntakeNode(
            settings,
            region,
            bind=bind or city.endpoint(SERVICE),
            tls=tls,
            security=security,
            writer=writer,
        )
        await run_until_signalled(node, grace=STOP_GRACE_SECONDS, ops=ops_server(city, SERVICE))

    _run(run())


def import_command(
    paths: list[Path],
    department: str | None,
    writer: str,
    chunk_size: int,
    workers: int | None,
    progress: bool,
    as_json: bool,
) -> None:
    """Import bulk files of licensing and penalty records (re-run safely after a crash)."""
    settings = _settings()

    async def run() -> Any:
        # The preparing processes start while the node connects and catches up.
        preparers = workers if workers is not None else default_workers(paths)
        async with intake_node(
            settings, writer=writer, uploader_department=department, preparers=preparers
        ) as node:
            with progress_bar(progress and sys.stderr.isatty()) as bar:
                return await import_files(
                    node, paths, chunk_size=chunk_size, progress=bar, workers=workers
                )

    summary = _run(run())
    if as_json:
        print(json.dumps(summary.as_dict(), ensure_ascii=False))
        return
    table = Table(title=f"import of {', '.join(summary.files)} in {summary.seconds:.1f} s")
    table.add_column("lines", justify="right")
    table.add_column("accepted", justify="right")
    table.add_column("of which corrections", justify="right")
    table.add_column("duplicates", justify="right")
    table.add_column("rejected", justify="right")
    table.add_row(
        f"{summary.lines:,}",
        f"{summary.accepted:,}",
        f"{summary.corrections:,}",
        f"{summary.duplicates:,}",
        f"{summary.rejected:,}",
    )
    errors.print(table)


def quality(department: str, day: date, as_json: bool) -> None:
    """The latest 双公示 figures of a department for the decisions of one day."""
    settings = _settings("warning")
    figure = _run(query_quality(settings, AvroSerde(), department, day))
    if figure is None:
        errors.print(f"no figures for {department} on {day}")
        raise Exit(1)
    if as_json:
        print(json.dumps(figure, ensure_ascii=False, default=str))
        return
    table = Table(title=f"{figure['department_name']} — decisions of {day}")
    table.add_column("indicator")
    table.add_column("value", justify="right")

    def rate(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1%}"

    for label, value in (
        ("due date", str(figure["due_date"])),
        ("due date passed", "yes" if figure["due_date_passed"] else "no"),
        ("declared (应上报数)", str(figure["expected_count"] or "not declared")),
        ("submitted (上报数)", str(figure["submitted_count"])),
        ("valid (合规数)", str(figure["valid_count"])),
        ("on time (及时上报数)", str(figure["reported_on_time_count"])),
        ("reporting rate (上报率)", rate(figure["reporting_rate"])),
        ("compliance rate (合规率)", rate(figure["compliance_rate"])),
        ("timeliness rate (及时率)", rate(figure["timeliness_rate"])),
        ("overdue records", str(len(figure["overdue_record_ids"]))),
        ("computed at", str(figure["computed_at"])),
    ):
        table.add_row(label, value)
    console.print(table)


def overdue(department: str, as_json: bool) -> None:
    """Records of a department not validly reported within 7 working days."""
    settings = _settings("warning")
    found = _run(
        list_overdue(
            settings,
            AvroSerde(),
            department,
            today=china_today(),
            calendar=default_calendar(),
        )
    )
    if as_json:
        rows = [
            {
                "record_id": r.record_id,
                "decision_number": r.decision_number,
                "decision_date": r.decision_date.isoformat(),
                "due_date": r.due_date.isoformat(),
                "reported_on": r.reported_on.isoformat() if r.reported_on else None,
                "status": r.status,
            }
            for r in found
        ]
        print(json.dumps(rows, ensure_ascii=False))
        return
    table = Table(title=f"overdue records of {department}: {len(found)}")
    for column in ("decision number", "decision date", "due date", "reported on", "status"):
        table.add_column(column)
    for r in found:
        table.add_row(
            r.decision_number or "?",
            r.decision_date.isoformat(),
            r.due_date.isoformat(),
            r.reported_on.isoformat() if r.reported_on else "-",
            r.status,
        )
    console.print(table)


def declare(department: str, day: date, count: int) -> None:
    """Record how many decisions a department made on a day (the reporting-rate base)."""
    settings = _settings()
    decision_day = day

    async def run() -> int:
        async with intake_node(settings, writer="declare") as node:
            node.ledger.apply_declaration(department, decision_day, count)
            return await node.pipeline.publish_quality([(department, decision_day)])

    published = _run(run())
    errors.print(f"declared {count} decisions of {department} on {day} ({published} published)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m services.intake",
        description="Record intake: departments' credit records into the node, with 双公示 "
        "figures. Without a command: serve.",
    )
    # Serving is also what runs without a command, so its defaults are the parser's own; the
    # serve command's options only override them when given.
    parser.set_defaults(
        bind=None, certs=Path(os.environ.get("CREDITLINK_TLS_DIR", DEFAULT_OUT)), writer="server"
    )
    commands = parser.add_subparsers(dest="command")
    serving = commands.add_parser("serve", help="serve RecordIntakeService over mutual TLS")
    serving.add_argument(
        "--bind", default=argparse.SUPPRESS, help="host:port; default: the region file"
    )
    serving.add_argument(
        "--certs",
        type=Path,
        default=argparse.SUPPRESS,
        help="directory with ca.crt, <city>.crt/.key (CREDITLINK_TLS_DIR)",
    )
    serving.add_argument(
        "--writer", default=argparse.SUPPRESS, help="transactional writer name (server)"
    )
    importing = commands.add_parser(
        "import", help="import bulk files of licensing and penalty records (re-run safely)"
    )
    importing.add_argument("paths", nargs="+", type=_existing, help="CSV or JSON Lines files")
    importing.add_argument("--department", help="the department the files are uploaded for")
    importing.add_argument("--writer", default="import", help="transactional writer name")
    importing.add_argument(
        "--chunk-size",
        type=_bounded(1, 50_000),
        default=DEFAULT_CHUNK,
        help="lines per chunk (one transaction each)",
    )
    importing.add_argument(
        "--workers", type=_bounded(1), help="processes preparing chunks; default: by size"
    )
    importing.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="progress bar on stderr",
    )
    importing.add_argument("--json", action="store_true", help="print the summary as JSON")
    figures = commands.add_parser(
        "quality", help="the latest 双公示 figures of a department for one day's decisions"
    )
    figures.add_argument("--department", required=True, help="unified social credit code")
    figures.add_argument("--day", required=True, type=_day, help="decision date, YYYY-MM-DD")
    figures.add_argument("--json", action="store_true")
    late = commands.add_parser(
        "overdue", help="records of a department not validly reported within 7 working days"
    )
    late.add_argument("--department", required=True, help="unified social credit code")
    late.add_argument("--json", action="store_true")
    declaring = commands.add_parser(
        "declare", help="how many decisions a department made on a day (the reporting-rate base)"
    )
    declaring.add_argument("--department", required=True, help="unified social credit code")
    declaring.add_argument("--day", required=True, type=_day, help="decision date, YYYY-MM-DD")
    declaring.add_argument(
        "--count", required=True, type=_bounded(0), help="decisions made that day (应上报数)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command in (None, "serve"):
            serve(args.bind, args.certs, args.writer)
        elif args.command == "import":
            import_command(
                args.paths,
                args.department,
                args.writer,
                args.chunk_size,
                args.workers,
                args.progress,
                args.json,
            )
        elif args.command == "quality":
            quality(args.department, args.day, args.json)
        elif args.command == "overdue":
            overdue(args.department, args.json)
        else:
            declare(args.department, args.day, args.count)
    except Exit as stop:
        return stop.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
