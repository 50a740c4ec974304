"""Mutual recognition of city personal credit scores (docs/design.md §1.2, §4.6).

See docs/score-linking.md. Pure logic lives in ``linking``, ``scales``, ``recognition`` and
``importer``; ``stream`` (faust), ``servicer`` (gRPC) and ``node`` are the wiring.
"""
