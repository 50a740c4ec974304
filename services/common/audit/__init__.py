"""The hash-chained audit log of peer calls on ``audit.peer-calls.v1``, and its verifier.

Every peer call a node serves is one ``PeerCallAudit`` record (schemas/avro/PeerCallAudit).
Records form a chain: ``seq`` increases by exactly one, ``prev_hash`` is the previous
record's ``hash``, and ``hash`` is the lowercase hex SHA-256 of the ASCII ``prev_hash``
followed by the record's Avro single-object encoding with ``hash`` set to ``""`` (the
schema's own definition). Changing a record breaks its hash, or — if the forger also fixed
that hash — the link from the next record; removing a record leaves a gap in ``seq``;
reordering puts a ``seq`` out of place. :func:`verify_chain` names each such position.
Each record is hashed under its own writer schema (named by its fingerprint), so one chain
may hold records of several schema versions (v1 without ``denial_code``, v2 with it, v3 with
``caller_role`` too, v4 with ``subjects``: each subject of a batch call and its consent, v5
with ``exchange_sha256`` and ``receipt``) and still verify.

**One writer per chain.** The topic has one partition, so the broker keeps one total order,
but a chain can only be extended by one writer at a time. A node runs several peer-facing
services; each writes its own chain, named in the Kafka key as ``<chain>:<seq>`` (the bare
decimal ``<seq>`` when the node has a single writer and passes ``chain=None``). The verifier
checks every chain of the topic independently. A writer resumes its chain after a restart
from the last record of that chain on the topic.

**Nothing served is missing.** A node answers a peer call only once the broker has
acknowledged its record (the producers of ``services/common/kafka.py`` send with
``acks=all``), so a node killed at any moment leaves on the topic a record for every call it
served. The records of many concurrent calls still go in one batch: a call waits for the
batch its record is in (``writer``). A refusal is the exception: grpc.aio sends it as it is
made and its record follows, and it is answered even when that record cannot be delivered;
a call that would have succeeded is failed instead.

**Signatures.** A hash chain alone does not say who wrote it: anyone who can write the
topic can extend a chain with valid hashes. So each node signs its chains with its Ed25519
audit key (``<city>.audit.key``; ``signing.py``): the last record of every batch a writer
sends carries, in the Kafka header ``creditlink-audit-signature``, ``<key id>.<signature>``
over the city, the chain, the record's ``seq`` and its ``hash``. The hash chains every earlier
record, so one signature vouches for the chain up to it; the record itself is unchanged (the
signature is not in the hashed encoding). With the cities' published keys
(``<city>.audit.pub``, and ``<city>.audit.<key id>.pub`` for a rotated one) the verifier also
checks each signature (``bad-signature``: another key, another city's key, or not verifying)
and that no record lies after the chain's last valid signature (``unsigned``: records appended
without the key). A node that died between two produce requests of one batch leaves its last
records unsigned until it restarts, resumes the chain and signs the next batch. What the
signatures cannot show alone — a truncated tail, a deleted chain, a rewrite signed with a
stolen key — needs the heads its peers hold: each lists node hands its city's signed heads to
every peer, which keeps them (``checkpoints``), and ``verify --against-peers`` names where a
chain no longer passes through a held head (``truncated``, ``chain-deleted``, ``rewritten``;
docs/trust.md, "Checkpoints held by peers").

**Receipts.** An answered call also gets the node's signed receipt in its trailer (its chain
position, the record's hash and the digest of the exchange it recorded, PeerCallAudit v5), and
the calling node keeps it in an OUTBOUND record of its own chain (services/common/peer/
outbound.py), so each call is on both cities' chains; ``verify --receipts-with`` checks two
cities' chains against each other's receipts (docs/trust.md, "Receipts").

    python -m services.common.audit verify --bootstrap 127.0.0.1:19092 \\
        --topic suzhou.audit.peer-calls.v1 --keys deploy/local/certs

**Exports.** ``export`` writes the records of some China days as one file signed with the
city's audit key: each chain's raw records from an anchor (the hash the first one chains to),
run on to the next head signature, and a signed manifest; ``verify-export`` checks it offline
with the published keys, each chain by :func:`verify_chain` from its anchor
(docs/audit-export.md).

The package: ``chain`` (keys, hash, entries), ``writer``, ``signing``, ``read``, ``verify``,
``heads`` and ``checkpoints``, ``query``, ``export`` and ``cli``; this module re-exports their
public names.
"""

from __future__ import annotations

from services.common.audit.chain import (
    EVENT_TYPE as EVENT_TYPE,
)
from services.common.audit.chain import (
    GENESIS_HASH as GENESIS_HASH,
)
from services.common.audit.chain import (
    SCHEMA as SCHEMA,
)
from services.common.audit.chain import (
    AuditEntry as AuditEntry,
)
from services.common.audit.chain import (
    AuditUnavailable as AuditUnavailable,
)
from services.common.audit.chain import (
    chain_hash as chain_hash,
)
from services.common.audit.chain import (
    format_key as format_key,
)
from services.common.audit.chain import (
    parse_key as parse_key,
)
from services.common.audit.cli import (
    main as main,
)
from services.common.audit.export import (
    BundleUnreadable as BundleUnreadable,
)
from services.common.audit.export import (
    ExportCheck as ExportCheck,
)
from services.common.audit.export import (
    build_bundle as build_bundle,
)
from services.common.audit.export import (
    verify_bundle as verify_bundle,
)
from services.common.audit.read import (
    AuditMessage as AuditMessage,
)
from services.common.audit.read import (
    read_audit_topic as read_audit_topic,
)
from services.common.audit.read import (
    read_chain_tail as read_chain_tail,
)
from services.common.audit.verify import (
    ChainProblem as ChainProblem,
)
from services.common.audit.verify import (
    ChainSummary as ChainSummary,
)
from services.common.audit.verify import (
    VerifyReport as VerifyReport,
)
from services.common.audit.verify import (
    verify_chain as verify_chain,
)
from services.common.audit.verify import (
    verify_topic as verify_topic,
)
from services.common.audit.writer import (
    AuditChainWriter as AuditChainWriter,
)
from services.common.audit.writer import (
    ChainLock as ChainLock,
)
from services.common.audit.writer import (
    QueuedAuditLog as QueuedAuditLog,
)
from services.common.audit.writer import (
    SharedChainWriter as SharedChainWriter,
)
from services.common.topic_names import AUDIT_TOPIC as AUDIT_TOPIC
