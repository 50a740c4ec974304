"""structlog JSON logging: one event per line on stdout, resident ID numbers masked.

Raw resident identity numbers (GB 11643) must never appear in a log line (docs/design.md §4.8), so a
processor masks every 18-character ID-number-shaped token in every string value, including
nested values and rendered exceptions, before rendering.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

# 6-digit division + 8-digit birth date + 3-digit sequence + check; not part of a longer
# number (a record id or a timestamp with 18+ digits is left alone).
_RESIDENT_ID = re.compile(r"(?<![0-9A-Za-z])(\d{6})\d{11}[\dXx](?![0-9A-Za-z])")
MASK = r"\1************"


def mask_resident_ids(text: str) -> str:
    """Keep the 6-digit division code and hide the rest of every resident ID number."""
    return _RESIDENT_ID.sub(MASK, text)


def _mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return mask_resident_ids(value)
    if isinstance(value, Mapping):
        return {k: _mask_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_value(v) for v in value]
    return value


def mask_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: masks ID numbers everywhere in the event, after exceptions render."""
    for key, value in list(event_dict.items()):
        event_dict[key] = _mask_value(value)
    return event_dict


def configure_logging(*, city: str, service: str, level: str = "info") -> None:
    """JSON lines on stdout with ``city`` and ``service`` bound on every event."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    # Libraries (aiokafka, faust, grpc) log through stdlib logging; route them through the
    # same masking renderer so no raw ID number leaks via a library message.
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.dict_tracebacks,
            mask_processor,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.dict_tracebacks,
                mask_processor,
                structlog.processors.JSONRenderer(ensure_ascii=False),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO))
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(city=city, service=service)


def get_logger(**bound: Any) -> Any:
    """A structlog logger with extra bound context (``subject_key``, ``ce_id``…).

    Lazy: a module-level logger made before :func:`configure_logging` still renders JSON.
    """
    return structlog.get_logger(**bound)
