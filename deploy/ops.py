"""The operator CLI: one entry point for running and repairing city nodes.

    python -m deploy.ops --help

Commands that talk to a node take ``--city``; its endpoints, topic prefix and certificates
come from the region file (``deploy/config/region.yaml``) and ``deploy/local/certs``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from rich.console import Console
from rich.table import Table

from deploy import region as supervisor
from deploy.broker import REPO_ROOT, Broker, broker_answers
from services.common.pseudonym import DEV_REGION_KEY, PseudonymKeyError, load_region_key
from services.common.region import Region
from services.common.roles import Role
from services.common.settings import load_settings
from services.common.topic_names import AUDIT_TOPIC
from services.common.topics import DEFAULT_PROFILE

if TYPE_CHECKING:
    from services.common.peer import OutboundChains

console = Console()
errors = Console(stderr=True)
DEFAULT_BOOTSTRAP = "127.0.0.1:19092"


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
def region_up(cities: list[str], timeout: float) -> int:
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
        return 1
    return 0


def region_down(keep_broker: bool) -> int:
    """Stop every service process of the local region (and the broker we started)."""
    deployment = _deployment()
    for proc in supervisor.processes(deployment.region(), run_dir=deployment.run_dir):
        if proc.stop():
            console.print(f"stopped    {proc.name}")
    if not keep_broker:
        local_broker().down()
        console.print("broker     stopped")
    return 0


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


def region_status(cities: list[str], lag: bool) -> int:
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
    return 0 if all_up else 1


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
def city_add(
    key: str,
    code: str,
    name: str | None,
    score_scale: str | None,
    topic_prefix: str | None,
    host: str | None,
    grpc_base: int | None,
    ops_base: int | None,
) -> int:
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
        return 1
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
    return 0


# --- topics -------------------------------------------------------------------------------
def topics_apply(city: str, check: bool, fix_config: bool, replication: str) -> int:
    """Create the city's missing topics from the catalogue and show drift."""
    prefix = _region().city(city).topic_prefix
    args = ["apply", "--prefix", prefix, "--bootstrap", _bootstrap()]
    args += ["--replication", replication]
    args += ["--check"] if check else []
    args += ["--fix-config"] if fix_config else []
    return _python_module("services.common.topics", *args)


# --- records, lists, scores, alerts, audit, certs ------------------------------------------
def records_import(files: list[Path], city: str, dev: bool = False) -> int:
    """Import departments' record files into a city's intake (progress bar; safe to re-run).

    Subjects who are persons are pseudonymised under the region key
    (``CREDITLINK_PSEUDONYM_KEY`` or ``CREDITLINK_PSEUDONYM_KEY_FILE``). The published
    development key is used only when asked for (``--dev`` or ``CREDITLINK_DEV=1``): its
    pseudonyms can be reversed by anyone, so a real import without the key stops here.
    """
    env = _city_env(city)
    if dev:
        env["CREDITLINK_DEV"] = "1"
    try:
        key = load_region_key(env)
    except PseudonymKeyError as exc:
        errors.print(f"records-import: {exc}", markup=False, highlight=False)
        return 2
    if key == DEV_REGION_KEY:
        errors.print(
            "[bold red]WARNING: the published development pseudonym key is in use; anyone can"
            " reverse these pseudonyms. Never import real records this way.[/bold red]"
        )
    return _python_module("services.intake", "import", *map(str, files), env=env)


#: The operator CLI's OUTBOUND chain on each calling city's audit topic (docs/trust.md,
#: "Receipts"): a chain of its own, never one of the city's node.
OPERATOR_CHAIN: Final = "operator"


def _operator_chains(*cities: str) -> OutboundChains:
    """The ``operator`` chain of each of ``cities`` (the calling ones): every call a command
    makes as one of their nodes, departments or regulators is recorded there with the
    callee's receipt before the command sees the answer. Its lock files are in the
    deployment's run folder, so two commands at once take turns on the chain."""
    from services.common.peer import OutboundChains

    deployment = _deployment()
    return OutboundChains(
        deployment.region(),
        chain=OPERATOR_CHAIN,
        cert_dir=deployment.cert_dir,
        lock_dir=deployment.run_dir / "audit-locks",
        settings_of=lambda city: load_settings(_city_env(city)),
        cities=cities,
    )


