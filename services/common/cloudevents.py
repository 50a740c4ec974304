"""CloudEvents 1.0 Kafka protocol binding, binary content mode, for creditlink events.

In binary mode the Kafka value is the event data itself (Avro single-object bytes) and every
context attribute travels as a ``ce_``-prefixed header; ``datacontenttype`` travels as
``content-type``. Header values are UTF-8 text. A W3C Trace Context ``traceparent`` header
rides along so one trace follows a record from the department's submission to a peer city.

Example::

    headers = build_headers(
        event_type="cn.creditlink.credit.record.accepted.v1",
        source=source_for("320500", "intake"),
        subject="L:91320500MA1W8XY409",
        data_schema=serde.data_schema_uri("CreditRecord"),
    )
    envelope = parse_headers(message.headers)   # raises InvalidEventHeaders if incomplete
    envelope.id, envelope.type, envelope.time, envelope.traceparent
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

SPEC_VERSION: Final = "1.0"
CONTENT_TYPE_AVRO: Final = "application/avro"
HEADER_PREFIX: Final = "ce_"
CONTENT_TYPE_HEADER: Final = "content-type"
TRACEPARENT_HEADER: Final = "traceparent"

#: Context attributes the CloudEvents 1.0 specification requires of every event.
REQUIRED_ATTRIBUTES: Final = ("specversion", "id", "source", "type")

_DATA_SCHEMA_URN = re.compile(
    r"^urn:creditlink:schema:(?P<name>[A-Za-z_][A-Za-z0-9_.]*):v(?P<version>[1-9][0-9]*)"
    r":(?P<fingerprint>[0-9a-f]{16})$"
)
# W3C Trace Context §3.2: version-traceid-parentid-flags, lowercase hex. Versions above 00
# may append fields after a dash; version ff is invalid.
_TRACEPARENT = re.compile(
    r"^(?P<version>[0-9a-f]{2})-(?P<trace_id>[0-9a-f]{32})-(?P<parent_id>[0-9a-f]{16})"
    r"-(?P<flags>[0-9a-f]{2})(?P<rest>-.*)?$"
)
_SOURCE = re.compile(r"^/cities/(?P<city>[^/]+)/(?P<service>[^/]+)$")


class InvalidEventHeaders(ValueError):
    """The headers do not carry a valid CloudEvent; ``problems`` lists everything wrong."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid CloudEvents headers: " + "; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class EventEnvelope:
    """The CloudEvents context of one Kafka message (binary mode), plus its trace context."""

    id: str
    source: str
    type: str
    spec_version: str = SPEC_VERSION
    time: datetime | None = None
    subject: str | None = None
    data_schema: str | None = None
    content_type: str | None = None
    traceparent: str | None = None
    #: Any other ``ce_`` attributes, as (name without prefix, value), sorted by name.
    extensions: tuple[tuple[str, str], ...] = ()

    @property
    def trace_id(self) -> str | None:
        """The 32-hex W3C trace id, for log correlation."""
        match = _TRACEPARENT.match(self.traceparent or "")
        return match.group("trace_id") if match else None

    @property
    def source_city(self) -> str | None:
        """``<city>`` of a ``/cities/<city>/<service>`` source; None for other sources."""
        match = _SOURCE.match(self.source)
        return match.group("city") if match else None

    def extension(self, name: str) -> str | None:
        return dict(self.extensions).get(name)

    def headers(self) -> list[tuple[str, bytes]]:
        """The same context as Kafka headers, e.g. to forward an event to a dead-letter topic
        without changing its ``ce_id``."""
        pairs: list[tuple[str, str | None]] = [
            ("ce_specversion", self.spec_version),
            ("ce_id", self.id),
            ("ce_source", self.source),
            ("ce_type", self.type),
            ("ce_time", format_time(self.time) if self.time is not None else None),
            ("ce_subject", self.subject),
            ("ce_dataschema", self.data_schema),
            (CONTENT_TYPE_HEADER, self.content_type),
            (TRACEPARENT_HEADER, self.traceparent),
            *((HEADER_PREFIX + name, value) for name, value in self.extensions),
        ]
        return [(name, value.encode("utf-8")) for name, value in pairs if value is not None]


def source_for(city_code: str, service: str) -> str:
    """The ``ce_source`` of a service of a city node: ``/cities/<admin code>/<service>``.

    One convention on every topic: the city's 6-digit GB/T 2260 code (``/cities/320500/lists``),
    which stays when a city's name or region-file key changes (docs/design.md §2.3).
    """
    if len(city_code) != 6 or not city_code.isdigit():
        raise ValueError(f"ce_source names a city by its 6-digit admin code, not {city_code!r}")
    if not service or "/" in service:
        raise ValueError(f"service must be a non-empty path segment: {service!r}")
    return f"/cities/{city_code}/{service}"


