"""The example events of ``schemas/examples``, read from JSON into Avro values."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any, Final

from services.common.avro.serde import default_store
from services.common.avro.store import _T, EXAMPLES_DIR, SchemaStore


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
