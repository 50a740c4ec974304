"""The names of the catalogue's topics (``schemas/topics.yaml``), for the code that uses them.

Each name is checked against the catalogue when this module is imported, so a topic renamed
or dropped there fails every service at start instead of producing to a topic nobody
provisions. The per-domain alert topics are named by ``services/alerts/model.py`` from the
domain (``supervision.alerts.<domain>.v1``).
"""

from __future__ import annotations

from functools import cache
from typing import Final

from services.common.topics import load_catalogue


@cache
def _catalogued_names() -> frozenset[str]:
    return frozenset(spec.name for spec in load_catalogue())


def catalogued(name: str) -> str:
    """``name``, if the catalogue has a topic of that name."""
    if name not in _catalogued_names():
        raise LookupError(f"topic {name!r} is not in schemas/topics.yaml")
    return name


RECORDS_TOPIC: Final = catalogued("credit.records.v1")
REJECTED_TOPIC: Final = catalogued("credit.records.rejected.v1")
QUALITY_TOPIC: Final = catalogued("quality.disclosure.v1")
LISTS_TOPIC: Final = catalogued("credit.lists.v1")
CHANGES_TOPIC: Final = catalogued("credit.list-changes.v1")
SCORES_TOPIC: Final = catalogued("credit.scores.v1")
SCALES_TOPIC: Final = catalogued("credit.score-scales.v1")
RECOGNITIONS_TOPIC: Final = catalogued("credit.score-recognitions.v1")
STATUS_TOPIC: Final = catalogued("supervision.alert-status.v1")
AUDIT_TOPIC: Final = catalogued("audit.peer-calls.v1")
REVOCATIONS_TOPIC: Final = catalogued("consent.revocations.v1")
CHECKPOINTS_TOPIC: Final = catalogued("audit.checkpoints.v1")