def _regulator(city: str, code: str | None, domains: list[str]) -> Role:
    """The regulator of ``city`` whose certificate to follow alerts with: by its code, or
    the first of city-roles.yaml acting in every one of ``domains``."""
    from services.common.roles import load_city_roles

    roles = load_city_roles(
        _deployment().config_dir / "city-roles.yaml", cities=_region().cities.keys()
    )
    wanted = {d.upper() for d in domains}
    if (role := roles.regulator_for(city, wanted, code)) is not None:
        return role
    raise SystemExit(
        f"no regulator of {city} in city-roles.yaml"
        + (f" with code {code}" if code else "")
        + (f" acting in {', '.join(sorted(wanted))}" if wanted else "")
    )


def lists_check(subject_key: str, city: str, scenario: str, consent_token: str) -> int:
    """Region-wide red/black/watch memberships of a subject and the measures that apply."""
    from creditlink.peer.v1 import common_pb2, credit_check_pb2, credit_check_pb2_grpc

    async def check() -> Any:
        async with _operator_chains(city) as chains:
            channel = chains.channel(city, city, "lists")
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
    return 0


def scores_recognize(
    subject_key: str, consent_token: str, home: str, city: str, purpose: str
) -> int:
    """Ask a home city to recognise a person's score on this city's scale."""
    from creditlink.peer.v1 import score_recognition_pb2, score_recognition_pb2_grpc

    async def recognise() -> Any:
        async with _operator_chains(city) as chains:
            channel = chains.channel(city, home, "scores")
            stub = score_recognition_pb2_grpc.ScoreRecognitionServiceStub(channel)
            return await stub.RecognizeScore(
                score_recognition_pb2.RecognizeScoreRequest(
                    subject_key=subject_key, consent_token=consent_token, purpose=purpose
                ),
                timeout=10,
            )

    console.print(asyncio.run(recognise()))
    return 0


def alerts_tail(city: str, domain: list[str], limit: int, regulator: str | None = None) -> int:
    """Follow a city's supervision alerts and status changes, as a regulator sees them (with
    the regulator's certificate: only the alerts of its domains)."""
    from creditlink.peer.v1 import alert_exchange_pb2, alert_exchange_pb2_grpc, common_pb2

    role = _regulator(city, regulator, domain)

    async def tail() -> None:
        async with _operator_chains(role.city) as chains:
            channel = chains.channel(role, city, "alerts")
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
    return 0


def _audit_topic(city: str) -> list[str]:
    """The broker and the physical audit topic of ``city``, as the audit commands take them."""
    topic = load_settings(_city_env(city)).topic(AUDIT_TOPIC)
    return ["--bootstrap", _bootstrap(), "--topic", topic]


def audit_verify(city: str, against_peers: bool = False, receipts: bool = False) -> int:
    """Verify the city's audit hash chains and signatures; names the position of any
    tampering. With ``against_peers`` also against the signed heads its peers hold; with
    ``receipts`` against every other city's chain, by the receipts each side keeps, and
    against its own (the calls its operator CLI made to its own node)."""
    deployment = _deployment()
    others = [
        ["--receipts-with", load_settings(_city_env(key)).topic(AUDIT_TOPIC)]
        for key in (city, *(peer.key for peer in _region().peers_of(city)))
    ]
    return _python_module(
        "services.common.audit",
        "verify",
        *_audit_topic(city),
        "--keys",
        str(deployment.cert_dir),
        "--region",
        str(deployment.region_file),
        *(["--against-peers", "--city", city] if against_peers else []),
        *([arg for pair in others for arg in pair] if receipts else []),
    )


def audit_query(city: str, subject: str, since: str | None, until: str | None) -> int:
    """Who checked a subject at a city's node: when, from which city and role, for which
    purpose (the calls about it on the city's audit topic)."""
    extra = [*(["--since", since] if since else []), *(["--until", until] if until else [])]
    return _python_module(
        "services.common.audit", "query", *_audit_topic(city), "--subject", subject, *extra
    )


