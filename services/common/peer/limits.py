"""What one calling city may take of a peer server: its calls per second and its calls at a
time (docs/design.md §3.3), and the gRPC transport options of the same limits.

The guard asks :meth:`CallerLimits.admit` once per call, right after the caller's identity
is known, and the call's end hands the slot back (:meth:`CallerLimits.release`). A refusal
is a :class:`Denied` with ``RESOURCE_EXHAUSTED``, so it is answered and audited like every
other refusal, and the other cities' buckets are untouched. Callers are region cities named
by verified certificates (``unknown-city`` is refused before), so the per-caller state is
bounded by the region's size.

Example::

    limits = CallerLimits(PeerLimits(caller_rate=50, caller_burst=100))
    limits.admit(call, "320400")   # raises Denied("rate-limited") once the bucket is empty
    ...
    limits.release(call)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import grpc

from services.common.peer.call import Denied, PeerCall
from services.common.settings import PeerLimits

RATE_LIMITED: Final = "rate-limited"
TOO_MANY_CALLS: Final = "too-many-calls"


def transport_options(limits: PeerLimits) -> list[tuple[str, int]]:
    """gRPC core server options for the transport part of ``limits``."""

    def ms(seconds: float) -> int:
        return max(1, round(seconds * 1000))

    return [
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.max_concurrent_streams", limits.max_streams_per_connection),
        ("grpc.max_connection_age_ms", ms(limits.max_connection_age)),
        ("grpc.max_connection_age_grace_ms", ms(limits.connection_age_grace)),
        ("grpc.max_connection_idle_ms", ms(limits.max_connection_idle)),
        ("grpc.keepalive_time_ms", ms(limits.keepalive_interval)),
        ("grpc.keepalive_timeout_ms", ms(limits.keepalive_timeout)),
        # Peers ping idle connections (a mirror's follow stream waits for changes); allowed,
        # but no closer together than min_ping_interval (gRPC's ping-strike enforcement).
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", ms(limits.min_ping_interval)),
        ("grpc.http2.max_ping_strikes", 2),
    ]


@dataclass(slots=True)
class _Bucket:
    tokens: float
    refilled: float
    calls: int = 0


class CallerLimits:
    """A token bucket and a count of calls in progress per calling city."""

    def __init__(self, limits: PeerLimits, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = limits.caller_rate
        self._burst = float(limits.caller_burst)
        self._max_calls = limits.max_calls_per_caller
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def admit(self, call: PeerCall, caller: str) -> None:
        """Let ``call`` of ``caller`` (a city code) start, or raise :class:`Denied`. An
        admitted call holds one of the caller's slots until :meth:`release`."""
        now = self._clock()
        bucket = self._buckets.get(caller)
        if bucket is None:
            bucket = self._buckets[caller] = _Bucket(self._burst, now)
        else:
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.refilled) * self._rate)
            bucket.refilled = now
        if bucket.tokens < 1.0:
            raise Denied(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                RATE_LIMITED,
                f"more than {self._rate:g} calls per second (burst {self._burst:g}); retry later",
            )
        if bucket.calls >= self._max_calls:
            raise Denied(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                TOO_MANY_CALLS,
                f"{self._max_calls} calls of this city are in progress; retry when one ends",
            )
        bucket.tokens -= 1.0
        bucket.calls += 1
        call.limited_as = caller

    def release(self, call: PeerCall) -> None:
        """Hand back the slot ``call`` holds, if it holds one."""
        caller = call.limited_as
        if caller is not None:
            call.limited_as = None
            self._buckets[caller].calls -= 1

    def in_progress(self, caller: str) -> int:
        bucket = self._buckets.get(caller)
        return 0 if bucket is None else bucket.calls
