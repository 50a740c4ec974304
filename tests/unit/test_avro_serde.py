"""Avro single-object encoding: every schema round-trips, other Avro implementations agree,
and bad bytes fail with the serde's own typed errors only."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from enum import StrEnum
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common import avro as avro_module
from services.common.avro import (
    EXAMPLES_DIR,
    SINGLE_OBJECT_MARKER,
    AvroSerde,
    CorruptPayload,
    InvalidRecord,
    NotSingleObjectEncoded,
    SchemaResolutionError,
    SchemaStore,
    SchemaStoreError,
    SerdeError,
    UnknownSchema,
    UnknownSchemaFingerprint,
    load_example,
)

STORE = SchemaStore.load()
SERDE = AvroSerde(STORE)
NAMES = STORE.names()
EXPECTED_RECORDS = {
    "AuditCheckpoint",
    "AlertStatusChange",
    "CreditRecord",
    "DisclosureQuality",
    "ListChange",
    "ListEntry",
    "PeerCallAudit",
    "ConsentRevocation",
    "RejectedRecord",
    "ScoreEntry",
    "ScoreRecognition",
    "ScoreScale",
    "SupervisionAlert",
}


def crc64_avro(data: bytes) -> int:
    """CRC-64-AVRO exactly as the Avro specification's reference code computes it."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def without_logical_types(schema: Any) -> Any:
    """The schema with logicalType annotations removed (they do not change the encoding)."""
    if isinstance(schema, list):
        return [without_logical_types(s) for s in schema]
    if isinstance(schema, dict):
        return {k: without_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    return schema


def field_paths_without_doc(schema: Any, where: str = "") -> Iterator[str]:
    if isinstance(schema, list):
        for branch in schema:
            yield from field_paths_without_doc(branch, where)
    elif isinstance(schema, dict):
        if schema.get("type") == "record":
            for field in schema["fields"]:
                path = f"{where}.{field['name']}" if where else field["name"]
                if not str(field.get("doc", "")).strip():
                    yield path
                yield from field_paths_without_doc(field["type"], path)
        elif schema.get("type") == "array":
            yield from field_paths_without_doc(schema["items"], where + "[]")
        elif schema.get("type") == "map":
            yield from field_paths_without_doc(schema["values"], where + "{}")


def test_store_holds_every_event_schema_in_namespace_v1() -> None:
    assert {STORE.latest(name).record_name for name in NAMES} == EXPECTED_RECORDS
    assert all(name.startswith("creditlink.v1.") for name in NAMES)
    assert STORE.latest("CreditRecord") is STORE.latest("creditlink.v1.CreditRecord")
    assert STORE.version("CreditRecord", 1) is STORE.latest("CreditRecord")


def test_every_schema_has_one_example_and_every_example_a_schema() -> None:
    examples = {p.stem for p in Path(EXAMPLES_DIR).glob("*.json")}
    assert examples == EXPECTED_RECORDS


@pytest.mark.parametrize("name", NAMES)
def test_every_field_has_a_doc(name: str) -> None:
    for version in STORE.versions(name):
        assert version.schema.get("doc"), f"{version.path}: record has no doc"
        assert list(field_paths_without_doc(version.schema)) == [], version.path


@pytest.mark.parametrize("name", NAMES)
def test_fingerprint_is_crc64_avro_of_the_parsing_canonical_form(name: str) -> None:
    version = STORE.latest(name)
    expected = crc64_avro(version.canonical_form.encode("utf-8")).to_bytes(8, "little")
    assert version.fingerprint == expected
    assert version.fingerprint_hex == expected.hex()
    # Apache avro computes the same canonical form once logical types are set aside (its
    # Python canonical form keeps {"type": "long"} for annotated primitives, unlike the
    # specification and Java, so it cannot be compared on the schema as written).
    apache = avro.schema.parse(json.dumps(without_logical_types(dict(version.schema))))
    assert apache.canonical_form == version.canonical_form
    assert apache.fingerprint("CRC-64-AVRO") == version.fingerprint


@pytest.mark.parametrize("name", NAMES)
def test_example_round_trips(name: str) -> None:
    example = load_example(name)
    encoded = SERDE.encode(name, example)
    assert SERDE.decode(encoded) == example
    assert SERDE.decode(encoded, reader=name) == example
    assert SERDE.decode(encoded, reader=STORE.latest(name)) == example


@pytest.mark.parametrize("name", NAMES)
def test_bytes_are_single_object_encoded_and_apache_avro_reads_them(name: str) -> None:
    example = load_example(name)
    encoded = SERDE.encode(name, example)
    writer = STORE.latest(name)

    assert encoded[:2] == SINGLE_OBJECT_MARKER == b"\xc3\x01"
    assert encoded[2:10] == writer.fingerprint
    assert SERDE.writer_of(encoded) is writer

    # The other implementation: parse the header ourselves, then Apache avro's DatumReader.
    apache_writer = avro.schema.parse(json.dumps(dict(writer.schema)))
    body = io.BytesIO(encoded[10:])
    decoded = avro.io.DatumReader(apache_writer).read(avro.io.BinaryDecoder(body))
    assert body.tell() == len(encoded) - 10
    assert decoded == example


@pytest.mark.parametrize("name", NAMES)
def test_apache_avro_writes_what_the_serde_reads(name: str) -> None:
    example = load_example(name)
    writer = STORE.latest(name)
    apache_writer = avro.schema.parse(json.dumps(dict(writer.schema)))
    buffer = io.BytesIO()
    buffer.write(writer.header)
    avro.io.DatumWriter(apache_writer).write(example, avro.io.BinaryEncoder(buffer))
    assert buffer.getvalue() == SERDE.encode(name, example)
    assert SERDE.decode(buffer.getvalue()) == example


def test_headers_helpers_name_the_writer_schema() -> None:
    version = STORE.latest("CreditRecord")
    assert SERDE.fingerprint_hex("CreditRecord") == version.fingerprint_hex
    assert len(SERDE.fingerprint_hex("CreditRecord")) == 16
    assert SERDE.data_schema_uri("creditlink.v1.CreditRecord") == (
        f"urn:creditlink:schema:creditlink.v1.CreditRecord:v1:{version.fingerprint_hex}"
    )


def test_peer_call_audit_example_satisfies_the_documented_hash_rule() -> None:
    audit = load_example("PeerCallAudit")
    unsealed = dict(audit, hash="")
    digest = hashlib.sha256(
        audit["prev_hash"].encode("ascii") + SERDE.encode("PeerCallAudit", unsealed)
    ).hexdigest()
    assert audit["hash"] == digest


# --- failures --------------------------------------------------------------------------


def test_unknown_fingerprint_is_reported_with_the_fingerprint() -> None:
    encoded = bytearray(SERDE.encode("ScoreEntry", load_example("ScoreEntry")))
    encoded[2:10] = b"\x01\x02\x03\x04\x05\x06\x07\x08"
    with pytest.raises(UnknownSchemaFingerprint) as caught:
        SERDE.decode(bytes(encoded))
    assert caught.value.fingerprint == b"\x01\x02\x03\x04\x05\x06\x07\x08"
    assert "0102030405060708" in str(caught.value)


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc3", b"\xc3\x01\x00", b'{"record_id": "x"}', b"\x00\x01" + bytes(20), b"Obj\x01"],
)
def test_bytes_without_the_single_object_header_are_rejected(data: bytes) -> None:
    with pytest.raises(NotSingleObjectEncoded):
        SERDE.decode(data)


