"""Validation and normalisation of one submission: pure functions, no I/O, never raising.

A *submission* is the canonical form both channels produce: a mapping shaped like the
protobuf ``CreditRecord`` of ``record_intake.proto`` (``files.py`` maps CSV and JSON Lines
columns onto it, ``grpc_codec.py`` the protobuf message). :func:`validate_submission` answers
every input — whatever its types — with a :class:`ValidRecord` or an :class:`InvalidRecord`
listing *every* problem found, each with the field's dotted path, a stable code and a
readable message.

Rules (docs/design.md §4.1–§4.3, docs/intake-file-format.md):

* identifiers: the unified social credit code (GB 32100-2015 with its embedded GB 11714
  organisation code) and the resident ID number (GB 11643-1999) via
  :mod:`services.common.identifiers`; early pilot codes that are well formed but fail the
  check character are accepted with the warning ``LEGACY_PILOT_CODE`` and ``pilot_code``;
* required fields per category (see ``docs/intake-file-format.md``); exactly the details
  block of the category;
* dates: the decision date is not in the future, the report date is neither in the future
  nor before the decision date, validity and list terms do not end before they start;
* amounts: integral fen, not negative, a fine when and only when ``FINE`` is imposed;
* enumerations from :mod:`services.intake.validate.vocabulary`;
* natural persons: the resident ID number is replaced by the region pseudonym here, and any
  ID-number-shaped token in free text is masked (warning ``PERSONAL_DATA_MASKED``), so no
  raw number leaves the service. Messages never repeat an ID number.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from services.common.identifiers import (
    USCC_ALPHABET,
    IdentifierCheck,
    check_resident_id,
    check_uscc,
    normalize_identifier,
)
from services.common.logging import mask_resident_ids, might_hold_resident_id
from services.common.memo import BoundedMemo
from services.common.pseudonym import pseudonym
from services.intake.encode.publicity import bounded_publicity, penalty_publicity
from services.intake.validate import vocabulary as vocab

# --- results ------------------------------------------------------------------------------

# Stable reason codes (RejectedRecord.reasons[].code, UPPER_SNAKE_CASE). gRPC clients get the
# same codes in lower kebab case (record_intake.proto, FieldViolation.code).
REQUIRED: Final = "REQUIRED"
INVALID_TYPE: Final = "INVALID_TYPE"
INVALID_FORMAT: Final = "INVALID_FORMAT"
INVALID_CHARACTERS: Final = "INVALID_CHARACTERS"
TOO_LONG: Final = "TOO_LONG"
INVALID_VALUE: Final = "INVALID_VALUE"
UNKNOWN_CATEGORY: Final = "UNKNOWN_CATEGORY"
USCC_CHECKSUM: Final = "USCC_CHECKSUM"
ID_NUMBER_CHECKSUM: Final = "ID_NUMBER_CHECKSUM"
DATE_IN_FUTURE: Final = "DATE_IN_FUTURE"
DATE_OUT_OF_RANGE: Final = "DATE_OUT_OF_RANGE"
REPORT_BEFORE_DECISION: Final = "REPORT_BEFORE_DECISION"
DATE_ORDER: Final = "DATE_ORDER"
INVALID_AMOUNT: Final = "INVALID_AMOUNT"
INCONSISTENT: Final = "INCONSISTENT"
#: The submitting department's certificate may not submit for the record's department.
NOT_YOUR_DEPARTMENT: Final = "NOT_YOUR_DEPARTMENT"
DETAILS_MISMATCH: Final = "DETAILS_MISMATCH"
PERSONAL_DATA: Final = "PERSONAL_DATA"
UNPARSEABLE: Final = "UNPARSEABLE"
UNPROCESSABLE: Final = "UNPROCESSABLE"
# Warnings: the record is accepted.
LEGACY_PILOT_CODE: Final = "LEGACY_PILOT_CODE"
PERSONAL_DATA_MASKED: Final = "PERSONAL_DATA_MASKED"
IGNORED_FIELD: Final = "IGNORED_FIELD"

# Decisions older than this are not credit records any system still publishes: the longest
# publicity period is 3 years, and the unified social credit code only exists since 2015.
EARLIEST_DECISION: Final = date(2000, 1, 1)
# A fine larger than 10^12 yuan is a unit error (fen/yuan/万元), not a fine.
MAX_AMOUNT_FEN: Final = 10**14

SHORT_TEXT: Final = 200
LONG_TEXT: Final = 4000
ATTRIBUTE_LIMIT: Final = 32
ATTRIBUTE_VALUE_TEXT: Final = 1000

_ATTRIBUTE_KEY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_BAD_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_BAD_CHARACTERS_ONE_LINE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_ID_LENGTH: Final = 18
_PLAIN_YUAN = re.compile(r"^\s*([0-9]{1,15})(?:\.([0-9]{1,2}))?\s*$")
_LIST_SEPARATORS = re.compile(r"[;；,，、|]")
_CJK_DATE = re.compile(r"^(\d{4})\s*年\s*(\d{1,2})\s*月\s*(\d{1,2})\s*日$")
_DETAILS: Final = {
    "ADMIN_PENALTY": "penalty",
    "ADMIN_LICENSING": "licensing",
    "LIST_DECISION": "list_decision",
    "DISHONEST_JUDGMENT_DEBTOR": "court",
    "CREDIT_COMMITMENT": "commitment",
}


@dataclass(frozen=True, slots=True)
class Violation:
    """One problem (or warning): the field's dotted path, a stable code, a readable message."""

    field: str
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class RecordIdentity:
    """What can be read of a submission even when it is invalid (for rejections and quality).

    ``record_id`` is set only when department, category and decision number could be read.
    """

    department_code: str | None = None
    department_name: str | None = None
    category: str | None = None
    claimed_category: str | None = None
    decision_number: str | None = None
    decision_date: date | None = None
    record_id: str | None = None


