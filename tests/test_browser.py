"""The built HTML book as a reader gets it, in a real browser with the network blocked.

Playwright (the Python package) drives Debian's Chromium (``/usr/bin/chromium``, installed by
``.ci/run``) against ``_build/html`` served on 127.0.0.1. Every request to any other host is blocked
and counted. For every page: no page or console errors, no outside request, every formula typeset by
MathJax with no error node and no raw TeX left in the article, the sidebar or the search results,
every image loaded, and well-formed Colab and download links on the chapters. The explorers are
driven through their controls and their readouts compared with ddpm_lib. A full-page screenshot of
each page is kept under ``_build/screenshots/`` for a person to look at.

Run after the book build (``scripts/test.sh`` does): ``pytest -m browser tests/test_browser.py``.
Outside CI a missing Chromium or a missing build skips these tests with the reason; in CI (``CI`` set)
it fails them, so they never skip silently there.
"""

from __future__ import annotations

import functools
import importlib
import http.server
import math
import os
import re
import shutil
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
IN_CI = bool(os.environ.get("CI"))

# Chromium's own background traffic is switched off, so every request a page makes is the page's.
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

# TeX left as text: a math delimiter or a backslash command (\alpha, \bar, \mathcal, ...)
RAW_TEX = re.compile(r"\\[()\[\]]|\$\$|\\[a-zA-Z]{2,}")


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"{reason} (CI must run the browser tests; .ci/run installs Chromium)")
    pytest.skip(reason)


def _pages() -> list[str]:
    """Every HTML page of the site, as paths relative to its root (not the root's redirect to the intro)."""
    if not (SITE / "index.html").is_file():
        return []
    skip = ("_static", "_sources", "_images", "_sphinx_design_static")
    pages = (p for p in SITE.rglob("*.html") if p.relative_to(SITE).parts[0] not in skip)
    return sorted(p.relative_to(SITE).as_posix() for p in pages if 'http-equiv="Refresh"' not in p.read_text()[:500])


def _chapters() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    return [f for f in files if (ROOT / f"{f}.ipynb").is_file()]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the test reports what matters; no access log on stderr
        pass


@pytest.fixture(scope="module")
def server():
    if not (SITE / "index.html").is_file():
        _unavailable(f"the book is not built ({SITE / 'index.html'} missing): run `jupyter-book build .` first")
    handler = functools.partial(_QuietHandler, directory=str(SITE))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    try:
        sync_api = importlib.import_module("playwright.sync_api")
    except ImportError:
        _unavailable("the playwright package is not installed (it is in requirements.txt)")
    if not Path(CHROMIUM).is_file():
        _unavailable(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; or set CHROMIUM)")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Visit:
    """One page opened with every outside request blocked, and what it reported."""

    def __init__(self, browser, server: str, path: str):
        self.host = urlsplit(server).netloc
        self.outside: list[str] = []
        self.errors: list[str] = []
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda err: self.errors.append(f"page error: {err}"))
        self.page.on("console", lambda msg: msg.type == "error" and self.errors.append(f"console: {msg.text}"))
        self.page.goto(f"{server}/{path}", wait_until="load")
        # MathJax 3 resolves startup.promise once the first typesetting pass is done
        self.page.evaluate("() => window.MathJax && window.MathJax.startup ? window.MathJax.startup.promise.then(() => true) : true")

    def _route(self, route):
        if urlsplit(route.request.url).netloc == self.host:
            route.continue_()
        else:
            self.outside.append(route.request.url)
            route.abort()

    def close(self):
        self.context.close()


@pytest.fixture(scope="module")
def visits(browser, server):
    """Every page, visited once; screenshots written under _build/screenshots/."""
    pages = _pages()
    if not pages:
        _unavailable("the book is not built")
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    results = {}
    for path in pages:
        visit = Visit(browser, server, path)
        visit.page.screenshot(path=str(SHOTS / (path.replace("/", "__").removesuffix(".html") + ".jpg")), full_page=True, quality=70)
        results[path] = visit
    yield results
    for visit in results.values():
        visit.close()


def _each(visits, check):
    failures = {path: msg for path, visit in visits.items() if (msg := check(visit))}
    assert not failures, "\n".join(f"{path}: {msg}" for path, msg in failures.items())


def test_every_page_loads_without_errors(visits):
    _each(visits, lambda v: "; ".join(v.errors[:5]))


def test_no_page_requests_anything_outside_the_site(visits):
    _each(visits, lambda v: v.outside and f"{len(v.outside)} outside requests, e.g. {v.outside[:3]}")


