"""Replication profiles of the catalogue: what each gives a topic, and what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.common.topics import (
    CATALOGUE,
    MIN_INSYNC_REPLICAS,
    Drift,
    Replication,
    load_catalogue,
    replication_profiles,
)


def test_development_is_one_broker_and_production_three_replicas_min_isr_two() -> None:
    assert replication_profiles() == {
        "development": Replication(replicas=1, min_insync_replicas=1),
        "production": Replication(replicas=3, min_insync_replicas=2),
    }
    assert {spec.replication for spec in load_catalogue()} == {Replication(1, 1)}
    production = load_catalogue(profile="production")
    assert {spec.replication for spec in production} == {Replication(3, 2)}
    # The topic's min.insync.replicas is pinned, not left to the broker's default.
    assert {spec.topic_configs()[MIN_INSYNC_REPLICAS] for spec in production} == {"2"}


def test_an_unknown_profile_is_refused_with_the_known_ones() -> None:
    with pytest.raises(
        ValueError, match=r"no replication profile 'staging'.*development, production"
    ):
        load_catalogue(profile="staging")


def test_a_profile_needing_more_in_sync_replicas_than_it_has_is_refused(tmp_path: Path) -> None:
    catalogue = yaml.safe_load(CATALOGUE.read_text(encoding="utf-8"))
    catalogue["replication"]["production"]["min_insync_replicas"] = 4
    changed = tmp_path / "topics.yaml"
    changed.write_text(yaml.safe_dump(catalogue, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ValueError, match="'production' needs 1 <= min_insync_replicas <= replicas"):
        load_catalogue(changed)


def test_drift_in_replicas_names_what_fixes_it() -> None:
    replicas = Drift("suzhou.credit.records.v1", "replicas", "3", "1")
    assert not replicas.by_config
    assert str(replicas) == (
        "suzhou.credit.records.v1: replicas is 1, catalogue says 3 (alter-configs cannot add "
        "replicas; reassign the partitions (kafka-reassign-partitions.sh))"
    )
    assert Drift("t", MIN_INSYNC_REPLICAS, "2", "1").by_config
