"""Record intake: departments' credit records into the city node (docs/design.md §1.2).

Every batch — a gRPC request, a stream's micro-batch, a chunk of a bulk file — takes one
road, each step once and in order (docs/design.md §1.4); the folders follow it:

- ``read/``: the bytes of a file (``files``: the one CSV reader, and JSON Lines) or a gRPC
  message (``grpc_codec``) into submissions;
- ``validate/``: the rules of 双公示 on one submission (``validation``, ``vocabulary``):
  plain validated records, nothing of the wire format;
- ``classify/``: new, duplicate or correction (``decide``) against the ``ledger`` of what
  was published, kept current from the node's own topics (``ledger_sync``);
- ``encode/``: the content's encoding and hash (``record_encoding``), a batch's events
  (``batch``, ``events``) and the public view (``publicity``);
- ``publish/``: the transactional producer (``publisher``) and the partition of a record
  (``partitioning``);
- ``figures/``: the disclosure-quality figures (``quality``) and their queries (``queries``).

Wiring, at the top: ``prepare`` (validated rows hashed and encoded as first versions: in
worker processes for a file's chunks, ``preparers``, in-process for a request),
``pipeline`` (prepare, classify, encode, publish, remember: one batch), ``node``,
``importer``, ``server`` and ``__main__``.

Per-record types are ``@dataclass(slots=True)`` and not frozen: one is built per record and
a frozen dataclass's ``__init__`` costs about three times as much, and intake's CPU per
record is its throughput. They are treated as immutable all the same.
"""
