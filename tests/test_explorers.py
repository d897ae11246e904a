"""The explorers' JavaScript computes what ddpm_lib computes, and their static HTML is self-contained and deterministic.

The ES modules of ddpm_lib/teaching/explorers/ export their computing functions (no DOM needed); this
test runs them under node and compares them with the library: the schedules with
``make_schedule`` (hence ``linear_schedule``, ``cosine_schedule``, ``sigmoid_schedule`` and
``Schedule``), the ELBO numbers with ``LinearGaussianModel``, the noised digit with the float64 form
of ``q_sample`` and ``to_uint8``.

**Tolerance: 1e-9 relative.** Both sides run the same float64 formulas; they differ only where a
transcendental function (``exp``, ``log``, ``cos``) of V8 and of torch's kernels round differently,
by an ulp or so (about 1e-16 relative). The few subtractions of nearly equal numbers in the formulas
magnify that: ``1 - alpha_bar_t`` at ``t = 1`` and the sigmoid schedule's ``v_end - sigmoid(...)``
near ``t = T`` (cancellation by up to about 1e6 for the parameter sets below, so up to about 1e-10),
``beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}`` for the cosine schedule (about 1e-11), and the product
of up to ``T`` factors (``T`` ulps, about 1e-12 for ``T = 4000``). 1e-9 leaves a margin of ten over
the worst of these, and a wrong formula (an offset, a clip, a sign) is off by far more. The log-SNR
and the ELBO numbers cross zero, so they are compared with the absolute tolerance ``1e-9 * max(1, |value|)``:
an absolute error of the log-SNR is the relative error of the SNR.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_lib.teaching.widgets import ElboExplorer, ScheduleExplorer, make_schedule, static_html
from ddpm_lib.toys import LinearGaussianModel

EXPLORERS = Path(__file__).resolve().parents[1] / "ddpm_lib" / "teaching" / "explorers"
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
OWN_NOTEBOOKS = ("forward_process.ipynb", "elbo.ipynb")
RTOL = 1e-9
NODE = shutil.which("node")

needs_node = pytest.mark.skipif(NODE is None, reason="node (Node.js) is needed to run the explorers' JavaScript")

RUNNER = """
import * as schedule from "./schedule.mjs";
import * as elbo from "./elbo.mjs";
import { readFileSync } from "node:fs";
const cases = JSON.parse(readFileSync(0, "utf8"));
// numbers travel as String(value), so that Infinity and NaN survive JSON
const enc = (v) => (typeof v === "number" ? String(v) : Array.isArray(v) ? v.map(enc) : v && typeof v === "object" ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, enc(x)])) : v);
const fns = { computeSchedule: schedule.computeSchedule, noisedPixels: schedule.noisedPixels, linspace: schedule.linspace, elboTerms: elbo.elboTerms };
process.stdout.write(JSON.stringify(cases.map(([fn, args]) => enc(fns[fn](...args)))));
"""


@pytest.fixture(scope="module")
def run_js(tmp_path_factory):
    """Call the modules' exported functions under node: ``run_js([(name, args), ...])`` -> their results."""
    folder = tmp_path_factory.mktemp("explorers")
    for name in ("schedule", "elbo"):  # .mjs: node takes them as ES modules whatever package.json is around
        shutil.copy(EXPLORERS / f"{name}.js", folder / f"{name}.mjs")
    (folder / "runner.mjs").write_text(RUNNER)

    def call(cases):
        proc = subprocess.run([NODE, "runner.mjs"], cwd=folder, input=json.dumps(cases), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout, parse_float=str, parse_int=str)

    return call


def _floats(values) -> np.ndarray:
    return np.array([float(v) for v in values], dtype=np.float64)


def _assert_close(js, py, name, absolute=False):
    js, py = np.asarray(js, dtype=np.float64), np.asarray(py, dtype=np.float64)
    assert js.shape == py.shape, name
    inf = np.isinf(py)
    assert np.array_equal(np.isinf(js), inf) and np.array_equal(js[inf], py[inf]), f"{name}: infinities differ"
    scale = np.maximum(1.0, np.abs(py[~inf])) if absolute else np.abs(py[~inf])
    err = np.abs(js[~inf] - py[~inf])
    bad = err > RTOL * scale
    assert not bad.any(), f"{name}: {int(bad.sum())} entries differ by more than {RTOL:g} (worst {float((err / np.where(scale > 0, scale, 1)).max()):.2e})"


