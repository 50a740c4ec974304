"""Bulk files of 双公示 records: CSV and JSON Lines, UTF-8 or GB18030, read line by line.

The column set is documented in ``docs/intake-file-format.md``; this module turns each data
line into a *submission* (the canonical nested form
:mod:`services.intake.validate.validation` reads) or, when a line cannot be read at all,
into an ``UNPARSEABLE`` problem. Nothing is skipped silently:
every non-blank line after the CSV header is one :class:`FileRow`.

Encoding is decided per physical line: UTF-8 (strict) first, then GB18030 (strict) — so a
file concatenated from a UTF-8 export and a GB18030 export reads correctly — and a line that
is neither is rejected with its raw bytes. A UTF-8 or GB18030 byte-order mark is dropped.

Each row keeps the bytes it came from as the rejection payload (``RejectedRecord.payload``):
for CSV the header line plus the row's physical lines, so the payload reads on its own
(``text/csv; header=present``, RFC 4180 §3). Resident ID numbers are masked in the payload
(``320505************``) — in the ID columns whatever their shape, elsewhere wherever an
ID-number-shaped token appears — because a raw number must never reach a topic.

This is intake's one CSV reader, for a whole stream and for the chunks a bulk import cuts
(:mod:`services.intake.prepare`, in worker processes): a header is read once
(:func:`csv_header`, :class:`CsvHeader`); :func:`read_chunk` reads a chunk's rows, a plain
UTF-8 block in one pass (:func:`read_csv_block`) and anything else line by line
(:func:`read_csv`); :func:`record_runs` finds where a file's records end so it can be cut
into chunks that read exactly as the whole file does.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import operator
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import compress
from pathlib import Path
from typing import Any, BinaryIO, Final, Literal

from services.common.logging import mask_resident_ids

FileFormat = Literal["csv", "jsonl"]

UTF8_BOM: Final = b"\xef\xbb\xbf"
GB18030_BOM: Final = b"\x84\x31\x95\x33"
_UTF16_BOMS: Final = (b"\xff\xfe", b"\xfe\xff")
_ID_BYTES = re.compile(rb"(?<![0-9A-Za-z])(\d{6})\d{11}[\dXx](?![0-9A-Za-z])")

#: Column → (block, field) of the canonical submission; block None is the top level.
COLUMNS: Final[dict[str, tuple[str | None, str]]] = {
    "category": (None, "category"),
    "department_code": (None, "department_code"),
    "department_name": (None, "department_name"),
    "decision_number": (None, "decision_number"),
    "decision_date": (None, "decision_date"),
    "report_date": (None, "report_date"),
    "subject_type": ("subject", "subject_type"),
    "subject_name": ("subject", "name"),
    "subject_uscc": ("subject", "uscc"),
    "subject_id_number": ("subject", "resident_id_number"),
    "legal_representative": ("subject", "legal_representative"),
    "legal_representative_id_number": ("subject", "legal_representative_id_number"),
    "domain": ("penalty", "domain"),
    "penalty_types": ("penalty", "penalty_types"),
    "fine_amount_yuan": ("penalty", "fine_amount_yuan"),
    "fine_amount_fen": ("penalty", "fine_amount_fen"),
    "fine_amount_wan_yuan": ("penalty", "fine_amount_wan_yuan"),
    "confiscated_amount_yuan": ("penalty", "confiscated_amount_yuan"),
    "confiscated_amount_fen": ("penalty", "confiscated_amount_fen"),
    "confiscated_amount_wan_yuan": ("penalty", "confiscated_amount_wan_yuan"),
    "violation": ("penalty", "violation"),
    "legal_basis": ("penalty", "legal_basis"),
    "severity": ("penalty", "severity"),
    "licence_type": ("licensing", "licence_type"),
    "licence_name": ("licensing", "licence_name"),
    "licence_number": ("licensing", "licence_number"),
    "licensed_matter": ("licensing", "licensed_matter"),
    "valid_from": ("licensing", "valid_from"),
    "valid_to": ("licensing", "valid_to"),
}
#: Columns holding resident ID numbers: masked in rejection payloads whatever their shape.
ID_COLUMNS: Final = frozenset({"subject_id_number", "legal_representative_id_number"})
ATTRIBUTE_PREFIX: Final = "attributes."


def _header_key(name: str) -> str:
    return unicodedata.normalize("NFKC", name).strip().lower()


# Headers of the national public-disclosure data standard (行政许可、行政处罚信用信息数据
# 标准), so a department can upload its standard export unchanged. Amounts there are in 万元.
_CHINESE_HEADERS: Final = {
    "记录类别": "category",
    "数据来源单位统一社会信用代码": "department_code",
    "数据来源单位": "department_name",
    "行政许可决定文书号": "decision_number",
    "行政处罚决定书文号": "decision_number",
    "决定文书号": "decision_number",
    "许可决定日期": "decision_date",
    "处罚决定日期": "decision_date",
    "决定日期": "decision_date",
    "上报日期": "report_date",
    "行政相对人类别": "subject_type",
    "行政相对人名称": "subject_name",
    "统一社会信用代码": "subject_uscc",
    "行政相对人代码_1(统一社会信用代码)": "subject_uscc",
    "证件号码": "subject_id_number",
    "法定代表人": "legal_representative",
    "法定代表人证件号码": "legal_representative_id_number",
    "监管领域": "domain",
    "处罚类别": "penalty_types",
    "罚款金额(万元)": "fine_amount_wan_yuan",
    "没收违法所得、没收非法财物的金额(万元)": "confiscated_amount_wan_yuan",
    "违法事实": "violation",
    "处罚依据": "legal_basis",
    "失信严重程度": "severity",
    "许可类别": "licence_type",
    "许可证书名称": "licence_name",
    "许可编号": "licence_number",
    "许可内容": "licensed_matter",
    "有效期自": "valid_from",
    "有效期至": "valid_to",
}
HEADER_ALIASES: Final = {_header_key(k): v for k, v in _CHINESE_HEADERS.items()}


class FileFormatError(ValueError):
    """The file as a whole cannot be read (no header, UTF-16, unknown extension)."""


PayloadRenderer = Callable[[], tuple[bytes, str]]


# Not frozen: built per record (services/intake/__init__.py).
@dataclass(slots=True)
class FileRow:
    """One data line: a submission, or why it could not be read, and how to render its
    original bytes for a rejection (done only for rejected rows: masking costs time)."""

    line_number: int
    submission: dict[str, Any] | None
    problem: str | None
    render_payload: PayloadRenderer

    def payload(self) -> tuple[bytes, str]:
        """(bytes with ID numbers masked, media type) for ``RejectedRecord.payload``."""
        return self.render_payload()


def _fixed(payload: bytes, encoding: str) -> PayloadRenderer:
    return lambda: (payload, encoding)


def column_for(header: str) -> str | None:
    """The documented column a header names (English or standard Chinese), or None."""
    key = _header_key(header)
    if key in COLUMNS:
        return key
    if key.startswith(ATTRIBUTE_PREFIX) and len(key) > len(ATTRIBUTE_PREFIX):
        return key
    return HEADER_ALIASES.get(key)


def header_cells(header: bytes) -> list[str]:
    """The cells of a CSV header (one record, maybe several lines), decoded per line."""
    return csv_header(header).cells


def ignored_columns(header: bytes) -> list[str]:
    """Names in a CSV header that are no documented column (they are ignored)."""
    return csv_header(header).ignored()


def check_header(header: bytes) -> None:
    """Raise :class:`FileFormatError` unless the header names a documented column."""
    csv_header(header).check()


def format_of(path: Path) -> FileFormat:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".txt"):
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raise FileFormatError(f"{path.name}: expected .csv or .jsonl, got {suffix or 'no extension'}")


def decode_line(raw: bytes) -> tuple[str, str] | None:
    """(text, charset) of one physical line: UTF-8 strict, else GB18030 strict, else None."""
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("gb18030"), "GB18030"
    except UnicodeDecodeError:
        return None


def mask_payload_bytes(raw: bytes) -> bytes:
    """Mask ID-number-shaped ASCII digit runs in bytes that could not be decoded."""
    return _ID_BYTES.sub(rb"\1************", raw)


def _mask_value(value: str) -> str:
    """A resident ID number (or whatever was typed in its place), masked: at most the six
    division digits stay."""
    return value[:6] + "*" * max(0, len(value) - 6) if len(value) > 6 else "*" * len(value)


def _mask_text(text: str, id_values: Iterable[str]) -> str:
    for value in id_values:
        value = value.strip()
        if value:
            text = text.replace(value, _mask_value(value))
    return mask_resident_ids(text)


def _picker(indexes: Sequence[int]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """The cells at ``indexes`` as a tuple, taken in one C call."""
    if len(indexes) == 1:
        only = indexes[0]
        return lambda cells: (cells[only],)
    if not indexes:
        return lambda cells: ()
    picker: Callable[[Sequence[Any]], tuple[Any, ...]] = operator.itemgetter(*indexes)
    return picker


@dataclass(frozen=True, slots=True)
class _Fields:
    """Cells at some indexes of a row, named: one block of the submission."""

    names: tuple[str, ...]
    pick: Callable[[Sequence[Any]], tuple[Any, ...]]

    @classmethod
    def of(cls, pairs: Sequence[tuple[int, str]]) -> _Fields:
        return cls(tuple(name for _, name in pairs), _picker([index for index, _ in pairs]))


@dataclass(frozen=True, slots=True)
class ColumnPlan:
    """How the cells of a row map to a submission, worked out once per header."""

    width: int
    top: _Fields
    subject: _Fields
    blocks: tuple[tuple[str, _Fields], ...]


def column_plan(columns: Sequence[str | None]) -> ColumnPlan:
    top: list[tuple[int, str]] = []
    subject: list[tuple[int, str]] = []
    blocks: dict[str, list[tuple[int, str]]] = {}
    for index, column in enumerate(columns):
        if column is None:
            continue
        if column.startswith(ATTRIBUTE_PREFIX):
            blocks.setdefault("attributes", []).append((index, column[len(ATTRIBUTE_PREFIX) :]))
            continue
        block, name = COLUMNS[column]
        if block is None:
            top.append((index, name))
        elif block == "subject":
            subject.append((index, name))
        else:
            blocks.setdefault(block, []).append((index, name))
    return ColumnPlan(
        width=len(columns),
        top=_Fields.of(top),
        subject=_Fields.of(subject),
        blocks=tuple((block, _Fields.of(pairs)) for block, pairs in blocks.items()),
    )


@dataclass(frozen=True, slots=True)
class CsvHeader:
    """A CSV header, read once for a whole file or chunk: its bytes (its physical lines joined
    by LF), the charset a rejection payload of the file starts in, its cells, the column each
    names, and how a row's cells map to a submission."""

    raw: bytes
    charset: str
    cells: list[str]
    columns: list[str | None]
    plan: ColumnPlan
    id_indexes: list[int]

    @classmethod
    def of(cls, raw: bytes, charset: str, cells: list[str]) -> CsvHeader:
        columns = [column_for(cell) for cell in cells]
        return cls(
            raw,
            charset,
            cells,
            columns,
            column_plan(columns),
            [i for i, c in enumerate(columns) if c in ID_COLUMNS],
        )

    def ignored(self) -> list[str]:
        return [
            cell for cell, column in zip(self.cells, self.columns, strict=True) if column is None
        ]

    def check(self) -> None:
        """Raise :class:`FileFormatError` unless the header names a documented column."""
        if not any(self.columns):
            raise FileFormatError(
                "the first line names no documented column; see docs/intake-file-format.md"
            )