def test_truncated_body_and_trailing_bytes_are_corrupt() -> None:
    encoded = SERDE.encode("CreditRecord", load_example("CreditRecord"))
    with pytest.raises(CorruptPayload):
        SERDE.decode(encoded[:-5])
    with pytest.raises(CorruptPayload, match="left over"):
        SERDE.decode(encoded + b"\x00")


def test_reading_as_another_record_is_a_resolution_error() -> None:
    encoded = SERDE.encode("ScoreEntry", load_example("ScoreEntry"))
    with pytest.raises(SchemaResolutionError):
        SERDE.decode(encoded, reader="AlertStatusChange")


def test_records_that_do_not_match_the_schema_are_invalid() -> None:
    example = load_example("ScoreEntry")
    missing = {k: v for k, v in example.items() if k != "score"}
    with pytest.raises(InvalidRecord, match="score"):
        SERDE.encode("ScoreEntry", missing)
    with pytest.raises(InvalidRecord, match="scroe"):
        SERDE.encode("ScoreEntry", {**example, "scroe": 1.0})
    with pytest.raises(InvalidRecord):
        SERDE.encode("ScoreEntry", {**example, "computed_at": "yesterday"})
    # Fields with defaults may be left out.
    optional_left_out = {k: v for k, v in example.items() if k != "model_version"}
    assert SERDE.decode(SERDE.encode("ScoreEntry", optional_left_out))["model_version"] is None


