"""Validation of the two identifiers every credit record is keyed on.

* **Unified social credit code** (统一社会信用代码) of organisations, GB 32100-2015: 18
  characters from the 31-character alphabet ``0123456789ABCDEFGHJKLMNPQRTUWXY`` (no I, O, S,
  V, Z), laid out as

  ====  ==========================================================================
  pos   meaning
  ====  ==========================================================================
  1     registration authority code (登记管理部门代码)
  2     organisation category code (机构类别代码)
  3–8   administrative division code of the registering authority (GB/T 2260)
  9–17  organisation code (组织机构代码, GB 11714-1997): 8 body chars + its check
  18    check character over positions 1–17
  ====  ==========================================================================

* **Resident identity number** (公民身份号码) of natural persons, GB 11643-1999: a 6-digit
  division code, an 8-digit birth date ``YYYYMMDD``, a 3-digit sequence and a check
  character (a digit or ``X``).

Normalisation (both kinds): Unicode NFKC (full-width ``９１３２…`` becomes ``9132…``),
surrounding whitespace stripped, upper-cased (so a trailing ``x`` becomes ``X``). Only ASCII
characters are accepted afterwards: other scripts' digits (``٣``) are not digits here.

Positions 1–2 are checked against the alphabet only. The registration-authority and category
tables of GB 32100 have grown since 2015 (new authorities were added by later notices), and a
stale copy of them would drop legal codes; the check character protects those positions.

**Pilot-code tolerance** (docs/design.md §4.1: "some early pilot codes are legal but fail the check:
flag, don't drop"). With ``allow_pilot=True`` (the default) a code is *tolerated* — returned
with ``valid=True``, ``pilot_tolerated=True`` and the single issue ``uscc.pilot_check_digit``
— exactly when all of these hold:

1. it has 18 characters, all from the GB 32100 alphabet;
2. positions 3–8 are digits (a GB/T 2260 division code);
3. the embedded organisation code (positions 9–17) passes its own GB 11714 check;
4. the GB 32100 check character (position 18) does not match positions 1–17.

With ``allow_pilot=False`` the same code is invalid with ``uscc.check_digit``. Any other
defect makes the code invalid whatever ``allow_pilot`` says.

The price of tolerance, stated so nobody mistakes it for full protection: for a tolerated
code the only check left is the GB 11714 one over positions 9–17. A mistyped character in
positions 1–8 or 18 — and, in positions 9–16, a substitution whose GB 11714 values differ by
a multiple of 11 (``1`` ↔ ``C``, say) — is indistinguishable from a pilot code and is
therefore flagged, not rejected. Consumers that must not accept flagged codes (a peer's
blacklist key, for instance) call with ``allow_pilot=False`` or look at ``pilot_tolerated``.

Messages never echo more than a single character of the input, so a resident ID number —
even one keyed into a USCC field by mistake — does not leak through them (docs/design.md §4.8); and
:class:`IdentifierCheck` keeps ``normalized`` out of its ``repr``, so that logging a result
by accident does not leak one either.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from datetime import date
from operator import mul
from typing import Literal

__all__ = [
    "ORG_CODE_ALPHABET",
    "USCC_ALPHABET",
    "IdentifierCheck",
    "IdentifierIssue",
    "IdentifierKind",
    "IssueCode",
    "admin_division",
    "check_resident_id",
    "check_uscc",
    "has_uscc_shape",
    "is_resident_id",
    "normalize_identifier",
    "org_code_check_char",
    "resident_id_check_char",
    "uscc_check_char",
]

IdentifierKind = Literal["uscc", "resident_id"]

IssueCode = Literal[
    "uscc.length",
    "uscc.charset",
    "uscc.admin_division",
    "uscc.org_code_check",
    "uscc.check_digit",
    "uscc.pilot_check_digit",
    "resident_id.length",
    "resident_id.charset",
    "resident_id.birth_date",
    "resident_id.birth_date_future",
    "resident_id.check_digit",
]

# GB 32100-2015: the 31 code characters; a character's value is its index.
USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_VALUE = {char: value for value, char in enumerate(USCC_ALPHABET)}
_USCC_CHARS = frozenset(USCC_ALPHABET)


def has_uscc_shape(value: str) -> bool:
    """18 characters of the code alphabet (GB 32100-2015; no I, O, S, V, Z). The check
    character is not verified: early pilot codes are legal but fail it."""
    return len(value) == 18 and all(char in _USCC_CHARS for char in value)


def is_resident_id(value: str) -> bool:
    """A valid resident ID number, which also has the shape of a code: it must never be
    taken for one (it would carry personal data where only codes may go)."""
    return value[:17].isdigit() and check_resident_id(value).valid


# Byte translation of ASCII code characters to their values: one C call instead of a dict
# lookup per character (intake checks a code per record).
_USCC_VALUE_BYTES = bytes.maketrans(USCC_ALPHABET.encode(), bytes(range(len(USCC_ALPHABET))))
# GB 32100-2015: W_i = 3^(i-1) mod 31 for i = 1..17.
_USCC_WEIGHTS = tuple(pow(3, i, 31) for i in range(17))

# GB 11714-1997: body characters are 0-9 and A-Z, with A=10 … Z=35.
ORG_CODE_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ORG_VALUE = {char: value for value, char in enumerate(ORG_CODE_ALPHABET)}
_ORG_VALUE_BYTES = bytes.maketrans(ORG_CODE_ALPHABET.encode(), bytes(range(len(ORG_CODE_ALPHABET))))
# GB 11714-1997: weights of body positions 1..8.
_ORG_WEIGHTS = (3, 7, 9, 10, 5, 8, 4, 2)

_DIGITS = "0123456789"
_DIGIT_VALUE = {char: value for value, char in enumerate(_DIGITS)}
# GB 11643-1999 (ISO 7064 MOD 11-2): W_i = 2^(18-i) mod 11 for i = 1..17.
_RESIDENT_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
# GB 11643-1999: check character indexed by (Σ a_i·W_i) mod 11.
_RESIDENT_CHECK = "10X98765432"
# Σ (byte − 48)·W_i = Σ byte·W_i − 48·Σ W_i: the weighted sum straight off ASCII digit bytes.
_RESIDENT_DIGIT_OFFSET = ord("0") * sum(_RESIDENT_WEIGHTS)
_CHECK_CHARS = frozenset(_DIGITS + "X")

_LENGTH = 18


@dataclass(frozen=True, slots=True)
class IdentifierIssue:
    """One finding about an identifier: ``code`` for machines, ``message`` for people."""

    code: IssueCode
    message: str


@dataclass(frozen=True, slots=True)
class IdentifierCheck:
    """The verdict on one identifier.

    ``issues`` lists every defect found; for a valid result it is empty except for a
    tolerated pilot code, which carries ``uscc.pilot_check_digit`` as a warning.
    """

    valid: bool
    # Kept out of repr: for a resident ID it is personal data that must not reach a log.
    normalized: str = field(repr=False)
    kind: IdentifierKind
    issues: tuple[IdentifierIssue, ...] = ()
    pilot_tolerated: bool = False

    @property
    def issue_codes(self) -> tuple[IssueCode, ...]:
        return tuple(issue.code for issue in self.issues)

    @property
    def division(self) -> str | None:
        """The 6-digit GB/T 2260 division code of a valid identifier, else ``None``."""
        if not self.valid:
            return None
        if self.kind == "uscc":
            return self.normalized[2:8]
        return self.normalized[:6]


def normalize_identifier(raw: str) -> str:
    """NFKC (full-width → half-width), strip surrounding whitespace, upper-case."""
    if raw.isascii():  # NFKC leaves every ASCII character as it is
        return raw.strip().upper()
    return unicodedata.normalize("NFKC", raw).strip().upper()


def _uscc_check(first17: str) -> str:
    """The check character of 17 characters known to be of :data:`USCC_ALPHABET`."""
    values = first17.encode("ascii").translate(_USCC_VALUE_BYTES)
    return USCC_ALPHABET[-sum(map(mul, values, _USCC_WEIGHTS)) % 31]


def _org_check(first8: str) -> str:
    """The GB 11714 check character of 8 characters known to be of ``0-9A-Z``."""
    values = first8.encode("ascii").translate(_ORG_VALUE_BYTES)
    check = 11 - sum(map(mul, values, _ORG_WEIGHTS)) % 11
    return "X" if check == 10 else "0" if check == 11 else str(check)


def _resident_check(first17: str) -> str:
    """The check character of 17 characters known to be ASCII digits."""
    weighted = sum(map(mul, first17.encode("ascii"), _RESIDENT_WEIGHTS)) - _RESIDENT_DIGIT_OFFSET
    return _RESIDENT_CHECK[weighted % 11]


def uscc_check_char(first17: str) -> str:
    """The GB 32100-2015 check character (position 18) for positions 1–17.

    C18 = 31 − (Σ C_i·W_i mod 31), where 31 is written as ``0``. Raises ``ValueError``
    unless ``first17`` is exactly 17 characters of :data:`USCC_ALPHABET`.
    """
    if len(first17) != 17 or any(char not in _USCC_VALUE for char in first17):
        raise ValueError("expected 17 characters of the GB 32100 alphabet")
    return _uscc_check(first17)


def org_code_check_char(first8: str) -> str:
    """The GB 11714-1997 check character of an organisation-code body of 8 characters.

    C9 = 11 − (Σ C_i·W_i mod 11); 10 is written ``X`` and 11 is written ``0``. Raises
    ``ValueError`` unless ``first8`` is exactly 8 characters of ``0-9A-Z``.
    """
    if len(first8) != 8 or any(char not in _ORG_VALUE for char in first8):
        raise ValueError("expected 8 characters of 0-9A-Z")
    return _org_check(first8)


def resident_id_check_char(first17: str) -> str:
    """The GB 11643-1999 check character for the first 17 digits of a resident ID number.

    Raises ``ValueError`` unless ``first17`` is exactly 17 ASCII digits.
    """
    if len(first17) != 17 or any(char not in _DIGIT_VALUE for char in first17):
        raise ValueError("expected 17 ASCII digits")
    return _resident_check(first17)


def _positions(indexes: list[int]) -> str:
    shown = ", ".join(str(i + 1) for i in indexes[:5])
    return shown + (f" and {len(indexes) - 5} more" if len(indexes) > 5 else "")


def check_uscc(raw: str, *, allow_pilot: bool = True) -> IdentifierCheck:
    """Check a unified social credit code; never raises. See the module docstring."""
    code = normalize_identifier(raw)
    # The common case first: a well-formed code whose two check characters match.
    if (
        len(code) == _LENGTH
        and _USCC_CHARS.issuperset(code)
        and code[2:8].isdigit()
        and code[16] == _org_check(code[8:16])
        and code[17] == _uscc_check(code[:17])
    ):
        return IdentifierCheck(valid=True, normalized=code, kind="uscc")

    def verdict(*issues: IdentifierIssue, pilot: bool = False) -> IdentifierCheck:
        return IdentifierCheck(
            valid=pilot or not issues,
            normalized=code,
            kind="uscc",
            issues=issues,
            pilot_tolerated=pilot,
        )

    if len(code) != _LENGTH:
        return verdict(
            IdentifierIssue(
                "uscc.length",
                f"a unified social credit code has 18 characters, got {len(code)}",
            )
        )
    if not _USCC_CHARS.issuperset(code):
        foreign = [i for i, char in enumerate(code) if char not in _USCC_VALUE]
        return verdict(
            IdentifierIssue(
                "uscc.charset",
                f"position(s) {_positions(foreign)} outside the GB 32100 alphabet "
                f"{USCC_ALPHABET} (I, O, S, V, Z are never used)",
            )
        )

    issues: list[IdentifierIssue] = []
    if not code[2:8].isdigit():  # the alphabet is ASCII, so digits are 0-9 here
        issues.append(
            IdentifierIssue(
                "uscc.admin_division",
                "positions 3-8 are not a 6-digit GB/T 2260 division code",
            )
        )
    org_expected = _org_check(code[8:16])
    org_ok = code[16] == org_expected
    if not org_ok:
        issues.append(
            IdentifierIssue(
                "uscc.org_code_check",
                "embedded organisation code (positions 9-17) fails its GB 11714 check: "
                f"position 17 is {code[16]!r}, expected {org_expected!r}",
            )
        )
    expected = _uscc_check(code[:17])
    if code[17] == expected:
        return verdict(*issues)
    if allow_pilot and not issues:
        return verdict(
            IdentifierIssue(
                "uscc.pilot_check_digit",
                f"check character is {code[17]!r}, GB 32100 gives {expected!r}; the embedded "
                "organisation code is valid, so this is tolerated as an early pilot code",
            ),
            pilot=True,
        )
    issues.append(
        IdentifierIssue(
            "uscc.check_digit",
            f"check character (position 18) is {code[17]!r}, GB 32100 gives {expected!r}",
        )
    )
    return verdict(*issues)


def _birth_date(digits: str) -> date | None:
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return None


def check_resident_id(raw: str, *, today: date | None = None) -> IdentifierCheck:
    """Check a GB 11643-1999 resident identity number; never raises.

    ``today`` (default: the local date) bounds the birth date. Messages never repeat the
    number or its birth date: both are personal data.
    """
    number = normalize_identifier(raw)

    def verdict(*issues: IdentifierIssue) -> IdentifierCheck:
        return IdentifierCheck(
            valid=not issues, normalized=number, kind="resident_id", issues=issues
        )

    if len(number) != _LENGTH:
        hint = " (15-digit first-generation numbers are not accepted)" if len(number) == 15 else ""
        return verdict(
            IdentifierIssue(
                "resident_id.length",
                f"a resident identity number has 18 characters, got {len(number)}{hint}",
            )
        )
    if not (number.isascii() and number[:17].isdigit() and number[17] in _CHECK_CHARS):
        foreign = [i for i, char in enumerate(number[:17]) if char not in _DIGIT_VALUE]
        if number[17] not in _CHECK_CHARS:
            foreign.append(17)
        return verdict(
            IdentifierIssue(
                "resident_id.charset",
                f"position(s) {_positions(foreign)} must be digits (only position 18 may be X)",
            )
        )

    issues: list[IdentifierIssue] = []
    born = _birth_date(number[6:14])
    if born is None:
        issues.append(
            IdentifierIssue(
                "resident_id.birth_date", "positions 7-14 are not a real date (YYYYMMDD)"
            )
        )
    elif born > (today or date.today()):
        issues.append(
            IdentifierIssue("resident_id.birth_date_future", "birth date is in the future")
        )
    if number[17] != _resident_check(number[:17]):
        issues.append(
            IdentifierIssue(
                "resident_id.check_digit",
                "check character (position 18) does not match the first 17 digits",
            )
        )
    return verdict(*issues)


def admin_division(uscc_or_id: str, kind: IdentifierKind | None = None) -> str:
    """The 6-digit division code of a valid identifier (USCC positions 3–8, ID 1–6).

    A tolerated pilot USCC counts as valid. Without ``kind`` the kind is inferred from which
    reading passes its checks, a pilot USCC reading being the last resort: all-digit USCCs
    exist, and about one resident ID number in eleven also reads as a pilot USCC. A string
    that passes both full checks (about one ID number in 330) is ambiguous. Raises
    ``ValueError`` when ambiguous or invalid; callers that know the kind pass it.
    """
    if kind == "uscc":
        candidates = [check_uscc(uscc_or_id)]
    elif kind == "resident_id":
        candidates = [check_resident_id(uscc_or_id)]
    else:
        candidates = [check_uscc(uscc_or_id, allow_pilot=False), check_resident_id(uscc_or_id)]
        if not any(result.valid for result in candidates):
            candidates = [check_uscc(uscc_or_id)]
    divisions = [result.division for result in candidates if result.division is not None]
    if not divisions:
        wanted = kind or "unified social credit code or resident identity number"
        raise ValueError(f"not a valid {wanted}")
    if len(divisions) > 1:
        raise ValueError(
            "valid both as a unified social credit code and as a resident ID; pass kind"
        )
    return divisions[0]
