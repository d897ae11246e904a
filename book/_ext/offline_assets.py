"""Make every page of the HTML book complete without a network.

A local Sphinx extension (``_config.yml``: ``sphinx.local_extensions``). What it does:

* **MathJax from the built site.** ``mathjax_path`` points to ``_static/mathjax/tex-mml-chtml.js``,
  and at the end of the HTML build the MathJax 3 files (the ``mathjax`` npm package pinned in
  ``package.json``, installed by ``npm ci`` in ``scripts/setup.sh``) are copied there: the combined
  component, and the folders it loads on demand (TeX extensions, the CHTML fonts, the menu and the
  accessibility modules). Sphinx adds MathJax only to pages that hold math, and to the search page,
  whose result summaries quote the pages' TeX (``_static/typeset-search.js`` typesets them).
* **Each script once.** sphinx-thebe registers its configuration script at every
  ``env-before-read-docs``, which Jupyter Book fires twice, so every page declared ``THEBE_JS_URL``
  twice and threw a ``SyntaxError``. Duplicate scripts are dropped from each page.

Raises ``sphinx.errors.ExtensionError`` at start-up, with the command to run, if the npm packages are
missing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError

MATHJAX_DIR = Path("node_modules") / "mathjax" / "es5"
"""Where ``npm ci`` puts MathJax's browser files, relative to the book's source folder."""

MATHJAX_ENTRY = "tex-mml-chtml.js"
"""The combined component every page loads (TeX and MathML input, CommonHTML output)."""

MATHJAX_PARTS = ("input", "output", "ui", "a11y", "sre", "adaptors")
"""The folders that component loads from on demand (its loader path is its own folder)."""

STATIC_NAME = "mathjax"
"""The folder under ``_static`` that holds the copy."""


def _mathjax_source(app: Sphinx) -> Path:
    source = Path(app.srcdir) / MATHJAX_DIR
    if not (source / MATHJAX_ENTRY).is_file():
        raise ExtensionError(
            f"MathJax's files are missing ({source / MATHJAX_ENTRY} not found), so formulas would not "
            "render without a network. Install the book's front-end packages: run `npm ci` in the "
            "repository root (scripts/setup.sh does)."
        )
    return source


def _configure(app: Sphinx, config) -> None:
    _mathjax_source(app)
    config.mathjax_path = f"{STATIC_NAME}/{MATHJAX_ENTRY}"
    config.html_static_path.append(str(Path(__file__).resolve().parent.parent / "_static"))


def _page_scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    builder = app.builder
    if pagename == "search" and app.config.mathjax3_config is not None:
        # the search page has no math of its own, but its result summaries quote the pages' TeX
        builder.add_js_file("", body="window.MathJax = %s" % json.dumps(app.config.mathjax3_config))
        builder.add_js_file(app.config.mathjax_path, defer="defer")
        builder.add_js_file("typeset-search.js", defer="defer")
    scripts = context.get("script_files")
    if scripts:
        # an inline script's filename is None from some extensions and "" from others: the same script
        seen, unique = set(), []
        for script in scripts:
            key = (script.filename or "", tuple(sorted(script.attributes.items())))
            if key not in seen:
                seen.add(key)
                unique.append(script)
        scripts[:] = unique


def _copy_mathjax(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    source = _mathjax_source(app)
    target = Path(app.outdir) / "_static" / STATIC_NAME
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / MATHJAX_ENTRY, target / MATHJAX_ENTRY)
    for part in MATHJAX_PARTS:
        shutil.copytree(source / part, target / part, dirs_exist_ok=True)


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", _configure)
    app.connect("html-page-context", _page_scripts, priority=900)
    app.connect("build-finished", _copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

