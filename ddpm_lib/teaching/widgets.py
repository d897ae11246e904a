"""An interactive explorer for noise schedules (book chapter "The forward process and noise schedules").

Glue over the core math: it builds a :class:`~ddpm_lib.core.schedules.Schedule`, noises a digit with
:func:`~ddpm_lib.core.forward.q_sample` and draws the result with matplotlib. Only notebooks and tests
import this module (it needs matplotlib and, for :func:`schedule_explorer`, ipywidgets); the core
modules never do.

* :func:`make_schedule` builds one of the three schedules from a flat set of parameters.
* :func:`plot_schedule` draws :math:`\\bar\\alpha_t`, :math:`\\log\\mathrm{SNR}(t)` and a digit noised
  to step ``t``. Invalid parameters give a figure that shows the error message, never a traceback.
* :func:`schedule_explorer` wraps :func:`plot_schedule` in ``ipywidgets.interact`` sliders.
"""

from __future__ import annotations

import functools
import inspect
import textwrap

import matplotlib.pyplot as plt
import torch

from ..data import load_mnist, to_model, to_uint8
from ..core.forward import q_sample
from ..core.schedules import Schedule, cosine_schedule, linear_schedule, sigmoid_schedule

__all__ = ["SCHEDULE_KINDS", "make_schedule", "plot_schedule", "schedule_explorer", "default_digit"]

SCHEDULE_KINDS = ("linear", "cosine", "sigmoid")
"""The schedule kinds :func:`make_schedule` knows."""


def _constructor_defaults() -> dict[str, float]:
    # each schedule parameter's default, read from its constructor's signature (one source of the numbers)
    params = {
        linear_schedule: ("beta_start", "beta_end"),
        cosine_schedule: ("s",),
        sigmoid_schedule: ("start", "end", "tau"),
    }
    defaults = {name: inspect.signature(f).parameters[name].default for f, names in params.items() for name in names}
    no_default = [name for name, value in defaults.items() if value is inspect.Parameter.empty]
    if no_default:
        raise RuntimeError(f"the schedule explorer needs defaults in the schedule constructors for {no_default}.")
    return defaults


_DEFAULTS = _constructor_defaults()
"""The defaults of ``linear_schedule`` (``beta_start``, ``beta_end``), ``cosine_schedule`` (``s``) and
``sigmoid_schedule`` (``start``, ``end``, ``tau``): the grey reference curves, the defaults below and the
sliders' starting values."""

_LOG_SNR_YLIM = (-22.0, 16.0)


def make_schedule(
    kind: str = "linear",
    T: int = 1000,
    beta_start: float = _DEFAULTS["beta_start"],
    beta_end: float = _DEFAULTS["beta_end"],
    s: float = _DEFAULTS["s"],
    start: float = _DEFAULTS["start"],
    end: float = _DEFAULTS["end"],
    tau: float = _DEFAULTS["tau"],
) -> Schedule:
    """Build a schedule of the given kind; the parameters of the other kinds are ignored.

    The parameters' defaults are those of the schedule constructors (read from their signatures).

    Args:
        kind: ``"linear"`` (uses ``beta_start``, ``beta_end``), ``"cosine"`` (uses ``s``) or
            ``"sigmoid"`` (uses ``start``, ``end``, ``tau``).
        T: the number of steps.

    Returns:
        The :class:`~ddpm_lib.core.schedules.Schedule`.

    Raises:
        ValueError: for an unknown kind, or parameters the schedule constructors reject (their
            message says which parameter is wrong).
    """
    if kind == "linear":
        return linear_schedule(T, beta_start=float(beta_start), beta_end=float(beta_end))
    if kind == "cosine":
        return cosine_schedule(T, s=float(s))
    if kind == "sigmoid":
        return sigmoid_schedule(T, start=float(start), end=float(end), tau=float(tau))
    raise ValueError(f"unknown schedule kind {kind!r}; choose one of {SCHEDULE_KINDS}.")


@functools.lru_cache(maxsize=1)
def default_digit() -> torch.Tensor:
    """The first MNIST test image (a 7) in model range: float32, shape ``(1, 1, 28, 28)``, values in ``[-1, 1]``.

    Raises:
        RuntimeError: if no MNIST source is available (see :func:`ddpm_lib.data.load_mnist`).
    """
    images, _ = load_mnist("test")
    return to_model(images[:1])


