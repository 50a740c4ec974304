"""The bucketed list digest of ``ListSyncService.GetListDigest`` (contracts, ``BucketDigest``).

Defined once here so the lists service that serves digests, the reconciler that compares
them and the conformance runner that checks a peer's digests against its entries agree byte
for byte:

* an entry falls in bucket ``int.from_bytes(SHA-256(entry_key)[:4], "big") % bucket_count``;
* a bucket's hash is SHA-256 over its entries in ascending byte order of ``entry_key``, one
  line each: ``entry_key|version|STATUS\\n`` (UTF-8), ``STATUS`` being ``ACTIVE``,
  ``OBJECTION_PENDING`` or ``REMOVED``; an empty bucket hashes the empty string.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_BUCKETS = 256
MAX_BUCKETS = 4096
STATUSES = frozenset({"ACTIVE", "OBJECTION_PENDING", "REMOVED"})


def bucket_count_or_default(requested: int) -> int:
    """0 → 256; a power of two from 1 to 4,096 as is; anything else is a ``ValueError``."""
    if requested == 0:
        return DEFAULT_BUCKETS
    if not 1 <= requested <= MAX_BUCKETS or requested & (requested - 1):
        raise ValueError(
            f"bucket_count must be a power of two from 1 to {MAX_BUCKETS}, got {requested}"
        )
    return requested


def bucket_of(entry_key: str, bucket_count: int) -> int:
    digest = hashlib.sha256(entry_key.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % bucket_count


@dataclass(frozen=True, slots=True)
class DigestLine:
    """What of an entry the digest covers."""

    entry_key: str
    version: int
    status: str

    def encode(self) -> bytes:
        if self.status not in STATUSES:
            raise ValueError(f"unknown list entry status {self.status!r}")
        return f"{self.entry_key}|{self.version}|{self.status}\n".encode()


@dataclass(frozen=True, slots=True)
class Bucket:
    bucket: int
    entry_count: int
    sha256: bytes


def bucket_digests(entries: Iterable[DigestLine], bucket_count: int) -> list[Bucket]:
    """One :class:`Bucket` per bucket number, in order."""
    buckets: list[list[DigestLine]] = [[] for _ in range(bucket_count)]
    for line in entries:
        buckets[bucket_of(line.entry_key, bucket_count)].append(line)
    result: list[Bucket] = []
    for number, lines in enumerate(buckets):
        lines.sort(key=lambda line: line.entry_key.encode("utf-8"))
        digest = hashlib.sha256()
        for line in lines:
            digest.update(line.encode())
        result.append(Bucket(number, len(lines), digest.digest()))
    return result
