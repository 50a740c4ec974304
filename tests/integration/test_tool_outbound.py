"""The operator CLI and the demo's scenario client record their calls as the calling city does:
each call an OUTBOUND record of the city's own tool chain (``operator``, ``scenario``) with the
callee's receipt, which ``audit-verify`` matches against the callee's record (docs/trust.md,
"Receipts").

A Suzhou lists node runs as its own process on the real broker and serves over mutual TLS;
the tools run against a deployment folder of the test's own (its region file names the node
and the run's topic prefixes). ``deploy.ops lists-check`` runs as the operator types it;
the scenario client calls as Wuxi's node and as Suzhou's. Two writers of one tool chain at
once take turns on the chain's lock, batch by batch, and the chain verifies; without the lock
the same two writers break it, which is what the lock is for.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from deploy.region import Deployment
from deploy.scenario import SCENARIO_CHAIN, Scenario
from services.common.audit import (
    AUDIT_TOPIC,
    AuditChainWriter,
    AuditEntry,
    AuditUnavailable,
    ChainLock,
    SharedChainWriter,
    parse_key,
    read_audit_topic,
    verify_chain,
)
from services.common.audit.read import AuditMessage
from services.common.audit.signing import AuditKeyring, load_audit_signer
from services.common.audit.verify import check_receipts_of
from services.common.avro import AvroSerde
from services.common.certs import issue_dev_certificates
from services.common.kafka import make_producer
from services.common.settings import REPO_ROOT, Settings, load_settings
from services.common.topics import load_catalogue, provision
from tests.kit.lists import SUZHOU, WUXI, organisation_key, person_key
from tests.kit.lists_region import REGION_FILE, ListsRegion

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]

CHECK_SUBJECT = "/creditlink.peer.v1.CreditCheckService/CheckSubject"
PROCUREMENT = ("--scenario", "GOVERNMENT_PROCUREMENT")


@dataclass
class Region:
    """Suzhou's lists node, and a deployment folder naming it (config, certificates, run)."""

    lists: ListsRegion
    deployment: Deployment
    settings: dict[str, Settings]

    def topic(self, city: str) -> str:
        return self.settings[city].topic(AUDIT_TOPIC)

    async def audit(self, city: str) -> list[AuditMessage]:
        return await read_audit_topic(self.settings[city], self.topic(city))

    async def ops(self, *command: str) -> Ran:
        """``python -m deploy.ops COMMAND`` as the operator types it, on this deployment."""
        return await run(
            "deploy.ops",
            *command,
            env={
                "KAFKA_BOOTSTRAP": self.lists.bootstrap,
                "CREDITLINK_CONFIG_DIR": str(self.deployment.config_dir),
                "CREDITLINK_TLS_DIR": str(self.deployment.cert_dir),
                "CREDITLINK_RUN_DIR": str(self.deployment.run_dir),
                "COLUMNS": "200",
            },
        )


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


