"""Graphical models of the book's latent-variable models, drawn with daft (matplotlib).

Three diagrams, each a :class:`Diagram` (its nodes and edges, as data) drawn by the one function
:func:`draw`:

* :func:`vae_diagram`: the VAE of {cite:t}`kingma2014autoencoding` (their Figure 1): the decoder
  :math:`p_\\theta(x \\mid z)` and the encoder :math:`q_\\phi(z \\mid x)`; book chapter "The variational
  autoencoder", eq. ``elbo-recon-prior``. Their figure also has the parameters :math:`\\theta` and
  :math:`\\phi` as nodes and a plate over the :math:`N` data points; both are left out here (the
  parameters are named in the edge labels; the repetition over data points is left implicit).
* :func:`hvae_diagram`: the Markovian hierarchical VAE of Luo (2022, Figure 2), the factorization of
  book eq. ``mhvae-factorization``.
* :func:`diffusion_chain_diagram`: the variational diffusion model of Ho et al. (2020, Figure 2), the
  forward kernel :math:`q(x_t \\mid x_{t-1})` (book eq. ``forward-kernel``) and the reverse model
  :math:`p_\\theta(x_{t-1} \\mid x_t)` (book eq. ``vdm-reverse-model``).

Every diagram uses one convention: the generative model's conditionals are solid straight arrows,
the encoder's (or the fixed forward process's) are dashed arrows curved below (the VAE's to the side), and an
observed variable is shaded. daft draws the nodes and the straight edges; it draws every edge as a
straight line between node centres, so the second, opposite arrow between the same two nodes would
lie on the first; those are drawn with matplotlib's ``annotate`` on an arc (``connectionstyle
arc3``) on the same axes.

Imports matplotlib and daft (the ``book`` extra); never used by training or sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import daft
from matplotlib.figure import Figure

__all__ = ["Node", "Edge", "Diagram", "vae_diagram", "hvae_diagram", "diffusion_chain_diagram", "draw", "LATENT_DOTS"]

LATENT_DOTS = r"$\cdots$"
"""The label of a placeholder node: the elided middle of a chain, drawn without a circle."""

_MODEL, _INFERENCE = "model", "inference"
_NODE_CM = 1.2  # daft's node_unit: a node's diameter, in cm
_GRID_CM = 2.0  # daft's grid_unit: one model unit, in cm


@dataclass(frozen=True)
class Node:
    """A variable of a diagram.

    Attributes:
        name: its identifier in the diagram's edges (plain text, e.g. ``"z1"``).
        label: its label, matplotlib mathtext (e.g. ``"$z_1$"``); :data:`LATENT_DOTS` for an elided stretch.
        x, y: its position in grid units (one unit is 2 cm, a node 1.2 cm across).
        observed: shaded (the data).
    """

    name: str
    label: str
    x: float
    y: float
    observed: bool = False

    @property
    def elided(self) -> bool:
        """Whether the node stands for the elided middle of a chain (drawn as dots, no circle)."""
        return self.label == LATENT_DOTS


@dataclass(frozen=True)
class Edge:
    """A conditional of a diagram, an arrow from the conditioning variable to the conditioned one.

    Attributes:
        start, end: node names; the arrow points at ``end``.
        kind: ``"model"`` (the generative model's conditional: a solid straight arrow) or
            ``"inference"`` (the encoder's or the forward process's: a dashed arc).
        label: mathtext written beside the arrow, or ``""``.
    """

    start: str
    end: str
    kind: str
    label: str = ""


@dataclass(frozen=True)
class Diagram:
    """Nodes and edges of a graphical model; :func:`draw` renders it.

    Raises:
        ValueError: for an edge between unknown nodes, an unknown edge kind, or two nodes with one name.
    """

    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]

    def __post_init__(self) -> None:
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"Diagram: node names must be unique, got {names}.")
        for e in self.edges:
            if e.start not in names or e.end not in names:
                raise ValueError(f"Diagram: the edge {e.start!r} -> {e.end!r} names a node that is not among {names}.")
            if e.kind not in (_MODEL, _INFERENCE):
                raise ValueError(f"Diagram: edge kind must be {_MODEL!r} or {_INFERENCE!r}, got {e.kind!r}.")

    def node(self, name: str) -> Node:
        """The node called ``name`` (``KeyError`` if there is none)."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node {name!r}; the nodes are {[n.name for n in self.nodes]}.")


