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
    """The newest record carrying a head signature, per chain, in ``messages``."""
    heads: dict[str | None, Checkpoint] = {}
    for message in messages:
        if message.signature is None:
            continue
        chain, seq = parse_key(message.key)
        try:
            record = serde.decode(message.value, reader=serde.writer_of(message.value))
        except (SerdeError, ValueError):
            continue  # the verifier names it; a checkpoint is only ever of a decodable head
        if seq is None or record["seq"] != seq:
            continue
        known = heads.get(chain)
        if known is None or known.seq < seq:
            heads[chain] = Checkpoint(
                city=str(record["node_city"]),
                chain=chain,
                seq=seq,
                hash=str(record["hash"]),
                signature=message.signature.decode("ascii", "replace"),
            )
    return heads
