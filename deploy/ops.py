"""The operator CLI: one entry point for running and repairing city nodes.

    python -m deploy.ops --help

Commands that talk to a node take ``--city``; its endpoints, topic prefix and certificates
come from the region file (``deploy/config/region.yaml``) and ``deploy/local/certs``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from rich.console import Console
from rich.table import Table

from deploy import region as supervisor
from deploy.broker import REPO_ROOT, Broker, broker_answers
from services.common.region import Region
from services.common.settings import load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
region_app = typer.Typer(no_args_is_help=True, help="start, stop and watch the local region")
topics_app = typer.Typer(no_args_is_help=True, help="topics from the catalogue")
city_app = typer.Typer(no_args_is_help=True, help="cities of the region")
app.add_typer(region_app, name="region")
app.add_typer(topics_app, name="topics")
app.add_typer(city_app, name="city")

console = Console()
DEFAULT_BOOTSTRAP = "127.0.0.1:19092"
CityOption = Annotated[str, typer.Option("--city", "-c", help="city key from the region file")]


def _deployment() -> supervisor.Deployment:
    """``deploy/config``, ``deploy/local/certs`` and ``.cache/region``, or the folders that
    ``CREDITLINK_CONFIG_DIR``, ``CREDITLINK_TLS_DIR`` and ``CREDITLINK_RUN_DIR`` name."""
    return supervisor.Deployment.from_environment()


def _region() -> Region:
    return _deployment().region()


def _bootstrap() -> str:
    return os.environ.get("KAFKA_BOOTSTRAP", DEFAULT_BOOTSTRAP)


def _python_module(module: str, *args: str, env: dict[str, str] | None = None) -> int:
    return subprocess.call(  # noqa: S603 -- our own modules, fixed arguments
        [sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env
    )


def _city_env(city: str) -> dict[str, str]:
    node = _region().city(city)
    return {
        **os.environ,
        "CREDITLINK_CITY": node.key,
        "KAFKA_BOOTSTRAP": _bootstrap(),
        "CREDITLINK_TOPIC_PREFIX": node.topic_prefix,
        "CREDITLINK_DEV": os.environ.get("CREDITLINK_DEV", "1"),
    }


def local_broker() -> Broker:
    """The region's broker: the one answering at KAFKA_BOOTSTRAP, or one we start there."""
    bootstrap = _bootstrap()
    port = bootstrap.rpartition(":")[2]
    return Broker(
        bootstrap=bootstrap,
        state_dir=REPO_ROOT / ".cache" / "kafka" / "region",
        port=int(port),
        controller_port=int(port) + 1,
    )


