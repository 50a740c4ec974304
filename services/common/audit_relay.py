"""An audit chain written by a helper process: :class:`AuditRelay`.

Linking a peer call's record into the chain (``seq``, ``prev_hash``, the Avro encoding and
its SHA-256), and producing it, cost the serving process more CPU per call than
authorizing the call; measured inside a lists node under 16 concurrent callers, the audit
was 40–50 µs of the 230 µs the event-loop thread spends on an empty ``CheckSubject``
(``python -m bench lists``, docs/peer-calls.md). A node whose peer calls are its hot path
hands its chain to a helper: the serving process only queues each call's entry and, every
``linger_ms``, sends the batch down a pipe; the helper runs an ordinary
:class:`~services.common.audit.AuditChainWriter` (same chain, same records, same recovery
of the chain's head at start) and acknowledges each batch once the broker has it.

**Protocol.** Frames on the helper's stdin and stdout: a 4-byte big-endian length, then a
pickle. Node → helper: a list of entries, each a tuple of :class:`AuditEntry` fields in
order. Helper → node: ``("ready", seq, hash)`` once it knows the chain's head, then
``("delivered", frame, seq, hash)`` or ``("failed", frame, reason)`` per batch, in order.
Both ends are this code base: the pickles never cross a trust boundary. The framing and
the helper's start (:func:`frame`, :func:`read_frame`, :func:`start_helper`,
:func:`helper_pipes`) also serve the lists node's serving processes.

**What can be lost** is what the in-process writer could lose: records not yet with the
broker when the node dies — here the entries queued in the node (at most ``linger_ms`` of
calls); the helper, seeing its input end, still delivers every batch it was given before it
exits. A helper that dies, or a batch the broker refuses, makes the relay unavailable, and
the peer-call guard then refuses calls (UNAVAILABLE) rather than serve them unaudited.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import operator
import os
import pickle
import struct
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final

from services.common.audit import (
    AUDIT_TOPIC,
    AuditChainWriter,
    AuditEntry,
    AuditUnavailable,
    QueuedAuditLog,
)
from services.common.avro import AvroSerde
from services.common.kafka import make_producer
from services.common.settings import REPO_ROOT, Settings, load_settings, settings_environment

_LENGTH: Final = struct.Struct(">I")
_ENTRY_FIELDS: Final = tuple(f.name for f in dataclasses.fields(AuditEntry))
_entry_values: Final = operator.attrgetter(*_ENTRY_FIELDS)
START_TIMEOUT_SECONDS: Final = 60.0
STOP_TIMEOUT_SECONDS: Final = 15.0


def frame(message: object) -> bytes:
    """One frame: a 4-byte big-endian length, then a pickle (see the module docstring)."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """The next message; IncompleteReadError at the end of the stream."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    return pickle.loads(await reader.readexactly(length))  # noqa: S301 (our own helper)


