"""Record intake: departments' credit records into the city node (docs/design.md §1.2).

The folders follow a record's road, in reading order:

- ``read/``: the bytes of a file (``files``: CSV and JSON Lines) or a gRPC message
  (``grpc_codec``) into submissions;
- ``validate/``: the rules of 双公示 on one submission (``validation``, ``vocabulary``);
- ``classify/``: new, duplicate or correction against the ``ledger`` of what was published,
  kept current from the node's own topics (``ledger_sync``);
- ``encode/``: the events (``events``, ``record_encoding``) and the public view
  (``publicity``);
- ``publish/``: the transactional producer (``publisher``) and the partition of a record
  (``partitioning``);
- ``figures/``: the disclosure-quality figures (``quality``) and their queries (``queries``).

Wiring, at the top: ``prepare`` and ``preparers`` (chunks of a bulk file worked in
processes), ``pipeline`` (decide, encode and publish one batch), ``node``, ``importer``,
``server`` and ``__main__``.

Per-record types are ``@dataclass(slots=True)`` and not frozen: one is built per record and
a frozen dataclass's ``__init__`` costs about three times as much, and intake's CPU per
record is its throughput. They are treated as immutable all the same.
"""
