"""Mutual recognition of city personal credit scores (DESIGN §1 ``scores``, §4 *Scores*).

See docs/score-linking.md. Pure logic lives in ``linking``, ``scales``, ``recognition`` and
``importer``; ``stream`` (faust), ``servicer`` (gRPC) and ``node`` are the wiring.
"""
