"""Lists figures, each next to a baseline measured in the same run on this machine.

Two city nodes (Suzhou, Wuxi) run as real processes on the run's broker, over mTLS.

- **propagation**: list decisions published onto Suzhou's ``credit.records.v1`` at 500/s; for
  every twentieth one, the time until Wuxi's ``CheckSubject`` returns it (polled every 10 ms).
  Baseline: one plain Kafka hop (produce → a consumer receives it) on the same broker at the
  same rate — the path under test has two such hops plus a gRPC stream. A second row puts
  the p99 against the 1 s target.
- **CheckSubject**: QPS and p50/p99 with 16 concurrent callers against Wuxi, each caller on
  a connection of its own, versus a trivial grpc.aio unary echo (one process, the same mTLS
  certificates, same payload size, called the same way). A second row compares with an
  empty CheckSubject behind the same security kit (authorization and the audit chain,
  ``services/common/peer/``), which splits the kit's
  cost from the lists service's own, and a third row the same empty CheckSubject without the
  audit chain, which splits the evidence path (a durable, signed record and a receipt per
  call) from the rest of the kit.
- **CheckSubjects**: subjects/s in batches of 500, versus the unary CheckSubject QPS.

    python -m bench lists            # or: make bench
    python -m bench.bench_lists echo PORT TLS_DIR   # the echo baseline server (used by the bench)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench.capacity import kafka_hop
from bench.harness import BenchContext, Comparison, benchmark, percentile
from creditlink.peer.v1 import credit_check_pb2, credit_check_pb2_grpc
from services.common.audit import AUDIT_TOPIC, AuditChainWriter
from services.common.audit.signing import load_audit_signer
from services.common.avro import AvroSerde
from services.common.consent import ConsentKeyring
from services.common.kafka import make_producer
from services.common.peer import (
    PeerSecurity,
    ServiceBinding,
    TlsFiles,
    secure_channel,
    start_peer_server,
)
from services.common.policy import load_policy
from services.common.region import load_region
from services.common.settings import REPO_ROOT, PeerLimits, load_settings
from services.common.topics import load_catalogue, provision
from tests.kit.lists import list_decision, organisation_key
from tests.kit.lists_region import ListsRegion, free_port

CALLERS = 16
BATCH = 500
#: Each caller on a connection of its own, as separate clients are: channels of one process
#: to one target otherwise share a single connection.
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)
ECHO_METHOD = "/creditlink.bench.v1.EchoService/Echo"
#: The echo server, the in-process kit server and the node the checks go to are Wuxi's.
SERVER_CITY = "wuxi"
#: The kit echo's chain argument that serves it without the audit chain.
NO_AUDIT = "none"


# --- the echo baseline servers --------------------------------------------------------------


class KitEcho(credit_check_pb2_grpc.CreditCheckServiceServicer):
    """CheckSubject that answers nothing, behind the node's full security kit."""

    async def CheckSubject(
        self, request: credit_check_pb2.CheckSubjectRequest, context: grpc.aio.ServicerContext
    ) -> credit_check_pb2.CheckSubjectResponse:
        return credit_check_pb2.CheckSubjectResponse(subject_key=request.subject_key)

    async def CheckSubjects(
        self, request: credit_check_pb2.CheckSubjectsRequest, context: grpc.aio.ServicerContext
    ) -> credit_check_pb2.CheckSubjectsResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not part of the baseline")
        raise AssertionError("abort returned")