SCHEDULE_CASES = [
    ("linear", {}, 1000),
    ("linear", {}, 1),
    ("linear", {}, 2),
    ("linear", {"beta_start": 1e-6, "beta_end": 0.5}, 1000),
    ("linear", {"beta_start": 0.02, "beta_end": 1e-4}, 333),  # decreasing betas are allowed
    ("linear", {"beta_start": 0.1, "beta_end": 0.1}, 50),
    ("linear", {"beta_start": 1e-5, "beta_end": 0.999}, 4000),
    ("cosine", {}, 1000),
    ("cosine", {}, 1),
    ("cosine", {}, 3),
    ("cosine", {"s": 0.0}, 1000),
    ("cosine", {"s": 0.5}, 777),
    ("cosine", {"s": 10.0}, 200),
    ("cosine", {}, 4000),
    ("sigmoid", {}, 1000),
    ("sigmoid", {}, 1),
    ("sigmoid", {}, 2),
    ("sigmoid", {"start": 0.0, "end": 3.0, "tau": 0.3}, 1000),
    ("sigmoid", {"start": -10.0, "end": 10.0, "tau": 3.0}, 500),
    ("sigmoid", {"start": -3.0, "end": 3.0, "tau": 1.1}, 4000),
    ("sigmoid", {"start": -1.0, "end": 0.5, "tau": 0.1}, 100),
    ("sigmoid", {"start": -12.0, "end": 3.0, "tau": 0.3}, 1000),  # early betas clipped up to 1e-12
]

INVALID_CASES = [
    ("linear", {"beta_end": 1.0}, 10),
    ("linear", {"beta_start": 0.0}, 10),
    ("linear", {"beta_start": -0.5}, 10),
    ("cosine", {"s": -0.1}, 10),
    ("sigmoid", {"start": 3.0, "end": -3.0}, 10),
    ("sigmoid", {"start": 1.0, "end": 1.0}, 10),
    ("sigmoid", {"tau": 0.0}, 10),
    ("sigmoid", {"tau": -2.0}, 10),
    ("sigmoid", {"start": -3.0, "end": 3.0, "tau": 0.02}, 1000),  # alpha_bar underflows before T
    ("quadratic", {}, 10),
]


@pytest.fixture(scope="module")
def defaults():
    from ddpm_lib.teaching.widgets import _DEFAULTS

    return dict(_DEFAULTS)


@needs_node
def test_schedules_match_the_library(run_js, defaults):
    results = run_js([("computeSchedule", [kind, {**defaults, **params}, T]) for kind, params, T in SCHEDULE_CASES])
    for (kind, params, T), js in zip(SCHEDULE_CASES, results):
        name = f"{kind} {params} T={T}"
        assert "error" not in js, f"{name}: {js.get('error')}"
        sch = make_schedule(kind, T, **params)
        for field, ref in (("beta", sch.beta), ("alphaBar", sch.alpha_bar), ("snr", sch.snr)):
            _assert_close(_floats(js[field]), ref.numpy(), f"{name} {field}")
        _assert_close(_floats(js["logSnr"]), sch.log_snr.numpy(), f"{name} logSnr", absolute=True)
        # the t = 0 convention: the data itself
        assert js["beta"][0] == "0" and js["alphaBar"][0] == "1" and js["snr"][0] == js["logSnr"][0] == "Infinity"


@needs_node
def test_invalid_parameters_give_the_library_message(run_js, defaults):
    results = run_js([("computeSchedule", [kind, {**defaults, **params}, T]) for kind, params, T in INVALID_CASES])
    for (kind, params, T), js in zip(INVALID_CASES, results):
        with pytest.raises(ValueError) as err:
            make_schedule(kind, T, **params)
        assert js == {"error": str(err.value)}, (kind, params)


@needs_node
def test_bad_T_and_non_numbers_give_a_message(run_js, defaults):
    cases = [("linear", defaults, 0), ("linear", defaults, 2.5), ("linear", {**defaults, "beta_end": None}, 10),
             ("sigmoid", {**defaults, "tau": "x"}, 10)]
    results = run_js([("computeSchedule", list(c)) for c in cases])
    assert results[0] == {"error": "the number of steps T must be an integer >= 1, got 0."}
    assert results[1] == {"error": "the number of steps T must be an integer >= 1, got 2.5."}
    assert results[2] == {"error": "beta_end must be a finite number, got null."}
    assert results[3] == {"error": "tau must be a finite number, got x."}


@needs_node
def test_linspace_is_torchs(run_js):
    cases = [(1e-4, 0.02, 1000), (0.3, -0.7, 7), (1.0, 2.0, 1), (1e-6, 0.5, 2)]
    for (a, b, n), js in zip(cases, run_js([("linspace", list(c)) for c in cases])):
        _assert_close(_floats(js), torch.linspace(a, b, n, dtype=torch.float64).numpy(), f"linspace{(a, b, n)}")


