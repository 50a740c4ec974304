"""The declared purpose of a call, worked out from its request and metadata for the audit
record (and remembered: callers state the same few purposes again and again)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from google.protobuf.message import Message

from services.common.logging import mask_resident_ids
from services.common.memo import BoundedMemo
from services.common.peer.names import (
    _MAX_PURPOSE_CHARS,
    DEFAULT_PURPOSES,
    PURPOSE_METADATA,
)

_FIELD_NAMES: dict[type, frozenset[str]] = {}


def _field(request: object, name: str) -> Any:
    """The request's field ``name``, or None when its message type has no such field."""
    if not isinstance(request, Message):
        return None
    names = _FIELD_NAMES.get(type(request))
    if names is None:
        names = _FIELD_NAMES[type(request)] = frozenset(request.DESCRIPTOR.fields_by_name)
    return getattr(request, name) if name in names else None


def _scenario_name(request: object) -> str | None:
    """The name of the request's ``scenario`` (``SCENARIO_…``), or None when its message
    has no scenario field."""
    scenario = _field(request, "scenario")
    if not isinstance(scenario, int) or not isinstance(request, Message):
        return None
    enum = request.DESCRIPTOR.fields_by_name["scenario"].enum_type
    value = enum.values_by_number.get(scenario) if enum is not None else None
    return value.name if value is not None else None


def _metadata_value(metadata: Sequence[tuple[str, Any]], name: str) -> str | None:
    for key, value in metadata:
        if key == name and isinstance(value, str):
            return value
    return None


def _default_purpose(method: str) -> str:
    return DEFAULT_PURPOSES.get(method.strip("/").rsplit("/", 1)[0], "PEER_CALL")


def _purpose(request: object, metadata: Sequence[tuple[str, Any]], method: str) -> str:
    scenario = _field(request, "scenario")
    text = _field(request, "purpose")
    declared = _metadata_value(metadata, PURPOSE_METADATA)
    # Callers state the same few purposes again and again, and working one out (the enum's
    # name, masking) costs more than the rest of the audit record; short ones are kept.
    key = (type(request), scenario, text, declared, method)
    known = _PURPOSES.get(key)
    if known is None:
        known = _work_out_purpose(request, scenario, text, declared, method)
        if len(text or "") + len(declared or "") <= _REMEMBERED_PURPOSE_CHARS:
            _PURPOSES.remember(key, known)
    return known


_REMEMBERED_PURPOSES: Final = 4096
_PURPOSES: BoundedMemo[tuple[Any, ...], str] = BoundedMemo(_REMEMBERED_PURPOSES)
_REMEMBERED_PURPOSE_CHARS: Final = 2 * _MAX_PURPOSE_CHARS


def _work_out_purpose(
    request: object, scenario: Any, text: Any, declared: str | None, method: str
) -> str:
    parts: list[str] = []
    if isinstance(scenario, int) and scenario and isinstance(request, Message):
        enum = request.DESCRIPTOR.fields_by_name["scenario"].enum_type
        if enum is not None and scenario in enum.values_by_number:
            parts.append(enum.values_by_number[scenario].name.removeprefix("SCENARIO_"))
    if isinstance(text, str) and text.strip():
        parts.append(text.strip())
    if not parts and declared is not None and declared.strip():
        parts.append(declared.strip())
    if not parts:
        parts.append(_default_purpose(method))
    # Caller-supplied text goes into a permanent log: never let a resident ID ride along.
    return mask_resident_ids(": ".join(parts))[:_MAX_PURPOSE_CHARS]
