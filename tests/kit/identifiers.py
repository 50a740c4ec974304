"""Synthetic identifiers for tests, benchmarks and the demo — never for production data.

Every generator takes the caller's ``random.Random`` so a seed reproduces a scenario::

    rng = random.Random(7)
    make_uscc(rng, division="320200")        # a valid Wuxi code
    make_resident_id(rng, birth=date(1990, 5, 17))

The codes are well-formed and pass their checks, but they are random: any match with a real
organisation or person is chance.
"""

from __future__ import annotations

import random
from datetime import date, timedelta

from services.common.identifiers import (
    USCC_ALPHABET,
    org_code_check_char,
    resident_id_check_char,
    uscc_check_char,
)

__all__ = ["make_pilot_uscc", "make_resident_id", "make_uscc"]

# GB 32100-2015: (registration authority, organisation category) pairs in common use —
# 1x 机构编制 (organs, institutions), 5x 民政 (social organisations, foundations),
# 9x 市场监管/工商 (enterprises, individual businesses, farmers' cooperatives), Y1 other.
_AUTHORITY_CATEGORIES = ("11", "12", "13", "19", "51", "52", "53", "59", "91", "92", "93", "Y1")
# Birth dates of generated people: adults, and fixed so a seed gives the same number in any
# year (no dependency on today's date).
_BIRTH_FROM = date(1940, 1, 1)
_BIRTH_SPAN_DAYS = (date(2005, 12, 31) - _BIRTH_FROM).days


def _require_division(division: str) -> None:
    if len(division) != 6 or any(char not in "0123456789" for char in division):
        raise ValueError(f"division {division!r} is not a 6-digit GB/T 2260 code")


def _uscc_first17(rng: random.Random, division: str) -> str:
    _require_division(division)
    body = "".join(rng.choice(USCC_ALPHABET) for _ in range(8))
    return rng.choice(_AUTHORITY_CATEGORIES) + division + body + org_code_check_char(body)


def make_uscc(rng: random.Random, division: str = "320500") -> str:
    """A valid unified social credit code registered in ``division``."""
    first17 = _uscc_first17(rng, division)
    return first17 + uscc_check_char(first17)


def make_pilot_uscc(rng: random.Random, division: str = "320500") -> str:
    """A code shaped like an early pilot code: valid organisation code, wrong check char."""
    first17 = _uscc_first17(rng, division)
    correct = uscc_check_char(first17)
    return first17 + rng.choice(USCC_ALPHABET.replace(correct, ""))


def make_resident_id(
    rng: random.Random, division: str = "320500", birth: date | None = None
) -> str:
    """A valid resident identity number of someone born in ``division`` on ``birth``."""
    _require_division(division)
    if birth is None:
        birth = _BIRTH_FROM + timedelta(days=rng.randrange(_BIRTH_SPAN_DAYS + 1))
    sequence = rng.randrange(1, 1000)
    first17 = f"{division}{birth.year:04d}{birth.month:02d}{birth.day:02d}{sequence:03d}"
    return first17 + resident_id_check_char(first17)
