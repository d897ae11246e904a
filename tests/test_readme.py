"""The README's Python examples run as written (a reader copies them first)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert len(_python_blocks()) >= 2


@pytest.mark.usefixtures("single_thread")
def test_readme_examples_run_in_order():
    namespace: dict = {}
    for block in _python_blocks():  # later blocks may use names of earlier ones, as a reader's session would
        exec(compile(block, str(README), "exec"), namespace)
    x0 = namespace["x0"]
    assert tuple(x0.shape) == (8, 1, 28, 28) and float(x0.abs().max()) <= 1.0 + 1e-6
    # the Heun samples are digits, not noise: their pixel mean lies near MNIST's (about -0.74 in [-1, 1]; noise
    # clipped to [-1, 1] would have mean near 0) and most pixels sit at the two ends
    assert float(x0.mean()) < -0.5 and float((x0.abs() > 0.9).float().mean()) > 0.5
