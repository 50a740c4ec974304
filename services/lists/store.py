"""The node's list state in RocksDB (rocksdict), written in atomic batches.

One database per node (``<data dir>/lists.rocksdb``). Keys are bytes, one prefix per kind of
value; ``\\x00`` separates key parts (no key part contains NUL):

=================================  ==========================================================
``e\\0<entry_key>``                 ListEntry (Avro single-object): own and mirrored entries,
                                   removed ones too while retained
``s\\0<subject_key>\\0<entry_key>``  subject index for credit checks
``x\\0<YYYY-MM-DD>\\0<entry_key>``    own entries in force with an end date, by end date
``c\\0<sequence, 8 bytes BE>``      own ListChange log, served by StreamListChanges
``r\\0<record_id>``                 highest version of a CreditRecord applied
``p\\0<issuing city>``              mirror position per peer: last sequence, cursor, sync time
``o\\0<topic>\\0<partition>``        next Kafka offset reflected in this store, per partition
``d\\0<entry_key>``                 ``<version>\\0<status>`` of every entry: the digest index,
                                   read at start without decoding an entry
``m\\0<name>``                      own sequence, cursor secret, digest index present
=================================  ==========================================================

Everything one step changes (entries, indexes, change log, sequence, idempotency marks,
cursors, offsets) goes into one :class:`StoreBatch` and is written with one ``WriteBatch``:
after a crash the store holds all of a step or none of it. RocksDB's write-ahead log makes a
written batch survive the process being killed; the Kafka changelog (``book.catch_up``)
covers what a lost machine had not flushed.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Final

from rocksdict import AccessType, Options, Rdict, WriteBatch, WriteOptions

from services.common.avro import AvroSerde
from services.common.list_digest import DigestLine, bucket_digests
from services.common.memo import BoundedMemo
from services.lists.model import CHANGE_SCHEMA, ENTRY_SCHEMA, ListChange, ListEntry

_ENTRY: Final = b"e\x00"
_CACHED_ENTRIES: Final = 200_000
_CACHED_SUBJECTS: Final = 200_000
_SUBJECT: Final = b"s\x00"
_EXPIRY: Final = b"x\x00"
_CHANGE: Final = b"c\x00"
_RECORD: Final = b"r\x00"
_PEER: Final = b"p\x00"
_OFFSET: Final = b"o\x00"
_META: Final = b"m\x00"
_SEP: Final = b"\x00"
_OWN_SEQUENCE: Final = _META + b"own-sequence"
_SECRET: Final = _META + b"cursor-secret"
_DIGEST: Final = b"d\x00"
#: Set once every entry has its ``d`` line; a store written before has them built at start.
_DIGEST_BUILT: Final = _META + b"digest-index"


def _digest_line(entry: ListEntry) -> bytes:
    return str(entry.version).encode() + _SEP + entry.status.value.encode()


def _after(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix``."""
    return prefix + b"\xff"


@dataclass(frozen=True, slots=True)
class PeerPosition:
    """Where this node's mirror of one peer stands."""

    sequence: int | None
    cursor: bytes
    synced_at: datetime | None

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "sequence": self.sequence,
                "cursor": self.cursor.hex(),
                "synced_at": self.synced_at.isoformat() if self.synced_at else None,
            }
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> PeerPosition:
        data = json.loads(raw)
        synced = data.get("synced_at")
        return cls(
            sequence=data.get("sequence"),
            cursor=bytes.fromhex(data.get("cursor") or ""),
            synced_at=datetime.fromisoformat(synced) if synced else None,
        )


NO_POSITION: Final = PeerPosition(sequence=None, cursor=b"", synced_at=None)


