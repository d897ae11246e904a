"""The library's docstrings cite the book's equation labels; those labels must exist in the book.

Labels of chapters not yet written are listed in PLANNED; once a chapter defines one, this test
fails until the label is removed from PLANNED, so the list cannot go stale.
"""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITED = re.compile(r"eq\. ``([A-Za-z0-9_-]+)``")
DEFINED_MATH = re.compile(r"\$\$\s*\(([A-Za-z0-9_-]+)\)")  # MyST: $$ ... $$ (label)
DEFINED_TARGET = re.compile(r"^\(([A-Za-z0-9_-]+)\)=", re.M)  # MyST: (label)=

# Labels cited by ddpm_lib whose chapters are still to be written. (The second part's labels,
# posterior-mean ... ddim-step, are now defined by its chapters.)
PLANNED: set[str] = set()


def _book_text() -> str:
    parts = [p.read_text() for p in (ROOT / "book").glob("*.md")]
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        cells = json.loads(nb.read_text())["cells"]
        parts += ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]
    return "\n".join(parts)


def _library_files() -> list[Path]:
    # every module of the package, its subpackages included (a glob of the top level alone would skip them)
    return sorted((ROOT / "ddpm_lib").rglob("*.py"))


def test_the_walk_reaches_every_layer():
    # the label check below is only as good as the files it reads: every subpackage must be among them
    files = _library_files()
    packages = {p.parent.name for p in files if p.name == "__init__.py" and p.parent != ROOT / "ddpm_lib"}
    assert {"core", "models", "sampling", "toys", "training", "evaluation", "teaching"} <= packages, packages
    for package in packages:
        modules = [p for p in files if p.parent.name == package and p.name != "__init__.py"]
        assert modules, f"no module of ddpm_lib.{package} was read"
    assert any(CITED.search(p.read_text()) for p in files if p.parent.name == "core"), "no core module cites a label"


def test_cited_labels_exist_in_the_book():
    cited = {m for p in _library_files() for m in CITED.findall(p.read_text())}
    text = _book_text()
    defined = set(DEFINED_MATH.findall(text)) | set(DEFINED_TARGET.findall(text))
    assert cited, "no docstring cites an equation label: the regex or the docstrings changed"
    assert not (PLANNED & defined), f"now defined in the book, remove from PLANNED: {sorted(PLANNED & defined)}"
    assert cited - PLANNED <= defined, f"cited in ddpm_lib but not defined in the book: {sorted(cited - PLANNED - defined)}"


def _defined_per_source() -> dict[str, list[str]]:
    out = {p.name: DEFINED_MATH.findall(p.read_text()) + DEFINED_TARGET.findall(p.read_text()) for p in (ROOT / "book").glob("*.md")}
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        cells = json.loads(nb.read_text())["cells"]
        text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        out[nb.name] = DEFINED_MATH.findall(text) + DEFINED_TARGET.findall(text)
    return out


def _duplicates(per_source: dict[str, list[str]]) -> dict[str, list[str]]:
    where: dict[str, list[str]] = {}
    for source, labels in per_source.items():
        for label in labels:
            where.setdefault(label, []).append(source)
    return {label: sources for label, sources in where.items() if len(sources) > 1}


def test_every_equation_label_is_defined_once():
    # Sphinx warns "duplicate label of equation" (an error under -W) and {eq} links become ambiguous;
    # this finds it without a build, and names both places
    assert not (dupes := _duplicates(_defined_per_source())), f"labels defined more than once: {dupes}"


def test_the_duplicate_check_bites():
    assert _duplicates({"a.md": ["x", "y"], "b.ipynb": ["x"]}) == {"x": ["a.md", "b.ipynb"]}
    assert _duplicates({"a.md": ["x", "x"]}) == {"x": ["a.md", "a.md"]}
    assert not _duplicates({"a.md": ["x"], "b.ipynb": ["y"]})