def audit_export(city: str, since: str, until: str, out: Path | None) -> int:
    """Export China days of the city's audit as one file signed with its audit key, which
    anyone with the published keys can check offline (docs/audit-export.md)."""
    deployment = _deployment()
    out = out or Path(f"{city}.audit.{since}_{until}.jsonl")
    return _python_module(
        "services.common.audit",
        "export",
        *_audit_topic(city),
        "--since",
        since,
        "--until",
        until,
        "--key",
        str(deployment.cert_dir),
        "--city",
        city,
        "--region",
        str(deployment.region_file),
        "--out",
        str(out.resolve()),  # the module runs in the repository, not where we were called
    )


def audit_verify_export(bundle: Path) -> int:
    """Check an audit export offline: its manifest signature, its records and every chain in
    it, with the cities' published audit keys."""
    deployment = _deployment()
    return _python_module(
        "services.common.audit",
        "verify-export",
        "--keys",
        str(deployment.cert_dir),
        "--region",
        str(deployment.region_file),
        str(bundle.resolve()),
    )


def pseudonym_key_id() -> int:
    """Print the id of the pseudonym key the environment gives (for region.pseudonym_key_ids)."""
    from services.common.pseudonym import PseudonymKeyError, key_id_of, load_region_key

    try:
        print(key_id_of(load_region_key()))
    except PseudonymKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def certs_issue() -> int:
    """Create or renew the dev root CA, a CA and a certificate per city (deploy/local/certs)."""
    return _python_module("services.common.certs", "issue")


# --- the command line -------------------------------------------------------------------


def _city(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--city", "-c", default=default, help=f"city key from the region file ({default})"
    )


def _flag(parser: argparse.ArgumentParser, name: str, default: bool, help: str) -> None:
    parser.add_argument(
        f"--{name}", action=argparse.BooleanOptionalAction, default=default, help=help
    )