async def run(module: str, *args: str, env: dict[str, str] | None = None) -> Ran:
    """``python -m MODULE ARGS`` from the repository, within 90 s."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=90)
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


@pytest.fixture
async def region(kafka_bootstrap: str, tmp_path: Path) -> AsyncIterator[Region]:
    lists = ListsRegion(tmp_path, kafka_bootstrap, cities=("suzhou",))
    # Wuxi calls as a city (the scenario client) but runs no node here.
    issue_dev_certificates(lists.tls_dir, ["wuxi"])
    await lists.provision()
    prefixes = {"suzhou": f"{lists.run}suzhou.", "wuxi": f"{lists.run}wuxi."}
    await provision(kafka_bootstrap, load_catalogue(), prefix=prefixes["wuxi"])
    deployment = Deployment(
        config_dir=tmp_path / "config", cert_dir=lists.tls_dir, run_dir=tmp_path / "run"
    )
    deployment.config_dir.mkdir()
    raw = yaml.safe_load(REGION_FILE.read_text(encoding="utf-8"))
    for key, entry in raw["cities"].items():
        entry.pop("ops", None)
        entry["endpoints"] = {"lists": lists.nodes["suzhou"].target} if key == "suzhou" else {}
        if key in prefixes:
            entry["topic_prefix"] = prefixes[key]
    deployment.region_file.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    shutil.copy(REPO_ROOT / "deploy/config/city-roles.yaml", deployment.config_dir)
    settings = {
        city: load_settings(
            {
                "CREDITLINK_CITY": city,
                "KAFKA_BOOTSTRAP": kafka_bootstrap,
                "CREDITLINK_TOPIC_PREFIX": prefix,
            }
        )
        for city, prefix in prefixes.items()
    }
    lists.nodes["suzhou"].start()
    try:
        await lists.wait_ready("suzhou")
        yield Region(lists, deployment, settings)
    finally:
        await lists.close()


def _records(messages: list[AuditMessage], chain: str | None) -> list[dict[str, Any]]:
    serde = AvroSerde()
    return [
        serde.decode(m.value, reader=serde.writer_of(m.value))
        for m in messages
        if parse_key(m.key)[0] == chain
    ]


def _keyring(region: Region) -> AuditKeyring:
    return AuditKeyring.from_directory(region.deployment.cert_dir, {"suzhou": SUZHOU, "wuxi": WUXI})


async def test_an_operator_check_is_on_the_citys_operator_chain_with_a_matching_receipt(
    region: Region,
) -> None:
    done = await region.ops("lists-check", organisation_key(1), "--city", "suzhou", *PROCUREMENT)
    assert done.returncode == 0, done.stdout + done.stderr

    audit = await region.audit("suzhou")
    [record] = _records(audit, "operator")
    assert record["direction"] == "OUTBOUND"
    assert (record["caller_city"], record["callee_city"]) == (SUZHOU, SUZHOU)
    assert (record["method"], record["status_code"]) == (CHECK_SUBJECT, "OK")
    assert record["caller_role"] == "node"
    assert record["subject_key"] == organisation_key(1)
    receipt = record["receipt"]
    assert receipt is not None
    # The receipt names the node's own record of the call: the INBOUND one on its chain.
    [answered] = [
        r for r in _records(audit, receipt["callee_chain"]) if r["seq"] == receipt["callee_seq"]
    ]
    assert (answered["direction"], answered["method"]) == ("INBOUND", CHECK_SUBJECT)
    assert answered["hash"] == receipt["callee_hash"]
    assert answered["exchange_sha256"] == record["exchange_sha256"] == receipt["exchange_sha256"]
    count, problems = check_receipts_of(audit, audit)
    assert (count, problems) == (1, [])
    report = verify_chain(audit, keyring=_keyring(region))
    assert report.ok, report.problems

    # The operator's audit-verify: signatures, receipts' signatures, and each receipt
    # against the callee's record (here the city's own topic).
    verified = await region.ops("audit-verify", "--city", "suzhou", "--receipts")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "chain operator: 1 records, seq 1..1" in verified.stdout
    assert f"receipts: {region.topic('suzhou')} checked against itself" in verified.stdout

    # A second command continues the chain where the first left it; refused, it is
    # recorded with its denial code and no receipt (a refusal gets none).
    refused = await region.ops("lists-check", person_key(2), "--city", "suzhou", *PROCUREMENT)
    assert refused.returncode != 0
    assert "consent" in refused.stderr
    first, second = _records(await region.audit("suzhou"), "operator")
    assert (second["seq"], second["prev_hash"]) == (2, first["hash"])
    assert (second["status_code"], second["denial_code"]) == (
        "PERMISSION_DENIED",
        "consent-missing",
    )
    assert second["receipt"] is None


async def test_a_scenario_call_is_on_the_calling_citys_scenario_chain_with_a_matching_receipt(
    region: Region,
) -> None:
    scenario = Scenario(
        region.deployment.region(),
        region.lists.bootstrap,
        Console(file=io.StringIO()),
        deployment=region.deployment,
        cities=("suzhou", "wuxi"),
    )
    await scenario.start()
    try:
        scenario.black_subject = (organisation_key(3).removeprefix("L:"), "某测试有限公司")
        # Wuxi's node checks a subject at Suzhou, as the demo's region-wide check does.
        assert await scenario.memberships("suzhou", "wuxi") == []
    finally:
        await scenario.close()

    wuxi, suzhou = await region.audit("wuxi"), await region.audit("suzhou")
    [record] = _records(wuxi, SCENARIO_CHAIN)
    assert (record["direction"], record["caller_city"], record["callee_city"]) == (
        "OUTBOUND",
        WUXI,
        SUZHOU,
    )
    assert (record["method"], record["status_code"]) == (CHECK_SUBJECT, "OK")
    assert record["receipt"] is not None
    count, problems = check_receipts_of(wuxi, suzhou)
    assert (count, problems) == (1, [])
    # Wuxi's scenario chain is Wuxi's own, signed with Wuxi's key; Suzhou's has no such chain.
    assert not _records(suzhou, SCENARIO_CHAIN)
    report = verify_chain(wuxi, keyring=_keyring(region))
    assert report.ok, report.problems
    assert report.chains[SCENARIO_CHAIN].records == 1

    # audit verify as the command line runs it, with Suzhou's chain for the receipts.
    verified = await run(
        "services.common.audit",
        "verify",
        "--bootstrap",
        region.lists.bootstrap,
        "--topic",
        region.topic("wuxi"),
        "--keys",
        str(region.deployment.cert_dir),
        "--region",
        str(region.deployment.region_file),
        "--receipts-with",
        region.topic("suzhou"),
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"chain {SCENARIO_CHAIN}: 1 records" in verified.stdout


def _entry(n: int, purpose: str = "test") -> AuditEntry:
    return AuditEntry(
        caller_city=WUXI,
        callee_city=SUZHOU,
        method=CHECK_SUBJECT,
        purpose=purpose,
        status_code="OK",
        latency_ms=n,
        at=datetime.now(UTC),
        direction="OUTBOUND",
        caller_role="node",
    )


async def _two_writers(
    region: Region, chain: str, *, locked: bool, records: int
) -> list[AuditMessage]:
    """Two writers of ``chain`` on Wuxi's topic, each with its own producer and its own open
    of the lock file (an ``fcntl`` lock binds open files, so two in one process exclude each
    other as two processes do), appending ``records`` each, in bursts, at the same time."""
    settings = region.settings["wuxi"]
    signer = load_audit_signer(region.deployment.cert_dir, "wuxi", WUXI)
    lock_path = region.deployment.run_dir / "audit-locks" / f"{chain}.lock"
    producers = [make_producer(settings, client_id=f"writer-{n}") for n in range(2)]
    writers: list[AuditChainWriter] = []
    for producer in producers:
        await producer.start()
        options: dict[str, Any] = {"node_city": WUXI, "chain": chain, "signer": signer}
        writers.append(
            SharedChainWriter(
                settings, AvroSerde(), producer, lock=ChainLock(lock_path), service="ops", **options
            )
            if locked
            else AuditChainWriter(settings, AvroSerde(), producer, **options)
        )
    try:
        for writer in writers:
            await writer.start()

        async def write(writer: AuditChainWriter, name: str) -> None:
            for burst in range(0, records, 10):
                await asyncio.gather(
                    *(writer.append(_entry(n, name)) for n in range(burst, burst + 10))
                )

        await asyncio.gather(*(write(writer, f"writer-{n}") for n, writer in enumerate(writers)))
    finally:
        for writer in writers:
            await writer.flush()
        for producer in producers:
            await producer.stop()
    return [m for m in await region.audit("wuxi") if parse_key(m.key)[0] == chain]


async def test_two_writers_of_one_tool_chain_take_turns_and_the_chain_verifies(
    region: Region,
) -> None:
    messages = await _two_writers(region, "operator", locked=True, records=100)
    report = verify_chain(messages, keyring=_keyring(region))
    assert report.ok, report.problems[:5]
    records = _records(messages, "operator")
    assert [r["seq"] for r in records] == list(range(1, 201))
    # Both wrote, at the same time: their batches alternate on the one chain.
    writers = [r["purpose"] for r in records]
    assert writers.count("writer-0") == writers.count("writer-1") == 100
    turns = sum(1 for a, b in itertools.pairwise(writers) if a != b)
    assert turns >= 3, writers


async def test_without_the_lock_two_writers_of_one_chain_break_it(region: Region) -> None:
    """The control: the same two writers, unlocked, give two records one seq."""
    messages = await _two_writers(region, "unlocked", locked=False, records=100)
    report = verify_chain(messages, keyring=_keyring(region))
    assert {p.kind for p in report.problems} & {"duplicated", "changed"}


async def test_a_writer_kept_waiting_on_the_lock_fails_its_calls_clearly_then_recovers(
    region: Region,
) -> None:
    settings = region.settings["wuxi"]
    lock = ChainLock(region.deployment.run_dir / "audit-locks" / "held.lock")
    producer = make_producer(settings, client_id="waiting")
    await producer.start()
    writer = SharedChainWriter(
        settings,
        AvroSerde(),
        producer,
        lock=lock,
        node_city=WUXI,
        chain="held",
        service="ops",
        signer=load_audit_signer(region.deployment.cert_dir, "wuxi", WUXI),
        lock_wait_s=0.5,
    )
    try:
        await writer.start()
        await writer.append(_entry(1))
        async with ChainLock(lock.path).held() as other:
            other.claim("pid 1 writer someone-else")
            with pytest.raises(AuditUnavailable, match="someone-else"):
                await writer.append(_entry(2))
        # Released: the next call is recorded, after the first, the failed one nowhere.
        _, seq, _ = await writer.append(_entry(3))
        assert seq == 2
    finally:
        await writer.flush()
        await producer.stop()
    messages = [m for m in await region.audit("wuxi") if parse_key(m.key)[0] == "held"]
    assert [r["latency_ms"] for r in _records(messages, "held")] == [1, 3]
    report = verify_chain(messages, keyring=_keyring(region))
    assert report.ok, report.problems
