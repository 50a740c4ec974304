"""Every reference in the repository's code and documents resolves inside the repository.

A reader of this repository alone must be able to follow each citation: a ``docs/*.md §x.y``
names a file and a section heading that exist, a repository path names a file that exists, and
nothing cites a document, tracker or folder that lives elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED_DIRS = ("services", "deploy", "bench", "contracts", "tests", "docs", "schemas")
SCANNED_FILES = ("README.md", "Makefile", "pyproject.toml")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".proto", ".avsc", ".txt"}
SKIPPED_PARTS = {"gen", "__pycache__"}

#: Citations of a design document, tracker or notes folder outside the repository.
OUTSIDE = re.compile(
    r"\bDESIGN\b(?! ?=)|\b[Ii]ssue [0-9]+|\bthe issue's\b|/work/|\.\./shared|\bnotes/"
)
#: ``docs/<name>.md §x.y`` (or ``design.md §x``): a section of a document in the repository.
SECTION = re.compile(r"((?:docs/)?[\w-]+\.md) (§[0-9]+(?:\.[0-9]+)?)")
#: A path into the repository's own folders.
PATH = re.compile(
    r"(?<![\w./-])((?:services|deploy|bench|contracts|tests|docs|schemas)/[\w./-]*\w\.(?:py|md|yaml|yml|proto|avsc|sh))"
)


def _files() -> Iterator[Path]:
    this = Path(__file__).resolve()
    for name in SCANNED_FILES:
        yield ROOT / name
    for folder in SCANNED_DIRS:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix not in SUFFIXES or not path.is_file() or path.resolve() == this:
                continue
            if SKIPPED_PARTS.intersection(path.relative_to(ROOT).parts):
                continue
            yield path


def _lines() -> Iterator[tuple[str, int, str]]:
    for path in _files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            yield str(path.relative_to(ROOT)), number, line


def _headings(document: Path) -> set[str]:
    found: set[str] = set()
    for line in document.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            found.update(re.findall(r"§[0-9]+(?:\.[0-9]+)?", line))
    return found


def test_nothing_cites_a_document_outside_the_repository() -> None:
    offending = [
        f"{name}:{n}: {line.strip()}" for name, n, line in _lines() if OUTSIDE.search(line)
    ]
    assert offending == []


def test_every_section_citation_names_an_existing_heading() -> None:
    broken = []
    for name, n, line in _lines():
        for document, section in SECTION.findall(line):
            path = ROOT / (document if document.startswith("docs/") else f"docs/{document}")
            if not path.is_file() or section not in _headings(path):
                broken.append(f"{name}:{n}: {document} {section}")
    assert broken == []


def test_every_repository_path_names_an_existing_file() -> None:
    broken = []
    for name, n, line in _lines():
        for cited in PATH.findall(line):
            if ".." not in cited and not (ROOT / cited).exists():
                broken.append(f"{name}:{n}: {cited}")
    assert broken == []


@pytest.mark.parametrize(
    ("text", "cites_outside"),
    [
        # Spelled in pieces so that this file itself cites nothing outside the repository.
        ("(" + "DESI" + "GN §3)", True),
        ("see " + "issue" + " 5", True),
        ("/work/" + "shared/" + "notes/x.md", True),
        ("(docs/design.md §4.8)", False),
        ('"DESIGNATE"', False),
    ],
)
def test_the_outside_pattern_tells_citations_from_words(text: str, cites_outside: bool) -> None:
    assert bool(OUTSIDE.search(text)) is cites_outside
