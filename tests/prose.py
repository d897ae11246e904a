"""Helpers for the tests that pin numbers stated in a chapter's prose to the library's computation.

A chapter's cells print what they compute; a number written in a markdown cell (an exercise's
answer, "about 1.54 bits/dim") is text and could drift from what the library gives. The tests find
the stated number by the words around it (:func:`stated`) and compare it with the computed value to
the precision the prose states it (:func:`rounds_to`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def markdown(name: str) -> str:
    """The markdown cells of ``notebooks/NAME.ipynb``, joined by newlines."""
    cells = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def stated(text: str, pattern: str) -> str:
    """The number that ``pattern`` (one group) captures; every occurrence must state the same number."""
    found = set(re.findall(pattern, text))
    assert found, f"the prose no longer contains {pattern!r}: update this test with it"
    assert len(found) == 1, f"{pattern!r} states different numbers: {sorted(found)}"
    return found.pop()


def rounds_to(computed: float, written: str) -> bool:
    """Whether ``computed``, rounded to the decimals of ``written``, is ``written``."""
    decimals = len(written.split(".")[1]) if "." in written else 0
    return abs(computed - float(written)) <= 0.5 * 10**-decimals * (1 + 1e-9)
