"""Record intake: departments' credit records into the city node (docs/design.md §1.2).

Modules, logic first and wiring last: ``vocabulary``, ``validation``, ``publicity``,
``files``, ``grpc_codec``, ``ledger``, ``quality``, ``events`` are pure; ``publisher``,
``ledger_sync``, ``pipeline``, ``node``, ``importer``, ``server``, ``queries`` and
``__main__`` talk to Kafka and gRPC.
"""