# --- region -------------------------------------------------------------------------------
@region_app.command("up")
def region_up(
    cities: Annotated[
        list[str] | None,
        typer.Argument(help="default: every city of the region file with ops endpoints"),
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for health")] = 120.0,
) -> None:
    """Start the broker (if none answers), certificates, topics and every service of each city."""
    deployment = _deployment()
    broker = local_broker()
    if broker_answers(broker.bootstrap):
        console.print(f"broker     {broker.bootstrap} (already running)")
    else:
        broker.up()
        console.print(f"broker     {broker.bootstrap} (started)")
    procs, late = supervisor.up(
        deployment.region(),
        cities or None,
        bootstrap=broker.bootstrap,
        data_root=supervisor.data_root(broker.bootstrap, deployment.run_dir),
        deployment=deployment,
        timeout_s=timeout,
        report=lambda line: console.print(line, highlight=False),
    )
    _print_status(procs)
    if late:
        console.print(f"[red]not healthy after {timeout:.0f} s: {[p.name for p in late]}[/red]")
        raise typer.Exit(1)


@region_app.command("down")
def region_down(
    keep_broker: Annotated[bool, typer.Option(help="leave Kafka running")] = False,
) -> None:
    """Stop every service process of the local region (and the broker we started)."""
    deployment = _deployment()
    for proc in supervisor.processes(deployment.region(), run_dir=deployment.run_dir):
        if proc.stop():
            console.print(f"stopped    {proc.name}")
    if not keep_broker:
        local_broker().down()
        console.print("broker     stopped")


def _print_status(procs: list[supervisor.Process]) -> bool:
    table = Table("city", "service", "pid", "health", "endpoint")
    all_up = True
    for proc in procs:
        up, detail = supervisor.health(proc)
        all_up &= up
        table.add_row(
            proc.city.key,
            proc.service,
            str(proc.pid() or "-"),
            f"[green]{detail}[/green]" if up else f"[red]{detail}[/red]",
            proc.city.endpoints.get(proc.service, "-"),
        )
    console.print(table)
    return all_up


@region_app.command("status")
def region_status(
    cities: Annotated[list[str] | None, typer.Argument()] = None,
    lag: Annotated[bool, typer.Option(help="also show consumer lag per group")] = True,
) -> None:
    """Health of every service and consumer lag per group. Exit 1 if anything is down."""
    deployment = _deployment()
    region = deployment.region()
    chosen = tuple(cities or supervisor.local_cities(region))
    all_up = _print_status(supervisor.processes(region, chosen, run_dir=deployment.run_dir))
    if lag and broker_answers(_bootstrap(), timeout_s=2.0):
        table = Table("group", "lag (messages)")
        prefixes = tuple(region.city(key).topic_prefix for key in chosen)
        for group, behind in asyncio.run(consumer_lag(_bootstrap(), group_prefixes=prefixes)):
            table.add_row(group, f"{behind:,}")
        console.print(table)
    if not all_up:
        raise typer.Exit(1)


#: A gap between a group's committed offset and the end of a partition wider than this is
#: reported as it is, without reading it to see how much of it is transaction markers.
LAG_READ_LIMIT: Final = 10_000
LAG_READ_SECONDS: Final = 5.0


async def consumer_lag(
    bootstrap: str, *, group_prefixes: tuple[str, ...] = ()
) -> list[tuple[str, int]]:
    """Total lag of each consumer group (those whose id starts with one of
    ``group_prefixes``, when given: a city's groups start with its topic prefix): the
    committed records no member has read yet.

    The end offset of a partition counts transaction commit markers, which no consumer ever
    receives, so a group that has read everything still sits one offset per transaction behind
    it. Where the gap is small enough (``LAG_READ_LIMIT``) it is read, as a read_committed
    consumer sees it, and only the records in it count.
    """
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await admin.start()
    await reader.start()
    try:
        result: list[tuple[str, int]] = []
        for group_id, *_rest in sorted(await admin.list_consumer_groups()):
            if group_prefixes and not group_id.startswith(group_prefixes):
                continue
            committed = await admin.list_consumer_group_offsets(group_id)
            if not committed:
                continue
            # read_committed: the end is the last stable offset (open transactions excluded).
            ends = await reader.end_offsets(list(committed))
            gaps = {
                tp: (meta.offset, ends[tp])
                for tp, meta in committed.items()
                if meta.offset >= 0 and ends[tp] > meta.offset
            }
            result.append((group_id, await _records_in(reader, gaps)))
        return result
    finally:
        await reader.stop()
        await admin.close()


async def _records_in(reader: Any, gaps: dict[Any, tuple[int, int]]) -> int:
    """Records (not markers) between each partition's ``(start, end)`` offsets."""
    total = sum(end - start for start, end in gaps.values() if end - start > LAG_READ_LIMIT)
    read = {tp: span for tp, span in gaps.items() if span[1] - span[0] <= LAG_READ_LIMIT}
    if not read:
        return total
    reader.assign(list(read))
    for tp, (start, _end) in read.items():
        reader.seek(tp, start)
    counted = dict.fromkeys(read, 0)
    open_parts = set(read)
    deadline = asyncio.get_running_loop().time() + LAG_READ_SECONDS
    while open_parts and asyncio.get_running_loop().time() < deadline:
        batches = await reader.getmany(*open_parts, timeout_ms=200)
        for tp, records in batches.items():
            counted[tp] += sum(1 for r in records if r.offset < read[tp][1])
        for tp in list(open_parts):
            if await reader.position(tp) >= read[tp][1]:
                open_parts.discard(tp)
    # A partition not read to its end in time counts its whole gap: never less than true.
    total += sum(read[tp][1] - read[tp][0] if tp in open_parts else counted[tp] for tp in read)
    return total


# --- city -------------------------------------------------------------------------------
@city_app.command("add")
def city_add(
    key: Annotated[str, typer.Option(help="the city's key, e.g. qingpu")],
    code: Annotated[str, typer.Option(help="administrative division code (GB/T 2260)")],
    name: Annotated[
        str | None, typer.Option(help="display name, e.g. 上海青浦 (default: the region file's)")
    ] = None,
    score_scale: Annotated[
        str | None, typer.Option(help="name of the city's personal score (default: <name>信用分)")
    ] = None,
    topic_prefix: Annotated[str | None, typer.Option(help="default: <key>.")] = None,
    host: Annotated[str | None, typer.Option(help="host of its endpoints")] = None,
    grpc_base: Annotated[
        int | None, typer.Option(help="gRPC ports base+1… (default: the next free block)")
    ] = None,
    ops_base: Annotated[
        int | None, typer.Option(help="ops ports base+1… (default: the next free block)")
    ] = None,
) -> None:
    """Make a city a connected node of the region: its region entry and endpoints, a caller
    in the peer policy, a score scale, dev certificates (docs/adding-a-city.md)."""
    from deploy.cities import CityAddError, CityRequest, add_city

    deployment = _deployment()
    request = CityRequest(
        key=key,
        admin_code=code,
        name=name,
        score_scale=score_scale,
        topic_prefix=topic_prefix,
        host=host,
        grpc_base=grpc_base,
        ops_base=ops_base,
    )
    try:
        added = add_city(deployment.config_dir, deployment.cert_dir, request)
    except CityAddError as exc:
        console.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(1) from None
    for line in added.changes or [f"{key} is already a connected city: nothing to change"]:
        console.print(f"added      {line}", highlight=False, soft_wrap=True)
    for line in added.left_to_operator:
        console.print(f"[yellow]review     {line}[/yellow]", highlight=False, soft_wrap=True)
    # Nodes read the region file and the policy when they start: the running ones restart.
    console.print(
        "next       python -m deploy.ops region down --keep-broker"
        " && python -m deploy.ops region up",
        highlight=False,
        soft_wrap=True,
    )


# --- topics -------------------------------------------------------------------------------
@topics_app.command("apply")
def topics_apply(
    city: CityOption = "suzhou",
    check: Annotated[bool, typer.Option(help="exit 1 if drift remains")] = False,
    fix_config: Annotated[bool, typer.Option(help="apply config drift")] = False,
) -> None:
    """Create the city's missing topics from the catalogue and show drift."""
    prefix = _region().city(city).topic_prefix
    args = ["apply", "--prefix", prefix, "--bootstrap", _bootstrap()]
    args += ["--check"] if check else []
    args += ["--fix-config"] if fix_config else []
    raise typer.Exit(_python_module("services.common.topics", *args))


# --- records, lists, scores, alerts, audit, certs ------------------------------------------
@app.command("records-import")
def records_import(
    files: Annotated[list[Path], typer.Argument(help="CSV or JSON Lines, UTF-8 or GB18030")],
    city: CityOption = "suzhou",
) -> None:
    """Import departments' record files into a city's intake (progress bar; safe to re-run)."""
    raise typer.Exit(
        _python_module("services.intake", "import", *map(str, files), env=_city_env(city))
    )


def _channel(caller: str, city: str, service: str) -> Any:
    from services.common.peer import TlsFiles, secure_channel

    target = _region().city(city).endpoint(service)
    return secure_channel(target, TlsFiles.for_city(caller, _deployment().cert_dir))


@app.command("lists-check")
def lists_check(
    subject_key: Annotated[str, typer.Argument(help="L:<USCC> or N:<pseudonym>")],
    city: CityOption = "suzhou",
    scenario: Annotated[str, typer.Option(help="e.g. GOVERNMENT_PROCUREMENT")] = "OTHER",
    consent_token: Annotated[str, typer.Option(help="required for N: subjects")] = "",
) -> None:
    """Region-wide red/black/watch memberships of a subject and the measures that apply."""
    from creditlink.peer.v1 import common_pb2, credit_check_pb2, credit_check_pb2_grpc

    async def check() -> Any:
        async with _channel(city, city, "lists") as channel:
            return await credit_check_pb2_grpc.CreditCheckServiceStub(channel).CheckSubject(
                credit_check_pb2.CheckSubjectRequest(
                    subject_key=subject_key,
                    scenario=credit_check_pb2.Scenario.Value(f"SCENARIO_{scenario.upper()}"),
                    purpose="operator check",
                    consent_token=consent_token,
                ),
                timeout=10,
            )

    answer = asyncio.run(check())
    table = Table("list", "issuer", "status", "objection", "since", "until")
    for m in answer.memberships:
        table.add_row(
            m.list_name or common_pb2.ListType.Name(m.list_type),
            m.issuing_city,
            common_pb2.ListEntryStatus.Name(m.status).removeprefix("LIST_ENTRY_STATUS_"),
            "pending" if m.objection_pending else "-",
            m.effective_from,
            m.expires_at,
        )
    console.print(table)
    for measure in answer.measures:
        console.print(f"measure    {measure.measure_code}: {measure.description}")


@app.command("scores-recognize")
def scores_recognize(
    subject_key: Annotated[str, typer.Argument(help="N:<pseudonym> of the home city")],
    consent_token: Annotated[str, typer.Option(help="issued by the home city")],
    home: Annotated[str, typer.Option(help="the city holding the score")],
    city: CityOption = "wuxi",
    purpose: Annotated[str, typer.Option()] = "operator check",
) -> None:
    """Ask a home city to recognise a person's score on this city's scale."""
    from creditlink.peer.v1 import score_recognition_pb2, score_recognition_pb2_grpc

    async def recognise() -> Any:
        async with _channel(city, home, "scores") as channel:
            stub = score_recognition_pb2_grpc.ScoreRecognitionServiceStub(channel)
            return await stub.RecognizeScore(
                score_recognition_pb2.RecognizeScoreRequest(
                    subject_key=subject_key, consent_token=consent_token, purpose=purpose
                ),
                timeout=10,
            )

    console.print(asyncio.run(recognise()))


@app.command("alerts-tail")
def alerts_tail(
    city: CityOption = "suzhou",
    domain: Annotated[list[str] | None, typer.Option(help="e.g. FOOD_DRUG; repeatable")] = None,
    limit: Annotated[int, typer.Option(help="stop after this many messages (0: follow)")] = 0,
) -> None:
    """Follow a city's supervision alerts and status changes, as a regulator sees them."""
    from creditlink.peer.v1 import alert_exchange_pb2, alert_exchange_pb2_grpc, common_pb2

    async def tail() -> None:
        async with _channel(city, city, "alerts") as channel:
            stream = alert_exchange_pb2_grpc.AlertExchangeServiceStub(channel).SubscribeAlerts(
                alert_exchange_pb2.SubscribeAlertsRequest(
                    domains=[
                        common_pb2.SupervisionDomain.Value(f"SUPERVISION_DOMAIN_{d.upper()}")
                        for d in domain or []
                    ]
                )
            )
            seen = 0
            async for message in stream:
                if message.HasField("alert"):
                    a = message.alert
                    console.print(
                        f"ALERT  {a.alert_id} {a.rule_id} {a.subject_key}: {a.explanation}"
                    )
                else:
                    c = message.status_change
                    status = alert_exchange_pb2.AlertStatus.Name(c.status)
                    console.print(f"STATUS {c.alert_id} {status} by {c.by_city} {c.note}")
                seen += 1
                if limit and seen >= limit:
                    return

    asyncio.run(tail())


@app.command("audit-verify")
def audit_verify(city: CityOption = "suzhou") -> None:
    """Verify the city's audit hash chains; names the position of any tampering."""
    topic = load_settings(_city_env(city)).topic("audit.peer-calls.v1")
    raise typer.Exit(
        _python_module(
            "services.common.audit", "verify", "--bootstrap", _bootstrap(), "--topic", topic
        )
    )


@app.command("certs-issue")
def certs_issue() -> None:
    """Create or renew the dev CA and one certificate per city (deploy/local/certs)."""
    raise typer.Exit(_python_module("services.common.certs", "issue"))


if __name__ == "__main__":
    app()
