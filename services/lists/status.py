"""Refusing a peer call with a status and the contract's ``creditlink-denial`` trailer."""

from __future__ import annotations

from typing import NoReturn

import grpc

from services.common.peer import DENIAL_TRAILER


async def abort(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, denial: str, details: str
) -> NoReturn:
    """End the call with ``code``; ``denial`` is the stable lower-kebab reason code."""
    await context.abort(code, details, trailing_metadata=((DENIAL_TRAILER, denial),))
    raise AssertionError("context.abort returned")  # abort always raises
