"""Schema evolution: resolution works across versions, the compatibility check can fail, the
repository's schemas pass their catalogue modes, and the catalogue and schemas agree."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.avro import (
    SCHEMA_DIR,
    TOPICS_FILE,
    AvroSerde,
    CompatibilityMode,
    SchemaStore,
    check_compatibility,
    load_example,
    main,
    read_catalogue_bindings,
)

STORE = SchemaStore.load()
CATALOGUE: dict[str, Any] = yaml.safe_load(TOPICS_FILE.read_text(encoding="utf-8"))
TOPICS: list[dict[str, Any]] = CATALOGUE["topics"]


def _store_with_versions(tmp_path: Path, name: str, *versions: dict[str, Any]) -> SchemaStore:
    folder = tmp_path / name
    folder.mkdir(parents=True)
    for number, schema in enumerate(versions, start=1):
        (folder / f"v{number}.avsc").write_text(json.dumps(schema), encoding="utf-8")
    return SchemaStore(tmp_path)


def _score_entry_v1() -> dict[str, Any]:
    return copy.deepcopy(dict(STORE.latest("ScoreEntry").schema))


def _with_field(schema: dict[str, Any], field: dict[str, Any]) -> dict[str, Any]:
    evolved = copy.deepcopy(schema)
    evolved["fields"].append(field)
    return evolved


VALID_UNTIL_WITH_DEFAULT = {
    "name": "valid_until",
    "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}],
    "default": None,
    "doc": "When the score expires.",
}
REGION_WITHOUT_DEFAULT = {"name": "region", "type": "string", "doc": "Region of the scale."}


def test_v1_data_reads_as_v2_with_the_new_fields_default(tmp_path: Path) -> None:
    store = _store_with_versions(
        tmp_path,
        "ScoreEntry",
        _score_entry_v1(),
        _with_field(_score_entry_v1(), VALID_UNTIL_WITH_DEFAULT),
    )
    serde = AvroSerde(store)
    example = load_example("ScoreEntry", store=store)  # converted per v2: valid_until None
    written_v1 = serde.encode(
        "ScoreEntry", {k: v for k, v in example.items() if k != "valid_until"}, version=1
    )
    assert written_v1[2:10] == store.version("ScoreEntry", 1).fingerprint

    as_v2 = serde.decode(written_v1)  # reader defaults to the latest version
    assert as_v2 == {**example, "valid_until": None}

    # And the other way: a consumer still on v1 reads v2 data, ignoring the new field.
    written_v2 = serde.encode("ScoreEntry", example)
    assert written_v2[2:10] == store.version("ScoreEntry", 2).fingerprint
    as_v1 = serde.decode(written_v2, reader=store.version("ScoreEntry", 1))
    assert "valid_until" not in as_v1
    assert as_v1 == {k: v for k, v in example.items() if k != "valid_until"}

    assert check_compatibility(store, "ScoreEntry", CompatibilityMode.FULL_TRANSITIVE) == []


def test_adding_a_field_without_default_breaks_backward_compatibility(tmp_path: Path) -> None:
    store = _store_with_versions(
        tmp_path,
        "ScoreEntry",
        _score_entry_v1(),
        _with_field(_score_entry_v1(), REGION_WITHOUT_DEFAULT),
    )
    problems = check_compatibility(store, "ScoreEntry", "BACKWARD_TRANSITIVE")
    assert len(problems) == 1
    assert "v2 cannot read data written with v1" in problems[0]
    assert "region" in problems[0]
    # Old readers simply ignore the new field, so FORWARD holds; NONE checks nothing.
    assert check_compatibility(store, "ScoreEntry", CompatibilityMode.FORWARD) == []
    assert check_compatibility(store, "ScoreEntry", CompatibilityMode.NONE) == []
    assert len(check_compatibility(store, "ScoreEntry", CompatibilityMode.FULL)) == 1


def test_transitive_modes_check_the_whole_history(tmp_path: Path) -> None:
    v1 = _with_field(_score_entry_v1(), {"name": "band", "type": "string", "doc": "x"})
    v2 = _score_entry_v1()  # drops band: v2 reads v1 fine
    v3 = _with_field(_score_entry_v1(), {"name": "band", "type": "int", "default": 0, "doc": "x"})
    store = _store_with_versions(tmp_path, "ScoreEntry", v1, v2, v3)
    assert check_compatibility(store, "ScoreEntry", "BACKWARD") == []
    problems = check_compatibility(store, "ScoreEntry", "BACKWARD_TRANSITIVE")
    assert problems
    assert all("v3 cannot read data written with v1" in p for p in problems)


def test_enum_default_lets_old_readers_read_new_symbols(tmp_path: Path) -> None:
    v1 = copy.deepcopy(dict(STORE.latest("AlertStatusChange").schema))
    v2 = copy.deepcopy(v1)
    status_enum = next(f for f in v2["fields"] if f["name"] == "status")["type"]
    status_enum["symbols"].append("REOPENED")
    store = _store_with_versions(tmp_path, "AlertStatusChange", v1, v2)
    assert check_compatibility(store, "AlertStatusChange", "FULL_TRANSITIVE") == []

    serde = AvroSerde(store)
    change = {**load_example("AlertStatusChange", store=store), "status": "REOPENED"}
    old_reader = store.version("AlertStatusChange", 1)
    assert (
        serde.decode(serde.encode("AlertStatusChange", change), reader=old_reader)["status"]
        == "UNKNOWN"
    )


def test_enum_without_default_cannot_grow_under_forward_modes(tmp_path: Path) -> None:
    v1 = copy.deepcopy(dict(STORE.latest("ListEntry").schema))
    v2 = copy.deepcopy(v1)
    next(f for f in v2["fields"] if f["name"] == "list_type")["type"]["symbols"].append("GREY")
    store = _store_with_versions(tmp_path, "ListEntry", v1, v2)
    assert check_compatibility(store, "ListEntry", "BACKWARD_TRANSITIVE") == []
    problems = check_compatibility(store, "ListEntry", "FULL_TRANSITIVE")
    assert problems
    assert "GREY" in problems[0]


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="SIDEWAYS"):
        check_compatibility(STORE, "CreditRecord", "SIDEWAYS")


# --- the repository ------------------------------------------------------------------------


@pytest.mark.parametrize("binding", read_catalogue_bindings(), ids=lambda b: b.topic)
def test_repository_schemas_pass_their_catalogue_mode(binding: Any) -> None:
    assert check_compatibility(STORE, binding.value, binding.compatibility) == []


def test_check_command_passes_on_the_repository(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("OK") for line in lines) == len(STORE.names())
    assert lines[-1] == f"{len(STORE.names())} schemas, 0 problems"


def test_check_command_fails_on_an_incompatible_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schemas = tmp_path / "avro"
    for version in STORE:
        target = schemas / version.record_name
        target.mkdir(parents=True, exist_ok=True)
        (target / version.path.name).write_text(version.path.read_text(encoding="utf-8"))
    broken = _with_field(_score_entry_v1(), REGION_WITHOUT_DEFAULT)
    (schemas / "ScoreEntry" / "v2.avsc").write_text(json.dumps(broken), encoding="utf-8")

    assert main(["check", "--schemas", str(schemas), "--topics", str(TOPICS_FILE)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^PROBLEM\s+creditlink\.v1\.ScoreEntry", out, re.MULTILINE)
    assert "1 problems" in out


# --- the catalogue -------------------------------------------------------------------------

SUPERVISION_ALERT = "creditlink.v1.SupervisionAlert"
SIX_LINKED_DOMAINS = [
    "medical",
    "food-drug",
    "urban-management",
    "construction",
    "environment",
    "labour",
]


def test_every_topic_names_an_existing_schema_and_every_schema_has_a_topic() -> None:
    values = {topic["value"] for topic in TOPICS}
    assert values <= set(STORE.names())
    assert set(STORE.names()) <= values


def test_topics_are_well_formed() -> None:
    names = [topic["name"] for topic in TOPICS]
    assert len(names) == len(set(names))
    modes = {mode.value for mode in CompatibilityMode}
    for topic in TOPICS:
        assert not topic["name"].startswith(("suzhou.", "wuxi.", "changzhou.")), "no city prefix"
        assert re.fullmatch(r"[a-z]+(\.[a-z-]+)+\.v[0-9]+", topic["name"]), topic["name"]
        assert topic["description"].strip()
        assert topic["key"] in CATALOGUE["keys"], f"{topic['name']}: undocumented key"
        assert topic["partitions"] in (1, 3, 6)
        assert topic["cleanup_policy"] in ("delete", "compact", "compact,delete")
        assert isinstance(topic["retention_ms"], int)
        assert topic["retention_ms"] == -1 or topic["retention_ms"] > 0
        assert topic.get("compatibility", "BACKWARD_TRANSITIVE") in modes
        assert isinstance(topic.get("config", {}), dict)


def test_every_key_is_documented_with_an_example() -> None:
    used = {topic["key"] for topic in TOPICS}
    assert used == set(CATALOGUE["keys"])
    for name, key in CATALOGUE["keys"].items():
        assert key["description"].strip(), name
        assert str(key["example"]).strip(), name


def test_topics_the_design_names() -> None:
    by_name = {topic["name"]: topic for topic in TOPICS}
    for domain in SIX_LINKED_DOMAINS:
        assert by_name[f"supervision.alerts.{domain}.v1"]["value"] == SUPERVISION_ALERT
    for compacted in (
        "quality.disclosure.v1",
        "credit.lists.v1",
        "credit.scores.v1",
        "credit.score-scales.v1",
    ):
        assert by_name[compacted]["cleanup_policy"] == "compact"
    assert by_name["quality.disclosure.v1"]["key"] == "department_day"
    assert by_name["credit.records.v1"]["key"] == "subject_key"
    audit = by_name["audit.peer-calls.v1"]
    assert (audit["partitions"], audit["retention_ms"]) == (1, -1)


def test_alert_topics_cover_every_alert_domain_symbol() -> None:
    domain_enum = next(
        f["type"]
        for f in STORE.latest("SupervisionAlert").schema["fields"]
        if f["name"] == "domain"
    )
    alert_topics = {t["name"] for t in TOPICS if t["value"] == "creditlink.v1.SupervisionAlert"}
    linked = {s.lower().replace("_", "-") for s in domain_enum["symbols"][:6]}
    assert linked == set(SIX_LINKED_DOMAINS)
    expected = {f"supervision.alerts.{d}.v1" for d in linked} | {"supervision.alerts.general.v1"}
    assert alert_topics == expected


def test_schema_dir_is_the_one_the_catalogue_sits_next_to() -> None:
    assert SCHEMA_DIR.parent == TOPICS_FILE.parent