class ListStore:
    """Reads and atomic writes of the node's list state."""

    def __init__(
        self,
        path: Path,
        serde: AvroSerde,
        *,
        own_city: str,
        read_only: bool = False,
    ) -> None:
        """Open (or create) the store; ``read_only`` opens a running node's store beside it
        (operator commands, tests) and sees what the node has written so far."""
        options = Options(raw_mode=True)
        if read_only:
            self._db = Rdict(str(path), options, access_type=AccessType.read_only())
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            options.create_if_missing(True)
            self._db = Rdict(str(path), options)
        self._write_options = WriteOptions()
        self._serde = serde
        self.own_city = own_city
        self.path = path
        # entry_key -> (version, status) per issuing city, for digests without decoding.
        self._digest_index: dict[str, dict[str, tuple[int, str]]] = {}
        # Decoded entries and each subject's entry keys, for credit checks: decoding an entry
        # is most of a check's cost. Every write goes through commit(), which drops what it
        # changes; a read-only store sees another process's writes, so it keeps no cache.
        self._cache = not read_only
        #: Moves on with every commit: what a reader derived from the store is current while
        #: the generation it derived it at still is.
        self.generation = 0
        self._entry_cache: BoundedMemo[str, ListEntry | None] = BoundedMemo(_CACHED_ENTRIES)
        self._subject_cache: BoundedMemo[str, tuple[str, ...]] = BoundedMemo(_CACHED_SUBJECTS)
        self._load_digest_index(writable=not read_only)

    def _load_digest_index(self, *, writable: bool) -> None:
        """Read the digest index from its own lines: decoding every entry at start is what
        made a large store slow to restart. A store without them has them built once."""
        if self._db.get(_DIGEST_BUILT) is not None:
            for key, value in self._scan(_DIGEST):
                entry_key = key[len(_DIGEST) :].decode()
                version, status = value.split(_SEP, 1)
                self._digest_index.setdefault(entry_key.split("/", 1)[0], {})[entry_key] = (
                    int(version),
                    status.decode(),
                )
            return
        write = WriteBatch(raw_mode=True)
        for entry in self.entries(""):
            self._index_for_digest(entry)
            write.put(_DIGEST + entry.entry_key.encode(), _digest_line(entry))
        if writable:
            write.put(_DIGEST_BUILT, b"1")
            self._db.write(write, self._write_options)

    def close(self) -> None:
        self._db.close()

    # --- encoding -------------------------------------------------------------------------

    def _decode_entry(self, raw: bytes) -> ListEntry:
        return ListEntry.from_avro(self._serde.decode(raw, reader=ENTRY_SCHEMA))

    def _encode_entry(self, entry: ListEntry) -> bytes:
        return self._serde.encode(ENTRY_SCHEMA, entry.to_avro())

    def encode_change(self, change: ListChange) -> bytes:
        return self._serde.encode(CHANGE_SCHEMA, change.to_avro())

    def _index_for_digest(self, entry: ListEntry) -> None:
        self._digest_index.setdefault(entry.issuing_city, {})[entry.entry_key] = (
            entry.version,
            entry.status.value,
        )

    # --- reads ----------------------------------------------------------------------------

    def _scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        iterator = self._db.iter()
        iterator.seek(start if start is not None else prefix)
        while iterator.valid():
            key = iterator.key()
            if not key.startswith(prefix):
                return
            yield key, iterator.value()
            iterator.next()

    def entry(self, entry_key: str) -> ListEntry | None:
        if self._cache and entry_key in self._entry_cache:
            return self._entry_cache[entry_key]
        raw = self._db.get(_ENTRY + entry_key.encode())
        entry = None if raw is None else self._decode_entry(raw)
        if self._cache:
            self._entry_cache.remember(entry_key, entry)
        return entry

    def entries_of_subject(self, subject_key: str) -> list[ListEntry]:
        keys = self._subject_cache.get(subject_key) if self._cache else None
        if keys is None:
            prefix = _SUBJECT + subject_key.encode() + _SEP
            keys = tuple(key[len(prefix) :].decode() for key, _ in self._scan(prefix))
            if self._cache:
                self._subject_cache.remember(subject_key, keys)
        return [entry for key in keys if (entry := self.entry(key)) is not None]

    def entries(self, key_prefix: str, *, after: str | None = None) -> Iterator[ListEntry]:
        """Entries whose key starts with ``key_prefix`` (``"320500/"``, ``"320500/BLACK/"``),
        in ascending byte order of entry key, strictly after ``after`` when given."""
        prefix = _ENTRY + key_prefix.encode()
        start = _ENTRY + after.encode() + _SEP if after is not None else None
        for _, raw in self._scan(prefix, start):
            yield self._decode_entry(raw)

    def entry_keys(self, key_prefix: str, *, after: str | None = None) -> Iterator[str]:
        """Like :meth:`entries`, keys only (nothing decoded)."""
        prefix = _ENTRY + key_prefix.encode()
        start = _ENTRY + after.encode() + _SEP if after is not None else None
        for key, _ in self._scan(prefix, start):
            yield key[len(_ENTRY) :].decode()

    def digest_lines(self, issuing_city: str, list_type: str | None) -> list[DigestLine]:
        """What the bucket digest covers of ``issuing_city``'s entries (one list type or all)."""
        prefix = f"{issuing_city}/{list_type}/" if list_type else None
        return [
            DigestLine(key, version, status)
            for key, (version, status) in self._digest_index.get(issuing_city, {}).items()
            if prefix is None or key.startswith(prefix)
        ]

    def issuers(self) -> list[str]:
        """The cities whose entries this store holds (its own and mirrored ones)."""
        return sorted(city for city, entries in self._digest_index.items() if entries)

    def digest_summary(self, issuing_city: str, bucket_count: int = 256) -> str:
        """One hex SHA-256 over the bucket digests of ``issuing_city``'s entries: equal on two
        nodes exactly when every bucket is (for operators and tests)."""
        buckets = bucket_digests(self.digest_lines(issuing_city, None), bucket_count)
        return hashlib.sha256(b"".join(b.sha256 for b in buckets)).hexdigest()

    def entry_count(self, issuing_city: str) -> int:
        return len(self._digest_index.get(issuing_city, {}))

    def own_sequence(self) -> int:
        raw = self._db.get(_OWN_SEQUENCE)
        return 0 if raw is None else int(raw)

    def changes_after(self, sequence: int, limit: int) -> list[ListChange]:
        """Own changes with a sequence above ``sequence``, oldest first, at most ``limit``."""
        changes: list[ListChange] = []
        start = _CHANGE + (sequence + 1).to_bytes(8, "big")
        for _, raw in self._scan(_CHANGE, start):
            changes.append(ListChange.from_avro(self._serde.decode(raw, reader=CHANGE_SCHEMA)))
            if len(changes) >= limit:
                break
        return changes

    def first_retained_sequence(self) -> int | None:
        for key, _ in self._scan(_CHANGE):
            return int.from_bytes(key[len(_CHANGE) :], "big")
        return None

    def applied_version(self, record_id: str) -> int | None:
        raw = self._db.get(_RECORD + record_id.encode())
        return None if raw is None else int(raw)

    def peer_position(self, issuing_city: str) -> PeerPosition:
        raw = self._db.get(_PEER + issuing_city.encode())
        return NO_POSITION if raw is None else PeerPosition.from_json(raw)

    def offsets(self, topic: str) -> dict[int, int]:
        """Next offset to read per partition of ``topic`` (physical name)."""
        prefix = _OFFSET + topic.encode() + _SEP
        return {int(key[len(prefix) :]): int(raw) for key, raw in self._scan(prefix)}

    def due_for_expiry(self, today: date) -> list[ListEntry]:
        """Own entries in force whose last day is before ``today``."""
        due: list[ListEntry] = []
        end = _EXPIRY + today.isoformat().encode()
        for key, _ in self._scan(_EXPIRY):
            if key >= end:
                break
            entry = self.entry(key.rsplit(_SEP, 1)[1].decode())
            if entry is not None and not entry.removed:
                due.append(entry)
        return due

    def removed_before(self, cutoff: datetime) -> list[ListEntry]:
        """Removed entries last changed before ``cutoff`` (retention has passed)."""
        return [e for e in self.entries("") if e.removed and e.updated_at < cutoff]

    def changes_before(self, cutoff: datetime) -> list[int]:
        """Sequences of own changes made before ``cutoff``, oldest first."""
        old: list[int] = []
        for key, raw in self._scan(_CHANGE):
            change = ListChange.from_avro(self._serde.decode(raw, reader=CHANGE_SCHEMA))
            if change.changed_at >= cutoff:
                break
            old.append(int.from_bytes(key[len(_CHANGE) :], "big"))
        return old

    def cursor_secret(self) -> bytes:
        """The secret of this node's cursors, made with the store (see ``cursor.py``)."""
        raw = self._db.get(_SECRET)
        if raw is None:
            raw = secrets.token_bytes(32)
            self._db.put(_SECRET, raw)
        return bytes(raw)

    def is_empty(self) -> bool:
        return not any(True for _ in self._scan(_ENTRY)) and self.own_sequence() == 0

    # --- writes ---------------------------------------------------------------------------

    def batch(self) -> StoreBatch:
        return StoreBatch(self)

    def commit(self, batch: StoreBatch) -> None:
        if batch.empty:
            return
        write = WriteBatch(raw_mode=True)
        for key, value in batch.puts.items():
            if value is None:
                write.delete(key)
            else:
                write.put(key, value)
        self._db.write(write, self._write_options)
        self._forget(batch.puts, batch.entries)

    def _forget(self, keys: Iterable[bytes], entries: Mapping[str, ListEntry | None]) -> None:
        """After ``keys`` changed (``entries`` as they now are): move the generation on and
        drop what was derived from them."""
        self.generation += 1
        for key in keys:
            if key.startswith(_SUBJECT):
                self._subject_cache.pop(key[len(_SUBJECT) :].split(_SEP, 1)[0].decode(), None)
        for entry_key, entry in entries.items():
            self._entry_cache.pop(entry_key, None)
            if entry is None:
                issuer = entry_key.split("/", 1)[0]
                self._digest_index.get(issuer, {}).pop(entry_key, None)
            else:
                self._index_for_digest(entry)


