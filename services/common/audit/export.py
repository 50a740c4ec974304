"""A city's audit of some China days as one signed file that anyone holding the cities'
published audit keys can verify offline (``python -m services.common.audit export`` and
``verify-export``; the format is docs/audit-export.md).

The file is JSON Lines: one line per record, in topic order, with the record's exact Kafka
value, key, offset and head signature; then one manifest line, signed with the city's audit
key, naming what the file holds and the SHA-256 of every byte before it. Each chain's records
are a run of consecutive ``seq`` that chains to an anchor (the ``seq`` and ``hash`` of the
record before the run), so its links verify without the records before it; the run is
extended past the range to the next valid head signature, so every record is vouched for by
one, or else the manifest names the tail that no signature covers yet.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Final

from services.common.audit.chain import parse_key
from services.common.audit.query import on_china_days
from services.common.audit.read import AuditMessage
from services.common.audit.signing import AuditKeyring, AuditSigner
from services.common.audit.verify import Anchor, VerifyReport, verify_chain
from services.common.avro import AvroSerde, SerdeError

FORMAT: Final = "creditlink-audit-export-v1"


class BundleUnreadable(ValueError):
    """The file is no audit export at all: nothing in it can be checked."""


def _canonical(value: object) -> bytes:
    """The one JSON encoding of ``value`` the file uses, so the verifier can insist on it."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _chain_name(chain: str | None) -> str:
    return "(default)" if chain is None else chain


# --- export -------------------------------------------------------------------------------
def build_bundle(
    messages: Sequence[AuditMessage],
    *,
    city: str,
    city_code: str,
    topic: str,
    since: date,
    until: date,
    signer: AuditSigner,
    keyring: AuditKeyring,
    exported_at: datetime,
    serde: AvroSerde | None = None,
) -> bytes:
    """The export of ``messages`` (a whole audit topic, in order) for China days ``since`` to
    ``until``. ``keyring`` tells which head signatures are valid (those the range is extended
    to)."""
    serde = serde or AvroSerde()
    by_chain: dict[str | None, list[tuple[AuditMessage, dict[str, Any] | None]]] = {}
    for message in messages:
        try:
            record: dict[str, Any] | None = serde.decode(message.value)
        except SerdeError:
            record = None  # the verifier names it, if it is in a run exported
        by_chain.setdefault(parse_key(message.key)[0], []).append((message, record))
    chosen: list[AuditMessage] = []
    anchors: dict[str | None, Anchor] = {}
    last_in_range: dict[str | None, int] = {}
    for chain, entries in by_chain.items():
        inside = [
            (i, record)
            for i, (_, record) in enumerate(entries)
            if record is not None and on_china_days(record["at"], since, until)
        ]
        if not inside:
            continue
        (first, head), (last, tail) = inside[0], inside[-1]
        # A record out of the days between two in it (a clock stepped back) stays: a run
        # with a hole could not be checked link by link.
        signed = next(
            (
                i
                for i in range(last, len(entries))
                if _validly_signed(entries[i], city_code, keyring)
            ),
            last,
        )
        run = entries[first : signed + 1]
        anchors[chain] = (int(head["seq"]) - 1, str(head["prev_hash"]))
        last_in_range[chain] = int(tail["seq"])
        chosen.extend(message for message, _ in run)
    chosen.sort(key=lambda m: m.offset)
    records_part = b"".join(_record_line(m) + b"\n" for m in chosen)
    report = verify_chain(chosen, serde, keyring, anchors, city_code)
    manifest = {
        "format": FORMAT,
        "city": city,
        "city_code": city_code,
        "topic": topic,
        "since": since.isoformat(),
        "until": until.isoformat(),
        "exported_at": exported_at.isoformat(timespec="seconds"),
        "key_id": signer.key_id,
        "records": len(chosen),
        "records_sha256": hashlib.sha256(records_part).hexdigest(),
        "chains": [
            {
                "chain": chain,
                "anchor_seq": anchors[chain][0],
                "anchor_hash": anchors[chain][1],
                "first_seq": summary.first_seq,
                "last_seq": summary.last_seq,
                "last_seq_in_range": last_in_range[chain],
                "records": summary.records,
                "unsigned_from": _unsigned_from(report, chain),
            }
            for chain, summary in sorted(report.chains.items(), key=lambda c: c[0] or "")
        ],
    }
    signature = signer.sign_export(_canonical(manifest))
    return records_part + _canonical({"manifest": manifest, "signature": signature}) + b"\n"