def _as_model_image(image: torch.Tensor | None) -> torch.Tensor:
    """Normalize ``image`` to shape ``(1, 1, H, W)`` in model range (uint8 goes through ``to_model``)."""
    if image is None:
        return default_digit()
    image = torch.as_tensor(image)
    if image.dtype == torch.uint8:
        image = to_model(image.reshape(1, *image.shape[-2:]))
    if not image.dtype.is_floating_point:
        raise TypeError(f"image must be uint8 pixels or a float tensor in [-1, 1], got dtype {image.dtype}.")
    if image.ndim < 2 or image.numel() != image.shape[-1] * image.shape[-2]:
        raise ValueError(f"image must hold one image of shape (H, W), (1, H, W) or (1, 1, H, W); got {tuple(image.shape)}.")
    return image.reshape(1, 1, *image.shape[-2:])


def _message_figure(title: str, message: str, figsize: tuple[float, float]) -> plt.Figure:
    fig, ax = plt.subplots(figsize=figsize)
    ax.set_axis_off()
    wrapped = "\n".join(textwrap.wrap(message, width=100))
    ax.text(0.5, 0.6, title, ha="center", va="center", fontsize=13, weight="bold", color="darkred", transform=ax.transAxes)
    ax.text(0.5, 0.35, wrapped, ha="center", va="center", fontsize=10, color="darkred", transform=ax.transAxes,
            parse_math=False)
    return fig


def plot_schedule(
    kind: str = "linear",
    beta_start: float = _DEFAULTS["beta_start"],
    beta_end: float = _DEFAULTS["beta_end"],
    s: float = _DEFAULTS["s"],
    start: float = _DEFAULTS["start"],
    end: float = _DEFAULTS["end"],
    tau: float = _DEFAULTS["tau"],
    t: int = 500,
    T: int = 1000,
    image: torch.Tensor | None = None,
    seed: int = 0,
    reference: bool = True,
    figsize: tuple[float, float] = (13.0, 3.6),
) -> plt.Figure:
    """Draw one schedule: :math:`\\bar\\alpha_t`, :math:`\\log\\mathrm{SNR}(t)` and a digit noised to step ``t``.

    Three panels, left to right:

    1. :math:`\\bar\\alpha_t` against ``t`` (book eq. ``alpha-bar``), the signal's share of the variance;
    2. :math:`\\log\\mathrm{SNR}(t) = \\log\\big(\\bar\\alpha_t/(1-\\bar\\alpha_t)\\big)` in nats (book eq. ``snr``),
       for ``t = 1..T`` (it is :math:`+\\infty` at ``t = 0``);
    3. :math:`x_t = \\sqrt{\\bar\\alpha_t}\\,x_0 + \\sqrt{1-\\bar\\alpha_t}\\,\\epsilon` (book eq. ``q-sample``) for the
       given image, with :math:`\\epsilon` drawn from ``seed``; it is shown through
       :func:`~ddpm_lib.data.to_uint8`, which clips to ``[-1, 1]``.

    With ``reference=True`` the first two panels also show the three default schedules in grey, and
    a dotted vertical line marks ``t``. See :func:`make_schedule` for which parameters each kind uses.

    Args:
        t: the step shown in panel 3, an integer in ``0..T``.
        image: one image, uint8 in ``0..255`` or float in ``[-1, 1]``, of shape ``(H, W)``,
            ``(1, H, W)`` or ``(1, 1, H, W)``; ``None`` uses :func:`default_digit`.
        seed: seeds the noise :math:`\\epsilon`, so the same ``seed`` shows the same noise at every ``t``.

    Returns:
        The matplotlib figure (managed by pyplot: show it with ``plt.show()`` or close it). If the
        parameters are invalid (a bad schedule, kind, ``t`` or image) the figure holds the error
        message instead of the plots; no exception is raised for them.
    """
    try:
        schedule = make_schedule(kind, T, beta_start, beta_end, s, start, end, tau)
        if isinstance(t, bool) or int(t) != t or not 0 <= int(t) <= schedule.T:
            raise ValueError(f"t must be an integer in 0..T = 0..{schedule.T}, got {t!r}.")
        t = int(t)
        x0 = _as_model_image(image)
    except (ValueError, TypeError, IndexError) as err:
        return _message_figure("Invalid parameters", str(err), figsize)

    gen = torch.Generator().manual_seed(int(seed))
    eps = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
    xt = q_sample(x0, torch.tensor([t]), eps, schedule)
    steps = torch.arange(schedule.T + 1)
    ab = schedule.alpha_bar

    fig, (ax_ab, ax_snr, ax_img) = plt.subplots(
        1, 3, figsize=figsize, gridspec_kw={"width_ratios": [1.0, 1.0, 0.62]}
    )
    if reference:
        for ref_kind in SCHEDULE_KINDS:
            ref = make_schedule(ref_kind, schedule.T, **_DEFAULTS)
            ax_ab.plot(steps, ref.alpha_bar, color="0.8", lw=1.0)
            ax_snr.plot(steps[1:], ref.log_snr[1:], color="0.8", lw=1.0)
            ax_snr.annotate(ref_kind, (schedule.T, float(ref.log_snr[-1])), fontsize=7, color="0.5", ha="right", va="bottom")
    ax_ab.plot(steps, ab, color="C0", lw=2.0, label=kind)
    ax_ab.axvline(t, color="k", ls=":", lw=1.0)
    ax_ab.set(xlabel="t", ylabel=r"$\bar\alpha_t$", title=r"$\bar\alpha_t$ (signal variance share)", ylim=(-0.03, 1.03))
    ax_ab.legend(loc="upper right", fontsize=8)
    log_snr = schedule.log_snr[1:].clamp(*_LOG_SNR_YLIM)
    ax_snr.plot(steps[1:], log_snr, color="C1", lw=2.0)
    ax_snr.axhline(0.0, color="0.6", lw=0.8)
    ax_snr.axvline(t, color="k", ls=":", lw=1.0)
    ax_snr.set(xlabel="t", ylabel=r"$\log\,\mathrm{SNR}(t)$", title=r"log-SNR (nats)", ylim=_LOG_SNR_YLIM)

    ax_img.imshow(to_uint8(xt)[0].numpy(), cmap="gray", vmin=0, vmax=255)
    ax_img.set_axis_off()
    snr_text = "inf" if t == 0 else f"{float(schedule.log_snr[t]):.2f}"
    ax_img.set_title(f"$x_t$ at t = {t}\n" + rf"$\bar\alpha_t$ = {float(ab[t]):.4f}, log-SNR = {snr_text}", fontsize=9)
    fig.tight_layout()
    return fig