_MATH_REPORT = """() => {
  const article = document.querySelector("article") || document.body;
  const math = [...article.querySelectorAll(".math")];
  const untypeset = math.filter((el) => !el.querySelector("mjx-container")).map((el) => el.textContent.slice(0, 60));
  const merrors = article.querySelectorAll("mjx-merror").length;
  const clone = article.cloneNode(true);
  clone.querySelectorAll("pre, code, script, style, mjx-container, .highlight").forEach((el) => el.remove());
  const sidebar = document.querySelector(".bd-sidebar-primary");
  return {count: math.length, untypeset, merrors, text: clone.textContent, sidebar: sidebar ? sidebar.textContent : ""};
}"""


def test_every_formula_is_typeset_and_no_raw_tex_is_left(visits):
    total = 0

    def check(visit):
        nonlocal total
        report = visit.page.evaluate(_MATH_REPORT)
        total += report["count"]
        problems = []
        if report["untypeset"]:
            problems.append(f"{len(report['untypeset'])} of {report['count']} formulas not typeset, e.g. {report['untypeset'][:2]}")
        if report["merrors"]:
            problems.append(f"{report['merrors']} MathJax error nodes")
        if m := RAW_TEX.search(report["text"]):
            problems.append(f"raw TeX in the article: ...{report['text'][max(m.start() - 40, 0):m.end() + 40]!r}...")
        if m := RAW_TEX.search(report["sidebar"]):
            problems.append(f"raw TeX in the sidebar: {report['sidebar'][max(m.start() - 40, 0):m.end() + 40]!r}")
        return "; ".join(problems)

    _each(visits, check)
    assert total > 1000, f"only {total} formulas found in the whole book: is the article selector right?"


def test_every_image_loads(visits):
    def check(visit):
        broken = visit.page.evaluate(
            "() => [...document.images].filter((im) => !(im.complete && im.naturalWidth > 0)).map((im) => im.src.slice(0, 80))"
        )
        return broken and f"{len(broken)} images did not load: {broken[:3]}"

    _each(visits, check)


def test_chapters_have_colab_and_download_links(visits, server):
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    repo = config["repository"]["url"].removeprefix("https://github.com/").strip("/")
    for chapter in _chapters():
        visit = visits[f"{chapter}.html"]
        hrefs = visit.page.evaluate("() => [...document.querySelectorAll('a[href]')].map((a) => a.getAttribute('href'))")
        colab = f"https://colab.research.google.com/github/{repo}/blob/{config['repository']['branch']}/{chapter}.ipynb"
        assert colab in hrefs, f"{chapter}: no Colab link {colab}"
        download = [h for h in hrefs if h.endswith(f"_sources/{chapter}.ipynb")]
        assert download, f"{chapter}: no download link for the notebook"
        response = visit.context.request.get(f"{server}/_sources/{chapter}.ipynb")
        assert response.ok and response.json()["cells"], f"{chapter}: the downloadable notebook is not served"


def test_search_results_show_typeset_formulas(browser, server):
    visit = Visit(browser, server, "search.html?q=posterior")
    try:
        page = visit.page
        page.wait_for_selector("#search-results ul.search li p.context", timeout=30_000)
        page.wait_for_function("() => !document.querySelector('#search-results h2')?.textContent.includes('Searching')", timeout=30_000)
        page.evaluate("() => window.MathJax.startup.promise.then(() => MathJax.typesetPromise())")
        report = page.evaluate("""() => {
          const results = document.querySelector('#search-results');
          const typeset = results.querySelectorAll('mjx-container').length;
          const clone = results.cloneNode(true);
          clone.querySelectorAll('mjx-container').forEach((el) => el.remove());
          return {typeset, text: clone.textContent};
        }""")
        assert not visit.errors and not visit.outside, (visit.errors, visit.outside)
        assert report["typeset"] > 0, "no formula typeset in the search results for 'posterior'"
        m = RAW_TEX.search(report["text"])
        assert m is None, f"raw TeX in the search results: {report['text'][max(m.start() - 60, 0):m.end() + 60]!r}"
    finally:
        visit.close()


# --- the explorers, driven through their controls, against ddpm_lib -----------------------------------

EXPLORER_RTOL = 1e-6
"""The issue's bar for the browser's numbers against ddpm_lib's. Both compute in float64 from the same
formulas; the readouts' ``data-number`` carries the full float64 value (JavaScript's shortest
round-trip form), so the residual is a few ulps and 1e-6 leaves room only for a wrong formula's
absence, not its presence."""


def _set_controls(page, root: str, values: dict) -> None:
    # set each control as a reader would (its value, then the input and change events it listens to)
    for name, value in values.items():
        found = page.evaluate(
            """([root, name, value]) => {
                 const el = document.querySelector(`${root} [data-param="${name}"]`);
                 if (!el) return false;
                 el.value = String(value);
                 el.dispatchEvent(new Event("input", {bubbles: true}));
                 el.dispatchEvent(new Event("change", {bubbles: true}));
                 return true;
               }""",
            [root, name, value],
        )
        assert found, f"{root}: no control data-param={name!r}"


