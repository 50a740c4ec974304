"""Server reflection as stock tools use it: every service, method and message symbol resolves
over ``grpc.reflection.v1`` and ``v1alpha``, and ghz calls ``CheckSubject`` with no proto file,
over real sockets and mutual TLS."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from creditlink.peer.v1 import credit_check_pb2
from services.common.certs import service_host
from services.common.peer import PeerServer, secure_channel
from services.common.settings import REPO_ROOT
from tests.peer_kit import (
    ORG,
    PeerPki,
    make_pki,
    serve_fake_check,
)

GHZ = REPO_ROOT / ".cache" / "bin" / "ghz"
CHECK_SERVICE = credit_check_pb2.DESCRIPTOR.services_by_name["CreditCheckService"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PeerPki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
async def server(pki: PeerPki) -> AsyncIterator[PeerServer]:
    async for node in serve_fake_check(pki):
        yield node


async def _ask(
    pki: PeerPki, port: int, version: str, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    async with secure_channel(
        f"127.0.0.1:{port}", pki.tls("wuxi"), expect_city="suzhou", service="lists"
    ) as channel:
        call = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        responses = [r async for r in call(iter([request]))]
    (response,) = responses
    return response


def _files(response: reflection_pb2.ServerReflectionResponse) -> dict[str, str]:
    """File name -> package of every file descriptor in a reflection answer."""
    found = {}
    for raw in response.file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
        found[proto.name] = proto.package
    return found


SYMBOLS = [
    CHECK_SERVICE.full_name,
    *(method.full_name for method in CHECK_SERVICE.methods),
    *(message.full_name for message in credit_check_pb2.DESCRIPTOR.message_types_by_name.values()),
]


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
@pytest.mark.parametrize("symbol", SYMBOLS)
async def test_every_symbol_resolves_to_its_file(
    pki: PeerPki, server: PeerServer, version: str, symbol: str
) -> None:
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
    response = await _ask(pki, server.port, version, request)
    assert not response.HasField("error_response"), response.error_response.error_message
    assert _files(response)["creditlink/peer/v1/credit_check.proto"] == "creditlink.peer.v1"


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_services_are_listed_and_unknown_symbols_refused(
    pki: PeerPki, server: PeerServer, version: str
) -> None:
    listed = await _ask(
        pki, server.port, version, reflection_pb2.ServerReflectionRequest(list_services="")
    )
    names = {s.name for s in listed.list_services_response.service}
    assert {CHECK_SERVICE.full_name, f"grpc.reflection.{version}.ServerReflection"} <= names
    missing = await _ask(
        pki,
        server.port,
        version,
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol=f"{CHECK_SERVICE.full_name}.NoSuchMethod"
        ),
    )
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


async def test_the_v1_protocol_itself_is_described(pki: PeerPki, server: PeerServer) -> None:
    request = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="grpc.reflection.v1.ServerReflection.ServerReflectionInfo"
    )
    response = await _ask(pki, server.port, "v1", request)
    assert _files(response) == {"grpc/reflection/v1/reflection.proto": "grpc.reflection.v1"}


async def test_ghz_calls_check_subject_through_reflection_alone(
    pki: PeerPki, server: PeerServer, tmp_path: Path
) -> None:
    assert GHZ.is_file(), f"{GHZ} missing: `make peer-tools` builds it"
    tls = pki.tls("wuxi")
    report = tmp_path / "ghz.json"
    command = [
        str(GHZ),
        "--cacert", str(tls.ca), "--cert", str(tls.cert), "--key", str(tls.key),
        "--cname", service_host("suzhou", "lists"),
        "--call", "creditlink.peer.v1.CreditCheckService.CheckSubject",
        "-d", json.dumps({"subject_key": ORG, "purpose": "ghz through reflection"}),
        "-n", "20", "-c", "2",
        "--format", "json", "--output", str(report),
        f"127.0.0.1:{server.port}",
    ]  # fmt: skip
    done = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(report.read_text())
    assert result["count"] == 20
    assert result["statusCodeDistribution"] == {"OK": 20}, result.get("errorDistribution")
