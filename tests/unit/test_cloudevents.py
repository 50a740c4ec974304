"""CloudEvents Kafka binding (binary mode): our headers round-trip, the official SDK accepts
them, and we accept the SDK's."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cloudevents.core.base import BaseCloudEvent, EventFactory
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.v1.event import CloudEvent

from services.common.avro import AvroSerde, SchemaStore, load_example
from services.common.cloudevents import (
    CONTENT_TYPE_AVRO,
    EventEnvelope,
    HeaderTemplate,
    InvalidEventHeaders,
    build_headers,
    continue_trace,
    data_schema_urn,
    is_valid_traceparent,
    new_event_id,
    new_traceparent,
    parse_data_schema_urn,
    parse_headers,
    source_for,
)

SERDE = AvroSerde(SchemaStore.load())
RECORD = load_example("CreditRecord")
SUBJECT = RECORD["subject"]["subject_key"]
EVENT_TYPE = "cn.creditlink.credit.record.accepted.v1"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
RFC3339_UTC_MILLIS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


class AvroBytesFormat:
    """The SDK's ``Format`` for binary mode with Avro data: the value passes through as bytes
    (the SDK's JSON format would try to turn Avro bytes into text)."""

    def read(self, event_factory: EventFactory | None, data: str | bytes) -> BaseCloudEvent:
        raise NotImplementedError("structured mode is not used")

    def write(self, event: BaseCloudEvent) -> bytes:
        raise NotImplementedError("structured mode is not used")

    def write_data(self, data: Any, datacontenttype: str | None) -> bytes:
        assert isinstance(data, bytes)
        return data

    def read_data(self, body: bytes, datacontenttype: str | None) -> bytes:
        return body

    def get_content_type(self) -> str:
        return CONTENT_TYPE_AVRO


def _headers(**overrides: Any) -> list[tuple[str, bytes]]:
    arguments: dict[str, Any] = {
        "event_type": EVENT_TYPE,
        "source": source_for("320500", "intake"),
        "subject": SUBJECT,
        "data_schema": SERDE.data_schema_uri("CreditRecord"),
    }
    arguments.update(overrides)
    return build_headers(**arguments)


def test_headers_carry_every_attribute_of_the_binding() -> None:
    moment = datetime(2024, 5, 8, 10, 15, 30, 123456, tzinfo=timezone(timedelta(hours=8)))
    headers = dict(_headers(event_id="rec-1", time=moment, traceparent=TRACEPARENT))
    assert headers == {
        "ce_specversion": b"1.0",
        "ce_id": b"rec-1",
        "ce_source": b"/cities/320500/intake",
        "ce_type": EVENT_TYPE.encode(),
        "ce_time": b"2024-05-08T02:15:30.123Z",
        "ce_subject": SUBJECT.encode(),
        "ce_dataschema": SERDE.data_schema_uri("CreditRecord").encode(),
        "content-type": b"application/avro",
        "traceparent": TRACEPARENT.encode(),
    }


def test_defaults_are_a_uuid4_now_and_a_fresh_trace() -> None:
    before = datetime.now(UTC)
    envelope = parse_headers(_headers())
    assert uuid.UUID(envelope.id).version == 4
    assert envelope.time is not None
    assert before - timedelta(milliseconds=1) <= envelope.time <= datetime.now(UTC)
    assert RFC3339_UTC_MILLIS.match(dict(_headers())["ce_time"].decode())
    assert envelope.traceparent is not None
    assert is_valid_traceparent(envelope.traceparent)
    assert parse_headers(_headers()).id != envelope.id


def test_round_trip() -> None:
    moment = datetime(2024, 5, 8, 2, 15, 30, 123000, tzinfo=UTC)
    headers = _headers(event_id="rec-1", time=moment, traceparent=TRACEPARENT)
    envelope = parse_headers(headers)
    assert envelope == EventEnvelope(
        id="rec-1",
        source="/cities/320500/intake",
        type=EVENT_TYPE,
        spec_version="1.0",
        time=moment,
        subject=SUBJECT,
        data_schema=SERDE.data_schema_uri("CreditRecord"),
        content_type="application/avro",
        traceparent=TRACEPARENT,
    )
    assert envelope.source_city == "320500"
    assert envelope.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert parse_headers(envelope.headers()) == envelope
    assert parse_headers(dict(headers)) == envelope  # a mapping works too


def test_the_official_sdk_reads_our_headers() -> None:
    value = SERDE.encode("CreditRecord", RECORD)
    headers = _headers(event_id="rec-1", traceparent=TRACEPARENT)
    message = ce_kafka.KafkaMessage(headers=dict(headers), key=SUBJECT.encode(), value=value)

    event = ce_kafka.from_binary(message, AvroBytesFormat(), CloudEvent)  # validates on creation

    assert event.get_specversion() == "1.0"
    assert event.get_id() == "rec-1"
    assert event.get_source() == "/cities/320500/intake"
    assert event.get_type() == EVENT_TYPE
    assert event.get_subject() == SUBJECT
    assert event.get_datacontenttype() == "application/avro"
    assert event.get_dataschema() == SERDE.data_schema_uri("CreditRecord")
    assert event.get_time() == parse_headers(headers).time
    assert event.get_data() == value
    assert SERDE.decode(event.get_data()) == RECORD


def test_we_read_the_official_sdks_headers() -> None:
    value = SERDE.encode("CreditRecord", RECORD)
    event = CloudEvent(
        {
            "type": EVENT_TYPE,
            "source": "/cities/320200/lists",
            "subject": SUBJECT,
            "datacontenttype": CONTENT_TYPE_AVRO,
            "dataschema": SERDE.data_schema_uri("CreditRecord"),
        },
        value,
    )
    message = ce_kafka.to_binary(event, AvroBytesFormat())
    envelope = parse_headers(message.headers)
    assert envelope.id == event.get_id()
    assert envelope.type == EVENT_TYPE
    assert envelope.source_city == "320200"
    assert envelope.time == event.get_time()
    assert envelope.content_type == CONTENT_TYPE_AVRO
    assert envelope.traceparent is None
    assert SERDE.decode(message.value) == RECORD


def test_missing_required_attributes_are_all_named() -> None:
    headers = [
        (name, value)
        for name, value in _headers()
        if name not in ("ce_id", "ce_source", "ce_specversion")
    ]
    with pytest.raises(InvalidEventHeaders) as caught:
        parse_headers(headers)
    assert caught.value.problems == [
        "required header ce_specversion is missing or empty",
        "required header ce_id is missing or empty",
        "required header ce_source is missing or empty",
    ]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ce_specversion", b"0.3", "only '1.0'"),
        ("ce_type", b"", "ce_type is missing or empty"),
        ("ce_time", b"yesterday", "not an RFC 3339"),
        ("ce_time", b"2024-05-08T02:15:30", "no UTC offset"),
        ("ce_subject", b"", "ce_subject is present but empty"),
        ("ce_id", b"\xff\xfe", "not UTF-8"),
    ],
)
def test_malformed_attributes_are_rejected(name: str, value: bytes, message: str) -> None:
    headers = [(n, v) for n, v in _headers() if n != name] + [(name, value)]
    with pytest.raises(InvalidEventHeaders, match=message):
        parse_headers(headers)


