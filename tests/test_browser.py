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
