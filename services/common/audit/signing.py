"""Signed chain heads: every batch the writer sends ends with a record whose Kafka header
carries the city's Ed25519 signature over that record's chain position and hash
(services/common/audit/__init__.py, "Signatures").

The hash chains every earlier record of the chain, so one valid signature vouches for the
chain up to it; a record no later signature covers was not written by the city's node (or
the node died between linking and sending, which leaves nothing on the topic). Whoever can
write the topic can still append records with valid hashes, but not sign them.

Keys: ``<city>.audit.key`` (private, the node's) and ``<city>.audit.pub`` (published to every
verifier); a key is named by its id, the first 8 hex digits of the SHA-256 of its raw public
key. A rotated key stays published as ``<city>.audit.<key id>.pub``, so records it signed
still verify.

The same key signs a city's exports of its audit (export.py) under another domain prefix, so
a head signature can never stand for an export's or the other way round.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

SIGNATURE_HEADER: Final = "creditlink-audit-signature"
_DOMAIN: Final = b"creditlink-audit-head-v1"
_EXPORT_DOMAIN: Final = b"creditlink-audit-export-v1"
_RECEIPT_DOMAIN: Final = b"creditlink-audit-receipt-v1"
_PUBLIC_FILE = re.compile(r"(?P<city>[a-z][a-z0-9_-]*)\.audit(?:\.[0-9a-f]{8})?\.pub")


def key_id_of(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:8]


def _joined(domain: bytes, *parts: str) -> bytes:
    return b"|".join((domain, *(part.encode() for part in parts)))


def signed_message(node_city: str, chain: str | None, seq: int, record_hash: str) -> bytes:
    """What a head signature covers: the writing city, the chain, the position, the hash."""
    return _joined(_DOMAIN, node_city, chain or "", str(seq), record_hash)


def receipt_message(
    callee_city: str, chain: str | None, seq: int, record_hash: str, exchange: str
) -> bytes:
    """What a receipt's signature covers: the callee city, where it recorded the call (chain,
    seq, the record's hash) and the exchange digest it recorded."""
    return _joined(_RECEIPT_DOMAIN, callee_city, chain or "", str(seq), record_hash, exchange)


def export_message(manifest: bytes) -> bytes:
    """What an export's signature covers: the exact bytes of its manifest."""
    return b"|".join((_EXPORT_DOMAIN, manifest))


@dataclass(frozen=True, slots=True)
class AuditSigner:
    """A city node's audit key: signs the head of each batch it sends."""

    node_city: str
    private_key: Ed25519PrivateKey
    key_id: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_id", key_id_of(self.private_key.public_key()))

    def header(self, chain: str | None, seq: int, record_hash: str) -> tuple[str, bytes]:
        message = signed_message(self.node_city, chain, seq, record_hash)
        return SIGNATURE_HEADER, self._signature(message).encode("ascii")

    def receipt_signature(
        self, chain: str | None, seq: int, record_hash: str, exchange: str
    ) -> str:
        return self._signature(receipt_message(self.node_city, chain, seq, record_hash, exchange))

    def sign_export(self, manifest: bytes) -> str:
        return self._signature(export_message(manifest))

    def _signature(self, message: bytes) -> str:
        """``<key id>.<signature>``, the signature in URL-safe base64."""
        signature = self.private_key.sign(message)
        return f"{self.key_id}.{base64.urlsafe_b64encode(signature).decode('ascii')}"


def load_audit_signer(location: Path, city: str, city_code: str) -> AuditSigner:
    """``<location>/<city>.audit.key``, or the key file ``location`` names; a node without it
    refuses to start (make certs)."""
    path = location if location.is_file() else location / f"{city}.audit.key"
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(
            f"{path}: the node's audit signing key cannot be read ({exc}); make certs makes "
            "a development one"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 key")
    return AuditSigner(city_code, key)


@dataclass(frozen=True, slots=True)
class AuditKeyring:
    """The published audit keys of the region's cities: key id -> (city code, key)."""

    keys: Mapping[str, tuple[str, Ed25519PublicKey]]

    @classmethod
    def from_directory(cls, directory: Path, codes: Mapping[str, str]) -> AuditKeyring:
        """Every ``<city>.audit[.<key id>].pub`` of ``directory`` whose city ``codes`` names."""
        keys: dict[str, tuple[str, Ed25519PublicKey]] = {}
        for path in sorted(directory.glob("*.pub")):
            match = _PUBLIC_FILE.fullmatch(path.name)
            if match is None or match["city"] not in codes:
                continue
            public = serialization.load_pem_public_key(path.read_bytes())
            if isinstance(public, Ed25519PublicKey):
                keys[key_id_of(public)] = (codes[match["city"]], public)
        return cls(keys)

    @classmethod
    def of(cls, signer: AuditSigner) -> AuditKeyring:
        """The one key of ``signer`` (a node checking what it signed itself)."""
        return cls({signer.key_id: (signer.node_city, signer.private_key.public_key())})

    def problem(
        self, header: bytes, node_city: str, chain: str | None, seq: int, record_hash: str
    ) -> str | None:
        """Why ``header`` is not ``node_city``'s signature of this head, or None if it is."""
        message = signed_message(node_city, chain, seq, record_hash)
        return self._problem(header.decode("ascii", "replace"), node_city, message)

    def receipt_problem(
        self,
        signature: str,
        callee_city: str,
        chain: str | None,
        seq: int,
        record_hash: str,
        exchange: str,
    ) -> str | None:
        """Why ``signature`` is not ``callee_city``'s receipt for this record, or None."""
        message = receipt_message(callee_city, chain, seq, record_hash, exchange)
        return self._problem(signature, callee_city, message)

    def export_problem(self, signature: str, node_city: str, manifest: bytes) -> str | None:
        """Why ``signature`` is not ``node_city``'s signature of this export's manifest."""
        return self._problem(signature, node_city, export_message(manifest))

    def _problem(self, value: str, node_city: str, message: bytes) -> str | None:
        key_id, _, encoded = value.partition(".")
        known = self.keys.get(key_id)
        if known is None:
            return f"signed with key {key_id!r}, which is no published audit key"
        city, public = known
        if city != node_city:
            return f"signed with {city}'s key {key_id}, not {node_city}'s"
        try:
            signature = base64.urlsafe_b64decode(encoded.encode("ascii"))
            # The decoder skips stray characters and the last digit's unused bits: only the
            # one encoding of the signature is accepted, so no changed byte still verifies.
            if base64.urlsafe_b64encode(signature).decode("ascii") != encoded:
                raise ValueError("not the signature's own encoding")
            public.verify(signature, message)
        except (InvalidSignature, binascii.Error, ValueError):
            return f"the signature does not verify under {city}'s key {key_id}"
        return None


def new_audit_key_files(directory: Path, city: str) -> None:
    """Write ``<city>.audit.key`` and ``.pub`` (development: ``make certs``)."""
    key = Ed25519PrivateKey.generate()
    private = directory / f"{city}.audit.key"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    (directory / f"{city}.audit.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