def _first_line(function: Any) -> str:
    return str(function.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.ops",
        description=str(__doc__).strip().split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    groups = parser.add_subparsers(dest="group", metavar="COMMAND")

    region = groups.add_parser("region", help="start, stop and watch the local region")
    region_commands = region.add_subparsers(dest="command", metavar="COMMAND", required=True)
    up = region_commands.add_parser("up", help=_first_line(region_up))
    up.add_argument(
        "cities", nargs="*", help="default: every city of the region file with ops endpoints"
    )
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for health")
    up.set_defaults(run=lambda a: region_up(a.cities, a.timeout))
    down = region_commands.add_parser("down", help=_first_line(region_down))
    _flag(down, "keep-broker", False, "leave Kafka running")
    down.set_defaults(run=lambda a: region_down(a.keep_broker))
    status = region_commands.add_parser("status", help=_first_line(region_status))
    status.add_argument("cities", nargs="*")
    _flag(status, "lag", True, "also show consumer lag per group")
    status.set_defaults(run=lambda a: region_status(a.cities, a.lag))

    topics = groups.add_parser("topics", help="topics from the catalogue")
    topics_commands = topics.add_subparsers(dest="command", metavar="COMMAND", required=True)
    apply = topics_commands.add_parser("apply", help=_first_line(topics_apply))
    _city(apply, "suzhou")
    _flag(apply, "check", False, "exit 1 if drift remains")
    _flag(apply, "fix-config", False, "apply config drift")
    apply.add_argument(
        "--replication",
        default=DEFAULT_PROFILE,
        metavar="PROFILE",
        help="the catalogue's replication profile: development (one broker) or production",
    )
    apply.set_defaults(run=lambda a: topics_apply(a.city, a.check, a.fix_config, a.replication))

    city = groups.add_parser("city", help="cities of the region")
    city_commands = city.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add = city_commands.add_parser("add", help=_first_line(city_add))
    add.add_argument("--key", required=True, help="the city's key, e.g. qingpu")
    add.add_argument("--code", required=True, help="administrative division code (GB/T 2260)")
    add.add_argument("--name", help="display name, e.g. 上海青浦 (default: the region file's)")
    add.add_argument(
        "--score-scale", help="name of the city's personal score (default: <name>信用分)"
    )
    add.add_argument("--topic-prefix", help="default: <key>.")
    add.add_argument("--host", help="host of its endpoints")
    add.add_argument(
        "--grpc-base", type=int, help="gRPC ports base+1… (default: the next free block)"
    )
    add.add_argument(
        "--ops-base", type=int, help="ops ports base+1… (default: the next free block)"
    )
    add.set_defaults(
        run=lambda a: city_add(
            a.key, a.code, a.name, a.score_scale, a.topic_prefix, a.host, a.grpc_base, a.ops_base
        )
    )

    records = groups.add_parser("records-import", help=_first_line(records_import))
    records.add_argument("files", nargs="+", type=Path, help="CSV or JSON Lines, UTF-8 or GB18030")
    _city(records, "suzhou")
    records.add_argument(
        "--dev",
        action="store_true",
        help="use the published development pseudonym key (demo data only)",
    )
    records.set_defaults(run=lambda a: records_import(a.files, a.city, a.dev))

    check = groups.add_parser("lists-check", help=_first_line(lists_check))
    check.add_argument("subject_key", help="L:<USCC> or N:<pseudonym>")
    _city(check, "suzhou")
    check.add_argument("--scenario", default="OTHER", help="e.g. GOVERNMENT_PROCUREMENT")
    check.add_argument("--consent-token", default="", help="required for N: subjects")
    check.set_defaults(
        run=lambda a: lists_check(a.subject_key, a.city, a.scenario, a.consent_token)
    )

    recognize = groups.add_parser("scores-recognize", help=_first_line(scores_recognize))
    recognize.add_argument("subject_key", help="N:<pseudonym> of the home city")
    recognize.add_argument("--consent-token", required=True, help="issued by the home city")
    recognize.add_argument("--home", required=True, help="the city holding the score")
    _city(recognize, "wuxi")
    recognize.add_argument("--purpose", default="operator check")
    recognize.set_defaults(
        run=lambda a: scores_recognize(a.subject_key, a.consent_token, a.home, a.city, a.purpose)
    )

    tail = groups.add_parser("alerts-tail", help=_first_line(alerts_tail))
    _city(tail, "suzhou")
    tail.add_argument("--domain", action="append", default=[], help="e.g. FOOD_DRUG; repeatable")
    tail.add_argument(
        "--limit", type=int, default=0, help="stop after this many messages (0: follow)"
    )
    tail.add_argument(
        "--regulator",
        help="the regulator's unified social credit code (default: the first of "
        "city-roles.yaml acting in the --domain given)",
    )
    tail.set_defaults(run=lambda a: alerts_tail(a.city, a.domain, a.limit, a.regulator))

    verify = groups.add_parser("audit-verify", help=_first_line(audit_verify))
    _city(verify, "suzhou")
    verify.add_argument(
        "--against-peers",
        action="store_true",
        help="also check against the signed heads the city's peers hold",
    )
    verify.add_argument(
        "--receipts",
        action="store_true",
        help="also check the receipts each side keeps against every other city's chain",
    )
    verify.set_defaults(run=lambda a: audit_verify(a.city, a.against_peers, a.receipts))

    query = groups.add_parser("audit-query", help=_first_line(audit_query))
    _city(query, "suzhou")
    query.add_argument("--subject", required=True, help="L:<USCC> or N:<pseudonym>")
    query.add_argument("--since", help="first China day, YYYY-MM-DD")
    query.add_argument("--until", help="last China day, YYYY-MM-DD")
    query.set_defaults(run=lambda a: audit_query(a.city, a.subject, a.since, a.until))

    export = groups.add_parser("audit-export", help=_first_line(audit_export))
    _city(export, "suzhou")
    export.add_argument("--since", required=True, help="first China day, YYYY-MM-DD")
    export.add_argument("--until", required=True, help="last China day, YYYY-MM-DD")
    export.add_argument(
        "--out", type=Path, help="the file to write (default: <city>.audit.<since>_<until>.jsonl)"
    )
    export.set_defaults(run=lambda a: audit_export(a.city, a.since, a.until, a.out))

    verify_export = groups.add_parser("audit-verify-export", help=_first_line(audit_verify_export))
    verify_export.add_argument("bundle", type=Path, help="the file audit-export wrote")
    verify_export.set_defaults(run=lambda a: audit_verify_export(a.bundle))

    key_id = groups.add_parser("pseudonym-key-id", help=_first_line(pseudonym_key_id))
    key_id.set_defaults(run=lambda a: pseudonym_key_id())

    certs = groups.add_parser("certs-issue", help=_first_line(certs_issue))
    certs.set_defaults(run=lambda a: certs_issue())
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
