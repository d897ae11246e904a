"""The book's figures: readable at the page's width, no outside requests, and the graphical models drawn whole.

* Every stored PNG in ``notebooks/`` is at most ``MAX_PNG_WIDTH`` pixels wide. The HTML book shows an
  image at most 688 px wide (its content column); a wider one is scaled down and its tick labels and
  legends with it. 740 px leaves a little room for images drawn at 80 dpi with a tight bounding box.
* No stored output (any MIME type, ``text/html`` included, and printed text) references an outside
  URL: a page of the book must not make a request to another site when it is opened (a matplotlib
  animation's HTML, for one, loads its icons from a CDN).
* :mod:`ddpm_lib.teaching.diagrams` draws every node and every edge of each of its diagrams, and the
  diagrams have the arrows the chapters say they have.
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
MAX_PNG_WIDTH = 740
_URL = re.compile(r"https?://", re.IGNORECASE)


def png_widths(cells: list[dict]) -> list[tuple[int, int]]:
    """``(cell index, width in pixels)`` of every stored PNG output."""
    found = []
    for index, cell in enumerate(cells):
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if png is not None:
                data = base64.b64decode("".join(png) if isinstance(png, list) else png)
                found.append((index, Image.open(io.BytesIO(data)).size[0]))
    return found


def outside_urls(cells: list[dict]) -> list[tuple[int, str, str]]:
    """``(cell index, MIME type or "stream", the URL's first 60 characters)`` for every outside URL in a stored output."""
    found = []
    for index, cell in enumerate(cells):
        for output in cell.get("outputs", []):
            texts = [("stream", output["text"])] if "text" in output else []
            texts += [(mime, value) for mime, value in output.get("data", {}).items() if not mime.startswith("image/png")]
            for mime, value in texts:
                text = "".join(value) if isinstance(value, list) else str(value)
                found += [(index, mime, text[m.start() : m.start() + 60]) for m in _URL.finditer(text)]
    return found


def _cells(notebook: Path) -> list[dict]:
    return json.loads(notebook.read_text())["cells"]


def test_the_notebooks_are_found():
    assert len(NOTEBOOKS) >= 9, [n.name for n in NOTEBOOKS]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.stem for n in NOTEBOOKS])
def test_no_png_wider_than_the_page(notebook):
    wide = [(index, width) for index, width in png_widths(_cells(notebook)) if width > MAX_PNG_WIDTH]
    assert not wide, f"{notebook.name}: PNGs wider than {MAX_PNG_WIDTH} px (cell index, width): {wide}; reshape the figure (fewer panels per row, smaller figsize) and re-execute."


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.stem for n in NOTEBOOKS])
def test_no_output_requests_another_site(notebook):
    urls = outside_urls(_cells(notebook))
    assert not urls, f"{notebook.name}: stored outputs reference outside URLs (cell index, MIME type, URL): {urls}"


def _png_cell(width: int) -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (width, 10)).save(buffer, format="PNG")
    return {"cell_type": "code", "outputs": [{"output_type": "display_data",
                                              "data": {"image/png": base64.b64encode(buffer.getvalue()).decode()}}]}


def test_the_width_check_bites_on_a_planted_wide_png():
    cells = [{"cell_type": "markdown", "source": "x"}, _png_cell(MAX_PNG_WIDTH), _png_cell(MAX_PNG_WIDTH + 1)]
    assert png_widths(cells) == [(1, MAX_PNG_WIDTH), (2, MAX_PNG_WIDTH + 1)]
    assert [w for _, w in png_widths(cells) if w > MAX_PNG_WIDTH] == [MAX_PNG_WIDTH + 1]


def test_the_url_check_bites_on_planted_html_and_text():
    cells = [
        {"cell_type": "code", "outputs": [{"output_type": "display_data", "data": {
            "text/html": ['<link rel="stylesheet"\n', 'href="https://cdn.example/font.css">'], "text/plain": ["<HTML>"]}}]},
        {"cell_type": "code", "outputs": [{"output_type": "stream", "name": "stdout", "text": "see HTTP://example.org\n"}]},
        {"cell_type": "code", "outputs": [{"output_type": "stream", "name": "stdout", "text": "no link here\n"}]},
    ]
    assert [(i, mime) for i, mime, _ in outside_urls(cells)] == [(0, "text/html"), (1, "stream")]


# --- the graphical models --------------------------------------------------------------------------

from ddpm_lib.teaching import diagrams  # noqa: E402  (daft: requirements.txt and the book extra)