async def start_helper(
    module: str,
    arguments: Sequence[str],
    settings: Settings,
    started: Callable[[asyncio.subprocess.Process], None] | None = None,
) -> tuple[asyncio.subprocess.Process, Any]:
    """Start ``python -m module *arguments`` with this node's settings, frames both ways, and
    read its first frame (``started`` is told of the process before that). The frame is None
    when the helper ended or said nothing for ``START_TIMEOUT_SECONDS``; it has then been
    killed and waited for."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *arguments,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, **settings_environment(settings)},
        cwd=REPO_ROOT,
    )
    if started is not None:
        started(process)
    assert process.stdout is not None
    try:
        return process, await asyncio.wait_for(read_frame(process.stdout), START_TIMEOUT_SECONDS)
    except (TimeoutError, asyncio.IncompleteReadError):
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        return process, None


async def helper_pipes() -> tuple[asyncio.WriteTransport, asyncio.StreamReader]:
    """In a helper: its frames out (the original stdout) and in (stdin). Anything else
    written to fd 1 (a log line, a stray print, a library's warning) goes to stderr instead
    of corrupting the frames."""
    loop = asyncio.get_running_loop()
    answers_fd = os.dup(1)
    os.dup2(2, 1)
    transport, _protocol = await loop.connect_write_pipe(
        asyncio.Protocol, os.fdopen(answers_fd, "wb", buffering=0)
    )
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0)
    )
    return transport, reader


class AuditRelay(QueuedAuditLog):
    """The audit chain ``chain`` of this node, linked and produced by a helper process.

    Offers what :class:`~services.common.audit.AuditChainWriter` offers the peer-call guard
    (``append``, ``append_nowait``, ``healthy``, ``durable``, ``flush``, ``head``); start it
    with :meth:`start` and end it with :meth:`close`.
    """

    _name = "audit relay"

    def __init__(
        self,
        settings: Settings,
        *,
        node_city: str,
        chain: str | None = None,
        service: str = "peer-gateway",
        durable: bool = False,
        linger_ms: int = 20,
    ) -> None:
        super().__init__(durable=durable, linger_ms=linger_ms)
        self._settings = settings
        self._node_city = node_city
        self._chain = chain
        self._service = service
        self._topic = settings.topic(AUDIT_TOPIC)
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._in_flight: dict[int, asyncio.Future[None]] = {}
        self._frames = 0
        self._head: tuple[int, str] = (0, "")
        self._closing = False

    @property
    def topic(self) -> str:
        return self._topic

    @property
    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the last record the helper linked, as of its last answer."""
        return self._head

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        """Start the helper and wait until it has recovered the chain's head."""
        arguments = ["--node-city", self._node_city, "--service", self._service]
        if self._chain is not None:
            arguments += ["--chain", self._chain]
        self._process, ready = await start_helper(
            "services.common.audit_relay", arguments, self._settings
        )
        if ready is None:
            code = self._process.returncode
            raise AuditUnavailable(f"audit relay did not start (exit code {code})")
        kind, seq, digest = ready
        if kind != "ready":
            raise AuditUnavailable(f"audit relay answered {kind!r} instead of ready")
        self._head = (seq, digest)
        self._reader = asyncio.get_running_loop().create_task(self._read_answers())
        self._started = True

    async def _hand_on(
        self,
        entries: list[AuditEntry | Callable[[], AuditEntry]],
        delivered: asyncio.Future[None],
    ) -> None:
        """Write one batch to the helper as one frame; its answer settles ``delivered``."""
        process = self._process
        assert process is not None
        assert process.stdin is not None
        try:
            rows = [_entry_values(e if isinstance(e, AuditEntry) else e()) for e in entries]
            self._frames += 1
            self._in_flight[self._frames] = delivered
            process.stdin.write(frame(rows))
            await process.stdin.drain()
        except Exception as exc:
            self._fail(exc)
            if not delivered.done():
                delivered.set_exception(exc)

    async def _read_answers(self) -> None:
        process = self._process
        assert process is not None
        assert process.stdout is not None
        try:
            while True:
                answer = await read_frame(process.stdout)
                if answer[0] == "delivered":
                    _, number, seq, digest = answer
                    self._head = (seq, digest)
                    delivered = self._in_flight.pop(number, None)
                    if delivered is not None and not delivered.done():
                        delivered.set_result(None)
                else:
                    self._fail(AuditUnavailable(f"audit record not delivered: {answer[2]}"))
        except (asyncio.IncompleteReadError, ConnectionError):
            code = await process.wait()
            if not self._closing or self._in_flight:
                self._fail(AuditUnavailable(f"audit relay exited (exit code {code})"))

    def _fail(self, error: BaseException) -> None:
        if self._failure is None:
            self._failure = error
        for delivered in self._in_flight.values():
            if not delivered.done():
                delivered.set_exception(error)
        self._in_flight.clear()

    async def flush(self) -> None:
        """Wait until every entry appended so far is with the broker (or has failed)."""
        await self._sent()
        if self._in_flight:
            await asyncio.gather(*self._in_flight.values(), return_exceptions=True)

    async def close(self) -> None:
        """Deliver what is queued, then let the helper finish and exit."""
        process = self._process
        if process is None:
            return
        with contextlib.suppress(Exception):
            await self.flush()
        self._closing = True
        assert process.stdin is not None
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._started = False


# --- the helper -------------------------------------------------------------------------


async def _serve(node_city: str, chain: str | None, service: str) -> None:
    transport, reader = await helper_pipes()
    settings = load_settings()
    producer = make_producer(settings, client_id=f"audit-relay-{chain or service}")
    await producer.start()
    try:
        writer = AuditChainWriter(
            settings,
            AvroSerde(),
            producer,
            node_city=node_city,
            chain=chain,
            service=service,
            linger_ms=0,  # the node already gathered a batch
        )
        await writer.start()
        transport.write(frame(("ready", *writer.head)))

        def answer(number: int, outcome: asyncio.Future[None]) -> None:
            error = None if outcome.cancelled() else outcome.exception()
            if outcome.cancelled() or error is not None:
                transport.write(frame(("failed", number, repr(error or "cancelled"))))
            else:
                transport.write(frame(("delivered", number, *writer.head)))

        number = 0
        while True:
            try:
                rows = await read_frame(reader)
            except asyncio.IncompleteReadError:
                break  # the node closed the pipe (or ended): deliver what it gave, then exit
            number += 1
            try:
                delivered: asyncio.Future[None] | None = None
                for row in rows:
                    delivered = writer.append_nowait(AuditEntry(*row))
            except Exception as exc:
                transport.write(frame(("failed", number, repr(exc))))
                continue
            if delivered is not None:
                delivered.add_done_callback(functools.partial(answer, number))
        with contextlib.suppress(Exception):
            await writer.flush()
        await asyncio.sleep(0)  # let the last answers' callbacks run
        transport.close()
    finally:
        await producer.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.common.audit_relay",
        description="Helper process of AuditRelay: links and produces one audit chain.",
    )
    parser.add_argument("--node-city", required=True)
    parser.add_argument("--chain")
    parser.add_argument("--service", default="peer-gateway")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.node_city, args.chain, args.service))
    return 0


if __name__ == "__main__":
    sys.exit(main())
