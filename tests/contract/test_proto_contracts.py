"""The peer contracts themselves: lint, compatibility with the released baseline, generated
code current — and proof that each check fails when it should, made in scratch copies."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from contracts.codegen import CONTRACTS, GEN_ROOT, buf_executable, check

BASELINE = "baseline/v1.0.0"
CREDIT_CHECK = Path("proto/creditlink/peer/v1/credit_check.proto")


def _buf(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [buf_executable(), *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=120
    )


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A copy of contracts/ (protos, baseline, buf config) to break things in."""
    for name in ("buf.yaml", "proto", "baseline"):
        source = CONTRACTS / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name)
        else:
            shutil.copy(source, tmp_path / name)
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_protos_pass_buf_lint_and_breaking() -> None:
    lint = _buf("lint", cwd=CONTRACTS)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    breaking = _buf("breaking", "--against", BASELINE, cwd=CONTRACTS)
    assert breaking.returncode == 0, breaking.stdout + breaking.stderr


def test_baseline_is_a_complete_release() -> None:
    released = {
        p.relative_to(CONTRACTS / BASELINE) for p in (CONTRACTS / BASELINE).rglob("*.proto")
    }
    current = {p.relative_to(CONTRACTS / "proto") for p in (CONTRACTS / "proto").rglob("*.proto")}
    assert released <= current, "a released file was deleted"


@pytest.mark.parametrize(
    ("old", "new", "rule"),
    [
        ("string purpose = 4;", "string purpose = 14;", "FIELD_NO_DELETE"),
        ("string subject_key = 1;", "bytes subject_key = 1;", "FIELD_SAME_TYPE"),
        (
            "  rpc CheckSubjects(CheckSubjectsRequest) returns (CheckSubjectsResponse);\n",
            "",
            "RPC_NO_DELETE",
        ),
        ("SCENARIO_TENDERING = 1;", "SCENARIO_BIDDING = 1;", "ENUM_VALUE_SAME_NAME"),
    ],
)
def test_a_breaking_change_fails_buf_breaking(scratch: Path, old: str, new: str, rule: str) -> None:
    _edit(scratch / CREDIT_CHECK, old, new)
    result = _buf("breaking", "--against", BASELINE, "--error-format", "json", cwd=scratch)
    assert result.returncode != 0
    assert rule in result.stdout, result.stdout + result.stderr


def test_an_additive_change_passes_buf_breaking(scratch: Path) -> None:
    _edit(
        scratch / CREDIT_CHECK,
        "  bool include_removed = 6;\n",
        "  bool include_removed = 6;\n  // The caller's case reference, echoed in audit logs.\n"
        "  string case_reference = 7;\n",
    )
    result = _buf("breaking", "--against", BASELINE, cwd=scratch)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("old", "new", "rule"),
    [
        (
            '  // The subject key ("L:<unified social credit code>" or "N:<pseudonym>").\n'
            "  string subject_key = 1;",
            "  string subject_key = 1;",
            "COMMENT_FIELD",
        ),
        ("SCENARIO_UNSPECIFIED = 0;", "SCENARIO_NONE = 0;", "ENUM_ZERO_VALUE_SUFFIX"),
    ],
)
def test_a_style_violation_fails_buf_lint(scratch: Path, old: str, new: str, rule: str) -> None:
    _edit(scratch / CREDIT_CHECK, old, new)
    result = _buf("lint", "--error-format", "json", cwd=scratch)
    assert result.returncode != 0
    assert rule in result.stdout, result.stdout + result.stderr


def test_generated_code_is_current() -> None:
    assert check() == []


def test_stale_generated_code_is_detected(tmp_path: Path) -> None:
    copy = tmp_path / "python"
    shutil.copytree(GEN_ROOT, copy)
    target = copy / "creditlink/peer/v1/credit_check_pb2.py"
    target.write_text(target.read_text(encoding="utf-8") + "\n# hand edit\n", encoding="utf-8")
    (copy / "creditlink/peer/v1/leftover_pb2.py").write_text("", encoding="utf-8")
    (copy / "creditlink/peer/v1/list_sync_pb2.pyi").unlink()
    problems = check(copy)
    assert "stale: creditlink/peer/v1/credit_check_pb2.py" in problems
    assert "not generated, remove it: creditlink/peer/v1/leftover_pb2.py" in problems
    assert "missing: creditlink/peer/v1/list_sync_pb2.pyi" in problems


def test_every_rpc_has_its_own_request_and_response() -> None:
    from creditlink.peer.v1 import (
        alert_exchange_pb2,
        credit_check_pb2,
        list_sync_pb2,
        record_intake_pb2,
        score_recognition_pb2,
    )

    for module in (
        alert_exchange_pb2,
        credit_check_pb2,
        list_sync_pb2,
        record_intake_pb2,
        score_recognition_pb2,
    ):
        for service in module.DESCRIPTOR.services_by_name.values():
            assert re.fullmatch(r"[A-Z][A-Za-z]+Service", service.name)
            for method in service.methods:
                assert method.input_type.name == f"{method.name}Request"
                assert method.output_type.name == f"{method.name}Response"
