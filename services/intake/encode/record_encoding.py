"""``CreditRecord`` events written around their content, which is encoded once.

A record's *content* — the fields a submission decides (:data:`CONTENT_FIELDS`, the
publicity window without its start) — tells a duplicate from a correction, and it is most of
the event. Avro writes a record as its fields' encodings one after the other, so the content's
encoding is a few runs of the event's own bytes, with the event's other fields (record id,
version, city, report date, acceptance time, publicity start, source) between them. Intake
therefore encodes the content once per record:

* the content hash (:func:`content_of`, :func:`content_hash`) is the SHA-256 of that
  encoding: canonical (fields in schema order, one
  encoding per value) and the same whether the content was just validated or read back from
  Kafka;
* the event is those runs with the other fields' encodings put between them.

The bytes are the ones :meth:`~services.common.avro.AvroSerde.encode` writes for the whole
event (``tests/unit/test_intake_validation.py`` compares them). A value the compiled writers
do not take goes through fastavro instead: the hash over a schema of the content fields
alone (the same bytes), the event through :meth:`AvroSerde.encode`.

The hash is never stored or sent: every process computes it for both sides of a comparison,
so its definition can change between releases without a migration.
"""

from __future__ import annotations

import copy
import hashlib
import io
from collections.abc import Mapping
from functools import cache
from typing import Any, Final

from fastavro import parse_schema, schemaless_writer

from services.common.avro import (
    AvroWriter,
    ParsedSchema,
    SchemaVersion,
    WriterNotCompiled,
    compile_fields_writer,
    default_store,
)

CREDIT_RECORD: Final = "creditlink.v1.CreditRecord"

#: The ``CreditRecord`` fields a submission decides; a resubmission equal on all of them is a
#: duplicate. ``publicity`` counts without ``publicity_start`` (the report day).
CONTENT_FIELDS: Final = (
    "category",
    "department_code",
    "department_name",
    "subject",
    "decision_number",
    "decision_date",
    "publicity",
    "penalty",
    "licensing",
    "list_decision",
    "court",
    "commitment",
    "attributes",
)
PUBLICITY: Final = "publicity"
PUBLICITY_START: Final = "publicity_start"

#: A field of the event: top level (``("record_id",)``) or one inside the publicity record.
FieldPath = tuple[str, ...]
#: The content's encoding, one piece per run of content fields in the event.
ContentParts = tuple[bytes, ...]


def _is_content(path: FieldPath) -> bool:
    return path[0] in CONTENT_FIELDS and path != (PUBLICITY, PUBLICITY_START)


