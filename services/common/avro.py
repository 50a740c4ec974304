"""Avro schemas, single-object encoding and schema compatibility for creditlink events.

Every event on Kafka is Avro binary in the Avro specification's *single-object encoding*:
``C3 01``, the 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's Parsing
Canonical Form, then the body. A reader finds the writer schema by fingerprint in the
schemas kept in the repository (``schemas/avro/<RecordName>/v<N>.avsc``) and resolves it to
its own version; no registry server is involved, and any Avro library (Java's
``BinaryMessageDecoder``, Apache ``avro``) reads the same bytes.

Example::

    serde = AvroSerde(SchemaStore.load())
    value = serde.encode("creditlink.v1.CreditRecord", record)
    record = serde.decode(value)                       # as the latest CreditRecord version
    headers = build_headers(..., data_schema=serde.data_schema_uri("CreditRecord"))

Check that every topic's value schema history obeys the topic's compatibility mode::

    python -m services.common.avro check

Datetimes given to :meth:`AvroSerde.encode` must be timezone-aware: fastavro silently reads a
naive datetime as UTC, which would shift a China Standard Time wall-clock time by 8 hours.

Encoding goes through a writer compiled once per schema version (:func:`compile_writer`) for
the values it can write exactly as fastavro does; any other value is left to fastavro, which
writes it or says why not. The bytes are the same either way (``tests/unit/test_avro_serde.py``
compares them on generated records of every schema).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import re
import struct
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any, Final, TypeVar

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError as _FastavroResolutionError
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from services.common.cloudevents import data_schema_urn
from services.common.settings import REPO_ROOT

SCHEMA_DIR: Final = REPO_ROOT / "schemas" / "avro"
EXAMPLES_DIR: Final = REPO_ROOT / "schemas" / "examples"
TOPICS_FILE: Final = REPO_ROOT / "schemas" / "topics.yaml"

#: Avro specification, "Single object encoding": marker, then the schema fingerprint.
SINGLE_OBJECT_MARKER: Final = b"\xc3\x01"
FINGERPRINT_LENGTH: Final = 8
HEADER_LENGTH: Final = len(SINGLE_OBJECT_MARKER) + FINGERPRINT_LENGTH

_VERSION_FILE = re.compile(r"^v([1-9][0-9]*)\.avsc$")

#: A schema as fastavro holds it after ``parse_schema`` (full names, named-type registry).
ParsedSchema = dict[str, Any]

_T = TypeVar("_T")


class SchemaStoreError(Exception):
    """The schema directory is inconsistent (bad file, gap in versions, fingerprint clash)."""


class SerdeError(Exception):
    """Base class of every encoding and decoding failure of :class:`AvroSerde`."""


class UnknownSchema(SerdeError, LookupError):
    """No schema (or no such version of it) is in the store."""


class UnknownSchemaFingerprint(SerdeError):
    """The bytes name a writer schema this node does not have."""

    def __init__(self, fingerprint: bytes) -> None:
        super().__init__(
            f"no schema with CRC-64-AVRO fingerprint {fingerprint.hex()} in the store; "
            "was the payload written by a newer release?"
        )
        self.fingerprint = fingerprint


class NotSingleObjectEncoded(SerdeError):
    """The bytes do not start with the single-object marker ``C3 01`` and a fingerprint."""


class SchemaResolutionError(SerdeError):
    """The writer schema cannot be resolved to the requested reader schema."""


class CorruptPayload(SerdeError):
    """The body does not parse under its writer schema (truncated, garbage, trailing bytes)."""


class InvalidRecord(SerdeError):
    """The record given to :meth:`AvroSerde.encode` does not match the schema."""


@dataclass(frozen=True, eq=False, slots=True)
class SchemaVersion:
    """One version of one event schema, parsed once.

    ``eq=False``: a version is identified by the object itself (it is used as a cache key),
    and two loads of one file are different objects.
    """

    full_name: str
    version: int
    path: Path
    schema: Mapping[str, Any]
    parsed: ParsedSchema
    canonical_form: str
    fingerprint: bytes

    @property
    def record_name(self) -> str:
        return self.full_name.rsplit(".", 1)[-1]

    @property
    def fingerprint_hex(self) -> str:
        """The fingerprint as 16 lowercase hex digits, in wire (little-endian) byte order."""
        return self.fingerprint.hex()

    @property
    def header(self) -> bytes:
        """The 10 bytes every single-object encoding with this writer schema starts with."""
        return SINGLE_OBJECT_MARKER + self.fingerprint

    @property
    def data_schema_uri(self) -> str:
        """The CloudEvents ``dataschema`` naming this exact version."""
        return data_schema_urn(self.full_name, self.version, self.fingerprint_hex)

    def __repr__(self) -> str:
        return f"SchemaVersion({self.full_name} v{self.version} {self.fingerprint_hex})"


def crc64_avro_fingerprint(canonical_form: str) -> bytes:
    """CRC-64-AVRO (Rabin) fingerprint of a Parsing Canonical Form, in wire byte order."""
    return bytes.fromhex(_fastavro_fingerprint(canonical_form, "CRC-64-AVRO"))


def _load_version(path: Path, folder_name: str, version: int) -> SchemaVersion:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SchemaStoreError(f"{path}: not readable JSON: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("type") != "record":
        raise SchemaStoreError(f"{path}: an event schema must be a top-level record")
    try:
        parsed = parse_schema(raw)
        canonical = to_parsing_canonical_form(raw)
    except Exception as exc:  # fastavro raises several unrelated types for a bad schema
        raise SchemaStoreError(f"{path}: not a valid Avro schema: {exc}") from exc
    if not isinstance(parsed, dict):
        raise SchemaStoreError(f"{path}: an event schema must be a top-level record")
    full_name = str(parsed["name"])
    if full_name.rsplit(".", 1)[-1] != folder_name:
        raise SchemaStoreError(
            f"{path}: record {full_name} must live in a folder named after it, not {folder_name}"
        )
    return SchemaVersion(
        full_name=full_name,
        version=version,
        path=path,
        schema=raw,
        parsed=parsed,
        canonical_form=canonical,
        fingerprint=crc64_avro_fingerprint(canonical),
    )


class SchemaStore:
    """Every version of every event schema under ``schemas/avro`` (or ``root``).

    Layout: ``<root>/<RecordName>/v1.avsc``, ``v2.avsc``, … — one folder per record, one file
    per historical version, no gaps. Each file is a self-contained schema (nested named types
    defined inline), so any Avro tool can read it alone.

    Names may be given in full (``creditlink.v1.CreditRecord``) or short (``CreditRecord``).
    """

    def __init__(self, root: Path | str | None = None) -> None:
        self._root = Path(root) if root is not None else SCHEMA_DIR
        self._versions: dict[str, tuple[SchemaVersion, ...]] = {}
        self._short_names: dict[str, str] = {}
        self._by_fingerprint: dict[bytes, SchemaVersion] = {}
        self._load()

    @classmethod
    def load(cls, root: Path | str | None = None) -> SchemaStore:
        """Load the store from ``root`` (default: the repository's ``schemas/avro``)."""
        return cls(root)

    @property
    def root(self) -> Path:
        return self._root

    def _load(self) -> None:
        if not self._root.is_dir():
            raise SchemaStoreError(f"schema directory {self._root} does not exist")
        for folder in sorted(p for p in self._root.iterdir() if p.is_dir()):
            numbered: dict[int, Path] = {}
            for path in folder.iterdir():
                match = _VERSION_FILE.match(path.name)
                if match is None:
                    if path.suffix == ".avsc":
                        raise SchemaStoreError(f"{path}: schema files are named v<N>.avsc")
                    continue
                numbered[int(match.group(1))] = path
            if not numbered:
                continue
            if sorted(numbered) != list(range(1, len(numbered) + 1)):
                raise SchemaStoreError(
                    f"{folder}: versions must run v1..vN without gaps, found "
                    + ", ".join(f"v{n}" for n in sorted(numbered))
                )
            versions = tuple(
                _load_version(numbered[n], folder.name, n) for n in range(1, len(numbered) + 1)
            )
            full_name = versions[0].full_name
            for later in versions[1:]:
                if later.full_name != full_name:
                    raise SchemaStoreError(
                        f"{later.path}: record is {later.full_name}, earlier versions are "
                        f"{full_name}"
                    )
            self._versions[full_name] = versions
            self._short_names[folder.name] = full_name
            for version in versions:
                known = self._by_fingerprint.get(version.fingerprint)
                if known is None:
                    self._by_fingerprint[version.fingerprint] = version
                elif known.full_name != version.full_name:
                    raise SchemaStoreError(
                        f"{version.path} and {known.path} have the same fingerprint "
                        f"{version.fingerprint_hex}; readers could not tell them apart"
                    )
                # Two versions of one record that differ only in docs or defaults share a
                # canonical form: the earliest one stands for both as the writer schema.

    def full_name(self, name: str) -> str:
        """``CreditRecord`` or ``creditlink.v1.CreditRecord`` → ``creditlink.v1.CreditRecord``."""
        if name in self._versions:
            return name
        full = self._short_names.get(name)
        if full is None:
            raise UnknownSchema(f"no schema named {name!r} in {self._root}")
        return full

    def names(self) -> list[str]:
        """Full names of every record in the store, sorted."""
        return sorted(self._versions)

    def versions(self, name: str) -> tuple[SchemaVersion, ...]:
        """Every version of ``name``, oldest first."""
        return self._versions[self.full_name(name)]

    def latest(self, name: str) -> SchemaVersion:
        return self.versions(name)[-1]

    def version(self, name: str, number: int) -> SchemaVersion:
        versions = self.versions(name)
        if not 1 <= number <= len(versions):
            raise UnknownSchema(f"{self.full_name(name)} has no version {number}")
        return versions[number - 1]

    def by_fingerprint(self, fingerprint: bytes) -> SchemaVersion:
        """The writer schema with this 8-byte fingerprint (wire byte order)."""
        try:
            return self._by_fingerprint[bytes(fingerprint)]
        except KeyError:
            raise UnknownSchemaFingerprint(bytes(fingerprint)) from None

    def __iter__(self) -> Iterator[SchemaVersion]:
        for name in self.names():
            yield from self._versions[name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._versions or name in self._short_names)

    def __repr__(self) -> str:
        return f"SchemaStore({self._root}, {len(self._versions)} records)"


# --- compiled writers ----------------------------------------------------------------------
#
# fastavro's writer is generic: per field it dispatches on the schema, and for each branch of
# a union it validates the value (records deeply) before writing it, so an intake record costs
# about 30 µs — a quarter of intake's CPU per record. A writer compiled from the schema does
# the dispatch once: it is the Python source of one function per schema, every field written
# inline (as dataclasses and attrs generate their methods), about 4x faster than fastavro.
# It writes only values whose encoding is beyond doubt — exact built-in types, every field
# present, no extra keys, in range — and raises for anything else, which AvroSerde.encode
# then hands to fastavro: unusual input gets fastavro's answer, not a second opinion.

#: Writes one value of a schema to the end of the buffer.
AvroWriter = Callable[[bytearray, Any], None]


class WriterNotCompiled(Exception):
    """The writer compiler does not handle this part of a schema; fastavro writes it."""


class _LeftToFastavro(Exception):
    """A value the compiled writer does not write; fastavro does."""


_LONG_MIN: Final = -(1 << 63)
_LONG_MAX: Final = (1 << 63) - 1
_INT_MIN: Final = -(1 << 31)
_INT_MAX: Final = (1 << 31) - 1
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
_DOUBLE: Final = struct.Struct("<d")
# Encoded dates, kept as they are met: a file's records share few distinct days. Bounded so
# that no input can make it grow without end (40 years of days fit).
_DATE_BYTES: dict[date, bytes] = {}
_DATE_BYTES_LIMIT: Final = 16_384


def _write_varint(out: bytearray, value: int) -> None:
    """Avro ``long``: zig-zag, then 7 bits a byte, least significant first."""
    value = (value << 1) ^ (value >> 63)
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _date_bytes(day: date) -> bytes:
    out = bytearray()
    _write_varint(out, day.toordinal() - _EPOCH_ORDINAL)
    encoded = bytes(out)
    if len(_DATE_BYTES) < _DATE_BYTES_LIMIT:
        _DATE_BYTES[day] = encoded
    return encoded


def _moment_bytes(moment: datetime, slot: int) -> bytes:
    # fastavro's own arithmetic: whole milliseconds since the epoch, sub-millisecond dropped.
    delta = moment - _EPOCH
    millis = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    if not _LONG_MIN <= millis <= _LONG_MAX:
        raise _LeftToFastavro
    encoded = bytes(_varint_bytes(millis))
    # Events of one batch share their timestamps (accepted at, submitted at): the last one
    # written by each timestamp field (its slot) is kept, with a reference, so an equal
    # identity means the same value.
    _LAST_MOMENT[slot] = (moment, encoded)
    return encoded


#: One slot per timestamp field of the writers compiled so far (see _moment_bytes).
_LAST_MOMENT: Final[list[tuple[datetime | None, bytes]]] = []

#: What generated writers refer to besides their own constants.
_WRITER_GLOBALS: Final[dict[str, Any]] = {
    "LeftToFastavro": _LeftToFastavro,
    "write_varint": _write_varint,
    "date_bytes": _date_bytes,
    "DATE_BYTES": _DATE_BYTES,
    "moment_bytes": _moment_bytes,
    "LAST_MOMENT": _LAST_MOMENT,
    "EPOCH": _EPOCH,
    "pack_double": _DOUBLE.pack,
    "date": date,
    "datetime": datetime,
}
_RANGES: Final = {"int": (_INT_MIN, _INT_MAX), "long": (_LONG_MIN, _LONG_MAX)}


class _WriterSource:
    """The source of one writer function: statements that append a value's encoding to
    ``out``, and the constants (enum tables) they name."""

    def __init__(self, named: Mapping[str, Any]) -> None:
        self._named = named
        self._lines: list[str] = []
        self._constants: dict[str, Any] = {}
        self._locals = 0

    def local(self, stem: str) -> str:
        self._locals += 1
        return f"{stem}{self._locals}"

    def line(self, depth: int, statement: str) -> None:
        self._lines.append("    " * depth + statement)

    def function(self) -> AvroWriter:
        source = "def write(out, value):\n" + "\n".join(self._lines or ["    pass"]) + "\n"
        namespace = {**_WRITER_GLOBALS, **self._constants}
        # The source is built from the schema's structure only: names appear as string
        # literals (repr), never as code.
        exec(compile(source, "<avro writer>", "exec"), namespace)  # noqa: S102
        writer: AvroWriter = namespace["write"]
        return writer

    def field(self, path: Sequence[str], schema: Any, depth: int) -> None:
        """Write the value at ``path`` inside ``value``."""
        name = self.local("v")
        self.line(depth, f"{name} = value" + "".join(f"[{key!r}]" for key in path))
        self.value(schema, name, depth, frozenset())

    def value(self, schema: Any, name: str, depth: int, enclosing: frozenset[str]) -> None:
        """Write the value held in the local ``name``."""
        line = self.line
        if isinstance(schema, list):
            if len(schema) != 2 or schema[0] != "null" or schema[1] == "null":
                raise WriterNotCompiled(f"union {schema}")
            line(depth, f"if {name} is None:")
            line(depth + 1, "out.append(0)")
            line(depth, "else:")
            line(depth + 1, "out.append(2)")  # branch 1, zig-zag
            self.value(schema[1], name, depth + 1, enclosing)
            return
        if isinstance(schema, str):
            if schema in self._named:
                if schema in enclosing:
                    raise WriterNotCompiled(f"recursive type {schema}")
                self.value(self._named[schema], name, depth, enclosing)
                return
            self._primitive(schema, name, depth)
            return
        type_name = schema["type"]
        logical = schema.get("logicalType")
        if logical is not None:
            self._logical(type_name, logical, name, depth)
        elif type_name == "record":
            self._record(schema, name, depth, enclosing | {schema["name"]})
        elif type_name == "enum":
            table = self.local("symbols")
            self._constants[table] = {
                symbol: bytes(_varint_bytes(index))
                for index, symbol in enumerate(schema["symbols"])
            }
            line(depth, f"out += {table}[{name}]")
        elif type_name == "array":
            item = self.local("item")
            line(depth, f"if type({name}) is not list:")
            line(depth + 1, "raise LeftToFastavro")
            line(depth, f"if {name}:")
            line(depth + 1, f"write_varint(out, len({name}))")  # one block, then the end block
            line(depth + 1, f"for {item} in {name}:")
            self.value(schema["items"], item, depth + 2, enclosing)
            line(depth, "out.append(0)")
        elif type_name == "map":
            key, item = self.local("key"), self.local("item")
            line(depth, f"if type({name}) is not dict:")
            line(depth + 1, "raise LeftToFastavro")
            line(depth, f"if {name}:")
            line(depth + 1, f"write_varint(out, len({name}))")
            line(depth + 1, f"for {key}, {item} in {name}.items():")
            self._primitive("string", key, depth + 2)
            self.value(schema["values"], item, depth + 2, enclosing)
            line(depth, "out.append(0)")
        else:
            self._primitive(type_name, name, depth)

    def _record(
        self, schema: Mapping[str, Any], name: str, depth: int, enclosing: frozenset[str]
    ) -> None:
        fields = schema["fields"]
        # Every field given and no other key: a missing field (default) or a stray key (an
        # error under strict_allow_default) is fastavro's to handle.
        self.line(depth, f"if type({name}) is not dict or len({name}) != {len(fields)}:")
        self.line(depth + 1, "raise LeftToFastavro")
        for field in fields:
            inner = self.local("v")
            self.line(depth, f"{inner} = {name}[{field['name']!r}]")
            self.value(field["type"], inner, depth, enclosing)

    def _primitive(self, type_name: str, name: str, depth: int) -> None:
        line = self.line
        if type_name == "string":
            encoded = self.local("encoded")
            line(depth, f"if type({name}) is not str:")
            line(depth + 1, "raise LeftToFastavro")
            size = self.local("size")
            line(depth, f"{encoded} = {name}.encode()")
            line(depth, f"{size} = len({encoded})")
            line(depth, f"if {size} < 64:")  # zig-zag of a small length: one byte
            line(depth + 1, f"out.append({size} << 1)")
            line(depth, f"elif {size} < 8192:")  # two bytes (Chinese text is 3 bytes a character)
            line(depth + 1, f"out.append((({size} << 1) & 0x7F) | 0x80)")
            line(depth + 1, f"out.append({size} >> 6)")
            line(depth, "else:")
            line(depth + 1, f"write_varint(out, {size})")
            line(depth, f"out += {encoded}")
        elif type_name == "bytes":
            line(depth, f"if type({name}) is not bytes:")
            line(depth + 1, "raise LeftToFastavro")
            line(depth, f"write_varint(out, len({name}))")
            line(depth, f"out += {name}")
        elif type_name in _RANGES:
            low, high = _RANGES[type_name]
            line(depth, f"if type({name}) is not int or not {low} <= {name} <= {high}:")
            line(depth + 1, "raise LeftToFastavro")
            line(depth, f"if 0 <= {name} < 64:")
            line(depth + 1, f"out.append({name} << 1)")
            line(depth, "else:")
            line(depth + 1, f"write_varint(out, {name})")
        elif type_name == "boolean":
            line(depth, f"if type({name}) is not bool:")
            line(depth + 1, "raise LeftToFastavro")
            line(depth, f"out.append(1 if {name} else 0)")
        elif type_name == "double":
            line(depth, f"if type({name}) is not float:")
            line(depth + 1, "raise LeftToFastavro")
            line(depth, f"out += pack_double({name})")
        else:
            raise WriterNotCompiled(f"type {type_name}")

    def _logical(self, type_name: str, logical: str, name: str, depth: int) -> None:
        line = self.line
        if (type_name, logical) == ("int", "date"):
            # A datetime is a date too; fastavro decides what it means.
            line(depth, f"if type({name}) is not date:")
            line(depth + 1, "raise LeftToFastavro")
            line(depth, f"out += DATE_BYTES.get({name}) or date_bytes({name})")
        elif (type_name, logical) == ("long", "timestamp-millis"):
            last = self.local("last")
            line(depth, f"if type({name}) is not datetime or {name}.tzinfo is None:")
            line(depth + 1, "raise LeftToFastavro")
            slot = len(_LAST_MOMENT)
            _LAST_MOMENT.append((None, b""))
            line(depth, f"{last} = LAST_MOMENT[{slot}]")
            line(
                depth,
                f"out += {last}[1] if {name} is {last}[0] else moment_bytes({name}, {slot})",
            )
        else:
            raise WriterNotCompiled(f"logical type {logical} on {type_name}")


def _varint_bytes(value: int) -> bytearray:
    out = bytearray()
    _write_varint(out, value)
    return out


def compile_writer(schema: Any, named_schemas: Mapping[str, Any] | None = None) -> AvroWriter:
    """A writer of ``schema`` (as ``parse_schema`` returns it, or a part of one with the named
    types of the whole) that raises for every value it does not write exactly as fastavro
    would; raises :class:`WriterNotCompiled` for schemas using what it does not handle (fixed,
    float, unions other than ``["null", T]``, other logical types, recursive types)."""
    named: Mapping[str, Any] = (
        named_schemas if named_schemas is not None else schema.get("__named_schemas", {})
    )
    source = _WriterSource(named)
    source.value(schema, "value", 1, frozenset())
    return source.function()


def compile_fields_writer(
    fields: Sequence[tuple[Sequence[str], Any]], named_schemas: Mapping[str, Any]
) -> AvroWriter:
    """A writer of some fields of a record, one after the other: each given by its path into
    the mapping written (``("publicity", "takedown_date")``) and its schema. Other keys of
    the mapping are not read. Raises like :func:`compile_writer`."""
    source = _WriterSource(named_schemas)
    for path, schema in fields:
        source.field(path, schema, 1)
    return source.function()


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


# --- compatibility -------------------------------------------------------------------------


class CompatibilityMode(StrEnum):
    """Schema-evolution rule of a topic (the Confluent Schema Registry vocabulary)."""

    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"
    NONE = "NONE"


DEFAULT_COMPATIBILITY: Final = CompatibilityMode.BACKWARD_TRANSITIVE


def _reader_writer_pairs(count: int, mode: CompatibilityMode) -> list[tuple[int, int]]:
    """(reader index, writer index) pairs the mode requires over versions 0..count-1.

    Every version is checked as if it had just been added on top of the ones before it, so the
    whole history obeys the rule, not only the newest step.
    """
    if mode is CompatibilityMode.NONE:
        return []
    transitive = mode.value.endswith("_TRANSITIVE")
    backward = mode.value.startswith(("BACKWARD", "FULL"))
    forward = mode.value.startswith(("FORWARD", "FULL"))
    pairs: list[tuple[int, int]] = []
    for newer in range(1, count):
        for older in range(newer) if transitive else (newer - 1,):
            if backward:
                pairs.append((newer, older))  # consumers upgraded first read old data
            if forward:
                pairs.append((older, newer))  # consumers not yet upgraded read new data
    return pairs


def check_compatibility(
    store: SchemaStore,
    name: str,
    mode: CompatibilityMode | str = DEFAULT_COMPATIBILITY,
) -> list[str]:
    """Problems that break ``mode`` across the stored versions of ``name``; empty when none.

    Uses the Apache ``avro`` package's ``ReaderWriterCompatibilityChecker`` (an independent
    implementation of the specification's resolution rules), imported here only because the
    CLI and tests are its only users.
    """
    from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
    from avro.schema import parse as parse_apache

    mode = CompatibilityMode(mode)
    versions = store.versions(name)
    pairs = _reader_writer_pairs(len(versions), mode)
    if not pairs:
        return []
    apache = [parse_apache(json.dumps(v.schema)) for v in versions]
    problems: list[str] = []
    for reader_index, writer_index in pairs:
        # The checker's __init__ is the one unannotated function of avro's typed API.
        checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
        result = checker.get_compatibility(apache[reader_index], apache[writer_index])
        if result.compatibility is SchemaCompatibilityType.incompatible:
            reader, writer = versions[reader_index], versions[writer_index]
            details = "; ".join(sorted(result.messages)) or "incompatible"
            where = ", ".join(sorted(result.locations))
            problems.append(
                f"{reader.full_name} v{reader.version} cannot read data written with "
                f"v{writer.version} ({mode.value}): {details} at {where}"
            )
    return problems


@dataclass(frozen=True, slots=True)
class CatalogueBinding:
    """A topic of ``schemas/topics.yaml`` with its value schema and compatibility mode."""

    topic: str
    value: str
    compatibility: CompatibilityMode


def read_catalogue_bindings(path: Path | str | None = None) -> list[CatalogueBinding]:
    """The (topic, value schema, compatibility) of every topic in the catalogue."""
    catalogue_path = Path(path) if path is not None else TOPICS_FILE
    import yaml  # only the schema check reads the catalogue; intake workers never do

    raw = yaml.safe_load(catalogue_path.read_text(encoding="utf-8"))
    bindings: list[CatalogueBinding] = []
    for entry in raw["topics"]:
        bindings.append(
            CatalogueBinding(
                topic=str(entry["name"]),
                value=str(entry["value"]),
                compatibility=CompatibilityMode(
                    entry.get("compatibility", DEFAULT_COMPATIBILITY.value)
                ),
            )
        )
    return bindings


def check_catalogue(
    store: SchemaStore, bindings: Sequence[CatalogueBinding]
) -> tuple[list[str], int]:
    """Report lines (one per schema, problems indented below) and the number of problems."""
    lines: list[str] = []
    problem_count = 0
    by_schema: dict[str, list[CatalogueBinding]] = {}
    for binding in bindings:
        by_schema.setdefault(binding.value, []).append(binding)
    for value in sorted(by_schema):
        topics = ", ".join(b.topic for b in by_schema[value])
        modes = sorted({b.compatibility for b in by_schema[value]})
        if value not in store:
            lines.append(f"MISSING  {value}  no such schema (topics: {topics})")
            problem_count += 1
            continue
        problems = [p for mode in modes for p in check_compatibility(store, value, mode)]
        latest = store.latest(value)
        status = "OK      " if not problems else "PROBLEM "
        lines.append(
            f"{status} {latest.full_name}  v1..v{latest.version}  "
            f"{'+'.join(m.value for m in modes)}  fp={latest.fingerprint_hex}  topics: {topics}"
        )
        lines.extend(f"    {problem}" for problem in problems)
        problem_count += len(problems)
    for name in store.names():
        if name not in by_schema:
            lines.append(f"UNUSED   {name}  no topic in the catalogue carries it")
            problem_count += 1
    return lines, problem_count


# --- examples ------------------------------------------------------------------------------


def load_example(
    name: str,
    *,
    store: SchemaStore | None = None,
    examples_dir: Path | str | None = None,
) -> dict[str, Any]:
    """The example event ``schemas/examples/<RecordName>.json`` as ``decode`` would return it.

    The JSON is converted per the latest schema version: ``date`` fields from ``YYYY-MM-DD``,
    ``timestamp-millis`` fields from RFC 3339 text with an offset, ``bytes`` from
    ``{"utf8": "…"}`` or ``{"base64": "…"}``; omitted fields get their schema default. So
    ``decode(encode(name, load_example(name))) == load_example(name)``.
    """
    schemas = store if store is not None else default_store()
    schema = schemas.latest(name)
    folder = Path(examples_dir) if examples_dir is not None else EXAMPLES_DIR
    path = folder / f"{schema.record_name}.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    named: dict[str, Any] = schema.parsed["__named_schemas"]
    converted = _from_json(raw, schema.parsed, named, schema.record_name)
    if not isinstance(converted, dict):
        raise ValueError(f"{path}: an example must be a JSON object")
    return converted


_PRIMITIVES: Final = frozenset(
    {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
)


def _from_json(value: Any, schema: Any, named: Mapping[str, Any], where: str) -> Any:
    """Convert JSON ``value`` to the Python value fastavro reads for ``schema``."""
    if isinstance(schema, list):
        if value is None and "null" in schema:
            return None
        errors: list[str] = []
        for branch in schema:
            if branch == "null":
                continue
            try:
                return _from_json(value, branch, named, where)
            except (ValueError, TypeError, KeyError) as exc:
                errors.append(str(exc))
        raise ValueError(f"{where}: {value!r} matches no branch of {schema}: {errors}")
    if isinstance(schema, str):
        if schema in named:
            return _from_json(value, named[schema], named, where)
        return _primitive_from_json(value, schema, where)
    type_name = schema["type"]
    logical = schema.get("logicalType")
    if logical == "date":
        return date.fromisoformat(_expect(value, str, where))
    if logical == "timestamp-millis":
        moment = datetime.fromisoformat(_expect(value, str, where))
        if moment.tzinfo is None:
            raise ValueError(f"{where}: timestamp {value!r} needs an offset, e.g. +08:00 or Z")
        return moment
    if type_name == "record":
        fields = {field["name"]: field for field in schema["fields"]}
        given = _expect(value, dict, where)
        unknown = sorted(set(given) - set(fields))
        if unknown:
            raise ValueError(f"{where}: fields not in the schema: {', '.join(unknown)}")
        result: dict[str, Any] = {}
        for field_name, field in fields.items():
            path = f"{where}.{field_name}"
            if field_name in given:
                result[field_name] = _from_json(given[field_name], field["type"], named, path)
            elif "default" in field:
                result[field_name] = _from_json(field["default"], field["type"], named, path)
            else:
                raise ValueError(f"{path}: required field missing")
        return result
    if type_name == "enum":
        symbol = _expect(value, str, where)
        if symbol not in schema["symbols"]:
            raise ValueError(f"{where}: {symbol!r} is not one of {schema['symbols']}")
        return symbol
    if type_name == "array":
        return [
            _from_json(item, schema["items"], named, f"{where}[{index}]")
            for index, item in enumerate(_expect(value, list, where))
        ]
    if type_name == "map":
        return {
            str(key): _from_json(item, schema["values"], named, f"{where}.{key}")
            for key, item in _expect(value, dict, where).items()
        }
    if type_name == "fixed":
        return _primitive_from_json(value, "bytes", where)
    return _primitive_from_json(value, type_name, where)


def _expect(value: Any, kind: type[_T], where: str) -> _T:
    # bool is an int subclass in Python, but JSON true is no number.
    wrong_bool = isinstance(value, bool) and kind is not bool
    if wrong_bool or not isinstance(value, kind):
        raise TypeError(f"{where}: expected {kind.__name__}, got {value!r}")
    return value


def _primitive_from_json(value: Any, type_name: str, where: str) -> Any:
    if type_name not in _PRIMITIVES:
        raise ValueError(f"{where}: unknown type {type_name!r}")
    if type_name == "null":
        if value is not None:
            raise TypeError(f"{where}: expected null, got {value!r}")
        return None
    if type_name == "boolean":
        return _expect(value, bool, where)
    if type_name in ("int", "long"):
        return _expect(value, int, where)
    if type_name in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if type_name == "string":
        return _expect(value, str, where)
    # bytes: JSON has no bytes, so an example spells them out as text or base64.
    spelled = _expect(value, dict, where)
    if set(spelled) == {"utf8"}:
        return _expect(spelled["utf8"], str, where).encode("utf-8")
    if set(spelled) == {"base64"}:
        try:
            return base64.b64decode(_expect(spelled["base64"], str, where), validate=True)
        except binascii.Error as exc:
            raise ValueError(f"{where}: bad base64: {exc}") from exc
    raise TypeError(f"{where}: bytes are written as {{'utf8': …}} or {{'base64': …}}")


# --- command line --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.common.avro",
        description="Check every topic's value schema history against its compatibility mode.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="check schemas against schemas/topics.yaml")
    check.add_argument("--schemas", type=Path, default=SCHEMA_DIR, help="schema directory")
    check.add_argument("--topics", type=Path, default=TOPICS_FILE, help="topic catalogue")
    args = parser.parse_args(argv)

    try:
        store = SchemaStore.load(args.schemas)
    except SchemaStoreError as exc:
        print(f"ERROR    {exc}")
        return 1
    lines, problem_count = check_catalogue(store, read_catalogue_bindings(args.topics))
    for line in lines:
        print(line)
    print(f"{len(store.names())} schemas, {problem_count} problems")
    return 1 if problem_count else 0


if __name__ == "__main__":
    sys.exit(main())
