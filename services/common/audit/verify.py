"""Verifying chains: every gap, broken link, changed record or reordering named by position."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.common.audit.chain import GENESIS_HASH, Receipt, chain_hash, parse_key
from services.common.audit.heads import Checkpoint
from services.common.audit.read import AuditMessage, read_audit_topic
from services.common.audit.signing import AuditKeyring
from services.common.avro import AvroSerde, SerdeError
from services.common.settings import Settings
from services.common.topic_names import AUDIT_TOPIC as AUDIT_TOPIC


@dataclass(frozen=True, slots=True)
class ChainProblem:
    """One place where the chain is not what its writer wrote."""

    # changed | removed | reordered | duplicated | undecodable | bad-key | bad-signature |
    # unsigned | other-city | bad-receipt | receipt-mismatch; against the heads peers hold
    # (checkpoints.py): truncated | chain-deleted | rewritten | bad-checkpoint; against the
    # other side's chain (check_receipts): receipt-unmatched | receipt-mismatch
    kind: str
    chain: str | None
    #: The topic offset of the record concerned; None where no record is (a deleted chain).
    offset: int | None
    seq: int | None
    detail: str

    def __str__(self) -> str:
        where = [
            *([] if self.chain is None else [f"chain {self.chain!r}"]),
            *([] if self.seq is None else [f"seq {self.seq}"]),
            *([] if self.offset is None else [f"at offset {self.offset}"]),
        ]
        return f"{self.kind.upper()}: {' '.join(where)}: {self.detail}"


@dataclass(slots=True)
class ChainSummary:
    chain: str | None
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None


@dataclass(slots=True)
class VerifyReport:
    problems: list[ChainProblem] = field(default_factory=list)
    chains: dict[str | None, ChainSummary] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(slots=True)
class _Decoded:
    offset: int
    seq: int
    record: dict[str, Any]
    hash_ok: bool
    signature: bytes | None = None


#: Where a chain's records start when they are not the whole chain: the ``(seq, hash)`` of
#: the record before the first one given (an export, export.py). A chain without one starts
#: at seq 1 chaining to 64 zeros.
Anchor = tuple[int, str]
_GENESIS: Anchor = (0, GENESIS_HASH)


def verify_chain(
    messages: Iterable[AuditMessage],
    serde: AvroSerde | None = None,
    keyring: AuditKeyring | None = None,
    anchors: Mapping[str | None, Anchor] | None = None,
    node_city: str | None = None,
    checkpoints: CheckpointsHeld | None = None,
) -> VerifyReport:
    """Check every chain in ``messages`` (in topic order); name each broken position.

    With ``keyring`` (the cities' published audit keys) also each head signature, and that
    every record is covered by a valid signature of its city at or after it. ``anchors``
    lets a chain start after seq 1; ``node_city`` names the only city whose records may be
    there (a city's export holds its own node's records only). With ``checkpoints`` (the
    signed heads of one city's chains its peers hold) also that every chain still reaches,
    and passes through, each head a peer holds."""
    serde = serde or AvroSerde()
    report = VerifyReport()
    by_chain: dict[str | None, list[_Decoded]] = {}
    for message in messages:
        chain, key_seq = parse_key(message.key)
        try:
            writer = serde.writer_of(message.value)
            record = serde.decode(message.value, reader=writer)
            expected_hash = chain_hash(serde, record, writer.version)
        except (SerdeError, KeyError, TypeError, ValueError) as exc:
            report.problems.append(
                ChainProblem("undecodable", chain, message.offset, key_seq, f"{exc}")
            )
            continue
        seq = int(record["seq"])
        if node_city is not None and record["node_city"] != node_city:
            report.problems.append(
                ChainProblem(
                    "other-city",
                    chain,
                    message.offset,
                    seq,
                    f"written by {record['node_city']}'s node, not {node_city}'s",
                )
            )
        if key_seq != seq:
            report.problems.append(
                ChainProblem(
                    "bad-key",
                    chain,
                    message.offset,
                    seq,
                    f"message key {message.key!r} does not carry the record's seq {seq}",
                )
            )
        hash_ok = expected_hash == record["hash"]
        if not hash_ok:
            report.problems.append(
                ChainProblem(
                    "changed",
                    chain,
                    message.offset,
                    seq,
                    "record content does not match its hash",
                )
            )
        by_chain.setdefault(chain, []).append(
            _Decoded(message.offset, seq, record, hash_ok, message.signature)
        )
    for chain, entries in by_chain.items():
        anchor = (anchors or {}).get(chain, _GENESIS)
        report.problems.extend(_check_links(chain, entries, anchor))
        if keyring is not None:
            report.problems.extend(_check_signatures(chain, entries, keyring))
            report.problems.extend(_check_receipts(chain, entries, keyring))
        summary = ChainSummary(chain=chain, records=len(entries))
        seqs = [e.seq for e in entries]
        summary.first_seq, summary.last_seq = min(seqs), max(seqs)
        report.chains[chain] = summary
    if checkpoints is not None:
        report.problems.extend(_check_checkpoints(by_chain, checkpoints))
    report.problems.sort(key=lambda p: (p.offset is None, p.offset or 0, p.kind))
    return report


def _check_links(
    chain: str | None, entries: Sequence[_Decoded], anchor: Anchor
) -> list[ChainProblem]:
    problems: list[ChainProblem] = []
    present = {e.seq for e in entries}
    seen: dict[int, _Decoded] = {}
    previous: _Decoded | None = None
    anchor_seq, anchor_hash = anchor
    expected = anchor_seq + 1
    for entry in entries:
        if entry.seq in seen:
            problems.append(
                ChainProblem(
                    "duplicated",
                    chain,
                    entry.offset,
                    entry.seq,
                    f"seq {entry.seq} already appeared at offset {seen[entry.seq].offset}",
                )
            )
            continue
        seen[entry.seq] = entry
        if entry.seq < expected:
            before = (
                f"the anchor, seq {anchor_seq}"
                if previous is None
                else f"seq {previous.seq} (offset {previous.offset})"
            )
            problems.append(
                ChainProblem(
                    "reordered",
                    chain,
                    entry.offset,
                    entry.seq,
                    f"seq {entry.seq} comes after {before}",
                )
            )
            continue
        if entry.seq > expected:
            gone = [s for s in range(expected, entry.seq) if s not in present]
            if gone:
                span = f"{gone[0]}" if len(gone) == 1 else f"{gone[0]}..{gone[-1]}"
                after = "the start" if previous is None else f"offset {previous.offset}"
                problems.append(
                    ChainProblem(
                        "removed",
                        chain,
                        entry.offset,
                        entry.seq,
                        f"seq {span} missing between {after} and this record",
                    )
                )
        elif previous is not None and entry.record["prev_hash"] != previous.record["hash"]:
            # The previous record was changed and its own hash recomputed by the forger.
            problems.append(
                ChainProblem(
                    "changed",
                    chain,
                    previous.offset,
                    previous.seq,
                    f"hash no longer matches the prev_hash of seq {entry.seq} "
                    f"(offset {entry.offset})",
                )
            )
        elif previous is None and entry.record["prev_hash"] != anchor_hash:
            to = "64 zeros" if anchor == _GENESIS else f"the anchor's hash {anchor_hash}"
            problems.append(
                ChainProblem(
                    "changed", chain, entry.offset, entry.seq, f"seq {entry.seq} must chain to {to}"
                )
            )
        previous = entry
        expected = entry.seq + 1
    return problems


def _check_signatures(
    chain: str | None, entries: Sequence[_Decoded], keyring: AuditKeyring
) -> list[ChainProblem]:
    """Each signature verifies, and no record lies after the chain's last valid one."""
    problems: list[ChainProblem] = []
    covered = 0  # entries[:covered] are vouched for by a valid signature at or after them
    for index, entry in enumerate(entries):
        if entry.signature is None:
            continue
        problem = keyring.problem(
            entry.signature,
            str(entry.record["node_city"]),
            chain,
            entry.seq,
            str(entry.record["hash"]),
        )
        if problem is not None:
            problems.append(ChainProblem("bad-signature", chain, entry.offset, entry.seq, problem))
        elif entry.hash_ok:
            covered = index + 1
    if covered < len(entries):
        first, last = entries[covered], entries[-1]
        span = f"{first.seq}" if first is last else f"{first.seq}..{last.seq}"
        problems.append(
            ChainProblem(
                "unsigned",
                chain,
                first.offset,
                first.seq,
                f"seq {span}: no valid signature of the city's audit key at or after it",
            )
        )
    return problems


def _check_receipts(
    chain: str | None, entries: Sequence[_Decoded], keyring: AuditKeyring
) -> list[ChainProblem]:
    """Each receipt an OUTBOUND record keeps is the callee city's signature, over the
    exchange the caller recorded (PeerCallAudit v5; services/common/peer/outbound.py)."""
    problems: list[ChainProblem] = []
    for entry in entries:
        kept = entry.record.get("receipt")
        if entry.record["direction"] != "OUTBOUND" or kept is None:
            continue
        receipt = Receipt.from_record(kept)
        callee = str(entry.record["callee_city"])
        why = keyring.receipt_problem(
            receipt.signature,
            callee,
            receipt.callee_chain,
            receipt.callee_seq,
            receipt.callee_hash,
            receipt.exchange_sha256,
        )
        if why is not None:
            problems.append(
                ChainProblem(
                    "bad-receipt", chain, entry.offset, entry.seq, f"receipt of {callee}: {why}"
                )
            )
        elif (ours := entry.record.get("exchange_sha256")) != receipt.exchange_sha256:
            problems.append(
                ChainProblem(
                    "receipt-mismatch",
                    chain,
                    entry.offset,
                    entry.seq,
                    f"{callee} recorded exchange {receipt.exchange_sha256[:12]}…, this node "
                    f"sent and received {str(ours)[:12]}…",
                )
            )
    return problems


def check_receipts(
    ours: Iterable[AuditMessage],
    theirs: Iterable[AuditMessage],
    serde: AvroSerde | None = None,
    names: tuple[str, str] = ("this topic", "the other topic"),
) -> list[ChainProblem]:
    """The receipts each of two cities keeps against the other's chain, both ways.

    ``ours`` and ``theirs`` are the audit topics of two cities. Every OUTBOUND record of one
    that names the other as callee and keeps its receipt must find, at the receipt's chain
    and seq of the other, the record with the receipt's hash and exchange digest
    (``receipt-mismatch`` when the record differs, ``receipt-unmatched`` when none is
    there). Problems name the position of the receipt's own record; the side is in the
    detail. A receipt's signature is checked by :func:`verify_chain` with the keys."""
    serde = serde or AvroSerde()
    a, b = _records(ours, serde), _records(theirs, serde)
    return [*_against(a, b, names[0])[1], *_against(b, a, names[1])[1]]


def check_receipts_of(
    callers: Iterable[AuditMessage],
    callees: Iterable[AuditMessage],
    serde: AvroSerde | None = None,
    name: str = "the caller's topic",
) -> tuple[int, list[ChainProblem]]:
    """One way of :func:`check_receipts`: the receipts on ``callers`` of calls to the city of
    ``callees``; how many there are, and their problems. Read ``callers`` first: a receipt
    then only names records already on ``callees``."""
    serde = serde or AvroSerde()
    return _against(_records(callers, serde), _records(callees, serde), name)


def _records(
    messages: Iterable[AuditMessage], serde: AvroSerde
) -> dict[tuple[str | None, int], tuple[int, dict[str, Any]]]:
    """(chain, seq) -> (offset, record); what does not decode is verify_chain's to report."""
    found: dict[tuple[str | None, int], tuple[int, dict[str, Any]]] = {}
    for message in messages:
        try:
            record = serde.decode(message.value, reader=serde.writer_of(message.value))
        except (SerdeError, KeyError, TypeError, ValueError):
            continue
        found.setdefault((parse_key(message.key)[0], int(record["seq"])), (message.offset, record))
    return found


def _against(
    callers: Mapping[tuple[str | None, int], tuple[int, dict[str, Any]]],
    callees: Mapping[tuple[str | None, int], tuple[int, dict[str, Any]]],
    side: str,
) -> tuple[int, list[ChainProblem]]:
    """How many receipts on ``callers`` name the city of ``callees``, and their problems."""
    cities = {str(record["node_city"]) for _, record in callees.values()}
    receipts, problems = 0, []
    for (chain, seq), (offset, record) in sorted(callers.items(), key=lambda item: item[1][0]):
        kept = record.get("receipt")
        if record["direction"] != "OUTBOUND" or kept is None:
            continue
        if str(record["callee_city"]) not in cities:
            continue
        receipts += 1
        receipt = Receipt.from_record(kept)
        where = f"{record['callee_city']}'s chain {receipt.callee_chain!r} seq {receipt.callee_seq}"
        found = callees.get((receipt.callee_chain, receipt.callee_seq))
        if found is None:
            problems.append(
                ChainProblem(
                    "receipt-unmatched",
                    chain,
                    offset,
                    seq,
                    f"receipt on {side} names {where}, which holds no record",
                )
            )
        elif (
            found[1]["hash"] != receipt.callee_hash
            or found[1].get("exchange_sha256") != receipt.exchange_sha256
        ):
            problems.append(
                ChainProblem(
                    "receipt-mismatch",
                    chain,
                    offset,
                    seq,
                    f"receipt on {side} names {where} (offset {found[0]}) with hash "
                    f"{receipt.callee_hash[:12]}…, the record there is "
                    f"{str(found[1]['hash'])[:12]}…",
                )
            )
    return receipts, problems


@dataclass(frozen=True, slots=True)
class CheckpointsHeld:
    """The heads of ``city``'s chains its peers hold, and the keys to check them with."""

    city: str
    checkpoints: Sequence[Checkpoint]
    keyring: AuditKeyring


def _check_checkpoints(
    by_chain: Mapping[str | None, Sequence[_Decoded]], held: CheckpointsHeld
) -> list[ChainProblem]:
    """Each chain reaches the newest head a peer holds and passes through every head held
    (the first that differs named; later ones of that chain differ too, by the chain)."""
    problems: list[ChainProblem] = []
    valid: dict[str | None, list[Checkpoint]] = {}
    for checkpoint in held.checkpoints:
        if checkpoint.city != held.city:
            continue
        if (why := checkpoint.problem(held.keyring)) is not None:
            problems.append(
                ChainProblem(
                    "bad-checkpoint",
                    checkpoint.chain,
                    None,
                    checkpoint.seq,
                    f"{_holder(checkpoint)} holds a head that is not the city's: {why}",
                )
            )
            continue
        valid.setdefault(checkpoint.chain, []).append(checkpoint)
    for chain, heads in sorted(valid.items(), key=lambda item: item[0] or ""):
        newest = max(heads, key=lambda h: h.seq)
        entries = by_chain.get(chain)
        if not entries:
            problems.append(
                ChainProblem(
                    "chain-deleted",
                    chain,
                    None,
                    newest.seq,
                    f"no record of the chain is on the topic; {_holder(newest)} holds its "
                    f"signed head seq {newest.seq}",
                )
            )
            continue
        by_seq = {e.seq: e for e in entries}
        last = max(entries, key=lambda e: e.seq)
        for head in sorted(heads, key=lambda h: h.seq):
            found = by_seq.get(head.seq)
            if found is not None and found.record["hash"] != head.hash:
                problems.append(
                    ChainProblem(
                        "rewritten",
                        chain,
                        found.offset,
                        head.seq,
                        f"hash {str(found.record['hash'])[:12]}… is not the "
                        f"{head.hash[:12]}… of the signed head {_holder(head)} holds",
                    )
                )
                break
        if last.seq < newest.seq:
            problems.append(
                ChainProblem(
                    "truncated",
                    chain,
                    last.offset,
                    last.seq + 1,
                    f"the chain ends at seq {last.seq}; {_holder(newest)} holds its signed "
                    f"head seq {newest.seq}, so seq {last.seq + 1}..{newest.seq} are gone",
                )
            )
    return problems


def _holder(checkpoint: Checkpoint) -> str:
    when = (
        ""
        if checkpoint.received_at is None
        else f" (received {checkpoint.received_at:%Y-%m-%d %H:%M:%S} UTC)"
    )
    return f"{checkpoint.holder or 'a peer'}{when}"


async def verify_topic(
    settings: Settings,
    topic: str,
    keyring: AuditKeyring | None = None,
    checkpoints: CheckpointsHeld | None = None,
) -> VerifyReport:
    return verify_chain(
        await read_audit_topic(settings, topic), keyring=keyring, checkpoints=checkpoints
    )
