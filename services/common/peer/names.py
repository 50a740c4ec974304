"""The names of the peer-call contract that every part of the kit shares: trailers, metadata
and limits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

DENIAL_TRAILER: Final = "creditlink-denial"
PURPOSE_METADATA: Final = "creditlink-purpose"
DEFAULT_GRACE_SECONDS: Final = 5.0
DEFAULT_PURPOSES: Final = {
    "creditlink.peer.v1.ListSyncService": "LIST_SYNC",
    "creditlink.peer.v1.CreditCheckService": "CREDIT_CHECK",
    "creditlink.peer.v1.ScoreRecognitionService": "SCORE_RECOGNITION",
    "creditlink.peer.v1.AlertExchangeService": "ALERT_EXCHANGE",
    "creditlink.peer.v1.RecordIntakeService": "RECORD_INTAKE",
}
_MAX_PURPOSE_CHARS = 200
_MAX_KNOWN_CERTIFICATES = 256

Handler = Callable[..., Any]
#: (full method name, status code name, seconds) of one served call.
LatencySink = Callable[[str, str, float], None]
