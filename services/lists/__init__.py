"""The lists service: red, black and watch list entries of a city node, mirrored region-wide.

It turns the node's list-decision records (``credit.records.v1``) into list entries, publishes
them (``credit.lists.v1``, ``credit.list-changes.v1``), serves its own entries to peer cities
(``ListSyncService``), mirrors every peer's entries, repairs drift by anti-entropy, and answers
region-wide credit checks with the reward and punishment measures of a scenario
(``CreditCheckService``). docs/list-sync.md explains the design.

Modules, in the order a reader meets them: ``model`` (entries and changes), ``decisions``
(what a record or a peer's change does to an entry), ``cursor``, ``measures``, ``store``
(RocksDB), ``book`` (the single writer), ``kafka_io``, ``convert`` (protobuf), ``sync_server``,
``check_server``, ``mirror`` (pulling and reconciling peers), ``serving`` (answering peer calls
from more processes), ``node`` (wiring), ``config``.
"""