# Not frozen: built per record (services/intake/__init__.py).
@dataclass(slots=True)
class ValidRecord:
    """An accepted submission, normalised to the Avro ``CreditRecord`` shape.

    ``content`` holds every field the submission decides (see
    :data:`~services.intake.encode.record_encoding.CONTENT_FIELDS`); the node adds version, report
    date, acceptance time, publicity start and source when it publishes. Whether the content
    duplicates or corrects a published version is no concern of validation: the content's
    hash is that of its wire encoding (:mod:`services.intake.encode.record_encoding`).
    """

    record_id: str
    subject_key: str
    category: str
    department_code: str
    department_name: str
    decision_number: str
    decision_date: date
    report_date: date
    content: dict[str, Any]
    warnings: tuple[Violation, ...] = ()


@dataclass(frozen=True, slots=True)
class InvalidRecord:
    """A refused submission: at least one reason, and whatever identity could be read."""

    reasons: tuple[Violation, ...]
    identity: RecordIdentity = field(default_factory=RecordIdentity)


Verdict = ValidRecord | InvalidRecord


@dataclass(frozen=True, slots=True)
class ValidationContext:
    """What validation depends on besides the submission.

    ``pseudonymise`` turns a *valid, normalised* resident ID number into the region
    pseudonym (services.common.pseudonym), e.g. ``lambda n: pseudonym(n, region_key)``.
    """

    city_code: str
    today: date
    pseudonymise: Callable[[str], str]


def pseudonymiser(region_key: bytes) -> Callable[[str], str]:
    """The ``pseudonymise`` of a context: the region pseudonym under ``region_key``."""

    def pseudonymise(resident_id: str) -> str:
        return pseudonym(resident_id, region_key)

    return pseudonymise


# --- identity -----------------------------------------------------------------------------


def decision_number_key(decision_number: str) -> str:
    """The decision number as record identity compares it: NFKC, no whitespace at all."""
    return "".join(unicodedata.normalize("NFKC", decision_number).split())


def record_id_for(city_code: str, department_code: str, category: str, decision_number: str) -> str:
    """``<city code>-<32 hex>``: SHA-256 over ``department|category|decision number``.

    The rule of ``CreditRecord.record_id``: the same for every version of one decision, so a
    resubmission is recognised whichever channel or file it arrives through.
    """
    return _record_id(city_code, department_code, category, decision_number_key(decision_number))


def _record_id(city_code: str, department_code: str, category: str, decision_key: str) -> str:
    material = f"{department_code}|{category}|{decision_key}"
    return f"{city_code}-{hashlib.sha256(material.encode('utf-8')).hexdigest()[:32]}"


def parse_day(raw: str) -> date | None:
    """A calendar date in the spellings departments' exports use, or None.

    ``2024-05-06``, ``2024/5/6``, ``2024.05.06``, ``20240506``, ``2024年5月6日``, and any of
    these followed by a midnight time (``2024-05-06 00:00:00``), which spreadsheet exports add.
    """
    # NFKC leaves every ASCII character as it is.
    text = (raw if raw.isascii() else unicodedata.normalize("NFKC", raw)).strip()
    if len(text) == 10 and text[4] == "-" and text[7] == "-":
        try:
            return date.fromisoformat(text)
        except ValueError:
            return None
    for separator in (" ", "T"):
        head, sep, tail = text.partition(separator)
        if sep and tail.strip() in ("00:00:00", "00:00", "00:00:00.000", "0:00:00"):
            text = head
            break
    try:
        if len(text) == 8 and text.isascii() and text.isdigit():
            return date(int(text[:4]), int(text[4:6]), int(text[6:]))
        for separator in ("-", "/", "."):
            parts = text.split(separator)
            if len(parts) == 3 and all(p.isascii() and p.isdigit() for p in parts):
                if len(parts[0]) != 4 or not 1 <= len(parts[1]) <= 2 or not 1 <= len(parts[2]) <= 2:
                    return None
                return date(int(parts[0]), int(parts[1]), int(parts[2]))
        match = _CJK_DATE.match(text)
        if match:
            return date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError:
        return None
    return None