@needs_node
def test_the_noised_digit_is_q_sample_through_to_uint8(run_js):
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, 784)
    pixels[:4] = [0, 255, 127, 128]
    eps = rng.standard_normal(784)
    abars = [1.0, 0.999, 0.5, 0.07858724288177824, 1e-5]
    results = run_js([("noisedPixels", [pixels.tolist(), eps.tolist(), ab]) for ab in abars])
    for ab, js in zip(abars, results):
        xt = math.sqrt(ab) * (pixels / 127.5 - 1.0) + math.sqrt(1.0 - ab) * eps  # eq. q-sample in float64
        expected = np.round((np.clip(xt, -1.0, 1.0) + 1.0) * 127.5)  # to_uint8; numpy rounds halves to even
        assert np.array_equal(_floats(js), expected), ab
    assert np.array_equal(_floats(results[0]), pixels)  # t = 0: the digit itself


ELBO_CASES = [
    # (w, b, s2, x, m, log_var)
    (1.5, 0.3, 0.5, 1.2, -1.0, math.log(2.0)),
    (1.5, 0.3, 0.5, 1.2, 0.0, 0.0),
    (-0.7, 2.0, 0.01, -3.0, 3.0, -4.0),
    (0.0, 0.0, 1.0, 0.5, -3.0, 2.0),
    (4.0, -1.0, 2.5, 10.0, 1.7, -0.3),
    (1e-3, 0.1, 1e-4, 0.2, -2.2, 1.9),
]


def _torch_elbo(w, b, s2, x, m, log_var):
    model = LinearGaussianModel(torch.tensor([[w]], dtype=torch.float64), torch.tensor([b], dtype=torch.float64), noise_var=s2)
    xx, mm, cov = (torch.tensor(v, dtype=torch.float64) for v in ([x], [m], [[math.exp(log_var)]]))
    return model, xx, {"logPx": float(model.log_evidence(xx)), "elbo": float(model.elbo(xx, mm, cov)),
                       "kl": float(model.posterior_kl(xx, mm, cov))}


@needs_node
def test_elbo_numbers_match_the_linear_gaussian_model(run_js):
    keys = ("w", "b", "s2", "x", "m", "logVar")
    results = run_js([("elboTerms", [dict(zip(keys, case))]) for case in ELBO_CASES])
    for case, js in zip(ELBO_CASES, results):
        model, xx, expected = _torch_elbo(*case)
        for key, value in expected.items():
            _assert_close(_floats([js[key]]), [value], f"{case} {key}", absolute=True)
        mean, cov = model.posterior(xx)
        _assert_close(_floats([js["postMean"], js["postVar"]]), [float(mean[0]), float(cov[0, 0])], f"{case} posterior", absolute=True)


@needs_node
def test_the_gap_vanishes_at_the_posterior(run_js):
    # q = the posterior: KL 0 and ELBO = log p(x), to round-off (numbers of order 1, a few dozen operations)
    model, xx, _ = _torch_elbo(1.5, 0.3, 0.5, 1.2, 0.0, 0.0)
    mean, cov = model.posterior(xx)
    (js,) = run_js([("elboTerms", [{"w": 1.5, "b": 0.3, "s2": 0.5, "x": 1.2, "m": float(mean[0]), "logVar": math.log(float(cov[0, 0]))}])])
    assert abs(float(js["kl"])) < 1e-12 and abs(float(js["elbo"]) - float(js["logPx"])) < 1e-12


@needs_node
def test_invalid_elbo_inputs_give_a_message(run_js):
    good = {"w": 1.0, "b": 0.0, "s2": 1.0, "x": 0.0, "m": 0.0, "logVar": 0.0}
    results = run_js([("elboTerms", [{**good, "s2": 0.0}]), ("elboTerms", [{**good, "m": None}])])
    assert results == [{"error": "noise_var is a variance and must be > 0, got 0."}, {"error": "mean must be a finite number, got null."}]


# --- the static HTML --------------------------------------------------------------------------------

OUTSIDE = re.compile(r"https?:|//[\w.-]+\.\w|\bsrc\s*=|\bhref\s*=|@import|\burl\(|require\(", re.IGNORECASE)


def _digit():
    img = np.zeros((28, 28), dtype=np.uint8)
    img[6:22, 12:16] = 255
    return img


def _elbo_model():
    return LinearGaussianModel(torch.tensor([[1.5]], dtype=torch.float64), torch.tensor([0.3], dtype=torch.float64), noise_var=0.5)


