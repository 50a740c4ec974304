"""`records-import` pseudonymises under the region key, and the published dev key only when
the operator asks for it (docs/design.md §4.8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy import ops

KEY_VARIABLES = ("CREDITLINK_PSEUDONYM_KEY", "CREDITLINK_PSEUDONYM_KEY_FILE", "CREDITLINK_DEV")


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, str]]:
    """The environment of each intake import the command would start (none is started)."""
    for variable in KEY_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    started: list[dict[str, str]] = []

    def python_module(module: str, *args: str, env: dict[str, str] | None = None) -> int:
        assert (module, args[0]) == ("services.intake", "import")
        started.append(dict(env or {}))
        return 0

    monkeypatch.setattr(ops, "_python_module", python_module)
    return started


def test_without_a_key_the_import_stops_and_names_the_variable(
    launched: list[dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ops.main(["records-import", str(tmp_path / "records.csv")]) == 2
    assert launched == []
    assert "CREDITLINK_PSEUDONYM_KEY" in capsys.readouterr().err


def test_the_dev_key_only_on_request_and_with_a_warning(
    launched: list[dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ops.main(["records-import", str(tmp_path / "records.csv"), "--dev"]) == 0
    assert launched[0]["CREDITLINK_DEV"] == "1"
    assert "development pseudonym key" in capsys.readouterr().err


def test_with_the_region_key_no_dev_key_is_offered(
    launched: list[dict[str, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CREDITLINK_PSEUDONYM_KEY", "ab" * 32)
    assert ops.main(["records-import", str(tmp_path / "records.csv")]) == 0
    assert "CREDITLINK_DEV" not in launched[0]
    assert launched[0]["CREDITLINK_PSEUDONYM_KEY"] == "ab" * 32
    assert "WARNING" not in capsys.readouterr().err


def test_audit_export_and_its_check_fill_in_the_citys_topic_keys_and_region(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    started: list[tuple[str, ...]] = []

    def python_module(module: str, *args: str, env: dict[str, str] | None = None) -> int:
        started.append((module, *args))
        return 0

    monkeypatch.setattr(ops, "_python_module", python_module)
    monkeypatch.chdir(tmp_path)
    assert (
        ops.main(["audit-export", "-c", "wuxi", "--since", "2024-03-01", "--until", "2024-03-02"])
        == 0
    )
    assert ops.main(["audit-verify-export", "wuxi.audit.2024-03-01_2024-03-02.jsonl"]) == 0
    (export, verify) = [dict(zip(args[2::2], args[3::2], strict=False)) for args in started]
    assert started[0][:2] == ("services.common.audit", "export")
    assert export["--topic"] == "wuxi.audit.peer-calls.v1"
    assert (export["--city"], export["--since"], export["--until"]) == (
        "wuxi",
        "2024-03-01",
        "2024-03-02",
    )
    bundle = str(tmp_path / "wuxi.audit.2024-03-01_2024-03-02.jsonl")
    assert export["--out"] == bundle  # not relative to where the module runs
    assert started[1][:2] == ("services.common.audit", "verify-export")
    assert started[1][-1] == bundle
    assert verify["--keys"] == export["--key"]
    assert verify["--region"] == export["--region"]
