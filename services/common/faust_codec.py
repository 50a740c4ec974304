"""A faust codec that reads and writes creditlink events as Avro single-object bytes.

Faust agents and tables then exchange plain dicts with exactly the bytes every other service
(and every other Avro implementation) reads, instead of faust's JSON model envelope.

Example::

    codec_name = register_avro_codec("CreditRecord")            # -> "avro:CreditRecord"
    records_topic = app.topic(
        "credit.records.v1", key_type=str, value_type=None, value_serializer=codec_name
    )
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from faust.serializers import codecs
from faust.types.codecs import CodecT

from services.common.avro import AvroSerde, default_store


@cache
def _default_serde() -> AvroSerde:
    """One serde over the repository's schemas, shared by every codec made without one."""
    return AvroSerde(default_store())


class AvroCodec(codecs.Codec):
    """Encodes a mapping with schema ``schema_name`` (latest version, or ``version``); decodes
    any known writer version resolved to the latest ``schema_name``.

    Keyword arguments are kept in ``self.kwargs`` because faust's ``Codec.clone`` (used when
    codecs are chained with ``|``) rebuilds the codec as ``type(self)(children=…, **kwargs)``.
    """

    def __init__(
        self,
        children: tuple[CodecT, ...] | None = None,
        *,
        schema_name: str,
        version: int | None = None,
        serde: AvroSerde | None = None,
    ) -> None:
        super().__init__(children=children, schema_name=schema_name, version=version, serde=serde)
        self.schema_name = schema_name
        self.version = version
        self.serde = serde if serde is not None else _default_serde()
        # Fail at wiring time, not on the first message, if the schema does not exist.
        self.serde.writer_schema(schema_name, version)

    def _dumps(self, s: Any) -> bytes:
        if not isinstance(s, Mapping):
            raise TypeError(
                f"avro codec for {self.schema_name} encodes mappings, got {type(s).__name__}"
            )
        return self.serde.encode(self.schema_name, s, version=self.version)

    def _loads(self, s: bytes) -> Any:
        return self.serde.decode(s, reader=self.schema_name)


def codec_name_for(schema_name: str) -> str:
    """``avro:<RecordName>``, the name a codec for ``schema_name`` is registered under."""
    return f"avro:{schema_name.rsplit('.', 1)[-1]}"


def register_avro_codec(
    schema_name: str, *, version: int | None = None, serde: AvroSerde | None = None
) -> str:
    """Register an :class:`AvroCodec` with faust and return its name (``avro:<RecordName>``).

    Registering the same name again replaces the codec, so calling this at import time of
    every app module is safe.
    """
    name = codec_name_for(schema_name)
    codecs.register(name, AvroCodec(schema_name=schema_name, version=version, serde=serde))
    return name
