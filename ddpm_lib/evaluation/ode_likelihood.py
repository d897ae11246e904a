"""Exact likelihood through the probability-flow ODE (chapter "Exact likelihood through the probability-flow ODE").

The probability-flow ODE of a variance-preserving diffusion (Song et al. 2021, "Score-based generative
modeling through SDEs", eq. 13; book eq. ``pf-ode-vp``) moves a point deterministically so that its law
at every time ``u`` is the marginal of the forward process. Written with a denoiser
:math:`\\hat x_0(x, u)` through Tweedie's formula (score :math:`= (\\sqrt{\\bar\\alpha}\\hat x_0 - x)/(1-\\bar\\alpha)`,
book eq. ``tweedie``), its velocity is

.. math:: \\frac{dx}{du} = -\\tfrac12\\beta(u)\\,[x + \\nabla\\log p_u(x)]
   = \\tfrac12\\beta(u)\\,\\frac{\\sqrt{\\bar\\alpha(u)}}{1-\\bar\\alpha(u)}\\big(\\sqrt{\\bar\\alpha(u)}\\,x - \\hat x_0(x, u)\\big),

with :math:`\\beta(u)` and :math:`\\bar\\alpha(u)` the schedule's continuous-time
:meth:`~ddpm_lib.core.schedules.Schedule.beta_at` and :meth:`~ddpm_lib.core.schedules.Schedule.alpha_bar_at`
(book eq. ``alpha-bar-continuous``). The second form has no cancellation between ``x`` and the score.

Along a solution, the instantaneous change of variables (Chen et al. 2018, Theorem 1; book eq.
``instantaneous-cov``) gives :math:`\\frac{d}{du}\\log p_u(x(u)) = -\\operatorname{tr}\\,\\partial f/\\partial x`, so

.. math:: \\log p_{\\epsilon}(x(\\epsilon)) = \\log p_1(x(1)) + \\int_{\\epsilon}^{1} \\operatorname{tr}\\frac{\\partial f}{\\partial x}(x(u), u)\\,du

(book eq. ``ode-log-likelihood``), with :math:`p_1 = \\mathcal N(0, I)` the prior. The trace is
computed exactly (``D`` vector-Jacobian products; small ``D`` only) or estimated by Hutchinson's
:math:`v^\\top (\\partial f/\\partial x) v` with a probe :math:`v` held fixed along the solution
(Hutchinson 1989; Grathwohl et al. 2019, eq. 7; book eq. ``hutchinson-trace``): unbiased, one
vector-Jacobian product per probe and evaluation. ``x`` and the accumulated trace are solved together
by torchdiffeq's adaptive Dormand–Prince 5(4) (``dopri5``) from ``u = eps`` to ``u = 1``, with the
log-SNR as the time variable (:func:`probability_flow_velocity_log_snr`, book eq. ``pf-ode-logsnr``):
in ``u`` the velocity jumps at every grid point ``t / T`` with the piecewise-constant :math:`\beta(u)`,
in the log-SNR it is continuous.

Images are discrete, a density is not a probability: :func:`dequantize` spreads each 8-bit pixel
uniformly over its bin (width :data:`~ddpm_lib.core.likelihood.BIN_WIDTH` ``= 2/255`` around
``k / 127.5 - 1``, the bins of the ELBO's discretized decoder), and by Jensen's inequality
(Theis et al. 2016, §3.1; book eq. ``dequantization-bound``)

.. math:: -\\log_2 P(k) \\le -\\mathbb E_U[\\log_2 p(k/127.5 - 1 + \\Delta(U - \\tfrac12))] - D\\log_2\\Delta,
   \\qquad \\Delta = 2/255,

where :math:`P(k) = \\int_{\\mathrm{bin}(k)} p` is the discrete model that the density defines. Per
dimension, :math:`-\\log_2\\Delta = \\log_2 127.5 \\approx 6.994` bits (:data:`DEQUANTIZATION_BITS`).

Glue (evaluation layer): imports torch, torchdiffeq, the schedule, the data conversions and tqdm.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torchdiffeq import odeint
from tqdm.auto import tqdm

from ..checkpoint import LoadedModel
from ..core.likelihood import BIN_WIDTH
from ..core.schedules import Schedule
from ..core.variance import split_output
from ..data import check_images, to_model
from ..devices import eval_mode, model_device

__all__ = [
    "DEQUANTIZATION_BITS",
    "ODE_DEFAULTS",
    "continuous_model_denoiser",
    "probability_flow_velocity",
    "u_from_log_snr",
    "probability_flow_velocity_log_snr",
    "divergence",
    "ode_log_likelihood",
    "standard_normal_log_prob",
    "dequantize",
    "discrete_bits_per_dim",
    "ode_nll_bits_per_dim",
    "gaussian_data_denoiser",
    "gaussian_data_log_prob",
]

DEQUANTIZATION_BITS = -math.log2(BIN_WIDTH)
"""``log2(127.5)`` ≈ 6.994: bits per dimension added to :math:`-\\log_2 p` of the dequantized image, for
bins of width ``2/255`` in the model range (book eq. ``dequantization-bound``). The same constant in
pixel units: a pixel ``k + U`` in ``[0, 256)`` with unit bins needs none, and the affine map from pixels to
the model range has derivative ``2/255`` in each of the ``D`` dimensions."""

ODE_DEFAULTS = {"rtol": 1e-5, "atol": 1e-5, "method": "dopri5", "n_probes": 1, "probe": "rademacher"}
"""The solver and estimator settings of :func:`ode_nll_bits_per_dim` (Song et al. 2021, App. D.2, use
``rtol = atol = 1e-5`` with an RK45 solver)."""

_FIRST_STEP = 1e-3  # the first trial step, as a fraction of the interval; the solver adapts it from there
_ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")

ContinuousDenoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _coefs(schedule: Schedule, u: torch.Tensor) -> tuple[float, float, float]:
    # (beta(u), sqrt(alpha_bar(u)), 1 - alpha_bar(u)) as Python floats (float64) for one time u
    # from the log-SNR lambda: alpha_bar = sigmoid(lambda), 1 - alpha_bar = sigmoid(-lambda), each without cancellation
    u = u.detach().to("cpu", torch.float64).reshape(())
    lam = schedule.log_snr_at(u)
    return float(schedule.beta_at(u)), math.sqrt(float(torch.sigmoid(lam))), float(torch.sigmoid(-lam))


def continuous_model_denoiser(model: Callable[..., torch.Tensor], schedule: Schedule, target: str) -> ContinuousDenoiser:
    """A network as a denoiser of continuous time: ``denoiser(x, u) -> x0_hat``, ``u`` a real number in ``(0, 1]``.

    The discrete :func:`~ddpm_lib.sampling.denoisers.model_denoiser` takes integer ``t``; an adaptive ODE
    solver asks for any ``u``. The network is called with the float time ``t = T u`` (the U-Net's
    sinusoidal embedding accepts it: :func:`ddpm_lib.models.unet.timestep_embedding`), and its output is
    converted with :math:`\\sqrt{\\bar\\alpha(u)}` and :math:`\\sqrt{1 - \\bar\\alpha(u)}` of
    :meth:`~ddpm_lib.core.schedules.Schedule.alpha_bar_at` (book eqs. ``x0-from-eps``, ``v``,
    ``score-from-eps``). At a grid point ``u = t / T`` it equals ``model_denoiser(model, schedule,
    target)(x, t)`` up to float32 round-off of the network's input. A network trained on integer
    ``t`` only was never shown a time between two steps: between them it interpolates as its embedding
    and weights make it (the chapter measures its denoising error there).

    Args:
        model: ``model(x, t) -> output`` with ``x`` float ``(B, ...)``; it runs in its own dtype
            (float32): ``x`` is cast to it and the output back to ``x``'s dtype.
        target: ``"eps"``, ``"x0"``, ``"v"`` or ``"score"``.

    Returns:
        ``denoiser(x, u)`` for ``x`` float ``(B, ...)`` (float64 recommended: the conversion is done in
        ``x``'s dtype) and ``u`` a 0-d tensor or float in ``(0, 1]``; returns ``x0_hat`` of ``x``'s shape
        and dtype. Differentiable in ``x``.

    Raises:
        ValueError: for an unknown target (at once), or ``u`` outside ``(0, 1]`` (at the call).
    """
    if target not in ("eps", "x0", "v", "score"):
        raise ValueError(f"unknown prediction target {target!r}; choose one of ('eps', 'x0', 'v', 'score').")
    net_dtype = next((p.dtype for p in model.parameters()), torch.float32) if isinstance(model, torch.nn.Module) else torch.float32

    def denoiser(x: torch.Tensor, u: torch.Tensor | float) -> torch.Tensor:
        u = torch.as_tensor(u, dtype=torch.float64)
        if not 0 < float(u) <= 1:
            raise ValueError(f"continuous_model_denoiser: u must lie in (0, 1], got {float(u)!r}.")
        _, a, s2 = _coefs(schedule, u)
        s = math.sqrt(s2)
        t = torch.full((x.shape[0],), schedule.T * float(u), dtype=torch.float32, device=x.device)
        out = split_output(model(x.to(net_dtype), t), x.shape[1])[0].to(x.dtype)  # learned variances, if any, set aside
        if target == "x0":
            return out
        if target == "eps":
            return (x - s * out) / a
        if target == "v":
            return a * x - s * out
        return (x + s2 * out) / a  # score: eps = -s * score

    denoiser.schedule = schedule
    return denoiser


def probability_flow_velocity(denoiser: ContinuousDenoiser, schedule: Schedule) -> Velocity:
    """The velocity ``f(u, x)`` of the VP probability-flow ODE, in units of ``x`` per unit of ``u`` (book eq. ``pf-ode-vp``).

    .. math:: f(x, u) = -\\tfrac12\\beta(u)[x + s(x, u)]
       = \\tfrac12\\beta(u)\\frac{\\sqrt{\\bar\\alpha(u)}}{1-\\bar\\alpha(u)}\\big(\\sqrt{\\bar\\alpha(u)}\\,x - \\hat x_0(x, u)\\big)

    (Song et al. 2021, eq. 13 with their eq. 11's VP drift; the score :math:`s` from the denoiser by
    Tweedie's formula, book eq. ``tweedie``). A solver integrating from ``u = 1`` down to 0 generates
    samples; from the data up to 1 it encodes them.

    Args:
        denoiser: ``denoiser(x, u) -> x0_hat`` of continuous time (:func:`continuous_model_denoiser`,
            :func:`gaussian_data_denoiser`).
        schedule: gives :math:`\\beta(u)` and :math:`\\bar\\alpha(u)`; ``u`` must lie in ``(0, 1]``.

    Returns:
        ``f(u, x)`` (torchdiffeq's argument order), ``u`` a 0-d tensor, ``x`` ``(B, ...)``; returns ``x``'s
        shape and dtype.
    """

    def f(u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        beta, a, s2 = _coefs(schedule, u)
        return (0.5 * beta * a / s2) * (a * x - denoiser(x, u))

    return f


def u_from_log_snr(schedule: Schedule, lam: torch.Tensor | float) -> float:
    """The continuous time ``u`` at which the schedule's log-SNR is ``lam``: the inverse of :meth:`~ddpm_lib.core.schedules.Schedule.log_snr_at`.

    :math:`\\log\\bar\\alpha(u)` is linear between grid points (book eq. ``alpha-bar-continuous``) and
    :math:`\\log\\bar\\alpha = -\\operatorname{softplus}(-\\lambda)`, so ``u`` is found on the grid interval
    that holds :math:`\\log\\bar\\alpha(\\lambda)` by linear interpolation.

    Args:
        lam: a number (or 0-d tensor) in ``[log_snr[T], inf)``; ``inf`` gives 0.

    Returns:
        ``u`` in ``[0, 1]`` as a Python float.

    Raises:
        ValueError: for ``lam`` below the log-SNR at ``u = 1`` (beyond the end of the schedule) or NaN.
    """
    lam = float(lam)
    log_ab_grid = torch.log(schedule.alpha_bar)  # decreasing from 0 at t = 0
    ell = -torch.nn.functional.softplus(torch.tensor(-lam, dtype=torch.float64)).item()
    lowest = float(log_ab_grid[-1])
    if not ell >= lowest - 1e-12 * abs(lowest):  # NaN too
        raise ValueError(f"u_from_log_snr: log-SNR {lam!r} lies below the schedule's log-SNR at u = 1, {float(schedule.log_snr[-1])!r}.")
    T = schedule.T
    k = int(torch.searchsorted(-log_ab_grid, torch.tensor([-ell], dtype=torch.float64), right=True)) - 1
    k = min(max(k, 0), T - 1)  # log_ab_grid[k] >= ell >= log_ab_grid[k + 1]
    f = (float(log_ab_grid[k]) - ell) / (float(log_ab_grid[k]) - float(log_ab_grid[k + 1]))
    return min(max((k + min(max(f, 0.0), 1.0)) / T, 0.0), 1.0)


def probability_flow_velocity_log_snr(denoiser: ContinuousDenoiser, schedule: Schedule) -> Velocity:
    """The probability-flow ODE of :func:`probability_flow_velocity` with the log-SNR :math:`\\lambda` as its time (book eq. ``pf-ode-logsnr``).

    :math:`d\\lambda/du = -\\beta(u)/(1 - \\bar\\alpha(u))`, so dividing the velocity in ``u`` by it,

    .. math:: \\frac{dx}{d\\lambda} = \\tfrac12\\sqrt{\\bar\\alpha}\\,\\big(\\hat x_0(x, u(\\lambda)) - \\sqrt{\\bar\\alpha}\\,x\\big),
       \\qquad \\bar\\alpha = \\sigma(\\lambda)

    (:math:`\\sigma` the logistic function). :math:`\\beta` has cancelled: the schedule enters only through the
    network's time input ``t = T u(\\lambda)`` (:func:`u_from_log_snr`), as in Kingma et al.'s (2021, §5.1)
    observation that the continuous-time model depends on the schedule only at its end points. The
    trajectories are those of the ODE in ``u``, reparametrized; the velocity in ``u`` jumps with the
    piecewise-constant :math:`\\beta(u)` at every grid point ``t / T``, this one is continuous, which is
    what an adaptive solver's error control assumes.

    Returns:
        ``g(lam, x)``, ``lam`` a 0-d tensor between ``log_snr[T]`` and ``inf``, ``x`` ``(B, ...)``.
    """

    def g(lam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        a = math.sqrt(float(torch.sigmoid(torch.as_tensor(lam, dtype=torch.float64))))
        u = u_from_log_snr(schedule, lam)
        return (0.5 * a) * (denoiser(x, u) - a * x)

    return g


def divergence(f_value: torch.Tensor, x: torch.Tensor, probes: torch.Tensor | None) -> torch.Tensor:
    """The divergence :math:`\\operatorname{tr}\\,\\partial f/\\partial x` of each row, exactly or by Hutchinson's estimator.

    Args:
        f_value: ``f(x)`` of shape ``(B, ...)``, computed from ``x`` with the graph kept (``x.requires_grad``).
        x: ``(B, ...)``; each row's ``f`` must depend on that row alone.
        probes: ``None`` for the exact trace (``D`` vector-Jacobian products with the unit vectors; for
            small ``D``), or ``(P, B, ...)`` probes with :math:`\\mathbb E[vv^\\top] = I` (Rademacher or
            standard normal): returns :math:`v_p^\\top (\\partial f/\\partial x) v_p`, one
            vector-Jacobian product each (Hutchinson 1989; book eq. ``hutchinson-trace``).

    Returns:
        ``(B,)`` exact traces, or ``(B, P)`` estimates; same dtype as ``f_value``.
    """
    B = x.shape[0]
    if probes is None:
        flat = f_value.reshape(B, -1)
        D = flat.shape[1]
        cols = []
        for i in range(D):
            (g,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
            cols.append(g.reshape(B, -1)[:, i])
        return torch.stack(cols, 1).sum(1)
    out = []
    for p in range(probes.shape[0]):
        (g,) = torch.autograd.grad(f_value, x, probes[p], retain_graph=p + 1 < probes.shape[0])
        out.append((g * probes[p]).reshape(B, -1).sum(1))
    return torch.stack(out, 1)


def standard_normal_log_prob(x: torch.Tensor) -> torch.Tensor:
    """:math:`\\log\\mathcal N(x; 0, I)` of each row of ``x`` ``(B, ...)``, in nats, shape ``(B,)``."""
    flat = x.reshape(x.shape[0], -1)
    return -0.5 * (flat**2).sum(1) - 0.5 * flat.shape[1] * math.log(2 * math.pi)


def ode_log_likelihood(
    x: torch.Tensor,
    velocity: Velocity,
    *,
    t0: float,
    t1: float,
    prior_log_prob: Callable[[torch.Tensor], torch.Tensor] = standard_normal_log_prob,
    exact_trace: bool = False,
    n_probes: int = 1,
    probe: str = "rademacher",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    generator: torch.Generator | None = None,
    probes: torch.Tensor | None = None,
) -> dict:
    """:math:`\\log p_{t_0}(x)` of the flow of ``velocity`` from time ``t0`` to ``t1``, with the prior ``prior_log_prob`` at ``t1`` (book eq. ``ode-log-likelihood``).

    Solves, jointly and with one adaptive solver, :math:`dx/dt = f(t, x)` and
    :math:`d\\Delta/dt = \\operatorname{tr}\\,\\partial f/\\partial x` (or its Hutchinson estimates) from
    ``t0`` to ``t1`` with :math:`\\Delta(t_0) = 0`, then returns
    :math:`\\log p_{t_1}(x(t_1)) + \\Delta(t_1)` (instantaneous change of variables: Chen et al. 2018,
    Theorem 1; Grathwohl et al. 2019, eq. 4; Song et al. 2021, eq. 40). ``t`` is whatever the velocity's
    time is (``u`` for :func:`probability_flow_velocity`, the log-SNR for
    :func:`probability_flow_velocity_log_snr`, which runs downwards: ``t1 < t0`` is allowed); the
    formula does not depend on the variable. Each Hutchinson probe is drawn once and held fixed along the
    solution, so its estimate of the integral is unbiased up to the solver's error: the exact trajectory
    does not depend on the probe, but the adaptive steps are chosen from an error norm over the whole
    state (the trace coordinates and every row of the batch included), so the computed solution does,
    by an amount of the order of the solver tolerance.

    Args:
        x: float ``(B, ...)`` points at time ``t0`` (float64 recommended: the solver's state has this dtype).
        velocity: ``f(t, x)``; each row must depend on that row alone.
        t0, t1: the two ends, ``t0 != t1``; the velocity is never evaluated outside them.
        prior_log_prob: ``(B, ...) -> (B,)`` in nats at ``t1``; default :func:`standard_normal_log_prob`.
        exact_trace: the exact divergence (``D`` vector-Jacobian products per evaluation: small ``D`` only).
        n_probes: Hutchinson probes per point (ignored with ``exact_trace`` or ``probes``).
        probe: ``"rademacher"`` (entries ±1; the lower variance of the two) or ``"gaussian"``.
        rtol, atol: the solver's tolerances, on every entry of ``x`` and of :math:`\\Delta`; the error norm
            is torchdiffeq's RMS over all entries of a state, the larger of the two states'.
        method: a torchdiffeq method (``"dopri5"``, the default, is Dormand–Prince 5(4)).
        generator: for the probes (CPU); they are moved to ``x``'s device and dtype.
        probes: ``(P, B, ...)`` probes to use instead of drawing them.

    Returns:
        A dict: ``log_prob`` (``(B,)`` nats, the mean over probes), ``log_prob_per_probe`` (``(B, P)``;
        ``(B, 1)`` for the exact trace), ``prior_log_prob`` (``(B,)``), ``delta`` (``(B, P)``, the
        integral of the divergence), ``x1`` (``x(t1)``), ``nfe`` (evaluations of ``velocity``).

    Raises:
        ValueError: for ``t0 == t1``, ``n_probes < 1`` or an unknown probe.
    """
    if not t0 != t1:
        raise ValueError(f"ode_log_likelihood needs two different times, got t0={t0}, t1={t1}.")
    if exact_trace:
        probes, P = None, 1
    elif probes is not None:
        P = probes.shape[0]
    else:
        if n_probes < 1:
            raise ValueError(f"n_probes must be >= 1, got {n_probes}.")
        shape = (n_probes,) + tuple(x.shape)
        if probe == "rademacher":
            probes = (torch.randint(0, 2, shape, generator=generator) * 2 - 1).to(x)
        elif probe == "gaussian":
            probes = torch.randn(shape, generator=generator, dtype=torch.float64).to(x)
        else:
            raise ValueError(f"probe must be 'rademacher' or 'gaussian', got {probe!r}.")
        P = n_probes
    nfe = [0]

    def rhs(t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        nfe[0] += 1
        with torch.enable_grad():
            xt = state[0].detach().requires_grad_(True)
            fx = velocity(t, xt)
            div = divergence(fx, xt, probes).reshape(x.shape[0], P)
        return fx.detach(), div.detach()

    times = torch.tensor([t0, t1], dtype=torch.float64, device=x.device)
    delta0 = torch.zeros(x.shape[0], P, dtype=x.dtype, device=x.device)
    # step_t: the last step ends on t1 (torchdiffeq would otherwise step past it and interpolate back,
    # and the velocity is not defined past the end of the schedule)
    # first_step: torchdiffeq's own first guess evaluates the velocity at a trial time that may lie past t1
    options = {"step_t": times[1:], "first_step": abs(t1 - t0) * _FIRST_STEP} if method in _ADAPTIVE else None
    xs, deltas = odeint(rhs, (x.detach(), delta0), times, rtol=rtol, atol=atol, method=method, options=options)
    x1, delta = xs[-1], deltas[-1]
    prior = prior_log_prob(x1)
    per_probe = prior[:, None] + delta
    return {"log_prob": per_probe.mean(1), "log_prob_per_probe": per_probe, "prior_log_prob": prior,
            "delta": delta, "x1": x1, "nfe": nfe[0]}


def dequantize(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantization in the model range: pixel ``k`` becomes ``k / 127.5 - 1 + (2/255)(U - 1/2)``, ``U ~ U[0, 1)``.

    Each value is spread uniformly over its bin, the bin of the ELBO's discretized decoder
    (:data:`~ddpm_lib.core.likelihood.BIN_WIDTH`, centred on the pixel; Theis et al. 2016, §3.1; book eq.
    ``dequantization-bound``). The bins tile ``[-1 - 1/255, 1 + 1/255)``.

    Args:
        images: uint8 ``(N, 28, 28)`` or ``(N, 1, 28, 28)``.
        generator: for ``U`` (CPU).

    Returns:
        float64 ``(N, 1, H, W)``.
    """
    x = to_model(images).double()
    return x + BIN_WIDTH * (torch.rand(x.shape, generator=generator, dtype=torch.float64) - 0.5)


def discrete_bits_per_dim(log_prob_nats: torch.Tensor | float, num_dims: int) -> torch.Tensor:
    """The upper bound on :math:`-\\log_2 P(k)/D` from the log-density of a dequantized image (book eq. ``dequantization-bound``).

    :math:`-\\log p / (D\\ln 2) + \\log_2 127.5`: bits/dim of the density plus :data:`DEQUANTIZATION_BITS`
    for the bin width ``2/255``. Averaged over the dequantization noise it bounds the discrete model
    :math:`P(k) = \\int_{\\mathrm{bin}(k)} p`; one draw is an unbiased estimate of that bound.

    Args:
        log_prob_nats: log-density of the dequantized image(s) in the model range, nats (tensor or float).
        num_dims: ``D`` (784 for MNIST).

    Returns:
        A float64 tensor of the input's shape.
    """
    lp = torch.as_tensor(log_prob_nats, dtype=torch.float64)
    return -lp / (num_dims * math.log(2)) + DEQUANTIZATION_BITS


def _image_generator(seed: int, index: int) -> torch.Generator:
    # one generator per image, so an image's noise does not depend on the batch it was evaluated in
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


def ode_nll_bits_per_dim(
    loaded: LoadedModel,
    images: torch.Tensor,
    *,
    rtol: float = ODE_DEFAULTS["rtol"],
    atol: float = ODE_DEFAULTS["atol"],
    n_probes: int = ODE_DEFAULTS["n_probes"],
    probe: str = ODE_DEFAULTS["probe"],
    method: str = ODE_DEFAULTS["method"],
    eps: float | None = None,
    seed: int = 0,
    first_index: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> dict:
    """Bits/dim of 8-bit images under the probability-flow ODE of a DDPM: an upper bound on the discrete NLL.

    For each image: one uniform dequantization (:func:`dequantize`), the probability-flow ODE with the
    network's continuous-time denoiser (:func:`continuous_model_denoiser`, :func:`probability_flow_velocity`)
    solved from ``u = eps`` to 1 with the log-density (:func:`ode_log_likelihood`, Hutchinson's trace),
    the standard normal prior at ``u = 1``, and the constant of the bins (:func:`discrete_bits_per_dim`).
    The result bounds :math:`-\\log_2 P(k)/D` of the discrete model :math:`P(k) = \\int_{\\mathrm{bin}(k)} p_\\epsilon`
    that the ODE's density at ``u = eps`` defines (book eq. ``dequantization-bound``); each image's value is
    an unbiased estimate of its bound (dequantization noise and probes), so the mean and its standard error
    across images are those of the bound. It is not the model of the ELBO (Gaussian reverse steps and a
    discretized decoder): the chapter compares the two.

    Every image's noise (dequantization and probes) comes from its own generator, seeded by ``seed`` and
    its index ``first_index + i``, so a resumed evaluation draws the same noise. The images of one batch
    share the solver's steps (the error norm is over the batch), so ``batch_size`` changes the values at
    the level of the tolerances.

    Args:
        loaded: from :func:`ddpm_lib.checkpoint.load_model`; the network runs where it is.
        images: uint8 ``(N, 28, 28)``, ``N >= 1``.
        rtol, atol, method: the solver (:data:`ODE_DEFAULTS`: dopri5, ``1e-5`` both).
        n_probes, probe: Hutchinson probes per image (Rademacher by default).
        eps: the start time of the ODE, in ``(0, 1)``; default ``1 / T``, the first step the network was
            trained on (below it the network is extrapolated).
        seed, first_index: the noise (above).
        batch_size: images solved together.

    Returns:
        A dict: ``bits_per_dim`` and ``bits_per_dim_stderr`` (mean over images and its standard error,
        NaN for one image),
        ``bits_per_dim_per_image`` (list), ``bits_per_dim_per_probe`` (list of lists, ``n_probes`` per
        image), ``prior_bpd`` (mean of :math:`-\\log_2\\mathcal N(x_1; 0, I)/D`; per image in ``prior_bpd_per_image``), ``delta_bpd`` (mean of
        :math:`-\\Delta/(D\\ln 2)`), ``dequantization_bits`` (:data:`DEQUANTIZATION_BITS`), ``n_images``,
        ``nfe_mean`` (velocity evaluations per batch, averaged over batches), ``nfe_per_batch``,
        ``seconds``, ``rtol``, ``atol``, ``method``, ``n_probes``, ``probe``, ``eps``, ``seed``,
        ``first_index``, ``batch_size``.

    Raises:
        ValueError: from :func:`~ddpm_lib.data.check_images` (but one image is accepted), or for ``eps``
            outside ``(0, 1)``.
    """
    images = torch.as_tensor(images)
    if images.ndim == 3 and images.shape[0] == 1:
        check_images(images.expand(2, -1, -1))  # one image is enough here (its standard error is NaN)
    else:
        images = check_images(images)
    model, schedule = loaded.model, loaded.schedule
    eps = 1.0 / schedule.T if eps is None else float(eps)
    if not 0 < eps < 1:
        raise ValueError(f"eps must lie in (0, 1), got {eps}.")
    device = model_device(model)
    denoiser = continuous_model_denoiser(model, schedule, loaded.target)
    velocity = probability_flow_velocity_log_snr(denoiser, schedule)
    lam0, lam1 = float(schedule.log_snr_at(eps)), float(schedule.log_snr_at(1.0))
    D = images[0].numel()
    per_image, per_probe, prior_bpd, delta_bpd, nfes = [], [], [], [], []
    to_bpd = 1.0 / (D * math.log(2))
    start_time = time.perf_counter()
    bar = tqdm(total=images.shape[0], disable=not progress, desc="ode-nll", unit="image")
    with eval_mode(model):
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size]
            gens = [_image_generator(seed, first_index + start + i) for i in range(batch.shape[0])]
            y = torch.cat([dequantize(batch[i : i + 1], gens[i]) for i in range(batch.shape[0])]).to(device)
            if probe == "rademacher":
                probes = torch.stack([torch.randint(0, 2, (n_probes,) + y.shape[1:], generator=g) * 2 - 1 for g in gens], 1)
            else:
                probes = torch.stack([torch.randn((n_probes,) + y.shape[1:], generator=g, dtype=torch.float64) for g in gens], 1)
            out = ode_log_likelihood(y, velocity, t0=lam0, t1=lam1, probes=probes.to(y), rtol=rtol, atol=atol, method=method)
            bpd = discrete_bits_per_dim(out["log_prob_per_probe"].cpu(), D)
            per_probe += bpd.tolist()
            per_image += bpd.mean(1).tolist()
            prior_bpd += (-out["prior_log_prob"].cpu() * to_bpd).tolist()
            delta_bpd += (-out["delta"].mean(1).cpu() * to_bpd).tolist()
            nfes.append(out["nfe"])
            bar.update(batch.shape[0])
    bar.close()
    vals = torch.tensor(per_image, dtype=torch.float64)
    n = vals.numel()
    return {
        "bits_per_dim": float(vals.mean()),
        "bits_per_dim_stderr": float(vals.std() / math.sqrt(n)) if n > 1 else float("nan"),
        "bits_per_dim_per_image": per_image,
        "bits_per_dim_per_probe": per_probe,
        "prior_bpd": sum(prior_bpd) / n,
        "prior_bpd_per_image": prior_bpd,
        "delta_bpd": sum(delta_bpd) / n,
        "dequantization_bits": DEQUANTIZATION_BITS,
        "n_images": n,
        "nfe_mean": sum(nfes) / len(nfes),
        "nfe_per_batch": nfes,
        "seconds": time.perf_counter() - start_time,
        "rtol": rtol, "atol": atol, "method": method, "n_probes": n_probes, "probe": probe,
        "eps": eps, "seed": seed, "first_index": first_index, "batch_size": batch_size,
    }


# --- Gaussian data: every marginal is Gaussian, so the denoiser and the likelihood are closed form ------------

def gaussian_data_denoiser(mean: torch.Tensor, cov: torch.Tensor, schedule: Schedule) -> ContinuousDenoiser:
    """The exact :math:`\\mathbb E[x_0 \\mid x_u]` for data :math:`x_0 \\sim \\mathcal N(m, \\Sigma)` (book eq. ``gaussian-data-denoiser``).

    With :math:`x_u = a x_0 + \\sigma\\epsilon`, :math:`a = \\sqrt{\\bar\\alpha(u)}`, :math:`\\sigma^2 = 1 - \\bar\\alpha(u)`,
    the pair :math:`(x_0, x_u)` is jointly Gaussian and
    :math:`\\mathbb E[x_0\\mid x_u] = m + a\\Sigma(a^2\\Sigma + \\sigma^2 I)^{-1}(x_u - a m)`.

    Args:
        mean: ``(d,)``.
        cov: ``(d, d)`` symmetric positive definite (``s0**2 * torch.eye(d)`` for :math:`\\mathcal N(m, s_0^2 I)`).

    Returns:
        ``denoiser(x, u)`` for ``x`` ``(B, d)`` and ``u`` in ``(0, 1]``; float64 in, float64 out.
    """
    mean = torch.as_tensor(mean, dtype=torch.float64)
    cov = torch.as_tensor(cov, dtype=torch.float64)
    eye = torch.eye(cov.shape[0], dtype=torch.float64)

    def denoiser(x: torch.Tensor, u: torch.Tensor | float) -> torch.Tensor:
        _, a, s2 = _coefs(schedule, torch.as_tensor(u, dtype=torch.float64))
        gain = a * torch.linalg.solve(a * a * cov + s2 * eye, cov)  # a (a^2 S + s^2 I)^{-1} S, symmetric for symmetric S
        return mean.to(x) + (x - a * mean.to(x)) @ gain.to(x)

    denoiser.schedule = schedule
    return denoiser


def gaussian_data_log_prob(x: torch.Tensor, u: float, mean: torch.Tensor, cov: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """:math:`\\log q_u(x)` in nats for data :math:`\\mathcal N(m, \\Sigma)`: :math:`q_u = \\mathcal N(a m, a^2\\Sigma + (1 - a^2) I)` (book eq. ``gaussian-data-marginal``).

    ``x`` ``(B, d)``, ``mean`` ``(d,)``, ``cov`` ``(d, d)``, ``u`` in ``[0, 1]``; returns ``(B,)`` float64.
    """
    _, a, s2 = _coefs(schedule, torch.as_tensor(u, dtype=torch.float64))
    cov = torch.as_tensor(cov, dtype=torch.float64)
    mean = torch.as_tensor(mean, dtype=torch.float64)
    dist = torch.distributions.MultivariateNormal(a * mean, a * a * cov + s2 * torch.eye(cov.shape[0], dtype=torch.float64))
    return dist.log_prob(x.to(torch.float64))