async def _echo(request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
    return request


async def serve_echo(port: int, tls_dir: Path) -> None:
    """A trivial grpc.aio unary echo behind the same mTLS as a city node (no guard)."""
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "creditlink.bench.v1.EchoService",
        {"Echo": grpc.unary_unary_rpc_method_handler(_echo)},
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_secure_port(
        f"127.0.0.1:{port}", TlsFiles.for_city("wuxi", tls_dir).server_credentials()
    )
    await server.start()
    await server.wait_for_termination()


async def serve_kit_echo(
    port: int, tls_dir: Path, bootstrap: str, prefix: str, chain: str | None = "bench"
) -> None:
    """An empty CheckSubject behind ``start_peer_server``: mTLS, authorization and the audit
    chain on Kafka, exactly as a city node serves it. Splits the kit's cost from ours.
    ``chain=None`` serves it without the audit chain (no record, no receipt), which splits the
    evidence path's cost from the rest of the kit's."""
    settings = load_settings(
        {"CREDITLINK_CITY": "wuxi", "KAFKA_BOOTSTRAP": bootstrap, "CREDITLINK_TOPIC_PREFIX": prefix}
    )
    region = load_region(settings.region_file)
    audit: AuditChainWriter | None = None
    if chain is not None:
        producer = make_producer(settings, client_id="bench-kit")
        await producer.start()
        # The audit chain as a lists node writes it, signed heads included.
        audit = AuditChainWriter(
            settings,
            AvroSerde(),
            producer,
            node_city="320200",
            chain=chain,
            signer=load_audit_signer(tls_dir, "wuxi", "320200"),
        )
        await audit.start()
    security = PeerSecurity(
        city="wuxi",
        region=region,
        policy=load_policy(cities=region.cities.keys()),
        keyring=ConsentKeyring(),
    )
    server = await start_peer_server(
        bind=f"127.0.0.1:{port}",
        tls=TlsFiles.for_city("wuxi", tls_dir),
        services=[
            ServiceBinding(
                KitEcho(),
                credit_check_pb2_grpc.add_CreditCheckServiceServicer_to_server,
                "creditlink.peer.v1.CreditCheckService",
            )
        ],
        security=security,
        audit=audit,
        # One city's callers on purpose: the per-city rate would cap the figure measured.
        limits=PeerLimits(caller_rate=1e9, caller_burst=10**9, max_calls_per_caller=10**6),
    )
    await server.server.wait_for_termination()


# --- load -------------------------------------------------------------------------------------


async def _closed_loop(
    call: Callable[[int], Awaitable[object]], *, callers: int, seconds: float
) -> tuple[int, list[float], float]:
    """``callers`` coroutines calling back to back for ``seconds``.

    Returns (calls, latencies in seconds, elapsed seconds).
    """
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def caller(index: int) -> None:
        n = index
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await call(n)
            latencies.append(time.perf_counter() - started)
            n += callers

    start = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    return len(latencies), latencies, time.perf_counter() - start


def _stat_fields(pid: int | str) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (the 3rd field is first)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time so far of a process and of its live descendants, from Linux
    ``/proc``; None elsewhere."""
    try:
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    parents[int(entry.name)] = int(_stat_fields(entry.name)[1])
        family, grew = {pid}, True
        while grew:
            found = {child for child, parent in parents.items() if parent in family}
            grew = not found <= family
            family |= found
        ticks = 0
        for member in family:
            with contextlib.suppress(OSError):
                fields = _stat_fields(member)
                ticks += int(fields[11]) + int(fields[12])
    except OSError:
        return None
    if pid not in parents:
        return None
    return ticks / os.sysconf("SC_CLK_TCK")


class Load:
    """Calls, latencies, time and the serving processes' CPU of one contender, over rounds."""

    def __init__(self, server_pids: list[int] | None = None) -> None:
        self.calls = 0
        self.latencies: list[float] = []
        self.elapsed = 0.0
        self.server_pids = server_pids or []
        self.server_cpu: float | None = 0.0 if self.server_pids else None

    def add(self, calls: int, latencies: list[float], elapsed: float) -> None:
        self.calls += calls
        self.latencies.extend(latencies)
        self.elapsed += elapsed

    def _cpu(self) -> float | None:
        seconds = [process_cpu_seconds(pid) for pid in self.server_pids]
        return None if not seconds or None in seconds else sum(s or 0.0 for s in seconds)

    async def measure(self, load: Awaitable[tuple[int, list[float], float]]) -> None:
        before = self._cpu()
        self.add(*await load)
        after = self._cpu()
        if before is None or after is None or self.server_cpu is None:
            self.server_cpu = None
        else:
            self.server_cpu += after - before

    def cpu_per_call_us(self) -> float | None:
        if self.server_cpu is None or not self.calls:
            return None
        return self.server_cpu / self.calls * 1e6

    def totals(self) -> tuple[int, list[float], float]:
        return self.calls, self.latencies, self.elapsed


async def _wait_for_echo(target: str, tls: TlsFiles) -> None:
    for _ in range(100):
        async with secure_channel(target, tls, expect_city=SERVER_CITY, service="lists") as channel:
            try:
                await channel.unary_unary(ECHO_METHOD)(b"ping", timeout=1)
                return
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.1)
    raise RuntimeError("the echo server did not start")


# --- the benchmark ----------------------------------------------------------------------------