def csv_header(header: bytes) -> CsvHeader:
    """The header of a file from its bytes (one record, maybe several lines), decoded per
    line; a header that is not CSV has no cells."""
    decoded = [decode_line(raw.rstrip(b"\r")) for raw in header.rstrip(b"\r\n").split(b"\n")]
    text = "\n".join(
        line[0] if line else raw.decode("utf-8", "replace")
        for raw, line in zip(header.rstrip(b"\r\n").split(b"\n"), decoded, strict=True)
    )
    try:
        cells = next(csv.reader(io.StringIO(text, newline="")), [])
    except csv.Error:
        cells = []
    charset = next((line[1] for line in decoded if line), "utf-8")
    return CsvHeader.of(header.rstrip(b"\r\n"), charset, cells)


def _padded_top(plan: ColumnPlan, cells: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    """The row's cells padded to the plan's width (missing trailing cells read as empty),
    and the submission's top-level fields and subject."""
    if len(cells) < plan.width:
        cells = cells + [""] * (plan.width - len(cells))
    submission: dict[str, Any] = dict(zip(plan.top.names, plan.top.pick(cells), strict=False))
    submission["subject"] = dict(zip(plan.subject.names, plan.subject.pick(cells), strict=False))
    return cells, submission


def cells_to_submission(plan: ColumnPlan, cells: list[Any]) -> dict[str, Any]:
    """A submission from a row's cells (missing trailing cells read as empty). A details
    block (``penalty``, ``licensing``) or ``attributes`` is present only when one of its
    cells has a value, so a combined licensing-and-penalty export reads cleanly."""
    cells, submission = _padded_top(plan, cells)
    for block, fields in plan.blocks:
        picked = fields.pick(cells)
        if picked.count("") == len(picked):
            continue  # the other category's block of a combined export: nothing given
        values = {
            name: value
            for name, value in zip(fields.names, picked, strict=False)
            if value is not None and value != ""
        }
        if values:
            submission[block] = values
    return submission


def text_cells_to_submission(plan: ColumnPlan, cells: list[str]) -> dict[str, Any]:
    """:func:`cells_to_submission` of cells that are all text, as a CSV row's are. For text,
    "has a value" is truthiness, so a block's cells are filtered in one C-level pass (this
    runs for every row of a bulk file)."""
    cells, submission = _padded_top(plan, cells)
    for block, fields in plan.blocks:
        picked = fields.pick(cells)
        if any(picked):
            submission[block] = dict(compress(zip(fields.names, picked, strict=False), picked))
    return submission


def flat_to_submission(columns: Mapping[str, Any]) -> dict[str, Any]:
    """A submission from documented flat columns (a flat JSON object)."""
    names = list(columns)
    return cells_to_submission(column_plan(names), [columns[n] for n in names])


def physical_lines(
    stream: BinaryIO, at_file_start: bool = True, line_shift: int = 0
) -> Iterator[tuple[int, bytes]]:
    """(1-based line number plus ``line_shift``, bytes without the line break) of every
    physical line.

    A byte-order mark only means something at the start of a file; ``at_file_start=False``
    reads a piece from the middle of one (:func:`read_chunk`)."""
    for number, raw in enumerate(stream, start=1 + line_shift):
        if number == 1 + line_shift and at_file_start:
            if raw.startswith(_UTF16_BOMS):
                raise FileFormatError("UTF-16 files are not supported: export UTF-8 or GB18030")
            if raw.startswith(UTF8_BOM):
                raw = raw[len(UTF8_BOM) :]
            elif raw.startswith(GB18030_BOM):
                raw = raw[len(GB18030_BOM) :]
        yield number, raw.rstrip(b"\r\n")


def read_jsonl(
    stream: BinaryIO, at_file_start: bool = True, *, line_shift: int = 0
) -> Iterator[FileRow]:
    """Rows of a JSON Lines stream: one object per line, flat columns or nested form (line
    numbers from 1, plus ``line_shift``)."""
    for number, raw in physical_lines(stream, at_file_start, line_shift):
        if not raw.strip():
            continue
        decoded = decode_line(raw)
        if decoded is None:
            yield FileRow(
                number,
                None,
                "the line is neither UTF-8 nor GB18030",
                _fixed(mask_payload_bytes(raw), "application/octet-stream"),
            )
            continue
        text, charset = decoded
        encoding = f"application/json; charset={charset}"
        try:
            value = json.loads(text)
        except RecursionError:
            yield FileRow(
                number, None, "JSON nested too deeply", _jsonl_payload(text, charset, (), encoding)
            )
            continue
        except json.JSONDecodeError as exc:
            yield FileRow(
                number,
                None,
                f"not JSON: {exc.msg} at column {exc.colno}",
                _jsonl_payload(text, charset, (), encoding),
            )
            continue
        if not isinstance(value, dict):
            yield FileRow(
                number,
                None,
                "a line must hold one JSON object",
                _jsonl_payload(text, charset, (), encoding),
            )
            continue
        if isinstance(value.get("subject"), dict):
            submission = value  # already the nested form of record_intake.proto
            ids = [
                str(value["subject"].get(k) or "")
                for k in ("resident_id_number", "legal_representative_id_number")
            ]
        else:
            columns = {}
            for key, cell in value.items():
                column = column_for(key) if isinstance(key, str) else None
                if column is not None:
                    columns[column] = cell
            submission = flat_to_submission(columns)
            ids = [str(columns.get(c) or "") for c in ID_COLUMNS]
        yield FileRow(number, submission, None, _jsonl_payload(text, charset, ids, encoding))


def _jsonl_payload(text: str, charset: str, ids: Iterable[str], encoding: str) -> PayloadRenderer:
    def render() -> tuple[bytes, str]:
        masked = _mask_text(text, ids)
        return masked.encode("utf-8" if charset == "utf-8" else "gb18030"), encoding

    return render


class _LineFeed:
    """Feeds decoded physical lines to ``csv.reader`` and remembers which ones a row used."""

    def __init__(self, lines: Iterator[tuple[int, bytes]]) -> None:
        self._lines = lines
        self.used: list[tuple[int, bytes, str | None]] = []
        self.undecodable = False

    def __iter__(self) -> _LineFeed:
        return self

    def __next__(self) -> str:
        number, raw = next(self._lines)
        decoded = decode_line(raw)
        if decoded is None:
            self.undecodable = True
        self.used.append((number, raw, decoded[1] if decoded else None))
        # An undecodable line still goes through csv (as replacement characters) so a quoted
        # field that spans it stays in step; the row is rejected below.
        return (decoded[0] if decoded else raw.decode("utf-8", "replace")) + "\n"


def read_csv(
    stream: BinaryIO,
    ignored_columns: list[str] | None = None,
    at_file_start: bool = True,
    *,
    line_shift: int = 0,
) -> Iterator[FileRow]:
    """Rows of a CSV stream: a header line naming documented columns, then one record a row,
    read line by line with the per-line encoding rule and per-row errors. Line numbers count
    from the stream's first line as 1, plus ``line_shift``."""
    feed = _LineFeed(physical_lines(stream, at_file_start))
    reader = csv.reader(feed, strict=True)
    header: CsvHeader | None = None
    while True:
        feed.used = []
        feed.undecodable = False
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if header is None:
                raise FileFormatError(f"the header line is not CSV: {exc}") from None
            yield _broken_row(feed, header, f"not CSV: {exc}", [], line_shift)
            continue
        if header is None:
            if not "".join(cells).strip():
                continue
            header = CsvHeader.of(
                b"\n".join(raw for _, raw, _ in feed.used),
                next((c for _, _, c in feed.used if c), "utf-8"),
                cells,
            )
            if ignored_columns is not None:
                ignored_columns.extend(header.ignored())
            header.check()
            continue
        if not "".join(cells).strip():
            continue
        id_values = [cells[i] for i in header.id_indexes if i < len(cells)]
        if feed.undecodable:
            yield _broken_row(feed, header, "the line is neither UTF-8 nor GB18030", [], line_shift)
            continue
        width = len(header.columns)
        if len(cells) > width:
            yield _broken_row(
                feed,
                header,
                f"the row has {len(cells)} cells, the header {width}",
                id_values,
                line_shift,
            )
            continue
        yield FileRow(
            feed.used[0][0] + line_shift,
            cells_to_submission(header.plan, cells),
            None,
            _csv_payload(list(feed.used), header.raw, header.charset, id_values),
        )


Used = list[tuple[int, bytes, str | None]]


def _csv_payload(
    used: Used, header_bytes: bytes, header_charset: str, id_values: Iterable[str]
) -> PayloadRenderer:
    def render() -> tuple[bytes, str]:
        charsets = {c for _, _, c in used if c}
        gb = "GB18030" in charsets or header_charset == "GB18030"
        charset = "GB18030" if gb else "utf-8"
        text_lines = []
        for raw in [header_bytes, *(raw for _, raw, _ in used)]:
            decoded = decode_line(raw)
            text_lines.append(decoded[0] if decoded else raw.decode("utf-8", "replace"))
        text = _mask_text("\n".join(text_lines), id_values)
        return text.encode(charset.lower()), f"text/csv; charset={charset}; header=present"

    return render


def _broken_row(
    feed: _LineFeed,
    header: CsvHeader,
    problem: str,
    id_values: Iterable[str],
    line_shift: int,
) -> FileRow:
    used = list(feed.used)
    number = (used[0][0] if used else 0) + line_shift
    if any(charset is None for _, _, charset in used):
        raw = b"\n".join([header.raw, *(raw for _, raw, _ in used)])
        return FileRow(
            number, None, problem, _fixed(mask_payload_bytes(raw), "application/octet-stream")
        )
    return FileRow(number, None, problem, _csv_payload(used, header.raw, header.charset, id_values))


def read_csv_block(header: bytes, body: bytes, *, line_shift: int = 0) -> list[FileRow] | None:
    """Rows of a header line and a block of whole CSV records, in one pass, when the block
    is plain UTF-8 and well-formed CSV; None otherwise (then :func:`read_csv` reads it line
    by line, with the per-line encoding rule and per-row errors). Line numbers count from
    the header as line 1, plus ``line_shift`` (where the block stands in its file).
    Decoding the block at once gives the same text as decoding each line: a block that is
    valid UTF-8 as a whole is valid UTF-8 line by line."""
    if decode_line(header.rstrip(b"\r\n")) is None:
        return None
    try:
        # Line breaks as the line-by-line reader leaves them (it strips CR LF and feeds LF).
        text = body.decode("utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError:
        return None
    if "\r" in text:
        return None  # a lone carriage return: csv and the line reader see it differently
    parsed = csv_header(header)
    columns = parsed.columns
    if not any(columns):
        return None
    plan = parsed.plan
    id_indexes = parsed.id_indexes
    header_bytes = parsed.raw
    header_charset = parsed.charset
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[FileRow] = []
    lines: list[str] | None = None
    previous = 0
    try:
        for cells in reader:
            first, previous = previous + 1, reader.line_num
            # Blank: every cell whitespace. A first cell with text settles it at once.
            if not cells or not (cells[0].strip() or "".join(cells).strip()):
                continue
            if lines is None:
                lines = text.split("\n")
            used: Used = (
                [
                    (first + 1 + k, raw.rstrip("\r").encode("utf-8"), "utf-8")
                    for k, raw in enumerate(lines[first - 1 : previous])
                ]
                if len(cells) > len(columns)
                else []
            )
            if used:
                id_values = [cells[i] for i in id_indexes if i < len(cells)]
                rows.append(
                    FileRow(
                        first + 1 + line_shift,
                        None,
                        f"the row has {len(cells)} cells, the header {len(columns)}",
                        _csv_payload(used, header_bytes, header_charset, id_values),
                    )
                )
                continue
            rows.append(
                FileRow(
                    first + 1 + line_shift,
                    text_cells_to_submission(plan, cells),
                    None,
                    functools.partial(
                        _block_payload,
                        lines,
                        first,
                        previous,
                        header_bytes,
                        header_charset,
                        cells,
                        id_indexes,
                    ),
                )
            )
    except csv.Error:
        return None
    return rows


def _block_payload(
    lines: list[str],
    first: int,
    last: int,
    header_bytes: bytes,
    header_charset: str,
    cells: list[str],
    id_indexes: list[int],
) -> tuple[bytes, str]:
    # The ID cells are picked here: only a rejected row's payload is ever rendered.
    id_values = [cells[i] for i in id_indexes if i < len(cells)]
    used: Used = [
        (first + 1 + k, raw.rstrip("\r").encode("utf-8"), "utf-8")
        for k, raw in enumerate(lines[first - 1 : last])
    ]
    return _csv_payload(used, header_bytes, header_charset, id_values)()


def read_rows(
    stream: BinaryIO,
    file_format: FileFormat,
    ignored_columns: list[str] | None = None,
    *,
    at_file_start: bool = True,
) -> Iterator[FileRow]:
    """Every data row of a bulk file, in order. Header names that are no documented column
    are appended to ``ignored_columns`` (CSV) so the operator can be told."""
    if file_format == "csv":
        return read_csv(stream, ignored_columns, at_file_start)
    return read_jsonl(stream, at_file_start)


def record_runs(
    stream: BinaryIO,
    file_format: FileFormat,
    chunk_lines: int,
    read_size: int = 1 << 20,
) -> Iterator[tuple[bytes, list[tuple[int, bytes]]]]:
    """Runs of whole records, about ``chunk_lines`` physical lines each: (the CSV header's
    bytes with its line break — empty for JSON Lines —, the runs' (number, bytes) lines).

    CSV records are found with the csv module itself over the bytes read as Latin-1, so a
    chunk boundary falls exactly where the line-by-line reader ends a record — also for
    malformed quoting. Latin-1 maps every byte to one character, and the bytes that matter
    to CSV (comma, double quote, CR, LF) never occur inside a multi-byte UTF-8 or GB18030
    character, so the records are the same as in the decoded text. A line that starts a
    record and holds no double quote, CR or NUL is a whole record by itself, whatever else
    it holds; only the other lines go through the csv module.
    """
    lines: list[tuple[int, bytes]] = []
    source: Iterator[tuple[int, bytes]] = physical_lines(stream)
    pushed_back: list[tuple[int, bytes]] = []
    read = [0]  # number of the last line taken from the stream

    def physical() -> Iterator[str]:
        while True:
            if pushed_back:
                number, raw = pushed_back.pop()
            else:
                taken = next(source, None)
                if taken is None:
                    return
                number, raw = taken
            read[0] = max(read[0], number)
            lines.append((number, raw))
            yield raw.decode("latin-1") + "\n"

    if file_format == "jsonl":
        for _ in physical():
            if len(lines) >= chunk_lines:
                yield b"", lines[:]
                lines.clear()
        if lines:
            yield b"", lines
        return

    header = b""
    reader = csv.reader(physical(), strict=True)
    while not header:
        try:
            next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise FileFormatError(f"the header line is not CSV: {exc}") from None
        candidate = b"\n".join(raw for _, raw in lines) + b"\n"
        # Blank or not is judged on the decoded text, as the line reader judges it.
        parsed = csv_header(candidate)
        if "".join(parsed.cells).strip():
            header = candidate
            parsed.check()
        lines.clear()
    # The header came through the line reader; the rest is read in blocks (the stream is
    # right after the header's last line, which physical_lines() read with readline()).
    body = _BodyLines(stream, read_size)
    body.number = read[0]
    source = body
    while True:
        run = body.plain_run(chunk_lines - len(lines))
        if run:
            lines.extend(run)
        else:
            taken = next(body, None)
            if taken is None:
                break
            number, raw = taken
            if b'"' in raw or b"\r" in raw or b"\0" in raw:
                pushed_back.append((number, raw))
                # The csv module reads this record's lines, however many. A malformed record
                # ends where csv says so; the worker's reader reports it.
                with contextlib.suppress(csv.Error):
                    next(reader)
            else:
                lines.append((number, raw))
        if len(lines) >= chunk_lines:
            yield header, lines[:]
            lines.clear()
    if lines:
        yield header, lines


class _BodyLines:
    """The physical lines after a CSV header, as :func:`physical_lines` gives them
    (number, bytes without the line break), read a block at a time.

    A block holding no double quote, CR or NUL is all plain lines, each a record by itself;
    :meth:`plain_run` hands out such lines many at a time, which spares the per-line Python
    work of the importing process (it splits the whole file while the workers prepare)."""

    def __init__(self, stream: BinaryIO, read_size: int) -> None:
        self._stream = stream
        self._read_size = read_size
        self._lines: list[bytes] = []
        self._at = 0
        self._plain = False
        self._rest = b""  # a line not yet ended by a line break
        self._done = False
        self.number = 0  # of the last line handed out; set by the caller

    def _fill(self) -> bool:
        """Read the next block of whole lines; False at the end of the stream."""
        while self._at >= len(self._lines):
            if self._done:
                return False
            block = self._stream.read(self._read_size)
            if not block:
                self._done = True
                if not self._rest:
                    return False
                block, self._rest = self._rest, b""
                self._lines = [block]
            else:
                block = self._rest + block
                end = block.rfind(b"\n") + 1
                block, self._rest = block[:end], block[end:]
                if not block:
                    continue
                self._lines = block[:-1].split(b"\n")
            self._at = 0
            self._plain = b'"' not in block and b"\r" not in block and b"\0" not in block
        return True

    def plain_run(self, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` next lines when they are plain, else none."""
        if not self._fill() or not self._plain:
            return []
        taken = self._lines[self._at : self._at + limit]
        self._at += len(taken)
        first = self.number + 1
        self.number += len(taken)
        return list(zip(range(first, first + len(taken)), taken, strict=True))

    def __iter__(self) -> _BodyLines:
        return self

    def __next__(self) -> tuple[int, bytes]:
        if not self._fill():
            raise StopIteration
        raw = self._lines[self._at]
        self._at += 1
        self.number += 1
        return self.number, raw.rstrip(b"\r\n")


def read_chunk(
    file_format: FileFormat, header: bytes, body: bytes, *, line_shift: int = 0
) -> Iterator[FileRow]:
    """The rows of a piece of a file (whole records, the CSV header they need), numbered from
    the header's first line as 1 plus ``line_shift``: a one-line CSV header and a plain
    UTF-8 block in one pass (:func:`read_csv_block`), anything else line by line."""
    if file_format == "jsonl":
        return read_jsonl(io.BytesIO(body), at_file_start=False, line_shift=line_shift)
    if header.count(b"\n") == 1:
        block = read_csv_block(header, body, line_shift=line_shift)
        if block is not None:
            return iter(block)
    return read_csv(io.BytesIO(header + body), at_file_start=False, line_shift=line_shift)


def payload_submission(payload: bytes, payload_encoding: str) -> dict[str, Any] | None:
    """Read a rejection payload back into a submission (for rebuilding disclosure figures).

    Returns None for payloads that were not readable in the first place.
    """
    charset = "gb18030" if "GB18030" in payload_encoding else "utf-8"
    try:
        text = payload.decode(charset)
    except UnicodeDecodeError:
        return None
    if payload_encoding.startswith("text/csv"):
        rows = list(read_csv(io.BytesIO(text.encode("utf-8"))))
        return rows[0].submission if len(rows) == 1 else None
    if payload_encoding.startswith("application/json"):
        rows = list(read_jsonl(io.BytesIO(text.encode("utf-8"))))
        return rows[0].submission if len(rows) == 1 else None
    return None
