"""A contract case run by a non-Python client: grpc-go (from the Go module proxy), built by this
test, calls our server over mutual TLS with messages it reads from the protos' descriptor set."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from contracts.codegen import CONTRACTS, buf_executable
from services.common.certs import service_host
from services.common.peer import PeerServer
from services.common.settings import REPO_ROOT
from tests.peer_kit import (
    PeerPki,
    make_pki,
    serve_fake_check,
)

pytestmark = pytest.mark.timeout(600)
GO_SOURCE = CONTRACTS / "interop" / "go"
BUILD_DIR = REPO_ROOT / ".cache" / "go-interop"


@pytest.fixture(scope="module")
def go_client() -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go toolchain not installed (the polyglot machine image has it)")
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    binary = BUILD_DIR / "creditlink-interop"
    built = subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=GO_SOURCE,
        env={**os.environ, "GOFLAGS": "-mod=readonly"},
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    return binary


@pytest.fixture(scope="module")
def descriptors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("descriptors") / "peer.binpb"
    subprocess.run(
        [buf_executable(), "build", "-o", str(out)], cwd=CONTRACTS, check=True, timeout=120
    )
    return out


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PeerPki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
async def server(pki: PeerPki) -> AsyncIterator[PeerServer]:
    async for node in serve_fake_check(pki):
        yield node


async def _go(
    binary: Path, descriptors: Path, pki: PeerPki, port: int, case: str
) -> subprocess.CompletedProcess[str]:
    tls = pki.tls("wuxi")
    command = [
        str(binary),
        "-target", f"127.0.0.1:{port}",
        "-ca", str(tls.ca), "-cert", str(tls.cert), "-key", str(tls.key),
        "-server-name", service_host("suzhou", "lists"),
        "-descriptors", str(descriptors),
        "-case", case,
    ]  # fmt: skip
    return await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=60, check=False
    )


async def test_go_client_checks_an_organisation(
    go_client: Path, descriptors: Path, pki: PeerPki, server: PeerServer
) -> None:
    done = await _go(go_client, descriptors, pki, server.port, "check-organisation")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS check-organisation" in done.stdout
    assert "membership LIST_TYPE_BLACK" in done.stdout


async def test_go_client_sees_the_consent_refusal(
    go_client: Path, descriptors: Path, pki: PeerPki, server: PeerServer
) -> None:
    done = await _go(go_client, descriptors, pki, server.port, "person-without-consent")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS person-without-consent" in done.stdout
