"""Pseudonyms of natural persons: the only form in which a person leaves the home city.

docs/design.md §4.8: personal data of natural persons crosses a border only as a pseudonym, the
HMAC-SHA256 of the normalised resident ID number under the *region* key. Every city holds the
same region key, so a person has the same subject key (``N:<pseudonym>``) in every city, and
nobody without the key can go back from the pseudonym to the number or test a guessed number.

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
from collections.abc import Mapping
from pathlib import Path

from services.common.identifiers import check_resident_id, normalize_identifier
from services.common.policy import subject_key_problem

MIN_KEY_BYTES = 32
# A published key for the demo and the tests only: its pseudonyms protect nothing.
DEV_REGION_KEY = hashlib.sha256(b"creditlink development region key - not for production").digest()
NATURAL_PERSON_PREFIX = "N:"
ORGANISATION_PREFIX = "L:"


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


def pseudonym(resident_id: str, region_key: bytes) -> str:
    """Lowercase hex HMAC-SHA256 of the normalised resident ID number under the region key.

    Normalisation is the identifier module's (NFKC, trimmed, upper-case ``X``), so
    ``"32050519900307123x"`` and ``"３２０５０５１９９００３０７１２３Ｘ"`` give one pseudonym.
    Invalid numbers are refused rather than pseudonymised: two spellings of one wrong number
    would otherwise become two unrelated subjects.
    """
    if not check_resident_id(resident_id).valid:
        raise InvalidResidentId("not a valid resident ID number (GB 11643)")
    normalised = normalize_identifier(resident_id)
    return hmac.new(region_key, normalised.encode("ascii"), hashlib.sha256).hexdigest()


def person_subject_key(resident_id: str, region_key: bytes) -> str:
    """The subject key ``N:<pseudonym>`` of a natural person."""
    return NATURAL_PERSON_PREFIX + pseudonym(resident_id, region_key)


def is_natural_person(subject_key: str) -> bool:
    return subject_key.startswith(NATURAL_PERSON_PREFIX)


def is_valid_subject_key(subject_key: str) -> bool:
    """Whether ``subject_key`` is well formed: see :func:`policy.subject_key_problem`."""
    return subject_key_problem(subject_key) is None