class CreditRecordEncoding:
    """The content runs and the other fields of one ``CreditRecord`` schema version.

    Example::

        encoding = default_encoding()
        parts = encoding.content_parts(record.content)   # None: use the fastavro paths
        digest = content_digest(parts)
        value = encoding.event(parts, event_fields)
    """

    def __init__(self, schema: SchemaVersion) -> None:
        parsed = schema.parsed
        named: Mapping[str, Any] = parsed["__named_schemas"]
        leaves: list[tuple[FieldPath, Any]] = []
        for field in parsed["fields"]:
            if field["name"] == PUBLICITY:
                for inner in field["type"]["fields"]:
                    leaves.append(((PUBLICITY, inner["name"]), inner["type"]))
            else:
                leaves.append(((field["name"],), field["type"]))
        missing = set(CONTENT_FIELDS) - {path[0] for path, _ in leaves}
        if missing:
            raise WriterNotCompiled(f"{schema} has no content field {sorted(missing)}")
        runs: list[tuple[bool, list[tuple[FieldPath, Any]]]] = []
        for path, field_type in leaves:
            content = _is_content(path)
            if runs and runs[-1][0] == content:
                runs[-1][1].append((path, field_type))
            else:
                runs.append((content, [(path, field_type)]))
        self.schema = schema
        #: (content or not, writer of the run's fields from a mapping of the event's shape)
        self._runs: tuple[tuple[bool, AvroWriter], ...] = tuple(
            (content, compile_fields_writer(fields, named)) for content, fields in runs
        )
        self._content_runs = tuple(write for content, write in self._runs if content)
        self._content_schema = _content_schema(schema)

    def content_parts(self, record: Mapping[str, Any]) -> ContentParts | None:
        """The content's encoding in runs, from the content of a ``ValidRecord`` or a whole
        event (other fields are not read); None when a value is one for fastavro."""
        parts = []
        try:
            for write in self._content_runs:
                out = bytearray()
                write(out, record)
                parts.append(bytes(out))
        except Exception:  # a value the compiled writers leave: content_hash uses fastavro
            return None
        return tuple(parts)

    def content_encoding(self, record: Mapping[str, Any]) -> bytes:
        """The content's encoding in one piece, whatever its values (fastavro's answer for
        the ones the compiled writers leave)."""
        parts = self.content_parts(record)
        if parts is not None:
            return b"".join(parts)
        projected = {name: record.get(name) for name in CONTENT_FIELDS}
        publicity = record.get(PUBLICITY)
        if isinstance(publicity, Mapping):
            projected[PUBLICITY] = {k: v for k, v in publicity.items() if k != PUBLICITY_START}
        buffer = io.BytesIO()
        schemaless_writer(
            buffer,
            self._content_schema,
            projected,
            strict_allow_default=True,
            disable_tuple_notation=True,
        )
        return buffer.getvalue()

    def event(self, parts: ContentParts, fields: Mapping[str, Any]) -> bytes | None:
        """The single-object encoding of the event: ``parts`` and the other fields (a mapping
        of the event's shape holding them: ``{"record_id": …, "publicity": {"publicity_start":
        …}, …}``), or None when one of those is a value for fastavro."""
        out = bytearray(self.schema.header)
        content_runs = iter(parts)
        try:
            for content, write in self._runs:
                if content:
                    out += next(content_runs)
                else:
                    write(out, fields)
        except Exception:  # a value the compiled writers leave: the caller uses AvroSerde
            return None
        return bytes(out)


def _content_schema(schema: SchemaVersion) -> ParsedSchema:
    """A record of the content fields alone, with their types as in ``schema``: its encoding
    is the content runs one after the other."""
    fields = []
    for field in schema.schema["fields"]:
        if field["name"] not in CONTENT_FIELDS:
            continue
        field = copy.deepcopy(field)
        if field["name"] == PUBLICITY:
            publicity = field["type"]
            publicity["name"] = "PublicityContent"
            publicity["fields"] = [f for f in publicity["fields"] if f["name"] != PUBLICITY_START]
        fields.append(field)
    namespace = schema.full_name.rsplit(".", 1)[0]
    record = {"type": "record", "name": "CreditRecordContent", "namespace": namespace}
    parsed = parse_schema({**record, "fields": fields})
    if not isinstance(parsed, dict):
        raise WriterNotCompiled("the content schema did not parse to a record")
    return parsed


@cache
def default_encoding() -> CreditRecordEncoding:
    """The encoding of the repository's latest ``CreditRecord`` schema, built once."""
    return CreditRecordEncoding(default_store().latest(CREDIT_RECORD))


def content_of(content: Mapping[str, Any]) -> tuple[ContentParts | None, str]:
    """(the content's encoding in runs — None when a value is one for fastavro —, its hash)
    of a ``ValidRecord``'s content: what classifying and encoding the record need of it."""
    encoding = default_encoding()
    parts = encoding.content_parts(content)
    if parts is not None:
        return parts, content_digest(parts)
    return None, content_digest(encoding.content_encoding(content))


def content_hash(content: Mapping[str, Any]) -> str:
    """SHA-256 of the content's encoding, of a ``ValidRecord``'s content or of a whole event
    as read back from Kafka (its other fields are not read)."""
    return content_digest(default_encoding().content_encoding(content))


def content_digest(encoding: bytes | ContentParts) -> str:
    """SHA-256 (hex) of the content's encoding, given whole or in parts."""
    if isinstance(encoding, bytes):
        return hashlib.sha256(encoding).hexdigest()
    digest = hashlib.sha256()
    for part in encoding:
        digest.update(part)
    return digest.hexdigest()
