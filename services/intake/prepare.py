"""The first half of a batch's road: read, validate, and prepare what classifying needs.

A 2-core node spends most of an import in Python: decoding, CSV, validation, the content
hash and Avro encoding (``python -m bench intake``). Those steps need no shared state, so the
importer cuts a file into chunks of whole records and lets worker processes *prepare* them
(:func:`prepare_chunk`): each valid row comes back hashed and already encoded as the first
version of its record, each invalid row with its reasons, its rendered (masked) payload and
its rejection id. A gRPC request is prepared the same way in-process
(:func:`prepare_verdicts`, from ``IntakePipeline.prepare``). Classifying (new, duplicate,
correction), encoding what is not a first version and publishing stay in the importing
process, in order, so exactly-once does not depend on the workers at all — a worker's output
is a pure function of the chunk.

A record that turns out to be a correction (rare in a bulk file) is validated again in the
importing process, which encodes its higher version (:mod:`services.intake.encode.batch`).
"""

from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.connection
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import BinaryIO, Final

from services.common.avro import AvroSerde
from services.intake.classify.ledger import RecordState
from services.intake.encode import events as ev
from services.intake.encode.record_encoding import content_of
from services.intake.publish.partitioning import partition_for
from services.intake.read import files
from services.intake.validate.validation import (
    INCONSISTENT,
    NOT_YOUR_DEPARTMENT,
    UNPARSEABLE,
    InvalidRecord,
    ValidationContext,
    ValidRecord,
    Verdict,
    Violation,
    identify,
    pseudonymiser,
    validate_submission,
)
from services.intake.validate.vocabulary import DISCLOSURE_CATEGORIES

CHUNK_LINES: Final = 2000
#: Bytes of a CSV body read at a time when splitting a file into chunks.
READ_SIZE: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class Chunk:
    """Whole records of a file: raw bytes, the header they need, where they start."""

    file_format: files.FileFormat
    file_name: str
    header: bytes  # CSV header line (empty for JSON Lines)
    first_line: int  # physical line number of the chunk's first line
    body: bytes


# Not frozen: built per record (services/intake/__init__.py).
@dataclass(slots=True)
class PreparedRecord:
    """A valid row as the first version of its record: the ledger state it would add and the
    event, encoded, with its partition, ready to append to a batch."""

    line_number: int
    state: RecordState
    warnings: tuple[Violation, ...]
    partition: int | None
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class PreparedRejection:
    """An invalid or unreadable row, with its payload already rendered, its rejection id and
    the department it is keyed by (the uploader's, else its own, else ``UNKNOWN``)."""

    line_number: int
    rejection: InvalidRecord
    payload: bytes
    payload_encoding: str
    rejection_id: str
    department_code: str


Prepared = PreparedRecord | PreparedRejection


