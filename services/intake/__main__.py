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

import asyncio
import json
import sys
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from services.common.avro import AvroSerde
from services.common.certs import DEFAULT_OUT
from services.common.clock import china_today
from services.common.logging import configure_logging
from services.common.peer import PeerSecurity, TlsFiles
from services.common.pseudonym import PseudonymKeyError
from services.common.region import load_region
from services.common.settings import Settings, SettingsError, load_settings
from services.common.workdays import default_calendar
from services.intake.figures.queries import list_overdue, query_quality
from services.intake.importer import DEFAULT_CHUNK, default_workers, import_files, progress_bar
from services.intake.node import intake_node
from services.intake.publish.publisher import PublishFailed
from services.intake.read.files import FileFormatError

app = typer.Typer(
    add_completion=False,
    help="Record intake: departments' credit records into the node, with 双公示 figures.",
)
console = Console()
errors = Console(stderr=True)


def _settings(level: str | None = None) -> Settings:
    try:
        settings = load_settings()
    except SettingsError as exc:
        errors.print(str(exc))
        raise typer.Exit(2) from None
    configure_logging(city=settings.city, service="intake", level=level or settings.log_level)
    return settings


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _run(coroutine: Any) -> Any:
    try:
        return asyncio.run(coroutine)
    except PseudonymKeyError as exc:
        errors.print(f"pseudonym key: {exc}")
        raise typer.Exit(2) from None
    except FileFormatError as exc:
        errors.print(f"file: {exc}")
        raise typer.Exit(2) from None
    except LookupError as exc:
        errors.print(str(exc))
        raise typer.Exit(2) from None
    except PublishFailed as exc:
        errors.print(f"stopped: {exc}; the import can be re-run safely")
        raise typer.Exit(1) from None


@app.callback(invoke_without_command=True)
def main(context: typer.Context) -> None:
    """Without a command: serve RecordIntakeService."""
    if context.invoked_subcommand is None:
        serve()


@app.command()
def serve(
    bind: Annotated[str | None, typer.Option(help="host:port; default: the region file")] = None,
    certs: Annotated[
        Path,
        typer.Option(envvar="CREDITLINK_TLS_DIR", help="directory with ca.crt, <city>.crt/.key"),
    ] = DEFAULT_OUT,
    writer: Annotated[str, typer.Option(help="transactional writer name")] = "server",
) -> None:
    """Serve RecordIntakeService over mutual TLS until SIGTERM."""
    settings = _settings()
    region = load_region(settings.region_file)
    address = bind or region.city(settings.city).endpoint("intake")
    security = PeerSecurity.from_files(settings, region, keys_dir=certs)
    tls = TlsFiles.for_city(settings.city, certs)

    async def run() -> None:
        from services.intake.server import serve as serve_grpc

        async with intake_node(settings, writer=writer) as node:
            await serve_grpc(
                node,
                bind=address,
                tls=tls,
                security=security,
                ops_address=region.city(settings.city).ops.get("intake"),
            )

    _run(run())


@app.command("import")
def import_command(
    paths: Annotated[list[Path], typer.Argument(help="CSV or JSON Lines files", exists=True)],
    department: Annotated[
        str | None, typer.Option(help="the department the files are uploaded for")
    ] = None,
    writer: Annotated[str, typer.Option(help="transactional writer name")] = "import",
    chunk_size: Annotated[
        int, typer.Option(min=1, max=50_000, help="lines per chunk (one transaction each)")
    ] = DEFAULT_CHUNK,
    workers: Annotated[
        int | None, typer.Option(min=1, help="processes preparing chunks; default: by size")
    ] = None,
    progress: Annotated[bool, typer.Option(help="progress bar on stderr")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
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


@app.command()
def quality(
    department: Annotated[str, typer.Option(help="unified social credit code")],
    day: Annotated[str, typer.Option(help="decision date, YYYY-MM-DD")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The latest 双公示 figures of a department for the decisions of one day."""
    settings = _settings("warning")
    figure = _run(query_quality(settings, AvroSerde(), department, _day(day)))
    if figure is None:
        errors.print(f"no figures for {department} on {day}")
        raise typer.Exit(1)
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


@app.command()
def overdue(
    department: Annotated[str, typer.Option(help="unified social credit code")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
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


@app.command()
def declare(
    department: Annotated[str, typer.Option(help="unified social credit code")],
    day: Annotated[str, typer.Option(help="decision date, YYYY-MM-DD")],
    count: Annotated[int, typer.Option(min=0, help="decisions made that day (应上报数)")],
) -> None:
    """Record how many decisions a department made on a day (the reporting-rate base)."""
    settings = _settings()
    decision_day = _day(day)

    async def run() -> int:
        async with intake_node(settings, writer="declare") as node:
            node.ledger.apply_declaration(department, decision_day, count)
            return await node.pipeline.publish_quality([(department, decision_day)])

    published = _run(run())
    errors.print(f"declared {count} decisions of {department} on {day} ({published} published)")


if __name__ == "__main__":
    app()
