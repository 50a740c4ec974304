"""The faust codec writes and reads the same single-object bytes as the serde."""

from __future__ import annotations

import pytest
from faust.serializers import codecs

from services.common.avro import (
    SINGLE_OBJECT_MARKER,
    AvroSerde,
    InvalidRecord,
    SchemaStore,
    UnknownSchema,
    load_example,
)
from services.common.faust_codec import AvroCodec, codec_name_for, register_avro_codec

SERDE = AvroSerde(SchemaStore.load())


def test_registered_codec_round_trips_through_faust_by_name() -> None:
    name = register_avro_codec("creditlink.v1.CreditRecord", serde=SERDE)
    assert name == "avro:CreditRecord" == codec_name_for("CreditRecord")
    assert isinstance(codecs.get_codec(name), AvroCodec)

    record = load_example("CreditRecord")
    encoded = codecs.dumps(name, record)
    assert encoded.startswith(SINGLE_OBJECT_MARKER + SERDE.store.latest("CreditRecord").fingerprint)
    assert encoded == SERDE.encode("CreditRecord", record)
    assert codecs.loads(name, encoded) == record


@pytest.mark.parametrize("name", SERDE.store.names())
def test_codec_round_trips_every_example(name: str) -> None:
    codec = AvroCodec(schema_name=name, serde=SERDE)
    record = load_example(name)
    assert codec.loads(codec.dumps(record)) == record


def test_codec_reads_bytes_any_service_wrote() -> None:
    record = load_example("ListEntry")
    codec = AvroCodec(schema_name="ListEntry")  # default serde over the repository schemas
    assert codec.loads(SERDE.encode("ListEntry", record)) == record


def test_codec_chains_with_faust_codecs() -> None:
    chained = AvroCodec(schema_name="ScoreEntry", serde=SERDE) | codecs.binary()
    record = load_example("ScoreEntry")
    text_safe = chained.dumps(record)
    assert text_safe.isascii()  # base64 of the Avro bytes
    assert chained.loads(text_safe) == record


def test_codec_fails_at_wiring_time_for_an_unknown_schema() -> None:
    with pytest.raises(UnknownSchema):
        register_avro_codec("NoSuchEvent", serde=SERDE)


def test_codec_rejects_what_it_cannot_encode() -> None:
    codec = AvroCodec(schema_name="ScoreEntry", serde=SERDE)
    with pytest.raises(TypeError, match="mappings"):
        codec.dumps(["not", "a", "record"])
    with pytest.raises(InvalidRecord):
        codec.dumps({"pseudonym": "x"})