@dataclass(frozen=True, slots=True)
class PreparedChunk:
    """A worker's answer for one chunk, column-wise: lists of plain values pickle several
    times faster than a list of objects, and crossing the process boundary is per-row cost.
    Dates travel as ordinals."""

    lines: list[int]
    # record_id, content_hash, category, department_code, department_name, decision_number
    texts: list[tuple[str, str, str, str, str, str, str]]
    days: list[tuple[int, int]]  # decision date, report date
    partitions: list[int | None]
    values: list[bytes]
    warnings: dict[int, tuple[Violation, ...]]  # by position, only rows that have some
    rejections: list[PreparedRejection]

    def __len__(self) -> int:
        return len(self.lines) + len(self.rejections)

    def states(self) -> Iterator[tuple[int, RecordState]]:
        """(position, ledger state of version 1) of every valid row, in file order: all that
        deciding a new record needs; :meth:`record` builds the rest of a row's object."""
        # A chunk's rows share a few days: one date object per day, not two per row (the
        # ledger keeps every state for the rest of the process).
        dates: dict[int, date] = {}
        for index, (texts, (decided, reported)) in enumerate(
            zip(self.texts, self.days, strict=True)
        ):
            record_id, digest, category, code, name, number, subject_key = texts
            decision_date = dates.get(decided)
            if decision_date is None:
                decision_date = dates[decided] = date.fromordinal(decided)
            report_date = dates.get(reported)
            if report_date is None:
                report_date = dates[reported] = date.fromordinal(reported)
            yield (
                index,
                RecordState(
                    record_id,
                    1,
                    digest,
                    category,
                    code,
                    name,
                    number,
                    decision_date,
                    report_date,
                    subject_key,
                ),
            )

    def record(self, index: int, state: RecordState) -> PreparedRecord:
        """The valid row at ``index`` (of :meth:`states`) as the first version of its record."""
        return PreparedRecord(
            self.lines[index],
            state,
            self.warnings.get(index, ()),
            self.partitions[index],
            state.subject_key.encode(),
            self.values[index],
        )

    def records(self) -> Iterator[PreparedRecord]:
        """The valid rows in file order, as the first versions of their records."""
        for index, state in self.states():
            yield self.record(index, state)

    def items(self) -> list[Prepared]:
        """The rows as objects: valid rows in file order, then the rejections."""
        prepared: list[Prepared] = list(self.records())
        prepared.extend(self.rejections)
        return prepared

    def record_days(self) -> set[tuple[str, date]]:
        """The (department, decision day) of every valid row that counts in the 双公示
        figures, each once."""
        days = {
            (texts[3], decided)
            for texts, (decided, _) in zip(self.texts, self.days, strict=True)
            if texts[2] in DISCLOSURE_CATEGORIES
        }
        return {(code, date.fromordinal(decided)) for code, decided in days}


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A prepared batch with how to validate one of its rows again here and where each
    came from, by row key (line number in a file, position in a request)."""

    prepared: PreparedChunk
    revalidate: Callable[[int], Verdict]
    source: Callable[[int], ev.SubmissionSource]


@dataclass(frozen=True, slots=True)
class Preparation:
    """Everything a worker needs besides the chunk; sent with each chunk (it is small)."""

    city: str
    city_code: str
    region_key: bytes
    today: date
    submitted_at: datetime
    uploader_department: str | None
    #: Partitions of credit.records.v1: workers partition keys as the producer would.
    partitions: int
    traceparent: str | None


def split_file(
    stream: BinaryIO,
    file_format: files.FileFormat,
    file_name: str,
    chunk_lines: int = CHUNK_LINES,
    read_size: int = READ_SIZE,
) -> Iterator[Chunk]:
    """Chunks of whole records, about ``chunk_lines`` physical lines each
    (:func:`services.intake.read.files.record_runs`)."""
    for header, lines in files.record_runs(stream, file_format, chunk_lines, read_size):
        body = b"\n".join(raw for _, raw in lines) + b"\n"
        yield Chunk(file_format, file_name, header, lines[0][0], body)


def chunk_rows(chunk: Chunk) -> Iterator[files.FileRow]:
    """The rows of a chunk with their line numbers in the whole file."""
    # Line numbers of the piece read on its own: the header's lines, then the body's.
    shift = chunk.first_line - (chunk.header.count(b"\n") + 1)
    return files.read_chunk(chunk.file_format, chunk.header, chunk.body, line_shift=shift)


@dataclass(frozen=True, slots=True)
class Submitter:
    """The department whose certificate submits over gRPC, and the department codes it may
    submit for (``None``: every department of the city; deploy/config/city-roles.yaml)."""

    department: str
    departments: frozenset[str] | None

    def may_submit_for(self, department_code: str) -> bool:
        return self.departments is None or department_code in self.departments


def check_submission(
    content: object,
    problem: str | None,
    context: ValidationContext,
    uploader_department: str | None,
    submitter: Submitter | None = None,
) -> Verdict:
    """Validate one submission (``problem``: why it could not be read at all), including the
    uploader check of ``import --department`` and the submitter check of a department's
    certificate (docs/trust.md, "Roles")."""
    if problem is not None or content is None:
        identity = identify(content, context.city_code) if content is not None else None
        reasons = (Violation("", UNPARSEABLE, problem or "no record"),)
        return InvalidRecord(reasons, identity) if identity else InvalidRecord(reasons)
    verdict = validate_submission(content, context)
    if (
        uploader_department is not None
        and isinstance(verdict, ValidRecord)
        and verdict.department_code != uploader_department
    ):
        return InvalidRecord(
            (
                Violation(
                    "department_code",
                    INCONSISTENT,
                    f"the file was uploaded for department {uploader_department}",
                ),
            ),
            identify(content, context.city_code),
        )
    if (
        submitter is not None
        and isinstance(verdict, ValidRecord)
        and not submitter.may_submit_for(verdict.department_code)
    ):
        return InvalidRecord(
            (
                Violation(
                    "department_code",
                    NOT_YOUR_DEPARTMENT,
                    f"the submitting certificate is department {submitter.department}'s, "
                    f"which may not submit for department {verdict.department_code}",
                ),
            ),
            identify(content, context.city_code),
        )
    return verdict


def check_row(
    row: files.FileRow, context: ValidationContext, uploader_department: str | None
) -> Verdict:
    return check_submission(row.submission, row.problem, context, uploader_department)


def revalidate_line(
    chunk: Chunk,
    line_number: int,
    *,
    context: ValidationContext,
    uploader_department: str | None,
) -> Verdict:
    """The verdict on one line of a chunk, computed again in this process."""
    for row in chunk_rows(chunk):
        if row.line_number == line_number:
            return check_row(row, context, uploader_department)
    raise LookupError(f"line {line_number} is not in the chunk")


_SERDE: AvroSerde | None = None


def exit_with_parent() -> None:
    """Worker initializer: end this process when the importing process ends, however it
    ends. A ``kill -9``-ed importer cannot shut its pool down, and a pool worker blocked on
    its task queue would otherwise wait forever (it holds that pipe's write end itself)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def warm_worker(chunk: Chunk, preparation: Preparation, hold_seconds: float) -> int:
    """Pool warm-up task: prepare a one-row chunk, which loads the schemas, compiles the
    writers and reads the calendar; then hold this worker briefly so that the next warm-up
    task goes to another one. Returns this worker's process id."""
    prepare_chunk(chunk, preparation)
    time.sleep(hold_seconds)
    return os.getpid()


def file_source(file_name: str, submitted_at: datetime, line_number: int) -> ev.SubmissionSource:
    """Where a row of a bulk file came from."""
    return ev.SubmissionSource(
        channel="FILE", submitted_at=submitted_at, file_name=file_name, line_number=line_number
    )


def prepare_chunk(chunk: Chunk, preparation: Preparation) -> PreparedChunk:
    """Read, validate and prepare every row of a chunk (runs in a worker process)."""
    global _SERDE  # one schema store per worker process, loaded on first use
    if _SERDE is None:
        _SERDE = AvroSerde()
    context = ValidationContext(
        city_code=preparation.city_code,
        today=preparation.today,
        pseudonymise=pseudonymiser(preparation.region_key),
    )
    uploader = preparation.uploader_department
    return prepare_verdicts(
        (
            (row.line_number, check_row(row, context, uploader), row.render_payload)
            for row in chunk_rows(chunk)
        ),
        serde=_SERDE,
        city_code=preparation.city_code,
        uploader_department=uploader,
        partitions=preparation.partitions,
        accepted_at=preparation.submitted_at,
        source=functools.partial(file_source, chunk.file_name, preparation.submitted_at),
    )


def prepare_verdicts(
    rows: Iterable[tuple[int, Verdict, Callable[[], tuple[bytes, str]]]],
    *,
    serde: AvroSerde,
    city_code: str,
    uploader_department: str | None,
    partitions: int | None,
    accepted_at: datetime,
    source: Callable[[int], ev.SubmissionSource],
) -> PreparedChunk:
    """Verdicts on the rows of one batch — (key, verdict, how to render the row's payload),
    in order — as :class:`PreparedChunk`: each valid row hashed and encoded as the first
    version of its record (``partitions``: of the records topic, to partition its key as the
    producer would; None leaves that to the producer), each invalid row with its payload
    rendered and its rejection id."""
    out = PreparedChunk([], [], [], [], [], {}, [])
    for line_number, verdict, render_payload in rows:
        if isinstance(verdict, InvalidRecord):
            payload, encoding = render_payload()
            department = (
                uploader_department or verdict.identity.department_code or ev.UNKNOWN_DEPARTMENT
            )
            out.rejections.append(
                PreparedRejection(
                    line_number,
                    verdict,
                    payload,
                    encoding,
                    ev.rejection_id_for(city_code, department, payload),
                    department,
                )
            )
            continue
        parts, digest = content_of(verdict.content)
        if verdict.warnings:
            out.warnings[len(out.lines)] = verdict.warnings
        out.lines.append(line_number)
        out.texts.append(
            (
                verdict.record_id,
                digest,
                verdict.category,
                verdict.department_code,
                verdict.department_name,
                verdict.decision_number,
                verdict.subject_key,
            )
        )
        out.days.append((verdict.decision_date.toordinal(), verdict.report_date.toordinal()))
        out.partitions.append(
            partition_for(verdict.subject_key.encode(), partitions)
            if partitions is not None
            else None
        )
        out.values.append(
            ev.encode_credit_record(
                serde,
                verdict,
                city_code=city_code,
                version=1,
                report_date=verdict.report_date,
                accepted_at=accepted_at,
                source=source(line_number),
                content_parts=parts,
            )
        )
    return out
