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

The package: ``store`` (schemas and fingerprints), ``writer`` (compiled writers), ``serde``
(:class:`AvroSerde`), ``compatibility``, ``examples`` and ``cli``; this module re-exports
their public names.
"""

from __future__ import annotations

from services.common.avro.cli import (
    main as main,
)
from services.common.avro.compatibility import (
    DEFAULT_COMPATIBILITY as DEFAULT_COMPATIBILITY,
)
from services.common.avro.compatibility import (
    CatalogueBinding as CatalogueBinding,
)
from services.common.avro.compatibility import (
    CompatibilityMode as CompatibilityMode,
)
from services.common.avro.compatibility import (
    check_catalogue as check_catalogue,
)
from services.common.avro.compatibility import (
    check_compatibility as check_compatibility,
)
from services.common.avro.compatibility import (
    read_catalogue_bindings as read_catalogue_bindings,
)
from services.common.avro.examples import (
    load_example as load_example,
)
from services.common.avro.serde import (
    AvroSerde as AvroSerde,
)
from services.common.avro.serde import (
    default_store as default_store,
)
from services.common.avro.store import (
    EXAMPLES_DIR as EXAMPLES_DIR,
)
from services.common.avro.store import (
    FINGERPRINT_LENGTH as FINGERPRINT_LENGTH,
)
from services.common.avro.store import (
    HEADER_LENGTH as HEADER_LENGTH,
)
from services.common.avro.store import (
    SCHEMA_DIR as SCHEMA_DIR,
)
from services.common.avro.store import (
    SINGLE_OBJECT_MARKER as SINGLE_OBJECT_MARKER,
)
from services.common.avro.store import (
    TOPICS_FILE as TOPICS_FILE,
)
from services.common.avro.store import (
    CorruptPayload as CorruptPayload,
)
from services.common.avro.store import (
    InvalidRecord as InvalidRecord,
)
from services.common.avro.store import (
    NotSingleObjectEncoded as NotSingleObjectEncoded,
)
from services.common.avro.store import (
    ParsedSchema as ParsedSchema,
)
from services.common.avro.store import (
    SchemaResolutionError as SchemaResolutionError,
)
from services.common.avro.store import (
    SchemaStore as SchemaStore,
)
from services.common.avro.store import (
    SchemaStoreError as SchemaStoreError,
)
from services.common.avro.store import (
    SchemaVersion as SchemaVersion,
)
from services.common.avro.store import (
    SerdeError as SerdeError,
)
from services.common.avro.store import (
    UnknownSchema as UnknownSchema,
)
from services.common.avro.store import (
    UnknownSchemaFingerprint as UnknownSchemaFingerprint,
)
from services.common.avro.store import (
    crc64_avro_fingerprint as crc64_avro_fingerprint,
)
from services.common.avro.writer import (
    AvroWriter as AvroWriter,
)
from services.common.avro.writer import (
    WriterNotCompiled as WriterNotCompiled,
)
from services.common.avro.writer import (
    compile_fields_writer as compile_fields_writer,
)
from services.common.avro.writer import (
    compile_writer as compile_writer,
)
