"""Single-object encoding and decoding of creditlink events (:class:`AvroSerde`)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from functools import cache
from typing import Any

from fastavro import schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError as _FastavroResolutionError

from services.common.avro.store import (
    HEADER_LENGTH,
    SINGLE_OBJECT_MARKER,
    CorruptPayload,
    InvalidRecord,
    NotSingleObjectEncoded,
    ParsedSchema,
    SchemaResolutionError,
    SchemaStore,
    SchemaVersion,
)
from services.common.avro.writer import AvroWriter, WriterNotCompiled, compile_writer


@cache
def default_store() -> SchemaStore:
    """The repository's schemas, loaded once per process."""
    return SchemaStore.load()


class AvroSerde:
    """Avro single-object encoding over a :class:`SchemaStore`, with fastavro underneath.

    Schemas are parsed once by the store; the writer schema for each (name, version) and the
    (writer, reader) pair for each (fingerprint, reader) are looked up once and cached, so the
    per-message cost is one dict lookup plus fastavro's own work.
    """

    def __init__(self, store: SchemaStore | None = None) -> None:
        self._store = store if store is not None else default_store()
        self._writers: dict[tuple[str, int | None], SchemaVersion] = {}
        self._compiled: dict[SchemaVersion, AvroWriter | None] = {}
        self._pairs: dict[
            tuple[bytes, str | SchemaVersion | None],
            tuple[SchemaVersion, ParsedSchema | None],
        ] = {}

    @property
    def store(self) -> SchemaStore:
        return self._store

    def writer_schema(self, name: str, version: int | None = None) -> SchemaVersion:
        """The schema ``encode(name, …, version)`` writes with (latest when ``version`` is None)."""
        cache_key = (name, version)
        schema = self._writers.get(cache_key)
        if schema is None:
            if version is None:
                schema = self._store.latest(name)
            else:
                schema = self._store.version(name, version)
            self._writers[cache_key] = schema
        return schema

    def fingerprint_hex(self, name: str, version: int | None = None) -> str:
        """Fingerprint of the schema ``encode`` would use, for headers and logs."""
        return self.writer_schema(name, version).fingerprint_hex

    def data_schema_uri(self, name: str, version: int | None = None) -> str:
        """CloudEvents ``dataschema`` of the schema ``encode`` would use."""
        return self.writer_schema(name, version).data_schema_uri

    def encode(self, name: str, record: Mapping[str, Any], version: int | None = None) -> bytes:
        """Single-object encoding of ``record`` with schema ``name`` (latest or ``version``).

        Fields with a default may be left out; fields the schema does not have are an error
        (``strict_allow_default``), so a misspelt field name fails here and not downstream.
        """
        schema = self.writer_schema(name, version)
        try:
            compiled = self._compiled[schema]
        except KeyError:
            compiled = self._compiled[schema] = self._compile(schema)
        if compiled is not None:
            out = bytearray(schema.header)
            try:
                compiled(out, record)
            except Exception:  # noqa: S110 - not an error: fastavro writes or refuses it below
                pass
            else:
                return bytes(out)
        buffer = io.BytesIO()
        buffer.write(schema.header)
        try:
            schemaless_writer(
                buffer,
                schema.parsed,
                record,
                strict_allow_default=True,
                disable_tuple_notation=True,
            )
        except Exception as exc:  # fastavro reports a mismatch as ValueError, TypeError, …
            raise InvalidRecord(
                f"record does not match {schema.full_name} v{schema.version}: {exc}"
            ) from exc
        return buffer.getvalue()

    @staticmethod
    def _compile(schema: SchemaVersion) -> AvroWriter | None:
        try:
            return compile_writer(schema.parsed)
        except WriterNotCompiled:
            return None

    def writer_of(self, data: bytes | bytearray | memoryview) -> SchemaVersion:
        """The writer schema named by the single-object header of ``data``."""
        if len(data) < HEADER_LENGTH or bytes(data[:2]) != SINGLE_OBJECT_MARKER:
            raise NotSingleObjectEncoded(
                "payload is not Avro single-object encoded (expected C3 01 + 8-byte "
                f"fingerprint, got {bytes(data[:HEADER_LENGTH]).hex() or 'nothing'})"
            )
        return self._store.by_fingerprint(bytes(data[2:HEADER_LENGTH]))

    def decode(
        self,
        data: bytes | bytearray | memoryview,
        reader: str | SchemaVersion | None = None,
    ) -> dict[str, Any]:
        """Decode single-object bytes, resolved to ``reader``.

        ``reader`` is a schema name (its latest version), a :class:`SchemaVersion`, or None
        for the latest version of the writer's own record.
        """
        writer = self.writer_of(data)
        pair_key = (writer.fingerprint, reader)
        pair = self._pairs.get(pair_key)
        if pair is None:
            pair = self._resolve_pair(writer, reader)
            self._pairs[pair_key] = pair
        writer_parsed = pair[0].parsed
        reader_parsed = pair[1]
        stream = io.BytesIO(data)
        stream.seek(HEADER_LENGTH)
        try:
            record = schemaless_reader(stream, writer_parsed, reader_parsed)
        except _FastavroResolutionError as exc:
            raise SchemaResolutionError(
                f"cannot read {writer.full_name} v{writer.version} as {self._reader_label(pair)}: "
                f"{exc}"
            ) from exc
        except Exception as exc:  # EOFError, UnicodeDecodeError, IndexError, OverflowError …
            raise CorruptPayload(
                f"body does not parse as {writer.full_name} v{writer.version}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if stream.tell() != len(data):
            raise CorruptPayload(
                f"{len(data) - stream.tell()} bytes left over after a "
                f"{writer.full_name} v{writer.version} body"
            )
        if not isinstance(record, dict):
            raise CorruptPayload(f"{writer.full_name} body did not decode to a record")
        return record

    def _resolve_pair(
        self, writer: SchemaVersion, reader: str | SchemaVersion | None
    ) -> tuple[SchemaVersion, ParsedSchema | None]:
        if reader is None:
            target = self._store.latest(writer.full_name)
        elif isinstance(reader, str):
            target = self._store.latest(reader)
        else:
            target = reader
        # None tells fastavro to skip resolution: reading with the writer schema itself.
        return writer, (None if target is writer else target.parsed)

    @staticmethod
    def _reader_label(pair: tuple[SchemaVersion, ParsedSchema | None]) -> str:
        if pair[1] is None:
            return "itself"
        return str(pair[1].get("name", "the reader schema"))
