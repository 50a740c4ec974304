"""What one calling city may take of a peer server: the limits read from the environment, the
token bucket and the calls in progress per caller (services/common/peer/limits.py)."""

from __future__ import annotations

import grpc
import pytest

from services.common.peer import Denied, PeerCall
from services.common.peer.limits import (
    RATE_LIMITED,
    TOO_MANY_CALLS,
    CallerLimits,
    transport_options,
)
from services.common.settings import PeerLimits, SettingsError, load_peer_limits

WUXI, CHANGZHOU = "320200", "320400"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _call() -> PeerCall:
    return PeerCall(method="/creditlink.peer.v1.CreditCheckService/CheckSubject", started=0.0)


def _refusal(limits: CallerLimits, caller: str) -> Denied:
    with pytest.raises(Denied) as refused:
        limits.admit(_call(), caller)
    return refused.value


def test_unset_variables_give_the_defaults() -> None:
    assert load_peer_limits({}) == PeerLimits()


def test_each_variable_sets_its_limit() -> None:
    limits = load_peer_limits(
        {
            "CREDITLINK_PEER_CALLER_RATE": "20.5",
            "CREDITLINK_PEER_CALLER_BURST": "40",
            "CREDITLINK_PEER_MAX_MESSAGE_BYTES": "65536",
            "CREDITLINK_PEER_FOLLOW_MAX_AGE_S": "30",
        }
    )
    assert (limits.caller_rate, limits.caller_burst) == (20.5, 40)
    assert (limits.max_message_bytes, limits.follow_stream_max_age) == (65536, 30.0)


def test_bad_values_are_all_reported_at_once() -> None:
    with pytest.raises(SettingsError) as refused:
        load_peer_limits(
            {
                "CREDITLINK_PEER_CALLER_RATE": "fast",
                "CREDITLINK_PEER_CALLER_BURST": "1.5",
                "CREDITLINK_PEER_MAX_CALLS_PER_CALLER": "0",
                "CREDITLINK_PEER_KEEPALIVE_S": "inf",
            }
        )
    message = str(refused.value)
    for variable in ("CALLER_RATE", "CALLER_BURST", "MAX_CALLS_PER_CALLER", "KEEPALIVE_S"):
        assert f"CREDITLINK_PEER_{variable}:" in message


def test_limits_built_in_code_are_checked_too() -> None:
    with pytest.raises(ValueError, match="caller_burst"):
        PeerLimits(caller_burst=0)


def test_transport_options_carry_the_limits_in_grpc_units() -> None:
    options = dict(
        transport_options(
            PeerLimits(max_message_bytes=1024, max_connection_age=2.5, max_streams_per_connection=7)
        )
    )
    assert options["grpc.max_receive_message_length"] == 1024
    assert options["grpc.max_connection_age_ms"] == 2500
    assert options["grpc.max_concurrent_streams"] == 7


def test_a_caller_gets_its_burst_then_the_rate() -> None:
    clock = Clock()
    limits = CallerLimits(PeerLimits(caller_rate=10, caller_burst=5), clock=clock)
    for _ in range(5):
        call = _call()
        limits.admit(call, CHANGZHOU)
        limits.release(call)
    refusal = _refusal(limits, CHANGZHOU)
    assert (refusal.code, refusal.denial) == (grpc.StatusCode.RESOURCE_EXHAUSTED, RATE_LIMITED)
    clock.now += 0.25  # 2.5 tokens at 10 per second
    for _ in range(2):
        call = _call()
        limits.admit(call, CHANGZHOU)
        limits.release(call)
    assert _refusal(limits, CHANGZHOU).denial == RATE_LIMITED
    clock.now += 3600  # a quiet hour refills up to the burst, not beyond
    admitted = 0
    while True:
        try:
            limits.admit(_call(), CHANGZHOU)
        except Denied:
            break
        admitted += 1
    assert admitted == 5


def test_one_callers_flood_leaves_the_others_bucket_alone() -> None:
    limits = CallerLimits(PeerLimits(caller_rate=1, caller_burst=3), clock=Clock())
    for _ in range(3):
        limits.admit(_call(), CHANGZHOU)
    assert _refusal(limits, CHANGZHOU).denial == RATE_LIMITED
    limits.admit(_call(), WUXI)


def test_calls_in_progress_are_capped_per_caller_and_released_once() -> None:
    limits = CallerLimits(
        PeerLimits(caller_rate=1000, caller_burst=1000, max_calls_per_caller=2), clock=Clock()
    )
    first, second = _call(), _call()
    limits.admit(first, CHANGZHOU)
    limits.admit(second, CHANGZHOU)
    refusal = _refusal(limits, CHANGZHOU)
    assert (refusal.code, refusal.denial) == (grpc.StatusCode.RESOURCE_EXHAUSTED, TOO_MANY_CALLS)
    limits.admit(_call(), WUXI)
    limits.release(first)
    limits.release(first)  # a second release of the same call hands nothing back
    assert limits.in_progress(CHANGZHOU) == 1
    limits.admit(_call(), CHANGZHOU)
    assert limits.in_progress(CHANGZHOU) == 2


def test_a_refused_call_holds_no_slot() -> None:
    limits = CallerLimits(
        PeerLimits(caller_rate=1, caller_burst=1, max_calls_per_caller=5), clock=Clock()
    )
    limits.admit(_call(), CHANGZHOU)
    refused = _call()
    with pytest.raises(Denied):
        limits.admit(refused, CHANGZHOU)
    assert refused.limited_as is None
    assert limits.in_progress(CHANGZHOU) == 1
