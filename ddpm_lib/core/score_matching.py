"""Score matching: fitting a vector field :math:`s_\\theta(x) \\approx \\nabla_x \\log p(x)` from samples of ``p``.

Book chapter "Score matching" (``notebooks/score_matching.ipynb``). Three objectives, each a mean over
the batch of a per-row term (the sum over every non-batch dimension), optionally weighted per row:

* explicit score matching, book eq. ``esm-loss``: :math:`\\tfrac12\\,\\|s_\\theta(x) - \\nabla_x\\log p(x)\\|^2`,
  which needs the true score (Hyvärinen 2005, the objective before his Theorem 1; Vincent 2011, :math:`J_{ESMq}`);
* implicit score matching, book eq. ``ism-loss``: :math:`\\operatorname{tr}\\nabla_x s_\\theta(x) + \\tfrac12\\|s_\\theta(x)\\|^2`,
  which needs only samples; by integration by parts its mean is the explicit objective minus the
  constant :math:`\\tfrac12\\,\\mathbb E\\|\\nabla_x\\log p\\|^2` (Hyvärinen 2005, Theorem 1);
* denoising score matching, book eq. ``dsm-loss``: :math:`\\tfrac12\\|s_\\theta(\\tilde x) - \\nabla_{\\tilde x}\\log q(\\tilde x\\mid x)\\|^2`
  for :math:`\\tilde x \\sim q(\\tilde x \\mid x) = \\mathcal N(\\alpha x, \\sigma^2 I)`, which needs only the
  kernel's score (:func:`conditional_score`); its mean is the explicit objective for the noised marginal
  :math:`q(\\tilde x)` plus a constant (Vincent 2011; book eq. ``vincent-identity``; Song & Ermon 2019, eq. 2).

With the book's forward process (eq. ``q-sample``) the kernel is :math:`\\alpha = \\sqrt{\\bar\\alpha_t}`,
:math:`\\sigma = \\sqrt{1 - \\bar\\alpha_t}`, and the kernel's score is :math:`-\\epsilon/\\sqrt{1-\\bar\\alpha_t}`
(``ddpm_lib.core.targets.score_from_eps`` of the actual noise). Weighted by :math:`\\lambda = \\sigma^2`
(Song & Ermon 2019, eq. 6) the denoising objective is half the squared error of
:math:`\\hat\\epsilon = -\\sigma\\, s_\\theta`, the loss of Ho et al. (2020, eq. 14).

Torch only. Each function accepts float tensors of shape ``(B, ...)``; the three losses return a 0-d tensor,
:func:`conditional_score` a tensor of ``xt``'s shape. The result's dtype is that of the tensor inputs promoted
together (``torch.result_type``: float32 throughout gives float32, a float64 tensor anywhere gives float64).
Per-row coefficients (``sigma``, ``alpha``, ``weight``) are Python floats or tensors of shape ``(B,)``, formed
in float64 and cast to the result's dtype at the end; they are not detached, so a coefficient that requires
grad (a learned noise schedule, ``ddpm_lib.core.learned_schedule``) passes its gradient through the loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["conditional_score", "explicit_score_matching_loss", "implicit_score_matching_loss", "dsm_loss"]


def _per_row(value: float | torch.Tensor, like: torch.Tensor, name: str) -> torch.Tensor:
    # a float, a 0-d tensor or a (B,) tensor -> float64 on the CPU, of shape (B, 1, ..., 1) (or ()); the
    # caller casts it to the data's dtype and device at the end (float64 is not available on every accelerator)
    # (a Python float goes straight to float64: torch.as_tensor(0.3) would round it to float32 first). A tensor
    # is not detached: .cpu() and .to() are differentiable, so its gradient reaches the loss.
    v = value.cpu().to(torch.float64) if torch.is_tensor(value) else torch.tensor(value, dtype=torch.float64)
    if v.ndim == 0:
        return v
    if v.shape != (like.shape[0],):
        raise ValueError(f"{name} must be a float or a tensor of shape (B,) = ({like.shape[0]},), one per row; "
                         f"got shape {tuple(v.shape)}.")
    return v.reshape((-1,) + (1,) * (like.ndim - 1))


def _check_batch(x: torch.Tensor, name: str) -> None:
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"{name} must have a batch dimension of at least one row, got shape {tuple(x.shape)}.")


def _weighted_mean(per_row: torch.Tensor, weight: float | torch.Tensor | None) -> torch.Tensor:
    # mean over the batch of weight_b * per_row_b; weight None means 1 for every row
    if weight is None:
        return per_row.mean()
    w = _per_row(weight, per_row, "weight")
    return (w.to(per_row) * per_row).mean()


def conditional_score(xt: torch.Tensor, x0: torch.Tensor, sigma: float | torch.Tensor,
                      alpha: float | torch.Tensor = 1.0) -> torch.Tensor:
    """The score of the Gaussian kernel, :math:`\\nabla_{x_t}\\log\\mathcal N(x_t;\\,\\alpha x_0,\\,\\sigma^2 I) = -(x_t - \\alpha x_0)/\\sigma^2`.

    The regression target of denoising score matching (book eq. ``dsm-loss``; Vincent 2011; Song &
    Ermon 2019, eq. 2). Note the minus sign and the *variance* :math:`\\sigma^2` in the denominator. For
    the book's kernel, ``alpha = sqrt(alpha_bar_t)`` and ``sigma = sqrt(1 - alpha_bar_t)``, it equals
    :math:`-\\epsilon/\\sqrt{1-\\bar\\alpha_t}` (book eq. ``score-from-eps`` with the actual noise).

    Args:
        xt: the noisy points, shape ``(B, ...)``, a float dtype.
        x0: the clean points, same shape.
        sigma: the kernel's standard deviation (not its variance), positive: a float or a ``(B,)`` tensor.
        alpha: the kernel's mean factor, a float or a ``(B,)`` tensor (1 for the kernel of Vincent 2011).

    Returns:
        ``xt``'s shape, in units of 1 / ``x``; dtype: ``xt`` and ``x0`` promoted together (see the module).

    Raises:
        ValueError: for mismatched shapes, a ``sigma`` that is not positive (zero, negative or NaN) or a
            per-row tensor of the wrong length.
    """
    if xt.shape != x0.shape:
        raise ValueError(f"conditional_score: xt {tuple(xt.shape)} and x0 {tuple(x0.shape)} must have one shape.")
    _check_batch(xt, "xt")
    s = _per_row(sigma, xt, "sigma")
    if bool((~(s > 0)).any()):  # written so that a NaN fails it too
        raise ValueError("conditional_score: sigma (the kernel's standard deviation) must be positive (and not NaN).")
    a = _per_row(alpha, xt, "alpha")
    return -(xt - a.to(xt) * x0) / (s * s).to(xt)


def explicit_score_matching_loss(score: torch.Tensor, true_score: torch.Tensor,
                                 weight: float | torch.Tensor | None = None) -> torch.Tensor:
    """Explicit score matching: the mean over the batch of :math:`\\tfrac12\\|s_\\theta(x) - \\nabla_x\\log p(x)\\|^2`.

    Book eq. ``esm-loss``; Hyvärinen (2005), the objective his Theorem 1 rewrites; Vincent (2011),
    :math:`J_{ESMq}`. Needs the true score, so in practice only on toys with an exact score
    (``ddpm_lib.toys.mixture.GaussianMixture.score``) or as the reference the other two objectives are
    compared with.

    Args:
        score: the model's score at the sample points, shape ``(B, ...)``, a float dtype.
        true_score: :math:`\\nabla_x\\log p` at the same points, same shape.
        weight: optional per-row weights, a float or a ``(B,)`` tensor (each row's half squared norm is
            multiplied by its weight before the mean); ``None`` for 1.

    Returns:
        A 0-d tensor, in units of 1 / ``x`` squared; dtype: ``score`` and ``true_score`` promoted together.

    Raises:
        ValueError: for mismatched shapes or a weight tensor of the wrong length.
    """
    if score.shape != true_score.shape:
        raise ValueError(f"explicit_score_matching_loss: score {tuple(score.shape)} and true_score "
                         f"{tuple(true_score.shape)} must have one shape.")
    _check_batch(score, "score")
    per_row = 0.5 * (score - true_score).pow(2).reshape(score.shape[0], -1).sum(1)
    return _weighted_mean(per_row, weight)


def implicit_score_matching_loss(score_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                                 n_probes: int | None = None, generator: torch.Generator | None = None,
                                 weight: float | torch.Tensor | None = None) -> torch.Tensor:
    """Implicit (Hyvärinen) score matching: the mean over the batch of :math:`\\operatorname{tr}\\nabla_x s_\\theta(x) + \\tfrac12\\|s_\\theta(x)\\|^2`.

    Book eq. ``ism-loss``; Hyvärinen (2005), Theorem 1. Its expectation under ``p`` equals the explicit
    objective (:func:`explicit_score_matching_loss`) minus :math:`\\tfrac12\\,\\mathbb E_p\\|\\nabla_x\\log p\\|^2`,
    a constant free of the model, provided :math:`p\\,s_\\theta \\to 0` at infinity and both squared norms
    have finite mean.

    The trace of the Jacobian is exact with ``n_probes=None``: one backward pass per coordinate, so for
    low dimension only. With ``n_probes = k`` it is Hutchinson's unbiased estimate
    :math:`\\frac1k\\sum_j v_j^\\top (\\nabla_x s_\\theta)\\, v_j` with Rademacher probes :math:`v_j` (the
    variance-reduced sliced score matching of Song, Garg, Shi & Ermon 2019): one backward pass per probe.
    When gradients are enabled the graph is kept (``create_graph=True``), so the result can be differentiated
    with respect to the model's parameters (and requires grad: ``.detach()`` it before ``float``); under
    ``torch.no_grad()`` no graph of second derivatives is built and the result does not require grad.

    Args:
        score_fn: ``x -> s_theta(x)``, shape of ``x``, differentiable in ``x`` (close over ``t`` for a
            noise-conditional network: ``lambda x: model(x, t)``). It must treat the rows independently:
            the trace is read from the gradient of the batch's sum.
        x: samples of ``p``, shape ``(B, ...)``, a float dtype; not modified (a copy requires grad).
        n_probes: ``None`` for the exact trace, or a positive number of Rademacher probes.
        generator: the generator the probes are drawn from (``None``: the global one).
        weight: optional per-row weights, as in :func:`explicit_score_matching_loss`.

    Returns:
        A 0-d tensor, in units of 1 / ``x`` squared; dtype: ``x`` and ``score_fn``'s output promoted together.
        Unlike the explicit objective it can be negative (its minimum is minus the constant above).

    Raises:
        ValueError: for ``n_probes < 1``, or a ``score_fn`` output of another shape than ``x``.
    """
    if n_probes is not None and n_probes < 1:
        raise ValueError(f"implicit_score_matching_loss: n_probes must be None (exact trace) or >= 1, got {n_probes}.")
    _check_batch(x, "x")
    keep_graph = torch.is_grad_enabled()  # the caller's mode: a result to differentiate, or only its value
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        s = score_fn(x)
        if s.shape != x.shape:
            raise ValueError(f"implicit_score_matching_loss: score_fn returned shape {tuple(s.shape)} for x of shape {tuple(x.shape)}.")
        B = x.shape[0]
        flat = s.reshape(B, -1)
        if n_probes is None:
            trace = torch.zeros(B, dtype=s.dtype, device=s.device)
            for j in range(flat.shape[1]):
                (g,) = torch.autograd.grad(flat[:, j].sum(), x, create_graph=keep_graph, retain_graph=True)
                trace = trace + g.reshape(B, -1)[:, j]
        else:
            trace = torch.zeros(B, dtype=s.dtype, device=s.device)
            for _ in range(n_probes):
                device = generator.device if generator is not None else x.device  # drawn on the generator's device
                v = (torch.randint(0, 2, x.shape, generator=generator, device=device) * 2 - 1).to(x)
                (g,) = torch.autograd.grad((s * v).sum(), x, create_graph=keep_graph, retain_graph=True)  # g_b = J_b^T v_b
                trace = trace + (g * v).reshape(B, -1).sum(1)
            trace = trace / n_probes
        per_row = trace + 0.5 * flat.pow(2).sum(1)
    return _weighted_mean(per_row, weight)  # outside enable_grad: under no_grad the result does not require grad


def dsm_loss(score: torch.Tensor, xt: torch.Tensor, x0: torch.Tensor, sigma: float | torch.Tensor,
             alpha: float | torch.Tensor = 1.0, weight: float | torch.Tensor | None = None) -> torch.Tensor:
    """Denoising score matching: the mean over the batch of :math:`\\tfrac{\\lambda}{2}\\|s_\\theta(x_t) + (x_t - \\alpha x_0)/\\sigma^2\\|^2`.

    Book eq. ``dsm-loss``; Vincent (2011), :math:`J_{DSMq_\\sigma}`; Song & Ermon (2019), eq. 2, and eq. 5 for
    their Gaussian kernel at one noise level; ``weight = sigma**2`` is their :math:`\\lambda(\\sigma) = \\sigma^2`
    in the combined objective, eq. 6. For ``xt`` drawn from
    :math:`\\mathcal N(\\alpha x_0, \\sigma^2 I)` its expectation equals the explicit objective for the noised
    marginal :math:`q(x_t)` plus a constant free of the model (book eq. ``vincent-identity``), so its
    minimizer is :math:`\\nabla\\log q(x_t)`: the loss itself does not go to 0 (its floor is that constant).

    Args:
        score: the model's score :math:`s_\\theta(x_t)`, shape ``(B, ...)``, a float dtype.
        xt: the noisy points, same shape; x0: the clean points they were made from, same shape.
        sigma: the kernel's standard deviation (not its variance): a float or a ``(B,)`` tensor, positive.
        alpha: the kernel's mean factor: a float or a ``(B,)`` tensor; ``sqrt(alpha_bar_t)`` for the book's
            forward process, 1 for the kernel of Vincent (2011) and Song & Ermon (2019).
        weight: optional per-row weights :math:`\\lambda`, a float or a ``(B,)`` tensor; ``None`` for 1.

    Returns:
        A 0-d tensor, in units of 1 / ``x`` squared (times the weight's units); dtype: ``score``, ``xt`` and
        ``x0`` promoted together. It requires grad when ``score`` or a tensor ``sigma``, ``alpha`` or
        ``weight`` does.

    Raises:
        ValueError: for mismatched shapes, a ``sigma`` that is not positive (zero, negative or NaN) or a
            per-row tensor of the wrong length.
    """
    if score.shape != xt.shape:
        raise ValueError(f"dsm_loss: score {tuple(score.shape)} must have xt's shape {tuple(xt.shape)}.")
    target = conditional_score(xt, x0, sigma, alpha)
    per_row = 0.5 * (score - target).pow(2).reshape(score.shape[0], -1).sum(1)
    return _weighted_mean(per_row, weight)
