"""docs/DESIGN.md is the repository's own record of the facts the code relies on: every citation of it in the code,
tests, benchmarks and docs names the file by its repository path and points at a section that exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "DESIGN.md"
# a citation: "DESIGN" (optionally ".md", optionally after "docs/") followed by "§" and a section number
CITATION = re.compile(r"(docs/)?" + "DESIGN" + r"(\.md)? §(\d+(?:\.\d+)?)")
HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", re.MULTILINE)  # "## 2. Title", "### 2.1 Title"


def sources() -> list[Path]:
    files = [*ROOT.glob("*.md"), *(ROOT / "docs").glob("*.md")]
    for folder in ("hyvideo", "tests", "benchmarks", "scripts"):
        files += (ROOT / folder).rglob("*.py")
    return sorted(p for p in files if p.is_file() and p != DESIGN)


def citations() -> list[tuple[str, re.Match]]:
    found = []
    for path in sources():
        for line_no, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            found += [(f"{path.relative_to(ROOT)}:{line_no}", m) for m in CITATION.finditer(line)]
    return found


def test_sections_are_numbered_in_order():
    numbers = HEADING.findall(DESIGN.read_text())
    top = [int(n) for n in numbers if "." not in n]
    assert top == list(range(1, len(top) + 1)), top
    for n in numbers:  # every subsection sits under its own section, numbered from 1
        if "." in n:
            major, minor = n.split(".")
            assert major in numbers, n
            assert minor == "1" or f"{major}.{int(minor) - 1}" in numbers, n


def test_every_citation_names_the_file_and_an_existing_section():
    sections = set(HEADING.findall(DESIGN.read_text()))
    found = citations()
    assert len(found) >= 10, len(found)  # the scan does find them (22 places when this test was written)
    for where, m in found:
        assert m.group(1) and m.group(2), f"{where}: cite it as docs/DESIGN.md §N, got {m.group(0)!r}"
        assert m.group(3) in sections, f"{where}: docs/DESIGN.md has no section {m.group(3)}"
