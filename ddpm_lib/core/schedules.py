"""Noise schedules: the immutable :class:`Schedule` and the constructors that build one.

Timestep convention (book: notation page, "Timesteps"): ``t`` is an integer in ``{0, 1, ..., T}``.
``t = 0`` is the data itself and ``t = T`` is (almost) pure noise, as in Ho et al. (2020). Every
per-step tensor of a :class:`Schedule` has length ``T + 1`` and is indexed by ``t`` directly, so
``schedule.alpha_bar[t]`` *is* :math:`\\bar\\alpha_t`. Entry 0 is the clean-data limit:
``beta[0] = 0`` and ``alpha_bar[0] = 1``.

Continuous time (book: notation page, "Continuous time", eq. ``alpha-bar-continuous``): ``u = t / T``
in ``[0, 1]``; :meth:`Schedule.alpha_bar_at`, :meth:`Schedule.beta_at` and :meth:`Schedule.log_snr_at`
extend the schedule to real ``u`` as the VP-SDE whose rate is constant on each step. The network is
given time in units of steps, ``t = T u``.

Everything is float64 so that the book's float64 checks are exact to round-off. Functions that
combine a schedule with data form each coefficient in float64 from these fields (:func:`gather64`)
and cast it to the data's dtype only at the end: cast first, and in float32 ``1 - alpha_bar_1``
(about ``1e-4``) keeps only three or four significant digits.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

__all__ = [
    "Schedule",
    "linear_schedule",
    "cosine_schedule",
    "sigmoid_schedule",
    "gather",
    "gather64",
]


@dataclass(frozen=True, eq=False)
class Schedule:
    """A discrete noise schedule :math:`\\beta_1, \\dots, \\beta_T` and the quantities derived from it.

    Build one with :func:`linear_schedule`, :func:`cosine_schedule`, :func:`sigmoid_schedule`,
    :meth:`from_beta` or :meth:`from_alpha_bar`; the fields are read-only.

    Attributes:
        beta: float64 tensor of shape ``(T + 1,)``. ``beta[t]`` is :math:`\\beta_t \\in (0, 1)` for
            ``t >= 1`` (book eq. ``forward-kernel``; Ho et al. 2020, eq. 2) and ``beta[0] = 0``.
        name: a label for plots and checkpoints, e.g. ``"linear"``.

    The dataclass is frozen (fields cannot be reassigned); the tensors it hands out are its own,
    so do not modify them in place.

    Raises:
        ValueError: from the constructors, when ``T < 1``, a ``beta_t`` lies outside ``(0, 1)``, or
            ``alpha_bar`` is not strictly decreasing inside ``(0, 1]``.
    """

    beta: torch.Tensor
    name: str = "custom"

    def __post_init__(self) -> None:
        beta = torch.as_tensor(self.beta, dtype=torch.float64).detach().clone()
        if beta.ndim != 1 or beta.numel() < 2:
            raise ValueError(
                f"Schedule.beta must be a 1-D tensor of length T + 1 >= 2 (entry 0 is t = 0), "
                f"got shape {tuple(beta.shape)}. Use linear_schedule(T) or Schedule.from_beta(betas_1_to_T)."
            )
        if beta[0] != 0:
            raise ValueError(f"Schedule.beta[0] must be 0 (t = 0 is the data), got {beta[0].item()}.")
        inner = beta[1:]
        bad = ~((inner > 0) & (inner < 1))
        if bool(bad.any()):
            t_bad = int(torch.nonzero(bad)[0]) + 1
            raise ValueError(
                f"beta_t must lie in the open interval (0, 1) for t = 1..T; beta_{t_bad} = "
                f"{beta[t_bad].item()!r}. Check the schedule's parameters (e.g. beta_end < 1)."
            )
        object.__setattr__(self, "beta", beta)

    # --- constructors -------------------------------------------------------------------------
    @classmethod
    def from_beta(cls, beta_1_to_T: torch.Tensor, name: str = "custom") -> "Schedule":
        """Build a schedule from :math:`\\beta_1, \\dots, \\beta_T` (shape ``(T,)``).

        Raises:
            ValueError: if ``T < 1`` or some ``beta_t`` is outside ``(0, 1)``.
        """
        beta_1_to_T = torch.as_tensor(beta_1_to_T, dtype=torch.float64).reshape(-1)
        if beta_1_to_T.numel() < 1:
            raise ValueError("A schedule needs T >= 1 steps; got an empty beta.")
        return cls(torch.cat([torch.zeros(1, dtype=torch.float64), beta_1_to_T]), name=name)

    @classmethod
    def from_alpha_bar(cls, alpha_bar_1_to_T: torch.Tensor, name: str = "custom") -> "Schedule":
        """Build a schedule from :math:`\\bar\\alpha_1, \\dots, \\bar\\alpha_T` (shape ``(T,)``).

        :math:`\\beta_t = 1 - \\bar\\alpha_t / \\bar\\alpha_{t-1}` with :math:`\\bar\\alpha_0 = 1`
        (book eq. ``alpha-bar``; Ho et al. 2020, eq. 4).

        Raises:
            ValueError: if ``alpha_bar`` is not strictly decreasing inside ``(0, 1)``.
        """
        ab = torch.as_tensor(alpha_bar_1_to_T, dtype=torch.float64).reshape(-1)
        if ab.numel() < 1:
            raise ValueError("A schedule needs T >= 1 steps; got an empty alpha_bar.")
        full = torch.cat([torch.ones(1, dtype=torch.float64), ab])
        if not bool(((ab > 0) & (ab < 1)).all()) or not bool((full[1:] < full[:-1]).all()):
            raise ValueError(
                "alpha_bar_t must be strictly decreasing in t and lie in (0, 1) for t = 1..T; "
                f"got values from {ab.min().item()!r} to {ab.max().item()!r}. "
                "Check the schedule's parameters."
            )
        return cls.from_beta(1.0 - full[1:] / full[:-1], name=name)

    # --- derived quantities (book: notation page) ---------------------------------------------
    @property
    def T(self) -> int:
        """Number of diffusion steps ``T`` (an int >= 1)."""
        return self.beta.numel() - 1

    @property
    def alpha(self) -> torch.Tensor:
        """:math:`\\alpha_t = 1 - \\beta_t`, shape ``(T + 1,)``, ``alpha[0] = 1``."""
        return 1.0 - self.beta

    @property
    def alpha_bar(self) -> torch.Tensor:
        """:math:`\\bar\\alpha_t = \\prod_{s=1}^t \\alpha_s`, shape ``(T + 1,)``, ``alpha_bar[0] = 1``.

        Book eq. ``alpha-bar``; Ho et al. (2020), text above eq. 4.
        """
        return torch.cumprod(self.alpha, dim=0)

    @property
    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio :math:`\\bar\\alpha_t / (1 - \\bar\\alpha_t)`, shape ``(T + 1,)``.

        ``snr[0] = inf`` (clean data). Book eq. ``snr``; Kingma et al. (2021), eq. 2.
        """
        ab = self.alpha_bar
        return ab / (1.0 - ab)

    @property
    def log_snr(self) -> torch.Tensor:
        """:math:`\\log \\mathrm{SNR}(t)` in nats, shape ``(T + 1,)``; ``log_snr[0] = inf``."""
        ab = self.alpha_bar
        return torch.log(ab) - torch.log1p(-ab)

    @property
    def posterior_variance(self) -> torch.Tensor:
        """:math:`\\tilde\\beta_t = \\frac{1 - \\bar\\alpha_{t-1}}{1 - \\bar\\alpha_t} \\beta_t`, shape ``(T + 1,)``.

        The variance of :math:`q(x_{t-1} \\mid x_t, x_0)` for ``t >= 1`` (book eq.
        ``posterior-variance``; Ho et al. 2020, eq. 7). ``posterior_variance[1] = 0``: given
        ``x_1`` and ``x_0``, ``x_0`` is known. Entry 0 is set to 0 and never used.
        """
        ab = self.alpha_bar
        out = torch.zeros_like(ab)
        out[1:] = (1.0 - ab[:-1]) / (1.0 - ab[1:]) * self.beta[1:]
        return out

    # --- continuous time u = t / T in [0, 1] (book: notation page, "Continuous time") --------------
    def alpha_bar_at(self, u: torch.Tensor | float) -> torch.Tensor:
        """:math:`\\bar\\alpha(u)` for real ``u`` in ``[0, 1]``: :math:`\\log\\bar\\alpha` interpolated linearly between the grid points ``u = t / T``.

        Book eq. ``alpha-bar-continuous``. For ``u`` between the grid points ``(t - 1) / T`` and ``t / T``,

        .. math:: \\log\\bar\\alpha(u) = (1 - f)\\log\\bar\\alpha_{t-1} + f\\log\\bar\\alpha_t,
           \\quad u = (t - 1 + f)/T,\\ f \\in [0, 1],

        so ``alpha_bar_at(t / T) == alpha_bar[t]``. Why *log*-linear: this is exactly the VP-SDE
        :math:`dx = -\\tfrac12\\beta(u)\\,x\\,du + \\sqrt{\\beta(u)}\\,dW` (Song et al. 2021,
        "Score-based generative modeling through SDEs", eq. 11 and App. B) with the piecewise-constant
        :math:`\\beta(u) = -T\\log(1 - \\beta_t)` on :math:`((t-1)/T, t/T]` (:meth:`beta_at`). The VP-SDE
        started at :math:`x_0` has :math:`x_u \\sim \\mathcal N(\\sqrt{\\bar\\alpha(u)}\\,x_0, (1 - \\bar\\alpha(u)) I)`
        with :math:`\\bar\\alpha(u) = \\exp(-\\int_0^u \\beta(s)\\,ds)`; the integral of a
        piecewise-constant :math:`\\beta` is piecewise linear, hence the formula above. Over one interval
        the SDE is an Ornstein-Uhlenbeck process with constant :math:`\\beta`, whose exact transition
        has mean factor :math:`e^{-\\beta/(2T)} = \\sqrt{1 - \\beta_t}` and variance
        :math:`1 - e^{-\\beta/T} = \\beta_t`: it reproduces :math:`q(x_t \\mid x_{t-1}) =
        \\mathcal N(\\sqrt{1-\\beta_t}\\,x_{t-1}, \\beta_t I)` exactly (not only as :math:`T \\to \\infty`,
        as Song et al.'s :math:`\\beta(u) \\approx T\\beta_t` does), so the discrete chain *is* this SDE
        observed at ``u = t / T``. Between grid points it is Kingma et al.'s (2021) continuous-time
        view of the same variance-preserving process: :math:`q(x_u \\mid x_s)`, ``s < u``, has mean
        factor :math:`\\sqrt{\\bar\\alpha(u)/\\bar\\alpha(s)}` and variance :math:`1 - \\bar\\alpha(u)/\\bar\\alpha(s)`.

        Args:
            u: real number(s) in ``[0, 1]``, a Python float or a tensor of any shape and real dtype
                (converted to float64 exactly). A ``u`` within 8 float64 ulps of a grid point
                ``t / T`` is taken to be that grid point, so that ``t / T`` computed in floating
                point lands on ``t`` (``(15 / 22) * 22`` is not exactly 15).

        Returns:
            A float64 tensor of ``u``'s shape on the CPU (like :func:`gather64`: float64 is not
            available on every accelerator), with values in ``(0, 1]``; 1 at ``u = 0``, and exactly
            ``alpha_bar[t]`` at ``u = t / T``.

        Raises:
            ValueError: if some ``u`` lies outside ``[0, 1]`` or is NaN.
            TypeError: for a boolean or complex ``u``.
        """
        log_ab, tau, on_grid = self._log_alpha_bar_at(u, "alpha_bar_at")
        return torch.where(on_grid, self.alpha_bar[tau.long()], torch.exp(log_ab))

    def beta_at(self, u: torch.Tensor | float) -> torch.Tensor:
        """The piecewise-constant rate :math:`\\beta(u) = -T\\log(1 - \\beta_t)` for ``u`` in ``((t-1)/T, t/T]``.

        The :math:`\\beta(u)` of the VP-SDE that :meth:`alpha_bar_at` follows (Song et al. 2021, eq. 11):
        :math:`\\bar\\alpha(u) = \\exp(-\\int_0^u \\beta(s)\\,ds)`. It is a rate per unit of ``u``, so
        of order :math:`T\\beta_t` (to first order in :math:`\\beta_t`, Song et al.'s
        :math:`\\beta(t/T) = T\\beta_t`, their App. B), not a variance in ``(0, 1)``.

        Convention at the jumps: **left-continuous**. The grid point ``u = t / T`` belongs to the
        interval that ends there, ``beta_at(t / T) = -T log(1 - beta_t)``, and ``u = 0`` belongs to the
        first interval, ``beta_at(0) = -T log(1 - beta_1)``. (The convention only matters at the grid
        points, a set of measure zero for the integral.)

        Args:
            u: as for :meth:`alpha_bar_at`.

        Returns:
            A positive float64 tensor of ``u``'s shape on the CPU.

        Raises:
            ValueError: if some ``u`` lies outside ``[0, 1]`` or is NaN.
            TypeError: for a boolean or complex ``u``.
        """
        tau = _steps_from_u(u, self.T, "beta_at")
        t = tau.ceil().clamp(min=1).long()  # the interval ((t-1)/T, t/T] that contains u; u = 0 -> t = 1
        return -self.T * torch.log1p(-self.beta[t])

    def log_snr_at(self, u: torch.Tensor | float) -> torch.Tensor:
        """:math:`\\lambda(u) = \\log\\bar\\alpha(u) - \\log(1 - \\bar\\alpha(u))` in nats, for ``u`` in ``[0, 1]``.

        The log-SNR of :meth:`alpha_bar_at` (book eq. ``alpha-bar-continuous``; Kingma et al. 2021,
        eq. 2): ``log_snr_at(t / T) == log_snr[t]`` and ``log_snr_at(0) = inf``. Between grid points it
        is formed from the interpolated :math:`\\ell = \\log\\bar\\alpha(u)` as
        :math:`\\ell - \\log(-\\operatorname{expm1}(\\ell))`, which keeps its precision as ``u -> 0``
        (where :math:`1 - \\bar\\alpha(u)` would cancel).

        Args:
            u: as for :meth:`alpha_bar_at`.

        Returns:
            A float64 tensor of ``u``'s shape on the CPU, strictly decreasing in ``u``.

        Raises:
            ValueError: if some ``u`` lies outside ``[0, 1]`` or is NaN.
            TypeError: for a boolean or complex ``u``.
        """
        log_ab, tau, on_grid = self._log_alpha_bar_at(u, "log_snr_at")
        between = log_ab - torch.log(-torch.expm1(log_ab))  # inf at u = 0, a grid point: replaced below
        return torch.where(on_grid, self.log_snr[tau.long()], between)

    def _log_alpha_bar_at(self, u: torch.Tensor | float, caller: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log alpha_bar(u) by linear interpolation, tau = T u snapped to the grid, whether tau is a grid point)."""
        tau = _steps_from_u(u, self.T, caller)
        log_ab = torch.log(self.alpha_bar)
        k = tau.floor().clamp(max=self.T - 1).long()  # u in [k/T, (k+1)/T]; u = 1 uses the last interval
        f = tau - k
        # (1 - f) a + f b is exactly a at f = 0 and exactly b at f = 1
        log_interp = (1.0 - f) * log_ab[k] + f * log_ab[k + 1]
        return log_interp, tau, tau == tau.round()

    def __repr__(self) -> str:
        ab = self.alpha_bar
        return f"Schedule(name={self.name!r}, T={self.T}, alpha_bar_T={ab[-1].item():.3e})"


_SNAP_ULPS = 8  # T u within this many ulps of an integer t is taken to be t (see Schedule.alpha_bar_at)


def _steps_from_u(u: torch.Tensor | float, T: int, caller: str) -> torch.Tensor:
    """``tau = T u`` (float64, CPU, ``u``'s shape) for continuous time ``u`` in ``[0, 1]``, snapped to the grid.

    ``(t / T) * T`` is not always ``t`` in floating point (one or two roundings: ``(15 / 22) * 22``
    exceeds 15 by one ulp); a ``tau`` within :data:`_SNAP_ULPS` ulps of an integer ``t`` is set to
    ``t``, so that the grid point ``u = t / T`` is recognized whatever way it was computed.

    Raises:
        TypeError: for a boolean or complex ``u``.
        ValueError: if some ``u`` is outside ``[0, 1]`` or NaN.
    """
    if isinstance(u, bool) or (torch.is_tensor(u) and (u.dtype == torch.bool or u.is_complex())):
        raise TypeError(f"Schedule.{caller}: u must be real (continuous time in [0, 1]), got {u!r}.")
    u64 = u if torch.is_tensor(u) else torch.as_tensor(u, dtype=torch.float64)  # a float's 64 bits, not float32's
    if u64.is_complex():
        raise TypeError(f"Schedule.{caller}: u must be real (continuous time in [0, 1]), got a complex u.")
    u64 = u64.detach().to("cpu", torch.float64)
    outside = ~((u64 >= 0) & (u64 <= 1))  # NaN included
    if bool(outside.any()):
        n, first = int(outside.sum()), u64[outside][0].item()
        raise ValueError(
            f"Schedule.{caller}: continuous time u must lie in [0, 1] (u = t / T: u = 0 is the data, "
            f"u = 1 is step T); got u = {first!r}" + (f" and {n - 1} more value(s) outside" if n > 1 else "") + "."
        )
    tau = u64 * T
    t = torch.round(tau)
    return torch.where((tau - t).abs() <= _SNAP_ULPS * torch.finfo(torch.float64).eps * t, t, tau)


def check_timestep_shape(t: torch.Tensor | int, x: torch.Tensor, name: str) -> None:
    """Check that the timesteps ``t`` are one per example of the batch ``x`` (or one for all).

    ``t`` must be a Python int, a 0-d tensor, or of shape ``(B,)`` with ``B = x.shape[0]``; anything
    else would broadcast ``x`` into a larger tensor instead of noising it. ``name`` is the caller,
    for the message. (:func:`gather64` applies the looser broadcasting form of this rule to every
    coefficient it picks: ``t`` 0-d or 1-d, of the batch's length or of length 1.)

    Raises:
        ValueError: for any other shape of ``t``, saying which shapes are accepted.
    """
    shape = tuple(torch.as_tensor(t).shape)
    if shape == () or (x.ndim >= 1 and shape == (x.shape[0],)):
        return
    batch = f"({x.shape[0]},)" if x.ndim >= 1 else "(B,)"
    raise ValueError(f"{name}: t must be 0-d (one timestep for all) or of shape {batch}, one per example of the batch "
                     f"of shape {tuple(x.shape)}; got t of shape {shape}.")


def gather64(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Pick ``values[t]`` in float64, shaped to broadcast against ``like``, for forming coefficients.

    Use this, not :func:`gather`, for every coefficient that is computed from schedule fields
    (``1 - alpha_bar_t``, ``sqrt(alpha_bar_t)``, ratios): form it in float64, then cast it with
    ``coef.to(like)`` just before it multiplies the data (book: notation page; the float32 cast
    first loses ``1 - alpha_bar_1`` to about ``1.7e-4`` relative, which the last DDPM step then
    multiplies into ``x0_hat``).

    Args:
        values: 1-D tensor of shape ``(T + 1,)`` (a schedule field), any floating dtype.
        t: integer tensor of shape ``(B,)`` (or a 0-d tensor / Python int) with entries in ``0..T``.
        like: a tensor of shape ``(B, ...)``; only its number of dimensions is used.

    Returns:
        A float64 tensor on ``values``' device (the CPU for a :class:`Schedule`'s fields: float64
        is not available on every accelerator) of shape ``(B, 1, ..., 1)``, or ``()`` for a scalar ``t``.

    Raises:
        TypeError: if ``t`` is not an integer tensor.
        ValueError: if ``t`` has more than one dimension, or a length that neither equals nor
            broadcasts against ``like``'s batch (it would otherwise add dimensions to the result).
        IndexError: if some ``t`` lies outside ``0..T``.
    """
    t = torch.as_tensor(t)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise TypeError(f"timesteps t must be integers in 0..T, got dtype {t.dtype}.")
    if t.ndim > 1 or (t.ndim == 1 and like.ndim >= 1 and 1 not in (t.shape[0], like.shape[0]) and t.shape[0] != like.shape[0]):
        raise ValueError(f"gather: t must be 0-d or 1-d with one timestep per example of a batch of {like.shape[0] if like.ndim else 1} "
                         f"(or broadcast against it); got t of shape {tuple(t.shape)} for data of shape {tuple(like.shape)}.")
    t_cpu = t.detach().to("cpu", torch.long)
    T = values.numel() - 1
    if t_cpu.numel() and (int(t_cpu.min()) < 0 or int(t_cpu.max()) > T):
        raise IndexError(
            f"timestep out of range: got t in [{int(t_cpu.min())}, {int(t_cpu.max())}], the schedule "
            f"allows 0..{T} (t = 0 is the data; see the notation page)."
        )
    out = values[t_cpu].to(torch.float64)
    if t_cpu.ndim == 0:
        return out
    return out.reshape(t_cpu.shape + (1,) * (like.ndim - t_cpu.ndim))


def gather(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Pick ``values[t]`` and shape it to broadcast against ``like``, in ``like``'s dtype and device.

    For a field used as it is (a variance, say). A coefficient *computed* from schedule fields
    should be formed from :func:`gather64` and cast at the end.

    Args:
        values: 1-D tensor of shape ``(T + 1,)`` (a schedule field).
        t: integer tensor of shape ``(B,)`` (or a 0-d tensor / Python int) with entries in ``0..T``.
        like: a tensor of shape ``(B, ...)``; the result has shape ``(B, 1, ..., 1)`` (or ``()``
            for a scalar ``t``) and ``like``'s dtype and device.

    Raises:
        TypeError: if ``t`` is not an integer tensor.
        ValueError: if ``t`` has more than one dimension or does not broadcast against ``like``'s batch.
        IndexError: if some ``t`` lies outside ``0..T``.
    """
    return gather64(values, t, like).to(device=like.device, dtype=like.dtype)


def linear_schedule(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """Linear betas from ``beta_start`` to ``beta_end`` over ``T`` steps (Ho et al. 2020, §4).

    The defaults are DDPM's values, meant for ``T = 1000``.

    Raises:
        ValueError: if ``T < 1`` or a beta falls outside ``(0, 1)``.
    """
    _check_T(T)
    return Schedule.from_beta(torch.linspace(beta_start, beta_end, T, dtype=torch.float64), name="linear")


def cosine_schedule(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """The cosine schedule of Nichol & Dhariwal (2021), eq. 17.

    :math:`\\bar\\alpha_t = f(t)/f(0)` with :math:`f(t) = \\cos^2\\big(\\frac{t/T + s}{1 + s}\\frac{\\pi}{2}\\big)`;
    betas are clipped at ``max_beta`` to avoid the singularity at ``t = T``, as in the paper.

    Raises:
        ValueError: if ``T < 1``, ``s < 0`` or ``max_beta`` is outside ``(0, 1)``.
    """
    _check_T(T)
    if s < 0:
        raise ValueError(f"cosine_schedule: the offset s must be >= 0, got {s}.")
    if not 0 < max_beta < 1:
        raise ValueError(f"cosine_schedule: max_beta must lie in (0, 1), got {max_beta}.")
    t = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    ab = f / f[0]
    beta = torch.clamp(1.0 - ab[1:] / ab[:-1], max=max_beta)
    return Schedule.from_beta(beta, name="cosine")


def sigmoid_schedule(
    T: int = 1000, start: float = -3.0, end: float = 3.0, tau: float = 1.0, max_beta: float = 0.999
) -> Schedule:
    """A sigmoid schedule (Jabri et al. 2022; Chen 2023, Algorithm 1).

    :math:`\\bar\\alpha_t = \\frac{\\sigma(e/\\tau) - \\sigma((s + (e - s)t/T)/\\tau)}{\\sigma(e/\\tau) - \\sigma(s/\\tau)}`,
    clipped like the cosine schedule.

    Raises:
        ValueError: if ``T < 1``, ``start >= end`` or ``tau <= 0``.
    """
    _check_T(T)
    if not start < end:
        raise ValueError(f"sigmoid_schedule: need start < end, got start={start}, end={end}.")
    if tau <= 0:
        raise ValueError(f"sigmoid_schedule: tau must be > 0, got {tau}.")
    t = torch.arange(T + 1, dtype=torch.float64) / T
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
    ab = (v_end - torch.sigmoid((start + (end - start) * t) / tau)) / (v_end - v_start)
    if bool((ab[1:-1] <= 0).any()):  # alpha_bar_T = 0 by construction (then clipped); earlier is underflow
        t_zero = int(torch.nonzero(ab[1:-1] <= 0)[0]) + 1
        raise ValueError(
            f"sigmoid_schedule: alpha_bar underflows to 0 at t = {t_zero} < T with tau={tau}, start={start}, "
            f"end={end}; use a larger tau (Chen 2023 uses tau in [0.3, 1.1]) or a smaller end - start."
        )
    beta = torch.clamp(1.0 - ab[1:] / ab[:-1], min=1e-12, max=max_beta)
    return Schedule.from_beta(beta, name="sigmoid")


def _check_T(T: int) -> None:
    if isinstance(T, bool) or not isinstance(T, numbers.Integral) or T < 1:
        raise ValueError(f"the number of steps T must be an integer >= 1, got {T!r}.")