def _plain_text(value: object) -> str | None:
    if isinstance(value, str):
        text = value.strip()
        return text or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def identify(submission: object, city_code: str) -> RecordIdentity:
    """Read department, category, decision number and date leniently; never raises."""
    if not isinstance(submission, Mapping):
        return RecordIdentity()
    department_code: str | None = None
    raw_department = _plain_text(submission.get("department_code"))
    if raw_department is not None:
        normalised = normalize_identifier(raw_department)
        if len(normalised) == 18 and all(c in USCC_ALPHABET for c in normalised):
            department_code = normalised
    raw_category = _plain_text(submission.get("category"))
    category = vocab.CATEGORY.get(vocab.spelling_key(raw_category)) if raw_category else None
    decision_number = _plain_text(submission.get("decision_number"))
    raw_date = _plain_text(submission.get("decision_date"))
    decision_date = parse_day(raw_date) if raw_date else None
    record_id = None
    if department_code and category and decision_number and decision_number_key(decision_number):
        record_id = record_id_for(city_code, department_code, category, decision_number)
    return RecordIdentity(
        department_code=department_code,
        department_name=_plain_text(submission.get("department_name")),
        category=category,
        claimed_category=raw_category,
        decision_number=decision_number,
        decision_date=decision_date,
        record_id=record_id,
    )


# --- the validator ------------------------------------------------------------------------


#: Text values read before (exact ``str``) → their stripped text, for those that pass every
#: check of :meth:`_Form.text` but the length limit whatever the flags: not blank, printable
#: (so free of control characters, line breaks and surrogates) and holding no
#: ID-number-shaped token (so nothing to mask). Bulk files repeat most values row after row
#: (department, vocabulary, dates, legal basis, names), and checking them again is a large
#: share of validating a row. Bounded: emptied when full, so unique values cannot grow it.
_CLEAN_TEXT: BoundedMemo[str, str] = BoundedMemo(8192)
#: Date spellings read before → the date, for those :meth:`_Form.day` accepts.
_DAYS: BoundedMemo[str, date] = BoundedMemo(4096)
#: Penalty-type lists (text) read before without a problem → their symbols, in order.
_PENALTY_TYPES: BoundedMemo[str, tuple[str, ...]] = BoundedMemo(1024)
#: Longer lists (types repeated) are checked each time rather than kept.
_REMEMBERED_PENALTY_CHARS = 200


