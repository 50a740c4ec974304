"""The conformance runner against a node built from the common bootstrap (real mTLS sockets),
through its Python API and through its command line, as a peer city would run it."""

from __future__ import annotations

import ast
import asyncio
import re
import subprocess
import sys
import unicodedata
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from contracts import conformance
from contracts.conformance import CaseResult, Endpoint, run
from creditlink.peer.v1 import common_pb2, list_sync_pb2
from services.common.peer import PeerSecurity, PeerServer, start_peer_server
from services.common.policy import DEFAULT_POLICY_FILE, load_policy
from services.common.settings import REPO_ROOT
from tests.peer_kit import (
    ORG,
    REGION,
    FakeCreditCheck,
    InMemoryListSync,
    PeerPki,
    credit_check_binding,
    list_sync_binding,
    make_consent_kit,
    make_pki,
    sample_changes,
)

pytestmark = pytest.mark.timeout(120)


class BrokenListSync(InMemoryListSync):
    """Claims a digest that does not match its entries, and loses a change on resume."""

    async def GetListDigest(
        self, request: list_sync_pb2.GetListDigestRequest, context: grpc.aio.ServicerContext
    ) -> list_sync_pb2.GetListDigestResponse:
        response = await super().GetListDigest(request, context)
        response.buckets[0].entry_count += 1
        return response

    async def StreamListChanges(
        self, request: list_sync_pb2.StreamListChangesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[list_sync_pb2.StreamListChangesResponse]:
        skipped = False
        async for message in super().StreamListChanges(request, context):
            if request.cursor and message.HasField("change") and not skipped:
                skipped = True
                continue
            yield message


async def _node(pki: PeerPki, list_sync: InMemoryListSync) -> PeerServer:
    consent = make_consent_kit()
    policy = load_policy(DEFAULT_POLICY_FILE, cities=REGION.cities.keys())
    security = PeerSecurity(city="suzhou", region=REGION, policy=policy, keyring=consent.keyring)
    servicer = FakeCreditCheck(security, {ORG: [common_pb2.LIST_TYPE_BLACK]})
    return await start_peer_server(
        bind="127.0.0.1:0",
        tls=pki.tls("suzhou"),
        services=[credit_check_binding(servicer), list_sync_binding(list_sync)],
        security=security,
        audit=None,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PeerPki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
async def server(pki: PeerPki) -> AsyncIterator[PeerServer]:
    node = await _node(pki, InMemoryListSync("320500", sample_changes()))
    try:
        yield node
    finally:
        await node.stop(0)


def _endpoint(pki: PeerPki, port: int, caller: str = "wuxi") -> Endpoint:
    tls = pki.tls(caller)
    return Endpoint(f"127.0.0.1:{port}", tls.ca, tls.cert, tls.key)


def _by_name(results: list[CaseResult]) -> dict[str, CaseResult]:
    return {r.name: r for r in results}


async def test_runner_passes_against_our_node_and_reports_every_case(
    pki: PeerPki, server: PeerServer
) -> None:
    results = await run(_endpoint(pki, server.port))
    assert [r.name for r in results] == [name for name, _ in conformance.CASES]
    failed = [r.line() for r in results if r.outcome == "FAIL"]
    assert failed == []
    outcomes = _by_name(results)
    # What the node serves is exercised, what it does not serve is skipped, not passed.
    assert all(
        r.outcome == "PASS"
        for n, r in outcomes.items()
        if n.startswith(("credit-check", "list-sync", "transport"))
    )
    assert all(
        r.outcome == "SKIP" for n, r in outcomes.items() if n.startswith(("score", "alerts"))
    )


async def test_runner_fails_an_implementation_that_breaks_the_contract(pki: PeerPki) -> None:
    broken = await _node(pki, BrokenListSync("320500", sample_changes()))
    try:
        results = _by_name(await run(_endpoint(pki, broken.port), only=["list-sync"]))
    finally:
        await broken.stop(0)
    assert results["list-sync.entries-match-digest"].outcome == "FAIL"
    assert "bucket 0" in results["list-sync.entries-match-digest"].detail
    assert results["list-sync.stream-resumes-without-gap-or-duplicate"].outcome == "FAIL"
    assert results["list-sync.digest-shape"].outcome == "PASS"


async def test_caller_denied_by_policy_fails_the_cases(pki: PeerPki, server: PeerServer) -> None:
    results = _by_name(
        await run(_endpoint(pki, server.port, caller="jiashan"), only=["credit-check"])
    )
    assert results["credit-check.organisation-answered"].outcome == "FAIL"
    assert "PERMISSION_DENIED" in results["credit-check.organisation-answered"].detail


async def test_command_line_prints_a_line_per_case_and_exits_by_outcome(
    pki: PeerPki, server: PeerServer
) -> None:
    tls = pki.tls("wuxi")

    def run_cli(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "contracts.conformance",
                "--target",
                f"127.0.0.1:{server.port}",
                "--ca",
                str(tls.ca),
                "--cert",
                str(tls.cert),
                "--key",
                str(tls.key),
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
            cwd=REPO_ROOT,
        )

    done = await asyncio.to_thread(run_cli)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(conformance.CASES) + 1
    assert all(line.split()[0] in {"PASS", "SKIP"} for line in lines[:-1])
    skipped = sum(line.startswith("SKIP") for line in lines)
    assert lines[-1] == f"{len(lines) - 1 - skipped} passed, 0 failed, {skipped} skipped"
    jiashan = pki.tls("jiashan")
    denied = await asyncio.to_thread(
        run_cli, "--cert", str(jiashan.cert), "--key", str(jiashan.key), "--only", "credit-check"
    )
    assert denied.returncode == 1
    assert "FAIL credit-check.organisation-answered" in denied.stdout


def test_cases_have_unique_names() -> None:
    names = [name for name, _ in conformance.CASES]
    assert len(names) == len(set(names))
    assert Path(conformance.__file__).is_file()


def test_the_runner_sends_no_resident_id_number() -> None:
    """A raw ID number sent as a subject key would land in the endpoint's permanent audit
    topic; no text in the runner may hold one, in any spelling of its digits."""
    source = Path(conformance.__file__).read_text(encoding="utf-8")
    shaped = re.compile(r"(?<![0-9])[0-9]{17}[0-9X](?![0-9])")
    texts = [
        unicodedata.normalize("NFKC", node.value).upper()
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]
    assert [text for text in texts if shaped.search(text)] == []
