"""Topic names in code come from the catalogue, and a name it lacks is refused."""

from __future__ import annotations

import pytest

from services.common import topic_names
from services.common.topics import load_catalogue


def test_every_named_topic_is_in_the_catalogue() -> None:
    catalogue = {spec.name for spec in load_catalogue()}
    named = {value for key, value in vars(topic_names).items() if key.endswith("_TOPIC")}
    assert named
    assert named <= catalogue
    # Every catalogued topic but the per-domain alert topics has a name here.
    assert {n for n in catalogue - named if not n.startswith("supervision.alerts.")} == set()


def test_a_topic_not_in_the_catalogue_is_refused() -> None:
    with pytest.raises(LookupError, match=r"not in schemas/topics\.yaml"):
        topic_names.catalogued("credit.record.v1")