def data_schema_urn(full_name: str, version: int, fingerprint_hex: str) -> str:
    """``urn:creditlink:schema:<full name>:v<N>:<fingerprint hex>`` for ``ce_dataschema``."""
    urn = f"urn:creditlink:schema:{full_name}:v{version}:{fingerprint_hex}"
    if not _DATA_SCHEMA_URN.match(urn):
        raise ValueError(f"not a valid schema reference: {urn!r}")
    return urn


def parse_data_schema_urn(urn: str) -> tuple[str, int, str]:
    """(full name, version, fingerprint hex) of a ``ce_dataschema`` URN."""
    match = _DATA_SCHEMA_URN.match(urn)
    if match is None:
        raise ValueError(f"not a creditlink schema URN: {urn!r}")
    return match.group("name"), int(match.group("version")), match.group("fingerprint")


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds: ``2024-05-06T01:02:03.456Z``."""
    if moment.tzinfo is None:
        raise ValueError("event time must be timezone-aware (a naive time is ambiguous)")
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="milliseconds")[:-6] + "Z"  # without "+00:00"


def new_traceparent(*, sampled: bool = True) -> str:
    """A fresh W3C ``traceparent`` (version 00) starting a new trace."""
    while True:
        # Trace id and parent id from one draw of the system's random source (an event
        # needs them on every publish); all zeros is invalid for either.
        raw = os.urandom(24).hex()
        if raw[:32].strip("0") and raw[32:].strip("0"):
            return f"00-{raw[:32]}-{raw[32:]}-{'01' if sampled else '00'}"


def new_event_id() -> str:
    """A random UUID (version 4, RFC 4122 variant) as text: a ``ce_id`` nobody else chose.

    ``str(uuid.uuid4())`` with the string made directly, for the publish path.
    """
    raw = os.urandom(16).hex()
    variant = "89ab"[int(raw[16], 16) & 3]
    return f"{raw[:8]}-{raw[8:12]}-4{raw[13:16]}-{variant}{raw[17:20]}-{raw[20:]}"


def continue_trace(parent: str | None) -> str:
    """A ``traceparent`` for an event caused by ``parent``: same trace, new span id.

    Starts a new trace when ``parent`` is missing or invalid (W3C Trace Context §4.3).
    """
    match = _TRACEPARENT.match(parent or "")
    if match is None or not is_valid_traceparent(parent or ""):
        return new_traceparent()
    return f"00-{match.group('trace_id')}-{_nonzero_hex(8)}-{match.group('flags')}"


def is_valid_traceparent(value: str) -> bool:
    match = _TRACEPARENT.match(value)
    if match is None:
        return False
    version, trace_id, parent_id, _flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return False
    return bool(trace_id.strip("0")) and bool(parent_id.strip("0"))  # all zeros is invalid


def _nonzero_hex(num_bytes: int) -> str:
    while True:
        value = secrets.token_hex(num_bytes)
        if set(value) != {"0"}:
            return value


def build_headers(
    *,
    event_type: str,
    source: str,
    subject: str | None,
    data_schema: str | None,
    event_id: str | None = None,
    time: datetime | None = None,
    traceparent: str | None = None,
    content_type: str = CONTENT_TYPE_AVRO,
) -> list[tuple[str, bytes]]:
    """Kafka headers of one event in CloudEvents binary mode.

    ``event_id`` defaults to a UUID 4 and ``time`` to now; ``traceparent`` defaults to a new
    trace. ``data_schema`` is None only for a tombstone, which has no data.
    """
    problems = []
    if not event_type:
        problems.append("event_type is empty")
    if not source:
        problems.append("source is empty")
    if event_id is not None and not event_id:
        problems.append("event_id is empty")
    if subject is not None and not subject:
        problems.append("subject is empty (pass None for no subject)")
    if traceparent is not None and not is_valid_traceparent(traceparent):
        problems.append(f"traceparent {traceparent!r} is not a valid W3C traceparent")
    if problems:
        raise ValueError("cannot build CloudEvents headers: " + "; ".join(problems))
    envelope = EventEnvelope(
        id=event_id if event_id is not None else new_event_id(),
        source=source,
        type=event_type,
        time=time if time is not None else datetime.now(UTC),
        subject=subject,
        data_schema=data_schema,
        content_type=content_type,
        traceparent=traceparent if traceparent is not None else new_traceparent(),
    )
    return envelope.headers()


def parse_headers(
    headers: Iterable[tuple[str, bytes | None]] | Mapping[str, bytes | None],
) -> EventEnvelope:
    """The CloudEvent context of a Kafka message's headers; :class:`InvalidEventHeaders` if
    a required attribute is missing or any attribute is malformed.

    Header names are matched case-insensitively. An invalid ``traceparent`` does not reject the
    event (tracing must never lose data): it reads as None.
    """
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    problems: list[str] = []
    attributes: dict[str, str] = {}
    content_type: str | None = None
    traceparent: str | None = None
    for raw_name, raw_value in pairs:
        name = raw_name.lower()
        if not (
            name.startswith(HEADER_PREFIX) or name in (CONTENT_TYPE_HEADER, TRACEPARENT_HEADER)
        ):
            continue
        try:
            value = (raw_value or b"").decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"header {raw_name} is not UTF-8")
            continue
        if name == TRACEPARENT_HEADER:
            traceparent = value if is_valid_traceparent(value) else None
            continue
        if name == CONTENT_TYPE_HEADER:
            if content_type is not None and content_type != value:
                problems.append(f"conflicting {CONTENT_TYPE_HEADER} headers")
            content_type = value
            continue
        attribute = name[len(HEADER_PREFIX) :]
        if attribute in attributes and attributes[attribute] != value:
            problems.append(f"conflicting {raw_name} headers")
        attributes[attribute] = value

    for required in REQUIRED_ATTRIBUTES:
        if not attributes.get(required):
            problems.append(f"required header {HEADER_PREFIX}{required} is missing or empty")
    spec_version = attributes.get("specversion")
    if spec_version and spec_version != SPEC_VERSION:
        problems.append(f"ce_specversion is {spec_version!r}, only {SPEC_VERSION!r} is supported")
    time: datetime | None = None
    if "time" in attributes:
        try:
            time = datetime.fromisoformat(attributes["time"])
        except ValueError:
            problems.append(f"ce_time {attributes['time']!r} is not an RFC 3339 timestamp")
        else:
            if time.tzinfo is None:
                problems.append(f"ce_time {attributes['time']!r} has no UTC offset")
    for optional in ("subject", "dataschema"):
        if optional in attributes and not attributes[optional]:
            problems.append(f"ce_{optional} is present but empty")
    if content_type is not None and not content_type:
        problems.append(f"{CONTENT_TYPE_HEADER} is present but empty")
    if problems:
        raise InvalidEventHeaders(problems)

    known = {*REQUIRED_ATTRIBUTES, "time", "subject", "dataschema"}
    return EventEnvelope(
        id=attributes["id"],
        source=attributes["source"],
        type=attributes["type"],
        spec_version=attributes["specversion"],
        time=time,
        subject=attributes.get("subject"),
        data_schema=attributes.get("dataschema"),
        content_type=content_type,
        traceparent=traceparent,
        extensions=tuple(sorted((k, v) for k, v in attributes.items() if k not in known)),
    )


class HeaderTemplate:
    """:func:`build_headers` for many events sharing type, source and schema — and, when the
    template is given them, time and trace context.

    The headers are built (and checked) once; :meth:`headers` copies them and sets the id and
    subject of one event, and its time and trace when the template left them open, giving the
    same headers, in the same order, as :func:`build_headers` would. For hot paths: every
    record of an import, the audit record of every peer call.
    """

    def __init__(
        self,
        *,
        event_type: str,
        source: str,
        data_schema: str,
        time: datetime | None = None,
        traceparent: str | None = None,
        content_type: str = CONTENT_TYPE_AVRO,
    ) -> None:
        self._fixed_time = time is not None
        self._fixed_trace = traceparent is not None
        self._headers = build_headers(
            event_type=event_type,
            source=source,
            subject="-",
            data_schema=data_schema,
            event_id="-",
            time=time if time is not None else datetime.now(UTC),
            traceparent=traceparent,
            content_type=content_type,
        )
        names = [name for name, _ in self._headers]
        self._id_at = names.index("ce_id")
        self._time_at = names.index("ce_time")
        self._subject_at = names.index("ce_subject")
        self._trace_at = names.index(TRACEPARENT_HEADER)

    def headers(
        self,
        event_id: str,
        subject: str | None,
        *,
        time: datetime | None = None,
        traceparent: str | None = None,
    ) -> list[tuple[str, bytes]]:
        """Headers of one event. ``time`` is required unless the template has one;
        ``traceparent`` None (and none in the template) starts a new trace."""
        if not event_id:
            raise ValueError("cannot build CloudEvents headers: event_id is empty")
        headers = list(self._headers)
        headers[self._id_at] = ("ce_id", event_id.encode())
        if not self._fixed_time:
            if time is None:
                raise ValueError("cannot build CloudEvents headers: the event has no time")
            headers[self._time_at] = ("ce_time", format_time(time).encode())
        if not self._fixed_trace:
            if traceparent is None:
                traceparent = new_traceparent()
            elif not is_valid_traceparent(traceparent):
                raise ValueError(f"traceparent {traceparent!r} is not a valid W3C traceparent")
            headers[self._trace_at] = (TRACEPARENT_HEADER, traceparent.encode())
        if subject is None:
            del headers[self._subject_at]
        elif not subject:
            raise ValueError("cannot build CloudEvents headers: subject is empty")
        else:
            headers[self._subject_at] = ("ce_subject", subject.encode())
        return headers
