"""A signed chain head as a peer holds it (:class:`Checkpoint`), and the newest signed head
of each chain on a topic (:func:`signed_heads`); checkpoints.py hands and keeps them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from services.common.audit.chain import parse_key
from services.common.audit.read import AuditMessage
from services.common.audit.signing import AuditKeyring
from services.common.avro import AvroSerde, SerdeError


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed head of ``city``'s ``chain`` at ``seq``, as ``holder`` keeps it."""

    city: str
    chain: str | None
    seq: int
    hash: str
    signature: str
    holder: str = ""
    received_at: datetime | None = None

    @property
    def key(self) -> str:
        return f"{self.city}:{self.chain or ''}:{self.seq}"

    def problem(self, keyring: AuditKeyring) -> str | None:
        """Why this is not ``city``'s signature of the head, or None if it is."""
        return keyring.problem(
            self.signature.encode("ascii", "replace"), self.city, self.chain, self.seq, self.hash
        )


def signed_heads(
    messages: Iterable[AuditMessage], serde: AvroSerde
) -> dict[str | None, Checkpoint]:
    """The signed record with the highest seq, per chain, in ``messages``.

    The seq is read from each key, so only that record is decoded (or, if it does not decode
    to the seq its key names, the next one down), not every batch head the messages hold.
    """
    candidates: dict[str | None, list[tuple[int, AuditMessage]]] = {}
    for message in messages:
        if message.signature is None:
            continue
        chain, seq = parse_key(message.key)
        if seq is not None:
            candidates.setdefault(chain, []).append((seq, message))
    heads: dict[str | None, Checkpoint] = {}
    for chain, signed in candidates.items():
        for seq, message in sorted(signed, key=lambda c: c[0], reverse=True):
            try:
                record = serde.decode(message.value, reader=serde.writer_of(message.value))
            except (SerdeError, ValueError):
                continue  # the verifier names it; a checkpoint is only ever of a decodable head
            if record["seq"] != seq:
                continue
            assert message.signature is not None
            heads[chain] = Checkpoint(
                city=str(record["node_city"]),
                chain=chain,
                seq=seq,
                hash=str(record["hash"]),
                signature=message.signature.decode("ascii", "replace"),
            )
            break
    return heads
