"""Two interactive explorers that work live in Jupyter and Colab and, without a kernel, in the static HTML book.

* :class:`ScheduleExplorer` (chapter "The forward process and noise schedules"): a noise schedule
  (linear, cosine or sigmoid, book eqs. ``alpha-bar`` and ``snr``) and an MNIST digit noised to step
  ``t`` with book eq. ``q-sample``.
* :class:`ElboExplorer` (chapter "The evidence lower bound"): a Gaussian :math:`q(z \\mid x)` for the
  one-dimensional linear-Gaussian model, with :math:`\\log p(x)`, the ELBO and the gap
  :math:`D_\\mathrm{KL}(q\\,\\|\\,p(z \\mid x))` of book eq. ``elbo-identity``.

Each is an `anywidget <https://anywidget.dev>`_ widget whose whole logic (the computing, in float64,
and the drawing) lives in an ES module shipped with the package, ``ddpm_lib/teaching/explorers/
schedule.js`` and ``elbo.js``. The Python classes only hold the state (traits synced with the
browser). Displayed, a widget's MIME bundle carries the usual widget view (used by Jupyter and Colab
while a kernel runs) and a ``text/html`` that runs the *same* module standalone: an element and an
inline ``<script type="module">`` that imports the module's source from a Blob URL and calls its
``render`` with a small stand-in for the widget model, initialised from the current trait values. It
references no outside address, so the static book needs neither a kernel nor the network (the book's
``_config.yml`` tells MyST-NB to skip the widget view in HTML). The ``text/html`` is deterministic:
the same state gives the same bytes on every machine (no random ids; the noise is drawn with NumPy's
``default_rng``, not torch).

DOM contract (the browser test relies on it; both explorers, live and static):

* The root is ``<div class="ddpm-explorer" data-explorer="schedule">`` (or ``data-explorer="elbo"``).
* Every control is an ``<input>`` or ``<select>`` with ``data-param="<name>"``; the explorer updates
  on its ``input`` and ``change`` events, using ``Number(control.value)`` (the value after the browser
  applied the control's ``min``/``max``/``step``).

  - schedule: ``kind`` (``<select>``: ``linear``, ``cosine``, ``sigmoid``), ``T``, ``beta_start``,
    ``beta_end``, ``s``, ``start``, ``end``, ``tau`` (``<input type="number">``, the parameter's value
    itself; only those of the chosen kind are shown) and ``t`` (``<input type="range">``, ``0..T``,
    step 1);
  - elbo: ``mean`` and ``log_var`` (``<input type="range" step="any">``, ends in
    :data:`ElboExplorer.RANGES`).

* Every readout is an element with ``data-readout="<name>"`` whose attribute ``data-number`` holds
  ``String(value)`` of the float64 value (every digit; ``Infinity`` for :math:`+\\infty`) and whose
  text shows it rounded.

  - schedule, at the current ``t``: ``beta`` (:math:`\\beta_t`), ``alpha_bar`` (:math:`\\bar\\alpha_t`),
    ``snr`` (:math:`\\bar\\alpha_t/(1-\\bar\\alpha_t)`), ``log_snr`` (its natural log); at ``t = 0``
    these are 0, 1, ``Infinity``, ``Infinity``;
  - elbo: ``log_px`` (:math:`\\log p(x)`), ``elbo``, ``kl`` (the gap), in nats.

* One element ``[data-error]`` shows ``Invalid parameters: <message>`` when the parameters are
  invalid (the message is the library's own, e.g. ``need start < end``); then every readout's
  ``data-number`` is ``""``. With valid parameters it is empty and hidden.

Expected numbers, in Python: for the schedule ``make_schedule(kind, T, **params)`` and its
``beta[t]``, ``alpha_bar[t]``, ``snr[t]``, ``log_snr[t]``; for the ELBO, with ``model`` the
:class:`~ddpm_lib.toys.LinearGaussianModel` and ``cov = [[exp(log_var)]]``, ``model.log_evidence(x)``,
``model.elbo(x, [mean], cov)`` and ``model.posterior_kl(x, [mean], cov)``. The module's computing
functions agree with these to 1e-9 relative (tests/test_explorers.py runs them under node).

Only notebooks and tests import this module (it needs anywidget); the core modules never do.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
from pathlib import Path

import anywidget
import numpy as np
import torch
import traitlets

from ..core.schedules import Schedule, cosine_schedule, linear_schedule, sigmoid_schedule
from ..data import load_mnist, to_uint8

__all__ = ["SCHEDULE_KINDS", "make_schedule", "default_digit", "ScheduleExplorer", "ElboExplorer", "static_html"]

SCHEDULE_KINDS = ("linear", "cosine", "sigmoid")
"""The schedule kinds :func:`make_schedule` knows."""

_EXPLORERS = Path(__file__).resolve().parent / "explorers"


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
``sigmoid_schedule`` (``start``, ``end``, ``tau``): the defaults below, the explorer's starting values
and its grey reference curves."""


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
    :class:`ScheduleExplorer`'s JavaScript computes the same schedules (tests/test_explorers.py).

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
    """The first MNIST test image (a 7) as uint8 pixels in ``0..255``, shape ``(28, 28)``.

    Raises:
        RuntimeError: if no MNIST source is available (see :func:`ddpm_lib.data.load_mnist`).
    """
    images, _ = load_mnist("test")
    return images[0].clone()