@benchmark("lists")
async def lists(ctx: BenchContext) -> list[Comparison]:
    seconds = 1.5 if ctx.quick else 5.0
    region = ListsRegion(
        ctx.scratch / "lists",
        ctx.kafka_bootstrap,
        cities=("suzhou", "wuxi"),
        reconcile_seconds=600,
    )
    await region.provision()
    region.start_all()
    echo_port, kit_port, bare_port = free_port(), free_port(), free_port()
    tls_dir = str(region.tls_dir)
    kit_prefix = region.nodes["wuxi"].settings.topic_prefix.replace("wuxi.", "kit.")
    await provision(
        ctx.kafka_bootstrap,
        [spec for spec in load_catalogue() if spec.name == AUDIT_TOPIC],
        prefix=kit_prefix,
    )
    servers = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.bench_lists", *arguments, cwd=REPO_ROOT
        )
        for arguments in (
            ["echo", str(echo_port), tls_dir],
            ["kit-echo", str(kit_port), tls_dir, ctx.kafka_bootstrap, kit_prefix, "bench"],
            ["kit-echo", str(bare_port), tls_dir, ctx.kafka_bootstrap, kit_prefix, NO_AUDIT],
        )
    ]
    try:
        await region.wait_ready()
        rows = await _propagation(region, seconds)
        wuxi = region.nodes["wuxi"].process
        pids = {
            "check": [wuxi.pid] if wuxi is not None else [],
            "echo": [servers[0].pid],
            "kit": [servers[1].pid],
            "bare": [servers[2].pid],
        }
        rows += await _checks(region, seconds, echo_port, kit_port, bare_port, pids)
    finally:
        for server in servers:
            server.terminate()
            await asyncio.wait_for(server.wait(), 10)
        await region.close()
    return rows


async def _visible(stub: Any, subject: str, *, poll: float) -> None:
    request = credit_check_pb2.CheckSubjectRequest(subject_key=subject, purpose="bench")
    for _ in range(int(60 / poll)):
        if (await stub.CheckSubject(request, timeout=10)).memberships:
            return
        await asyncio.sleep(poll)
    raise RuntimeError(f"{subject} never became visible in Wuxi")


async def _propagation(region: ListsRegion, seconds: float) -> list[Comparison]:
    rate, sample_every, poll = 500.0, 20, 0.01
    total = int(rate * seconds * 2)
    channel = region.channel("suzhou", "wuxi")
    stub = region.check_stub(channel)
    # Warm up: Wuxi's mirror is connected to Suzhou's stream before the clock runs.
    warm = list_decision(organisation_key(999_999), decision_number="苏市监信〔2024〕预热号")
    await region.publish("suzhou", [warm])
    await _visible(stub, organisation_key(999_999), poll=0.05)
    records = [
        list_decision(organisation_key(n), decision_number=f"苏市监信〔2024〕压{n}号")
        for n in range(total)
    ]
    latencies: list[float] = []

    async def watch(subject: str, published: float) -> None:
        await _visible(stub, subject, poll=poll)
        latencies.append(time.perf_counter() - published)

    pollers: list[asyncio.Task[None]] = []
    step = 25  # 25 records every 50 ms = 500/s
    started = time.perf_counter()
    for first in range(0, total, step):
        batch = records[first : first + step]
        await region.publish("suzhou", batch)
        now = time.perf_counter()
        for n, record in enumerate(batch, start=first):
            if n % sample_every == 0:
                pollers.append(asyncio.create_task(watch(record["subject"]["subject_key"], now)))
        await asyncio.sleep(max(0.0, started + (first + step) / rate - time.perf_counter()))
    await asyncio.wait_for(asyncio.gather(*pollers), 120)
    await channel.close()
    hop = await kafka_hop(region.bootstrap, rate=rate, seconds=len(latencies) / rate)
    p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
    hop50, hop99 = percentile(hop, 50) * 1000, percentile(hop, 99) * 1000
    label = f"propagation Suzhou→Wuxi CheckSubject @500/s (n={len(latencies)})"
    return [
        Comparison(f"{label} p50", p50, hop50, "ms", "one Kafka hop p50", higher_is_better=False),
        Comparison(f"{label} p99", p99, hop99, "ms", "one Kafka hop p99", higher_is_better=False),
        Comparison(
            "propagation p99 against the 1 s budget",
            p99,
            1000.0,
            "ms",
            "1 s target",
            target=1.0,
            higher_is_better=False,
        ),
    ]