def test_conflicting_duplicates_are_rejected_and_names_are_case_insensitive() -> None:
    headers = [*_headers(event_id="a"), ("ce_id", b"b")]
    with pytest.raises(InvalidEventHeaders, match="conflicting ce_id"):
        parse_headers(headers)
    shouting = [(name.upper(), value) for name, value in _headers(event_id="a")]
    assert parse_headers(shouting).id == "a"


def test_unrelated_headers_are_ignored_and_extensions_kept() -> None:
    headers = [*_headers(), ("x-request-id", b"r-1"), ("ce_partitionkey", b"k")]
    envelope = parse_headers(headers)
    assert envelope.extension("partitionkey") == "k"
    assert envelope.extensions == (("partitionkey", "k"),)


def test_tombstone_headers_have_no_dataschema() -> None:
    envelope = parse_headers(_headers(data_schema=None))
    assert envelope.data_schema is None


def test_bad_input_to_build_headers_fails_fast() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        _headers(time=datetime(2024, 5, 8, 10, 0))
    with pytest.raises(ValueError, match="traceparent"):
        _headers(traceparent="00-00000000000000000000000000000000-00f067aa0ba902b7-01")
    with pytest.raises(ValueError, match="event_type is empty"):
        _headers(event_type="")
    with pytest.raises(ValueError, match="path segment"):
        source_for("320500", "a/b")


