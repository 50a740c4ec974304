"""Waiting for the operator's stop: every node serves until SIGTERM (the orchestrator's stop)
or SIGINT (Ctrl-C), then stops gracefully in its own way."""

from __future__ import annotations

import asyncio
import signal
from typing import Final

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


async def until_signalled() -> None:
    """Return once SIGTERM or SIGINT arrives (the handlers are removed again)."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stopping.set)
    try:
        await stopping.wait()
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