def test_unknown_schema_names_and_versions() -> None:
    with pytest.raises(UnknownSchema):
        SERDE.encode("NoSuchEvent", {})
    with pytest.raises(UnknownSchema):
        SERDE.encode("CreditRecord", load_example("CreditRecord"), version=2)
    assert isinstance(UnknownSchema("x"), LookupError)


_FINGERPRINTS = [v.fingerprint for v in STORE]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_serde_errors(data: bytes) -> None:
    with contextlib.suppress(SerdeError):
        SERDE.decode(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_FINGERPRINTS), st.binary(max_size=400))
def test_known_header_with_arbitrary_body_raises_only_serde_errors(
    fingerprint: bytes, body: bytes
) -> None:
    try:
        record = SERDE.decode(SINGLE_OBJECT_MARKER + fingerprint + body)
    except SerdeError:
        return
    assert isinstance(record, dict)


# --- store loading ---------------------------------------------------------------------


def _write_schema(root: Path, folder: str, version: int, schema: dict[str, Any]) -> None:
    (root / folder).mkdir(parents=True, exist_ok=True)
    (root / folder / f"v{version}.avsc").write_text(json.dumps(schema), encoding="utf-8")


def _tiny(name: str) -> dict[str, Any]:
    return {
        "type": "record",
        "name": name,
        "namespace": "creditlink.v1",
        "doc": "test",
        "fields": [{"name": "id", "type": "string", "doc": "id"}],
    }


def test_store_rejects_a_gap_in_versions(tmp_path: Path) -> None:
    _write_schema(tmp_path, "Tiny", 1, _tiny("Tiny"))
    _write_schema(tmp_path, "Tiny", 3, _tiny("Tiny"))
    with pytest.raises(SchemaStoreError, match="without gaps"):
        SchemaStore(tmp_path)


def test_store_rejects_a_record_in_a_folder_of_another_name(tmp_path: Path) -> None:
    _write_schema(tmp_path, "Other", 1, _tiny("Tiny"))
    with pytest.raises(SchemaStoreError, match="folder named after it"):
        SchemaStore(tmp_path)


def test_store_rejects_an_invalid_schema(tmp_path: Path) -> None:
    broken = _tiny("Tiny")
    broken["fields"][0]["type"] = "no.such.Type"
    _write_schema(tmp_path, "Tiny", 1, broken)
    with pytest.raises(SchemaStoreError, match="not a valid Avro schema"):
        SchemaStore(tmp_path)


def test_store_rejects_fingerprint_clash_between_different_schemas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_schema(tmp_path, "One", 1, _tiny("One"))
    _write_schema(tmp_path, "Two", 1, _tiny("Two"))
    monkeypatch.setattr(avro_module.store, "crc64_avro_fingerprint", lambda _form: b"\x00" * 8)
    with pytest.raises(SchemaStoreError, match="same fingerprint"):
        SchemaStore(tmp_path)


def test_versions_differing_only_in_docs_share_one_writer_entry(tmp_path: Path) -> None:
    _write_schema(tmp_path, "Tiny", 1, _tiny("Tiny"))
    redocumented = _tiny("Tiny")
    redocumented["fields"][0]["doc"] = "the id, better explained"
    _write_schema(tmp_path, "Tiny", 2, redocumented)
    store = SchemaStore(tmp_path)
    v1, v2 = store.versions("Tiny")
    assert v1.fingerprint == v2.fingerprint
    assert store.by_fingerprint(v2.fingerprint) is v1
    serde = AvroSerde(store)
    assert serde.decode(serde.encode("Tiny", {"id": "a"}, version=2)) == {"id": "a"}


# --- compiled writers ------------------------------------------------------------------


def _fastavro_bytes(version: avro_module.SchemaVersion, record: Any) -> bytes:
    buffer = io.BytesIO()
    buffer.write(version.header)
    fastavro.schemaless_writer(
        buffer, version.parsed, record, strict_allow_default=True, disable_tuple_notation=True
    )
    return buffer.getvalue()


_ZONES = st.sampled_from(
    [UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-5, minutes=-30))]
)
_MOMENTS = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=_ZONES
)
_TEXT = st.text(max_size=80) | st.sampled_from(["", "苏州市市场监督管理局", "x" * 200])


