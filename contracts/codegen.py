"""Generate the Python code of the peer contracts, or check that the committed code is current.

The generated package lives in one place, ``contracts/gen/python/creditlink/peer/v1``, and is
never edited by hand. It is produced by ``buf generate`` (``contracts/buf.gen.yaml``) with
grpcio-tools' bundled ``protoc`` (messages and stubs) and mypy-protobuf (``.pyi`` type stubs),
all pinned in ``requirements.lock``, so the output is byte-for-byte reproducible on any
machine with the locked environment.

    python -m contracts.codegen generate   # rewrite contracts/gen/python
    python -m contracts.codegen check      # regenerate into a temp dir; exit 1 if different
    python -m contracts.codegen link       # make the package importable in this interpreter
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

CONTRACTS = Path(__file__).resolve().parent
REPO_ROOT = CONTRACTS.parent
PROTO_ROOT = CONTRACTS / "proto"
GEN_ROOT = CONTRACTS / "gen" / "python"
PACKAGE_DIRS = ("creditlink", "creditlink/peer", "creditlink/peer/v1")
_INIT_TEXT = '"""Generated from contracts/proto by `make gen`; do not edit."""\n'


def _tool_env() -> dict[str, str]:
    """The locked virtual environment first on PATH, the repository importable (the shim)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return env


def buf_executable() -> str:
    """The Buf CLI of the locked environment (PyPI package ``buf-bin``)."""
    candidate = Path(sys.executable).parent / "buf"
    found = str(candidate) if candidate.exists() else shutil.which("buf")
    if not found:
        raise SystemExit("missing the Buf CLI: run `make venv` (PyPI package buf-bin)")
    return found


def generate(out_root: Path) -> None:
    """Write the generated package under ``out_root`` (which is replaced) with ``buf generate``."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(  # noqa: S603 - fixed arguments; buf is the locked environment's
            [buf_executable(), "generate", "--template", "buf.gen.yaml", "--output", tmp],
            cwd=CONTRACTS,
            env=_tool_env(),
            check=True,
        )
        if out_root.exists():
            shutil.rmtree(out_root)
        out_root.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(Path(tmp) / "gen" / "python", out_root)
    for package in PACKAGE_DIRS:
        (out_root / package / "__init__.py").write_text(_INIT_TEXT, encoding="utf-8")
        (out_root / package / "py.typed").write_text("", encoding="utf-8")


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def check(gen_root: Path = GEN_ROOT) -> list[str]:
    """What differs between the committed generated code and a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "python"
        generate(fresh)
        expected = _files(fresh)
    actual = _files(gen_root) if gen_root.exists() else {}
    problems = [f"missing: {name}" for name in expected.keys() - actual.keys()]
    problems += [f"not generated, remove it: {name}" for name in actual.keys() - expected.keys()]
    problems += [
        f"stale: {name}"
        for name in expected.keys() & actual.keys()
        if expected[name] != actual[name]
    ]
    return sorted(problems)


def link() -> Path:
    """Put the generated package on this interpreter's path with a ``.pth`` file.

    ``make venv`` runs this, so ``python -m services.<name>`` imports ``creditlink.peer.v1``
    from the one generated copy without an install step after every ``make gen``.
    """
    site_packages = Path(sysconfig.get_paths()["purelib"])
    pth = site_packages / "creditlink-contracts.pth"
    pth.write_text(f"{GEN_ROOT}\n", encoding="utf-8")
    return pth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contracts.codegen", description=__doc__)
    parser.add_argument("command", choices=["generate", "check", "link"])
    args = parser.parse_args(argv)
    if args.command == "generate":
        generate(GEN_ROOT)
        print(f"generated {GEN_ROOT.relative_to(CONTRACTS.parent)}")
        return 0
    if args.command == "link":
        print(f"wrote {link()}")
        return 0
    problems = check()
    if problems:
        print("generated code is stale; run `make gen` and commit the result:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print("generated code is current")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