@dataclass(frozen=True)
class Contender:
    name: str
    call: Callable[[int], Awaitable[object]]
    callers: int = CALLERS
    warm_up: bool = True


async def _interleaved(
    contenders: Sequence[Contender], seconds: float, pids: Mapping[str, list[int]]
) -> dict[str, Load]:
    """Each contender warmed up, then measured in interleaved short rounds: this machine is
    shared, so drift in its load hits every contender alike, instead of one long run each.
    ``pids`` names the serving processes whose CPU a contender's rows report."""
    for contender in contenders:
        if contender.warm_up:
            await _closed_loop(contender.call, callers=contender.callers, seconds=0.5)
    measured = {c.name: Load(pids.get(c.name)) for c in contenders}
    rounds = 2 if seconds < 2 else 5
    for _ in range(rounds):
        for contender in contenders:
            await measured[contender.name].measure(
                _closed_loop(contender.call, callers=contender.callers, seconds=seconds / rounds)
            )
    return measured


def _connections(target: str, tls: TlsFiles) -> list[grpc.aio.Channel]:
    """One connection per caller."""
    return [
        secure_channel(
            target, tls, expect_city=SERVER_CITY, service="lists", options=OWN_CONNECTION
        )
        for _ in range(CALLERS)
    ]


def _check_request(n: int) -> credit_check_pb2.CheckSubjectRequest:
    """Half of the subjects are on Suzhou's black list (mirrored to Wuxi), half unknown."""
    return credit_check_pb2.CheckSubjectRequest(
        subject_key=organisation_key(n if n % 2 else 500_000 + n),
        scenario=credit_check_pb2.SCENARIO_GOVERNMENT_PROCUREMENT,
        purpose="bench",
    )


async def _checks(
    region: ListsRegion,
    seconds: float,
    echo_port: int,
    kit_port: int,
    bare_port: int,
    pids: dict[str, list[int]],
) -> list[Comparison]:
    # Built before the clock, as the echo's payload is: the callers only call.
    requests = [_check_request(n) for n in range(2000)]
    subjects = [r.subject_key for r in requests]
    payload = requests[0].SerializeToString()
    tls = region.tls("suzhou")
    echo_target, kit_target = f"127.0.0.1:{echo_port}", f"127.0.0.1:{kit_port}"
    channels = _connections(region.nodes["wuxi"].target, tls)
    stubs = [region.check_stub(c) for c in channels]
    await _wait_for_echo(echo_target, tls)
    echo_channels = _connections(echo_target, tls)
    echoes: list[Any] = [c.unary_unary(ECHO_METHOD) for c in echo_channels]
    kit_channels = _connections(kit_target, tls)
    kit_stubs = [credit_check_pb2_grpc.CreditCheckServiceStub(c) for c in kit_channels]
    await _wait_for_kit(kit_stubs[0])
    bare_channels = _connections(f"127.0.0.1:{bare_port}", tls)
    bare_stubs = [credit_check_pb2_grpc.CreditCheckServiceStub(c) for c in bare_channels]
    await _wait_for_kit(bare_stubs[0])

    async def check(n: int) -> object:
        return await stubs[n % len(stubs)].CheckSubject(requests[n % len(requests)], timeout=10)

    async def echo(n: int) -> object:
        return await echoes[n % len(echoes)](payload, timeout=10)

    async def kit_echo(n: int) -> object:
        return await kit_stubs[n % len(kit_stubs)].CheckSubject(
            requests[n % len(requests)], timeout=10
        )

    async def bare_echo(n: int) -> object:
        return await bare_stubs[n % len(bare_stubs)].CheckSubject(
            requests[n % len(requests)], timeout=10
        )

    async def check_batch(n: int) -> object:
        first = (n * BATCH) % len(subjects)
        batch = credit_check_pb2.CheckSubjectsRequest(
            subjects=[
                credit_check_pb2.SubjectQuery(subject_key=subjects[(first + i) % len(subjects)])
                for i in range(BATCH)
            ],
            scenario=credit_check_pb2.SCENARIO_GOVERNMENT_PROCUREMENT,
            purpose="bench",
        )
        return await stubs[n % len(stubs)].CheckSubjects(batch, timeout=30)

    measured = await _interleaved(
        [
            Contender("check", check),
            Contender("echo", echo),
            Contender("kit", kit_echo),
            Contender("bare", bare_echo),
            Contender("batch", check_batch, callers=4, warm_up=False),
        ],
        seconds,
        pids,
    )
    calls, lat, elapsed = measured["check"].totals()
    echo_calls, echo_lat, echo_elapsed = measured["echo"].totals()
    kit_calls, _kit_lat, kit_elapsed = measured["kit"].totals()
    batches, _batch_lat, batch_elapsed = measured["batch"].totals()
    bare_calls, _bare_lat, bare_elapsed = measured["bare"].totals()
    for channel in (*channels, *echo_channels, *kit_channels, *bare_channels):
        await channel.close()
    qps = calls / elapsed
    subjects_per_second = batches * BATCH / batch_elapsed
    return [
        Comparison(
            f"CheckSubject QPS, {CALLERS} callers",
            qps,
            echo_calls / echo_elapsed,
            "req/s",
            "grpc.aio unary echo, same mTLS",
            target=0.7,
        ),
        Comparison(
            f"CheckSubject QPS, {CALLERS} callers",
            qps,
            kit_calls / kit_elapsed,
            "req/s",
            "empty CheckSubject, same kit",
            notes="same mTLS, authorization and audit chain: the lists service's own cost",
        ),
        Comparison(
            f"empty CheckSubject QPS, {CALLERS} callers",
            kit_calls / kit_elapsed,
            bare_calls / bare_elapsed,
            "req/s",
            "the same without the audit chain",
            notes="the evidence path's cost: a durable, signed record and a receipt per call",
        ),
        *_cpu_rows(measured),
        Comparison(
            "CheckSubject p50",
            percentile(lat, 50) * 1000,
            percentile(echo_lat, 50) * 1000,
            "ms",
            "echo p50",
            higher_is_better=False,
        ),
        Comparison(
            "CheckSubject p99",
            percentile(lat, 99) * 1000,
            percentile(echo_lat, 99) * 1000,
            "ms",
            "echo p99",
            higher_is_better=False,
        ),
        Comparison(
            f"CheckSubjects subjects/s, batches of {BATCH}",
            subjects_per_second,
            qps,
            "subj/s",
            "unary CheckSubject QPS",
            target=20.0,
        ),
    ]