def _validly_signed(
    entry: tuple[AuditMessage, dict[str, Any] | None], city_code: str, keyring: AuditKeyring
) -> bool:
    message, record = entry
    if message.signature is None or record is None:
        return False
    chain = parse_key(message.key)[0]
    problem = keyring.problem(
        message.signature, city_code, chain, int(record["seq"]), str(record["hash"])
    )
    return problem is None


def _record_line(message: AuditMessage) -> bytes:
    signature = None if message.signature is None else _b64(message.signature)
    line = {"offset": message.offset, "key": message.key, "value": _b64(message.value)}
    return _canonical({**line, "signature": signature})


def _unsigned_from(report: VerifyReport, chain: str | None) -> int | None:
    """The first ``seq`` of the chain's tail that no valid head signature covers."""
    return next((p.seq for p in report.problems if p.kind == "unsigned" and p.chain == chain), None)


# --- verify-export ------------------------------------------------------------------------
@dataclass(slots=True)
class ExportCheck:
    """What :func:`verify_bundle` checked, and every problem with its place in the file."""

    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_bundle(
    data: bytes,
    keyring: AuditKeyring,
    codes: Mapping[str, str],
    serde: AvroSerde | None = None,
) -> ExportCheck:
    """Check an export with the cities' published keys (``codes``: city key -> division code).

    Raises :class:`BundleUnreadable` when ``data`` has no manifest line to check against."""
    if not data.endswith(b"\n"):
        raise BundleUnreadable("it does not end with a line break: not a whole export")
    cut = data.rfind(b"\n", 0, len(data) - 1) + 1
    records_part, manifest_line = data[:cut], data[cut:-1]
    manifest, signature = _manifest(manifest_line)
    line_count = records_part.count(b"\n")
    manifest_at = f"manifest (line {line_count + 1})"
    check = ExportCheck()
    city, city_code = manifest["city"], manifest["city_code"]
    check.checked.append(
        f"manifest: {city} ({city_code}), topic {manifest['topic']}, China days "
        f"{manifest['since']}..{manifest['until']}, exported {manifest['exported_at']}, "
        f"key {manifest['key_id']}"
    )
    if _canonical({"manifest": manifest, "signature": signature}) != manifest_line:
        check.problems.append(f"{manifest_at}: not in its one JSON encoding (changed)")
    if codes.get(city) != city_code:
        check.problems.append(f"{manifest_at}: {city} is not division {city_code} in the region")
    if not signature.startswith(f"{manifest['key_id']}."):
        check.problems.append(f"{manifest_at}: signed with another key than its key_id")
    if (wrong := keyring.export_problem(signature, city_code, _canonical(manifest))) is not None:
        check.problems.append(f"{manifest_at}: signature: {wrong}")
    else:
        check.checked.append(f"manifest signature: {city}'s audit key {manifest['key_id']}")
    digest = hashlib.sha256(records_part).hexdigest()
    if digest != manifest["records_sha256"]:
        check.problems.append(
            f"lines 1..{line_count}: SHA-256 {digest} is not the manifest's "
            f"{manifest['records_sha256']}"
        )
    else:
        check.checked.append(f"records: SHA-256 {digest} of lines 1..{line_count}")
    messages, line_of = _records(records_part.splitlines(), check)
    if len(messages) != manifest["records"]:
        check.problems.append(
            f"{manifest_at}: names {manifest['records']} records, the file holds {len(messages)}"
        )
    chains = {c["chain"]: c for c in manifest["chains"]}
    anchors = {chain: (c["anchor_seq"], c["anchor_hash"]) for chain, c in chains.items()}
    report = verify_chain(messages, serde, keyring, anchors, city_code)
    for problem in report.problems:
        declared = chains.get(problem.chain, {}).get("unsigned_from")
        if not (problem.kind == "unsigned" and problem.seq == declared):
            where = "" if problem.offset is None else f"line {line_of[problem.offset]}: "
            check.problems.append(f"{where}{problem}")
    _compare_chains(report, chains, manifest_at, check)
    return check