class StoreBatch:
    """The writes of one step, visible to reads through the batch before they commit.

    It is the :class:`~services.lists.decisions.EntryLookup` the decisions of a step use, so
    a second record about the same entry in one batch sees the first one's result.
    """

    def __init__(self, store: ListStore) -> None:
        self._store = store
        self.puts: dict[bytes, bytes | None] = {}
        self.entries: dict[str, ListEntry | None] = {}
        self.own_sequence: int | None = None

    @property
    def empty(self) -> bool:
        return not self.puts

    # EntryLookup
    def entry(self, entry_key: str) -> ListEntry | None:
        if entry_key in self.entries:
            return self.entries[entry_key]
        return self._store.entry(entry_key)

    def entries_of_subject(self, subject_key: str) -> list[ListEntry]:
        held = {e.entry_key: e for e in self._store.entries_of_subject(subject_key)}
        for key, entry in self.entries.items():
            if entry is None:
                held.pop(key, None)
            elif entry.subject_key == subject_key:
                held[key] = entry
        return list(held.values())

    def applied_version(self, record_id: str) -> int | None:
        raw = self.puts.get(_RECORD + record_id.encode())
        if raw is not None:
            return int(raw)
        return self._store.applied_version(record_id)

    def next_sequence(self) -> int:
        current = self.own_sequence if self.own_sequence is not None else self._store.own_sequence()
        return current + 1

    def peer_position(self, issuing_city: str) -> PeerPosition:
        raw = self.puts.get(_PEER + issuing_city.encode())
        return (
            PeerPosition.from_json(raw)
            if raw is not None
            else self._store.peer_position(issuing_city)
        )

    # writes
    def _expiry_key(self, entry: ListEntry) -> bytes | None:
        if entry.issuing_city != self._store.own_city or entry.expires_at is None:
            return None
        return _EXPIRY + entry.expires_at.isoformat().encode() + _SEP + entry.entry_key.encode()

    def put_entry(self, entry: ListEntry) -> None:
        previous = self.entry(entry.entry_key)
        if previous is not None and (old := self._expiry_key(previous)) is not None:
            self.puts[old] = None
        key = entry.entry_key.encode()
        self.puts[_ENTRY + key] = self._store._encode_entry(entry)
        self.puts[_SUBJECT + entry.subject_key.encode() + _SEP + key] = b""
        self.puts[_DIGEST + key] = _digest_line(entry)
        if not entry.removed and (expiry := self._expiry_key(entry)) is not None:
            self.puts[expiry] = b""
        self.entries[entry.entry_key] = entry

    def delete_entry(self, entry: ListEntry) -> None:
        key = entry.entry_key.encode()
        self.puts[_ENTRY + key] = None
        self.puts[_SUBJECT + entry.subject_key.encode() + _SEP + key] = None
        self.puts[_DIGEST + key] = None
        if (expiry := self._expiry_key(entry)) is not None:
            self.puts[expiry] = None
        self.entries[entry.entry_key] = None

    def put_own_change(self, change: ListChange, encoded: bytes) -> None:
        self.puts[_CHANGE + change.sequence.to_bytes(8, "big")] = encoded
        current = self.own_sequence if self.own_sequence is not None else 0
        self.own_sequence = max(current, change.sequence, self._store.own_sequence())
        self.puts[_OWN_SEQUENCE] = str(self.own_sequence).encode()

    def drop_own_change(self, sequence: int) -> None:
        self.puts[_CHANGE + sequence.to_bytes(8, "big")] = None

    def mark_applied(self, record_id: str, version: int) -> None:
        current = self.applied_version(record_id)
        if current is None or version > current:
            self.puts[_RECORD + record_id.encode()] = str(version).encode()

    def set_peer_position(self, issuing_city: str, position: PeerPosition) -> None:
        self.puts[_PEER + issuing_city.encode()] = position.to_json()

    def set_offset(self, topic: str, partition: int, next_offset: int) -> None:
        self.puts[_OFFSET + topic.encode() + _SEP + str(partition).encode()] = str(
            next_offset
        ).encode()


def utc_now() -> datetime:
    return datetime.now(UTC)
