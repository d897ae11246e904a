"""A small variational autoencoder for MNIST: the network, the ELBO's pieces, training and loading.

Book chapter "The variational autoencoder" (``notebooks/vae.ipynb``). The model follows Kingma &
Welling (2014): an encoder :math:`q_\\phi(z \\mid x) = \\mathcal N(\\mu_\\phi(x), \\operatorname{diag}\\sigma^2_\\phi(x))`,
the prior :math:`p(z) = \\mathcal N(0, I)` and a decoder :math:`p_\\theta(x \\mid z)`, trained by maximizing
the evidence lower bound

.. math::
   \\mathrm{ELBO}(x) = \\mathbb E_{q_\\phi(z \\mid x)}[\\log p_\\theta(x \\mid z)] - D_\\mathrm{KL}(q_\\phi(z \\mid x)\\,\\|\\,p(z))

(book eq. ``elbo-recon-prior``).

**Pixels and the likelihood.** The data are 8-bit images: each pixel is an integer
:math:`k \\in \\{0, \\dots, 255\\}`, mapped to the model range by ``ddpm_lib.data.to_model``,
:math:`x = k/127.5 - 1`. The decoder is a *discretized logistic* (Salimans et al. 2017; the same
construction as the discretized Gaussian decoder of Ho et al. 2020, Sec. 3.3): pixel ``k`` gets the
probability mass of the logistic density over the bin :math:`[x - 1/255, x + 1/255]`, with the
first and last bins extended to :math:`-\\infty` and :math:`+\\infty` (book eq. ``vae-discretized-logistic``).
The 256 masses of a pixel sum to 1, so :math:`p_\\theta(x \\mid z)` is a probability of the discrete
image, no dequantization is needed, and

.. math::
   \\text{bits/dim} = -\\mathrm{ELBO}(x) / (784 \\ln 2) \\ \\ge\\ -\\log_2 p_\\theta(x) / 784

is an upper bound on the model's negative log-likelihood of the 8-bit image, in bits per pixel
(book eq. ``vae-bits-per-dim``), comparable with the discrete decoder of a DDPM.

Layout: :class:`VAEConfig` and :class:`VAE` (only a network), the pure functions
:func:`reparameterize`, :func:`kl_diag_gaussian_to_standard_normal`,
:func:`discretized_logistic_log_prob`, :func:`elbo_terms`, :func:`bits_per_dim`; then training
(:func:`train_vae`, the only part that touches data, checkpoints and progress bars) and loading
(:func:`load_vae`, :func:`shipped_weights_path`).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "VAEConfig",
    "VAE",
    "ELBOTerms",
    "reparameterize",
    "kl_diag_gaussian_to_standard_normal",
    "discretized_logistic_log_prob",
    "elbo_terms",
    "bits_per_dim",
    "VAETrainConfig",
    "train_vae",
    "evaluate_vae",
    "load_vae",
    "shipped_weights_path",
    "SHIPPED_WEIGHTS",
]

NUM_PIXELS = 28 * 28
HALF_BIN = 1.0 / 255.0
"""Half the width of one pixel bin in model range: neighbouring values ``k/127.5 - 1`` are ``2/255`` apart."""

SHIPPED_WEIGHTS = "vae-mnist.safetensors"


# --- the network -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VAEConfig:
    """The VAE's architecture.

    Attributes:
        latent_dim: the dimension ``k`` of ``z``.
        hidden: widths of the hidden layers of the encoder (the decoder mirrors them).
        min_log_scale: lower clamp of the decoder's log-scale (the logistic's ``log s``), which
            keeps the likelihood finite early in training (Salimans et al. 2017 use -7).

    Raises:
        ValueError: for a non-positive size.
    """

    latent_dim: int = 32
    hidden: tuple[int, ...] = (512, 256)
    min_log_scale: float = -7.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.latent_dim < 1 or not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"VAEConfig needs latent_dim >= 1 and positive hidden widths, got {self}.")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "VAEConfig":
        return cls(latent_dim=int(d["latent_dim"]), hidden=tuple(d["hidden"]), min_log_scale=float(d["min_log_scale"]))


def _mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class VAE(nn.Module):
    """Encoder and decoder MLPs for 28 x 28 images; only a network (the ELBO is :func:`elbo_terms`).

    * ``encode(x)``: ``x`` float ``(B, 1, 28, 28)`` in ``[-1, 1]`` -> ``(mean, logvar)``, each ``(B, k)``:
      the parameters of :math:`q_\\phi(z \\mid x)`; ``logvar`` is the log of the **variance**.
    * ``decode(z)``: ``z`` ``(B, k)`` -> ``(loc, log_scale)``, each ``(B, 1, 28, 28)``: the location
      (in model range) and the log-scale of each pixel's logistic.
    """

    def __init__(self, config: VAEConfig = VAEConfig()):
        super().__init__()
        self.config = config
        k, h = config.latent_dim, list(config.hidden)
        self.encoder = _mlp([NUM_PIXELS, *h, 2 * k])
        self.decoder = _mlp([k, *reversed(h), 2 * NUM_PIXELS])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"VAE.encode expects images of shape (B, 1, 28, 28) in [-1, 1], got {tuple(x.shape)}.")
        mean, logvar = self.encoder(x.reshape(x.shape[0], -1)).chunk(2, dim=1)
        return mean, logvar

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if z.ndim != 2 or z.shape[1] != self.config.latent_dim:
            raise ValueError(f"VAE.decode expects z of shape (B, {self.config.latent_dim}), got {tuple(z.shape)}.")
        loc, log_scale = self.decoder(z).chunk(2, dim=1)
        shape = (z.shape[0], 1, 28, 28)
        return loc.reshape(shape), log_scale.clamp(min=self.config.min_log_scale).reshape(shape)

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(mean, logvar, loc, log_scale)`` for images ``x`` and standard normal noise ``eps`` ``(B, k)``."""
        mean, logvar = self.encode(x)
        loc, log_scale = self.decode(reparameterize(mean, logvar, eps))
        return mean, logvar, loc, log_scale


