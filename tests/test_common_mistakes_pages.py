"""The "common mistakes" pages name, for each slip, a test in ``tests/`` that runs the chapter's check: those names
must exist, or the page promises a check that nothing runs.

For every page ``book/common_mistakes_*.md``: each ``test_file.py::test_name`` it cites is a function defined in
that file; each test file it names exists; each ``{doc}`` link points to a page of the book; and each ``{eq}``
label it cites is defined exactly once in the book (a label defined twice would send the reader to either). The
page of Parts II-IV must link every chapter of those parts. Each check is shown to fail on a planted page.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
PAGES = sorted((ROOT / "book").glob("common_mistakes_*.md"))
PART_2_TO_4 = ["forward_process", "posterior", "kl_to_mse", "parameterizations", "training_mnist", "troubleshooting",
               "energy_langevin", "score_matching", "sde", "ode_likelihood", "generative_models"]

CITED_TEST = re.compile(r"`?(test_[A-Za-z0-9_]+\.py)::([A-Za-z0-9_]+)")
NAMED_FILE = re.compile(r"`(test_[A-Za-z0-9_]+\.py)`")
DOC = re.compile(r"\{doc\}`(?:[^`<]*<)?([^`>]+)>?`")
EQ = re.compile(r"\{eq\}`([A-Za-z0-9_-]+)`")
DEFINED_MATH = re.compile(r"\$\$\s*\(([A-Za-z0-9_-]+)\)")


def missing_tests(text: str, tests_dir: Path = TESTS) -> list[str]:
    """The ``file::name`` citations of ``text`` whose file or function does not exist, and named test files that do not."""
    missing = []
    for file, name in CITED_TEST.findall(text):
        path = tests_dir / file
        if not path.is_file() or not re.search(rf"^def {re.escape(name)}\(", path.read_text(), re.M):
            missing.append(f"{file}::{name}")
    missing += [file for file in NAMED_FILE.findall(text) if not (tests_dir / file).is_file()]
    return missing


def missing_docs(text: str, page: Path) -> list[str]:
    """The ``{doc}`` targets of ``text`` (relative to ``page``) that are neither a markdown page nor a notebook."""
    missing = []
    for target in DOC.findall(text):
        base = (page.parent / target).resolve()
        if not (base.with_suffix(".md").is_file() or base.with_suffix(".ipynb").is_file()):
            missing.append(target)
    return missing


def label_counts() -> dict[str, int]:
    """How often each equation label is defined in the book's markdown (pages and notebooks' markdown cells)."""
    texts = [p.read_text() for p in (ROOT / "book").glob("*.md")]
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        texts += ["".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "markdown"]
    counts: dict[str, int] = {}
    for text in texts:
        for label in DEFINED_MATH.findall(text):
            counts[label] = counts.get(label, 0) + 1
    return counts


def bad_labels(text: str, counts: dict[str, int]) -> list[str]:
    return sorted({label for label in EQ.findall(text) if counts.get(label, 0) != 1})


def test_the_pages_are_found():
    names = {p.name for p in PAGES}
    assert "common_mistakes_part1.md" in names and "common_mistakes_part2_4.md" in names, names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_every_cited_test_exists(page):
    text = page.read_text()
    assert CITED_TEST.search(text), f"{page.name} cites no test: the pattern or the page changed"
    assert not missing_tests(text), f"{page.name} cites tests that do not exist: {missing_tests(text)}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_every_link_and_label_resolves(page):
    text = page.read_text()
    assert not missing_docs(text, page), f"{page.name}: {{doc}} targets not found: {missing_docs(text, page)}"
    bad = bad_labels(text, label_counts())
    assert not bad, f"{page.name}: equation labels not defined exactly once in the book: {bad}"


def test_the_part_2_to_4_page_covers_every_chapter():
    page = ROOT / "book" / "common_mistakes_part2_4.md"
    linked = set(DOC.findall(page.read_text()))
    for chapter in PART_2_TO_4:
        if (ROOT / "notebooks" / f"{chapter}.ipynb").is_file():
            assert f"../notebooks/{chapter}" in linked, f"the page has no entry for {chapter}"


def test_the_checks_bite_on_a_planted_page(tmp_path):
    (tmp_path / "test_real.py").write_text("def test_there():\n    pass\n\n\nclass C:\n    def test_method(self):\n        pass\n")
    page = ("| a | b | `test_real.py::test_there` | `test_real.py::test_gone`, `test_missing.py::test_x` |\n"
            "see `test_real.py` and `test_nowhere.py`; `test_real.py::test_method` is a method, not a test function\n")
    assert missing_tests(page, tmp_path) == ["test_real.py::test_gone", "test_missing.py::test_x",
                                             "test_real.py::test_method", "test_nowhere.py"]
    book = ROOT / "book" / "planted.md"
    assert missing_docs("{doc}`notation` {doc}`../notebooks/posterior` {doc}`the page <../notebooks/nothing>`", book) == \
        ["../notebooks/nothing"]
    assert bad_labels("{eq}`q-xt-x0` {eq}`no-such-label` {eq}`twice`", {"q-xt-x0": 1, "twice": 2}) == ["no-such-label", "twice"]