def _drawn(diagram):
    """What :func:`draw` put on the figure: node circles (by centre), shaded ones, straight arrows, arcs, texts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba
    from matplotlib.patches import Ellipse, FancyArrow, FancyArrowPatch

    fig = diagrams.draw(diagram)
    try:
        (ax,) = fig.axes
        ellipses = [p for p in ax.patches + ax.artists if isinstance(p, Ellipse)]
        centre = lambda p: (round(float(p.center[0]), 6), round(float(p.center[1]), 6))  # noqa: E731
        return {
            "nodes": len({centre(p) for p in ellipses}),  # an observed node is two ellipses, a shaded disc under a circle
            "visible": len({centre(p) for p in ellipses if p.get_edgecolor()[3] > 0}),
            "shaded": len({centre(p) for p in ellipses if p.get_facecolor() == to_rgba("0.7")}),
            "straight": sum(isinstance(p, FancyArrow) for p in ax.patches + ax.artists),
            "arcs": sum(isinstance(getattr(t, "arrow_patch", None), FancyArrowPatch) for t in ax.texts),
            "texts": {t.get_text() for t in ax.texts if t.get_text()},
        }
    finally:
        plt.close(fig)


DIAGRAMS = {"vae": diagrams.vae_diagram, "hvae": diagrams.hvae_diagram, "diffusion": diagrams.diffusion_chain_diagram}


@pytest.mark.parametrize("name", DIAGRAMS)
def test_every_node_and_edge_is_drawn(name):
    diagram = DIAGRAMS[name]()
    drawn = _drawn(diagram)
    assert drawn["nodes"] == len(diagram.nodes)
    assert drawn["visible"] == sum(not n.elided for n in diagram.nodes)
    assert drawn["shaded"] == sum(n.observed for n in diagram.nodes) == 1
    assert drawn["straight"] == sum(e.kind == "model" for e in diagram.edges)
    assert drawn["arcs"] == sum(e.kind == "inference" for e in diagram.edges)
    labels = {n.label for n in diagram.nodes} | {e.label for e in diagram.edges if e.label}
    assert labels <= drawn["texts"], labels - drawn["texts"]


def _pairs(diagram, kind):
    return {(e.start, e.end) for e in diagram.edges if e.kind == kind}


def test_the_vae_has_its_decoder_and_its_encoder():
    d = diagrams.vae_diagram()
    assert _pairs(d, "model") == {("z", "x")} and _pairs(d, "inference") == {("x", "z")}
    assert d.node("x").observed and not d.node("z").observed


@pytest.mark.parametrize("name", ["hvae", "diffusion"])
def test_the_chains_run_both_ways_between_every_neighbour(name):
    # nodes left to right, the data first: model arrows point left (towards the data), encoder/forward arrows right
    d = DIAGRAMS[name]()
    order = [n.name for n in sorted(d.nodes, key=lambda n: n.x)]
    neighbours = set(zip(order, order[1:]))
    assert _pairs(d, "inference") == neighbours
    assert _pairs(d, "model") == {(b, a) for a, b in neighbours}
    assert [n.observed for n in sorted(d.nodes, key=lambda n: n.x)] == [True] + [False] * (len(order) - 1)


def test_the_diffusion_chain_names_its_two_kernels():
    d = diagrams.diffusion_chain_diagram()
    labelled = {(e.start, e.end): e.label for e in d.edges if e.label}
    assert labelled == {("xtm1", "xt"): r"$q(x_t \mid x_{t-1})$", ("xt", "xtm1"): r"$p_\theta(x_{t-1} \mid x_t)$"}


def test_the_checks_bite_on_a_planted_missing_edge():
    d = diagrams.diffusion_chain_diagram()
    planted = diagrams.Diagram(d.nodes, d.edges[:-1])  # the last forward arrow, dots -> x_T, dropped
    drawn = _drawn(planted)
    assert drawn["arcs"] == sum(e.kind == "inference" for e in d.edges) - 1
    order = [n.name for n in sorted(d.nodes, key=lambda n: n.x)]
    assert _pairs(planted, "inference") != set(zip(order, order[1:]))


def test_a_bad_diagram_is_refused():
    node = diagrams.Node("x", "$x$", 0.0, 0.0)
    with pytest.raises(ValueError, match="names a node"):
        diagrams.Diagram((node,), (diagrams.Edge("x", "y", "model"),))
    with pytest.raises(ValueError, match="edge kind"):
        diagrams.Diagram((node, diagrams.Node("y", "$y$", 1.0, 0.0)), (diagrams.Edge("x", "y", "encoder"),))
    with pytest.raises(ValueError, match="unique"):
        diagrams.Diagram((node, node), ())
