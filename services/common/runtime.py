"""Settings of a serving process's interpreter: the start-up heap kept out of the cyclic
garbage collector's way, and the GIL handed between threads sooner.

**The heap.**
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
import os
import sys


def settle_heap() -> None:
    """Collect what start-up left behind, then freeze the rest (call once started)."""
    if os.environ.get("CREDITLINK_AB_GC_FREEZE", "1") == "0":
        return
    gc.collect()
    gc.freeze()


#: CPython lets a running thread keep the GIL for the switch interval (5 ms by default)
#: before another thread waiting for it gets a turn. grpc.aio's poller thread hands every
#: completed operation to the event loop thread, and needs the GIL to do so: behind a busy
#: event loop each handover waited up to 5 ms, and the server sat idle while calls were
#: ready. CheckSubject behind the node's kit at 16 callers (``python -m bench lists``'s
#: load, server alone): 2,200–2,300 req/s at 5 ms, 2,500–3,000 at 1 ms, 3,050–3,150 at
#: 0.5 ms, fewer again at 0.2 ms (switching costs more than it saves).
SERVING_SWITCH_INTERVAL_S = 0.0005


def hand_over_gil_sooner() -> None:
    """Shorten the switch interval of a process that serves gRPC (never lengthen it)."""
    if os.environ.get("CREDITLINK_AB_SWITCH_INTERVAL", "1") == "0":
        return
    if sys.getswitchinterval() > SERVING_SWITCH_INTERVAL_S:
        sys.setswitchinterval(SERVING_SWITCH_INTERVAL_S)