class _Form:
    """Reads fields of one submission, collecting every problem instead of stopping."""

    def __init__(self, ctx: ValidationContext) -> None:
        self.ctx = ctx
        self.errors: list[Violation] = []
        self.warnings: list[Violation] = []

    def fail(self, path: str, code: str, message: str) -> None:
        self.errors.append(Violation(path, code, message))

    def warn(self, path: str, code: str, message: str) -> None:
        self.warnings.append(Violation(path, code, message))

    def node(self, parent: Mapping[str, Any], name: str, path: str) -> Mapping[str, Any] | None:
        value = parent.get(name)
        if value is None:
            return None
        if type(value) is not dict and not isinstance(value, Mapping):
            self.fail(path, INVALID_TYPE, f"{path} must be an object")
            return None
        return value

    def text(
        self,
        node: Mapping[str, Any],
        name: str,
        path: str,
        *,
        required: bool = True,
        limit: int = SHORT_TEXT,
        multiline: bool = False,
        mask_ids: bool = True,
    ) -> str | None:
        value = node.get(name)
        if type(value) is str:  # the common case first: exact type checks are cheap
            known = _CLEAN_TEXT.get(value)
            if known is not None and len(known) <= limit:
                return known  # passes every check below whatever the flags: see _CLEAN_TEXT
            text = value.strip()
        elif value is None:
            text = ""
        elif isinstance(value, str):
            text = str(value).strip()
        elif isinstance(value, int) and not isinstance(value, bool):
            text = str(value)
        else:
            self.fail(path, INVALID_TYPE, f"{path} must be text")
            return None
        if not text:
            if required:
                self.fail(path, REQUIRED, f"{path} is required")
            return None
        # isprintable() is a C-speed pre-check; only text it refuses (controls, line breaks,
        # surrogates, some format characters) needs the precise pattern.
        if not text.isprintable():
            pattern = _BAD_CHARACTERS if multiline else _BAD_CHARACTERS_ONE_LINE
            if pattern.search(text):
                self.fail(
                    path, INVALID_CHARACTERS, f"{path} contains control or invalid characters"
                )
                return None
        if len(text) > limit:
            self.fail(path, TOO_LONG, f"{path} has {len(text)} characters, at most {limit}")
            return None
        if len(text) >= _ID_LENGTH and might_hold_resident_id(text):
            if mask_ids:
                masked = mask_resident_ids(text)
                if masked != text:
                    self.warn(
                        path,
                        PERSONAL_DATA_MASKED,
                        f"{path} contained an ID-number-shaped value; it was masked",
                    )
                    text = masked
        elif type(value) is str and len(value) <= limit and text.isprintable():
            # Not a value padded beyond the field's limit: the key would pin its megabytes.
            _CLEAN_TEXT.remember(value, text)
        return text

    def choice(
        self,
        node: Mapping[str, Any],
        name: str,
        path: str,
        table: Mapping[str, str],
        *,
        required: bool = True,
        default: str | None = None,
        code: str = INVALID_VALUE,
    ) -> str | None:
        raw = self.text(node, name, path, required=required and default is None, mask_ids=False)
        if raw is None:
            return default
        symbol = table.get(raw) or table.get(vocab.spelling_key(raw))
        if symbol is None:
            known = ", ".join(sorted({s for s in table.values()}))
            self.fail(path, code, f"{path} is not one of {known}")
        return symbol

    def day(
        self, node: Mapping[str, Any], name: str, path: str, *, required: bool = True
    ) -> date | None:
        raw = self.text(node, name, path, required=required, mask_ids=False)
        if raw is None:
            return None
        known = _DAYS.get(raw)
        if known is not None:
            return known
        if raw in vocab.OPEN_ENDED:
            self.fail(path, INVALID_FORMAT, f"{path} must be a date, not an open end")
            return None
        day = parse_day(raw)
        if day is None:
            self.fail(path, INVALID_FORMAT, f"{path} is not a date (YYYY-MM-DD)")
            return None
        if day < EARLIEST_DECISION:
            self.fail(path, DATE_OUT_OF_RANGE, f"{path} is before {EARLIEST_DECISION.isoformat()}")
            return None
        _DAYS.remember(raw, day)
        return day

    def past_day(
        self, node: Mapping[str, Any], name: str, path: str, *, required: bool = True
    ) -> date | None:
        day = self.day(node, name, path, required=required)
        if day is not None and day > self.ctx.today:
            self.fail(
                path,
                DATE_IN_FUTURE,
                f"{path} {day.isoformat()} is after today ({self.ctx.today.isoformat()})",
            )
            return None
        return day

    def open_end(self, node: Mapping[str, Any], name: str, path: str) -> date | None:
        raw = node.get(name)
        if isinstance(raw, str) and raw.strip() in vocab.OPEN_ENDED:
            return None
        return self.day(node, name, path, required=False)

    def boolean(self, node: Mapping[str, Any], name: str, path: str) -> bool | None:
        value = node.get(name)
        if value is None or value == "":
            return None
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            key = vocab.spelling_key(value)
            if key in ("TRUE", "1", "YES", "Y", "是"):
                return True
            if key in ("FALSE", "0", "NO", "N", "否"):
                return False
        self.fail(path, INVALID_TYPE, f"{path} must be true or false")
        return None

    def amount_fen(self, node: Mapping[str, Any], stem: str, path: str) -> int | None:
        """An amount given as ``<stem>_fen``, ``<stem>_yuan`` or ``<stem>_wan_yuan`` (万元, the
        unit of the national public-disclosure data standard), as integral fen."""
        given = [
            (suffix, scale)
            for name, suffix, scale in _amount_units(stem)
            if node.get(name) not in (None, "")
        ]
        if not given:
            return None
        if len(given) > 1:
            names = ", ".join(f"{path}.{stem}{s}" for s, _ in given)
            self.fail(f"{path}.{stem}{given[0][0]}", INCONSISTENT, f"give only one of {names}")
            return None
        suffix, scale = given[0]
        value = node[stem + suffix]
        if type(value) is str and scale == 100:
            match = _PLAIN_YUAN.match(value)
            if match is not None:  # the common "5000.00": integer arithmetic, no Decimal
                plain = int(match.group(1)) * 100 + int((match.group(2) or "").ljust(2, "0"))
                if plain <= MAX_AMOUNT_FEN:
                    return plain
        where = f"{path}.{stem}{suffix}"
        amount: Decimal
        try:
            if isinstance(value, bool):
                raise TypeError
            if isinstance(value, int):
                amount = Decimal(value)
            elif isinstance(value, float) and scale > 1:
                amount = Decimal(repr(value))
            elif isinstance(value, str):
                text = unicodedata.normalize("NFKC", value).strip()
                if scale == 1 and not (text.isascii() and text.isdigit()):
                    raise InvalidOperation
                amount = Decimal(text)
            else:
                raise TypeError
            if not amount.is_finite():
                raise InvalidOperation
            fen = amount * scale
            if fen != fen.to_integral_value():
                self.fail(where, INVALID_AMOUNT, f"{where} is not a whole number of fen")
                return None
        except TypeError:
            self.fail(where, INVALID_TYPE, f"{where} must be a number")
            return None
        except (InvalidOperation, ValueError, ArithmeticError):
            self.fail(where, INVALID_AMOUNT, f"{where} is not a decimal amount")
            return None
        if fen < 0:
            self.fail(where, INVALID_AMOUNT, f"{where} is negative")
            return None
        if fen > MAX_AMOUNT_FEN:
            self.fail(where, INVALID_AMOUNT, f"{where} exceeds {MAX_AMOUNT_FEN // 100} yuan")
            return None
        return int(fen)


