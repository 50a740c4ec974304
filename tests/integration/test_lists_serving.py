"""Lists nodes answering peer calls from several processes (``services/lists/serving.py``):
Suzhou and Wuxi as real processes on the broker, each with one serving process beside it
on its own address, over real gRPC with mutual TLS.

Many connections reach both processes of a node (the kernel spreads them); every one must
answer what the node holds, follow each change, write an intact audit chain of its own,
and count in the node's metrics. A serving process ends with its node, and the node starts
one again that ended unexpectedly.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from creditlink.peer.v1 import credit_check_pb2, list_sync_pb2, list_sync_pb2_grpc
from services.common.audit import AUDIT_TOPIC, AuditMessage, verify_chain
from services.common.peer import secure_channel
from tests.kit.lists import SUZHOU, list_decision, organisation_key
from tests.kit.lists_region import ListsRegion, eventually

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

CONNECTIONS = 16
CHECK = "/creditlink.peer.v1.CreditCheckService/CheckSubject"
#: Channels of one process to one target share a connection unless told not to.
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


@pytest.fixture(scope="module")
async def region(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ListsRegion]:
    harness = ListsRegion(
        tmp_path_factory.mktemp("lists-serving"),
        kafka_bootstrap,
        cities=("suzhou", "wuxi"),
        extra_env={"CREDITLINK_LISTS_SERVING_PROCESSES": "2"},
        ops=True,
    )
    await harness.provision()
    harness.start_all()
    try:
        await harness.wait_ready()
        # The node answers as soon as it has caught up; its ops endpoint opens once its
        # serving processes do too.
        for city in harness.nodes:
            await eventually(lambda city=city: _healthy(harness, city), within=60)
        yield harness
    finally:
        await harness.close()
        for node in harness.nodes.values():
            print(f"--- {node.key} log (tail) ---\n{node.log_text()[-3000:]}")


def _connection(region: ListsRegion, caller: str, city: str) -> grpc.aio.Channel:
    return secure_channel(region.nodes[city].target, region.tls(caller), options=OWN_CONNECTION)


def _serving_pids(region: ListsRegion, city: str) -> list[int]:
    """The node's serving processes (children running ``services.lists.serving``)."""
    process = region.nodes[city].process
    assert process is not None
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    return [
        int(pid)
        for pid in children
        if b"services.lists.serving" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def _healthy(region: ListsRegion, city: str) -> bool:
    try:
        async with httpx.AsyncClient() as client:
            url = f"http://127.0.0.1:{region.ops_ports[city]}/healthz"
            return (await client.get(url)).status_code == 200
    except httpx.TransportError:
        return False


async def _check_counts(region: ListsRegion, city: str) -> dict[str, float]:
    """``creditlink_grpc_latency_seconds_count`` of CheckSubject by status, from /metrics."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{region.ops_ports[city]}/metrics")).text
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("creditlink_grpc_latency_seconds_count{") and CHECK in line:
            code = re.search(r'code="([A-Z_]+)"', line)
            assert code is not None
            counts[code.group(1)] = float(line.rsplit(" ", 1)[1])
    return counts


async def test_every_connection_answers_what_the_node_holds(region: ListsRegion) -> None:
    subjects = [organisation_key(700 + n) for n in range(5)]
    await region.publish(
        "suzhou",
        [
            list_decision(s, decision_number=f"苏市监信〔2024〕多{n}号")
            for n, s in enumerate(subjects)
        ],
    )
    channels = [_connection(region, "suzhou", "wuxi") for _ in range(CONNECTIONS)]
    stubs = [region.check_stub(c) for c in channels]
    calls = 0

    async def check(stub: Any, subject: str) -> Any:
        nonlocal calls
        response = await stub.CheckSubject(
            credit_check_pb2.CheckSubjectRequest(subject_key=subject, purpose="多进程"), timeout=10
        )
        calls += 1
        return response

    async def everywhere(listed: bool, subject_list: list[str]) -> bool:
        answers = [await check(stub, s) for stub in stubs for s in subject_list]
        return all(bool(a.memberships) == listed for a in answers)

    try:
        await eventually(lambda: everywhere(True, subjects))
        # A repair in Suzhou takes the first one down on every connection to Wuxi.
        await region.publish(
            "suzhou",
            [
                list_decision(
                    subjects[0],
                    action="REMOVE",
                    removal_reason="REPAIRED",
                    decision_number="苏市监修〔2024〕多0号",
                    designation="苏市监信〔2024〕多0号",
                )
            ],
        )
        await eventually(lambda: everywhere(False, subjects[:1]))
        assert await everywhere(True, subjects[1:])
    finally:
        for channel in channels:
            await channel.close()

    # Both processes served, each on an intact chain of its own.
    audit = await region.read_topic("wuxi", AUDIT_TOPIC)
    messages = [
        AuditMessage(offset=n, key=key or "", value=value or b"")
        for n, (key, value) in enumerate(audit)
    ]
    report = verify_chain(messages)
    assert report.ok, report
    served_by = {
        key.rsplit(":", 1)[0]
        for key, value in audit
        if key and value and region.serde.decode(value)["method"] == CHECK
    }
    assert served_by == {"lists", "lists-serving-1"}

    # The node's metrics count every call, whichever process answered it.
    async def counted() -> bool:
        return (await _check_counts(region, "wuxi")).get("OK") == calls

    await eventually(counted, within=10)


async def test_every_connection_streams_and_digests_the_same(region: ListsRegion) -> None:
    channels = [_connection(region, "wuxi", "suzhou") for _ in range(CONNECTIONS)]
    try:
        stubs = [list_sync_pb2_grpc.ListSyncServiceStub(c) for c in channels]
        digests = {
            (d.cursor, tuple((b.bucket, b.entry_count, b.sha256) for b in d.buckets))
            for d in [
                await stub.GetListDigest(list_sync_pb2.GetListDigestRequest(), timeout=10)
                for stub in stubs
            ]
        }
        assert len(digests) == 1
        streams = set()
        for stub in stubs:
            responses = [
                r
                async for r in stub.StreamListChanges(
                    list_sync_pb2.StreamListChangesRequest(), timeout=10
                )
            ]
            assert responses[-1].HasField("caught_up")
            streams.add(tuple(r.change.sequence for r in responses if r.HasField("change")))
        [sequences] = streams
        assert sequences == tuple(range(1, len(sequences) + 1))
        assert len(sequences) >= 6
    finally:
        for channel in channels:
            await channel.close()
    count, _summary = region.nodes["suzhou"].digest_of(SUZHOU)
    assert count == len(sequences) - 1  # the repair changed an entry, it added none


async def test_a_serving_process_that_dies_is_started_again(region: ListsRegion) -> None:
    [pid] = _serving_pids(region, "wuxi")
    os.kill(pid, signal.SIGKILL)

    async def replaced() -> bool:
        return _serving_pids(region, "wuxi") not in ([], [pid])

    await eventually(replaced, within=60)

    await eventually(lambda: _healthy(region, "wuxi"), within=30)
    async with region.channel("suzhou", "wuxi") as channel:
        answer = await region.check_stub(channel).CheckSubject(
            credit_check_pb2.CheckSubjectRequest(subject_key=organisation_key(701), purpose="x"),
            timeout=10,
        )
    assert answer.memberships


async def test_serving_processes_end_with_their_node(region: ListsRegion) -> None:
    pids = _serving_pids(region, "wuxi")
    assert len(pids) == 1
    region.nodes["wuxi"].kill()  # kill -9: no shutdown code of the node runs

    async def ended() -> bool:
        return not any(_alive(pid) for pid in pids)

    await eventually(ended, within=20)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async with region.channel("suzhou", "wuxi") as channel:
            await region.check_stub(channel).CheckSubject(
                credit_check_pb2.CheckSubjectRequest(
                    subject_key=organisation_key(701), purpose="x"
                ),
                timeout=2,
            )
    assert refused.value.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )
