"""City nodes of the lists service as real processes on one broker: for integration tests and
the benchmark.

Each city gets its own topic prefix, data directory, gRPC port and region file (so a test can
route one city's view of another through a :class:`TcpProxy`), and all share a CA and
certificates made for the run. Nodes are started with ``python -m services.lists`` by the
region supervisor (``deploy.region.Supervised``) and can be stopped (SIGTERM), killed (SIGKILL)
and started again on the same data.

Example::

    region = ListsRegion(tmp_path, bootstrap, cities=("suzhou", "wuxi"))
    await region.provision()
    region.start_all()
    await region.wait_ready()
    await region.publish("suzhou", [list_decision(...)])
    ...
    region.stop_all()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from creditlink.peer.v1 import credit_check_pb2_grpc, list_sync_pb2, list_sync_pb2_grpc
from deploy.broker import free_port as free_port  # the tests and benches import it from here
from deploy.region import Supervised
from services.common.avro import AvroSerde
from services.common.certs import issue_dev_certificates
from services.common.kafka import EventPublisher, make_consumer, make_producer
from services.common.peer import TlsFiles, secure_channel
from services.common.region import load_region
from services.common.roles import Role
from services.common.settings import REPO_ROOT, Settings, load_settings
from services.common.topics import load_catalogue, provision
from services.lists.kafka_io import (
    CHANGES_TOPIC,
    RECORDS_TOPIC,
    REJECTED_TOPIC,
    topic_partitions,
)
from services.lists.model import CHANGE_SCHEMA, RECORD_SCHEMA, ListChange
from services.lists.store import ListStore

REGION_FILE: Final = REPO_ROOT / "deploy" / "config" / "region.yaml"
RECORD_EVENT: Final = "cn.creditlink.credit.record.accepted.v1"


class TcpProxy:
    """A byte-level TCP relay (TLS passes through untouched) that a test can cut.

    ``cut()`` closes every relayed connection at once; ``refuse`` makes new connections fail
    until cleared. ``relayed`` counts bytes from the upstream to the client.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.refuse = False
        self.relayed = 0
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, downstream: bool
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if downstream:
                    self.relayed += len(data)
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, False), self._pipe(up_reader, writer, True)
            )
        finally:
            self._writers -= {writer, up_writer}

    def cut(self) -> None:
        self.cuts += 1
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def eventually(probe: Callable[[], Awaitable[Any]], *, within: float = 30.0) -> Any:
    """``probe()`` again every 0.1 s until it returns something true (returned), for at most
    ``within`` seconds (then TimeoutError)."""
    async with asyncio.timeout(within):
        while True:
            result = await probe()
            if result:
                return result
            await asyncio.sleep(0.1)


async def publish_records(
    producer: Any,
    settings: Settings,
    records: Iterable[Mapping[str, Any]],
    *,
    serde: AvroSerde | None = None,
) -> int:
    """Publish CreditRecords onto the node's ``credit.records.v1`` as its intake does; returns
    how many, once the broker has them all."""
    publisher = EventPublisher(producer, serde or AvroSerde(), settings, service="intake")
    topic = settings.topic(RECORDS_TOPIC)
    futures = []
    for record in records:
        key = str(record["subject"]["subject_key"])
        value, headers = publisher.encode(
            RECORD_SCHEMA,
            record,
            key=key,
            event_type=RECORD_EVENT,
            event_id=f"{record['record_id']}.v{record['version']}",
        )
        futures.append(await producer.send(topic, value=value, key=key.encode(), headers=headers))
    await asyncio.gather(*futures)
    return len(futures)


@dataclass
class CityNode:
    """One city's lists node, a process of the region supervisor (``deploy.region``)."""

    key: str
    code: str
    port: int
    settings: Settings
    env: dict[str, str]
    supervised: Supervised

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.supervised.log_file

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self.supervised.child

    @property
    def running(self) -> bool:
        return self.supervised.running

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.key} is already running")
        self.supervised.start(self.env)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM: the node stops reading, drains calls and closes its store."""
        self.supervised.stop(grace_s=timeout)

    def kill(self) -> None:
        """SIGKILL (``kill -9``): no shutdown code runs."""
        self.supervised.kill()

    def store(self) -> ListStore:
        """The node's store opened read-only (beside the running node, or after it)."""
        return ListStore(
            self.settings.data_dir / "lists" / "store",
            AvroSerde(),
            own_city=self.code,
            read_only=True,
        )

    def digest_of(self, issuer_code: str) -> tuple[int, str]:
        store = self.store()
        try:
            return store.entry_count(issuer_code), store.digest_summary(issuer_code)
        finally:
            store.close()

    def log_text(self) -> str:
        return self.supervised.log_text()

    @property
    def started(self) -> bool:
        """The node logged the end of its start (serving processes included) since its
        last :meth:`start`."""
        return self.supervised.logged_since_start(b'"lists_started"')


