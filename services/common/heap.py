"""Keeping what a process loaded at start-up out of the cyclic garbage collector's way.

A service imports grpc, protobuf, aiokafka and its schemas, and loads its caches, before it
serves: hundreds of thousands of long-lived objects. Every full collection walks all of them
again, and a busy server or import worker triggers one every few thousand calls or rows.
``gc.freeze()`` moves everything alive at that moment into a generation the collector never
scans; reference counting still frees those objects as usual. Measured with
``python -m bench lists`` and ``python -m bench intake``: several per cent of the serving
CPU per call and of an import worker's CPU per row.
"""

from __future__ import annotations

import gc


def settle_heap() -> None:
    """Collect what start-up left behind, then freeze the rest (call once started)."""
    gc.collect()
    gc.freeze()
