"""The book's figures: readable at the page's width, no outside requests, and the graphical models drawn whole.

* Every stored PNG in ``notebooks/`` is at most ``MAX_PNG_WIDTH`` pixels wide. The HTML book shows an
  image at most 688 px wide (its content column); a wider one is scaled down and its tick labels and
  legends with it. 740 px leaves a little room for images drawn at 80 dpi with a tight bounding box.
* No stored output (any MIME type, ``text/html`` included, and printed text) references an outside
  URL: a page of the book must not make a request to another site when it is opened (a matplotlib
  animation's HTML, for one, loads its icons from a CDN).
* :mod:`ddpm_lib.teaching.diagrams` draws every node and every edge of each of its diagrams, each arrow
  from its start node to its end node, the model's solid and the encoder's (forward process's) dashed;
  the diagrams have the arrows the chapters say they have; a saved diagram holds all its labels. Each of
  these checks is shown to fail on a planted drawing mistake.
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


def _nearest(point, centres: dict) -> str:
    """The name of the node whose centre is nearest to ``point``."""
    return min(centres, key=lambda name: (centres[name][0] - point[0]) ** 2 + (centres[name][1] - point[1]) ** 2)


def _drawn(diagram, plant=None):
    """What :func:`draw` put on the figure: node circles (by centre), shaded ones, straight arrows, arcs, texts,
    and each arrow's direction (as a pair of node names) and line style.

    ``plant(fig)``, if given, changes the drawn figure first: the tests below use it to plant drawing mistakes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import to_rgba
    from matplotlib.patches import ArrowStyle, Ellipse, FancyArrow, FancyArrowPatch

    fig = diagrams.draw(diagram)
    try:
        if plant is not None:
            plant(fig)
        (ax,) = fig.axes
        ellipses = [p for p in ax.patches + ax.artists if isinstance(p, Ellipse)]
        centre = lambda p: (round(float(p.center[0]), 6), round(float(p.center[1]), 6))  # noqa: E731
        # where each node is drawn: its grid position, scaled by daft's grid unit and shifted by the offset that
        # carries the nodes' mean onto the circles' mean (the same set of points, so the same mean)
        grid = np.array([(n.x, n.y) for n in diagram.nodes])
        drawn_centres = np.array(sorted({centre(p) for p in ellipses}))
        offset = drawn_centres.mean(0) - diagrams._GRID_CM * grid.mean(0) if len(drawn_centres) == len(grid) else 0.0
        centres = {n.name: tuple(diagrams._GRID_CM * g + offset) for n, g in zip(diagram.nodes, grid)}
        arrows = [p for p in ax.patches + ax.artists if isinstance(p, FancyArrow)]
        arcs = [t for t in ax.texts if isinstance(getattr(t, "arrow_patch", None), FancyArrowPatch)]
        return {
            "nodes": len({centre(p) for p in ellipses}),  # an observed node is two ellipses, a shaded disc under a circle
            "placed": all(min(np.hypot(*(np.array(c) - d)) for d in drawn_centres) < 1e-6 for c in centres.values()),
            "visible": len({centre(p) for p in ellipses if p.get_edgecolor()[3] > 0}),
            "shaded": len({centre(p) for p in ellipses if p.get_facecolor() == to_rgba("0.7")}),
            "straight": len(arrows),
            "arcs": len(arcs),
            "texts": {t.get_text() for t in ax.texts if t.get_text()},
            # a straight arrow runs from (x, y) to (x + dx, y + dy) (FancyArrow keeps them as _x, _y, _dx, _dy); daft
            # shortens it to the circles, so its tail is nearest the start node and its head nearest the end node
            "straight_pairs": sorted((_nearest((p._x, p._y), centres), _nearest((p._x + p._dx, p._y + p._dy), centres))
                                     for p in arrows),
            "straight_styles": {p.get_linestyle() for p in arrows},
            # an annotation's arrow runs from xyann (the text's place, empty here) to xy, head at xy (-|>: CurveFilledB)
            "arc_pairs": sorted((_nearest(t.xyann, centres), _nearest(t.xy, centres)) for t in arcs),
            "arc_ends_on_centres": all(min(np.hypot(*(np.array(c) - np.array(end))) for c in centres.values()) < 1e-6
                                       for t in arcs for end in (t.xy, t.xyann)),
            "arc_styles": {t.arrow_patch.get_linestyle() for t in arcs},
            "arc_heads": {type(t.arrow_patch.get_arrowstyle()) for t in arcs} <= {ArrowStyle.CurveFilledB},
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


def _directions_and_styles_agree(diagram, drawn) -> bool:
    """Every arrow points from its start node to its end node, model arrows solid, inference arcs dashed."""
    return (drawn["placed"] and drawn["arc_ends_on_centres"] and drawn["arc_heads"]
            and drawn["straight_pairs"] == sorted((e.start, e.end) for e in diagram.edges if e.kind == "model")
            and drawn["arc_pairs"] == sorted((e.start, e.end) for e in diagram.edges if e.kind == "inference")
            and drawn["straight_styles"] == {"-"} and drawn["arc_styles"] == {"--"})


@pytest.mark.parametrize("name", DIAGRAMS)
def test_every_arrow_points_from_its_start_to_its_end_in_its_style(name):
    diagram = DIAGRAMS[name]()
    drawn = _drawn(diagram)
    assert _directions_and_styles_agree(diagram, drawn), drawn


def _reverse_arcs(fig):
    for t in fig.axes[0].texts:
        if getattr(t, "arrow_patch", None) is not None:
            t.xy, t.xyann = t.xyann, t.xy


def _solid_arcs(fig):
    for t in fig.axes[0].texts:
        if getattr(t, "arrow_patch", None) is not None:
            t.arrow_patch.set_linestyle("-")


def _reverse_model_arrows(fig):
    from matplotlib.patches import FancyArrow

    for p in fig.axes[0].patches:
        if isinstance(p, FancyArrow):
            p.set_data(x=p._x + p._dx, y=p._y + p._dy, dx=-p._dx, dy=-p._dy)


def _dashed_model_arrows(fig):
    from matplotlib.patches import FancyArrow

    for p in fig.axes[0].patches:
        if isinstance(p, FancyArrow):
            p.set_linestyle("--")


def _head_at_the_start(fig):
    for t in fig.axes[0].texts:
        if getattr(t, "arrow_patch", None) is not None:
            t.arrow_patch.set_arrowstyle("<|-")


@pytest.mark.parametrize("name", DIAGRAMS)
@pytest.mark.parametrize("plant", [_reverse_arcs, _solid_arcs, _reverse_model_arrows, _dashed_model_arrows, _head_at_the_start],
                         ids=lambda f: f.__name__.strip("_"))
def test_the_direction_and_style_checks_bite_on_planted_drawings(name, plant):
    diagram = DIAGRAMS[name]()
    assert not _directions_and_styles_agree(diagram, _drawn(diagram, plant)), f"the planted {plant.__name__} passed"


def _saved_size(fig, save) -> tuple[int, int]:
    buffer = io.BytesIO()
    save(fig, buffer)
    return Image.open(io.BytesIO(buffer.getvalue())).size


def _holds_every_label(fig, save) -> bool:
    """Whether ``save(fig, buffer)`` (at 80 dpi) writes a PNG as large as the box around everything drawn."""
    renderer = fig.canvas.get_renderer()
    needed = fig.get_tightbbox(renderer)  # inches
    width, height = _saved_size(fig, save)
    return width >= needed.width * 80 - 1 and height >= needed.height * 80 - 1


@pytest.mark.parametrize("name", DIAGRAMS)
def test_a_saved_diagram_holds_all_its_labels(name):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    fig = diagrams.draw(DIAGRAMS[name]())
    try:
        assert _holds_every_label(fig, lambda f, b: f.savefig(b, format="png", dpi=80))
        plt.figure(fig.number)
        assert _holds_every_label(fig, lambda f, b: plt.savefig(b, format="png", dpi=80))  # pyplot's goes through it
        if name == "vae":  # planted: the plain Figure.savefig, the figure's own box, clips the labels beside the edges
            assert not _holds_every_label(fig, lambda f, b: Figure.savefig(f, b, format="png", dpi=80))
    finally:
        plt.close(fig)


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