def _as_uint8_image(image) -> np.ndarray:
    """``image`` as uint8 pixels of shape ``(H, W)``: uint8 as it is, a float image in ``[-1, 1]`` through ``to_uint8``."""
    image = torch.as_tensor(image)
    if image.ndim < 2 or image.numel() != image.shape[-1] * image.shape[-2]:
        raise ValueError(f"image must hold one image of shape (H, W), (1, H, W) or (1, 1, H, W); got {tuple(image.shape)}.")
    image = image.reshape(*image.shape[-2:])
    if image.dtype != torch.uint8:
        if not image.dtype.is_floating_point:
            raise TypeError(f"image must be uint8 pixels or a float tensor in [-1, 1], got dtype {image.dtype}.")
        image = to_uint8(image[None, None])[0]
    return image.numpy()


def static_html(explorer: str, module_source: str, state: dict) -> str:
    """The ``text/html`` that runs an explorer's ES module without a kernel.

    An empty host ``<div>`` and an inline ``<script type="module">`` that imports ``module_source``
    from a Blob URL and calls its ``render({model, el})`` with a stand-in model (``get``, ``set``,
    ``on``, ``off``, ``save_changes``) holding ``state``. The host is found by an attribute derived
    from a hash of the content, so the HTML is the same on every machine; a page that shows the same
    explorer twice mounts each copy once.

    Args:
        explorer: the name written in ``data-explorer-host``, e.g. ``"schedule"``.
        module_source: the ES module's text.
        state: JSON-serialisable trait values (NaN and infinities are refused).

    Raises:
        ValueError: if ``state`` holds a NaN or an infinity (JSON cannot carry them).
    """
    state_json = json.dumps(state, sort_keys=True, allow_nan=False)
    key = hashlib.sha256((explorer + "\0" + module_source + "\0" + state_json).encode()).hexdigest()[:16]

    def js_literal(value: str) -> str:
        # safe inside <script>: no "</script>" or "<!--" can appear once "<" is escaped
        return value.replace("<", "\\u003c")

    return f"""<div class="ddpm-explorer-host" data-explorer-host="{explorer}-{key}"></div>
<script type="module">
const host = Array.from(document.querySelectorAll('[data-explorer-host="{explorer}-{key}"]')).find((e) => !e.hasAttribute("data-mounted"));
if (host) {{
  host.setAttribute("data-mounted", "");
  const source = {js_literal(json.dumps(module_source))};
  const state = {js_literal(state_json)};
  const listeners = {{}};
  const model = {{
    get: (name) => state[name],
    set: (name, value) => {{ state[name] = value; (listeners["change:" + name] || []).slice().forEach((f) => f()); }},
    on: (event, f) => {{ (listeners[event] = listeners[event] || []).push(f); }},
    off: (event, f) => {{
      if (event === undefined) {{ for (const k of Object.keys(listeners)) delete listeners[k]; }}
      else if (f === undefined) {{ delete listeners[event]; }}
      else {{ listeners[event] = (listeners[event] || []).filter((g) => g !== f); }}
    }},
    save_changes: () => {{}},
  }};
  const url = URL.createObjectURL(new Blob([source], {{ type: "text/javascript" }}));
  import(url).then((mod) => (mod.render || mod.default.render)({{ model, el: host }}))
    .catch((err) => {{ host.textContent = "This explorer could not start: " + err; }})
    .finally(() => URL.revokeObjectURL(url));
}}
</script>"""


def _state_trait(trait: traitlets.TraitType) -> traitlets.TraitType:
    """Tag ``trait`` as part of an explorer's state: synced with the browser and written into its ``text/html``."""
    return trait.tag(sync=True, explorer_state=True)


