"""Drawing images from a trained DDPM with a named sampler: uint8 digits out, seeded.

Glue over the loop (:mod:`ddpm_lib.sampling.loop`), the denoisers and the pixel conversion of
:mod:`ddpm_lib.data`; used by the command line, the evaluation and the chapters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from ..data import to_uint8
from ..devices import eval_mode, model_device
from .denoisers import Denoiser, clip_denoiser, model_denoiser
from .loop import iterate, sampler_plan

if TYPE_CHECKING:  # for the annotation only: sampling needs the network, its schedule and its target, not the file reader
    from ..checkpoint import LoadedModel

__all__ = ["generate_images"]


@torch.no_grad()
def generate_images(
    loaded: LoadedModel,
    n: int,
    sampler: str = "ddpm",
    steps: int | None = None,
    eta: float = 0.0,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = False,
    labels: torch.Tensor | None = None,
    denoiser_for: Callable[[torch.Tensor | None], Denoiser] | None = None,
) -> torch.Tensor:
    """Draw ``n`` images from a DDPM with a named sampler; uint8 ``(n, 28, 28)`` on the CPU.

    ``loaded`` is anything with the attributes ``model``, ``schedule`` and ``target`` (a
    :class:`~ddpm_lib.checkpoint.LoadedModel` from :func:`~ddpm_lib.checkpoint.load_model`).

    The network runs where ``loaded.model`` is (load it there: ``load_model(name, device=...)``), in
    eval mode, and is left as it was. The denoiser's ``x0_hat`` is clipped to ``[-1, 1]`` (Ho et al.
    2020). Seeded, from one CPU generator seeded ``seed``: first ``x_T`` for all ``n`` images, then,
    batch after batch, the noise the sampler's steps draw (only the stochastic ones draw any; the noise
    is drawn on the CPU and moved to the model's device, :func:`~ddpm_lib.sampling.steps.standard_normal`).
    So the same arguments give the same images on the same device and the same noise on every device,
    and any two calls with the same ``seed``, ``n`` and ``batch_size`` start every image from the same
    ``x_T``, whatever the sampler and its number of steps: their images are paired.

    Args:
        progress: show a progress bar over the batches (DDPM's 1000 steps take minutes on a CPU). Off
            by default, for library use and tests.
        labels: int64 ``(n,)`` class labels for a conditional model (each batch's denoiser closes
            over its slice), or ``None``.
        denoiser_for: builds each batch's denoiser from that batch's labels (``None`` without labels) in
            place of the network's own, e.g. a guided one
            (``functools.partial(classifier_free_denoiser, loaded, guidance_scale=3.0)``,
            :mod:`ddpm_lib.sampling.guided`); its ``x0_hat`` is clipped like the network's.

    Raises:
        ValueError: if ``n < 1``, ``labels`` is not of shape ``(n,)``, or from :func:`sampler_plan`.
    """
    if n < 1:
        raise ValueError(f"the number of images must be >= 1, got {n}.")
    if labels is not None and tuple(torch.as_tensor(labels).shape) != (n,):
        raise ValueError(f"labels must have shape ({n},), one per image; got {tuple(torch.as_tensor(labels).shape)}.")
    step, timesteps = sampler_plan(sampler, loaded.schedule.T, steps, eta)
    device = model_device(loaded.model)
    gen = torch.Generator().manual_seed(seed)
    x_T_all = torch.randn((n, 1, 28, 28), generator=gen)  # before any step noise: the same for every sampler
    starts = range(0, n, batch_size)
    bar = tqdm(total=len(starts), disable=not progress, desc=f"sample {sampler}", unit="batch")
    out = []
    with eval_mode(loaded.model) as model:
        for start in starts:
            size = min(batch_size, n - start)
            y = None if labels is None else torch.as_tensor(labels)[start : start + size].to(device)
            denoiser = clip_denoiser(model_denoiser(model, loaded.schedule, loaded.target, y) if denoiser_for is None
                                     else denoiser_for(y))
            for state in iterate(denoiser, loaded.schedule, step, x_T_all[start : start + size].to(device), timesteps, gen):
                bar.set_postfix(nfe=state.nfe, refresh=False)
            bar.update(1)
            out.append(to_uint8(state.xt))
    bar.close()
    return torch.cat(out)