@functools.lru_cache(maxsize=4096)
def _cached_uscc_check(raw: str) -> IdentifierCheck:
    return check_uscc(raw)


def _organisation_code(
    form: _Form, node: Mapping[str, Any], name: str, path: str, *, cached: bool = False
) -> str | None:
    raw = form.text(node, name, path, mask_ids=False)
    if raw is None:
        return None
    check = _cached_uscc_check(raw) if cached else check_uscc(raw)
    if not check.valid:
        checksum = {"uscc.org_code_check", "uscc.check_digit"} & set(check.issue_codes)
        for issue in check.issues:
            form.fail(path, USCC_CHECKSUM if checksum else INVALID_FORMAT, issue.message)
        return None
    if check.pilot_tolerated:
        form.warn(path, LEGACY_PILOT_CODE, check.issues[0].message)
    return check.normalized


def _resident_key(form: _Form, node: Mapping[str, Any], name: str, path: str) -> str | None:
    """``N:<pseudonym>`` of the resident ID number at ``name``; the number goes no further."""
    value = node.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        form.fail(path, REQUIRED, f"{path} is required")
        return None
    if not isinstance(value, str):
        form.fail(path, INVALID_TYPE, f"{path} must be text")
        return None
    check = check_resident_id(value, today=form.ctx.today)
    if not check.valid:
        for issue in check.issues:
            code = ID_NUMBER_CHECKSUM if issue.code == "resident_id.check_digit" else INVALID_FORMAT
            form.fail(path, code, issue.message)
        return None
    return "N:" + form.ctx.pseudonymise(check.normalized)