def _cpu_rows(measured: dict[str, Load]) -> list[Comparison]:
    """The serving process's CPU per call: steadier than QPS on a shared machine, and it
    says where a gap comes from."""
    check, echo, kit, bare = (
        measured[name].cpu_per_call_us() for name in ("check", "echo", "kit", "bare")
    )
    if check is None or echo is None or kit is None or bare is None:
        return []
    return [
        Comparison(
            "server CPU per CheckSubject",
            check,
            echo,
            "µs",
            "echo server CPU per call",
            higher_is_better=False,
        ),
        Comparison(
            "server CPU per CheckSubject",
            check,
            kit,
            "µs",
            "empty CheckSubject, same kit",
            higher_is_better=False,
        ),
        Comparison(
            "server CPU per empty CheckSubject",
            kit,
            bare,
            "µs",
            "the same without the audit chain",
            higher_is_better=False,
        ),
        Comparison(
            "server CPU per empty CheckSubject, no audit chain",
            bare,
            echo,
            "µs",
            "echo server CPU per call",
            higher_is_better=False,
        ),
    ]


async def _wait_for_kit(stub: Any) -> None:
    for _ in range(200):
        try:
            await stub.CheckSubject(
                credit_check_pb2.CheckSubjectRequest(
                    subject_key="L:91320500MA1W8XY409", purpose="w"
                ),
                timeout=1,
            )
            return
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.1)
    raise RuntimeError("the kit echo server did not start")


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "echo":
        asyncio.run(serve_echo(int(argv[1]), Path(argv[2])))
        return 0
    if len(argv) == 6 and argv[0] == "kit-echo":
        chain = None if argv[5] == NO_AUDIT else argv[5]
        asyncio.run(serve_kit_echo(int(argv[1]), Path(argv[2]), argv[3], argv[4], chain))
        return 0
    print(
        "usage: python -m bench.bench_lists echo PORT TLS_DIR\n"
        "       python -m bench.bench_lists kit-echo PORT TLS_DIR BOOTSTRAP TOPIC_PREFIX CHAIN"
        f"  ({NO_AUDIT} for no audit chain)",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