def vae_diagram() -> Diagram:
    """The VAE: latent :math:`z` above the observed :math:`x`; decoder :math:`p_\\theta(x \\mid z)`, encoder :math:`q_\\phi(z \\mid x)`.

    Kingma & Welling (2014), Figure 1, without its parameter nodes :math:`\\theta`, :math:`\\phi` and its
    plate over the data set.
    """
    nodes = (Node("z", "$z$", 0.0, 1.5), Node("x", "$x$", 0.0, 0.0, observed=True))
    edges = (Edge("z", "x", _MODEL, r"$p_\theta(x \mid z)$"), Edge("x", "z", _INFERENCE, r"$q_\phi(z \mid x)$"))
    return Diagram(nodes, edges)


def _chain(names: list[str], labels: list[str], spacing: float, observed_first: bool) -> tuple[Node, ...]:
    """Nodes on one row, left to right, the first one observed when asked."""
    return tuple(Node(n, lab, i * spacing, 0.0, observed=observed_first and i == 0)
                 for i, (n, lab) in enumerate(zip(names, labels)))


def hvae_diagram() -> Diagram:
    """The Markovian hierarchical VAE, :math:`x \\to z_1 \\to \\dots \\to z_T` (encoder) and back (decoder).

    Nodes ``x, z1, z2, dots, zT``; every neighbouring pair has a decoder edge
    :math:`p_\\theta(z_{t-1} \\mid z_t)` (towards ``x``) and an encoder edge :math:`q_\\phi(z_t \\mid z_{t-1})`
    (away from it), the factorization of book eq. ``mhvae-factorization`` (Luo 2022, Figure 2).
    The edges at the two ends are labelled.
    """
    names = ["x", "z1", "z2", "dots", "zT"]
    nodes = _chain(names, ["$x$", "$z_1$", "$z_2$", LATENT_DOTS, "$z_T$"], 1.8, observed_first=True)
    decoder_labels = {("z1", "x"): r"$p_\theta(x \mid z_1)$", ("zT", "dots"): r"$p_\theta(z_{T-1} \mid z_T)$"}
    encoder_labels = {("x", "z1"): r"$q_\phi(z_1 \mid x)$", ("dots", "zT"): r"$q_\phi(z_T \mid z_{T-1})$"}
    edges = []
    for a, b in zip(names, names[1:]):
        edges.append(Edge(b, a, _MODEL, decoder_labels.get((b, a), "")))
        edges.append(Edge(a, b, _INFERENCE, encoder_labels.get((a, b), "")))
    return Diagram(nodes, tuple(edges))


def diffusion_chain_diagram() -> Diagram:
    """The diffusion chain :math:`x_0 \\to x_1 \\to \\dots \\to x_T` and the reverse model back.

    Nodes ``x0, x1, dots1, xtm1, xt, dots2, xT``; every neighbouring pair has a forward edge
    :math:`q(x_t \\mid x_{t-1})` (book eq. ``forward-kernel``, fixed, not learned) and a reverse edge
    :math:`p_\\theta(x_{t-1} \\mid x_t)` (book eq. ``vdm-reverse-model``); the pair
    :math:`(x_{t-1}, x_t)` is labelled. Ho et al. (2020), Figure 2, drawn left to right.
    """
    names = ["x0", "x1", "dots1", "xtm1", "xt", "dots2", "xT"]
    labels = ["$x_0$", "$x_1$", LATENT_DOTS, "$x_{t-1}$", "$x_t$", LATENT_DOTS, "$x_T$"]
    nodes = _chain(names, labels, 1.5, observed_first=True)
    edges = []
    for a, b in zip(names, names[1:]):
        labelled = (a, b) == ("xtm1", "xt")
        edges.append(Edge(b, a, _MODEL, r"$p_\theta(x_{t-1} \mid x_t)$" if labelled else ""))
        edges.append(Edge(a, b, _INFERENCE, r"$q(x_t \mid x_{t-1})$" if labelled else ""))
    return Diagram(nodes, tuple(edges))