def _subject(form: _Form, sub: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    node = form.node(sub, "subject", "subject")
    if node is None:
        if "subject" not in sub or sub.get("subject") is None:
            form.fail("subject", REQUIRED, "subject is required")
        return None
    subject_type = form.choice(node, "subject_type", "subject.subject_type", vocab.SUBJECT_TYPE)
    name = form.text(node, "name", "subject.name")
    representative = form.text(
        node, "legal_representative", "subject.legal_representative", required=False
    )
    representative_key = None
    if node.get("legal_representative_id_number") not in (None, ""):
        representative_key = _resident_key(
            form, node, "legal_representative_id_number", "subject.legal_representative_id_number"
        )
    uscc: str | None = None
    pilot = False
    subject_key: str | None = None
    if subject_type == "ORGANISATION":
        before = len(form.warnings)
        uscc = _organisation_code(form, node, "uscc", "subject.uscc")
        pilot = any(w.code == LEGACY_PILOT_CODE for w in form.warnings[before:])
        subject_key = f"L:{uscc}" if uscc else None
        if node.get("resident_id_number") not in (None, ""):
            form.warn(
                "subject.resident_id_number",
                IGNORED_FIELD,
                "an organisation is identified by its code; the ID number was discarded",
            )
    elif subject_type == "NATURAL_PERSON":
        subject_key = _resident_key(form, node, "resident_id_number", "subject.resident_id_number")
        if node.get("uscc") not in (None, ""):
            form.fail(
                "subject.uscc",
                INCONSISTENT,
                "a natural person has no unified social credit code; "
                "report an individual business as ORGANISATION",
            )
        if representative is not None or representative_key is not None:
            form.warn(
                "subject.legal_representative",
                IGNORED_FIELD,
                "a natural person has no legal representative; discarded",
            )
            representative = representative_key = None
    if subject_type is None or name is None or subject_key is None:
        return None
    return subject_key, {
        "subject_type": subject_type,
        "subject_key": subject_key,
        "name": name,
        "uscc": uscc,
        "pilot_code": pilot,
        "legal_representative": representative,
        "legal_representative_key": representative_key,
    }


def _penalty_types(form: _Form, node: Mapping[str, Any], path: str) -> list[str]:
    raw = node.get("penalty_types")
    if type(raw) is str:
        known = _PENALTY_TYPES.get(raw)
        if known is not None:
            return list(known)
    errors = len(form.errors)
    items: list[object]
    if raw is None or raw == "" or raw == []:
        form.fail(path, REQUIRED, f"{path} needs at least one penalty type")
        return []
    if isinstance(raw, str):
        items = [p for p in _LIST_SEPARATORS.split(raw) if p.strip()]
    elif isinstance(raw, list | tuple):
        items = list(raw)
    else:
        form.fail(path, INVALID_TYPE, f"{path} must be a list of penalty types")
        return []
    types: list[str] = []
    for index, item in enumerate(items):
        if not isinstance(item, str):
            where = f"{path}[{index}]"
            form.fail(where, INVALID_TYPE, f"{where} must be text")
            continue
        symbol = vocab.PENALTY_TYPE.get(vocab.spelling_key(item))
        if symbol is None:
            where = f"{path}[{index}]"
            form.fail(where, INVALID_VALUE, f"{where} is not a penalty type of art. 9")
        elif symbol not in types:
            types.append(symbol)
    if not types and not form.errors:
        form.fail(path, REQUIRED, f"{path} needs at least one penalty type")
    elif (
        types
        and type(raw) is str
        and len(form.errors) == errors
        and len(raw) <= _REMEMBERED_PENALTY_CHARS  # a kept key is kept in full
    ):
        _PENALTY_TYPES.remember(raw, tuple(types))
    return types


def _penalty(form: _Form, node: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    path = "penalty"
    domain = form.choice(node, "domain", f"{path}.domain", vocab.DOMAIN)
    types = _penalty_types(form, node, f"{path}.penalty_types")
    fine = form.amount_fen(node, "fine_amount", path)
    confiscated = form.amount_fen(node, "confiscated_amount", path)
    if "FINE" in types and fine is None and not _amount_given(node, "fine_amount"):
        form.fail(f"{path}.fine_amount_fen", REQUIRED, "a FINE needs its amount")
    if fine == 0 and "FINE" in types:
        form.fail(f"{path}.fine_amount_fen", INVALID_AMOUNT, "a FINE of 0 is no fine")
    if fine is not None and types and "FINE" not in types:
        form.fail(f"{path}.fine_amount_fen", INCONSISTENT, "a fine amount without FINE imposed")
    if (
        confiscated is not None
        and types
        and not ({"CONFISCATION_OF_ILLEGAL_GAINS", "CONFISCATION_OF_ILLEGAL_PROPERTY"} & set(types))
    ):
        form.fail(
            f"{path}.confiscated_amount_fen",
            INCONSISTENT,
            "a confiscated amount without a confiscation imposed",
        )
    violation = form.text(node, "violation", f"{path}.violation", limit=LONG_TEXT, multiline=True)
    basis = form.text(node, "legal_basis", f"{path}.legal_basis", limit=LONG_TEXT, multiline=True)
    severity = form.choice(node, "severity", f"{path}.severity", vocab.SEVERITY)
    details = {
        "domain": domain,
        "penalty_types": types,
        "fine_amount_fen": fine,
        "confiscated_amount_fen": confiscated,
        "violation": violation,
        "legal_basis": basis,
    }
    return details, severity


@functools.cache
def _amount_units(stem: str) -> tuple[tuple[str, str, int], ...]:
    """(field, suffix, fen per unit) of the ways to give the amount ``stem``."""
    units = (("_fen", 1), ("_yuan", 100), ("_wan_yuan", 1_000_000))
    return tuple((stem + suffix, suffix, scale) for suffix, scale in units)


def _amount_given(node: Mapping[str, Any], stem: str) -> bool:
    return any(node.get(name) not in (None, "") for name, _, _ in _amount_units(stem))


def _licensing(form: _Form, node: Mapping[str, Any]) -> dict[str, Any]:
    path = "licensing"
    valid_from = form.day(node, "valid_from", f"{path}.valid_from")
    valid_to = form.open_end(node, "valid_to", f"{path}.valid_to")
    if valid_from and valid_to and valid_to < valid_from:
        form.fail(f"{path}.valid_to", DATE_ORDER, f"{path}.valid_to is before valid_from")
    return {
        "licence_type": form.choice(
            node, "licence_type", f"{path}.licence_type", vocab.LICENCE_TYPE, default="OTHER"
        ),
        "licence_name": form.text(node, "licence_name", f"{path}.licence_name"),
        "licence_number": form.text(
            node, "licence_number", f"{path}.licence_number", required=False
        ),
        "licensed_matter": form.text(
            node, "licensed_matter", f"{path}.licensed_matter", limit=LONG_TEXT, multiline=True
        ),
        "valid_from": valid_from,
        "valid_to": valid_to,
    }


def _list_decision(form: _Form, node: Mapping[str, Any]) -> dict[str, Any]:
    path = "list_decision"
    action = form.choice(node, "action", f"{path}.action", vocab.LIST_ACTION)
    removal = form.choice(
        node, "removal_reason", f"{path}.removal_reason", vocab.REMOVAL_REASON, required=False
    )
    upheld = form.boolean(node, "objection_upheld", f"{path}.objection_upheld")
    designation = form.text(
        node,
        "designation_decision_number",
        f"{path}.designation_decision_number",
        required=action not in (None, "DESIGNATE"),
        mask_ids=False,
    )
    if action == "REMOVE" and removal is None and not node.get("removal_reason"):
        form.fail(f"{path}.removal_reason", REQUIRED, "a REMOVE needs its removal_reason")
    if action != "REMOVE" and removal is not None:
        form.fail(f"{path}.removal_reason", INCONSISTENT, "removal_reason is only for REMOVE")
    if action == "OBJECTION_DECIDED" and upheld is None:
        form.fail(f"{path}.objection_upheld", REQUIRED, "an OBJECTION_DECIDED needs its outcome")
    effective = form.day(node, "effective_from", f"{path}.effective_from")
    expires = form.open_end(node, "expires_at", f"{path}.expires_at")
    if effective and expires and expires < effective:
        form.fail(f"{path}.expires_at", DATE_ORDER, f"{path}.expires_at is before effective_from")
    return {
        "list_type": form.choice(node, "list_type", f"{path}.list_type", vocab.LIST_TYPE),
        "list_name": form.text(node, "list_name", f"{path}.list_name"),
        "action": action,
        "removal_reason": removal,
        "objection_upheld": upheld if action == "OBJECTION_DECIDED" else None,
        "designation_decision_number": designation if action != "DESIGNATE" else None,
        "legal_basis": form.text(
            node, "legal_basis", f"{path}.legal_basis", limit=LONG_TEXT, multiline=True
        ),
        "effective_from": effective,
        "expires_at": expires,
    }


def _court(form: _Form, node: Mapping[str, Any]) -> dict[str, Any]:
    path = "court"
    filed = form.past_day(node, "filed_on", f"{path}.filed_on")
    published = form.past_day(node, "published_on", f"{path}.published_on")
    if filed and published and published < filed:
        form.fail(f"{path}.published_on", DATE_ORDER, f"{path}.published_on is before filed_on")
    government = form.boolean(
        node, "debtor_is_government_body", f"{path}.debtor_is_government_body"
    )
    return {
        "court_name": form.text(node, "court_name", f"{path}.court_name"),
        "case_number": form.text(node, "case_number", f"{path}.case_number", mask_ids=False),
        "enforcement_basis": form.text(
            node, "enforcement_basis", f"{path}.enforcement_basis", required=False, mask_ids=False
        ),
        "obligation": form.text(
            node, "obligation", f"{path}.obligation", limit=LONG_TEXT, multiline=True
        ),
        "performance": form.choice(node, "performance", f"{path}.performance", vocab.PERFORMANCE),
        "dishonest_conduct": form.text(
            node, "dishonest_conduct", f"{path}.dishonest_conduct", limit=LONG_TEXT, multiline=True
        ),
        "filed_on": filed,
        "published_on": published,
        "debtor_is_government_body": bool(government),
    }


def _commitment(form: _Form, node: Mapping[str, Any]) -> dict[str, Any]:
    path = "commitment"
    return {
        "commitment_type": form.choice(
            node,
            "commitment_type",
            f"{path}.commitment_type",
            vocab.COMMITMENT_TYPE,
            default="OTHER",
        ),
        "matter": form.text(node, "matter", f"{path}.matter", limit=LONG_TEXT, multiline=True),
        "content": form.text(node, "content", f"{path}.content", limit=LONG_TEXT, multiline=True),
        "committed_on": form.past_day(node, "committed_on", f"{path}.committed_on"),
        "fulfilment": form.choice(
            node, "fulfilment", f"{path}.fulfilment", vocab.FULFILMENT, default="PENDING"
        ),
    }


def _attributes(form: _Form, sub: Mapping[str, Any]) -> dict[str, str]:
    raw = sub.get("attributes")
    if raw is None or raw == {}:
        return {}
    if not isinstance(raw, Mapping):
        form.fail("attributes", INVALID_TYPE, "attributes must map names to text")
        return {}
    if len(raw) > ATTRIBUTE_LIMIT:
        form.fail("attributes", TOO_LONG, f"at most {ATTRIBUTE_LIMIT} attributes")
        return {}
    attributes: dict[str, str] = {}
    for key in raw:
        if not isinstance(key, str) or not _ATTRIBUTE_KEY.match(key):
            form.fail("attributes", INVALID_FORMAT, "attribute names are lower_snake_case")
            continue
        where = f"attributes.{key}"
        text = form.text(
            raw, key, where, required=False, limit=ATTRIBUTE_VALUE_TEXT, mask_ids=False
        )
        if text is None:
            continue
        if mask_resident_ids(text) != text:
            form.fail(
                where,
                PERSONAL_DATA,
                f"{where} looks like an ID number; attributes never hold personal data",
            )
            continue
        attributes[key] = text
    return attributes


def validate_submission(submission: object, ctx: ValidationContext) -> Verdict:
    """The verdict on one submission. Never raises: every input gets an answer."""
    try:
        return _validate(submission, ctx)
    except (
        Exception
    ):  # a bug here must not take a whole batch down; fuzz tests assert it never happens
        return InvalidRecord(
            (
                Violation(
                    "",
                    UNPROCESSABLE,
                    "the record could not be processed; report this to the node operator",
                ),
            ),
            _safe_identity(submission, ctx.city_code),
        )


def _safe_identity(submission: object, city_code: str) -> RecordIdentity:
    try:
        return identify(submission, city_code)
    except Exception:
        return RecordIdentity()


def _validate(submission: object, ctx: ValidationContext) -> Verdict:
    if not isinstance(submission, Mapping):
        return InvalidRecord((Violation("", INVALID_TYPE, "a record must be an object"),))
    form = _Form(ctx)

    category = form.choice(
        submission, "category", "category", vocab.CATEGORY, code=UNKNOWN_CATEGORY
    )
    department_code = _organisation_code(
        form, submission, "department_code", "department_code", cached=True
    )
    department_name = form.text(submission, "department_name", "department_name")
    decision_number = form.text(
        submission, "decision_number", "decision_number", limit=128, mask_ids=False
    )
    decision_key = decision_number_key(decision_number) if decision_number is not None else ""
    if decision_number is not None and not decision_key:
        form.fail("decision_number", REQUIRED, "decision_number is required")
    decision_date = form.past_day(submission, "decision_date", "decision_date")
    report_date = form.past_day(submission, "report_date", "report_date", required=False)
    if report_date is None and not _given(submission, "report_date"):
        report_date = ctx.today
    if decision_date and report_date and report_date < decision_date:
        form.fail(
            "report_date",
            REPORT_BEFORE_DECISION,
            f"report_date {report_date.isoformat()} is before decision_date "
            f"{decision_date.isoformat()}",
        )
    subject = _subject(form, submission)
    attributes = _attributes(form, submission)

    details: dict[str, Any] = dict.fromkeys(_DETAILS.values())
    severity: str | None = None
    if category is not None:
        wanted = _DETAILS[category]
        for name in _DETAILS.values():
            if name != wanted and submission.get(name) not in (None, {}):
                form.fail(name, DETAILS_MISMATCH, f"{name} does not belong to a {category} record")
        node = form.node(submission, wanted, wanted)
        if submission.get(wanted) is None:
            form.fail(wanted, REQUIRED, f"a {category} record needs its {wanted} details")
        elif node is None:
            pass  # not an object: node() reported it
        elif category == "ADMIN_PENALTY":
            details["penalty"], severity = _penalty(form, node)
        elif category == "ADMIN_LICENSING":
            details["licensing"] = _licensing(form, node)
        elif category == "LIST_DECISION":
            details["list_decision"] = _list_decision(form, node)
        elif category == "DISHONEST_JUDGMENT_DEBTOR":
            details["court"] = _court(form, node)
        else:
            details["commitment"] = _commitment(form, node)

    if form.errors:
        return InvalidRecord(tuple(form.errors), identify(submission, ctx.city_code))
    if not (
        category
        and department_code
        and department_name
        and decision_number
        and decision_date
        and report_date
        and subject
    ):
        # Unreachable when every reader above records an error for what it cannot return.
        raise RuntimeError("validation passed without a required value")

    if category == "ADMIN_PENALTY":
        window = penalty_publicity(
            decision_date, report_date, "SERIOUS" if severity == "SERIOUS" else "GENERAL"
        )
    elif category == "ADMIN_LICENSING":
        window = bounded_publicity(report_date, details["licensing"]["valid_to"])
    elif category == "LIST_DECISION":
        window = bounded_publicity(report_date, details["list_decision"]["expires_at"])
    else:
        window = bounded_publicity(report_date, None)
    subject_key, subject_avro = subject
    content: dict[str, Any] = {
        "category": category,
        "department_code": department_code,
        "department_name": department_name,
        "subject": subject_avro,
        "decision_number": decision_number,
        "decision_date": decision_date,
        "publicity": window.as_avro(),
        **details,
        "attributes": attributes,
    }
    return ValidRecord(
        record_id=_record_id(ctx.city_code, department_code, category, decision_key),
        subject_key=subject_key,
        category=category,
        department_code=department_code,
        department_name=department_name,
        decision_number=decision_number,
        decision_date=decision_date,
        report_date=report_date,
        content=content,
        warnings=tuple(form.warnings),
    )


def _given(node: Mapping[str, Any], name: str) -> bool:
    value = node.get(name)
    return value is not None and not (isinstance(value, str) and not value.strip())