def _values(schema: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of every shape a schema admits, in the Python types the services use."""
    if isinstance(schema, list):
        return st.one_of(*(_values(branch, named) for branch in schema))
    if isinstance(schema, str):
        if schema in named:
            return _values(named[schema], named)
        return {
            "null": st.none(),
            "string": _TEXT,
            "bytes": st.binary(max_size=300),
            "int": st.integers(-(2**31), 2**31 - 1),
            "long": st.integers(-(2**63), 2**63 - 1),
            "boolean": st.booleans(),
            "double": st.floats(),
        }[schema]
    logical = schema.get("logicalType")
    if logical == "date":
        return st.dates()
    if logical == "timestamp-millis":
        return _MOMENTS
    kind = schema["type"]
    if kind == "record":
        return st.fixed_dictionaries(
            {field["name"]: _values(field["type"], named) for field in schema["fields"]}
        )
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(_values(schema["items"], named), max_size=4)
    if kind == "map":
        return st.dictionaries(_TEXT, _values(schema["values"], named), max_size=3)
    return _values(kind, named)


def _records(version: avro_module.SchemaVersion) -> st.SearchStrategy[Any]:
    return _values(version.parsed, version.parsed["__named_schemas"])


_LATEST = [STORE.latest(name) for name in NAMES]


@pytest.mark.parametrize("version", _LATEST, ids=[v.record_name for v in _LATEST])
def test_every_schema_has_a_compiled_writer(version: avro_module.SchemaVersion) -> None:
    avro_module.compile_writer(version.parsed)


@pytest.mark.parametrize("version", _LATEST, ids=[v.record_name for v in _LATEST])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_compiled_writer_writes_the_bytes_fastavro_writes(
    version: avro_module.SchemaVersion, data: st.DataObject
) -> None:
    record = data.draw(_records(version))
    out = bytearray(version.header)
    avro_module.compile_writer(version.parsed)(out, record)  # written by it, not handed on
    assert bytes(out) == _fastavro_bytes(version, record)
    assert SERDE.encode(version.full_name, record) == bytes(out)


class _Symbol(StrEnum):
    GENERAL = "GENERAL"


#: Values the compiled writers leave to fastavro: subclasses, near-miss types, naive times.
_ODD_VALUES = [
    True,
    1,
    2**40,
    -(2**70),
    1.5,
    "text",
    b"bytes",
    datetime(2024, 5, 6, 12, 0),
    datetime(2024, 5, 6, 12, 0, tzinfo=UTC),
    date(2024, 5, 6),
    "2024-05-06",
    _Symbol.GENERAL,
    ("a",),
    [],
    {},
    None,
]


def _mutations(record: Any) -> Iterator[tuple[list[Any], Any]]:
    """(path, replacement) pairs for every value inside a record, plus stray and missing keys."""
    if isinstance(record, dict):
        for key, value in record.items():
            for odd in _ODD_VALUES:
                yield [key], odd
            for path, odd in _mutations(value):
                yield [key, *path], odd
    elif isinstance(record, list):
        for index, value in enumerate(record):
            for path, odd in _mutations(value):
                yield [index, *path], odd


def _replaced(record: Any, path: list[Any], value: Any) -> Any:
    copy = dict(record) if isinstance(record, dict) else list(record)
    head, *rest = path
    copy[head] = _replaced(copy[head], rest, value) if rest else value
    return copy


@pytest.mark.parametrize("version", _LATEST, ids=[v.record_name for v in _LATEST])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_values_the_compiled_writer_leaves_get_fastavros_answer(
    version: avro_module.SchemaVersion, data: st.DataObject
) -> None:
    record = data.draw(_records(version))
    candidates = list(_mutations(record))
    candidates += [([], {**record, "stray": 1})]
    candidates += [([], {k: v for k, v in record.items() if k != key}) for key in record]
    for path, odd in candidates:
        mutated = _replaced(record, path, odd) if path else odd
        try:
            expected: bytes | None = _fastavro_bytes(version, mutated)
        except Exception:
            expected = None
        if expected is None:
            with pytest.raises(InvalidRecord):
                SERDE.encode(version.full_name, mutated)
        else:
            assert SERDE.encode(version.full_name, mutated) == expected, (path, odd)


def test_a_timestamp_met_again_is_written_the_same() -> None:
    """Writers keep the last timestamp's encoding; the same moment object, an equal one and a
    different one in turn are each written as fastavro writes them."""
    version = STORE.latest("CreditRecord")
    example = load_example("CreditRecord")
    moment = datetime(2025, 10, 20, 9, 30, 15, 999_999, tzinfo=timezone(timedelta(hours=8)))
    for when in (moment, moment, moment.astimezone(UTC), moment + timedelta(milliseconds=1)):
        record = dict(example, accepted_at=when, source=dict(example["source"], submitted_at=when))
        assert SERDE.encode("CreditRecord", record) == _fastavro_bytes(version, record)
