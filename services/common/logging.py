"""structlog JSON logging: one event per line on stdout, resident ID numbers masked.

Raw resident identity numbers (GB 11643) must never appear in a log line (docs/design.md §4.8),
so a processor masks every resident-ID-shaped number in every string value, including nested
values and rendered exceptions, before rendering. The same masking cleans free text that
intake accepts (services/intake/validate).

What counts as an ID number in free text: 17 digits and a check character (a digit, or
``X``/``x``/``Ｘ``/``ｘ``/``×``), in ASCII, full-width or any other decimal digits, with
or without separators between them (spaces, full-width spaces, hyphens and dashes,
zero-width characters; up to three in a row), and whatever is glued in front
(``ID320505199003071234``, ``身份证号320505…``). Left alone: a number that runs on into
more digits (19 or more digits in a row: record ids, timestamps) and 18 digits inside a long
hexadecimal token (hashes, pseudonyms, trace ids). 15-digit first-generation numbers are not
accepted anywhere (services/common/identifiers.py) and are not masked: 15 digits are as often
a business registration number.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

_DIGIT = r"\d"  # every Unicode decimal digit: ASCII, full-width ３, mathematical 𝟑…
_CHECK_LETTERS = "XxＸｘ×"
# Spaces (also no-break and full-width), hyphens, dashes and minus signs, the soft hyphen,
# zero-width characters and direction marks; never a line break.
_SEPARATOR = (
    "[\t \\-\u00a0\u00ad\u1680\u2000-\u2015\u202f\u205f\u2060\u2212\u3000\ufe58\ufe63\ufeff\uff0d]"
)
# A run of 17 or more digits, separators allowed between them, perhaps ending in a check letter.
# Runs shorter than 18 characters cannot hold an ID number and are not matched at all.
_CANDIDATE = re.compile(
    rf"(?<!{_DIGIT}){_DIGIT}(?:{_SEPARATOR}{{0,3}}{_DIGIT}){{16,}}"
    rf"(?:{_SEPARATOR}{{0,3}}[{_CHECK_LETTERS}])?"
)
# GB 11643 positions 7-14, the birth date YYYYMMDD, as far as a shape can tell.
_BIRTH_DATE = re.compile(r"(?:18|19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])")
_HEX = frozenset("0123456789abcdefABCDEF")
_ID_CHARS = 18
# A hash, pseudonym or trace id is at least this long; 18 digits inside one are not an ID.
_HEX_TOKEN = 32
_HIDDEN = "*" * 12


def might_hold_resident_id(text: str) -> bool:
    """A quick test: ``False`` means :func:`mask_resident_ids` leaves ``text`` as it is."""
    return _CANDIDATE.search(text) is not None


def _groups(run: str, start: int) -> list[tuple[int, int]]:
    """``(start, end)``, in the whole text, of each group of digits (and check letter)
    between separators."""
    groups: list[tuple[int, int]] = []
    begin: int | None = None
    for offset, char in enumerate(run):
        if char.isdecimal() or char in _CHECK_LETTERS:
            if begin is None:
                begin = offset
        elif begin is not None:
            groups.append((start + begin, start + offset))
            begin = None
    if begin is not None:
        groups.append((start + begin, start + len(run)))
    return groups


def _in_hex_token(text: str, begin: int, end: int) -> bool:
    while begin > 0 and text[begin - 1] in _HEX:
        begin -= 1
    while end < len(text) and text[end] in _HEX:
        end += 1
    return end - begin >= _HEX_TOKEN


def _digits(text: str) -> str:
    return "".join(str(int(c)) if c.isdecimal() else "X" for c in text)


def _id_spans(text: str, run_start: int, run: str) -> list[tuple[int, int]]:
    """Where the run of digits at ``run_start`` holds an ID number: each stretch of whole
    groups with 18 characters in all.

    One group of 18 is an ID number unless it sits inside a long hexadecimal token. A
    stretch of several groups is one only if positions 7-14 can be a birth date: the
    separators could split other numbers (dates, amounts) as well.
    """
    groups = _groups(run, run_start)
    spans: list[tuple[int, int]] = []
    for first in range(len(groups)):
        length, last = 0, first
        for last in range(first, len(groups)):
            length += groups[last][1] - groups[last][0]
            if length >= _ID_CHARS:
                break
        begin, end = groups[first][0], groups[last][1]
        if length == _ID_CHARS + 1 and text[end - 1] in _CHECK_LETTERS:
            end -= 1  # 18 digits and a letter X after them
        elif length != _ID_CHARS:
            continue
        if first == last:
            if text[end - 1] in _HEX and _in_hex_token(text, begin, end):
                continue
        elif not _BIRTH_DATE.fullmatch(
            "".join(_digits(text[b:e]) for b, e in groups[first : last + 1])[6:14]
        ):
            continue
        spans.append((begin, end))
    return spans


def mask_resident_ids(text: str) -> str:
    """Keep the 6-digit division code and hide the rest of every resident ID number."""
    spans: list[tuple[int, int]] = []
    for candidate in _CANDIDATE.finditer(text):
        for begin, end in _id_spans(text, candidate.start(), candidate.group()):
            if spans and begin < spans[-1][1]:  # overlapping stretches are masked as one
                spans[-1] = (spans[-1][0], end)
            else:
                spans.append((begin, end))
    if not spans:
        return text
    pieces: list[str] = []
    done = 0
    for begin, end in spans:
        division = [str(int(c)) for c in text[begin:end] if c.isdecimal()][:6]
        pieces += (text[done:begin], "".join(division), _HIDDEN)
        done = end
    pieces.append(text[done:])
    return "".join(pieces)


def _mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return mask_resident_ids(value)
    if isinstance(value, Mapping):
        return {k: _mask_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_value(v) for v in value]
    return value


def mask_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: masks ID numbers everywhere in the event, after exceptions render."""
    for key, value in list(event_dict.items()):
        event_dict[key] = _mask_value(value)
    return event_dict


def configure_logging(*, city: str, service: str, level: str = "info") -> None:
    """JSON lines on stdout with ``city`` and ``service`` bound on every event."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    # Libraries (aiokafka, faust, grpc) log through stdlib logging; route them through the
    # same masking renderer so no raw ID number leaks via a library message.
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.dict_tracebacks,
            mask_processor,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.dict_tracebacks,
                mask_processor,
                structlog.processors.JSONRenderer(ensure_ascii=False),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO))
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(city=city, service=service)


def get_logger(**bound: Any) -> Any:
    """A structlog logger with extra bound context (``subject_key``, ``ce_id``…).

    Lazy: a module-level logger made before :func:`configure_logging` still renders JSON.
    """
    return structlog.get_logger(**bound)