class ListsRegion:
    """Lists nodes of some cities of the demo region, each a process (see module docstring)."""

    def __init__(
        self,
        directory: Path,
        bootstrap: str,
        *,
        cities: Sequence[str] = ("suzhou", "wuxi", "changzhou"),
        reconcile_seconds: float = 2.0,
        extra_env: Mapping[str, str] | None = None,
        ops: bool = False,
    ) -> None:
        """``ops`` gives each node its health and metrics endpoint (``ops_ports``)."""
        self.directory = directory
        self.bootstrap = bootstrap
        self.region = load_region(REGION_FILE)
        self.run = f"t{uuid.uuid4().hex[:8]}-"
        self.tls_dir = directory / "certs"
        issue_dev_certificates(self.tls_dir, list(cities))
        self.ports = {city: free_port() for city in cities}
        self.ops_ports = {city: free_port() for city in cities} if ops else {}
        # viewer -> target -> port the viewer dials for the target (a proxy, or the node).
        self.routes: dict[str, dict[str, int]] = {viewer: dict(self.ports) for viewer in cities}
        self._write_region_files()
        self.nodes: dict[str, CityNode] = {}
        for city in cities:
            prefix = f"{self.run}{city}."
            data_dir = directory / city / "data"
            env = {
                **os.environ,
                "CREDITLINK_CITY": city,
                "KAFKA_BOOTSTRAP": bootstrap,
                "CREDITLINK_TOPIC_PREFIX": prefix,
                "CREDITLINK_REGION_FILE": str(self._region_file(city)),
                "CREDITLINK_DATA_DIR": str(data_dir),
                "CREDITLINK_TLS_DIR": str(self.tls_dir),
                "CREDITLINK_LISTS_BIND": f"127.0.0.1:{self.ports[city]}",
                "CREDITLINK_LISTS_RECONCILE_SECONDS": str(reconcile_seconds),
                "CREDITLINK_LISTS_EXPIRY_SECONDS": "1",
                "CREDITLINK_LOG_LEVEL": "info",
                **(extra_env or {}),
            }
            settings = load_settings(env)
            self.nodes[city] = CityNode(
                key=city,
                code=self.region.city(city).admin_code,
                port=self.ports[city],
                settings=settings,
                env=env,
                supervised=Supervised(f"{city}-lists", "services.lists", run_dir=directory),
            )
        self._producers: dict[str, Any] = {}
        self.serde = AvroSerde()

    def _region_file(self, viewer: str) -> Path:
        return self.directory / f"region-{viewer}.yaml"

    def _write_region_files(self) -> None:
        raw = yaml.safe_load(REGION_FILE.read_text(encoding="utf-8"))
        for viewer, routes in self.routes.items():
            cities = {}
            for key, entry in raw["cities"].items():
                entry = dict(entry)
                # Health endpoints only on ports of this run: the demo's would collide.
                entry.pop("ops", None)
                if key in self.ops_ports:
                    entry["ops"] = {"lists": f"127.0.0.1:{self.ops_ports[key]}"}
                if key in routes:
                    entry["endpoints"] = {"lists": f"127.0.0.1:{routes[key]}"}
                    entry["topic_prefix"] = f"{self.run}{key}."
                else:
                    entry["endpoints"] = {}
                cities[key] = entry
            text = yaml.safe_dump({"region": raw["region"], "cities": cities}, allow_unicode=True)
            self._region_file(viewer).write_text(text, encoding="utf-8")

    def route_through(self, viewer: str, target: str, port: int) -> None:
        """Make ``viewer`` dial ``target`` at ``port`` (takes effect when ``viewer`` starts)."""
        self.routes[viewer][target] = port
        self._write_region_files()

    async def provision(self) -> None:
        catalogue = load_catalogue()
        for node in self.nodes.values():
            await provision(self.bootstrap, catalogue, prefix=node.settings.topic_prefix)

    def tls(self, caller: str | Role) -> TlsFiles:
        """A city node's files, or a department's or regulator's (issued on first use)."""
        if isinstance(caller, Role):
            return TlsFiles.for_role(caller, self.tls_dir)
        return TlsFiles.for_city(caller, self.tls_dir)

    def start_all(self) -> None:
        for node in self.nodes.values():
            node.start()

    def stop_all(self) -> None:
        for node in self.nodes.values():
            node.stop()

    async def wait_ready(self, *cities: str, within: float = 60.0) -> None:
        """Until each node answers its gRPC health check (it has caught up and serves) and
        has finished starting (its serving processes too)."""
        for city in cities or tuple(self.nodes):
            node = self.nodes[city]
            async with asyncio.timeout(within):
                while True:
                    if not node.running:
                        raise RuntimeError(f"{city} exited:\n{node.log_text()[-4000:]}")
                    if await self._serving(node) and node.started:
                        break
                    await asyncio.sleep(0.2)

    async def _serving(self, node: CityNode) -> bool:
        channel = secure_channel(
            node.target, self.tls(node.key), expect_city=node.key, service="lists"
        )
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2
            )
            return bool(response.status == health_pb2.HealthCheckResponse.SERVING)
        except grpc.aio.AioRpcError:
            return False
        finally:
            await channel.close()

    def channel(self, caller: str, city: str) -> grpc.aio.Channel:
        """An mTLS channel from ``caller`` (its certificate) to ``city``'s node."""
        return secure_channel(
            self.nodes[city].target, self.tls(caller), expect_city=city, service="lists"
        )

    def check_stub(self, channel: grpc.aio.Channel) -> credit_check_pb2_grpc.CreditCheckServiceStub:
        return credit_check_pb2_grpc.CreditCheckServiceStub(channel)

    async def issuer_digest(self, city: str, caller: str) -> tuple[int, str]:
        """(entries, summary) of ``city``'s own entries as its GetListDigest reports them."""
        import hashlib

        async with self.channel(caller, city) as channel:
            digest = await list_sync_pb2_grpc.ListSyncServiceStub(channel).GetListDigest(
                list_sync_pb2.GetListDigestRequest(bucket_count=256), timeout=10
            )
        summary = hashlib.sha256(b"".join(b.sha256 for b in digest.buckets)).hexdigest()
        return sum(b.entry_count for b in digest.buckets), summary

    async def publish(self, city: str, records: Iterable[Mapping[str, Any]]) -> int:
        """Publish CreditRecords onto ``city``'s ``credit.records.v1`` as intake does."""
        settings = self.nodes[city].settings
        producer = self._producers.get(city)
        if producer is None:
            producer = make_producer(settings, client_id="harness")
            await producer.start()
            self._producers[city] = producer
        return await publish_records(producer, settings, records, serde=self.serde)

    async def read_topic(self, city: str, topic: str) -> list[tuple[str | None, bytes | None]]:
        settings = self.nodes[city].settings
        consumer = make_consumer(settings, group_id=None)
        await consumer.start()
        try:
            name = settings.topic(topic)
            partitions = await topic_partitions(consumer, name)
            consumer.assign(partitions)
            ends = await consumer.end_offsets(partitions)
            out: list[tuple[str | None, bytes | None]] = []
            remaining = {tp for tp in partitions if ends[tp] > 0}
            while remaining:
                fetched = await consumer.getmany(*remaining, timeout_ms=500)
                for tp, messages in fetched.items():
                    out.extend(
                        (m.key.decode() if m.key else None, m.value)
                        for m in messages
                        if m.offset < ends[tp]
                    )
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
            return out
        finally:
            await consumer.stop()

    async def changes_on(self, city: str) -> list[ListChange]:
        """Every change on ``city``'s ``credit.list-changes.v1`` (own and mirrored)."""
        return [
            ListChange.from_avro(self.serde.decode(value, reader=CHANGE_SCHEMA))
            for _key, value in await self.read_topic(city, CHANGES_TOPIC)
            if value is not None
        ]

    async def rejected_on(self, city: str) -> list[dict[str, Any]]:
        return [
            self.serde.decode(value)
            for _key, value in await self.read_topic(city, REJECTED_TOPIC)
            if value is not None
        ]

    async def close(self) -> None:
        self.stop_all()
        for producer in self._producers.values():
            await producer.stop()
        self._producers.clear()
