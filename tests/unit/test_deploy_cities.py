"""`city add` on a copy of deploy/config: what it writes, what it keeps, what it refuses."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from deploy import region as supervisor
from deploy.broker import REPO_ROOT
from deploy.cities import CityAddError, CityRequest, add_city
from services.common.policy import load_policy
from services.common.region import load_region
from services.scores.config import load_scores_config

CONFIG = REPO_ROOT / "deploy" / "config"
FILES = ("region.yaml", "peer-policy.yaml", "score-incentives.yaml")
QINGPU = CityRequest(key="qingpu", admin_code="310118")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return Path(shutil.copytree(CONFIG, tmp_path / "config"))


def _texts(config: Path) -> dict[str, str]:
    return {name: (config / name).read_text(encoding="utf-8") for name in FILES}


def test_qingpu_becomes_a_connected_city_of_every_file(config: Path, tmp_path: Path) -> None:
    added = add_city(config, tmp_path / "certs", QINGPU)
    assert added.left_to_operator == []

    region = load_region(config / "region.yaml")
    qingpu = region.city("qingpu")
    assert (qingpu.name, qingpu.admin_code, qingpu.topic_prefix) == (
        "上海青浦",
        "310118",
        "qingpu.",
    )
    # The block after Changzhou's: gRPC 24451…, ops 9451…, in the demo's service order.
    assert dict(qingpu.endpoints) == {
        "lists": "127.0.0.1:24451",
        "scores": "127.0.0.1:24452",
        "alerts": "127.0.0.1:24453",
        "intake": "127.0.0.1:24454",
    }
    assert qingpu.ops["lists"] == "127.0.0.1:9451"
    assert supervisor.local_cities(region) == ("suzhou", "wuxi", "changzhou", "qingpu")
    assert qingpu in region.peers_of("suzhou")

    policy = load_policy(config / "peer-policy.yaml", cities=region.cities)
    for method in (
        "/creditlink.peer.v1.ListSyncService/StreamListChanges",
        "/creditlink.peer.v1.CreditCheckService/CheckSubject",
        "/creditlink.peer.v1.ScoreRecognitionService/GetScoreScale",
        "/creditlink.peer.v1.AlertExchangeService/DeliverAlerts",
    ):
        assert policy.decide(server="suzhou", caller="qingpu", method=method).allowed, method
        assert policy.decide(server="qingpu", caller="wuxi", method=method).allowed, method
    intake = "/creditlink.peer.v1.RecordIntakeService/SubmitRecords"
    assert not policy.decide(server="suzhou", caller="qingpu", method=intake).allowed

    scores = load_scores_config(config / "score-incentives.yaml", region=region)
    scale = scores.scale_of("qingpu")
    assert (scale.scale_name, scale.city_code) == ("上海青浦信用分", "310118")
    assert scores.incentives_for("qingpu", "A") == ()

    for name in ("ca.crt", "qingpu.crt", "qingpu.key", "qingpu.consent.key", "suzhou.crt"):
        assert (tmp_path / "certs" / name).exists(), name


def test_the_files_keep_their_comments_and_other_entries(config: Path, tmp_path: Path) -> None:
    before = _texts(config)
    add_city(config, tmp_path / "certs", QINGPU)
    after = _texts(config)
    for name in FILES:
        kept = [line for line in before[name].splitlines() if line.lstrip().startswith("#")]
        assert all(line in after[name].splitlines() for line in kept), name
        old, new = yaml.safe_load(before[name]), yaml.safe_load(after[name])
        assert set(new) == set(old), name
    region_old, region_new = (
        yaml.safe_load(before["region.yaml"]),
        yaml.safe_load(after["region.yaml"]),
    )
    for key in ("suzhou", "wuxi", "changzhou", "wujiang", "jiashan"):
        assert region_new["cities"][key] == region_old["cities"][key]
    scores_new = yaml.safe_load(after["score-incentives.yaml"])
    assert list(scores_new["scales"]) == ["suzhou", "wuxi", "changzhou", "qingpu"]


def test_a_second_run_changes_nothing(config: Path, tmp_path: Path) -> None:
    add_city(config, tmp_path / "certs", QINGPU)
    once = _texts(config)
    again = add_city(config, tmp_path / "certs", QINGPU)
    assert again.changes == []
    assert _texts(config) == once


def test_a_new_city_needs_a_name_and_gets_the_next_block(config: Path, tmp_path: Path) -> None:
    with pytest.raises(CityAddError, match="--name"):
        add_city(config, tmp_path / "certs", CityRequest(key="kunshan", admin_code="320583"))
    add_city(config, tmp_path / "certs", QINGPU)
    add_city(
        config,
        tmp_path / "certs",
        CityRequest(key="kunshan", admin_code="320583", name="昆山", score_scale="昆山分"),
    )
    kunshan = load_region(config / "region.yaml").city("kunshan")
    assert kunshan.endpoints["lists"] == "127.0.0.1:24551"
    assert kunshan.score_scale == "昆山分"


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (CityRequest(key="qingpu", admin_code="310119"), "admin code 310118"),
        (CityRequest(key="kunshan", admin_code="320500", name="昆山"), "already the region's"),
        (CityRequest(key="Qingpu", admin_code="310118"), "lower-case"),
        (CityRequest(key="qingpu", admin_code="31011"), "6-digit"),
        (CityRequest(key="qingpu", admin_code="310118", topic_prefix="qingpu"), "end with"),
        (CityRequest(key="qingpu", admin_code="310118", grpc_base=24150), "another city's"),
    ],
)
def test_refusals_write_nothing(
    config: Path, tmp_path: Path, request_: CityRequest, message: str
) -> None:
    before = _texts(config)
    with pytest.raises(CityAddError, match=message):
        add_city(config, tmp_path / "certs", request_)
    assert _texts(config) == before
    assert not (tmp_path / "certs").exists()


def test_a_rule_for_some_cities_only_is_left_to_the_operator(config: Path, tmp_path: Path) -> None:
    policy = config / "peer-policy.yaml"
    policy.write_text(
        policy.read_text(encoding="utf-8")
        + "\n  - description: Suzhou and Wuxi only.\n"
        + "    callers: [suzhou, wuxi]\n"
        + "    methods: [/creditlink.peer.v1.ListSyncService/GetListDigest]\n"
        + "    data_classes: [organisation]\n",
        encoding="utf-8",
    )
    added = add_city(config, tmp_path / "certs", QINGPU)
    (left,) = added.left_to_operator
    assert "Suzhou and Wuxi only" in left
    rules = yaml.safe_load(policy.read_text(encoding="utf-8"))["rules"]
    assert rules[-1]["callers"] == ["suzhou", "wuxi"]
    assert rules[0]["callers"] == ["suzhou", "wuxi", "changzhou", "qingpu"]