# --- the ELBO's pieces (pure functions) --------------------------------------------------------


def reparameterize(mean: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The reparameterization trick: :math:`z = \\mu + \\sigma \\odot \\epsilon` with :math:`\\sigma = e^{\\text{logvar}/2}`.

    Kingma & Welling (2014), Sec. 2.4; book eq. ``vae-reparam``. ``logvar`` is the log of the
    **variance**, so the standard deviation is ``exp(logvar / 2)``; scaling ``eps`` by
    ``exp(logvar)`` (the variance) is the classic mistake.

    Args:
        mean, logvar, eps: tensors of one shape, e.g. ``(B, k)``; ``eps`` standard normal.

    Returns:
        ``z``, of that shape: a draw from :math:`\\mathcal N(\\mu, \\operatorname{diag} e^{\\text{logvar}})`
        that is differentiable in ``mean`` and ``logvar``.

    Raises:
        ValueError: if the shapes differ.
    """
    if not (mean.shape == logvar.shape == eps.shape):
        raise ValueError(f"reparameterize: mean {tuple(mean.shape)}, logvar {tuple(logvar.shape)} and eps {tuple(eps.shape)} must match.")
    return mean + torch.exp(0.5 * logvar) * eps


def kl_diag_gaussian_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """:math:`D_\\mathrm{KL}(\\mathcal N(\\mu, \\operatorname{diag}\\sigma^2)\\,\\|\\,\\mathcal N(0, I))` in nats, per row.

    :math:`\\tfrac12 \\sum_j (\\sigma_j^2 + \\mu_j^2 - 1 - \\log \\sigma_j^2)`: Kingma & Welling (2014),
    App. B; book eq. ``vae-kl-diag``.

    Args:
        mean, logvar: ``(B, k)``; ``logvar`` is :math:`\\log \\sigma^2` (log-variance).

    Returns:
        ``(B,)``, non-negative, in nats.

    Raises:
        ValueError: if the shapes differ or are not 2-D.
    """
    if mean.shape != logvar.shape or mean.ndim != 2:
        raise ValueError(f"kl_diag_gaussian_to_standard_normal expects two (B, k) tensors, got {tuple(mean.shape)} and {tuple(logvar.shape)}.")
    return 0.5 * (torch.exp(logvar) + mean**2 - 1.0 - logvar).sum(dim=1)


def _check_on_pixel_grid(x: torch.Tensor) -> None:
    k = (x.detach() + 1.0) * 127.5
    if bool((x.detach().abs() > 1.0 + 1e-6).any()) or bool(((k - k.round()).abs() > 1e-3).any()):
        raise ValueError(
            "discretized_logistic_log_prob: x must be 8-bit pixels in model range, k / 127.5 - 1 for k in 0..255; "
            "convert uint8 images with ddpm_lib.data.to_model."
        )


def discretized_logistic_log_prob(x: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Log-probability (nats) of each 8-bit pixel under a logistic discretized to the 256 pixel bins.

    Pixel :math:`x = k/127.5 - 1` gets the mass :math:`F(x + 1/255) - F(x - 1/255)` of the
    logistic CDF :math:`F(y) = \\sigma((y - \\text{loc})/s)`, with :math:`F(x - 1/255)` replaced by 0
    for ``k = 0`` and :math:`F(x + 1/255)` by 1 for ``k = 255``; the 256 masses sum to 1. Salimans et
    al. (2017), Sec. 2.1 (one mixture component); book eq. ``vae-discretized-logistic``. Each difference of
    CDFs is computed in log space on the side of the tail (no cancellation, no approximation), so the
    result is accurate to the dtype's round-off in float32 and float64.

    Args:
        x: pixels in model range on the 8-bit grid, any shape (e.g. ``(B, 1, 28, 28)``).
        loc, log_scale: the logistic's location (model range) and :math:`\\log s`, same shape.

    Returns:
        Per-pixel log-probabilities (nats, at most 0), of ``x``'s shape.

    Raises:
        ValueError: if the shapes differ, or ``x`` is not on the grid ``k/127.5 - 1`` (use
            ``ddpm_lib.data.to_model`` on uint8 images).
    """
    if not (x.shape == loc.shape == log_scale.shape):
        raise ValueError(f"discretized_logistic_log_prob: x {tuple(x.shape)}, loc {tuple(loc.shape)} and log_scale {tuple(log_scale.shape)} must match.")
    _check_on_pixel_grid(x)
    centered = x - loc
    inv_s = torch.exp(-log_scale)
    plus_in = inv_s * (centered + HALF_BIN)
    min_in = inv_s * (centered - HALF_BIN)
    log_cdf_plus = F.logsigmoid(plus_in)            # log F(x + 1/255): the mass of bin 0
    log_sf_min = F.logsigmoid(-min_in)              # log (1 - F(x - 1/255)): the mass of bin 255
    # interior bins: F(x + 1/255) - F(x - 1/255), computed in the tail where it does not cancel:
    # left of loc as F(a) (1 - F(b)/F(a)), right of loc as (1 - F(b)) (1 - (1 - F(a))/(1 - F(b)))
    tiny = torch.finfo(x.dtype).tiny
    left = log_cdf_plus + torch.log((-torch.expm1(F.logsigmoid(min_in) - log_cdf_plus)).clamp(min=tiny))
    right = log_sf_min + torch.log((-torch.expm1(F.logsigmoid(-plus_in) - log_sf_min)).clamp(min=tiny))
    log_inner = torch.where(centered < 0, left, right)
    return torch.where(x < -1.0 + HALF_BIN, log_cdf_plus, torch.where(x > 1.0 - HALF_BIN, log_sf_min, log_inner))


class ELBOTerms(NamedTuple):
    """The ELBO of each image and its two terms, all ``(B,)`` in nats: ``elbo = reconstruction - kl``."""

    reconstruction: torch.Tensor
    kl: torch.Tensor
    elbo: torch.Tensor


def elbo_terms(model: VAE, x: torch.Tensor, eps: torch.Tensor) -> ELBOTerms:
    """A one-sample estimate of the ELBO of each image, book eq. ``elbo-recon-prior``.

    The reconstruction term :math:`\\log p_\\theta(x \\mid z)` is evaluated at one
    :math:`z = \\mu + \\sigma\\epsilon` per image (an unbiased estimate of its expectation); the
    KL term is exact (:func:`kl_diag_gaussian_to_standard_normal`). Kingma & Welling (2014), Sec. 3 (the Gaussian example).

    Args:
        model: a :class:`VAE`.
        x: images ``(B, 1, 28, 28)`` in model range on the 8-bit grid (``to_model`` of uint8).
        eps: standard normal noise ``(B, k)``.

    Returns:
        :class:`ELBOTerms` in nats per image.

    Raises:
        ValueError: from the pieces, for wrong shapes or pixels off the 8-bit grid.
    """
    mean, logvar, loc, log_scale = model(x, eps)
    reconstruction = discretized_logistic_log_prob(x, loc, log_scale).reshape(x.shape[0], -1).sum(dim=1)
    kl = kl_diag_gaussian_to_standard_normal(mean, logvar)
    return ELBOTerms(reconstruction, kl, reconstruction - kl)


def bits_per_dim(nats_per_image: torch.Tensor | float, num_dims: int = NUM_PIXELS) -> torch.Tensor | float:
    """Convert a negative log-likelihood (or a negative ELBO) from nats per image to bits per dimension.

    :math:`\\text{bits/dim} = \\text{nats} / (D \\ln 2)` with ``D = num_dims`` (784 for MNIST); book
    eq. ``vae-bits-per-dim``. Pass :math:`-\\mathrm{ELBO}` (a positive number) to get an upper bound on
    the negative log-likelihood in bits/dim.

    Raises:
        ValueError: if ``num_dims < 1``.
    """
    if num_dims < 1:
        raise ValueError(f"bits_per_dim: num_dims must be >= 1, got {num_dims}.")
    return nats_per_image / (num_dims * math.log(2.0))


# --- training (the only part of this module that touches data, checkpoints, progress bars) -----


@dataclass(frozen=True)
class VAETrainConfig:
    """Settings of a VAE training run, stored in its checkpoint's JSON.

    Attributes:
        model: the architecture.
        steps: optimizer steps in all.
        batch_size: images per step.
        lr: Adam's peak learning rate.
        lr_decay_steps: the learning rate follows a half cosine from ``lr`` to ``lr / 10`` over
            this many steps, then stays at ``lr / 10``. It does not depend on ``steps``, so that a run
            extended with a larger ``--steps`` continues the same schedule.
        seed: seeds the weights and the generator of batch order and ``eps``.
        checkpoint_every: steps between checkpoints.

    Raises:
        ValueError: for a non-positive setting.
    """

    model: VAEConfig = VAEConfig()
    steps: int = 12000
    batch_size: int = 128
    lr: float = 1e-3
    lr_decay_steps: int = 12000
    seed: int = 0
    checkpoint_every: int = 500

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "lr_decay_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"VAETrainConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if not self.lr > 0:
            raise ValueError(f"VAETrainConfig.lr must be > 0, got {self.lr}.")

    def to_json(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d


def _lr_at(step: int, config: VAETrainConfig) -> float:
    return config.lr * (0.55 + 0.45 * math.cos(math.pi * min(step, config.lr_decay_steps) / config.lr_decay_steps))


@torch.no_grad()
def evaluate_vae(model: VAE, images: torch.Tensor, seed: int = 0, batch_size: int = 1000) -> ELBOTerms:
    """One-sample ELBO estimates for uint8 ``images`` ``(N, 28, 28)``: :class:`ELBOTerms` of ``(N,)`` tensors in nats.

    The noise comes from ``torch.Generator().manual_seed(seed)``, so the result is reproducible.
    """
    from .data import to_model

    model.eval()
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for start in range(0, images.shape[0], batch_size):
        x = to_model(images[start : start + batch_size])
        eps = torch.randn((x.shape[0], model.config.latent_dim), generator=gen)
        parts.append(elbo_terms(model, x, eps))
    return ELBOTerms(*(torch.cat([getattr(p, f) for p in parts]) for f in ELBOTerms._fields))


def train_vae(
    config: VAETrainConfig,
    out_dir: str | Path,
    steps: int | None = None,
    images: torch.Tensor | None = None,
    progress: bool = True,
    command: str = "",
    export: str | Path | None = None,
    test_images: torch.Tensor | None = None,
) -> Path:
    """Train (or resume) the VAE on uint8 ``images`` (default: the 60,000 MNIST training images).

    Each step draws a batch (a fresh permutation per epoch), ``eps ~ N(0, I)``, and takes an Adam step
    on the negative ELBO in nats per image (:func:`elbo_terms`). The checkpoint
    ``out_dir/checkpoint.safetensors`` (written atomically by ``ddpm_lib.checkpoint.save_checkpoint``)
    holds the weights, Adam's moments and the generator's state, so a stopped run resumes where it
    stopped. Its JSON holds the config, the step, the wall time and ``command``.

    Args:
        config: the run's settings; when resuming, must equal the stored ones (but for ``steps``).
        out_dir: the run folder.
        steps: total steps, overriding ``config.steps``.
        images: uint8 ``(N, 28, 28)`` training images.
        progress: show a tqdm bar.
        command: the command line that started the run (stored in the JSON).
        export: if given, also write a weights-only file there (float32 weights and the JSON,
            including the test-set bits/dim when ``test_images`` or MNIST's test set is available).
        test_images: uint8 test images for the exported file's bits/dim (default: the MNIST test set).

    Returns:
        The path of the checkpoint.

    Raises:
        ValueError: if ``out_dir`` holds a checkpoint of another configuration.
    """
    from dataclasses import replace

    from tqdm.auto import tqdm

    from .checkpoint import read_checkpoint, save_checkpoint
    from .data import load_mnist, to_model

    if steps is not None:
        config = replace(config, steps=steps)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "checkpoint.safetensors"
    torch.manual_seed(config.seed)
    model = VAE(config.model)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    step, wall = 0, 0.0
    if path.exists():
        ckpt = read_checkpoint(path)
        stored = dict(ckpt.meta["train"])
        mine = config.to_json()
        if {k: v for k, v in stored.items() if k != "steps"} != {k: v for k, v in mine.items() if k != "steps"}:
            raise ValueError(f"{path} was written by another configuration ({stored} vs {mine}); use a new --out folder.")
        model.load_state_dict(ckpt.prefixed("model"))
        opt_state = {"state": {}, "param_groups": ckpt.meta["optim"]}
        for key, v in ckpt.prefixed("optim").items():
            i, name = key.split(".", 1)
            opt_state["state"].setdefault(int(i), {})[name] = v
        opt.load_state_dict(opt_state)
        gen.set_state(ckpt.tensors["rng.generator"])
        step, wall = ckpt.meta["state"]["step"], ckpt.meta["state"]["wall_s"]

    def save() -> None:
        sd = opt.state_dict()
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        tensors.update({f"optim.{i}.{k}": torch.as_tensor(v) for i, st in sd["state"].items() for k, v in st.items()})
        tensors["rng.generator"] = gen.get_state()
        meta = {"kind": "vae", "model": config.model.to_dict(), "train": config.to_json(), "optim": sd["param_groups"],
                "state": {"step": step, "wall_s": round(wall, 2)}, "command": command}
        save_checkpoint(path, tensors, meta)

    data = to_model(load_mnist("train")[0] if images is None else images)
    n = data.shape[0]
    bar = tqdm(total=config.steps, initial=step, disable=not progress, desc="train-vae", unit="step")
    while step < config.steps:
        t0 = time.perf_counter()
        model.train()
        epoch, offset = divmod(step * config.batch_size, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed * 100003 + epoch))
        x = data[perm[offset : offset + config.batch_size]]
        eps = torch.randn((x.shape[0], config.model.latent_dim), generator=gen)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, config)
        loss = -elbo_terms(model, x, eps).elbo.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        wall += time.perf_counter() - t0
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(bits_per_dim=f"{float(bits_per_dim(loss.item())):.3f}")
        if step % config.checkpoint_every == 0 or step == config.steps:
            save()
    bar.close()
    if not path.exists():
        save()
    if export is not None:
        test = load_mnist("test")[0] if test_images is None else test_images
        terms = evaluate_vae(model, test, seed=0)
        nll = -terms.elbo
        meta = {"kind": "vae", "model": config.model.to_dict(), "train": config.to_json(),
                "state": {"step": step, "wall_s": round(wall, 2)}, "command": command,
                "test": {"images": int(test.shape[0]), "eval_seed": 0,
                         "bits_per_dim": round(float(bits_per_dim(nll.mean())), 5),
                         "bits_per_dim_stderr": round(float(bits_per_dim(nll.std() / math.sqrt(nll.numel()))), 5)}}
        save_checkpoint(export, {f"model.{k}": v.float() for k, v in model.state_dict().items()}, meta)
    return path


