"""Record intake: departments' credit records into the city node (DESIGN §1, issue 3).

Modules, logic first and wiring last: ``vocabulary``, ``validation``, ``publicity``,
``files``, ``grpc_codec``, ``ledger``, ``quality``, ``events`` are pure; ``publisher``,
``ledger_sync``, ``pipeline``, ``node``, ``importer``, ``server``, ``queries`` and
``__main__`` talk to Kafka and gRPC.
"""
