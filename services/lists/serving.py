"""Processes that answer a lists node's peer calls beside it, on the node's own address.

A peer call costs the serving process most of its CPU in grpc.aio's own per-call work, under
one interpreter lock: one process answers at most what one core allows, whatever the node's
other cores do (``python -m bench lists``, docs/list-sync.md). With
``CREDITLINK_LISTS_SERVING_PROCESSES=N`` the node starts ``N - 1`` serving processes
(``python -m services.lists.serving``). Each binds the node's address too (gRPC sets
``SO_REUSEPORT``), so the kernel hands each new connection to one of them, and serves the
same services — ``ListSyncService`` and ``CreditCheckService`` — behind the same guard:

- **State.** It opens the node's RocksDB store as a secondary instance and never writes.
  After each commit the node sends the keys the commit wrote, with its mirrors' sync times;
  the process catches its store up and drops what it derived from those keys, so it answers
  what the node answers, a few milliseconds later at most.
- **Audit.** Its calls form their own chain of the node's audit topic
  (``lists-serving-<n>``), linked by its own relay helper (``audit_relay.py``).
- **Metrics.** It hands the latency of each call to the node, which observes it on
  ``creditlink_grpc_latency_seconds`` as if it had served the call.
- **Lifetime.** It ends when the node closes its input, and also when the node dies
  (``kill -9``): it never answers from a store nobody writes. The node starts one again
  if it ends unexpectedly.

**Protocol** (frames of ``audit_relay.frame``). Node → process: ``("follow", keys, synced)``.
Process → node: ``("ready",)`` once it serves, then ``("latencies", [(method, code, s)…])``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

import structlog

from creditlink.peer.v1 import credit_check_pb2_grpc, list_sync_pb2_grpc
from services.common.audit_relay import (
    AuditRelay,
    frame,
    helper_pipes,
    read_frame,
    start_helper,
)
from services.common.avro import AvroSerde
from services.common.logging import configure_logging
from services.common.observability import GRPC_LATENCY
from services.common.peer import PeerSecurity, ServiceBinding, TlsFiles, start_peer_server
from services.common.region import City, load_region
from services.common.settings import Settings, load_settings
from services.lists.book import BookView
from services.lists.check_server import CreditCheckServicer
from services.lists.config import load_lists_config
from services.lists.measures import MeasuresCatalogue, load_measures
from services.lists.store import ListStore
from services.lists.sync_server import ListSyncServicer

SERVICE: Final = "lists"
SERVER_OPTIONS: Final = (
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
)
STOP_GRACE_SECONDS: Final = 2.0
RESTART_DELAY_SECONDS: Final = 1.0
LATENCY_EVERY_SECONDS: Final = 1.0
MAX_UNREAD_BYTES: Final = 64 * 1024 * 1024

log = structlog.get_logger()


def peer_services(
    book: BookView, catalogue: MeasuresCatalogue, security: PeerSecurity, peers: Sequence[City]
) -> list[ServiceBinding]:
    """The peer-facing services of a lists node, answered from ``book``."""
    return [
        ServiceBinding(
            ListSyncServicer(book),
            list_sync_pb2_grpc.add_ListSyncServiceServicer_to_server,
            "creditlink.peer.v1.ListSyncService",
        ),
        ServiceBinding(
            CreditCheckServicer(book, catalogue, security, peers),
            credit_check_pb2_grpc.add_CreditCheckServiceServicer_to_server,
            "creditlink.peer.v1.CreditCheckService",
        ),
    ]


def store_path(settings: Settings) -> Path:
    return settings.data_dir / SERVICE / "store"


# --- the node's side ------------------------------------------------------------------------


class ServingProcesses:
    """``count`` processes serving beside the node on ``bind`` (the node's address, with the
    port it got). Start them once the node serves; :meth:`close` ends them."""

    def __init__(
        self, settings: Settings, book: BookView, *, count: int, bind: str, city: str
    ) -> None:
        self._settings = settings
        self._book = book
        self._count = count
        self._bind = bind
        self._city = city
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._watchers: dict[int, asyncio.Task[None]] = {}
        self._ready: set[int] = set()
        self._changed: list[bytes] = []
        self._flush_due = False
        self._closing = False

    @property
    def alive(self) -> bool:
        """Every process serves (one that ended unexpectedly is being started again)."""
        return len(self._ready) == self._count

    async def start(self) -> None:
        self._book.store.committed.append(self._committed)
        self._book.on_synced.append(self._follow_soon)
        await asyncio.gather(*(self._start(index) for index in range(1, self._count + 1)))

    async def _start(self, index: int) -> None:
        def told_from_now_on(process: asyncio.subprocess.Process) -> None:
            # Of every commit from its start: what it misses while it opens its store is in
            # the store it opens.
            self._processes[index] = process

        process, ready = await start_helper(
            "services.lists.serving",
            ["--index", str(index), "--bind", self._bind],
            self._settings,
            started=told_from_now_on,
        )
        if ready != ("ready",):
            del self._processes[index]
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            code = await process.wait()
            raise RuntimeError(f"serving process {index} did not start (exit code {code})")
        self._ready.add(index)
        self._watchers[index] = asyncio.get_running_loop().create_task(self._watch(index, process))
        log.info("lists_serving_process_started", index=index, pid=process.pid, bind=self._bind)

    async def _watch(self, index: int, process: asyncio.subprocess.Process) -> None:
        """Observe the latencies it hands over; start it again if it ends unexpectedly."""
        assert process.stdout is not None
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                kind, payload = await read_frame(process.stdout)
                if kind == "latencies":
                    for method, code, seconds in payload:
                        GRPC_LATENCY.labels(city=self._city, method=method, code=code).observe(
                            seconds
                        )
        code = await process.wait()
        self._ready.discard(index)
        if self._closing:
            return
        log.error("lists_serving_process_ended", index=index, exit_code=code)
        self._processes.pop(index, None)
        while not self._closing:
            await asyncio.sleep(RESTART_DELAY_SECONDS)
            try:
                await self._start(index)
                return
            except Exception as exc:
                log.error("lists_serving_process_restart_failed", index=index, error=str(exc))

    def _committed(self, keys: Iterable[bytes]) -> None:
        self._changed.extend(keys)
        self._follow_soon()

    def _follow_soon(self) -> None:
        # The commits of one step reach the processes as one frame.
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._follow)

    def _follow(self) -> None:
        self._flush_due = False
        message = frame(("follow", self._changed, dict(self._book.synced_at)))
        self._changed = []
        for index, process in self._processes.items():
            stdin = process.stdin
            if stdin is None or stdin.is_closing():
                continue
            if stdin.transport.get_write_buffer_size() > MAX_UNREAD_BYTES:
                # It stopped reading: rather than queue without end, end it; it starts
                # again (as after any unexpected end) from the store as it then is.
                log.error("lists_serving_process_stuck", index=index, pid=process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                continue
            stdin.write(message)

    async def close(self) -> None:
        """Close their input; each stops serving (letting running calls finish) and ends."""
        self._closing = True
        with contextlib.suppress(ValueError):
            self._book.store.committed.remove(self._committed)
        with contextlib.suppress(ValueError):
            self._book.on_synced.remove(self._follow_soon)
        for process in self._processes.values():
            if process.stdin is not None:
                process.stdin.close()
        for process in self._processes.values():
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE_SECONDS + 15)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        for watcher in self._watchers.values():
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        self._processes.clear()


# --- a serving process ----------------------------------------------------------------------


class _Latencies:
    """Latencies of the calls served here, handed to the node about once a second."""

    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self._transport = transport
        self._pending: list[tuple[str, str, float]] = []

    def __call__(self, method: str, code: str, seconds: float) -> None:
        self._pending.append((method, code, seconds))

    def hand_over(self) -> None:
        if self._pending and not self._transport.is_closing():
            self._transport.write(frame(("latencies", self._pending)))
        self._pending = []

    async def hand_over_forever(self) -> None:
        while True:
            await asyncio.sleep(LATENCY_EVERY_SECONDS)
            self.hand_over()


async def _serve(index: int, bind: str) -> None:
    loop = asyncio.get_running_loop()
    # Log lines go to stderr, the node's own log.
    transport, reader = await helper_pipes()
    settings = load_settings()
    configure_logging(city=settings.city, service=f"{SERVICE}-serving", level=settings.log_level)
    region = load_region(settings.region_file)
    config = load_lists_config(settings, region)
    city = region.city(settings.city)
    store = ListStore(
        store_path(settings),
        AvroSerde(),
        own_city=city.admin_code,
        secondary=settings.data_dir / SERVICE / f"serving-{index}",
    )
    book = BookView(store, own_city=city.admin_code)
    security = PeerSecurity.from_files(settings, region, keys_dir=config.tls_dir)
    audit = AuditRelay(
        settings, node_city=city.admin_code, chain=f"{SERVICE}-serving-{index}", service=SERVICE
    )
    stopping = asyncio.Event()
    # The node ends this process by closing its input; a terminal's Ctrl-C reaches the node.
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    loop.add_signal_handler(signal.SIGTERM, stopping.set)

    async def follow() -> None:
        # Whatever ends it, this process stops: it must not answer from a store it no
        # longer follows (the node starts it again unless the node itself is ending).
        try:
            while True:
                _kind, changed, synced_at = await read_frame(reader)
                await book.follow(changed, synced_at)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception:
            log.exception("lists_serving_follow_failed", index=index)
        finally:
            stopping.set()

    latencies = _Latencies(transport)
    following = loop.create_task(follow())
    handing_over = loop.create_task(latencies.hand_over_forever())
    await audit.start()
    try:
        server = await start_peer_server(
            bind=bind,
            tls=TlsFiles.for_city(settings.city, config.tls_dir),
            services=peer_services(
                book, load_measures(config.measures_file), security, region.peers_of(settings.city)
            ),
            security=security,
            audit=audit,
            options=SERVER_OPTIONS,
            latency=latencies,
        )
        transport.write(frame(("ready",)))
        await stopping.wait()
        await server.stop(STOP_GRACE_SECONDS)
    finally:
        following.cancel()
        handing_over.cancel()
        latencies.hand_over()
        await audit.close()
        store.close()
        transport.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.lists.serving",
        description="A process serving a lists node's peer calls beside it (started by it).",
    )
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--bind", required=True)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.index, args.bind))
    return 0


if __name__ == "__main__":
    sys.exit(main())