def _manifest(line: bytes) -> tuple[dict[str, Any], str]:
    try:
        parsed = json.loads(line)
        manifest, signature = parsed["manifest"], parsed["signature"]
        for name, kind in _MANIFEST_FIELDS.items():
            if not isinstance(manifest[name], kind):
                raise TypeError(f"{name} is not {kind}")
        for chain in manifest["chains"]:
            for name, kinds in _CHAIN_FIELDS.items():
                if not isinstance(chain[name], kinds):
                    raise TypeError(f"chain {name} is not {kinds}")
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleUnreadable(f"its last line is not an export's manifest ({exc!r})") from exc
    if manifest["format"] != FORMAT or not isinstance(signature, str):
        raise BundleUnreadable(f"not a {FORMAT} file (format {manifest['format']!r})")
    return manifest, signature


_MANIFEST_FIELDS: Final[Mapping[str, type]] = {
    "format": str,
    "city": str,
    "city_code": str,
    "topic": str,
    "since": str,
    "until": str,
    "exported_at": str,
    "key_id": str,
    "records": int,
    "records_sha256": str,
    "chains": list,
}
_CHAIN_FIELDS: Final[Mapping[str, type | tuple[type, ...]]] = {
    "chain": (str, type(None)),
    "anchor_seq": int,
    "anchor_hash": str,
    "first_seq": int,
    "last_seq": int,
    "records": int,
    "unsigned_from": (int, type(None)),
}


def _records(
    lines: Iterable[bytes], check: ExportCheck
) -> tuple[list[AuditMessage], dict[int, int]]:
    """The record lines as topic messages, and the file line of each offset."""
    messages: list[AuditMessage] = []
    line_of: dict[int, int] = {}
    for number, line in enumerate(lines, start=1):
        try:
            fields = json.loads(line)
            signature = fields["signature"]
            message = AuditMessage(
                offset=int(fields["offset"]),
                key=str(fields["key"]),
                value=base64.b64decode(fields["value"], validate=True),
                signature=None if signature is None else base64.b64decode(signature, validate=True),
            )
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            check.problems.append(f"line {number}: not a record ({exc!r})")
            continue
        line_of.setdefault(message.offset, number)
        messages.append(message)
    return messages, line_of


def _compare_chains(
    report: VerifyReport, chains: Mapping[str | None, Any], manifest_at: str, check: ExportCheck
) -> None:
    """Each chain of the manifest is in the file as it says, and no other."""
    for chain in sorted(set(chains) | set(report.chains), key=lambda c: c or ""):
        named, held = chains.get(chain), report.chains.get(chain)
        name = _chain_name(chain)
        if named is None or held is None:
            where = "the file, not the manifest" if named is None else "the manifest, not the file"
            check.problems.append(f"{manifest_at}: chain {name} is in {where}")
            continue
        said = (named["first_seq"], named["last_seq"], named["records"])
        if said != (held.first_seq, held.last_seq, held.records):
            check.problems.append(
                f"{manifest_at}: chain {name} is seq {said[0]}..{said[1]} ({said[2]} records) "
                f"there, seq {held.first_seq}..{held.last_seq} ({held.records}) in the file"
            )
            continue
        tail = named["unsigned_from"]
        signed = "every record signed"
        if tail is not None:
            span = f"{tail}" if tail == held.last_seq else f"{tail}..{held.last_seq}"
            signed = f"seq {span} not yet signed (the manifest says so)"
        check.checked.append(
            f"chain {name}: {held.records} records, seq {held.first_seq}..{held.last_seq} "
            f"from the anchor seq {named['anchor_seq']} {named['anchor_hash'][:16]}…, {signed}"
        )
        # An undeclared unsigned tail is already a problem of verify_chain's.
        if tail is not None and tail != _unsigned_from(report, chain):
            check.problems.append(
                f"{manifest_at}: chain {name}: the manifest says unsigned from seq {tail}, "
                f"the file from seq {_unsigned_from(report, chain)}"
            )