# --- loading -----------------------------------------------------------------------------------


def shipped_weights_path():
    """The VAE weights shipped inside the package (``ddpm_lib/weights/vae-mnist.safetensors``), via importlib.resources."""
    from importlib.resources import files

    return files("ddpm_lib") / "weights" / SHIPPED_WEIGHTS


def load_vae(path: str | Path | None = None) -> tuple[VAE, dict]:
    """Load a VAE from a checkpoint or a weights-only file; ``None`` loads the shipped weights.

    Returns:
        ``(model, meta)``: the :class:`VAE` in eval mode on the CPU and the file's JSON config.

    Raises:
        FileNotFoundError: if there is no such file.
        ValueError: if the file holds no VAE, or its weights do not fit the stored architecture.
    """
    from .checkpoint import read_checkpoint

    ckpt = read_checkpoint(shipped_weights_path() if path is None else path)
    if ckpt.meta.get("kind") != "vae":
        raise ValueError(f"{path} is a ddpm_lib checkpoint but not of a VAE (kind {ckpt.meta.get('kind')!r}).")
    model = VAE(VAEConfig.from_dict(ckpt.meta["model"]))
    state = ckpt.prefixed("model")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path}: the weights do not fit VAE({model.config}): {err}") from err
    return model.eval(), ckpt.meta