def schedule_explorer(image: torch.Tensor | None = None, T: int = 1000, seed: int = 0):
    """Sliders over the schedule's parameters, redrawing :func:`plot_schedule` on every change.

    Built with ``ipywidgets.interact``. The controls are the schedule kind, ``beta_start`` and
    ``beta_end`` (linear), ``s`` (cosine), ``start``, ``end`` and ``tau`` (sigmoid) and the step
    ``t`` shown on the right. Parameters the schedule rejects (for example ``beta_end = 1`` or a
    sigmoid with ``start >= end``) show the error message in the plot area.

    Args:
        image: the digit to noise (see :func:`plot_schedule`); ``None`` uses :func:`default_digit`.
        T: the number of steps of every schedule.
        seed: seeds the noise shown in the image panel.

    Returns:
        The ``ipywidgets.interactive`` widget (already displayed; keep a reference or ignore it).

    Raises:
        ValueError: if ``T`` is not an integer ``>= 1``.
    """
    import ipywidgets as widgets
    from IPython.display import display

    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"the number of steps T must be an integer >= 1, got {T!r}.")
    x0 = _as_model_image(image)

    def show(kind, beta_start, beta_end, s, start, end, tau, t):
        fig = plot_schedule(kind, beta_start, beta_end, s, start, end, tau, t=t, T=T, image=x0, seed=seed)
        display(fig)
        plt.close(fig)

    style = {"description_width": "initial"}
    layout = widgets.Layout(width="360px")

    def slider(cls, value, lo, hi, step, label, fmt):
        return cls(value=value, min=lo, max=hi, step=step, description=label, readout_format=fmt,
                   continuous_update=False, style=style, layout=layout)

    controls = dict(
        kind=widgets.Dropdown(options=SCHEDULE_KINDS, value="linear", description="schedule", style=style),
        beta_start=slider(widgets.FloatLogSlider, _DEFAULTS["beta_start"], -6, -1, 0.1, "beta_start (linear)", ".1e"),
        beta_end=slider(widgets.FloatLogSlider, _DEFAULTS["beta_end"], -4, 0, 0.05, "beta_end (linear)", ".2e"),
        s=slider(widgets.FloatSlider, _DEFAULTS["s"], 0.0, 0.5, 0.002, "s (cosine)", ".3f"),
        start=slider(widgets.FloatSlider, _DEFAULTS["start"], -10.0, 10.0, 0.5, "start (sigmoid)", ".1f"),
        end=slider(widgets.FloatSlider, _DEFAULTS["end"], -10.0, 10.0, 0.5, "end (sigmoid)", ".1f"),
        tau=slider(widgets.FloatLogSlider, _DEFAULTS["tau"], -1.5, 1.0, 0.05, "tau (sigmoid)", ".2f"),
        t=widgets.IntSlider(value=T // 2, min=0, max=T, step=1, description="t", continuous_update=False,
                            style=style, layout=layout),
    )
    return widgets.interact(show, **controls).widget