@pytest.mark.parametrize("city", ["suzhou", "32050", "3205000", ""])
def test_a_source_names_its_city_by_admin_code_only(city: str) -> None:
    with pytest.raises(ValueError, match="6-digit admin code"):
        source_for(city, "intake")


def test_every_service_of_a_node_publishes_under_its_city_code() -> None:
    from services.common.kafka import EventPublisher
    from services.common.settings import load_settings

    for city, code in {"suzhou": "320500", "wuxi": "320200", "changzhou": "320400"}.items():
        settings = load_settings({"CREDITLINK_CITY": city})
        for service in ("intake", "lists", "scores", "alerts"):
            publisher = EventPublisher(None, None, settings, service=service)  # type: ignore[arg-type]
            assert publisher.source == f"/cities/{code}/{service}"


def test_invalid_incoming_traceparent_does_not_reject_the_event() -> None:
    headers = [(n, v) for n, v in _headers() if n != "traceparent"] + [("traceparent", b"junk")]
    assert parse_headers(headers).traceparent is None


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (TRACEPARENT, True),
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", False),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", False),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", False),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", False),
        ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", True),
    ],
)
def test_traceparent_validation_follows_w3c(value: str, valid: bool) -> None:
    assert is_valid_traceparent(value) is valid


def test_continue_trace_keeps_the_trace_and_changes_the_span() -> None:
    child = continue_trace(TRACEPARENT)
    assert child.split("-")[1] == TRACEPARENT.split("-")[1]
    assert child.split("-")[2] != TRACEPARENT.split("-")[2]
    assert is_valid_traceparent(child)
    assert is_valid_traceparent(continue_trace(None))
    assert is_valid_traceparent(new_traceparent(sampled=False))
    assert new_traceparent(sampled=False).endswith("-00")


@pytest.mark.parametrize("subject", ["wuxi:17", None])
@pytest.mark.parametrize("traceparent", [TRACEPARENT, None])
def test_header_template_gives_what_build_headers_gives(
    subject: str | None, traceparent: str | None
) -> None:
    shared: dict[str, Any] = {
        "event_type": "cn.creditlink.audit.peer-call.v1",
        "source": "/cities/320200/lists",
        "data_schema": SERDE.data_schema_uri("PeerCallAudit"),
    }
    moment = datetime(2025, 3, 4, 5, 6, 7, 891000, tzinfo=UTC)
    built = HeaderTemplate(**shared).headers(
        event_id="wuxi:17", time=moment, subject=subject, traceparent=traceparent
    )
    expected = build_headers(
        **shared, subject=subject, event_id="wuxi:17", time=moment, traceparent=traceparent
    )
    if traceparent is None:  # each starts its own new trace
        assert is_valid_traceparent(dict(built)["traceparent"].decode())
        built = [h for h in built if h[0] != "traceparent"]
        expected = [h for h in expected if h[0] != "traceparent"]
    assert built == expected
    with pytest.raises(ValueError, match="traceparent"):
        HeaderTemplate(**shared).headers(
            event_id="x", time=moment, subject=None, traceparent="00-nope"
        )


def test_data_schema_urn_round_trip() -> None:
    version = SERDE.store.latest("CreditRecord")
    urn = data_schema_urn(version.full_name, version.version, version.fingerprint_hex)
    assert urn == version.data_schema_uri
    assert parse_data_schema_urn(urn) == (version.full_name, 1, version.fingerprint_hex)
    with pytest.raises(ValueError, match="not a creditlink schema URN"):
        parse_data_schema_urn("https://example.com/schema.avsc")


def test_event_ids_are_canonical_random_uuid4s() -> None:
    ids = [new_event_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    # Every variant nibble turns up, so none of the random bits is lost to the variant.
    assert {text[19] for text in ids} == set("89ab")


def test_new_traces_are_valid_and_never_all_zeros(monkeypatch: pytest.MonkeyPatch) -> None:
    parents = [new_traceparent() for _ in range(2000)]
    assert len(set(parents)) == len(parents)
    assert all(is_valid_traceparent(p) and p.endswith("-01") for p in parents)
    assert new_traceparent(sampled=False).endswith("-00")
    draws = iter([bytes(24), bytes(16) + b"\x01" * 8, b"\x01" * 16 + bytes(8), b"\x02" * 24])
    monkeypatch.setattr("services.common.cloudevents.os.urandom", lambda n: next(draws))
    assert new_traceparent() == f"00-{'02' * 16}-{'02' * 8}-01"
