"""Writers compiled once per schema version for the values they can write exactly as fastavro
does; any other value is left to fastavro (``WriterNotCompiled``)."""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any, Final

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