def _html(widget) -> str:
    data, _ = widget._repr_mimebundle_()
    return data["text/html"]


def test_the_outside_url_check_bites():
    for planted in ('<script src="x.js">', "import('https://cdn.example.org/m.js')", "//cdn.jsdelivr.net/npm/x", "@import 'a.css'"):
        assert OUTSIDE.search(planted), planted
    assert not OUTSIDE.search("// a comment. And a/b, x // 2, 'text/javascript'")


@pytest.mark.parametrize("make", [lambda: ScheduleExplorer(_digit(), T=100, t=30), lambda: ElboExplorer(_elbo_model(), 1.2, mean=-1.0)],
                         ids=["schedule", "elbo"])
def test_the_static_html_is_self_contained_and_deterministic(make):
    first, second = make(), make()
    html = _html(first)
    assert html == _html(second), "two equal explorers must give the same text/html"
    assert first.model_id not in html and second.model_id not in html
    found = OUTSIDE.findall(html)
    assert not found, f"the text/html references outside resources: {found}"
    assert html.count("<script") == 1 and '<script type="module">' in html
    for module in ("schedule.js", "elbo.js"):  # the module's source travels inside the HTML
        source = (EXPLORERS / module).read_text()
        assert OUTSIDE.search(source) is None, f"{module} references an outside resource"
    assert json.dumps(str(first._esm)).replace("<", "\\u003c") in html


def test_the_static_html_carries_the_current_state():
    w = ScheduleExplorer(_digit(), T=100, t=30, seed=3)
    before = _html(w)
    w.t = 31
    assert _html(w) != before and '"t": 31' in _html(w)
    assert _html(ScheduleExplorer(_digit(), T=100, t=30, seed=4)) != before  # other noise, other page


def test_static_html_refuses_nan_and_escapes_script_ends():
    with pytest.raises(ValueError):
        static_html("x", "export function render() {}", {"a": float("nan")})
    html = static_html("x", "const s = '</script><!--';", {"b": "</script>"})
    assert html.count("</script>") == 1 and "<!--" not in html


# --- the stored notebooks -------------------------------------------------------------------------


def _outputs_text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append("".join(output.get("text", "")))
        for mime, value in output.get("data", {}).items():
            if mime.startswith("text/") or mime.endswith("json"):
                parts.append(value if isinstance(value, str) else json.dumps(value))
    return "\n".join(parts)


@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_no_notebook_stores_widget_state(notebook):
    # with stored widget state MyST-NB loads require.js and the widget manager from a CDN into the page
    metadata = json.loads(notebook.read_text())["metadata"]
    assert "widgets" not in metadata, f"{notebook.name}: remove metadata['widgets'] (stored ipywidgets state) after executing"


@pytest.mark.parametrize("name", OWN_NOTEBOOKS)
def test_the_explorers_notebooks_reference_no_outside_url(name):
    cells = json.loads((NOTEBOOKS / name).read_text())["cells"]
    found = {i: OUTSIDE.findall(_outputs_text(c)) for i, c in enumerate(cells) if c["cell_type"] == "code"}
    found = {i: f for i, f in found.items() if f}
    assert not found, f"{name}: stored outputs reference outside resources (cell: matches): {found}"


@pytest.mark.parametrize("name, explorer", [("forward_process.ipynb", "schedule"), ("elbo.ipynb", "elbo")])
def test_the_notebooks_store_the_static_explorer(name, explorer):
    cells = json.loads((NOTEBOOKS / name).read_text())["cells"]
    htmls = ["".join(o["data"]["text/html"]) for c in cells if c["cell_type"] == "code"
             for o in c.get("outputs", []) if "text/html" in o.get("data", {})]
    assert any(f'data-explorer-host="{explorer}-' in h for h in htmls), f"{name}: no stored {explorer} explorer"


@pytest.mark.parametrize("name", OWN_NOTEBOOKS)
def test_stored_figures_fit_the_page(name):
    # the book's text column is about 740 px wide: a wider PNG is shrunk and its labels become unreadable
    from base64 import b64decode

    cells = json.loads((NOTEBOOKS / name).read_text())["cells"]
    widths = {}
    for i, c in enumerate(cells):
        for o in c.get("outputs", []):
            png = o.get("data", {}).get("image/png")
            if png:
                raw = b64decode("".join(png))
                widths[i] = max(widths.get(i, 0), int.from_bytes(raw[16:20], "big"))  # the IHDR width
    too_wide = {i: w for i, w in widths.items() if w > 740}
    assert not too_wide, f"{name}: PNG wider than 740 px (cell: width): {too_wide}"