def draw(diagram: Diagram, fontsize: float = 12.0) -> Figure:
    """Render a :class:`Diagram` as a new matplotlib figure (the caller shows or closes it).

    Nodes are daft nodes 1.2 cm across (observed ones shaded; elided ones dots without a circle),
    ``"model"`` edges daft's straight solid arrows, ``"inference"`` edges dashed arcs drawn with
    ``Axes.annotate`` (arc3, bulging below a left-to-right edge and to the right of an upward one).
    The figure is sized by daft from the node positions plus a margin of 0.9 grid units, which holds
    the arcs and labels of the horizontal chains: the widest diagram above, the diffusion chain, is
    21.6 cm (8.5 in) wide, 680 px at the book's 80 dpi. The labels beside a vertical edge (the VAE's)
    reach beyond that margin, so the figure's ``savefig`` (and ``pyplot.savefig``, which calls it) saves
    the tight bounding box unless ``bbox_inches`` is given, as the notebooks' inline backend does;
    ``bbox_inches=None`` saves the figure's own box and clips the VAE's labels.

    Returns:
        the figure, with one axes holding one ``Ellipse`` per node (elided nodes' invisible), one
        solid ``FancyArrow`` per model edge, from near its start node's centre towards its end node's,
        and one dashed annotation arrow (``FancyArrowPatch``, head at ``xy``) per inference edge, with
        ``xyann`` at its start node's centre and ``xy`` at its end node's.
    """
    xs, ys = [n.x for n in diagram.nodes], [n.y for n in diagram.nodes]
    margin = 0.9  # grid units around the nodes: room for the arcs and their labels
    origin = (min(xs) - margin, min(ys) - margin)
    pgm = daft.PGM(shape=(max(xs) - min(xs) + 2 * margin, max(ys) - min(ys) + 2 * margin), origin=origin,
                   grid_unit=_GRID_CM, node_unit=_NODE_CM)
    for n in diagram.nodes:
        plot_params = {"ec": "none", "fc": "none"} if n.elided else None
        pgm.add_node(n.name, n.label, n.x, n.y, observed=n.observed, plot_params=plot_params, fontsize=fontsize)
    for e in diagram.edges:
        if e.kind == _MODEL:
            a, b = diagram.node(e.start), diagram.node(e.end)
            vertical = a.x == b.x
            pgm.add_edge(e.start, e.end, label=e.label or None, label_params={"fontsize": fontsize - 1},
                         xoffset=-1.0 if vertical else 0.0, yoffset=0.0 if vertical else 0.75)
    ax = pgm.render()
    radius_pt = _NODE_CM / 2 / 2.54 * 72
    for e in diagram.edges:
        if e.kind != _INFERENCE:
            continue
        a, b = diagram.node(e.start), diagram.node(e.end)
        # daft's axes are in cm from the origin: a grid point (x, y) is at _GRID_CM * ((x, y) - origin)
        x1, y1 = _GRID_CM * (a.x - origin[0]), _GRID_CM * (a.y - origin[1])
        x2, y2 = _GRID_CM * (b.x - origin[0]), _GRID_CM * (b.y - origin[1])
        # arc3's control point is the midpoint + rad * (dy, -dx); rad > 0 bulges below a left-to-right edge
        # and to the right of an upward one
        rad = 0.45
        ax.annotate("", xy=(x2, y2), xytext=(x1, y1),
                    arrowprops={"arrowstyle": "-|>", "linestyle": "--", "color": "0.25", "lw": 1.0,
                                "connectionstyle": f"arc3,rad={rad}", "shrinkA": radius_pt + 1, "shrinkB": radius_pt + 1,
                                "mutation_scale": 10})
        if e.label:
            dx, dy = x2 - x1, y2 - y1
            # the arc's midpoint (a quadratic Bezier's, halfway to the control point), and a little beyond it
            mx, my = (x1 + x2) / 2 + 0.5 * rad * dy, (y1 + y2) / 2 - 0.5 * rad * dx
            vertical = dx == 0
            ax.text(mx + (0.15 if vertical else 0.0), my - (0.0 if vertical else 0.25), e.label, fontsize=fontsize - 1,
                    ha="left" if vertical else "center", va="center" if vertical else "top", color="0.25")
    fig = pgm.figure
    _save_whole(fig)
    return fig


def _save_whole(fig: Figure) -> None:
    """Make ``fig.savefig`` (and ``pyplot.savefig``, which calls it) default to ``bbox_inches="tight"``."""
    plain = fig.savefig

    def savefig(*args, **kwargs):
        kwargs.setdefault("bbox_inches", "tight")
        return plain(*args, **kwargs)

    savefig.__doc__ = f"Figure.savefig with bbox_inches='tight' unless given (labels reach beyond the figure).\n\n{plain.__doc__}"
    fig.savefig = savefig

