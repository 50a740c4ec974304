"""The schemas kept in the repository, by record name and version, with their fingerprints."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from fastavro import parse_schema
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