class _Explorer(anywidget.AnyWidget):
    """An anywidget whose MIME bundle also holds a standalone ``text/html`` of the same ES module."""

    _name = ""  # "schedule" or "elbo": the module explorers/<name>.js and the data-explorer value

    def _state(self) -> dict:
        # the values of the traits the explorer declares with _state_trait (not the ipywidgets and
        # anywidget base traits: the layout reference is a random model id, _esm the module itself)
        return {name: getattr(self, name) for name in sorted(self.traits(explorer_state=True))}

    def _repr_mimebundle_(self, **kwargs):
        data, metadata = super()._repr_mimebundle_(**kwargs)
        data = dict(data)
        data["text/plain"] = repr(self)
        data["text/html"] = static_html(self._name, str(self._esm), self._state())
        return data, metadata

    def __repr__(self) -> str:
        shown = {k: v for k, v in self._state().items() if not isinstance(v, (list, dict))}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


class ScheduleExplorer(_Explorer):
    """A noise schedule under controls, with its curves and a digit noised to step ``t``.

    The controls are the schedule kind, its parameters (``beta_start``, ``beta_end`` for linear;
    ``s`` for cosine; ``start``, ``end``, ``tau`` for sigmoid; see :func:`make_schedule`), ``T`` and
    the step ``t``. It draws :math:`\\beta_t` (log scale), :math:`\\bar\\alpha_t` (book eq.
    ``alpha-bar``) and the log-SNR :math:`\\log(\\bar\\alpha_t/(1-\\bar\\alpha_t))` in nats (book eq.
    ``snr``) against ``t``, the three default schedules in grey behind them, reads out
    :math:`\\beta_t`, :math:`\\bar\\alpha_t`, SNR and log-SNR at ``t``, and shows
    :math:`x_t = \\sqrt{\\bar\\alpha_t}\\,x_0 + \\sqrt{1-\\bar\\alpha_t}\\,\\epsilon` (book eq. ``q-sample``)
    clipped to ``[-1, 1]`` as :func:`~ddpm_lib.data.to_uint8` does. Parameters the schedule
    constructors reject show their error message (see the module's DOM contract).

    The schedules are computed in the browser, in float64, with the formulas of
    :mod:`ddpm_lib.core.schedules` (tests/test_explorers.py compares them with :func:`make_schedule`).

    Args:
        image: one image, uint8 in ``0..255`` or float in ``[-1, 1]`` (through ``to_uint8``), of shape
            ``(H, W)``, ``(1, H, W)`` or ``(1, 1, H, W)``; ``None`` uses :func:`default_digit`.
        T: the number of steps, an integer ``>= 1``.
        t: the step shown, an integer in ``0..T``; ``None`` means ``T // 2``.
        seed: seeds :math:`\\epsilon`, drawn with ``numpy.random.default_rng(seed).standard_normal``
            (the same numbers on every machine); the same :math:`\\epsilon` is used at every ``t``.
        kind: the starting schedule kind, one of :data:`SCHEDULE_KINDS`.
        **params: starting values of ``beta_start``, ``beta_end``, ``s``, ``start``, ``end``, ``tau``
            (default: the schedule constructors' defaults). Values the constructors reject are
            allowed: the explorer then shows the message.

    Raises:
        ValueError: for a ``T`` or ``t`` out of range, an unknown ``kind`` or parameter name, a
            non-finite parameter, or an image of the wrong shape.
        TypeError: for an image that is neither uint8 nor floating point.
    """

    _name = "schedule"
    _esm = _EXPLORERS / "schedule.js"

    kind = _state_trait(traitlets.Unicode("linear"))
    T = _state_trait(traitlets.Int(1000))
    beta_start = _state_trait(traitlets.Float(_DEFAULTS["beta_start"]))
    beta_end = _state_trait(traitlets.Float(_DEFAULTS["beta_end"]))
    s = _state_trait(traitlets.Float(_DEFAULTS["s"]))
    start = _state_trait(traitlets.Float(_DEFAULTS["start"]))
    end = _state_trait(traitlets.Float(_DEFAULTS["end"]))
    tau = _state_trait(traitlets.Float(_DEFAULTS["tau"]))
    t = _state_trait(traitlets.Int(500))
    height = _state_trait(traitlets.Int(28))
    width = _state_trait(traitlets.Int(28))
    pixels = _state_trait(traitlets.List(traitlets.Int()))
    eps = _state_trait(traitlets.List(traitlets.Float()))
    defaults = _state_trait(traitlets.Dict(dict(_DEFAULTS)))

    def __init__(self, image=None, T: int = 1000, t: int | None = None, seed: int = 0, kind: str = "linear", **params):
        if isinstance(T, bool) or not isinstance(T, int) or T < 1:
            raise ValueError(f"the number of steps T must be an integer >= 1, got {T!r}.")
        t = T // 2 if t is None else t
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= T:
            raise ValueError(f"t must be an integer in 0..T = 0..{T}, got {t!r}.")
        if kind not in SCHEDULE_KINDS:
            raise ValueError(f"unknown schedule kind {kind!r}; choose one of {SCHEDULE_KINDS}.")
        unknown = set(params) - set(_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown schedule parameters {sorted(unknown)}; the explorer knows {sorted(_DEFAULTS)}.")
        values = {**_DEFAULTS, **{k: float(v) for k, v in params.items()}}
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            raise ValueError(f"schedule parameters must be finite numbers; got {', '.join(f'{k}={values[k]}' for k in bad)}.")
        pixels = _as_uint8_image(default_digit() if image is None else image)
        eps = np.random.default_rng(seed).standard_normal(pixels.size)
        super().__init__(
            kind=kind, T=T, t=t, height=int(pixels.shape[0]), width=int(pixels.shape[1]),
            pixels=[int(p) for p in pixels.reshape(-1)], eps=[float(e) for e in eps], **values,
        )


class ElboExplorer(_Explorer):
    """The ELBO gap of a Gaussian :math:`q(z \\mid x) = \\mathcal N(m, v)`, with ``m`` and ``log v`` under sliders.

    For a one-dimensional linear-Gaussian model :math:`p(z) = \\mathcal N(0, 1)`,
    :math:`p(x \\mid z) = \\mathcal N(wz + b, \\sigma^2)` (book eq. ``elbo-lg-model``) and one ``x``, it
    reads out :math:`\\log p(x)` (eq. ``elbo-lg-evidence``), the ELBO (eqs. ``elbo-recon-prior`` and
    ``elbo-lg-recon``) and :math:`D_\\mathrm{KL}(q\\,\\|\\,p(z \\mid x))` (eq. ``elbo-identity``), in nats,
    each from its own closed form in float64 in the browser, and draws the prior, the posterior
    (eq. ``elbo-lg-posterior``) and :math:`q` over ``z`` in ``[-4, 4]``, next to a bar from the ELBO up
    to :math:`\\log p(x)`: the gap.

    Args:
        model: a :class:`~ddpm_lib.toys.LinearGaussianModel` with ``k = d = 1`` (anything with
            ``weight`` of one element, ``bias`` of one element and a float ``noise_var > 0``).
        x: the observation, a number or a one-element tensor.
        mean: :math:`m`, the starting mean of :math:`q`, within ``RANGES["mean"]``.
        log_var: :math:`\\log v`, the starting log-variance of :math:`q`, within ``RANGES["log_var"]``.

    Raises:
        ValueError: for a model that is not one-dimensional, a ``noise_var <= 0``, non-finite
            numbers, or a ``mean`` or ``log_var`` outside the sliders' ranges.
    """

    RANGES = {"mean": (-3.0, 3.0), "log_var": (-4.0, 2.0)}
    """The ends of the two sliders."""

    _name = "elbo"
    _esm = _EXPLORERS / "elbo.js"

    weight = _state_trait(traitlets.Float())
    bias = _state_trait(traitlets.Float())
    noise_var = _state_trait(traitlets.Float(1.0))
    x = _state_trait(traitlets.Float())
    mean = _state_trait(traitlets.Float())
    log_var = _state_trait(traitlets.Float())
    ranges = _state_trait(traitlets.Dict())

    def __init__(self, model, x, mean: float = 0.0, log_var: float = 0.0):
        weight, bias, x = (torch.as_tensor(v, dtype=torch.float64) for v in (model.weight, model.bias, x))
        if weight.numel() != 1 or bias.numel() != 1 or x.numel() != 1:
            raise ValueError(f"ElboExplorer needs a one-dimensional model (k = d = 1) and one x; got weight of shape "
                             f"{tuple(weight.shape)}, bias {tuple(bias.shape)}, x {tuple(x.shape)}.")
        values = {"weight": float(weight), "bias": float(bias), "noise_var": float(model.noise_var), "x": float(x),
                  "mean": float(mean), "log_var": float(log_var)}
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            raise ValueError(f"ElboExplorer: {', '.join(bad)} must be finite numbers; got {values}.")
        if not values["noise_var"] > 0:
            raise ValueError(f"ElboExplorer: noise_var is a variance and must be > 0, got {values['noise_var']}.")
        for name, (lo, hi) in self.RANGES.items():
            if not lo <= values[name] <= hi:
                raise ValueError(f"ElboExplorer: {name} must lie in [{lo}, {hi}] (the slider's range), got {values[name]}.")
        super().__init__(ranges={k: list(v) for k, v in self.RANGES.items()}, **values)
