"""Event contracts, topic by topic, as a consumer in another city sees them: the catalogue's
value schema decodes the example payload, the headers are a CloudEvent by the official SDK,
the AsyncAPI document describes the topic — and an incompatible schema change, made in a
scratch copy, fails the compatibility check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.v1.event import CloudEvent

from contracts.asyncapi import DOCUMENT, build, render
from services.common.avro import (
    AvroSerde,
    SchemaStore,
    check_catalogue,
    load_example,
    read_catalogue_bindings,
)
from services.common.cloudevents import build_headers, source_for
from services.common.settings import REPO_ROOT
from services.common.topics import CATALOGUE, load_catalogue
from tests.unit.test_cloudevents import AvroBytesFormat

TOPICS = load_catalogue()
SERDE = AvroSerde(SchemaStore.load())


@pytest.mark.parametrize("topic", TOPICS, ids=lambda t: t.name)
def test_example_event_of_every_topic_is_a_cloudevent_that_decodes(topic: Any) -> None:
    record_name = topic.value.rsplit(".", 1)[-1]
    example = load_example(record_name)
    value = SERDE.encode(topic.value, example)
    headers = build_headers(
        event_type=f"cn.creditlink.contract-test.{record_name}.v1",
        source=source_for("320500", "contract-test"),
        subject="key",
        data_schema=SERDE.data_schema_uri(topic.value),
    )
    message = ce_kafka.KafkaMessage(headers=dict(headers), key=b"key", value=value)
    event = ce_kafka.from_binary(message, AvroBytesFormat(), CloudEvent)
    assert event.get_dataschema() == SERDE.data_schema_uri(topic.value)
    assert SERDE.decode(event.get_data()) == example


def test_asyncapi_document_is_current_and_covers_every_topic() -> None:
    document = build()
    assert DOCUMENT.read_text(encoding="utf-8") == render(document)
    assert set(document["channels"]) == {t.name for t in TOPICS}
    for topic in TOPICS:
        channel = document["channels"][topic.name]
        assert channel["bindings"]["kafka"]["partitions"] == topic.partitions
        (reference,) = (m["$ref"] for m in channel["messages"].values())
        message = _resolve(document, reference)
        assert message["payload"]["schema"]["name"] == topic.value.rsplit(".", 1)[-1]
        assert _resolve(document, message["headers"]["$ref"])["properties"]["ce_dataschema"]
    for operation in document["operations"].values():
        _resolve(document, operation["channel"]["$ref"])
        for reference in operation["messages"]:
            _resolve(document, reference["$ref"])


def _resolve(document: dict[str, Any], reference: str) -> dict[str, Any]:
    node: Any = document
    for part in reference.removeprefix("#/").split("/"):
        node = node[part]
    assert isinstance(node, dict)
    return node


def test_asyncapi_check_fails_when_the_catalogue_changes(tmp_path: Path) -> None:
    catalogue = yaml.safe_load(CATALOGUE.read_text(encoding="utf-8"))
    catalogue["topics"][0]["partitions"] += 1
    changed = tmp_path / "topics.yaml"
    changed.write_text(yaml.safe_dump(catalogue, allow_unicode=True), encoding="utf-8")
    assert render(build(load_catalogue(changed))) != DOCUMENT.read_text(encoding="utf-8")


def test_an_incompatible_avro_change_fails_the_contract_check(tmp_path: Path) -> None:
    schemas = tmp_path / "avro"
    shutil.copytree(REPO_ROOT / "schemas" / "avro", schemas)
    current = json.loads((schemas / "ListEntry" / "v1.avsc").read_text(encoding="utf-8"))
    current["fields"].append({"name": "region_code", "type": "string", "doc": "no default"})
    (schemas / "ListEntry" / "v2.avsc").write_text(json.dumps(current), encoding="utf-8")
    lines, problems = check_catalogue(SchemaStore(schemas), read_catalogue_bindings(CATALOGUE))
    assert problems > 0
    assert any(line.startswith("PROBLEM") and "ListEntry" in line for line in lines)
    _, baseline_problems = check_catalogue(SchemaStore.load(), read_catalogue_bindings(CATALOGUE))
    assert baseline_problems == 0