def _readouts(page, root: str) -> dict:
    return page.evaluate(
        """(root) => {
             const out = {};
             document.querySelectorAll(`${root} [data-readout]`).forEach((el) => {
               out[el.dataset.readout] = Number(el.dataset.number);
             });
             const err = document.querySelector(`${root} [data-error]`);
             out.error = err && err.offsetParent !== null ? err.textContent.trim() : "";
             return out;
           }""",
        root,
    )


def _close(got: float, want: float) -> bool:
    return math.isclose(got, want, rel_tol=EXPLORER_RTOL, abs_tol=1e-300) or (math.isinf(got) and got == want)


SCHEDULE_CASES = [
    dict(kind="linear", T=1000, t=1),
    dict(kind="linear", T=1000, t=500, beta_start=3e-4, beta_end=0.03),
    dict(kind="cosine", T=1000, t=999, s=0.008),
    dict(kind="cosine", T=200, t=17, s=0.1),
    dict(kind="sigmoid", T=1000, t=250, start=-2.0, end=4.0, tau=0.7),
]


def test_the_schedule_explorer_computes_what_ddpm_lib_does(visits):
    from ddpm_lib.teaching.widgets import make_schedule

    page = visits["notebooks/forward_process.html"].page
    root = '.ddpm-explorer[data-explorer="schedule"]'
    assert page.locator(root).count() == 1, "the schedule explorer is not on the page"
    for case in SCHEDULE_CASES:
        _set_controls(page, root, case)
        got = _readouts(page, root)
        assert not got["error"], f"{case}: the explorer reports {got['error']!r}"
        params = {k: v for k, v in case.items() if k not in ("kind", "T", "t")}
        schedule = make_schedule(case["kind"], case["T"], **params)
        t = case["t"]
        want = {"beta": schedule.beta[t], "alpha_bar": schedule.alpha_bar[t], "snr": schedule.snr[t], "log_snr": schedule.log_snr[t]}
        for name, value in want.items():
            assert _close(got[name], float(value)), f"{case}: {name} {got[name]!r} in the browser, {float(value)!r} in ddpm_lib"


def test_the_schedule_explorer_reports_bad_parameters(visits):
    page = visits["notebooks/forward_process.html"].page
    root = '.ddpm-explorer[data-explorer="schedule"]'
    _set_controls(page, root, dict(kind="sigmoid", start=3.0, end=-3.0))
    assert "start < end" in _readouts(page, root)["error"]
    _set_controls(page, root, dict(kind="linear", T=1000, t=10, beta_start=1e-4, beta_end=0.02))
    assert not _readouts(page, root)["error"]


# the chapter's 1-D linear-Gaussian model (notebooks/elbo.ipynb: model_1d and x1); if the chapter
# changes it, the readouts below stop matching and this test says so
ELBO_MODEL = dict(weight=1.5, bias=0.3, noise_var=0.5, x=1.2)


def test_the_elbo_explorer_computes_what_ddpm_lib_does(visits):
    import torch

    from ddpm_lib.toys import LinearGaussianModel

    page = visits["notebooks/elbo.html"].page
    root = '.ddpm-explorer[data-explorer="elbo"]'
    assert page.locator(root).count() == 1, "the ELBO explorer is not on the page"
    model = LinearGaussianModel(torch.tensor([[ELBO_MODEL["weight"]]], dtype=torch.float64),
                                torch.tensor([ELBO_MODEL["bias"]], dtype=torch.float64), noise_var=ELBO_MODEL["noise_var"])
    x = torch.tensor([ELBO_MODEL["x"]], dtype=torch.float64)
    for mean, log_var in [(-1.0, math.log(2.0)), (0.5, -1.5), (2.75, 1.25), (float(model.posterior(x)[0][0]), -3.0)]:
        _set_controls(page, root, {"mean": mean, "log_var": log_var})
        got = _readouts(page, root)
        assert not got["error"], got["error"]
        # a range input stores its value as text; read back what the browser holds and compare at that point
        m, lv = page.evaluate(f"""() => ["mean", "log_var"].map((n) => Number(document.querySelector('{root} [data-param="' + n + '"]').value))""")
        assert math.isclose(m, mean, abs_tol=1e-12) and math.isclose(lv, log_var, abs_tol=1e-12), (m, lv, mean, log_var)
        q_mean, q_cov = torch.tensor([m], dtype=torch.float64), torch.tensor([[math.exp(lv)]], dtype=torch.float64)
        want = {"log_px": model.log_evidence(x), "elbo": model.elbo(x, q_mean, q_cov), "kl": model.posterior_kl(x, q_mean, q_cov)}
        for name, value in want.items():
            assert _close(got[name], float(value)), f"m={m}, log v={lv}: {name} {got[name]!r} in the browser, {float(value)!r} in ddpm_lib"
