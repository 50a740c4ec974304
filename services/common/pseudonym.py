"""Pseudonyms of natural persons: the only form in which a person leaves the home city.

docs/design.md §4.8: personal data of natural persons crosses a border only as a pseudonym, the
HMAC-SHA256 of the normalised resident ID number under the *region* key. Every city holds the
same region key, so a person has the same subject key (``N:<pseudonym>``) in every city, and
nobody without the key can go back from the pseudonym to the number or test a guessed number.

A pseudonym reads ``<division>.<key id>.<digest>``:

* ``division``: the six-digit address code that opens the number (GB 11643 §4.1, a GB/T 2260
  division). It names the person's **home city**, the region city whose division it is
  (:meth:`services.common.region.Region.by_admin_code`), as positions 3–8 of a unified social
  credit code name an organisation's. Every node can tell from the key alone which city may
  give consent for the person (docs/trust.md), and the city it names holds the number anyway.
* ``key id``: the first 8 hex characters of the SHA-256 of the region key, so a node that was
  given another key is found out by the first key it is sent (:func:`key_id_of`), and the
  region can rotate its key: keys made under the old one keep their id.
* ``digest``: lowercase hex HMAC-SHA256 of the normalised number under the region key.

Keys made before the key id and division were carried (``N:`` + 64 hex) are still well formed;
they name no home city, so no consent for them is honoured.

The key comes from the environment, never from the repository:

* ``CREDITLINK_PSEUDONYM_KEY``: the region key as hex (at least 32 bytes), or
* ``CREDITLINK_PSEUDONYM_KEY_FILE``: a file holding that hex.

Without either, :func:`load_region_key` returns :data:`DEV_REGION_KEY` only when
``CREDITLINK_DEV=1`` (the demo and the tests); otherwise it fails, so a production node cannot
start with a key everybody knows.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.common.identifiers import check_resident_id, normalize_identifier

MIN_KEY_BYTES = 32
# A published key for the demo and the tests only: its pseudonyms protect nothing.
DEV_REGION_KEY = hashlib.sha256(b"creditlink development region key - not for production").digest()
NATURAL_PERSON_PREFIX = "N:"
ORGANISATION_PREFIX = "L:"
DIVISION_CHARS = 6
KEY_ID_CHARS = 8
DIGEST_CHARS = 64


class PseudonymKeyError(ValueError):
    """The region key is missing or unusable; the message says which variable to set."""


class InvalidResidentId(ValueError):
    """The number is not a valid GB 11643 resident ID; the message never repeats it."""


def load_region_key(environ: Mapping[str, str] | None = None) -> bytes:
    env = os.environ if environ is None else environ
    text = env.get("CREDITLINK_PSEUDONYM_KEY", "").strip()
    source = "CREDITLINK_PSEUDONYM_KEY"
    if not text and (path := env.get("CREDITLINK_PSEUDONYM_KEY_FILE", "").strip()):
        source = f"CREDITLINK_PSEUDONYM_KEY_FILE ({path})"
        try:
            text = Path(path).read_text(encoding="ascii").strip()
        except OSError as exc:
            raise PseudonymKeyError(f"{source}: cannot read: {exc.strerror}") from None
    if not text:
        if env.get("CREDITLINK_DEV", "") == "1":
            return DEV_REGION_KEY
        raise PseudonymKeyError(
            "no region pseudonym key: set CREDITLINK_PSEUDONYM_KEY (hex, >= 32 bytes) or "
            "CREDITLINK_PSEUDONYM_KEY_FILE; CREDITLINK_DEV=1 uses the published dev key"
        )
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise PseudonymKeyError(f"{source}: not hexadecimal") from None
    if len(key) < MIN_KEY_BYTES:
        raise PseudonymKeyError(f"{source}: {len(key)} bytes, need at least {MIN_KEY_BYTES}")
    return key


def key_id_of(region_key: bytes) -> str:
    """The id a region key's pseudonyms carry: the first 8 hex characters of its SHA-256 (which
    says nothing about the key itself)."""
    return hashlib.sha256(region_key).hexdigest()[:KEY_ID_CHARS]


def check_region_key(region_key: bytes, key_ids: Sequence[str]) -> None:
    """Refuse a key the region does not use (``region.pseudonym_key_ids`` of the region
    file): its pseudonyms would match no other city's, silently. Nothing is checked when the
    region states no ids."""
    if key_ids and key_id_of(region_key) not in key_ids:
        raise PseudonymKeyError(
            f"the pseudonym key given (id {key_id_of(region_key)}) is not one the region uses "
            f"({', '.join(key_ids)}): check CREDITLINK_PSEUDONYM_KEY(_FILE)"
        )


def pseudonym(resident_id: str, region_key: bytes) -> str:
    """``<division>.<key id>.<HMAC-SHA256 hex>`` of the normalised resident ID number.

    Normalisation is the identifier module's (NFKC, trimmed, upper-case ``X``), so
    ``"32050519900307123x"`` and ``"３２０５０５１９９００３０７１２３Ｘ"`` give one pseudonym.
    Invalid numbers are refused rather than pseudonymised: two spellings of one wrong number
    would otherwise become two unrelated subjects.
    """
    if not check_resident_id(resident_id).valid:
        raise InvalidResidentId("not a valid resident ID number (GB 11643)")
    normalised = normalize_identifier(resident_id)
    digest = hmac.new(region_key, normalised.encode("ascii"), hashlib.sha256).hexdigest()
    return f"{normalised[:DIVISION_CHARS]}.{key_id_of(region_key)}.{digest}"


def person_subject_key(resident_id: str, region_key: bytes) -> str:
    """The subject key ``N:<pseudonym>`` of a natural person."""
    return NATURAL_PERSON_PREFIX + pseudonym(resident_id, region_key)


@dataclass(frozen=True, slots=True)
class PersonKey:
    """The parts of a natural person's subject key; ``division`` and ``key_id`` are None for a
    key made before they were carried."""

    division: str | None
    key_id: str | None
    digest: str


def parse_person_key(subject_key: str) -> PersonKey | None:
    """The parts of ``N:<pseudonym>``, or None when it is not a well-formed person key."""
    if not subject_key.startswith(NATURAL_PERSON_PREFIX):
        return None
    value = subject_key[len(NATURAL_PERSON_PREFIX) :]
    if _is_hex(value, DIGEST_CHARS):
        return PersonKey(None, None, value)
    parts = value.split(".")
    if len(parts) != 3:
        return None
    division, key_id, digest = parts
    if not (
        len(division) == DIVISION_CHARS
        and division.isascii()
        and division.isdigit()
        and _is_hex(key_id, KEY_ID_CHARS)
        and _is_hex(digest, DIGEST_CHARS)
    ):
        return None
    return PersonKey(division, key_id, digest)


def _is_hex(value: str, length: int) -> bool:
    return len(value) == length and all(c in "0123456789abcdef" for c in value)


def is_natural_person(subject_key: str) -> bool:
    return subject_key.startswith(NATURAL_PERSON_PREFIX)
